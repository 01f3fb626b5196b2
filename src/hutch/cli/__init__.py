"""The `hutch` command line."""
