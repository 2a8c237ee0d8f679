"""envkit: provision and prove deep-learning environments."""

__version__ = "0.1.0"
