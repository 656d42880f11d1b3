"""Checkpoints that cannot be lost: written aside, hashed, fsynced, then put in place.

Layout: ``<run>/checkpoints/step-000010/`` holding
* ``model/``: save_pretrained in the compute dtype (``model.dtype``), loadable by transformers
  and vLLM;
* ``master/``: the fp32 master weights, only when the compute dtype is not fp32 (exact resume
  needs them: a bf16 copy would round away what the optimizer accumulated);
* ``adapter/``: with LoRA, the adapter (peft ``save_pretrained``) that training resumes from.
  ``model/`` is then the base with the adapter merged in, and only the checkpoint a run stops at
  (its last step, or a Ctrl-C) holds it: periodic ones hold the adapter and the trainer state,
  megabytes beside the gigabytes of a merged copy (Qwen2.5-Coder-0.5B: 34 MB against 2.4 GB);
* ``trainer_state.pt`` (optimizer, scheduler, RNG states, counters) and ``COMPLETE``, written
  last: the step and every other file's size and sha256.

What holds, whatever happens:
* A kill at any moment leaves the old checkpoints, or the old ones plus a finished new one.
  Re-saving a step that has a checkpoint moves the old one aside (``.replaced-step-...``) only
  once the new one is written and fsynced; a kill between the two renames is repaired on the
  next read (the old one is put back). Folders starting with ``.tmp-`` are debris.
* Weights or optimizer state that are not finite are refused at save (nothing is written).
* A write that fails (disk full, quota, file size limit) removes what it wrote and raises
  :class:`~cat.errors.CheckpointError`; the previous checkpoints are untouched.
* :func:`newest_verified` (what a resume reads) checks every file against ``COMPLETE`` and falls
  back to the newest checkpoint that verifies, saying which ones it skipped and why; it moves a
  damaged one aside to ``rejected-step-...`` (kept, never read again), so that rotation
  (``run.keep_last``) never counts it and never deletes the checkpoint the run resumed from.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from cat.errors import CheckpointError
from cat.models.gguf import sha256_file
from cat.models.load import no_progress_bars

_PREFIX = "step-"


def _fsync_tree(path: Path) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(root))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def export_model(model, path: Path, dtype: torch.dtype, *, weights: dict | None = None) -> None:
    """save_pretrained with every floating-point weight cast to ``dtype`` (the live model is untouched);
    a LoRA policy is saved as its base model with the adapter merged in."""
    from cat.models.lora import export_weights, is_peft

    weights = export_weights(model) if weights is None else weights
    state = {k: v.detach().to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
    (model.get_base_model() if is_peft(model) else model).save_pretrained(path, state_dict=state)
    # save_pretrained records the live parameters' dtype; the file holds ``dtype``
    config_path = path / "config.json"
    config = json.loads(config_path.read_text())
    name = str(dtype).removeprefix("torch.")
    config.update({key: name for key in ("dtype", "torch_dtype") if key in config} or {"dtype": name})
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives once complete."""
    return run_dir / "checkpoints" / f"{_PREFIX}{step:06d}"


def _tensors(obj, name: str = ""):
    """(name, tensor) for every tensor in nested dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        yield name, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, f"{name}.{key}" if name else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f"{name}[{i}]")


def first_nonfinite(obj, prefix: str = "") -> str | None:
    """The name of the first floating-point tensor in ``obj`` (nested in dicts, lists, tuples;
    its names prefixed with ``prefix``) holding a NaN or an infinity."""
    for name, tensor in _tensors(obj, prefix):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def _manifest(folder: Path) -> dict[str, dict]:
    return {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(folder.rglob("*")) if p.is_file()}


def save_checkpoint(run_dir: Path, step: int, *, model, tokenizer, trainer_state: dict, keep_last: int,
                    export_dtype: torch.dtype = torch.float32, weights: dict | None = None,
                    merged: bool = True) -> Path:
    """``weights``: the model's full state when its own ``state_dict`` is sharded (FSDP).
    ``merged``: with LoRA, also write ``model/``, the base with the adapter merged in (and the
    tokenizer beside it); without it the checkpoint holds what resuming reads. Full training
    always writes ``model/`` (it is what resuming reads when the compute dtype is fp32).

    Raises CheckpointError, having written nothing that stays, when a weight or the optimizer
    state is not finite or when the disk refuses a write."""
    from cat.models.lora import is_peft

    root = run_dir / "checkpoints"
    final = checkpoint_dir(run_dir, step)
    bad = first_nonfinite(weights if weights is not None else model.state_dict()) \
        or first_nonfinite(trainer_state.get("optimizer"), "optimizer")
    if bad:
        raise CheckpointError(f"refusing to save the checkpoint of step {step}: {bad} holds NaN or inf. The earlier "
                              f"checkpoints in {root} are kept; resume from the newest with --resume {run_dir}")
    tmp = root / f".tmp-{_PREFIX}{step:06d}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        _repair(root)
        shutil.rmtree(tmp, ignore_errors=True)
        with no_progress_bars():  # no "Writing model shards" bar among a run's step lines
            if is_peft(model):
                model.save_pretrained(tmp / "adapter")  # what training resumes from
                if merged:
                    export_model(model, tmp / "model", export_dtype)  # the adapter merged in
            elif export_dtype == next(model.parameters()).dtype:  # fp32 (or fp64) compute: the export is the master
                model.save_pretrained(tmp / "model", state_dict=weights)
            else:
                model.save_pretrained(tmp / "master", state_dict=weights)
                export_model(model, tmp / "model", export_dtype, weights=weights)
        if (tmp / "model").is_dir():
            tokenizer.save_pretrained(tmp / "model")
        torch.save({**trainer_state, "rng": rng_state()}, tmp / "trainer_state.pt")
        _fsync_tree(tmp)
        complete = {"step": step, "files": _manifest(tmp)}
        with open(tmp / "COMPLETE", "w") as f:
            f.write(json.dumps(complete, indent=1))
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _is_write_failure(exc):
            raise
        kept = latest_checkpoint(run_dir)
        cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else \
            (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
        try:
            free = shutil.disk_usage(root).free / 2**20
            need = sum(f.stat().st_size for f in kept.rglob("*") if f.is_file()) / 2**20 if kept else 0.0
            cause += (f" (the disk is full: a checkpoint takes {need:.1f} MiB, {free:.1f} MiB are free; the old "
                      f"ones go only once a new one is whole)" if need > free else f" ({free:.1f} MiB free)")
        except OSError:
            pass
        raise CheckpointError(
            f"could not write the checkpoint of step {step} in {root}: {cause}. Nothing of it was left behind; "
            + (f"the newest checkpoint, {kept.name}, is intact: free space and resume with --resume {run_dir}"
               if kept else "there is no earlier checkpoint")) from None
    try:
        if final.exists():  # re-saving a step: the old copy goes aside only now that the new one is whole
            aside = root / f".replaced-{final.name}"
            if aside.exists():
                shutil.rmtree(aside)
            os.rename(final, aside)
            os.rename(tmp, final)
            _fsync_dir(root)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.rename(tmp, final)
            _fsync_dir(root)
    except OSError as exc:
        _repair(root)
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not put the checkpoint of step {step} in place in {root}: "
                              f"{exc.strerror or exc} ({exc.filename}); the earlier checkpoints are unchanged") from None
    for old in list_checkpoints(run_dir)[:-keep_last]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    for debris in root.glob(".tmp-*"):
        shutil.rmtree(debris, ignore_errors=True)
    return final


def _is_write_failure(exc: Exception) -> bool:
    """An OSError, or the error a library raised for one (safetensors and torch.save wrap the
    operating system's refusal in their own exception types)."""
    if isinstance(exc, OSError):
        return True
    text = str(exc)
    return type(exc).__name__ in ("SafetensorError", "RuntimeError") and any(
        s in text for s in ("I/O error", "os error", "write failed", "failed writing", "inline_container"))


def _repair(root: Path) -> None:
    """Finish a re-save that a kill cut between its two renames: put the old copy back."""
    for aside in root.glob(f".replaced-{_PREFIX}*"):
        final = root / aside.name.removeprefix(".replaced-")
        if (final / "COMPLETE").is_file():
            shutil.rmtree(aside, ignore_errors=True)
        elif (aside / "COMPLETE").is_file():
            shutil.rmtree(final, ignore_errors=True)
            os.rename(aside, final)
            _fsync_dir(root)


def _step_of(path: Path) -> int | None:
    suffix = path.name[len(_PREFIX):]
    return int(suffix) if suffix.isdigit() else None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (not yet verified), oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    _repair(root)
    found = [p for p in root.glob(f"{_PREFIX}*") if _step_of(p) is not None
             and (p / "COMPLETE").is_file() and (p / "trainer_state.pt").is_file()]
    return sorted(found, key=_step_of)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, unverified (:func:`newest_verified` checks its contents)."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def verify(path: Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be trusted, or None when every file matches its size
    and sha256 in ``COMPLETE``. A checkpoint written before ``COMPLETE`` listed its files is read
    whole instead: its state must load and its weights must be finite."""
    try:
        complete = json.loads((path / "COMPLETE").read_text())
    except (OSError, ValueError) as exc:
        return f"COMPLETE is unreadable ({exc})"
    files = complete.get("files") if isinstance(complete, dict) else None
    if files is None:
        return _verify_unlisted(path)
    try:
        for name, expected in files.items():
            file = path / name
            if not file.is_file():
                return f"{name} is missing"
            size = file.stat().st_size
            if size != expected["bytes"]:
                return f"{name} has {size} bytes, {expected['bytes']} were written"
            if sha256_file(file) != expected["sha256"]:
                return f"{name} differs from what was written (sha256 mismatch)"
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc}: {exc.filename})"
    except (AttributeError, KeyError, TypeError) as exc:
        return f"COMPLETE does not list its files as cat writes them ({type(exc).__name__}: {exc})"
    return None


def _verify_unlisted(path: Path) -> str | None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_trainer_state(path)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle means damaged
        return f"trainer_state.pt does not load ({type(exc).__name__}: {str(exc)[:120]})"
    bad = first_nonfinite(state.get("optimizer"), "optimizer")
    if bad:
        return f"trainer_state.pt: {bad} holds NaN or inf"
    for file in sorted(master_weights_dir(path).glob("*.safetensors")):
        try:
            bad = first_nonfinite(load_file(file))
        except (SafetensorError, OSError) as exc:
            return f"{file.relative_to(path)} does not load ({exc})"
        if bad:
            return f"{file.relative_to(path)}: {bad} holds NaN or inf"
    return None


def newest_verified(run_dir: Path, log=print) -> Path | None:
    """The newest checkpoint whose files verify. Each newer one that does not is reported through
    ``log`` and moved aside to ``checkpoints/rejected-step-...``. CheckpointError when there were
    checkpoints and none verifies: starting again from step 0 is for the user to decide."""
    found = list_checkpoints(run_dir)
    rejected = []
    for path in reversed(found):
        reason = verify(path)
        if reason is None:
            return path
        aside = path.with_name(f"rejected-{path.name}")
        if aside.exists():  # rejected before: keep both
            aside = aside.with_name(f"{aside.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        rejected.append(f"{path.name} ({reason})")
        try:
            os.rename(path, aside)
            where = f"moved it to {aside} (kept for inspection)"
        except OSError as exc:
            where = f"could not move it aside ({exc.strerror or exc}): move or delete it before the run saves again"
        log(f"skipping checkpoint {path.name}: {reason}; {where}")
    if rejected:
        raise CheckpointError(f"none of the {len(found)} checkpoint(s) in {run_dir / 'checkpoints'} can be trusted: "
                              f"{'; '.join(rejected)}. They were moved to rejected-step-*. To start the run again "
                              f"from step 0, delete or move {run_dir}, or choose another --output-dir")
    return None


def master_weights_dir(path: Path) -> Path:
    """Where a checkpoint keeps the weights to resume from: ``adapter/`` (LoRA), ``master/`` (fp32
    master weights of a run with a lower compute dtype), else ``model/``."""
    for name in ("adapter", "master"):
        if (path / name).is_dir():
            return path / name
    return path / "model"


def load_trainer_state(path: Path) -> dict:
    return torch.load(path / "trainer_state.pt", weights_only=False)
