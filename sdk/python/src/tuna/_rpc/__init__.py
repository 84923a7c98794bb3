"""Generated from sdk/python/proto/tuna/_rpc by sdk/python/scripts/gen_stubs.py; do not edit."""
