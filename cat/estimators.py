"""Moved to :mod:`cat.teacher.estimators`. This name keeps plug-ins that import it working, with a
DeprecationWarning; it is the same module (the same ``ESTIMATORS`` registry)."""

import sys
import warnings

from cat.teacher import estimators as _moved

warnings.warn("cat.estimators has moved to cat.teacher.estimators; import it from there",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
