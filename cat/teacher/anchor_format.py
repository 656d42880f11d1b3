"""How rollouts are laid out inside an anchor prompt.

Shared by the anchor (which renders real rollouts) and the tiny world (which renders synthetic
candidates when it pretrains the anchor's job), so both see exactly the same layout.
"""

from __future__ import annotations

ROLLOUT_HEADER = "### Response {index}"


def format_rollouts(texts: list[str]) -> str:
    """Numbered rollouts, one block each: ``### Response 1\\n<text>`` separated by blank lines."""
    return "\n\n".join(f"{ROLLOUT_HEADER.format(index=i + 1)}\n{t.strip()}" for i, t in enumerate(texts))


RESPONSE_MARKER = "UNIFIED RESPONSE:"


def response_part(text: str) -> str:
    """The response a synthesis stands for: what follows its last ``UNIFIED RESPONSE:`` (the math
    templates ask for a summary of the disagreements first), else the whole text. What CaT-SFT
    imitates."""
    head, marker, tail = text.rpartition(RESPONSE_MARKER)
    return tail.strip() if marker else text.strip()
