"""The plans of every operation, one module per service (see :mod:`tuna._effects`)."""
