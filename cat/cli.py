"""Moved to :mod:`cat.tools.cli` (``cat-rl``). This name keeps ``python -m cat.cli ...`` (torchrun
and accelerate launch lines written for it) and ``from cat.cli import main`` working, with a
DeprecationWarning."""

import sys
import warnings

from cat.tools import cli as _moved

if __name__ == "__main__":
    warnings.warn("python -m cat.cli is now python -m cat.tools.cli (or cat-rl)", DeprecationWarning, stacklevel=1)
    sys.exit(_moved.main())
warnings.warn("cat.cli has moved to cat.tools.cli; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
