"""The algorithm's maths: GRPO advantages and losses as pure functions (``grpo``), and the padded
tensors a policy update consumes, built from scored groups (``batch``). Nothing here loads a
model, samples or reads a file."""
