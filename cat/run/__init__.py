"""Running the algorithm: the ``Trainer`` (one step, and what a step uses), the ``RunLoop``
around it (cadence, evaluation, checkpoints, signals, recording: ``loop``), the trained policy's
weights and optimizer (``learner``), several processes (``parallel``), checkpoints that cannot be
lost (``checkpoint``), trackers (``tracking``), the checks that stop a run training on nothing
(``watch``) and the console logging (``logs``)."""
