"""How a number reads on the console, in summaries and in report tables.

One place decides it, so ``kl 0.00026`` prints as ``2.6e-04`` everywhere rather than ``0.000`` in
one line and something else in the next, and an undefined value (NaN: no group disagreed, nothing
was scored) prints as ``n/a``, never ``nan`` or ``nan%``. Formatting only: nothing here rounds a
value that is stored or compared.
"""

from __future__ import annotations

import math

NOT_DEFINED = "n/a"


def _undefined(x) -> bool:
    return not isinstance(x, (int, float)) or isinstance(x, bool) or math.isnan(x)


def number(x, *, signed: bool = False) -> str:
    """Three decimals from 0.01 to 1e5 (0.375, 12.500); below that two significant digits in
    scientific notation (2.6e-04), so a small value never reads as 0; above it three (2.50e+06);
    exactly 0 is ``0``."""
    if _undefined(x):
        return NOT_DEFINED
    if x == 0:
        return "0"
    sign = "+" if signed else ""
    if math.isinf(x):
        return f"{x:{sign}}"
    if 0.01 <= abs(x) < 1e5:
        return f"{x:{sign}.3f}"
    return f"{x:{sign}.1e}" if abs(x) < 0.01 else f"{x:{sign}.2e}"


def percent(x) -> str:
    """A share as a percentage with one decimal (33.3%); a share too small for that reads
    ``<0.1%``, never ``0.0%``."""
    if _undefined(x):
        return NOT_DEFINED
    if x != 0 and abs(x) < 0.0005:
        return "<0.1%" if x > 0 else ">-0.1%"
    return f"{x:.1%}" if x != 0 else "0%"


def duration(seconds: float) -> str:
    """Elapsed or remaining time for a log line: ``0.4s``, ``42s``, ``3m05s``, ``2h07m``."""
    if _undefined(seconds) or math.isinf(seconds):
        return NOT_DEFINED
    if seconds < 9.95:
        return f"{seconds:.1f}s"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def excerpt(text: str, n: int = 200) -> str:
    """A model's reply quoted in a message: whitespace folded to single spaces, cut to ``n``
    characters with ``...``."""
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."
