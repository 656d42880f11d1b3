"""What ``cat-rl train`` does: start, continue or finish the run of a config in its directory.

:func:`train_run` is shared by the command line, ``cat-rl compare`` (one run per arm and seed)
and ``cat.train`` (the Python API). It decides between a fresh start and a resume (a run
directory whose saved config differs is refused unless asked, and :func:`same_run` tells a moved
or respelled run from a changed one), trims the rows written after the checkpoint it resumes
from, and trains. Like the rest of the command line it prints what it decided (resuming, a
changed config) and where the run lives; the library below it only logs.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import sys
from pathlib import Path

from cat.errors import CatError, ConfigError
from cat.files import write_text_atomic
from cat.run.lock import hold_run_dir


def _stopped_mid_step(run_dir: Path) -> str:
    """What a second Ctrl-C leaves: the step in progress is lost; the newest checkpoint, if any,
    is where the run continues."""
    from cat.run import checkpoint as ckpt
    from cat.run.loop import resume_command

    newest = ckpt.latest_checkpoint(run_dir)
    if newest is None:
        return "stopped mid-step before the first checkpoint: run the same command again to start the run over"
    return f"stopped mid-step: the step in progress is lost; the run continues from {newest.name} with: {resume_command(run_dir)}"


def train_run(config, run_dir: Path, *, progress: bool = True, resume_requested: bool = False,
              allow_change: bool = False) -> None:
    """Start, continue or finish the run of ``config`` in ``run_dir`` (what ``cat-rl train`` does)."""
    config.run.output_dir = str(run_dir)
    from cat.models.load import resolve_device
    from cat.run.parallel import Ranks
    from cat.run.trainer import preflight

    preflight(config)
    if config.run.memory_check:
        from cat.tools.plan import run_fit

        planned = run_fit(config)
        if planned is not None and not planned.fits:
            raise ConfigError(f"memory: {planned.line()} (run.memory_check=false starts it anyway)")
    ranks = Ranks(cpu=resolve_device(config.model.device).type == "cpu", timeout_s=config.parallel.timeout_s)
    with contextlib.ExitStack() as held:
        outcome = None
        if ranks.main:  # one rank holds the folder and decides fresh start vs resume; the others follow it
            try:
                if not (run_dir / "config.yaml").exists() and resume_requested:
                    raise ConfigError(f"--resume {run_dir}: no run there (no config.yaml)")
                check_writable(run_dir)
                held.enter_context(hold_run_dir(run_dir))  # until this process is done training there
                outcome = ("ok", _prepare_run_dir(run_dir, config, allow_change=allow_change))
            except CatError as exc:
                outcome = ("error", str(exc))
        kind, value = ranks.broadcast(outcome)
        if kind == "error":
            if ranks.main:
                raise ConfigError(value)
            raise SystemExit(2)  # rank 0 printed it
        resume_from = value

        from cat.run.loop import RunLoop, SavedAndInterrupted
        from cat.run.trainer import Trainer

        loop = RunLoop(Trainer(config, run_dir))  # the loop owns the trainer and drives it
        try:
            if resume_from is not None:
                loop.restore(resume_from)
                if ranks.main:
                    for name in ("metrics.jsonl", "samples.jsonl", "rubrics.jsonl"):
                        _truncate_jsonl(run_dir / name, loop.step_done)
            try:
                loop.train(progress=progress)
            except KeyboardInterrupt as exc:
                if ranks.main and not isinstance(exc, SavedAndInterrupted):
                    print(_stopped_mid_step(run_dir), file=sys.stderr)
                raise
            # every rank done before any closes an engine: vLLM's shutdown destroys the process
            # group (the launcher's, which its engines joined), so Ranks.close's barrier comes too late
            ranks.barrier()
        finally:
            loop.close()  # engines, models and optimizer freed, whatever this process does next
    if ranks.main:
        print(f"run directory: {run_dir}")
    ranks.close()


def _prepare_run_dir(run_dir: Path, config, *, allow_change: bool):
    """Decide fresh start vs resume in ``run_dir``, a writable folder this process holds (its
    lock). Returns the checkpoint to resume from, or None."""
    from cat.config import dump_config
    from cat.run import checkpoint as ckpt

    saved = run_dir / "config.yaml"
    text = dump_config(config)
    records = [name for name, there in (("metrics.jsonl", (run_dir / "metrics.jsonl").exists()),
                                        ("checkpoints", ckpt.latest_checkpoint(run_dir) is not None)) if there]
    if not saved.exists():
        if records:  # a fresh start would append to another run's metrics and rotate away its checkpoints
            raise ConfigError(
                f"{run_dir} holds a run's {' and '.join(records)} but no config.yaml, so whether this config continues "
                f"that run cannot be told: move them away (or put the run's config.yaml back to resume it), or choose "
                f"another --output-dir")
        write_text_atomic(saved, text)
        return None
    old = saved.read_text()
    progress = bool(records)
    if old != text and (not progress or same_run(old, text)):
        write_text_atomic(saved, text)  # nothing to protect, or the same run spelled another way (moved, say)
    elif old != text:
        diff = "".join(difflib.unified_diff(old.splitlines(True), text.splitlines(True), "saved config.yaml", "this config"))
        if not allow_change:
            raise ConfigError(
                f"{run_dir} holds a run with a different config; pass --allow-config-change to continue it "
                f"anyway, or choose another --output-dir.\n{diff}"
            )
        print(f"continuing {run_dir} with a changed config:\n{diff}", file=sys.stderr)
        write_text_atomic(saved, text)
    latest = ckpt.newest_verified(run_dir, log=lambda line: print(line, file=sys.stderr))
    if latest is None:
        if (run_dir / "metrics.jsonl").exists():
            print(f"{run_dir} has no complete checkpoint: starting it from step 0", file=sys.stderr)
        for name in ("metrics.jsonl", "samples.jsonl", "rubrics.jsonl", "eval.json"):
            (run_dir / name).unlink(missing_ok=True)
        return None
    print(f"resuming {run_dir} from {latest.name}", file=sys.stderr)
    return latest


def check_writable(path: Path) -> None:
    """Create the folder ``path`` if need be and write a probe file in it; ConfigError if that
    fails."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output directory {path} is a file, not a folder: name a folder (it is made if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output directory {path} is not writable: {exc.strerror or exc}") from None


def same_run(old: str, new: str) -> bool:
    """Whether two dumped configs describe the same run: equal but for ``run.output_dir`` (where the
    run lives, not what it is: a moved run directory is the same run), for the settings of the
    memory check and of the weight sync's buckets (how a run is checked and fed to its engine, not
    what it computes: a run moved to a smaller GPU resumes with ``run.memory_check=false``), and
    for paths spelled differently that name the same file (same bytes) or the same folder."""
    import yaml

    try:
        trees = [yaml.safe_load(text) for text in (old, new)]
    except yaml.YAMLError:
        return False
    if not all(isinstance(tree, dict) for tree in trees):
        return False
    from cat.config import with_defaults

    trees = [with_defaults(tree) for tree in trees]
    for tree in trees:
        for section, keys in (("run", ("output_dir", "memory_check", "memory_gib")),
                              ("generation", ("weight_sync_bucket_mb",))):
            if isinstance(tree.get(section), dict):
                for key in keys:
                    tree[section].pop(key, None)
    return _by_content(trees[0]) == _by_content(trees[1])


def _by_content(value):
    """``value`` with every string naming an existing file replaced by its contents' hash and every
    string naming an existing folder by its real path."""
    from cat.models.gguf import sha256_file

    if isinstance(value, dict):
        return {k: _by_content(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_by_content(v) for v in value]
    if isinstance(value, str) and value and "\n" not in value and len(value) < 4096:
        try:
            path = Path(value).expanduser()
            if path.is_file():
                size = path.stat().st_size
                if size > _HASHED_BYTES:  # a model file: the same file, not the same bytes
                    return f"file {path.resolve()} ({size} bytes)"
                return "file sha256 " + sha256_file(path)
            if path.is_dir():
                return "folder " + str(path.resolve())
        except (OSError, RuntimeError):  # unreadable, or ~user that does not exist
            pass
    return value


_HASHED_BYTES = 64 << 20
"""Files up to this size (data, templates) compare by content, larger ones by their real path."""


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the rows of steps <= last_step (rows written after the checkpoint are replayed)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except json.JSONDecodeError:
            break  # a torn last line from a kill mid-write
    write_text_atomic(path, "".join(f"{line}\n" for line in kept))
