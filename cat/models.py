"""Loading the policy, the frozen initial policy pi_0 and their tokenizer; precision.

Every model path goes through :func:`resolve_path`: ``tiny:...`` names a tiny world's folder
(built if needed), a ``.gguf`` file is read from its Hugging Face conversion (``cat.gguf_models``,
made once beside it), anything else is a local folder or a hub id.

pi_0 is loaded once, frozen, and serves as both the KL reference and the anchor. Dropout is
switched off in both: RL computes log-probs that must match between sampling and scoring, and a
dropout-on evaluation under-reads accuracy badly (see docs/design notes).

Precision. ``model.dtype`` is the *compute* dtype. The trained policy always keeps fp32 master
weights (and so fp32 gradients and AdamW state); its forward passes run under ``autocast`` in the
compute dtype. Pure-bf16 training silently loses small updates: an AdamW step of lr 5e-7 is below
half a bf16 ulp of almost every weight, so it rounds away. Frozen models (pi_0, a judge) hold their
weights in the compute dtype, since they are never updated.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cat import tiny
from cat.errors import ConfigError
from cat.gguf_models import hf_folder, is_gguf_path

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


def autocast(device: torch.device, dtype: str | torch.dtype | None):
    """Forward passes in ``dtype`` over weights of any dtype (a no-op for float32 / None)."""
    dtype = _DTYPES[dtype] if isinstance(dtype, str) else dtype
    return torch.autocast(device.type, dtype=dtype or torch.float32,
                          enabled=dtype is not None and dtype != torch.float32)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"model.device is '{name}' but no CUDA device is available")
    return torch.device(name)


def disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for attr in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if hasattr(model.config, attr) and isinstance(getattr(model.config, attr), float):
            setattr(model.config, attr, 0.0)


def resolve_path(path: str) -> str:
    """Where the model ``path`` is loaded from (a folder, or a hub id)."""
    resolved = tiny.resolve(path)
    if is_gguf_path(resolved):
        return str(hf_folder(Path(resolved)))
    return resolved


def load_tokenizer(path: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    resolved = resolve_path(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ConfigError(f"cannot load tokenizer from '{path}': {exc}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str, *, dtype: str, device: torch.device, trust_remote_code: bool = False, frozen: bool = False):
    """A causal LM whose weights are stored in ``dtype``: float32 for the trained policy (master
    weights), the compute dtype for frozen models."""
    from transformers import AutoModelForCausalLM

    resolved = resolve_path(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolved, dtype=_DTYPES[dtype], trust_remote_code=trust_remote_code
        )
    except OSError as exc:
        raise ConfigError(f"cannot load model from '{path}': {exc}") from None
    disable_dropout(model)
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
