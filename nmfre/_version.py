"""The package version (bottom layer, so any module can read it)."""

__version__ = "0.2.0"
