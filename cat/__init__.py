"""cat: Compute as Teacher, reference-free reinforcement learning of language models.

The train step reads as the method: rollouts (``cat.generation``) -> reference
(``cat.estimators`` with the frozen anchor in ``cat.anchor``) -> rewards (``cat.rewards``) ->
advantages and loss (``cat.grpo``) -> update (``cat.trainer``). Entry point: ``cat-rl``
(``cat.cli``). See README.md.
"""

__version__ = "0.1.0"
