"""cat's reference-GRPO step against TRL's GRPOTrainer on identical work (CPU fp32, or a GPU in bf16).

    /tmp/trlvenv/bin/python benchmarks/trl_side_by_side.py --pairs 12
    /tmp/trlvenv/bin/python benchmarks/trl_side_by_side.py --model smollm2 --pairs 4 --warmup 1
    /tmp/trlvenv/bin/python benchmarks/trl_side_by_side.py --model qwen2.5-coder-0.5b --pairs 3 --warmup 1 --one-at-a-time
    python3 benchmarks/trl_side_by_side.py --model smollm2 --device cuda --pairs 4 --warmup 1   # a GPU, bf16

``--model tiny`` (default): the tiny arith world's 0.9M-parameter model. ``--model smollm2``:
SmolLM2-135M-Instruct (real vocabulary of 49,152, real chat template; ``cat-rl fetch-model
smollm2`` puts it in models/), on 4 prompts x 8 rollouts per step, its answers read by cat's
answer chain (a small chat model rarely writes ``\\boxed{}``) on both sides, and the CaT arm's
anchor as in experiments/smollm2_addition_cat.yaml (the short synthesis template, 64 greedy tokens).

TRL is not a dependency of cat, so this runs from a virtualenv that holds both (tested with
trl 1.16.0, transformers 5.19.0, torch 2.13.0+cpu). From the repository root::

    python3 -m venv /tmp/trlvenv
    /tmp/trlvenv/bin/pip install uv
    /tmp/trlvenv/bin/uv pip install --python /tmp/trlvenv/bin/python \\
        torch==2.13.0 transformers==5.19.0 tokenizers==0.23.3 trl==1.16.0 -e .

(on a machine with local wheel mirrors, add their ``--find-links`` / ``--extra-index-url`` flags
and ``--index-strategy unsafe-best-match``, and keep torch the CPU build).

Three worker processes, each holding a warm trainer and taking one optimizer step on request:
cat with the gold estimator (reference-based GRPO), TRL's ``GRPOTrainer``, and cat with the
synthesis estimator (CaT: pi_0 reads the rollouts and writes the reference). Steps are
interleaved (cat, TRL, CaT, then the reverse order, ...), the first ``--warmup`` rounds are
discarded, and every step is timed inside its worker (no IPC in the numbers). Each worker runs
with ``OMP_NUM_THREADS=1`` and ``torch.set_num_threads(1)``, so the two sides never compete for
a core within a step and share no RNG or thread state. ``--one-at-a-time`` runs the sides one
after another instead, one worker alive at a time, for a model whose three fine-tunes do not fit
in memory together (Qwen2.5-0.5B in fp32 on 24 GB).

Identical work: the same model files and tokenizer, the same prompts in the same order (the tiny
world's problems; chat template, user message = problem; checked token for token every step),
16 prompts x 8 (SmolLM2: 4 x 8) rollouts sampled at temperature 1 (top_p 1, top_k 0) up to 32 new tokens, one generate call of
128 rows, the same exact-match reward function, group-scaled advantages, the dapo loss with
beta 0, epsilon 0.2, one iteration, one micro-batch of 128 sequences, plain ``torch.optim.AdamW``
(lr 1e-4, 1e-6 on Qwen2.5-0.5B, betas (0.9, 0.999), eps 1e-8, weight decay 0) at a constant rate, gradient norm
clipped at 1.0, fp32 on CPU. The effective settings are read back from both live trainers and
printed side by side.

``--device cuda`` runs both sides on the GPU, by default in bf16 mixed precision (``--dtype``):
fp32 master weights, gradients and AdamW state with forward passes under bf16 autocast, which
is what cat's ``model.dtype: bfloat16`` and TRL's ``bf16=True`` on a model loaded in fp32 both
do. The steps still run one at a time (one worker computes while the others wait), so the GPU
is never shared within a step. GPU work is asynchronous, so there every timer (the step's and
the model clock's) synchronizes the device before it reads the clock, and each side reports
the peak GPU memory torch's allocator held (``torch.cuda.max_memory_allocated``). Rows of zero-spread groups are forwarded and backpropagated on both sides
(cat skips them by default; ``--cat-skip-zero-advantage`` times that).

Model time (both sides, by the same hooks): wall time inside generation (TRL's
``model.generate`` calls; cat's shared prefill and its own decoding loop, which replace
``generate`` on its hf backend), inside top-level forward passes outside generation, and inside
``torch.autograd.backward``. The non-model
overhead is the step minus those three.

A benchmark, not a test: on a shared 2-core machine numbers move by 10-20% between runs; read the
paired ratios.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SETUP = """\
python3 -m venv /tmp/trlvenv
/tmp/trlvenv/bin/pip install uv
/tmp/trlvenv/bin/uv pip install --python /tmp/trlvenv/bin/python \\
    torch==2.13.0 transformers==5.19.0 tokenizers==0.23.3 trl==1.16.0 -e .
/tmp/trlvenv/bin/python benchmarks/trl_side_by_side.py --pairs 12"""

# The work both sides do, in one place (configure() sets the model's).
# lr: a full fine-tune of Qwen2.5-0.5B at 1e-4 is wrecked by its first rewarded step (its rollouts
# then run to the token limit on one side and not on another, so the sides stop doing the same
# work); 1e-6 keeps it answering as pi_0 does
WORK = {"tiny": {"prompts": 16, "generations": 8, "tokens": 32, "lr": 1e-4},
        "smollm2": {"prompts": 4, "generations": 8, "tokens": 32, "lr": 1e-4},
        "qwen2.5-coder-0.5b": {"prompts": 2, "generations": 8, "tokens": 32, "lr": 1e-6}}
FOLDER_WORK = WORK["qwen2.5-coder-0.5b"]
"""The work for a model named by its folder (any causal LM in Hugging Face format)."""
MODEL = "tiny"
DEVICE = "cpu"  # or cuda (--device)
DTYPE = "float32"  # the compute dtype (--dtype): float32, or bfloat16 as mixed precision
PROMPTS_PER_STEP = 16
NUM_GENERATIONS = 8
MAX_NEW_TOKENS = 32
TEMPERATURE = 1.0
TOP_P = 1.0
LR = 1e-4
BETAS = (0.9, 0.999)
MAX_GRAD_NORM = 1.0
EPSILON = 0.2
SEED = 0
BATCH = PROMPTS_PER_STEP * NUM_GENERATIONS  # sequences per optimizer step, one micro-batch


def configure(model: str, device: str = "cpu", dtype: str = "float32") -> None:
    """The model, the device and compute dtype, and the work per step, in the parent and in every
    (spawned) worker."""
    global MODEL, DEVICE, DTYPE, PROMPTS_PER_STEP, NUM_GENERATIONS, MAX_NEW_TOKENS, BATCH, LR
    MODEL, DEVICE, DTYPE = model, device, dtype
    work = WORK.get(model, FOLDER_WORK)
    PROMPTS_PER_STEP, NUM_GENERATIONS, MAX_NEW_TOKENS, LR = (work[k] for k in ("prompts", "generations", "tokens", "lr"))
    BATCH = PROMPTS_PER_STEP * NUM_GENERATIONS

SIDES = ("cat", "trl", "cat_synthesis")
TITLES = {"cat": "cat gold", "trl": "TRL", "cat_synthesis": "cat CaT"}


# ---- the reward (the same function on both sides) -----------------------------------------------

def boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` in ``text`` (braces matched), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def read_answer(text: str) -> str | None:
    """The tiny world's answer is its box; a real chat model's is what cat's answer chain reads."""
    if MODEL == "tiny":
        return boxed(text)
    return _answer_chain()(text)


_CHAIN = []


def _answer_chain():
    if not _CHAIN:
        from cat.config import AnswerConfig
        from cat.rewards.answers import AnswerChain

        _CHAIN.append(AnswerChain.from_config(AnswerConfig()))
    return _CHAIN[0]


def exact_match(prompts, completions, answer=None, reference_answer=None, **_):
    """1.0 when the answer read (the box on the tiny world, cat's answer chain on a real model)
    equals the reference answer after strip, else 0.0.

    TRL passes conversational completions (lists of messages) and the dataset's ``answer``
    column; cat passes completion texts and ``reference_answer`` (the gold answer under the gold
    estimator, the anchor's under synthesis)."""
    golds = reference_answer if reference_answer is not None else answer
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    out = []
    for text, gold in zip(texts, golds, strict=True):
        got = read_answer(text)
        out.append(1.0 if got is not None and gold is not None and got.strip() == str(gold).strip() else 0.0)
    return out


# ---- clocks -------------------------------------------------------------------------------------

def now() -> float:
    """perf_counter, after the GPU's queued work has finished (on ``--device cuda``): a timer
    read while kernels are still queued would time their launch, not their work."""
    if DEVICE == "cuda":
        import torch

        torch.cuda.synchronize()
    return time.perf_counter()


class ModelClock:
    """Wall time inside the model: whole ``generate`` calls (and the forward passes within them),
    top-level forward passes outside generate, and autograd backward. Installed identically on
    both sides; each hook costs a perf_counter call (one forward per generated token, plus the
    update's) and, on a GPU, a device synchronize before it."""

    KEYS = ("generate", "generate_forward", "forward", "backward")

    def __init__(self):
        import torch

        self.totals = dict.fromkeys(self.KEYS, 0.0)
        self._generating = 0
        self._starts: list[float] = []
        real_backward = torch.autograd.backward  # what Tensor.backward calls

        def backward(*args, **kwargs):
            start = now()
            try:
                return real_backward(*args, **kwargs)
            finally:
                self.totals["backward"] += now() - start

        torch.autograd.backward = backward

    def watch(self, model) -> None:
        model.register_forward_pre_hook(lambda *_: self._starts.append(now()))
        model.register_forward_hook(self._forward_done)
        model.generate = self.generating(model.generate)

    def watch_decoding(self) -> None:
        """cat's hf backend decodes in its own loop (``_Decoder.run``) after a shared prefill
        (``_SharedPrefill.prefill``), not in ``model.generate``: both count as generation, the
        side's equivalent of TRL's ``generate`` call (which prefills and decodes)."""
        from cat.generation import hf

        hf._Decoder.run = self.generating(hf._Decoder.run)
        hf._SharedPrefill.prefill = self.generating(hf._SharedPrefill.prefill)
        self.watch_fused_head()

    def watch_fused_head(self) -> None:
        """cat's log-probs switch the output layer off inside the model's forward and apply it
        after, chunk by chunk (``linear_log_softmax``): that is the model's output layer, so it
        counts as forward time (its backward is inside ``torch.autograd.backward`` already), as
        TRL's output layer counts inside its forward. Without this, at 152k vocabulary the output
        layer's matmuls would land in the non-model overhead."""
        from cat.models import logprobs

        real = logprobs.linear_log_softmax

        def head(*args, **kwargs):
            start = now()
            try:
                return real(*args, **kwargs)
            finally:
                self.totals["generate_forward" if self._generating else "forward"] += now() - start

        logprobs.linear_log_softmax = head

    def generating(self, fn):
        """``fn`` timed as generation: its forward passes count as generation's."""
        def wrapper(*args, **kwargs):
            start = now()
            self._generating += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._generating -= 1
                if not self._generating:
                    self.totals["generate"] += now() - start
        return wrapper

    def _forward_done(self, *_):
        seconds = now() - self._starts.pop()
        self.totals["generate_forward" if self._generating else "forward"] += seconds

    def take(self) -> dict:
        """The totals since the last take, and reset."""
        out, self.totals = self.totals, dict.fromkeys(self.KEYS, 0.0)
        return out


def timed(totals: dict, key: str, fn):
    """``fn`` with its wall time added to ``totals[key]``."""
    def wrapper(*args, **kwargs):
        start = now()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[key] = totals.get(key, 0.0) + now() - start
    return wrapper


def pin_threads() -> None:
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already ran
        pass


def world() -> Path:
    from cat.worlds import arith as tiny

    folder = tiny.shipped("tiny-arith")
    if not (folder / "model" / "config.json").exists():
        raise SystemExit(f"the shipped tiny world is missing at {folder} (a checkout with worlds/ is needed)")
    return folder


def model_folder() -> Path:
    if MODEL == "tiny":
        return world() / "model"
    from cat.models.gguf import KNOWN, fetch

    if MODEL not in KNOWN:  # a folder
        return Path(MODEL).resolve()
    known = KNOWN[MODEL]
    return fetch(known, ROOT / "models" / known.folder)  # the folder cat-rl fetch-model made, else made now


# ---- cat ----------------------------------------------------------------------------------------

def cat_overrides(folder: Path, skip_zero_advantage: bool, as_shipped: bool = False) -> list[str]:
    """Everything the comparison depends on, stated even where it is cat's default. ``as_shipped``:
    cat's own reward (math_equivalence: a numeric fast path, then math-verify) instead of the
    benchmark's exact match."""
    reward = ["reward.name=math_equivalence"] if as_shipped else ["reward.name=exact_match"]
    anchor = [] if MODEL == "tiny" else ["anchor.template=math_synthesis_brief", "anchor.max_new_tokens=64"]
    return [
        f"model.name_or_path={model_folder()}", f"model.device={DEVICE}", f"model.dtype={DTYPE}",
        "model.gradient_checkpointing=false",
        f"data.path={folder / 'train.jsonl'}", "data.shuffle=false", "eval.path=null",
        f"generation.num_generations={NUM_GENERATIONS}", f"generation.max_new_tokens={MAX_NEW_TOKENS}",
        f"generation.temperature={TEMPERATURE}", f"generation.top_p={TOP_P}", "generation.top_k=0",
        f"generation.batch_size={BATCH}", "generation.backend=hf",
        *reward, "reward.length_penalty=0.0",
        "grpo.loss_type=dapo", "grpo.beta=0.0", "grpo.scale_rewards=group", f"grpo.epsilon={EPSILON}",
        "grpo.epsilon_high=null", "grpo.num_iterations=1", "grpo.importance_sampling_level=token",
        "grpo.mask_truncated_completions=false", f"grpo.skip_zero_advantage={str(skip_zero_advantage).lower()}",
        f"optim.lr={LR}", f"optim.betas=[{BETAS[0]}, {BETAS[1]}]", "optim.weight_decay=0.0",
        "optim.schedule=constant", "optim.warmup_steps=0", f"optim.max_grad_norm={MAX_GRAD_NORM}",
        f"run.prompts_per_step={PROMPTS_PER_STEP}", f"run.micro_batch_size={BATCH}", f"run.seed={SEED}",
        "run.preflight_prompts=0", *anchor,
    ]


def cat_settings(trainer) -> dict:
    c = trainer.config
    opt = trainer.optimizer
    group = opt.param_groups[0]
    return {
        "parameters": sum(p.numel() for p in trainer.policy.parameters()),
        "vocab": trainer.policy.get_output_embeddings().weight.shape[0],
        "prompts per step": c.run.prompts_per_step,
        "generations per prompt": c.generation.num_generations,
        "sequences per optimizer step": c.run.prompts_per_step * c.generation.num_generations,
        "micro-batch (sequences)": c.run.micro_batch_size,
        "rows per generate call": c.generation.batch_size,
        "max new tokens": c.generation.max_new_tokens,
        "temperature / top_p / top_k": f"{c.generation.temperature} / {c.generation.top_p} / {c.generation.top_k}",
        "loss / beta / num_iterations": f"{c.grpo.loss_type} / {c.grpo.beta} / {c.grpo.num_iterations}",
        "epsilon low / high": f"{c.grpo.epsilon} / {c.grpo.epsilon_high or c.grpo.epsilon}",
        "advantage scaling / eps": f"{c.grpo.scale_rewards} / {c.grpo.advantage_eps}",
        "importance sampling level": c.grpo.importance_sampling_level,
        "optimizer": _optimizer_text(opt),
        "lr / betas / eps / weight decay": f"{group['lr']} / {tuple(group['betas'])} / {group['eps']} / {group['weight_decay']}",
        "schedule": c.optim.schedule,
        "max grad norm": c.optim.max_grad_norm,
        "weights dtype / device": f"{next(trainer.policy.parameters()).dtype} / {trainer.device}",
        "compute dtype (autocast)": c.model.dtype,
        "gradient checkpointing": bool(trainer.policy.is_gradient_checkpointing),
        "torch threads": _threads(),
        "reward": c.reward.name,
        "seed": c.run.seed,
    }


def cat_worker(conn, model: str, device: str, dtype: str, estimator: str, skip_zero_advantage: bool,
               as_shipped: bool = False) -> None:
    """Holds a cat Trainer (gold or synthesis estimator) and takes one step per request."""
    started = time.perf_counter()
    configure(model, device, dtype)
    pin_threads()
    from cat.config import load_config
    from cat.rewards import from_completion_fn, register_reward
    from cat.run.trainer import Trainer

    register_reward("exact_match", replace=True)(from_completion_fn(exact_match))
    yaml = "tiny_arith_gold.yaml" if estimator == "gold" else "tiny_arith_cat.yaml"
    config = load_config(ROOT / "experiments" / yaml,
                         [*cat_overrides(world(), skip_zero_advantage, as_shipped), f"estimator.name={estimator}"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, Path(tmp) / "run", log=lambda *_: None)
        pin_threads()
        clock = ModelClock()
        clock.watch(trainer.policy)
        clock.watch_decoding()
        if trainer.estimator.needs_anchor:
            clock.watch(trainer.initial_policy)  # pi_0: the anchor's model
        conn.send({"ready": time.perf_counter() - started, "settings": cat_settings(trainer),
                   "config": config.model_dump(mode="json")})
        step = 0
        while conn.recv() == "step":
            prompts = [list(trainer.prompt_ids[i]) for i in trainer.order.batch(step)]
            clock.take()
            reset_peak_memory()
            start = now()
            m = trainer.step(step).metrics
            seconds = now() - start
            phases = {k: m.get(f"time/{k}", 0.0) for k in ("generate", "reference", "reward", "logprobs", "update")}
            phases["other"] = seconds - sum(phases.values())  # batch, advantages, metrics, weight sync (none on hf)
            conn.send({"step": seconds, "phases": phases, "model": clock.take(), "prompts": prompts,
                       "mean_length": m["completion/mean_length"], "max_length": m["completion/max_length"],
                       "reward": m["reward/mean"], "threads": _threads(), "peak_mib": peak_memory_mib()})
            step += 1


# ---- TRL ----------------------------------------------------------------------------------------

def trl_config_kwargs(output_dir: str, max_steps: int) -> dict:
    """GRPOConfig arguments: the shared work, and TRL's defaults that would differ from it
    (gradient checkpointing, the fused AdamW, the linear schedule) turned off; bf16 as ``--dtype``
    says (TRL's default is on)."""
    return dict(
        output_dir=output_dir, seed=SEED, use_cpu=DEVICE == "cpu", bf16=DTYPE == "bfloat16", fp16=False,
        per_device_train_batch_size=BATCH, gradient_accumulation_steps=1, generation_batch_size=BATCH,
        num_generations=NUM_GENERATIONS, max_completion_length=MAX_NEW_TOKENS,
        temperature=TEMPERATURE, top_p=TOP_P, top_k=0, min_p=None, repetition_penalty=1.0,
        use_vllm=False, loss_type="dapo", beta=0.0, num_iterations=1, epsilon=EPSILON, epsilon_high=None,
        scale_rewards="group", importance_sampling_level="token", mask_truncated_completions=False,
        learning_rate=LR, optim="adamw_torch", adam_beta1=BETAS[0], adam_beta2=BETAS[1], adam_epsilon=1e-8,
        weight_decay=0.0, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=MAX_GRAD_NORM,
        gradient_checkpointing=False, disable_dropout=True, shuffle_dataset=False,
        max_steps=max_steps, report_to="none", logging_steps=10**9, save_strategy="no", eval_strategy="no",
        disable_tqdm=True, log_completions=False, dataloader_num_workers=0,
    )


def trl_settings(trainer) -> dict:
    a, gen = trainer.args, trainer.generation_config
    opt = trainer.optimizer
    opt = getattr(opt, "optimizer", opt)  # accelerate's wrapper
    group = opt.param_groups[0]
    return {
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "vocab": trainer.model.get_output_embeddings().weight.shape[0],
        "prompts per step": a.generation_batch_size // a.num_generations,
        "generations per prompt": a.num_generations,
        "sequences per optimizer step": a.per_device_train_batch_size * a.gradient_accumulation_steps,
        "micro-batch (sequences)": a.per_device_train_batch_size,
        "rows per generate call": a.generation_batch_size,
        "max new tokens": gen.max_new_tokens,
        "temperature / top_p / top_k": f"{gen.temperature} / {gen.top_p} / {gen.top_k}",
        "loss / beta / num_iterations": f"{a.loss_type} / {a.beta} / {a.num_iterations}",
        "epsilon low / high": f"{trainer.epsilon_low} / {trainer.epsilon_high}",
        "advantage scaling / eps": f"{a.scale_rewards} / 0.0001",  # TRL's constant
        "importance sampling level": a.importance_sampling_level,
        "optimizer": _optimizer_text(opt),
        "lr / betas / eps / weight decay": f"{group['lr']} / {tuple(group['betas'])} / {group['eps']} / {group['weight_decay']}",
        "schedule": str(a.lr_scheduler_type).removeprefix("SchedulerType.").lower(),
        "max grad norm": a.max_grad_norm,
        "weights dtype / device": f"{next(trainer.model.parameters()).dtype} / {trainer.accelerator.device}",
        "compute dtype (autocast)": "bfloat16" if a.bf16 else "float16" if a.fp16 else "float32",
        "gradient checkpointing": bool(trainer.model.is_gradient_checkpointing),
        "torch threads": _threads(),
        "reward": ", ".join(trainer.reward_func_names),
        "seed": a.seed,
    }


class _Stop(Exception):
    """The parent asked the TRL worker to stop before its last step."""


class TrlProbe:
    """What is measured inside TRL's step: the model clock, the phases (by wrapping the trainer's
    own methods), and the prompt ids it generated from (to check they are cat's)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.phases: dict[str, float] = {}
        self.prompt_ids: list = []
        self.clock = ModelClock()
        self.clock.watch(trainer.model)
        real_tokenize = trainer._tokenize_prompts

        def tokenize(prompts):
            out = real_tokenize(prompts)
            self.prompt_ids = out[0]  # one row per rollout: each prompt NUM_GENERATIONS times in a row
            return out

        trainer._tokenize_prompts = tokenize
        trainer._generate = timed(self.phases, "generate", trainer._generate)
        trainer._calculate_rewards = timed(self.phases, "reward", trainer._calculate_rewards)
        trainer._prepare_inputs = timed(self.phases, "prepare_inputs", trainer._prepare_inputs)

    def reset(self) -> None:
        self.phases.clear()
        self.clock.take()

    def result(self, seconds: float) -> dict:
        """The step's record. ``_prepare_inputs`` is generation, rewards and advantages; the rest of
        the step is the update (forward, loss, backward, clip, AdamW)."""
        prepare = self.phases.get("prepare_inputs", 0.0)
        generate, reward = self.phases.get("generate", 0.0), self.phases.get("reward", 0.0)
        metrics = self.trainer._metrics["train"]
        ids = self.prompt_ids
        return {"step": seconds, "phases": {"generate": generate, "reward": reward, "other": prepare - generate - reward,
                                            "update": seconds - prepare},
                "model": self.clock.take(), "prompts": [list(ids[i]) for i in range(0, len(ids), NUM_GENERATIONS)],
                "mean_length": metrics["completions/mean_length"][-1],
                "max_length": metrics["completions/max_length"][-1],
                "reward": metrics["reward"][-1], "threads": _threads(), "peak_mib": peak_memory_mib()}


def make_gate(conn, probe: TrlProbe, ready):
    """A TrainerCallback that holds TRL's loop at each step's start until the parent asks for a
    step, times on_step_begin -> on_step_end (generation, loss, backward, clip, optimizer step),
    and reports a step at the next step's start, so the loop's own work between steps (data
    fetch, log and save checks) is done before the parent moves on; that work is timed apart."""
    from transformers import TrainerCallback

    class Gate(TrainerCallback):
        pending, last_end, start = None, None, 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            pin_threads()
            conn.send(ready())  # the optimizer and scheduler exist now

        def flush(self, between):
            if self.pending is not None:
                conn.send({**self.pending, "between": between})
                self.pending = None

        def on_step_begin(self, args, state, control, **kwargs):
            arrived = time.perf_counter()
            self.flush(arrived - self.last_end if self.last_end is not None else None)
            if conn.recv() != "step":
                raise _Stop
            probe.reset()
            reset_peak_memory()
            self.start = now()

        def on_step_end(self, args, state, control, **kwargs):
            seconds = now() - self.start
            self.last_end = time.perf_counter()
            self.pending = probe.result(seconds)

    return Gate()


def trl_worker(conn, model: str, device: str, dtype: str, max_steps: int) -> None:
    """Holds a TRL GRPOTrainer inside ``train()`` (see make_gate), ``max_steps`` steps."""
    started = time.perf_counter()
    configure(model, device, dtype)
    pin_threads()
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    folder = world()
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines() if line.strip()]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["problem"]}], "answer": r["answer"]}
                                 for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(model_folder())
    # fp32 master weights on both sides: under --dtype bfloat16, TRL's bf16=True autocasts them
    model = AutoModelForCausalLM.from_pretrained(model_folder(), dtype=torch.float32)
    with tempfile.TemporaryDirectory() as out:
        config_kwargs = trl_config_kwargs(out, max_steps)
        trainer = GRPOTrainer(model=model, reward_funcs=[exact_match], args=GRPOConfig(**config_kwargs),
                              train_dataset=dataset, processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)  # disable_tqdm's stand-in prints the end-of-training log
        probe = TrlProbe(trainer)

        def ready() -> dict:
            a = trainer.args
            derived = {"steps_per_generation": a.steps_per_generation, "generation_batch_size": a.generation_batch_size}
            return {"ready": time.perf_counter() - started, "settings": trl_settings(trainer),
                    "config": {**{k: v for k, v in config_kwargs.items() if k != "output_dir"}, **derived},
                    "generation_config": trainer.generation_config.to_diff_dict()}

        gate = make_gate(conn, probe, ready)
        trainer.add_callback(gate)
        try:
            trainer.train()
            gate.flush(None)
            conn.recv()  # "stop"
        except _Stop:
            pass


# ---- helpers ------------------------------------------------------------------------------------

def reset_peak_memory() -> None:
    if DEVICE == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()


def peak_memory_mib() -> float | None:
    """The most GPU memory torch's allocator held since the step began (None on the CPU)."""
    if DEVICE != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _optimizer_text(opt) -> str:
    group = opt.param_groups[0]
    flags = [k for k in ("foreach", "fused") if group.get(k)]
    return f"{type(opt).__module__}.{type(opt).__name__}" + (f" ({', '.join(flags)})" if flags else "")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    versions = ", ".join(f"{p} {_version(p)}" for p in ("torch", "transformers", "trl", "accelerate", "datasets"))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {versions}; "
            f"load average at start {load}")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def run_benchmark(args) -> dict[str, dict]:
    """Start the workers one at a time, then interleave their steps; returns per side the ready
    message and the step results after warm-up."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no torch state inherited
    where = (args.model, args.device, args.dtype)
    targets = {"cat": (cat_worker, (*where, "gold", args.cat_skip_zero_advantage, args.as_shipped)),
               "trl": (trl_worker, (*where, args.warmup + args.pairs)),
               "cat_synthesis": (cat_worker, (*where, "synthesis", args.cat_skip_zero_advantage, args.as_shipped))}
    sides: dict[str, dict] = {}

    def start(name: str) -> None:
        ours, theirs = ctx.Pipe()
        fn, fn_args = targets[name]
        process = ctx.Process(target=_guarded, args=(fn, theirs, *fn_args), name=name, daemon=True)
        process.start()
        theirs.close()  # the child holds its end: a dead child then reads as EOF here
        sides[name] = {"conn": ours, "process": process, "ready": _receive(ours, name), "rows": []}
        print(f"{TITLES[name]}: set up in {sides[name]['ready']['ready']:.1f} s (imports, model, trainer)",
              flush=True)

    def stop(name: str) -> None:
        sides[name]["conn"].send("stop")
        sides[name]["process"].join(timeout=60)

    try:
        if args.one_at_a_time:
            return _one_at_a_time(args, sides, start, stop)
        for name in SIDES:
            start(name)
        for r in range(args.warmup + args.pairs):
            order = SIDES if r % 2 == 0 else SIDES[::-1]
            for name in order:
                sides[name]["conn"].send("step")
                row = _receive(sides[name]["conn"], name)
                if r >= args.warmup:
                    sides[name]["rows"].append(row)
            if r < args.warmup:
                print(f"warm-up round {r + 1} done", flush=True)
            else:
                times = ", ".join(f"{TITLES[n]} {sides[n]['rows'][-1]['step']:.2f} s" for n in SIDES)
                print(f"round {r - args.warmup + 1}: {times}", flush=True)
        for name in SIDES:
            stop(name)
    finally:
        for side in sides.values():
            if side["process"].is_alive():
                side["process"].terminate()
    return sides


def _one_at_a_time(args, sides: dict[str, dict], start, stop) -> dict[str, dict]:
    """Each side alone: start it, take its warm-up and timed steps, stop it, then the next side.
    For models whose three fine-tuning workers do not fit in memory together (Qwen2.5-0.5B in fp32:
    weights, gradients and AdamW's moments are about 10 GB a worker). The rounds are then not
    interleaved, so drift on the machine between the sides lands in the ratios."""
    for name in SIDES:
        start(name)
        for r in range(args.warmup + args.pairs):
            sides[name]["conn"].send("step")
            row = _receive(sides[name]["conn"], name)
            if r >= args.warmup:
                sides[name]["rows"].append(row)
                print(f"{TITLES[name]} step {r - args.warmup + 1}: {row['step']:.2f} s, {_work(row)}", flush=True)
            else:
                print(f"{TITLES[name]} warm-up step {r + 1} done, {_work(row)}", flush=True)
        stop(name)
    return sides


def _work(row: dict) -> str:
    """What a step did: its rollouts' lengths and reward (the sides must match on these)."""
    return f"rollouts {row['mean_length']:.1f} tokens on average (max {row['max_length']:.0f}), reward {row['reward']:.3f}"


def _guarded(fn, conn, *args) -> None:
    """Run a worker; any failure goes back to the parent as text."""
    try:
        fn(conn, *args)
    except Exception:  # noqa: BLE001 - reported by the parent
        conn.send({"error": traceback.format_exc()})


def _receive(conn, name: str) -> dict:
    try:
        message = conn.recv()
    except EOFError:
        raise SystemExit(f"{name} worker died without a word (see its output above)") from None
    if "error" in message:
        raise SystemExit(f"{name} worker failed:\n{message['error']}")
    return message


# ---- report -------------------------------------------------------------------------------------

def med(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


PHASES = (  # (key, label): cat's time/* metrics; TRL's from its wrapped methods (TrlProbe)
    ("generate", "generate (rollouts)"),
    ("reference", "reference (gold / anchor synthesis)"),
    ("reward", "reward"),
    ("logprobs", "logprobs (old / pi_0 pass; none here)"),
    ("update", "update (forward, loss, backward, clip, AdamW)"),
    ("other", "other (batch, advantages, bookkeeping)"),
)


def report(args, sides: dict[str, dict], host: str) -> None:
    rows = {n: s["rows"] for n, s in sides.items()}
    params = sides["cat"]["ready"]["settings"]["parameters"]
    print()
    print(f"machine: {host}")
    name = "tiny-arith world" if MODEL == "tiny" else f"{model_folder().name} on the tiny world's problems"
    vocab = sides["cat"]["ready"]["settings"].get("vocab")
    print(f"{name} ({params:,} parameters{f', vocabulary {vocab:,}' if vocab else ''}), {PROMPTS_PER_STEP} prompts x {NUM_GENERATIONS} "
          f"rollouts, <= {MAX_NEW_TOKENS} new tokens, {_where()}; {args.warmup} warm-up "
          f"round(s), then {args.pairs} {'rounds, one side at a time (not interleaved)' if args.one_at_a_time else 'interleaved round(s)'}")
    print()
    print_settings(args, sides, rows)
    print()
    print_times(rows)
    print()
    print_ratios({n: [r["step"] for r in rs] for n, rs in rows.items()})


def print_settings(args, sides: dict[str, dict], rows: dict[str, list]) -> None:
    """The effective settings of both trainers side by side, and the checks of identical work."""
    print("settings read back from the live trainers (cat gold | TRL):")
    cat_s, trl_s = sides["cat"]["ready"]["settings"], sides["trl"]["ready"]["settings"]
    for key in cat_s:
        mark = " " if str(cat_s[key]) == str(trl_s[key]) else "≠"
        print(f"  {mark} {key:<32} {str(cat_s[key]):<44} | {trl_s[key]}")
    same = all(a["prompts"] == b["prompts"] == c["prompts"]
               for a, b, c in zip(rows["cat"], rows["trl"], rows["cat_synthesis"], strict=True))
    print(f"  prompt token ids identical on every timed step (all three): {'yes' if same else 'NO'}")
    threads = {n: sorted({r["threads"] for r in rs}) for n, rs in rows.items()}
    print(f"  torch threads during the steps: {threads}")
    print()
    print("TRL GRPOConfig arguments (output_dir aside) and derived fields:")
    print("  " + json.dumps(sides["trl"]["ready"]["config"], default=str))
    print("TRL generation config: " + json.dumps(sides["trl"]["ready"]["generation_config"], default=str))
    print("cat overrides (on experiments/tiny_arith_gold.yaml; the CaT arm on tiny_arith_cat.yaml):")
    print("  " + " ".join(cat_overrides(world(), args.cat_skip_zero_advantage, args.as_shipped)))
    if args.as_shipped:
        print("  --as-shipped: cat rewards with its own math_equivalence (math-verify), TRL with the exact-match "
              "function; compare cat's non-model share, not the two sides' step times")
    anchor = sides["cat_synthesis"]["ready"]["config"]["anchor"]
    print(f"CaT arm anchor: pi_0 on the hf backend, template {anchor['template']}, {anchor['max_new_tokens']} new "
          f"tokens, greedy {anchor['greedy']}, question shown {anchor['include_question']}")


def print_times(rows: dict[str, list]) -> None:
    """Medians per side: phases, model time, and the work done (lengths, rewards)."""
    header = f"{'seconds per step (median)':<46}" + "".join(f"{TITLES[n]:>12}" for n in SIDES)
    print(header)
    print("-" * len(header))

    def line(label, get, fmt="{:>12.3f}"):
        cells = []
        for n in SIDES:
            values = [v for v in (get(r) for r in rows[n]) if v is not None]
            cells.append(fmt.format(med(values)) if values else f"{'-':>12}")
        print(f"{label:<46}" + "".join(cells))

    for key, label in PHASES:
        line(label, lambda r, key=key: r["phases"].get(key))
    line("step", lambda r: r["step"])
    print(f"{'step, min':<46}" + "".join(f"{min(r['step'] for r in rows[n]):>12.3f}" for n in SIDES))
    print()
    line("inside generate (cat: prefill + own loop)", lambda r: r["model"]["generate"])
    line("  of which model forward passes", lambda r: r["model"]["generate_forward"])
    line("model forward outside generate", lambda r: r["model"]["forward"])
    line("autograd backward", lambda r: r["model"]["backward"])
    line("non-model overhead (step minus the 3 above)", _non_model)
    line("non-model share of the step", lambda r: _non_model(r) / r["step"], "{:>12.1%}")
    print()
    line("completion mean length (tokens)", lambda r: r["mean_length"], "{:>12.1f}")
    line("completion max length (tokens)", lambda r: r["max_length"], "{:>12.1f}")
    line("reward mean", lambda r: r["reward"])
    if DEVICE == "cuda":
        print()
        line("peak GPU memory in the step (MiB)", lambda r: r["peak_mib"], "{:>12.0f}")
    between = [r["between"] for r in rows["trl"] if r.get("between") is not None]
    if between:
        print(f"TRL's loop between steps (data fetch, log/save checks; not in its step): median {med(between):.4f} s")


def print_ratios(steps: dict[str, list[float]]) -> None:
    """Paired ratios (the rounds were interleaved) and ratios of medians."""
    for label, a, b, note in (("cat gold / TRL", "cat", "trl", " (below 1: cat is faster)"),
                              ("CaT / gold (cat)", "cat_synthesis", "cat", "")):
        paired = med(x / y for x, y in zip(steps[a], steps[b], strict=True))
        print(f"{label}: median of per-round ratios {paired:.3f}, ratio of medians "
              f"{med(steps[a]) / med(steps[b]):.3f}{note}")


def _where() -> str:
    if DEVICE == "cpu":
        return f"{'fp32' if DTYPE == 'float32' else DTYPE + ' autocast over fp32 weights'} CPU, 1 thread per side"
    import torch

    mixed = "fp32" if DTYPE == "float32" else f"{DTYPE} autocast over fp32 master weights"
    return f"{torch.cuda.get_device_name()}, {mixed}, one side's step at a time"


def _non_model(r: dict) -> float:
    m = r["model"]
    return r["step"] - m["generate"] - m["forward"] - m["backward"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=12, help="timed rounds (one step of each side per round)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="run the sides one after another, one worker alive at a time, instead of "
                             "interleaving three live workers: for a model whose three fine-tunes do not fit "
                             "in memory together (Qwen2.5-0.5B in fp32 on 24 GB)")
    parser.add_argument("--cat-skip-zero-advantage", action="store_true",
                        help="let cat leave zero-advantage rows out of the update, as it does by default "
                             "(TRL computes them); off: identical work")
    parser.add_argument("--as-shipped", action="store_true",
                        help="cat rewards with its shipped math_equivalence (numeric fast path, then math-verify) "
                             "instead of the shared exact-match function: measures cat's non-model overhead as "
                             "shipped (the reward then differs between the sides)")
    parser.add_argument("--model", default="tiny",
                        help="tiny: the tiny arith world's model; smollm2: SmolLM2-135M-Instruct (4 prompts a step); "
                             "qwen2.5-coder-0.5b: Qwen2.5-Coder-0.5B-Instruct at 152k vocabulary (2 prompts a step; "
                             "both fetched with cat-rl fetch-model); or a model folder (2 prompts a step)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where both sides run (cuda: the first visible GPU; default cpu)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="the compute dtype of both sides: bfloat16 is mixed precision over fp32 master "
                             "weights (cat's model.dtype, TRL's bf16); default bfloat16 on cuda, float32 on cpu")
    args = parser.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error(f"--device cuda: torch {torch.__version__} sees no GPU here")
    if args.model not in WORK and not (Path(args.model) / "config.json").is_file():
        parser.error(f"--model {args.model}: neither {', '.join(WORK)} nor a model folder with a config.json")
    configure(args.model, args.device, args.dtype)
    if importlib.util.find_spec("trl") is None or importlib.util.find_spec("cat") is None:
        missing = "trl" if importlib.util.find_spec("trl") is None else "cat"
        print(f"{missing} is not importable from {sys.executable}. Set up a virtualenv with cat and TRL "
              f"(from the repository root):\n\n{SETUP}", file=sys.stderr)
        return 1
    # set before the workers start (spawn copies the environment): one thread each, quiet libraries
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                      TRANSFORMERS_VERBOSITY="error", HF_DATASETS_DISABLE_PROGRESS_BARS="1",
                      HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    host = machine()  # the load average before the workers add theirs
    sides = run_benchmark(args)
    report(args, sides, host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
