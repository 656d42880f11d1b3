"""Running the algorithm: the ``RunLoop`` (``loop``), which owns the run and drives its ``Trainer``
(``trainer``: one step, and what a step uses) with cadence, evaluation, checkpoints, signals and
recording; the trained policy's weights and optimizer (``learner``), several processes
(``parallel``), checkpoints that cannot be lost (``checkpoint``), trackers (``tracking``), the
checks that stop a run training on nothing (``watch``) and the console logging (``logs``)."""
