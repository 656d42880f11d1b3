"""Entry points: the ``cat-rl`` command line (``cli``) and what its commands run: a training
(``train``, shared with ``cat.train`` and ``compare``), a comparison of arms over seeds
(``compare``, ``stats``), figures and an HTML page (``report``), a memory plan (``plan``),
test-time CaT (``testtime``, ``testtime_rubric``, on the policy ``testtime_policy`` samples); and
``config_reference``, which writes docs/configuration.md from the config's models. The library never
imports this package."""
