"""The version, in a module of its own: the library imports it without importing the package root."""

__version__ = "0.1.0"
