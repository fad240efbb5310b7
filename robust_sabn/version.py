"""robust-sabn's version, defined once (pyproject.toml reads it from here); a leaf that imports nothing."""
__version__ = "0.1.0"
