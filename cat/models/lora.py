"""LoRA through peft, and why it matters more for CaT than the memory: the base model with the
adapter switched off *is* pi_0, so the KL reference and the anchor cost no second copy.

* ``wrap`` turns the loaded base (frozen, in the compute dtype) into a peft model whose adapter
  weights are fp32 (peft's ``autocast_adapter_dtype``): the optimizer state is the adapter's only.
* ``AdapterOff`` is pi_0: the same module, every call made with the adapter disabled. peft then
  runs each wrapped layer's base layer alone, so its log-probs are the base model's bit for bit.
* ``export_weights`` gives what an engine or an export loads under the base model's own names:
  the adapter merged in (``W + alpha / r * B @ A``) for the policy, the base weights for pi_0.
  vLLM gets the policy this way, merged; its own LoRA support is not used, so a step's weight sync
  is the same for full and LoRA training. ``stream_weights`` gives the same tensors one at a time
  (the weight sync's source: no second copy of the model, FSDP shards gathered one by one).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def wrap(model, settings):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=settings.target_modules, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config, autocast_adapter_dtype=True)
    except ValueError as exc:  # peft's "target modules not found" (NoMatchingPeftModuleError)
        from cat.errors import ConfigError

        linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ConfigError(f"model.lora.target_modules {settings.target_modules}: {exc}; this model's linear "
                          f"layers are named {linear}") from None


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


class AdapterOff:
    """pi_0 as a view of a peft policy: forward, generate and weights with the adapter disabled.
    Everything else (device, config, train/eval) is the policy's."""

    def __init__(self, policy):
        self.policy = policy

    def __call__(self, *args, **kwargs):
        with self.policy.disable_adapter():
            return self.policy(*args, **kwargs)

    def generate(self, *args, **kwargs):
        with self.policy.disable_adapter():
            return self.policy.generate(*args, **kwargs)

    def parameters(self):
        return (p for p in self.policy.parameters() if not p.requires_grad)

    def __getattr__(self, name):
        return getattr(self.policy, name)


def export_weights(model) -> dict[str, torch.Tensor]:
    """The weights to load into an engine or save as a plain model, by the base model's names:
    merged for a peft policy, the base for ``AdapterOff``, ``state_dict()`` otherwise; all of
    them at once (``stream_weights`` gives them one by one)."""
    return dict(stream_weights(model))


def stream_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """``export_weights`` one tensor at a time, each made only when it is asked for: an FSDP
    shard gathered whole (a collective: every rank must walk the stream to its end, in step), a
    LoRA layer's adapter merged into its weight alone. What a consumer drops is freed before the
    next tensor is made, so the stream never holds a second copy of the model."""
    if isinstance(model, AdapterOff):
        yield from _base_weights(model.policy, merged=False)
    elif is_peft(model):
        yield from _base_weights(model, merged=True)
    else:
        for name, tensor in model.state_dict().items():
            yield name, tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _base_weights(peft_model, *, merged: bool) -> Iterator[tuple[str, torch.Tensor]]:
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    lora = {name: module for name, module in base.named_modules() if merged and isinstance(module, LoraLayer)}
    with torch.no_grad():
        for name, tensor in base.state_dict().items():
            if ".lora_" in name:
                continue
            clean = name.replace(".base_layer.", ".")
            owner = clean.rsplit(".", 1)[0]
            module = lora.get(owner)
            parts = [module.get_delta_weight(a) for a in module.active_adapters if a in module.lora_A] \
                if module is not None and clean.endswith(".weight") else []
            if parts:
                wide = torch.promote_types(tensor.dtype, torch.float32)  # fp32, or fp64 for a fp64 model
                tensor = (tensor.to(wide) + torch.stack(parts).sum(0).to(wide)).to(tensor.dtype)
            del parts, module  # the adapter's update is not held while the consumer works
            out, tensor = tensor.detach(), None
            yield clean, out
            del out


def adapter_state(model) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model)


def load_adapter(model, path) -> None:
    """The adapter weights saved by ``model.save_pretrained(path)``, bit for bit."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        from cat.errors import ConfigError

        raise ConfigError(f"{path}: adapter weights do not fit this model's LoRA layers ({unexpected[:3]} ...)")


def adapter_base(path) -> str | None:
    """The base model an adapter saved in ``path`` (peft ``save_pretrained``) was trained on, as
    peft recorded it."""
    import json
    from pathlib import Path

    return json.loads((Path(path) / "adapter_config.json").read_text()).get("base_model_name_or_path")


def merged_with(model, path):
    """``model``, the plain base, with the adapter saved in ``path`` merged in as a checkpoint's
    ``model/`` holds it (``export_weights``): what ``cat-rl eval`` loads of a LoRA checkpoint
    saved mid-run, which holds the adapter only. Returns the plain model."""
    from peft import PeftModel

    peft = PeftModel.from_pretrained(model, str(path))
    weights = export_weights(peft)
    base = peft.unload()  # the plain modules back, holding the base's weights
    base.load_state_dict(weights)
    return base
