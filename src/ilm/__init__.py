"""Inverse Language Modeling (arXiv 2510.01929): a reference reproduction."""

import logging

__version__ = "0.1.0"

logger = logging.getLogger("ilm")
