"""Generated from proto/tuna/v1 by sdk/python/scripts/gen_stubs.py; do not edit."""
