"""The typed config tree: one pydantic model per component, loaded from YAML with dotted overrides.

Every field has a docstring (``use_attribute_docstrings``), unknown keys are rejected, and the
defaults run on a laptop CPU. ``load_config(path, overrides)`` is the only way a run is configured;
the resolved tree is written to the run directory as ``config.yaml``.

Not here: what the values mean at run time (each consumer documents that) and registry lookups
(names such as ``estimator.name`` are checked against their registry when the run starts).
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cat.errors import ConfigError, utf8_text
from cat.templates import check_prompt_template, score_template

logger = logging.getLogger(__name__)


class _Section(BaseModel):
    # allow_inf_nan: no setting means anything at .nan or .inf (a NaN compares False with every bound)
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True,
                              allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _fits_64_bits(cls, value: Any) -> Any:
        """No count, budget or seed is meaningful past 64 bits, and torch cannot take one."""
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            raise ValueError(f"a {value.bit_length()}-bit integer is too large: at most 2**63 - 1")
        return value


class LoraSettings(_Section):
    """LoRA through peft: the policy is the base model plus an adapter, and pi_0 is the same module
    with the adapter switched off (no second copy; see ``cat.models.lora``)."""

    r: int = Field(16, ge=1)
    """Adapter rank."""
    alpha: float = Field(32.0, gt=0)
    """Scaling numerator: the update is ``alpha / r * B @ A``."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapter's input while training (0 keeps the sampler and trainer log-probs equal)."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names that get an adapter (e.g. ``[q_proj, v_proj]``); ``all-linear``: every linear
    layer but the output layer."""


class ModelConfig(_Section):
    """The policy: a hub id, a local folder or ``.gguf`` file (``tiny:arith`` is the offline tiny
    world), its compute dtype, device, chat template, system prompt and ``chat_template_kwargs``."""

    name_or_path: str = "tiny:arith"
    """Policy to train: a hub id, a local folder in save_pretrained format, a local ``.gguf`` file
    (converted once into ``FILE.gguf.hf/`` beside it), or ``tiny:arith`` (the offline tiny world,
    built on first use). A relative path is read from the working directory, not from the config
    file's folder; one that can only be local (absolute, ``./``, ``../``, three parts or more, or
    under ``models/``) and is not there stops the run at once, naming the folder looked for. The
    frozen initial policy pi_0 (KL reference and anchor) is a second copy of this model."""
    dtype: Literal["float32", "bfloat16", "float16", "float64"] = "float32"
    """Compute dtype. The trained policy always keeps fp32 master weights, gradients and AdamW
    state, and runs its forward passes under autocast in this dtype; frozen models (pi_0, a local
    judge or anchor) are held in it. Checkpoints export the model in it (docs/grpo.md, Precision).
    ``float64`` holds and runs every model, master weights included, in fp64 (hf backend only): for
    checking that two code paths compute the same maths, where fp32 rounding would hide a real
    difference or fake one (the test suite's numerical checks use it)."""
    device: str = "auto"
    """``auto`` (cuda if available, else cpu), ``cpu``, ``cuda`` or ``cuda:N``."""
    trust_remote_code: bool = False
    """Passed to from_pretrained."""
    gradient_checkpointing: bool = False
    """Trade compute for memory in the policy's backward pass."""
    lora: LoraSettings | None = None
    """Train a LoRA adapter instead of every weight (``{r, alpha, dropout, target_modules}``). The base
    is held frozen in the compute dtype, the adapter in fp32; checkpoints save the adapter, and the
    one a run stops at (its last step, or a Ctrl-C) also an export with it merged."""
    system_prompt: str | None = None
    """Optional system message prepended to every prompt (when the tokenizer has a chat template)."""
    chat_template: bool = True
    """Format prompts with the tokenizer's chat template when it has one; otherwise raw text."""
    chat_template_kwargs: dict[str, Any] = {}
    """Extra arguments to apply_chat_template, e.g. ``{enable_thinking: false}`` for Qwen3."""


class GenerationConfig(_Section):
    """Rollouts: the backend (``hf`` or ``vllm``), G (``num_generations``), ``max_new_tokens``,
    temperature / top-p / top-k, stop strings, vLLM's memory share and ``vllm_max_model_len``."""

    backend: Literal["hf", "vllm"] = "hf"
    """Rollout engine: ``hf`` (transformers generate; CPU or GPU) or ``vllm`` (GPU, extra ``vllm``)."""
    num_generations: int = Field(8, ge=1)
    """G: rollouts per prompt (the group)."""
    max_new_tokens: int = Field(32, ge=1)
    """Completion budget; a completion that reaches it finishes with reason ``length``."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature; the trainer divides logits by the same value when scoring tokens."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling threshold (1 = off)."""
    top_k: int = Field(0, ge=0)
    """Top-k sampling (0 = off)."""
    stop: list[str] = []
    """Extra stop strings (the tokenizer's EOS always stops)."""
    batch_size: int = Field(64, ge=1)
    """Sequences per generate call (hf backend)."""
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    """Fraction of GPU memory vLLM may take when colocated with training (ignored on CPU, where
    ``VLLM_CPU_KVCACHE_SPACE`` in GiB bounds the KV cache)."""
    vllm_tensor_parallel_size: int = Field(1, ge=1)
    """vLLM tensor parallel size."""
    vllm_max_model_len: int | None = None
    """Longest sequence (prompt + completion) the vLLM engine serves; None: the model's context."""
    vllm_enforce_eager: bool = False
    """Run the vLLM engine eagerly: no graph compilation or CUDA-graph capture. Starts faster
    and generates slower on a GPU; for short runs and debugging."""
    weight_sync_bucket_mb: float = Field(256, gt=0)
    """vLLM: the most memory, in MiB, that a weight sync holds beside the engine. The weights go to
    the engine in buckets of this size in the compute dtype, each made when the engine asks for it
    (FSDP shards gathered tensor by tensor), never as a second copy of the model."""
    vllm_sleep: bool = False
    """vLLM on a GPU: the rollout engine sleeps through the update (vLLM's sleep level 2: its
    weights and KV cache released, their GPU memory given to the update) and wakes for the weight
    sync that follows, weights first and the KV cache once they are loaded; the gradients are freed
    before it wakes. CUDA and ROCm only; not with ``async_rollouts`` (the engine generates during
    the update)."""
    async_rollouts: bool = False
    """One-step-async rollouts (vLLM backend): step t+1's rollouts, references and rewards are
    made on a second thread while step t updates the policy, from the weights before that update,
    so they are exactly one step stale (``async/staleness``; a step is ``grpo.num_iterations``
    optimizer updates); the truncated importance weights (``grpo.sampler_correction``) correct for
    it. Off: rollouts and updates alternate."""


class GRPOConfig(_Section):
    """The GRPO update (``cat.algo.grpo``; docs/grpo.md): token aggregation (``loss_type``), how
    rewards and advantages are scaled and clipped, the clipped ratio, the KL term to pi_0, passes per
    batch, and the sampler/learner mismatch correction."""

    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "dapo"
    """Token aggregation: grpo (per-sequence mean, then mean), bnpo (tokens of the optimiser batch),
    dr_grpo (divide by batch size x max_new_tokens), dapo (tokens of the whole generation batch)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Divide advantages by the group's std, the batch's std, or not at all (Dr. GRPO)."""
    reward_clip: float | None = Field(None, gt=0)
    """Clamp each reward to [-c, c] before the advantages (None: as scored). For rewards with a
    long tail (a judge's points, a length penalty) that one group should not dominate."""
    advantage_clip: float | None = Field(None, gt=0)
    """Clamp each advantage to [-c, c] after its scaling (None: unclamped). Group scaling gives
    |A| up to (G - 1) / sqrt(G) for one odd rollout out; this caps it."""
    dual_clip: float | None = Field(None, gt=1)
    """Dual-clip PPO (Ye et al. 2020): for negative advantages the token's loss is also bounded
    by c * |A| (typically 3), so a ratio far above 1 + epsilon on a bad token cannot blow the
    update up. None: the plain clipped surrogate. Logged as ``clip_ratio/dual``."""
    advantage_eps: float = 1e-4
    """Added to the std before dividing."""
    epsilon: float = Field(0.2, ge=0)
    """Lower clip: ratios below 1 - epsilon are clipped (for negative advantages)."""
    epsilon_high: float | None = None
    """Upper clip (DAPO clip-higher uses 0.28); None means equal to epsilon."""
    beta: float = Field(0.0, ge=0)
    """KL coefficient to the frozen initial policy pi_0 (k3 estimator). 0 skips the reference pass."""
    unbiased_kl: bool = False
    """Multiply the k3 term by the importance ratio (DeepSeek-V3.2 unbiased KL)."""
    importance_sampling_level: Literal["token", "sequence"] = "token"
    """Importance ratio per token (GRPO) or per sequence (GSPO)."""
    num_iterations: int = Field(1, ge=1)
    """mu: optimiser passes over each generation batch (old log-probs are stored when > 1)."""
    mask_truncated_completions: bool = False
    """Completions that hit max_new_tokens contribute no loss (DAPO)."""
    sampler_correction: bool | None = None
    """Truncated importance sampling for the sampler/learner mismatch (TRL's
    ``vllm_importance_sampling_correction``): each token's loss is multiplied by
    min(exp(old_logp - sampler_logp), ``sampler_correction_cap``). None: on with the vLLM
    backend, off with hf (which samples from the trained module itself)."""
    sampler_correction_cap: float = Field(2.0, ge=1.0)
    """Cap of the truncated importance ratio."""
    old_logprobs: Literal["trainer", "sampler"] = "trainer"
    """The log-probs the clipped ratio is taken against. ``trainer``: the policy's own before the
    update (recomputed by a forward pass when num_iterations > 1). ``sampler``: the rollout
    engine's, as sampled (no extra forward pass for any num_iterations; the ratio then also
    absorbs the mismatch, so the sampler correction is not applied on top)."""
    skip_zero_advantage: bool = True
    """Leave rows whose advantage is exactly 0 (every row of a zero-spread group) out of the
    update's forward and backward when beta is 0: their loss and gradient are exactly 0, and the
    normalisers still count their tokens, so the gradient is the same. The update's token
    statistics (entropy, clip ratios, ratio) are then over the rows it computed."""


class OptimConfig(_Section):
    """AdamW and its schedule: learning rate, betas, weight decay, warm-up and gradient clipping."""

    name: Literal["adamw", "adamw_8bit"] = "adamw"
    """The optimizer: ``adamw`` (torch's; both moments in fp32, 8 bytes a trained parameter) or
    ``adamw_8bit`` (bitsandbytes' AdamW8bit: both moments quantized in blocks to 8 bits, about 2
    bytes a parameter; tensors under 4,096 elements keep fp32 moments; ``pip install
    'cat-rl[bnb]'``). Not with ``parallel.strategy: fsdp`` or ``model.dtype: float64``."""
    lr: float = Field(1e-5, ge=0)
    """AdamW learning rate. 0 leaves the weights where they are: the steps still sample, score and
    compute every statistic (a check that something, async rollouts say, changes nothing else)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Learning-rate schedule after warm-up."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up steps."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm (None = no clipping)."""

    @field_validator("betas", mode="before")
    @classmethod
    def _two_betas(cls, value: Any) -> Any:
        """A list of one or three is named as such, not as a missing or an extra tuple item."""
        if isinstance(value, list | tuple) and len(value) != 2:
            raise ValueError(f"needs two values, [beta1, beta2] (default [0.9, 0.999]); got {list(value)!r:.60}")
        return value


LABEL_FIELDS = ("solution", "answer", "answers", "target", "label", "labels", "ground_truth", "gold")
"""The default ``data.label_fields``: names datasets give a label or a worked solution."""


class DataConfig(_Section):
    """Training prompts: a file, a hub dataset or ``reasoning-gym:TASK`` (with ``task_config`` and
    ``seed``), its fields, ``label_fields`` (kept from label-free estimators and rewards),
    ``answer_format``, ``prompt_template``, ``max_prompt_tokens`` (longer prompts are skipped and
    counted) and ``limit``."""

    path: str = "tiny:arith/train.jsonl"
    """Training prompts: a hub dataset id, a local .jsonl / .json / .parquet file, or
    ``reasoning-gym:TASK`` (a procedural task of the reasoning-gym package, e.g.
    ``reasoning-gym:chain_sum``, generated from ``task_config``, ``seed`` and ``limit``)."""
    task_config: dict[str, Any] = {}
    """A reasoning-gym task's generator settings (its config dataclass without seed and size), e.g.
    ``{min_terms: 2, max_terms: 3}`` for chain_sum. Only with a ``reasoning-gym:`` path."""
    seed: int = Field(0, ge=0)
    """A reasoning-gym task's seed: row i is generated from seed + i. Only with a ``reasoning-gym:`` path
    (``run.seed`` orders the prompts)."""
    format: Literal["qa", "healthbench"] = "qa"
    """``qa``: a prompt field and an optional answer field. ``healthbench``: a chat ``prompt`` (list
    of messages) with physician ``rubrics`` (criterion, points, tags) and ``example_tags``."""
    name: str | None = None
    """Hub dataset configuration name (e.g. ``main`` for gsm8k)."""
    split: str = "train"
    """Split of a hub dataset (local files have one split)."""
    prompt_field: str = "problem"
    """Column holding the prompt text."""
    answer_field: str | None = "answer"
    """Column holding the gold answer: used only by the ``gold`` estimator and for diagnostics."""
    answer_format: Literal["plain", "gsm8k"] = "plain"
    """``gsm8k`` takes the text after ``####`` as the gold answer."""
    label_fields: list[str] = Field(default_factory=lambda: list(LABEL_FIELDS))
    """Columns that carry the label or give it away (MATH's ``solution``): with ``answer_field``
    they are kept from every estimator and reward of a label-free run (the label firewall,
    ``cat.teacher.firewall``); only the ``gold`` estimator's runs, the teacher diagnostics and
    evaluation read them."""
    prompt_template: str = "{problem}"
    """The user message: ``{problem}`` is replaced by the row's prompt field, ``{{name}}`` is the
    literal text ``{name}``, and any other brace is kept as written (so ``\\boxed{}`` needs no
    escaping). Any other ``{name}`` is an error when the config loads."""
    max_prompt_tokens: int | None = Field(None, ge=1)
    """Prompts longer than this (in tokens, after formatting) are skipped and counted, in training
    and in evaluation. None: the model's context minus ``generation.max_new_tokens``."""
    limit: int | None = Field(None, ge=1)
    """Use only the first N rows, N at least 1 (a reasoning-gym task: generate N rows; None: every
    row, or for a reasoning-gym task its default, 500)."""
    shuffle: bool = True
    """Shuffle prompts each epoch (seeded)."""


class EvalConfig(_Section):
    """Held-out prompts with gold answers (a reasoning-gym task: ``task_config``, and a ``seed``
    apart from the training rows'), pass@1 over ``num_samples`` and greedy accuracy, how often, and
    ``judge``, a separate grader for judged evaluations. Prompts longer than
    ``data.max_prompt_tokens`` are skipped and counted (``skipped_long``), as in training."""

    path: str | None = "tiny:arith/test.jsonl"
    """Held-out prompts with gold answers (same formats as data.path). None disables evaluation.
    For the test-time RL protocol point it at the training prompts. A ``reasoning-gym:TASK`` is
    graded by the task's own scorer; its questions that also occur among the training rows are
    dropped (and counted in the log)."""
    name: str | None = None
    """Hub dataset configuration name."""
    split: str = "test"
    """Split of a hub dataset."""
    limit: int | None = Field(200, ge=1)
    """Evaluate on the first N rows, N at least 1 (None = all; a reasoning-gym task: generate N
    rows). To turn evaluation off, set ``eval.path`` to null. Prompts longer than
    ``data.max_prompt_tokens`` are then skipped and counted, as in training."""
    task_config: dict[str, Any] | None = None
    """A reasoning-gym task's generator settings; None: ``data.task_config`` when it is the training
    task, else the generator's defaults."""
    seed: int | None = Field(None, ge=0)
    """A reasoning-gym task's seed: row i is generated from seed + i, and the seeds must not overlap
    the training rows' (``data.seed`` .. ``data.seed + data.limit - 1``). None: the first seed after
    the training rows when it is the training task, else 0."""
    num_samples: int = Field(4, ge=1)
    """k: samples per prompt; accuracy is pass@1 averaged over them."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature for the averaged pass@1."""
    greedy: bool = True
    """Also report greedy accuracy."""
    every: int = Field(0, ge=0)
    """Evaluate every N training steps (0 = only before and after)."""
    judge: JudgeConfig | None = None
    """The grader of judged evaluations (HealthBench), apart from the reward's judge: the same
    fields as ``judge``. None: the reward's judge, when the reward has one (a policy can then learn
    that judge's quirks and be scored by them: the run warns and the evaluation records which
    judge graded it), else ``judge``. The paper grades with a separate model."""


class AnswerConfig(_Section):
    """How a reply's final answer is read (``cat.rewards.answers``; docs/answers.md): one chain for
    the rollouts, the references, majority vote and evaluation against gold."""

    rules: list[str] = ["boxed", "answer_phrase", "equals_end", "last_number"]
    """Extraction rules, tried in order; the first that finds an answer gives it. Built in:
    ``boxed`` (the last \\boxed{}), ``answer_phrase`` ("the answer is X", "Answer: X"),
    ``equals_end`` ("= X" ending a sentence or a line), ``last_number``, and ``regex``
    (``answer.regex``); plug-ins add theirs with ``@register_answer_rule``. ``[boxed]`` reads
    answers as the paper does."""
    regex: str | None = None
    """A Python regular expression for the ``regex`` rule: its last match in the reply (group 1
    when it has a group), e.g. ``'ANSWER: (\\S+)'``. List ``regex`` in ``rules`` where it is tried."""
    form: Literal["any", "number"] = "any"
    """What the answer found must be. ``any``: whatever the first rule finds. ``number``: a number
    (``41``, ``-3``, ``2.5``, ``3/4``, ``\\frac{12}{7}``, a unit after it allowed); a reply whose
    final answer is an expression or an equation (the problem restated, ``\\boxed{67 + 75 + 85}``)
    has no answer, so it earns nothing, gets no vote and is no reference; evaluation reads the
    policy's replies the same way (compare arms under one form). Set it on numeric tasks to close
    the cheapest label-free hack (``cat.rewards.answers``)."""

    @model_validator(mode="after")
    def _check_chain(self) -> AnswerConfig:
        """Everything but the rule names, which plug-ins may register later (checked at preflight)."""
        if not self.rules:
            raise ValueError("answer.rules is empty: list at least one rule, e.g. [boxed]")
        if len(set(self.rules)) != len(self.rules):
            raise ValueError(f"answer.rules names a rule twice: {self.rules}")
        if ("regex" in self.rules) != (self.regex is not None):
            raise ValueError("answer.rules lists 'regex' but answer.regex is not set" if self.regex is None else
                             f"answer.regex is set but answer.rules {self.rules} does not list 'regex': add it "
                             "where it should be tried (e.g. first)")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"answer.regex {self.regex!r} is not a valid regular expression: {exc}") from None
        return self


class RewardConfig(_Section):
    """The reward: one name, or several ``functions`` with ``weights``; ``mode`` (``equivalence`` via
    math-verify, or ``strict`` string match as in the paper), its timeout, and a length penalty."""

    name: str = "math_equivalence"
    """Reward function (registry ``cat.rewards``): ``math_equivalence`` (verifiable), ``reasoning_gym``
    (a reasoning-gym task's own scorer, gold estimator only), ``rubric``
    (criteria + judge), ``judge_equivalence`` (model-as-judge against the reference)."""
    mode: Literal["equivalence", "strict"] = "equivalence"
    """``equivalence`` (math-verify) or ``strict`` (normalised string match, as in the paper)."""
    timeout_s: int = Field(3, ge=1)
    """Per-comparison timeout for math-verify."""
    length_penalty: float = 0.0
    """Added to the reward of a completion longer than ``length_penalty_tokens`` (paper: -1)."""
    length_penalty_tokens: int = Field(750, ge=1)
    """Completion length (tokens) above which ``length_penalty`` applies."""
    functions: list[str] | None = None
    """Several reward functions (registry ``cat.rewards``, plug-ins included), combined per rollout
    as sum(weight x reward) over those that return a value; each is logged as ``reward/NAME/mean``.
    None: ``name`` alone. ``length_penalty`` is added when ``length_penalty`` is set and not listed."""
    weights: list[float] | None = None
    """One weight per entry of ``functions`` (TRL's reward_weights); None: all 1."""

    @model_validator(mode="before")
    @classmethod
    def _name_from_functions(cls, data: Any) -> Any:
        """With ``functions`` and no ``name``, ``name`` is the first function (so a saved config loads again)."""
        if isinstance(data, dict) and isinstance(data.get("functions"), list) and data["functions"] \
                and "name" not in data:
            data = {**data, "name": data["functions"][0]}
        return data

    @model_validator(mode="after")
    def _check_functions(self) -> RewardConfig:
        if self.functions is not None:
            if not self.functions:
                raise ValueError("reward.functions is empty: name at least one reward, or leave it out for reward.name")
            if len(set(self.functions)) != len(self.functions):
                raise ValueError(f"reward.functions names a function twice: {self.functions}")
            if self.name not in self.functions:
                raise ValueError(f"reward.name {self.name!r} is not among reward.functions {self.functions}: "
                                 "give one or the other")
        if self.weights is not None:
            n = len(self.functions) if self.functions is not None else 1
            if len(self.weights) != n:
                raise ValueError(f"reward.weights has {len(self.weights)} entries for {n} reward function(s)")
        return self


class RubricConfig(_Section):
    """Rubrics of the ``rubric`` reward (docs/rubrics.md): where the criteria come from, the proposal
    template, and how many criteria and attempts a proposal gets."""

    source: Literal["self_proposed", "dataset"] = "self_proposed"
    """``self_proposed``: the anchor writes criteria from the reference (CaT). ``dataset``: the
    example's own rubric (e.g. HealthBench physician rubrics; the reference-based baseline)."""
    template: str = "rubric_proposal"
    """Rubric-proposal template (a name in rubrics/ or a path); needs {{reference}}."""
    include_question: bool = False
    """Show the anchor the question when it writes the rubric (the paper does not)."""
    min_criteria: int = Field(5, ge=1)
    """Fewer parsed criteria than this is a failed proposal (retried)."""
    max_criteria: int = Field(20, ge=1)
    """Criteria beyond this many are dropped (and counted)."""
    max_attempts: int = Field(3, ge=1)
    """Proposal attempts per group before the group is dropped from the update. With an anchor on
    an endpoint, the attempts and the endpoint's retries of transient failures share one budget
    per proposal: ``max(rubric.max_attempts, anchor.max_retries + 1)`` requests in all, never their
    product."""
    max_new_tokens: int = Field(512, ge=1)
    """Token budget of one rubric proposal."""


class _Endpoint(_Section):
    """Connection settings shared by every teacher that can live behind an OpenAI-compatible endpoint."""

    base_url: str | None = None
    """Endpoint for the openai backend, e.g. http://127.0.0.1:8000/v1 (None: the client's default)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (read at start, never logged)."""
    timeout_s: float = Field(60.0, gt=0)
    """Per-request timeout (openai backend)."""
    max_retries: int = Field(3, ge=0)
    """Requests beyond the first that one request may make, every layer together: one judge verdict
    (or one anchor synthesis) gets at most ``max_retries + 1`` requests, whether they go to re-asking
    an unparsable verdict or to repeating a transient failure (no connection, a timeout, a 5xx, a
    408/409/429); one rubric proposal at most ``max(rubric.max_attempts, anchor.max_retries + 1)``.
    Any other 4xx is not repeated: the request is wrong, and the error quotes the status and the
    body."""
    backoff_s: float = Field(1.0, ge=0)
    """First wait before repeating a transient failure; doubles each time. A server's Retry-After
    (seconds or an HTTP date) replaces it."""
    max_wait_s: float = Field(60.0, gt=0)
    """Seconds one request may spend waiting between its attempts, backoff and Retry-After
    together. A Retry-After beyond what is left ends that request at once (the error says so)
    rather than asking again too early."""
    max_concurrency: int = Field(8, ge=1)
    """Requests in flight at once (openai backend)."""


class JudgeConfig(_Endpoint):
    """The judge of rubric criteria and of best-of-N by judge score (``judge_bon``): its backend (hf,
    vllm, openai), model, mode, templates and token budget, and an endpoint's retries and timeouts."""

    backend: Literal["hf", "vllm", "openai"] = "hf"
    """``hf`` / ``vllm``: an in-process model on that engine. ``openai``: any OpenAI-compatible
    endpoint (vLLM server, ``transformers serve``, hosted APIs) through the openai client."""
    model: str = "tiny:arith"
    """Judge model: a local path / hub id (hf, vllm) or the served model name (openai). Keep it
    independent of the policy for real runs."""
    mode: Literal["per_criterion", "all_criteria"] = "per_criterion"
    """One call per (rollout, criterion) as in the paper, or all criteria of a rollout in one call."""
    template: str | None = None
    """Judge template. Defaults by mode: ``judge_criterion`` / ``judge_all_criteria`` for responses
    judged alone (self-proposed rubrics, model-as-judge) and ``judge_healthbench`` /
    ``judge_healthbench_all_criteria`` for responses judged with their conversation (a dataset's
    own rubric, HealthBench). A custom template replaces the default of its own kind: one with
    ``{{conversation}}`` the conversation default, one without it the plain default."""
    max_new_tokens: int = Field(256, ge=1)
    """Tokens per verdict (per_criterion: room to quote evidence first); all_criteria gets 8 per criterion."""
    score_template: str = "judge_score"
    """The rating template of best-of-N by judge score (``judge_bon``, testtime's
    ``judge_best_of_n``): ``{{conversation}}`` and ``{{response}}``, reply ``<score>N</score>``.
    ``judge_score_brief`` asks for the rating alone (a few tokens where ``judge_score`` writes a
    sentence first)."""
    batch_size: int = Field(32, ge=1)
    """Prompts per generate call (hf backend)."""


class EstimatorConfig(_Section):
    """The reference estimator: ``synthesis`` (CaT) by default; no default reads labels."""

    name: str = "synthesis"
    """Reference estimator (registry ``cat.teacher.estimators``): ``synthesis`` is CaT, the
    default, and reads no label; ``majority_vote`` is TTRL; ``gold`` is reference-based GRPO, the
    only one that reads the dataset's labels, so it is never a default: a config trains on labels
    only by naming it."""
    votes: int | None = Field(None, ge=1)
    """Rollouts per prompt the estimator reads, apart from the G it trains on
    (``generation.num_generations``). None: the same G. TTRL as published votes over 64 samples
    and trains on 32: ``votes: 64`` with G = 32 samples 64 per prompt, takes the reference from all
    64 and updates on the first 32 (rewards, advantages and diagnostics are over those)."""


class AnchorConfig(_Endpoint):
    """The teacher that synthesizes references: pi_0 by default, another local model, or with
    ``backend: openai`` an endpoint; its template (``anchors/``), whether it sees the question, its
    token budget and sampling, ``max_context_tokens`` and ``orders``."""

    backend: Literal["local", "openai"] = "local"
    """``local``: a frozen model on the rollout engine's backend (``generation.backend``).
    ``openai``: an OpenAI-compatible endpoint (base_url, api_key_env, ...) serving ``model``."""
    model: str | None = None
    """The teacher. None: pi_0, the policy's initial weights (the paper; with vLLM they are swapped
    into the rollout engine for the anchor's calls). A local path / hub id: another frozen model
    (a stronger or weaker teacher). With backend openai: the served model name (required)."""
    template: str = "math_synthesis"
    """Synthesis template: a name in anchors/ or a path."""
    include_question: bool = False
    """Show the anchor the question (the paper's default is not to)."""
    max_new_tokens: int = Field(64, ge=1)
    """Token budget of one synthesis."""
    temperature: float = Field(1.0, gt=0)
    """Anchor sampling temperature (ignored when greedy)."""
    greedy: bool = True
    """Decode the anchor greedily."""
    max_context_tokens: int | None = None
    """Anchor prompt budget; rollouts are truncated evenly to fit. None = the model's context."""
    orders: int = Field(1, ge=1)
    """How many orders the synthesis estimator shows each group's rollouts in. 1: as sampled (the
    paper). k > 1: k syntheses per group, the i-th with the rollouts rotated by i * G / k places
    (with k = G each rollout is read last once), and the reference is the synthesis whose answer
    most of them give (ties: the earliest order). A small anchor that mostly copies the last
    response it reads then outvotes that bias instead of passing one random rollout on. Costs k
    anchor calls per group; at most generation.num_generations."""


class ParallelConfig(_Section):
    """Several processes (torchrun, accelerate launch): how they hold the policy and how long they
    wait for each other."""

    strategy: Literal["ddp", "fsdp"] = "ddp"
    """How several processes hold the policy (one process ignores it). ``ddp``: every rank holds
    the whole policy, gradients and AdamW state, and gradients are all-reduced. ``fsdp``: PyTorch
    FSDP2 (``fully_shard``) shards them across ranks, one shard group per decoder layer; weights
    are gathered layer by layer for each forward, and whole for hf-backend generation. pi_0 stays
    whole on every rank. Not with LoRA (the adapter is small: use ddp)."""
    timeout_s: float = Field(1800.0, gt=0)
    """Seconds a rank waits in a collective (a gather, an all-reduce, the checkpoint barrier) for
    the others before the run stops with an error naming the ranks that stopped answering (each
    rank beats a heartbeat once a second). Ranks wait for the slowest one's work between
    collectives (its generation, the checkpoint rank 0 writes), so keep it above that."""


class SFTConfig(_Section):
    """``algorithm: sft``: fine-tune on the step's references instead of reinforcing rollouts
    (CaT-SFT in the paper; label-free with any estimator but gold)."""

    target: Literal["reference", "agreeing_rollout"] = "reference"
    """What each group is fine-tuned on. ``reference``: the estimator's reference text (for
    synthesis the anchor's synthesized answer, for majority_vote the majority's rollout).
    ``agreeing_rollout``: the first rollout with the group's best reward, when above 0
    (rejection-sampling fine-tuning against the reference; works with gold)."""


class RunConfig(_Section):
    """The run: seed, steps, batch sizes, output directory, checkpoint cadence, samples logged, the
    non-finite and unscored-step stops, the preflight, and trackers."""

    seed: int = Field(0, ge=0, lt=2**63)
    """Seeds data order, sampling and initialisation; same seed, same run on CPU. Below 2**63
    (torch takes 64 bits, and sampling seeds are offsets from it)."""
    steps: int = Field(50, ge=1)
    """RL steps (one generation batch each)."""
    prompts_per_step: int = Field(16, ge=1)
    """Prompts per generation batch; the batch holds prompts_per_step x G rollouts."""
    micro_batch_size: int = Field(32, ge=1)
    """Sequences per forward/backward pass; gradients accumulate exactly across micro-batches.
    The update orders its groups by length (longest first) before cutting micro-batches, and each
    micro-batch is cut to its own widest prompt and longest completion, so little padding is
    computed."""
    share_prompt_forward: bool = True
    """In the update and in scoring, run each group's prompt once and reuse its keys and values
    for the group's G completions (``cat.models.logprobs``): the gradient is the same, the prompt's
    tokens are forwarded and backpropagated once instead of G times. Off with gradient
    checkpointing (transformers turns the cache off there) and with parallel.strategy fsdp."""
    output_dir: str = "runs/default"
    """Run directory (config, metrics, samples, checkpoints, eval)."""
    save_every: int = Field(0, ge=0)
    """Checkpoint every N steps (0 = only at the end)."""
    keep_last: int = Field(2, ge=1)
    """Checkpoints to keep."""
    log_samples: int = Field(4, ge=0)
    """Completions per step written to samples.jsonl."""
    max_nonfinite_in_a_row: int = Field(3, ge=1)
    """Stop the run after this many consecutive non-finite losses or gradients."""
    memory_check: bool = True
    """Before a model loads, refuse a run whose memory plan (``cat-rl plan``) leaves less than 10%
    of a process's memory for activations, naming the settings that shrink it. False starts it
    anyway."""
    memory_gib: float | None = Field(None, gt=0)
    """The memory one process may use, in GiB, for that check; None: its GPU's, or on the CPU the
    machine's RAM shared by the processes on it."""
    preflight_prompts: int = Field(4, ge=0)
    """Before the first step of a fresh run, sample this many training prompts, build their
    references and score them, and print the rollout and reference answer rates and the share of
    groups whose rewards differ; stop with the cause and the fix when nothing can be scored. 0 skips it."""
    max_unscored_share: float = Field(0.9, ge=0, le=1)
    """A step whose share of unscored groups (no usable reference, a teacher failure) is above this
    counts towards ``max_unscored_steps``."""
    max_unscored_steps: int = Field(3, ge=1)
    """Stop the run (non-zero exit) after this many such steps in a row: it would train on nothing."""
    report_to: list[Literal["tensorboard", "wandb", "trackio", "mlflow", "comet_ml", "aim", "clearml", "dvclive",
                            "swanlab"]] = []
    """Experiment trackers that mirror each step's metrics and each evaluation (accelerate's
    trackers; ``tensorboard`` writes to RUN_DIR/tensorboard). metrics.jsonl stays the record."""
    tracker_project: str = "cat"
    """Project name for trackers that group runs (wandb, trackio, mlflow, ...); the run is named after its directory."""
    tracker_kwargs: dict[str, dict[str, Any]] = {}
    """Per-tracker arguments for its init, e.g. ``{wandb: {mode: offline, entity: my-team}}``."""


class Config(_Section):
    """One run's whole configuration: ``algorithm`` and ``plugins`` at the top, every other key a
    section."""

    algorithm: Literal["grpo", "sft"] = "grpo"
    """``grpo``: reinforce rollouts by their rewards against the reference (CaT-RL, TTRL,
    reference-based GRPO). ``sft``: maximise the likelihood of each group's reference instead
    (CaT-SFT, majority-SFT; ``sft.target``), on the same prompts, steps and optimiser; the
    rewards are still computed and logged. The ``grpo`` section's KL term (beta) applies to both."""
    plugins: list[str] = []
    """Modules to import before the run (``pkg.module`` or a path to a .py file, relative to the
    working directory) so that their ``@register_estimator`` / ``@register_reward`` run."""
    model: ModelConfig = ModelConfig()
    generation: GenerationConfig = GenerationConfig()
    grpo: GRPOConfig = GRPOConfig()
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig()
    eval: EvalConfig = EvalConfig()
    answer: AnswerConfig = AnswerConfig()
    reward: RewardConfig = RewardConfig()
    estimator: EstimatorConfig = EstimatorConfig()
    anchor: AnchorConfig = AnchorConfig()
    rubric: RubricConfig = RubricConfig()
    judge: JudgeConfig = JudgeConfig()
    parallel: ParallelConfig = ParallelConfig()
    sft: SFTConfig = SFTConfig()
    run: RunConfig = RunConfig()

    @model_validator(mode="after")
    def _check(self) -> Config:
        try:
            check_prompt_template(self.data.prompt_template, self.data.prompt_field)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        self._check_reasoning_gym()
        if self.estimator.name == "judge_bon":  # a typo stops the run here, before its directory is written
            try:
                score_template(self.judge.score_template)
            except ConfigError as exc:
                raise ValueError(f"judge.score_template: {exc}") from None
        if self.anchor.backend == "openai" and not self.anchor.model:
            raise ValueError("anchor.backend is openai: anchor.model must name the served model")
        if self.parallel.strategy == "fsdp" and self.model.dtype == "float16":
            raise ValueError("model.dtype float16 with parallel.strategy fsdp is not supported (fp16's loss scaling is "
                             "tested with one process and ddp): use bfloat16 with fsdp, or ddp")
        if self.optim.name == "adamw_8bit" and (self.parallel.strategy == "fsdp" or self.model.dtype == "float64"):
            what = "parallel.strategy fsdp" if self.parallel.strategy == "fsdp" else "model.dtype float64"
            raise ValueError(f"optim.name adamw_8bit with {what} is not supported (bitsandbytes' 8-bit state takes "
                             "whole fp32, bf16 or fp16 tensors): use ddp and float32 or bfloat16, or optim.name adamw")
        if self.parallel.strategy == "fsdp" and self.model.lora is not None:
            raise ValueError("parallel.strategy fsdp with model.lora is not supported: the adapter is small, use ddp")
        if self.rubric.min_criteria > self.rubric.max_criteria:
            raise ValueError(f"rubric.min_criteria ({self.rubric.min_criteria}) is above rubric.max_criteria "
                             f"({self.rubric.max_criteria}): no rubric could pass")
        if self.generation.num_generations < 2 and self.algorithm == "grpo":
            raise ValueError("generation.num_generations is 1: a group of one rollout has a zero advantage "
                             "(its own mean is the baseline), so nothing would be learned; use 2 or more")
        if self.rubric.source == "dataset" and self.estimator.name != "gold" and "rubric" in (
                self.reward.name, *(self.reward.functions or ())):
            raise ValueError("rubric.source dataset grades with the dataset's own rubrics, which are labels: that is "
                             "the reference-based baseline, so name it: estimator.name=gold (or rubric.source="
                             "self_proposed for CaT's label-free rubrics)")
        if self.anchor.orders > 1 and self.estimator.name in _SINGLE_READ:
            raise ValueError(f"anchor.orders ({self.anchor.orders}) is read by the synthesis estimator only; "
                             f"estimator.name is {self.estimator.name}: set anchor.orders=1")
        if self.estimator.votes is not None and self.algorithm == "sft" and self.sft.target == "reference" \
                and self.estimator.votes > self.generation.num_generations:
            raise ValueError("estimator.votes above generation.num_generations with algorithm sft: the reference may be "
                             "a rollout that is not trained on; use sft.target=agreeing_rollout")
        if self.anchor.orders > self.generation.num_generations:
            raise ValueError(f"anchor.orders ({self.anchor.orders}) is above generation.num_generations "
                             f"({self.generation.num_generations}): a group of G rollouts has G rotations")
        if self.algorithm == "sft" and self.grpo.num_iterations != 1:
            raise ValueError("algorithm sft takes one pass over each step's references: set grpo.num_iterations to 1")
        if self.algorithm == "sft" and self.sft.target == "reference" and self.estimator.name == "gold":
            raise ValueError("algorithm sft with the gold estimator: gold references are bare answers, not responses "
                             "to imitate; use sft.target=agreeing_rollout (rejection-sampling fine-tuning)")
        if self.model.dtype == "float64" and "vllm" in (self.generation.backend, self.judge.backend):
            raise ValueError("model.dtype float64 runs on the hf backend only (vLLM computes in 16 or 32 bits): "
                             "set generation.backend and judge.backend to hf, or model.dtype to float32")
        if self.generation.async_rollouts:
            self._check_async_rollouts()
        if self.generation.vllm_sleep and self.generation.backend != "vllm":
            raise ValueError(f"generation.vllm_sleep is vLLM's sleep mode: generation.backend is "
                             f"{self.generation.backend}; set generation.backend vllm, or vllm_sleep false")
        if self.generation.vllm_sleep and self.generation.async_rollouts:
            raise ValueError("generation.vllm_sleep with generation.async_rollouts: the engine generates the next "
                             "step's rollouts during the update, so it cannot sleep through it; choose one")
        high = self.grpo.epsilon_high
        if high is not None and high < self.grpo.epsilon:
            raise ValueError(f"grpo.epsilon_high ({high}) is below grpo.epsilon ({self.grpo.epsilon}): "
                             "clip-higher widens the upper bound, it does not narrow it")
        return self

    def _check_async_rollouts(self) -> None:
        """What one-step-async rollouts need: an engine holding its own copy of the weights, and
        nothing on the rollout thread that touches the policy or takes part in a collective."""
        where = "generation.async_rollouts is on"
        if self.generation.backend != "vllm":
            raise ValueError(f"{where} with generation.backend {self.generation.backend}: the hf backend samples from the "
                             "policy being updated; use generation.backend vllm, or async_rollouts false")
        if self.parallel.strategy == "fsdp":
            raise ValueError(f"{where} with parallel.strategy fsdp: loading pi_0 into the engine on the rollout thread "
                             "would gather shards beside the update's collectives; use ddp, or async_rollouts false")
        if self.grpo.sampler_correction is False and self.grpo.old_logprobs == "trainer":
            raise ValueError(f"{where} with grpo.sampler_correction false: nothing would correct the rollouts' one "
                             "update of staleness; leave grpo.sampler_correction on (or set grpo.old_logprobs sampler)")

    def _check_reasoning_gym(self) -> None:
        """A ``reasoning-gym:`` source names a task, settings its generator accepts and, for
        evaluation, seeds apart from the training rows'; its fields are refused elsewhere."""
        from cat.tasks.reasoning_gym import is_gym, sources

        for where, section in (("data", self.data), ("eval", self.eval)):
            if section.path is not None and not is_gym(section.path):
                # compared with the defaults, not model_fields_set: a saved config lists every field
                default = type(section)()
                given = [k for k in ("task_config", "seed") if getattr(section, k) != getattr(default, k)]
                if given:
                    raise ValueError(f"{where}.{given[0]} is set but {where}.path {section.path!r} is not a "
                                     "reasoning-gym source (reasoning-gym:TASK)")
            elif section.path is not None and self.data.format != "qa":
                raise ValueError(f"{where}.path {section.path!r} is a reasoning-gym source: data.format must be qa")
        if is_gym(self.data.path) or is_gym(self.eval.path):
            try:
                sources(self.data, self.eval)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None

    @property
    def sampler_correction(self) -> bool:
        """Whether the truncated importance-sampling correction applies (resolving ``None``)."""
        g = self.grpo
        if g.old_logprobs == "sampler":
            return False
        return g.sampler_correction if g.sampler_correction is not None else self.generation.backend == "vllm"


def _set_dotted(tree: dict, dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}' ({source}): '{key}' is not a section")
        node = child
    node[keys[-1]] = value


_SINGLE_READ = {"gold", "majority_vote", "single", "self_bon", "min_perplexity", "mutual_predictability"}
"""Built-in estimators that read a group once (or not with the anchor): ``anchor.orders`` is not theirs."""

TRL_NAMES = {
    "learning_rate": "optim.lr",
    "lr_scheduler_type": "optim.schedule",
    "warmup_steps": "optim.warmup_steps",
    "max_grad_norm": "optim.max_grad_norm",
    "weight_decay": "optim.weight_decay",
    "max_completion_length": "generation.max_new_tokens",
    "num_generations": "generation.num_generations",
    "temperature": "generation.temperature",
    "top_p": "generation.top_p",
    "top_k": "generation.top_k",
    "use_vllm": "generation.backend (vllm or hf)",
    "vllm_gpu_memory_utilization": "generation.vllm_gpu_memory_utilization",
    "vllm_tensor_parallel_size": "generation.vllm_tensor_parallel_size",
    "max_prompt_length": "data.max_prompt_tokens",
    "max_steps": "run.steps",
    "save_steps": "run.save_every",
    "save_total_limit": "run.keep_last",
    "output_dir": "run.output_dir",
    "seed": "run.seed",
    "report_to": "run.report_to",
    "per_device_train_batch_size": "run.micro_batch_size (rollouts per forward) and run.prompts_per_step",
    "gradient_accumulation_steps": "run.prompts_per_step (a step's groups) and run.micro_batch_size",
    "model_name_or_path": "model.name_or_path",
    "torch_dtype": "model.dtype",
    "gradient_checkpointing": "model.gradient_checkpointing",
    "beta": "grpo.beta",
    "epsilon": "grpo.epsilon",
    "epsilon_high": "grpo.epsilon_high",
    "loss_type": "grpo.loss_type",
    "scale_rewards": "grpo.scale_rewards",
    "num_iterations": "grpo.num_iterations",
    "importance_sampling_level": "grpo.importance_sampling_level",
    "mask_truncated_completions": "grpo.mask_truncated_completions",
    "reward_funcs": "reward.functions",
    "reward_weights": "reward.weights",
    "dataset_name": "data.path",
}
"""TRL GRPOConfig / ScriptArguments names and where cat keeps the same setting: an unknown key
with one of these names (at the top or in any section) is answered with cat's name."""


def _meant(loc: tuple) -> str:
    """A hint for an unknown key: cat's name for a TRL option, else the close valid names."""
    import difflib

    name = str(loc[-1]) if loc else ""
    here = ".".join(str(p) for p in loc[:-1])
    cat_name = TRL_NAMES.get(name)
    if cat_name is not None and here in ("", cat_name.split(".")[0]):  # at the top, or in the section it belongs to
        return f" (TRL's {name} is {cat_name} here)"
    valid = _describe(loc, Config).split(", ")
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def _describe(loc: tuple, model: type[BaseModel]) -> str:
    """Valid keys at the location of an error, so a typo's message lists what was meant."""
    node: Any = model
    for part in loc[:-1]:
        field = node.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return ""
        node = field.annotation
    return ", ".join(sorted(node.model_fields))


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: str, first: yaml.Mark, second: yaml.Mark):
        where = (f"on line {first.line + 1} (columns {first.column + 1} and {second.column + 1})"
                 if first.line == second.line else f"on lines {first.line + 1} and {second.line + 1}")
        super().__init__(f"key '{key}' is given twice, {where}; YAML would silently keep the second: keep one")


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping, at any depth (PyYAML
    keeps the last one silently), and reports a value its constructors cannot read (an integer
    too long for Python, ``!!int`` with nothing after it) as a YAML error at its line instead of
    a bare ValueError or IndexError."""

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, IndexError, KeyError, TypeError, OverflowError) as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {node.value!r:.40} as {node.tag.rpartition(':')[2]} "
                f"({type(exc).__name__}: {exc})", node.start_mark) from None

    def construct_document(self, node):
        self._paths = _mapping_paths(node)
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        if not isinstance(node, yaml.MappingNode):  # a tag such as !!set on a list: SafeConstructor refuses it
            return super().construct_mapping(node, deep)
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *base" keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: SafeConstructor reports it
                continue
            if first is not key_node:
                path = self._paths.get(id(node), "")
                raise _DuplicateKey(f"{path}.{key}" if path else str(key), first.start_mark, key_node.start_mark)
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node):
        try:
            value = super().construct_yaml_int(node)
        except ValueError:
            if not node.value.lstrip("+-").replace("_", "").isdigit():  # !!int on a word: construct_object says so
                raise
            value = None  # more decimal digits than Python reads (sys.get_int_max_str_digits, 4300)
        if value is None or value.bit_length() > 14_000:  # 0x... of that size reads, but no message or dump could print it
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {len(node.value)} characters is too long to read", node.start_mark)
        return value


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)


def _mapping_paths(root: yaml.Node) -> dict[int, str]:
    """The dotted path of every mapping node under ``root`` (keyed by ``id``), for messages."""
    paths: dict[int, str] = {}
    seen: set[int] = set()
    todo = [(root, "")]
    while todo:
        node, path = todo.pop()
        if id(node) in seen:  # an alias can make the graph cyclic
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            paths[id(node)] = path
            todo += [(v, f"{path}.{k.value}" if path else str(k.value)) for k, v in node.value]
        elif isinstance(node, yaml.SequenceNode):
            todo += [(v, f"{path}[{i}]") for i, v in enumerate(node.value)]
    return paths


_MAX_DEPTH = 64
"""Deeper YAML is refused as nested too deeply, whatever Python's recursion limit (which a library
may have raised) would let PyYAML's recursive composer reach; a config needs a handful of levels."""


def _check_depth(events: yaml.Loader, where: str, hint: str) -> None:
    """ConfigError when the YAML that ``events`` reads nests collections deeper than
    ``_MAX_DEPTH`` (PyYAML's parser is iterative: reading its events needs no recursion)."""
    depth = 0
    try:
        while events.check_event():
            event = events.get_event()
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > _MAX_DEPTH:
                    raise ConfigError(f"{where} is not valid YAML{hint}: it is nested too deeply "
                                      f"(more than {_MAX_DEPTH} levels)")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    finally:
        events.dispose()


def _parse_yaml(text: str, where: str, hint: str = "") -> Any:
    """``text`` read by ``_StrictLoader``; every way it can fail is a ConfigError naming ``where``
    (a file or an override) and the line."""
    try:
        loader = _StrictLoader(text)  # its Reader refuses control characters here
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(f"{where} is not valid YAML{hint}: character {exc.character:#04x} on line {line} is not "
                          "allowed in YAML text (is it a binary file?)") from None
    loader.name = where  # marks in PyYAML's messages name it instead of "<unicode string>"
    try:
        _check_depth(_StrictLoader(text), where, hint)
        return loader.get_single_data()
    except _DuplicateKey as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML{hint}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{where} is not valid YAML{hint}: it is nested too deeply") from None
    except (ValueError, IndexError, KeyError, TypeError, OverflowError) as exc:  # a deferred constructor's
        raise ConfigError(f"{where} is not valid YAML{hint}: a tagged value cannot be read "
                          f"({type(exc).__name__}: {exc})") from None
    finally:
        loader.dispose()


def parse_overrides(overrides: list[str], origins: dict[str, str] | None = None) -> dict:
    """``section.key=value`` overrides as a tree, later ones over earlier ones. ``origins``, when
    given, gets ``override 'ITEM'`` for every key they set (see ``_origins``)."""
    tree: dict = {}
    for item in overrides:
        key, eq, raw = item.partition("=")
        if not eq or not key or " " in key:
            raise ConfigError(f"override '{item}' is not of the form section.key=value")
        if "" in key.strip().split("."):
            raise ConfigError(f"override '{item}': the key '{key}' has an empty part; write section.key=value")
        value = _parse_yaml(raw, f"override '{item}'", " (quote a value with YAML's special characters, "
                            "e.g. 'data.prompt_template=\"{problem} ...\"')") if raw else ""
        _set_dotted(tree, key.strip(), value, f"override {item!r}")
        if origins is not None:
            _replace_origins(origins, _origins(value, key.strip(), f"override '{item}'"), key.strip())
    return tree


def _origins(value: Any, key: str, origin: str, _seen: set[int] | None = None) -> dict[str, str]:
    """``origin`` (a file, an override) for every setting in ``value`` placed at dotted ``key``,
    keyed by dotted path: a section's keys, recursively; a list or an empty section is one setting.
    The parallel record that lets a message name where a bad key or value came from."""
    seen = set() if _seen is None else _seen
    # a section that a YAML alias repeats is one setting after its first place: aliases can nest
    # one in another (exponentially many paths) or hold their own section (infinitely many)
    if isinstance(value, dict) and value and id(value) not in seen:
        seen.add(id(value))
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(_origins(v, f"{key}.{k}" if key else str(k), origin, seen))
        return out
    return {key: origin} if key else {}


def _replace_origins(origins: dict[str, str], new: dict[str, str], key: str) -> None:
    """What set dotted ``key`` and everything under it is now ``new`` (the origins of the value
    that replaced it there)."""
    for k in [k for k in origins if k == key or k.startswith(f"{key}.")]:
        del origins[k]
    origins.update((k, v) for k, v in new.items() if k == key or k.startswith(f"{key}."))


def _merge(base: dict, extra: dict, where: str, onto: str, origins: dict[str, str], extra_origins: dict[str, str],
           prefix: str = "") -> dict:
    """``extra`` over ``base``: sections key by key, any other value replaced. ``extra`` setting
    keys under something ``base`` gives as a value (a list, a string) is an error, not a
    replacement that would hide it. ``where`` and ``onto`` name the two in the message.
    ``origins`` (``base``'s, dotted key -> where it was set) is updated in place from
    ``extra_origins`` for every key that ``extra`` replaces."""
    out = dict(base)
    for key, value in extra.items():
        old = out.get(key)
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(old, dict):
            out[key] = _merge(old, value, where, onto, origins, extra_origins, f"{dotted}.")
        elif isinstance(value, dict) and old is not None:
            given = f" ({origins[dotted]})" if dotted in origins else ""
            raise ConfigError(f"{where} sets keys under {dotted}, but {onto}{given} gives {dotted} as "
                              f"{type(old).__name__} {old!r:.60}, not as a section")
        else:
            out[key] = value
            _replace_origins(origins, extra_origins, dotted)
    return out


def _read_tree(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict, dict[str, str]]:
    """One YAML file as a tree, with its ``base:`` (a path or a list of paths, relative to the
    file) merged underneath: bases in order, then the file's own keys on top. Sections merge key
    by key; any other value (lists included) replaces the base's. A key given twice in one file is
    an error (``_StrictLoader``). With the tree, its origins: the file that set each key."""
    where = f" (base of {chain[-1]})" if chain else ""
    try:
        found, resolved = path.is_file(), path.resolve()
    except OSError as exc:  # a name too long for the file system
        raise ConfigError(f"config file {path}{where}: {exc.strerror or exc}") from None
    if not found:
        raise ConfigError(f"config file not found: {path}{where}")
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"config {path}: its bases form a cycle: {cycle}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    text = utf8_text(data, f"config file {path}")
    loaded = _parse_yaml(text, f"config file {path}")
    if loaded is None:  # not {}: a file that was never saved, or truncated, would run on the defaults
        raise ConfigError(f"config file {path} is empty (or holds only comments); write at least one setting")
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(loaded).__name__}")
    bases = loaded.pop("base", None)
    own = _origins(loaded, "", str(path))
    if bases is None:
        return loaded, own
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not bases or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"config {path}: base must be a path or a list of paths (relative to the file), "
                          f"got {bases!r}")
    tree: dict = {}
    origins: dict[str, str] = {}
    for base in bases:
        base_tree, base_origins = _read_tree(path.parent / base, (*chain, resolved))
        tree = _merge(tree, base_tree, f"config {path.parent / base}", "an earlier base", origins, base_origins)
    return _merge(tree, loaded, f"config {path}", "its base", origins, own), origins


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (composed over its ``base:`` configs), apply ``section.key=value``
    overrides, validate the whole tree. An error names, for each bad key or value, the file or the
    override that set it."""
    if path is None:
        return config_from_tree({}, overrides, source="defaults")
    tree, origins = _read_tree(Path(path))
    return config_from_tree(tree, overrides, source=str(path), origins=origins)


def config_from_tree(tree: dict, overrides: list[str] | None = None, *, source: str = "a dict",
                     origins: dict[str, str] | None = None) -> Config:
    """Validate a config tree (sections as dicts, as in YAML) with ``section.key=value`` overrides applied.
    ``source`` names the tree in messages; ``origins`` (dotted key -> the file that set it, from
    ``_read_tree``) names where each of its keys came from, else ``source`` for all of them."""
    origins = dict(origins) if origins is not None else _origins(tree, "", source)
    if overrides:
        given: dict[str, str] = {}
        tree = _merge(tree, parse_overrides(overrides, given), "an override", "the config", origins, given)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        lines = [f"invalid config ({source}):"]
        lines += [f"  {_error_line(err, origins, source)}" for err in exc.errors()]
        raise ConfigError("\n".join(lines)) from None


def _error_line(err: Any, origins: dict[str, str], source: str) -> str:
    """One validation error as ``WHERE: KEY: what is wrong``. WHERE is the file or override that
    set the key (``source`` when nothing recorded did). A model validator's error (a check across
    fields) has no KEY, as its message names the keys; WHERE is where those keys were set, a key
    that nothing set being named as a default."""
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = f"unknown key{_meant(err['loc'])}; valid keys here: {_describe(err['loc'], Config)}"
    elif err["type"] in ("literal_error", "greater_than", "greater_than_equal", "less_than",
                         "less_than_equal", "finite_number"):
        msg = f"{msg} (got {err.get('input')!r:.60})"
    elif err["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
    if err["type"] == "value_error" and _section_model(err["loc"]) is not None:  # a model validator's check
        keys = _keys_named(msg) or [loc]
        found = [o for k in keys for o in _set_by(k, origins)]
        defaults = [f"the default {k}" for k in keys if k and not _set_by(k, origins)]
        return f"{' and '.join([*dict.fromkeys(found), *defaults]) if found else source}: {msg}"
    if not loc:
        return f"{source}: {msg}"
    return f"{' and '.join(_set_by(loc, origins)) or source}: {loc}: {msg}"


def _set_by(key: str, origins: dict[str, str]) -> list[str]:
    """What set dotted ``key``: the entry for it or for a value above it (``optim.betas`` for
    ``optim.betas.1``), else the entries of the keys under it (a section); none: its default."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        found = origins.get(".".join(parts[:n]))
        if found is not None:
            return [found]
    return list(dict.fromkeys(o for k, o in origins.items() if k.startswith(f"{key}.")))


def _section_model(loc: tuple) -> type[BaseModel] | None:
    """The section model at ``loc`` (``Config`` itself at the top), or None when ``loc`` is a field."""
    node: Any = Config
    for part in loc:
        field = node.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        node = field.annotation
    return node


_DOTTED = re.compile(r"\b([a-z_]+)\.([a-z_0-9]+)\b")


def _keys_named(text: str) -> list[str]:
    """The settings a message names: ``section.key`` words, and top-level keys (``algorithm``)."""
    keys = [f"{s}.{k}" for s, k in _DOTTED.findall(text)
            if (model := _section_model((s,))) is not None and k in model.model_fields]
    keys += [k for k in Config.model_fields if _section_model((k,)) is None and re.search(rf"\b{k}\b", text)]
    return list(dict.fromkeys(keys))


def with_defaults(tree: dict) -> dict:
    """A dumped config with the settings a later version added filled in at their defaults, so a
    run saved before an option existed compares equal to one that leaves the option at its
    default (the same-run check, compare, report's arms). A tree this version no longer accepts is
    returned as written."""
    try:
        return yaml.safe_load(dump_config(config_from_tree(tree)))
    except (ConfigError, ValueError, TypeError):
        return tree


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


_WARNED: set[str] = set()


def warn_whole_config(name: str, instead: str, *, stacklevel: int = 3,
                      built_from: str = "its own config section") -> None:
    """The deprecation of passing the whole ``Config`` to ``name``: a DeprecationWarning at the
    caller (``stacklevel`` counts from here) and, once per name, a log line, as
    DeprecationWarnings are hidden outside ``__main__``. ``instead``: the new call."""
    message = (f"{name} is built from {built_from}, not the whole Config: "
               f"call {instead}. Passing the whole Config is deprecated")
    warnings.warn(message, DeprecationWarning, stacklevel=stacklevel)
    if name not in _WARNED:
        _WARNED.add(name)
        logger.warning(message)


def accepts_whole_config(instead: str, adapt: Callable[..., tuple[tuple, dict]]):
    """Decorate a component built from its own config section so that a call the old way, with the
    whole ``Config`` where the section goes, still works: with a DeprecationWarning (and one log
    line, as DeprecationWarnings are hidden outside ``__main__``) that says the new call,
    ``instead``. ``adapt(config, *args, **kwargs)`` turns the old call's other arguments into the
    new call's ``(args, kwargs)``, the section first.

    The section is the function's first parameter (after ``cls`` for a classmethod: decorate
    under ``@classmethod``); the old call may also have named it ``config=``. The decorated
    function keeps its signature (``inspect.signature`` shows the new one)."""

    def decorate(fn):
        at = 1 if next(iter(inspect.signature(fn).parameters)) in ("cls", "self") else 0

        @functools.wraps(fn)
        def call(*args, **kwargs):
            if len(args) > at and isinstance(args[at], Config):
                config, rest = args[at], args[at + 1:]
            elif len(args) <= at and isinstance(kwargs.get("config"), Config):
                config, rest = kwargs.pop("config"), ()
            else:
                return fn(*args, **kwargs)
            warn_whole_config(fn.__qualname__, instead, stacklevel=3)
            new_args, new_kwargs = adapt(config, *rest, **kwargs)
            return fn(*args[:at], *new_args, **new_kwargs)

        return call

    return decorate


class ReadsThroughToConfig:
    """Base of a settings dataclass built from a few sections of the run's Config (its ``_config``
    field keeps the Config): a name that is not a field is read from the Config, deprecated
    (:func:`read_through_settings`). A subclass names itself (``_KIND``: "a reward") and says where
    each section's settings are now (``_READ_INSTEAD``)."""

    _KIND: ClassVar[str]
    _READ_INSTEAD: ClassVar[dict[str, str]]

    def __getattr__(self, name: str):
        # only names that are not fields get here
        return read_through_settings(self, name, kind=self._KIND, instead=self._READ_INSTEAD)


def read_through_settings(settings, name: str, *, kind: str, instead: dict[str, str]):
    """``settings.name`` where ``name`` is not one of a settings dataclass's fields (its
    ``__getattr__``): a plug-in written for the whole Config reads a section through it. The
    section of the run's Config (the settings' ``_config``) is returned, with a DeprecationWarning
    and, once per (kind, name), a log line that says what to read instead (``instead[name]``);
    any other name is an AttributeError listing the fields. ``kind``: "a reward", "a reference
    estimator"."""
    config = settings.__dict__.get("_config")
    fields = ", ".join(f for f in settings.__dataclass_fields__ if not f.startswith("_"))
    if name.startswith("_") or config is None or name not in type(config).model_fields:
        raise AttributeError(f"{type(settings).__name__} has no field {name!r} (fields: {fields})")
    read = instead.get(name, f"a field of {type(settings).__name__} (it has none for this section yet: say which "
                             f"setting your plug-in needs)")
    message = (f"{kind} read config.{name}: it is built from {type(settings).__name__}, not the whole Config; read "
               f"{read} (docs/plugins.md). Reading the Config through them is deprecated")
    warnings.warn(message, DeprecationWarning, stacklevel=3)
    if (kind, name) not in _WARNED_READS:  # DeprecationWarnings are hidden by default outside __main__
        _WARNED_READS.add((kind, name))
        logger.warning(message)
    return getattr(config, name)


_WARNED_READS: set[tuple[str, str]] = set()
