"""xtm: cross-lingual topic modeling.

The package root holds only what every part shares (version, language codes, errors, the
corpus type). Importing `xtm` must stay cheap and torch-free: the runtime depends on it.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
