"""Loading the policy, the frozen initial policy pi_0 and their tokenizer; precision.

Every model path goes through :func:`resolve_path`: a path with a scheme goes to the plug-in that
registered it (``tiny:...`` names a tiny world's folder, built if needed: ``cat.paths``), a
``.gguf`` file is read from its Hugging Face conversion (``cat.models.gguf``, made once beside
it), anything else is a local folder or a hub id.

pi_0 is loaded once, frozen, and serves as both the KL reference and the anchor. Dropout is
switched off in both: RL computes log-probs that must match between sampling and scoring, and a
dropout-on evaluation under-reads accuracy badly.

Precision. ``model.dtype`` is the *compute* dtype. The trained policy always keeps fp32 master
weights (and so fp32 gradients and AdamW state); its forward passes run under ``autocast`` in the
compute dtype. Pure-bf16 training silently loses small updates: an AdamW step of lr 5e-7 is below
half a bf16 ulp of almost every weight, so it rounds away. Frozen models (pi_0, a judge) hold their
weights in the compute dtype, since they are never updated.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from cat import paths
from cat.errors import ConfigError
from cat.models.gguf import hf_folder, is_gguf_path

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


def master_dtype(compute: str) -> str:
    """The trained weights' dtype for a compute dtype: fp32, or fp64 when everything runs in fp64."""
    return "float64" if compute == "float64" else "float32"


def autocast(device: torch.device, dtype: str | torch.dtype | None):
    """Forward passes in ``dtype`` over weights of any dtype (a no-op for float32, float64 and None:
    those run in the weights' own dtype)."""
    dtype = _DTYPES[dtype] if isinstance(dtype, str) else dtype
    enabled = dtype in (torch.bfloat16, torch.float16)
    return torch.autocast(device.type, dtype=dtype if enabled else torch.bfloat16, enabled=enabled)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"model.device is '{name}' but no CUDA device is available")
    try:
        return torch.device(name)
    except RuntimeError:  # torch: "Expected one of cpu, cuda, ... device type at start of device string"
        raise ConfigError(f"model.device '{name}' is not a device: use auto, cpu, cuda or cuda:N") from None


def disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for attr in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if hasattr(model.config, attr) and isinstance(getattr(model.config, attr), float):
            setattr(model.config, attr, 0.0)


def _rms_norm_in_input_dtype(self, hidden_states: torch.Tensor) -> torch.Tensor:
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def _same_code(a, b) -> bool:
    return a.__code__.co_code == b.__code__.co_code and a.__code__.co_names == b.__code__.co_names


def exact_float64_norms(model: torch.nn.Module) -> int:
    """transformers' RMSNorm (Llama's, and the copies Qwen2, Qwen3 and Mistral use) rounds its input
    to float32 whatever the weights' dtype, so a float64 model is not float64 throughout: two paths
    that agree in float64 differ by float32 rounding in the gradient. Norm layers running exactly
    Llama's code get the same formula in the input's dtype; returns how many. Used for
    ``model.dtype: float64`` only."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    swapped = 0
    for module in model.modules():
        forward = type(module).forward
        if hasattr(module, "variance_epsilon") and _same_code(forward, LlamaRMSNorm.forward):
            module.forward = _rms_norm_in_input_dtype.__get__(module)
            swapped += 1
    return swapped


@contextlib.contextmanager
def no_progress_bars():
    """transformers' and the hub's progress bars off for the block (loading and saving weights),
    then back as the caller had them: the console carries one line per step, also for a Python
    caller of ``cat.train`` (the command line turns them off for good)."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def resolve_path(path: str) -> str:
    """Where the model ``path`` is loaded from (a folder, or a hub id). A name that can only be a
    local path and is not there is a ConfigError now, before transformers takes it for a hub id and
    retries the network for it."""
    resolved = paths.resolve(path)
    if is_gguf_path(resolved):
        return str(hf_folder(Path(resolved)))
    if not Path(resolved).expanduser().is_dir() and _local_path(resolved):
        raise ConfigError(_missing_folder(path, resolved))
    return resolved


def _local_path(name: str) -> bool:
    """Whether ``name`` names a local path rather than a hub id (``org/model`` or ``model``):
    absolute, home- or dot-relative, more than two parts, or a ``models/...`` folder (where
    ``cat-rl fetch-model`` puts its models; no hub organisation is called models)."""
    return (name.startswith(("/", "~", "./", "../")) or name.count("/") > 1 or "\\" in name
            or name.startswith("models/"))


def _missing_folder(path: str, resolved: str) -> str:
    """What a model path that is not there needs, with the fetch-model command where it names a
    folder fetch-model makes."""
    from cat.models.gguf import KNOWN

    where = Path(resolved).expanduser()
    said = f"model '{path}'" + (f" (resolved to {resolved})" if resolved != path else "")
    if where.exists():
        return f"{said}: {where.absolute()} is a file, not a model folder (name a folder with a config.json, or a .gguf file)"
    text = f"{said}: no model folder at {where.absolute()}"
    if not where.is_absolute() and not resolved.startswith("~"):
        text += f" (a relative model path is read from the working directory, {Path.cwd()})"
    fetchable = [name for name, known in KNOWN.items() if known.folder == where.name]
    if fetchable:
        output = "" if resolved == f"models/{where.name}" else f" --output {resolved}"
        text += f"; cat-rl fetch-model {fetchable[0]}{output} makes it"
    return text


def load_tokenizer(path: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    resolved = resolve_path(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ConfigError(f"cannot load tokenizer from '{path}': {exc}") from None
    except ValueError:  # transformers found no tokenizer files it can read there
        raise ConfigError(f"cannot load tokenizer from '{path}': it holds no tokenizer files transformers can read "
                          "(name a model folder, a hub id or a .gguf file)") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str, *, dtype: str, device: torch.device, trust_remote_code: bool = False, frozen: bool = False):
    """A causal LM whose weights are stored in ``dtype``: float32 for the trained policy (master
    weights), the compute dtype for frozen models."""
    from transformers import AutoModelForCausalLM

    resolved = resolve_path(path)
    try:
        with no_progress_bars():  # no "Loading weights" bar for each model a run loads
            model = AutoModelForCausalLM.from_pretrained(
                resolved, dtype=_DTYPES[dtype], trust_remote_code=trust_remote_code
            )
    except OSError as exc:
        raise ConfigError(f"cannot load model from '{path}': {exc}") from None
    disable_dropout(model)
    if dtype == "float64":
        exact_float64_norms(model)
    model.to(device)
    if frozen:
        model.eval()
        model.requires_grad_(False)
    return model


def context_length(path: str, *, trust_remote_code: bool = False) -> int | None:
    """The model's context window (``max_position_embeddings``), None where it does not say."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_path(path), trust_remote_code=trust_remote_code)
    return getattr(config.get_text_config(), "max_position_embeddings", None)
