"""The trained policy's side of a step: weights, forward, backward, optimizer step and their state.

A ``Learner`` holds the policy as fp32 master weights (forward passes autocast to
``model.dtype``, see ``cat.models.load``), AdamW and the learning-rate schedule, on
``accelerate``. In one process the module is used as is. In several (``cat.run.parallel``) it is
wrapped in DistributedDataParallel: each rank backpropagates its own rows and the gradients are
all-reduced once per optimizer step, at the last micro-batch (``micro_batch(last=...)``). The
trainer's losses are already normalised by the whole step's token and sequence counts, so the
step's gradient is the *sum* of the ranks' gradients; DDP averages, so ``backward`` multiplies by
the number of ranks.

Every rank must join that all-reduce even when it holds no rows (its groups were all unscored):
``idle_backward`` takes a zero-weighted backward through every parameter for it.

With ``parallel.strategy: fsdp`` the policy is sharded with FSDP2 (``fully_shard`` per decoder
layer, then the root). Every forward all-gathers a layer's weights, so every rank must run the
same number of forward passes: the trainer pads a rank's micro-batches with idle ones
(``forwards_in_step``). Gradients are reduce-scattered (averaged, hence the same factor as DDP).
Generation on the hf backend runs inside ``whole_weights()``, which gathers every layer once and
keeps it gathered until generation ends (a generate call makes a different number of forward
passes on each rank). Checkpoints hold full (unsharded) state, written by rank 0.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

import torch

from cat.config import ModelConfig, OptimConfig
from cat.errors import ConfigError, TrainingHalted
from cat.models.load import load_model, master_dtype, torch_dtype
from cat.models.logprobs import token_logprobs
from cat.run.parallel import Ranks

logger = logging.getLogger(__name__)


class Learner:
    def __init__(self, model: ModelConfig, optim: OptimConfig, *, ranks: Ranks, device: torch.device,
                 total_updates: int, max_nonfinite_in_a_row: int, strategy: str = "ddp", log=None):
        from accelerate import Accelerator

        self.model_config, self.optim_config = model, optim
        self.ranks, self.device, self.log = ranks, device, log or logger.info
        self.max_nonfinite_in_a_row = max_nonfinite_in_a_row
        # autocast is ours (cat.models.load.autocast), so accelerate's mixed precision stays off
        self.accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision="no")
        # full fine-tuning: fp32 master weights; LoRA: the frozen base in the compute dtype, an fp32 adapter
        self.lora = model.lora is not None
        self.policy = load_model(model.name_or_path, dtype=model.dtype if self.lora else master_dtype(model.dtype), device=device,
                                 trust_remote_code=model.trust_remote_code)
        if model.gradient_checkpointing:
            self.policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.lora:
            from cat.models.lora import wrap

            self.policy.requires_grad_(False)
            self.policy = wrap(self.policy, model.lora)
        self.policy.train()
        self.fsdp = ranks.world > 1 and strategy == "fsdp"
        # fsdp checkpoints hold full optimizer state keyed by parameter name, whatever the process count
        self.named_state = strategy == "fsdp"
        if self.fsdp:
            _fully_shard(self.policy)
        self.trained = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(optim, self.trained)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _schedule(optim.schedule, optim.warmup_steps, total_updates))
        ddp = ranks.world > 1 and not self.fsdp
        self.module = self.accelerator.prepare_model(self.policy) if ddp else self.policy
        self.nonfinite_in_a_row = 0
        # fp16 gradients underflow without loss scaling: torch's dynamic scaler (a no-op otherwise)
        self.scaler = torch.amp.GradScaler(device.type, enabled=model.dtype == "float16")

    # ---- forward / backward ------------------------------------------------------------------

    @property
    def shares_prompts(self) -> bool:
        """Whether a group's prompt may be forwarded once for its rows (``run.share_prompt_forward``):
        not with gradient checkpointing (transformers drops the cache there) nor FSDP (every rank
        must make the same number of forward passes)."""
        return not (self.model_config.gradient_checkpointing or self.fsdp)

    def logprobs(self, input_ids, attention_mask, completion_length: int, temperature: float, *,
                 with_entropy: bool = False, prompt_groups: torch.Tensor | None = None):
        """The policy's log-probs (and entropy) of the completion tokens, with gradient; rows with
        the same ``prompt_groups`` value share one prompt forward (see ``cat.models.logprobs``)."""
        return token_logprobs(self.module, input_ids.to(self.device), attention_mask.to(self.device),
                              completion_length, temperature, with_entropy=with_entropy,
                              compute_dtype=self.model_config.dtype,
                              prompt_groups=prompt_groups if self.shares_prompts else None,
                              prompt_model=self.policy)

    @contextlib.contextmanager
    def micro_batch(self, *, last: bool):
        """Wrap a micro-batch's forward and backward: gradients are all-reduced only at the last."""
        if self.fsdp:
            self.policy.set_requires_gradient_sync(last)
            yield
        elif self.ranks.world > 1 and not last:
            with self.module.no_sync():
                yield
        else:
            yield

    @contextlib.contextmanager
    def whole_weights(self):
        """The policy's weights gathered whole for the duration (FSDP; a no-op otherwise): for
        generation, whose number of forward passes differs between ranks. Every rank must enter."""
        if not self.fsdp:
            yield
            return
        sharded = _fsdp_modules(self.policy)
        for m in sharded:
            m.set_reshard_after_forward(False)
            m.unshard()
        try:
            yield
        finally:
            for m in sharded:
                m.reshard()
                m.set_reshard_after_forward(True)

    def forwards_in_step(self, mine: int) -> int:
        """How many forward passes every rank makes this step: its own count, or with FSDP the
        largest over ranks (the others pad with idle passes)."""
        return int(max(self.ranks.gather(mine))) if self.fsdp else mine

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss * self.ranks.world).backward()

    def idle_backward(self, input_ids, attention_mask, completion_length: int, temperature: float) -> None:
        """A backward that adds zero to every gradient: this rank's share of the all-reduce when it
        has no rows of its own (any real row will do as input)."""
        logp, _ = self.logprobs(input_ids, attention_mask, completion_length, temperature)
        self.backward(logp.sum() * 0.0)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, loss_value: float) -> dict:
        """Clip, then take the optimizer and schedule step; a non-finite loss or gradient norm skips
        the update (``run.max_nonfinite_in_a_row`` in a row halt the run)."""
        max_norm = self.optim_config.max_grad_norm
        params = [p for p in self.trained if p.grad is not None]
        self.scaler.unscale_(self.optimizer)  # fp16: the true gradients, before clipping
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else float("inf"))
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        scaled = self.scaler.is_enabled()
        if scaled and math.isfinite(loss_value) and not math.isfinite(norm):
            # the scaled gradients overflowed: fp16's dynamic scaling backs off and the step is skipped
            self.zero_grad()
            scale = self.scaler.get_scale()
            self.scaler.update()
            self.log(f"fp16 gradients overflowed at loss scale {scale:g}: update skipped, scale now "
                     f"{self.scaler.get_scale():g}")
            return {"grad_norm": norm, "skipped_update": 1, "lr": self.scheduler.get_last_lr()[0],
                    "loss_scale": scale}
        if not (math.isfinite(loss_value) and math.isfinite(norm)):
            self.zero_grad()
            if scaled:
                self.scaler.update()
            self.nonfinite_in_a_row += 1
            self.log(f"non-finite loss or gradient (loss={loss_value}, grad_norm={norm}): update skipped "
                     f"({self.nonfinite_in_a_row} in a row)")
            if self.nonfinite_in_a_row >= self.max_nonfinite_in_a_row:
                raise TrainingHalted(
                    f"{self.nonfinite_in_a_row} non-finite updates in a row (run.max_nonfinite_in_a_row); "
                    "lower optim.lr or check the rewards"
                )
            return {"grad_norm": norm, "skipped_update": 1, "lr": self.scheduler.get_last_lr()[0]}
        self.nonfinite_in_a_row = 0
        scale = self.scaler.get_scale() if scaled else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        return {"grad_norm": norm, "skipped_update": 0, "lr": lr, **({"loss_scale": scale} if scaled else {})}

    # ---- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Optimizer, schedule and counters; with FSDP the optimizer state is gathered whole
        (every rank must call this; rank 0 saves it)."""
        if self.named_state:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            optimizer = get_optimizer_state_dict(self.policy, self.optimizer,
                                                 options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            optimizer = self.optimizer.state_dict()
        return {"optimizer": optimizer, "scheduler": self.scheduler.state_dict(),
                "nonfinite_in_a_row": self.nonfinite_in_a_row, "strategy": "fsdp" if self.named_state else "ddp",
                "scaler": self.scaler.state_dict(), "optimizer_name": self.optim_config.name}

    def load_state_dict(self, state: dict) -> None:
        saved, mine = state.get("strategy", "ddp"), "fsdp" if self.named_state else "ddp"
        if saved != mine:
            raise ConfigError(f"the checkpoint was saved with parallel.strategy={saved} and this run has {mine}: "
                              f"resume with parallel.strategy={saved} (on any number of processes)")
        name = state.get("optimizer_name", "adamw")
        if name != self.optim_config.name:
            raise ConfigError(f"the checkpoint's optimizer state is {name}'s and this run has optim.name="
                              f"{self.optim_config.name}: resume with optim.name={name}")
        if self.named_state:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.policy, self.optimizer, optim_state_dict=state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.nonfinite_in_a_row = state.get("nonfinite_in_a_row", 0)
        if state.get("scaler"):  # fp16's loss scale and growth count: the resumed run scales as it would have
            self.scaler.load_state_dict(state["scaler"])

    def full_weights(self) -> dict[str, torch.Tensor] | None:
        """The policy's weights whole, on CPU, for a checkpoint: every rank must call it with FSDP
        (rank 0 gets them); None when the module's own ``state_dict`` already is whole."""
        if not self.fsdp:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_master_weights(self, path: Path) -> None:
        """The trained weights of a checkpoint (``cat.run.checkpoint.master_weights_dir``), bit for
        bit: the fp32 master weights, or the LoRA adapter."""
        if self.lora:
            from cat.models.lora import load_adapter

            load_adapter(self.policy, path)
            return
        from transformers import AutoModelForCausalLM

        dtype = torch_dtype(master_dtype(self.model_config.dtype))
        weights = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).state_dict()
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(self.policy, weights, options=StateDictOptions(full_state_dict=True))
        else:
            self.policy.load_state_dict(weights)


def _fully_shard(model) -> None:
    """FSDP2 over a transformers model: one shard group per block it must not split (its
    ``_no_split_modules``, the decoder layers), then the root for the rest."""
    from torch.distributed.fsdp import fully_shard

    blocks = set(getattr(model, "_no_split_modules", None) or [])
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(model)


def _fsdp_modules(model) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def build_optimizer(optim: OptimConfig, params: list) -> torch.optim.Optimizer:
    """The optimizer ``optim.name`` names over ``params``, with the section's learning rate, betas
    and weight decay (its schedule is the learner's)."""
    if optim.name == "adamw_8bit":
        try:
            import bitsandbytes
        except ImportError as exc:
            raise ConfigError(f"optim.name adamw_8bit needs bitsandbytes: pip install 'cat-rl[bnb]' ({exc})") from None
        return bitsandbytes.optim.AdamW8bit(params, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
    return torch.optim.AdamW(params, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)


def _schedule(kind: str, warmup: int, total: int):
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    return factor
