"""The teacher: how a group of rollouts becomes a reference.

``estimators`` (registry ``ESTIMATORS``: synthesis is CaT, majority_vote is TTRL, gold is
reference-based GRPO), the frozen anchor pi_0 that synthesizes and scores (``anchor``, with the
rollout layout of its prompts in ``anchor_format``), the label firewall that keeps labels from a
label-free teacher (``firewall``), and the measurements of the teacher against gold
(``diagnostics``)."""
