"""The ``rating-engine`` command line."""
