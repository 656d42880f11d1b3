"""Several processes, one run: which prompts each rank owns, and the few collectives a step needs.

``torchrun --nproc_per_node N -m cat.tools.cli train CONFIG`` and ``accelerate launch
--multi_gpu --num_processes N -m cat.tools.cli train CONFIG`` (on CPU too; accelerate's ``--cpu``
runs one process) start N copies of ``cat-rl train``; accelerate's ``PartialState`` joins them (gloo on CPU, NCCL on
GPUs). Every rank reads the same config and data and visits the same
prompts per step. Rank r owns a contiguous slice of the step's prompts (``shard``): it generates
their groups with its own engine, builds their references and rewards, then the groups are
gathered so every rank holds the whole step. Advantages, normalisers and metrics are computed
from the whole step, exactly as one process computes them, and each rank takes the gradient of
its own rows; the summed gradient is the one-process gradient.

A rank that stops answering (stopped, swapped out, stuck in a driver) does not hang the others:
every collective gives up after ``parallel.timeout_s``, and each rank beats a heartbeat into the
launcher's rendezvous store once a second, so the rank that gave up can name the ranks whose
heartbeat went quiet (:func:`stalled_message`).
"""

from __future__ import annotations

import atexit
import gc
import math
import os
import threading
import time
from dataclasses import replace
from datetime import timedelta

import torch

from cat.generation import SamplingParams


class Ranks:
    """This process's place in the run (a single process is rank 0 of 1)."""

    def __init__(self, *, cpu: bool, timeout_s: float | None = None):
        """``timeout_s``: how long a collective waits for the other ranks (``parallel.timeout_s``;
        None: torch's default). Only the first ``Ranks`` of a process sets it: the process group
        is joined once."""
        from accelerate import PartialState

        joined = torch.distributed.is_available() and torch.distributed.is_initialized()
        kwargs = {"timeout": timedelta(seconds=timeout_s)} if timeout_s and not joined else {}
        self.state = PartialState(cpu=cpu, **kwargs)
        self.rank = self.state.process_index
        self.world = self.state.num_processes
        self.main = self.rank == 0
        if self.world > 1:
            atexit.register(_release_process_group)
            _Heartbeat.start(self.rank, self.world)

    @property
    def device(self) -> torch.device:
        return self.state.device

    def close(self) -> None:
        """Leave the process group together: a rank that exits while another's gloo threads still
        talk to it can make that rank abort ("terminate called without an active exception")."""
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()
            _release_process_group()
        _Heartbeat.end()

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's contiguous slice [start, stop) of n items: the first n % world ranks take one more."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64, so the total does not depend on the split)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        return self.sum([float(flag)])[0] > 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def tag(self) -> str:
        """``[rank r/N] `` in a multi-process run, else empty: for messages a user must place."""
        return f"[rank {self.rank}/{self.world}] " if self.world > 1 else ""


class _Heartbeat:
    """Once a second, this rank adds one to its counter in the rendezvous store (``MASTER_ADDR``:
    ``MASTER_PORT``, which torchrun's agent or rank 0 serves) from a daemon thread; a stopped
    process stops counting. Counters, not clock times: the nodes' clocks need not agree. One per
    process at a time."""

    INTERVAL_S = 1.0
    current: _Heartbeat | None = None

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world
        self.store = torch.distributed.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                                is_master=False, timeout=timedelta(seconds=3),
                                                wait_for_workers=False)
        self.stop = threading.Event()
        self.beat()
        self.thread = threading.Thread(target=self._run, name="cat-heartbeat", daemon=True)
        self.thread.start()

    @classmethod
    def start(cls, rank: int, world: int) -> None:
        if cls.current is None and "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ:
            try:
                cls.current = cls(rank, world)
            except (RuntimeError, ValueError, OSError):  # no store to reach: messages just name no rank
                cls.current = None

    @classmethod
    def end(cls) -> None:
        if cls.current is not None:
            cls.current.stop.set()
            cls.current.thread.join(timeout=5)
            cls.current = None

    def key(self, rank: int) -> str:
        return f"cat/heartbeat/{rank}"

    def beat(self) -> None:
        self.store.add(self.key(self.rank), 1)

    def _run(self) -> None:
        while not self.stop.wait(self.INTERVAL_S):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - the store's host is gone or stopped: nothing to report to
                pass

    def counts(self) -> dict[int, int] | None:
        """Every other rank's beats so far; None when the store does not answer."""
        try:
            return {r: self.store.add(self.key(r), 0) for r in range(self.world) if r != self.rank}
        except Exception:  # noqa: BLE001 - the store's host is stopped or gone
            return None

    def quiet(self) -> list[int] | None:
        """The other ranks whose counter did not move over three beats; None: the store is silent."""
        first = self.counts()
        if first is None:
            return None
        time.sleep(3 * self.INTERVAL_S)
        second = self.counts()
        if second is None:
            return None
        return [r for r in first if second[r] == first[r]]


_TIMEOUTS = ("Timed out waiting", "collective operation timeout", "Watchdog caught collective")
"""How gloo (the first) and NCCL's watchdog say a collective waited too long."""


def stalled_message(exc: BaseException) -> str | None:
    """For a collective that timed out: which ranks stopped answering, from their heartbeats
    (None when ``exc`` is not a collective's timeout)."""
    text = str(exc)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or not any(s in text for s in _TIMEOUTS):
        return None
    heart = _Heartbeat.current
    quiet = heart.quiet() if heart else []
    if quiet is None:
        who = ("the rendezvous store (served by rank 0 or the launcher) did not answer either: rank 0 or the "
               "launcher stopped answering")
    elif quiet:
        who = f"rank(s) {', '.join(map(str, quiet))} stopped answering (no heartbeat for 3 s)"
    elif heart is None:
        who = "another rank did not answer in time"
    else:
        who = "every other rank is still alive but did not reach the same collective (a rank took a different path)"
    return (f"a collective waited and gave up: {who}. parallel.timeout_s sets how long ranks wait for each "
            f"other ({text.splitlines()[0][:160]})")


def _release_process_group() -> None:
    """Destroy the process group while the interpreter is whole: at every exit (atexit), also one
    through an error or ``SystemExit`` that skipped ``Ranks.close``. Left to interpreter shutdown,
    gloo's worker threads and the collectives' work objects are torn down after Python's own
    state, which can abort the process ("terminate called without an active exception"). No
    barrier here: on an error path another rank may be gone."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    gc.collect()  # finished collectives' work objects, while their destructors can still run


def gather_lists(ranks: Ranks, *lists: list) -> tuple[list, ...]:
    """Each rank's lists concatenated in rank order (the whole step's, when each rank holds its shard)."""
    parts = ranks.gather(lists)
    return tuple([x for part in parts for x in part[i]] for i in range(len(lists)))


class ShardedGenerator:
    """A ``Generator`` whose calls are split across ranks and gathered: every rank gets every
    prompt's completions, each rank generated its slice (with the streams the whole call would
    give it, through ``row_offset``). Evaluation runs on it."""

    def __init__(self, inner, ranks: Ranks):
        self.inner, self.ranks = inner, ranks

    def generate(self, prompts: list[list[int]], params: SamplingParams):
        start, stop = self.ranks.shard(len(prompts))
        mine = self.inner.generate(prompts[start:stop], replace(params, row_offset=params.row_offset + start))
        return [c for part in self.ranks.gather(mine) for c in part]

    def score(self, prompts, continuations):
        start, stop = self.ranks.shard(len(prompts))
        mine = self.inner.score(prompts[start:stop], continuations[start:stop])
        return [s for part in self.ranks.gather(mine) for s in part]

    def sync_weights(self, model) -> None:
        self.inner.sync_weights(model)

    def close(self) -> None:
        self.inner.close()


class ShardedJudge:
    """A judge whose items are split across ranks and whose verdicts are gathered: each response
    of a sharded evaluation is graded once, not once per rank."""

    def __init__(self, inner, ranks: Ranks):
        self.inner, self.ranks = inner, ranks

    def judge(self, items: list):
        start, stop = self.ranks.shard(len(items))
        verdicts, stats = self.inner.judge(items[start:stop]) if stop > start else ([], {})
        parts = self.ranks.gather((verdicts, stats, stop - start))
        return [v for part in parts for v in part[0]], combine_stats([p[1] for p in parts], [p[2] for p in parts])


def combine_stats(per_rank: list[dict], weights: list[int]) -> dict:
    """Per-rank statistics as one: counts (ints) add up, rates are averaged weighted by each
    rank's share (its groups, its items) over the ranks where they are defined (a rank whose
    verdicts all came from the cache has no parse rate: NaN there leaves the others' mean)."""
    out = {}
    for key in dict.fromkeys(k for stats in per_rank for k in stats):
        pairs = [(stats[key], n) for stats, n in zip(per_rank, weights, strict=True)
                 if key in stats and not (isinstance(stats[key], float) and math.isnan(stats[key]))]
        if not pairs:
            out[key] = float("nan")
            continue
        if all(isinstance(v, int) and not isinstance(v, bool) for v, _ in pairs):
            out[key] = sum(v for v, _ in pairs)
        else:
            total = sum(n for _, n in pairs)
            out[key] = sum(v * n for v, n in pairs) / total if total else float("nan")
    return out
