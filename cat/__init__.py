"""cat: Compute as Teacher, reference-free reinforcement learning of language models.

The train step reads as the method: rollouts (``cat.generation``) -> reference
(``cat.estimators`` with the frozen anchor in ``cat.anchor``) -> rewards (``cat.rewards``) ->
advantages and loss (``cat.grpo``) -> update (``cat.trainer``). Entry points: ``cat-rl``
(``cat.cli``) and, from Python, ``cat.train`` (``cat.api``). See README.md.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``cat.train`` and ``cat.RunResult`` (the Python API, ``cat.api``), imported on first use."""
    if name in ("train", "RunResult"):
        from cat import api

        return getattr(api, name)
    raise AttributeError(f"module 'cat' has no attribute {name!r}")
