"""cxrbench: a reproducible benchmark of chest X-ray encoders on 18 localized tasks."""

__version__ = "0.1.0"
