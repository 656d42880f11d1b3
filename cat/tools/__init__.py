"""Entry points: the ``cat-rl`` command line (``cli``) and what its commands run: a comparison of arms over seeds (``compare``, ``stats``), figures and an HTML page
(``report``), a memory plan (``plan``), test-time CaT (``testtime``, ``testtime_rubric``). The
library never imports this package."""
