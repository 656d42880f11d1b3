"""One-step-async rollouts (``generation.async_rollouts``): a step's experience made ahead.

``Experience`` is what a step learns from: its groups through the teacher and the rewards,
before any update. Made in step order it is the synchronous loop; with async rollouts the
trainer makes step t+1's on a ``Background`` thread while step t updates, from the weights the
engine was given before that update, so ``Experience.version`` (the updates the rollout weights
had taken) is one behind the step that learns from it. The update thread and the rollout thread
share nothing but the engine, which the update thread leaves alone until it has joined the
rollout thread; collectives (gathering the shards) stay on the update thread.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields

from cat.types import Group, GroupScore, Reference


@dataclass
class Experience:
    """Step ``step``'s groups, references, scores, reward metrics and audit rows: this rank's
    shard as made, or every rank's once gathered (``whole``). ``version``: the policy updates
    the rollout weights had taken; ``times``: seconds per phase (generate, reference, reward)."""

    step: int
    version: int
    groups: list[Group]
    references: list[Reference]
    scores: list[GroupScore]
    reward_stats: dict
    audit: list[dict]
    times: dict[str, float] = field(default_factory=dict)
    whole: bool = False

    def as_state(self) -> dict:
        """For a checkpoint: made once, by weights a resumed run no longer has."""
        if not self.whole:
            raise ValueError("only a gathered Experience goes into a checkpoint (any number of ranks may resume it)")
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "whole"}

    @classmethod
    def from_state(cls, state: dict) -> Experience:
        return cls(**state, whole=True)


class Background:
    """``fn()`` on a daemon thread (a second Ctrl-C ends the process without waiting for it), on
    ``device`` when it is a GPU: the current CUDA device is a thread's own, and a new thread's is
    device 0, not the rank's. ``result()`` waits for it and returns its value or raises its
    exception here; ``running`` says whether it is still at work."""

    def __init__(self, fn, name: str, device=None):
        self._value = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, device), name=name, daemon=True)
        self._thread.start()

    def _run(self, fn, device) -> None:
        try:
            if device is not None and device.type == "cuda":
                import torch

                torch.cuda.set_device(device)
            self._value = fn()
        except BaseException as exc:  # noqa: BLE001 -- handed to the thread that waits
            self._error = exc

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value
