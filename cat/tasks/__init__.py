"""What a run trains on and how it is graded: data sources as Prompts (``data``, with
``reasoning_gym`` tasks generated on the fly), the ``Task`` that formats, tokenizes and evaluates
them (``task``, ``evaluate``), and HealthBench's scoring (``healthbench``)."""
