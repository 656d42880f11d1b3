"""The offline tiny worlds, ``tiny:arith``, ``tiny:arith-hard`` and ``tiny:rubric``."""
