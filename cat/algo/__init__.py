"""The algorithm's maths: GRPO advantages and losses as pure functions (``grpo``), the padded
tensors a policy update consumes, built from scored groups (``batch``), and the two objectives an
update minimises, GRPO and SFT, behind one interface (``objectives``). Nothing here loads a model,
samples or reads a file."""
