"""The ``regkit`` command line."""
