"""cat: Compute as Teacher, reference-free reinforcement learning of language models.

The train step reads as the method: rollouts (``cat.generation``) -> reference
(``cat.teacher.estimators`` with the frozen anchor in ``cat.teacher.anchor``) -> rewards
(``cat.rewards``) -> advantages and loss (``cat.algo.grpo``) -> update (``cat.run.trainer``).
Entry points: ``cat-rl`` (``cat.tools.cli``) and, from Python, ``cat.train`` (``cat.api``). The
packages and the way their dependencies point: docs/layout.md.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``cat.train`` and ``cat.RunResult`` (the Python API, ``cat.api``), imported on first use."""
    if name in ("train", "RunResult"):
        from cat import api

        return getattr(api, name)
    raise AttributeError(f"module 'cat' has no attribute {name!r}")
