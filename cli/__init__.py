"""The `speechq` command line."""
