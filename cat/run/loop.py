"""The run loop: cadence, evaluation, checkpoints, signals and recording around the algorithm.

The loop owns the run: its trainer (``cat.run.trainer.Trainer``, the algorithm: ``step``,
``probe``, ``evaluate``; it keeps no count of the steps taken and writes no checkpoint) and
``step_done``. ``RunLoop(Trainer(config, run_dir)).train()`` runs (or continues, after
``restore``) a run to ``run.steps``: it evaluates before and after (and every ``eval.every`` steps), appends each step's metrics (with
the process's peak resident memory, ``memory/peak_rss_mib``), samples and rubric audit to the run
directory, checkpoints every ``run.save_every`` steps and at the end, and turns the first Ctrl-C
into "finish this step, save, stop". In a multi-process run every rank runs the loop and rank 0
alone writes.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from cat.display import duration, number, percent
from cat.errors import CheckpointError
from cat.files import write_json_atomic
from cat.models.load import torch_dtype
from cat.run import checkpoint as ckpt
from cat.run.tracking import Trackers
from cat.run.watch import UnscoredWatch, preflight_report

logger = logging.getLogger(__name__)


class RunLoop:
    """A run: the trainer it drives and ``step_done``, the steps taken (0 until ``restore``).

    The trainer is passed in, not imported: the loop calls its ``step``, ``probe`` and
    ``evaluate``, reads its ``config``, ``run_dir``, ``ranks``, ``log``, ``eval_prompts`` and
    ``objective.needs_spread``, and checkpoints its ``learner``, ``policy``, ``tokenizer`` and
    ``generator``."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.step_done = 0

    def close(self) -> None:
        """Release what the run holds (``Trainer.close``)."""
        self.trainer.close()

    def state_dict(self) -> dict:
        return {"step": self.step_done, **self.trainer.learner.state_dict(), **self.trainer.ahead_state()}

    def save(self, *, merged: bool = True) -> Path:
        """A checkpoint of step ``step_done``, holding whole state: every rank takes part in
        gathering it (FSDP shards), rank 0 writes it and the others wait for it. ``merged``: a LoRA
        policy's checkpoint also holds the merged model (where a run stops; the periodic saves
        leave it out)."""
        t = self.trainer
        path = ckpt.checkpoint_dir(t.run_dir, self.step_done)
        weights, state = t.learner.full_weights(), self.state_dict()  # FSDP: gathered by all ranks
        failure = None
        if t.ranks.main:
            try:
                path = ckpt.save_checkpoint(t.run_dir, self.step_done, model=t.policy, tokenizer=t.tokenizer,
                                            trainer_state=state, keep_last=t.config.run.keep_last,
                                            export_dtype=torch_dtype(t.config.model.dtype), weights=weights,
                                            merged=merged)
            except CheckpointError as exc:
                failure = str(exc)
        # instead of a barrier: every rank learns at once whether rank 0's write worked
        failure = t.ranks.broadcast(failure)
        if failure is not None:
            raise CheckpointError(failure if t.ranks.main else "rank 0 could not write the checkpoint (its message is above)")
        return path

    def restore(self, path: Path) -> None:
        """Continue from a checkpoint, on any number of ranks (its state is not sharded)."""
        t = self.trainer
        state = ckpt.load_trainer_state(path)
        t.learner.load_master_weights(ckpt.master_weights_dir(path))
        bad = ckpt.first_nonfinite(dict(t.policy.named_parameters())) or ckpt.first_nonfinite(state.get("optimizer"), "optimizer")
        if bad:  # verified files that hold NaN: written by something other than save_checkpoint
            raise CheckpointError(f"checkpoint {path}: {bad} holds NaN or inf; refusing to resume from it "
                                  f"(move it aside and resume again to use the one before it)")
        t.generator.sync_weights(t.policy)
        t.learner.load_state_dict(state)
        t.load_ahead_state(state)
        self.step_done = state["step"]
        ckpt.set_rng_state(state["rng"])

    def train(self, *, progress: bool = True) -> dict:
        """Run (or continue) to ``run.steps``; returns the eval summary {before, after}.

        The first Ctrl-C lets the current step finish, saves a checkpoint and raises
        KeyboardInterrupt; a second one stops at once (the previous checkpoint stays valid). In a
        multi-process run every rank runs this loop and rank 0 alone writes; a Ctrl-C on any rank
        (torchrun passes it to all) ends the step on all of them.
        """
        t = self.trainer
        run = t.config.run
        main = t.ranks.main
        if main:
            t.run_dir.mkdir(parents=True, exist_ok=True)
        eval_path = t.run_dir / "eval.json"
        evals = t.ranks.broadcast(json.loads(eval_path.read_text()) if main and eval_path.exists() else {})
        evals["history"] = [h for h in evals.get("history", []) if h["step"] <= self.step_done]
        # "after" counts only if it evaluated the policy of this step (a run saved before
        # ``after_step`` was recorded is trusted)
        current = "after" in evals and evals.get("after_step", self.step_done) == self.step_done
        if self.step_done >= run.steps and (current or not t.eval_prompts):
            t.log(f"{t.run_dir} already finished {run.steps} steps; nothing to do")
            return evals
        if "after" in evals:  # a finished run continued to more steps: its old "after" goes now, not at the end,
            evals.pop("after")  # so that a run stopped on the way never shows it as this policy's
            evals.pop("after_step", None)
            if main:
                write_json_atomic(eval_path, evals)
        if t.eval_prompts and "before" not in evals:
            t.log("evaluating the initial policy ...")
            evals["before"] = t.evaluate()
            if main:
                write_json_atomic(eval_path, evals)
            t.log(_eval_line("before", evals["before"]))
        elif self.step_done == 0 and "before_from" in evals:  # compare: another arm evaluated the same initial policy
            t.log(_eval_line("before", evals["before"]) + f"  (evaluated by {evals['before_from']})")
        if self.step_done == 0 and run.preflight_prompts:
            t.log("preflight: sampling, referencing and scoring a few prompts before training ...")
            t.log(preflight_report(*t.probe(run.preflight_prompts), t.config))
        with Trackers(run.report_to, t.run_dir, t.config, main=main) as trackers:
            if "before" in evals and self.step_done == 0:
                trackers.log_eval(evals["before"], 0)
            self._steps(evals, trackers, progress)
        return evals

    def _steps(self, evals: dict, trackers: Trackers, progress: bool) -> None:
        t = self.trainer
        from tqdm import tqdm

        run = t.config.run
        main = t.ranks.main
        eval_path = t.run_dir / "eval.json"
        bar = tqdm(total=run.steps, initial=self.step_done,
                   disable=not progress or not sys.stderr.isatty() or not main, desc="train", unit="step", leave=False)
        metrics_path = t.run_dir / "metrics.jsonl"
        samples_path = t.run_dir / "samples.jsonl"
        watch = UnscoredWatch(run)
        if self.step_done:  # resumed: the steps already taken count towards "learned something"
            earlier = [json.loads(x) for x in metrics_path.read_text().splitlines()] \
                if main and metrics_path.exists() else []
            watch.count(t.ranks.broadcast(earlier))
        start, first = time.perf_counter(), self.step_done
        with _GracefulInterrupt() as interrupt:
            while self.step_done < run.steps:
                result = t.step(self.step_done)
                self.step_done += 1
                # the process's high-water mark so far (not the step's own), the largest over ranks
                result.metrics["memory/peak_rss_mib"] = max(t.ranks.gather(peak_rss_mib()))
                if t.device.type == "cuda":  # the accelerator's too: the policy, optimizer, activations, vLLM's cache
                    result.metrics["memory/peak_gpu_mib"] = max(t.ranks.gather(peak_gpu_mib(t.device)))
                if main:
                    _append_jsonl(metrics_path, [result.metrics])
                    _append_jsonl(samples_path, result.samples)
                    _append_jsonl(t.run_dir / "rubrics.jsonl", result.audit)
                    trackers.log(result.metrics, self.step_done)
                    bar.update(1)
                    # ETA from this invocation's pace (mid-run evaluations and checkpoints included,
                    # the final evaluation not); a resumed run does not count the steps it inherited
                    elapsed = time.perf_counter() - start
                    eta = elapsed / (self.step_done - first) * (run.steps - self.step_done)
                    line = _console_line(result.metrics, run.steps, elapsed, eta)
                    if bar.disable:
                        t.log(line)
                    else:  # above the live bar, which a plain write to the terminal would tear
                        bar.write(line)
                watch.observe(result.metrics)  # after the step is recorded: samples.jsonl shows why
                if t.ranks.any(interrupt.requested):
                    bar.close()
                    path = self.save()
                    if main:
                        logger.warning(f"interrupted after step {self.step_done}: saved {path}\n"
                                       f"resume with: {resume_command(t.run_dir)}")
                    raise SavedAndInterrupted
                if t.eval_prompts and t.config.eval.every and self.step_done % t.config.eval.every == 0 \
                        and self.step_done < run.steps:
                    evals["history"].append({"step": self.step_done, **t.evaluate()})
                    if main:
                        write_json_atomic(eval_path, evals)
                        trackers.log_eval(evals["history"][-1], self.step_done)
                        line = _eval_line(f"step {self.step_done}", evals["history"][-1])
                        if bar.disable:
                            t.log(line)
                        else:  # above the live bar
                            bar.write(line)
                if run.save_every and self.step_done % run.save_every == 0 and self.step_done < run.steps:
                    self.save(merged=False)  # for resuming: a LoRA run's adapter, not a merged copy
        bar.close()
        self.save()
        watch.finish(needs_spread=t.objective.needs_spread)
        summary = teacher_summary(metrics_path) if main else ""
        if summary:
            t.log(summary)
        if t.eval_prompts:
            evals["after"] = t.evaluate()
            evals["after_step"] = self.step_done
            if main:
                write_json_atomic(eval_path, evals)
                trackers.log_eval(evals["after"], self.step_done)
            t.log(_eval_line("before", evals["before"]))
            t.log(_eval_line("after", evals["after"]))


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (what an out-of-memory kill goes by)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def peak_gpu_mib(device) -> float:
    """The most GPU memory torch's allocator has held on ``device`` so far, in MiB (vLLM's weights
    and KV cache included: it allocates through torch)."""
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def resume_command(run_dir: Path) -> str:
    """The command that continues the run in ``run_dir`` from its newest checkpoint."""
    return f"cat-rl train {run_dir / 'config.yaml'} --resume {run_dir}"


class SavedAndInterrupted(KeyboardInterrupt):
    """Ctrl-C once: the step in progress finished and a checkpoint was saved (the loop said where
    and how to resume). A plain KeyboardInterrupt is the second Ctrl-C: stopped mid-step."""


class _GracefulInterrupt:
    """SIGINT once: set ``requested`` (the loop saves after the current step). Twice: stop now."""

    def __enter__(self):
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        # print, not logging: a signal handler must not take the logging module's locks
        print("\ninterrupt: finishing this step, then saving a checkpoint (Ctrl-C again to stop now)", flush=True)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _append_jsonl(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _eval_line(label: str, result: dict) -> str:
    if "score" in result:
        return (f"{label:>6}: rubric score {number(result['score'])} ± {number(result.get('std_error'))} "
                f"(n={result['n']}, unscored {result.get('unscored', 0)})")
    line = f"{label:>6}: accuracy {number(result['accuracy'])} (pass@1 over {result['num_samples']} samples, n={result['n']})"
    if "greedy_accuracy" in result:
        line += f"  greedy {number(result['greedy_accuracy'])}"
    return line


def teacher_summary(metrics_path: Path) -> str:
    """One paragraph on the teacher over the whole run, from metrics.jsonl (gold: measured only)."""
    if not metrics_path.exists():
        return ""
    return teacher_summary_of([json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()])


def teacher_summary_of(rows: list[dict]) -> str:
    """:func:`teacher_summary` of metrics rows."""
    if not rows or "diag/reference_accuracy" not in rows[0]:
        return ""

    def mean(key):
        values = [r[key] for r in rows if key in r and r[key] == r[key]]
        return sum(values) / len(values) if values else float("nan")  # printed as n/a

    return (
        f"teacher over {len(rows)} steps (vs gold, never used in training): "
        f"reference accuracy {number(mean('diag/reference_accuracy'))}, majority {number(mean('diag/majority_accuracy'))}, "
        f"single rollout {number(mean('diag/rollout_accuracy'))}; reference disagrees with majority "
        f"{percent(mean('diag/disagree_rate'))} of groups and is right {percent(mean('diag/disagree_accuracy'))} of those; "
        f"right when every rollout was wrong: {sum(r.get('diag/correct_all_wrong', 0) for r in rows):.0f} groups; "
        f"reward accuracy {number(mean('diag/reward_accuracy'))}; unparsable references "
        f"{percent(mean('diag/reference_unparsable'))}; unscored groups {sum(r.get('groups/unscored', 0) for r in rows)}"
        + (f"; the reference has the last rollout's answer in {percent(mean('diag/reference_is_last'))} of groups, "
           f"another given rollout's in {percent(mean('diag/reference_is_other'))} (a teacher copying the last response "
           f"it read shows here)" if any("diag/reference_is_last" in r for r in rows) else "")
    )


def _console_line(m: dict, total: int, elapsed: float, eta: float) -> str:
    """The step's line: where the run is (step i/N, time so far, time to the last step) and what
    it measured. It carries the progress a bar would show, so a log read from a pipe has it too."""
    parts = [f"step {m['step']:{len(str(total))}d}/{total}", f"reward {number(m['reward/mean'])}"]
    for key, label in (("diag/reference_accuracy", "ref_acc"), ("diag/majority_accuracy", "maj_acc"),
                       ("diag/rollout_accuracy", "roll_acc"), ("kl", "kl"), ("entropy", "ent"),
                       ("frac_reward_zero_std", "zero_std")):
        if key in m and m[key] == m[key]:
            parts.append(f"{label} {number(m[key])}")
    if m.get("groups/unscored"):
        parts.append(f"unscored {m['groups/unscored']}")
    parts += [f"{m['time/step']:.1f}s", f"elapsed {duration(elapsed)}", f"eta {duration(eta)}"]
    return "  ".join(parts)
