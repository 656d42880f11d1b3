"""Moved to :mod:`cat.algo.grpo`. This name keeps code that imports it working, with a
DeprecationWarning; it is the same module."""

import sys
import warnings

from cat.algo import grpo as _moved

warnings.warn("cat.grpo has moved to cat.algo.grpo; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
