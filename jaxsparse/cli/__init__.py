"""The `jaxsparse` command line: `bench`, `show PATTERN` and `patterns`."""
