"""Crash-safe checkpoints: written to a temporary folder, fsynced, then renamed into place.

Layout: ``<run>/checkpoints/step-000010/`` holding
* ``model/``: save_pretrained in the compute dtype (``model.dtype``), loadable by transformers
  and vLLM;
* ``master/``: the fp32 master weights, only when the compute dtype is not fp32 (exact resume
  needs them: a bf16 copy would round away what the optimizer accumulated);
* ``adapter/``: with LoRA, the adapter (peft ``save_pretrained``) that training resumes from;
  ``model/`` is then the base with the adapter merged in;
* ``trainer_state.pt`` (optimizer, scheduler, RNG states, counters) and ``COMPLETE`` (written last). A kill at any moment leaves either the old set of checkpoints or the
old set plus a finished new one; folders starting with ``.tmp-`` are debris and are ignored.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

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
    from cat.lora import export_weights, is_peft

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


def save_checkpoint(run_dir: Path, step: int, *, model, tokenizer, trainer_state: dict, keep_last: int,
                    export_dtype: torch.dtype = torch.float32, weights: dict | None = None) -> Path:
    """``weights``: the model's full state when its own ``state_dict`` is sharded (FSDP)."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(run_dir, step)
    tmp = root / f".tmp-{_PREFIX}{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    from cat.lora import is_peft

    if is_peft(model):
        model.save_pretrained(tmp / "adapter")  # what training resumes from
        export_model(model, tmp / "model", export_dtype)  # the adapter merged in
    elif export_dtype == next(model.parameters()).dtype:  # fp32 (or fp64) compute: the export is the master
        model.save_pretrained(tmp / "model", state_dict=weights)
    else:
        model.save_pretrained(tmp / "master", state_dict=weights)
        export_model(model, tmp / "model", export_dtype, weights=weights)
    tokenizer.save_pretrained(tmp / "model")
    torch.save({**trainer_state, "rng": rng_state()}, tmp / "trainer_state.pt")
    (tmp / "COMPLETE").write_text(json.dumps({"step": step}))
    _fsync_tree(tmp)
    if final.exists():
        stale = root / f".tmp-replaced-{step:06d}-{os.getpid()}"
        os.rename(final, stale)
        shutil.rmtree(stale, ignore_errors=True)
    os.rename(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for debris in root.glob(".tmp-*"):
        shutil.rmtree(debris, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{_PREFIX}*") if (p / "COMPLETE").is_file() and (p / "trainer_state.pt").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX) :]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def master_weights_dir(path: Path) -> Path:
    """Where a checkpoint keeps the weights to resume from: ``adapter/`` (LoRA), ``master/`` (fp32
    master weights of a run with a lower compute dtype), else ``model/``."""
    for name in ("adapter", "master"):
        if (path / name).is_dir():
            return path / name
    return path / "model"


def load_trainer_state(path: Path) -> dict:
    return torch.load(path / "trainer_state.pt", weights_only=False)
