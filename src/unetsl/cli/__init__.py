"""Console scripts: thin click wrappers around the library."""
