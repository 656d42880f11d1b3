"""The training loop: rollouts -> reference -> rewards -> advantages -> loss -> update.

The ``Trainer`` is the algorithm: ``step()`` takes one step, and it owns what a step uses: the
rollout engine, the estimator, the reward, the frozen pi_0 (KL reference and anchor, loaded only
when something uses it). Around it:
* the ``Learner`` (``cat.run.learner``): the trained policy, its optimizer and their state;
* the ``Objective`` (``cat.algo.objectives``, ``algorithm``): GRPO or SFT, what the update
  minimises and the batch it is built on;
* the ``Task`` (``cat.tasks.task``): the prompts, their length limit and the evaluation;
* the ``RunLoop`` (``cat.run.loop``), which owns the trainer and drives it: cadence, steps taken,
  evaluation, checkpoints, signals, recording.
Under torchrun or accelerate launch each rank generates, references and rewards its shard of
the step's prompts and the whole step is gathered before advantages (``cat.run.parallel``).
With ``generation.async_rollouts`` the next step's experience (rollouts, references, rewards) is
made on a second thread while this step updates (``cat.run.ahead``); with
``generation.vllm_sleep`` the vLLM engine sleeps through the update.

Departures from the paper's verl setup, stated here once:
* Groups that cannot be scored (no answer in the reference, teacher failure) are dropped from the
  update and counted (``groups/unscored``), never scored 0.
* Gradient accumulation uses the whole batch's normaliser for every loss_type, so micro-batching
  never changes the gradient.
* Step s samples with seed f(seed, s) and visits prompts fixed by (seed, s), so a resumed run
  regenerates exactly what the uninterrupted run would have.
* Precision: fp32 master weights and AdamW state, forward passes under autocast in
  ``model.dtype`` (verl's FSDP actor keeps fp32 parameters too; TRL trains in the load dtype).
* With vLLM, the loss is reweighted by truncated importance ratios between the trainer's and the
  engine's log-probs (``grpo.sampler_correction``), as TRL does; the mismatch is logged every step.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import logging
import math
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from cat.algo.batch import Batch
from cat.algo.grpo import LossStats, MismatchStats, to_floats, truncated_is_weights
from cat.algo.objectives import GRPO, SFT, Objective
from cat.config import Config
from cat.errors import ConfigError
from cat.generation import SamplingParams, SharedEngine, generator_from_config
from cat.models.load import load_model, load_tokenizer, resolve_device
from cat.models.logprobs import token_logprobs
from cat.registry import import_plugin
from cat.rewards import AnswerChain, RewardContext, build_rewards, preflight_rewards, reward_names
from cat.run.ahead import Background, Experience
from cat.run.learner import Learner
from cat.run.parallel import Ranks, ShardedGenerator, ShardedJudge, combine_stats, gather_lists
from cat.run.tracking import check_available
from cat.tasks.data import PromptOrder, load_split
from cat.tasks.evaluate import grader_section
from cat.tasks.settings import TaskSettings
from cat.tasks.task import Task
from cat.teacher import firewall
from cat.teacher.diagnostics import anchor_costs
from cat.teacher.estimators import ESTIMATORS, build_estimator
from cat.types import Group, GroupScore, Reference

logger = logging.getLogger(__name__)


@dataclass
class StepResult:
    metrics: dict
    samples: list[dict] = field(default_factory=list)
    audit: list[dict] = field(default_factory=list)


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7919) % (2**31 - 1)


def preflight(config: Config) -> None:
    """Everything that can be checked without loading a model: plugins, registry names, templates
    and dataset rows. Runs before the run directory is touched, so a typo costs seconds."""
    for plugin in config.plugins:
        import_plugin(plugin)
    estimator = ESTIMATORS.get(config.estimator.name)
    AnswerChain.from_config(config.answer)  # its rule names, once plug-ins have registered theirs
    if config.optim.name == "adamw_8bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("optim.name adamw_8bit needs bitsandbytes: pip install 'cat-rl[bnb]'")
    preflight_rewards(config)
    if estimator.needs_anchor:
        from cat.teacher.anchor import anchor_template

        anchor_template(config.anchor)
    task = TaskSettings.from_config(config)
    load_split(task, "train")
    if config.eval.path is not None:
        load_split(task, "eval")
    check_available(config.run.report_to)


class Trainer:
    def __init__(self, config: Config, run_dir: Path, *, log=None):
        self.config = config
        self.run_dir = Path(run_dir)
        self.device = resolve_device(config.model.device)
        self.ranks = Ranks(cpu=self.device.type == "cpu", timeout_s=config.parallel.timeout_s)
        if self.ranks.world > 1 and self.device.type == "cuda":
            self.device = self.ranks.device  # one GPU per rank
        self.log = (log or logger.info) if self.ranks.main else _quiet
        for plugin in config.plugins:
            import_plugin(plugin)
        self.estimator = build_estimator(config)
        # what the estimator and rewards may not see of a prompt (cat.teacher.firewall): None in a gold run
        self.hidden_labels = firewall.hidden_fields(config.estimator.name, config.data)
        self.reward = build_rewards(config)
        if self._needs_anchor():
            from cat.teacher.anchor import anchor_template

            anchor_template(config.anchor)
        # a judge is built and checked here: an endpoint that cannot give verdicts fails before any model loads
        self.reward.open(self.run_dir)
        self._eval_judge = None
        self._warned_same_judge = False
        self._anchor = None
        torch.manual_seed(config.run.seed)
        m = config.model
        self.tokenizer = load_tokenizer(m.name_or_path, trust_remote_code=m.trust_remote_code)
        self.objective = build_objective(config, self.tokenizer)
        self.task = Task(TaskSettings.from_config(config), self.tokenizer, log=self.log)
        # the teachers on endpoints are checked now (one real request each), not at their first use
        # after the initial evaluation; local ones load on first use
        if self._needs_anchor() and config.anchor.backend == "openai":
            self._anchor = self._build_anchor()
        eval_judge = grader_section(config)
        if self.task.needs_judge and self.task.eval_prompts and (self.reward.judge is None or config.eval.judge) \
                and eval_judge.backend == "openai":
            self._eval_judge = self._open_eval_judge()
        self.prompts, self.prompt_ids = self.task.prompts, self.task.prompt_ids
        self.eval_prompts = self.task.eval_prompts
        self.learner = Learner(m, config.optim, ranks=self.ranks, device=self.device,
                               total_updates=config.run.steps * config.grpo.num_iterations,
                               max_nonfinite_in_a_row=config.run.max_nonfinite_in_a_row,
                               strategy=config.parallel.strategy, log=self.log)
        self.policy = self.learner.policy
        self._initial = None
        self.engine = self._make_generator(self.policy, self.tokenizer, sleep=config.generation.vllm_sleep)
        self.shared = None
        if self._needs_anchor() and config.anchor.backend == "local" and config.anchor.model is None \
                and config.generation.backend == "vllm":
            self.shared = SharedEngine(self.engine, {"policy": self.policy, "pi_0": self.initial_policy})
            self.generator = self.shared.view("policy")
        else:
            self.generator = self.engine
        self.order = PromptOrder(len(self.prompt_ids), config.run.prompts_per_step, config.run.seed, config.data.shuffle)
        if config.run.prompts_per_step > len(self.prompt_ids) and self.ranks.main:
            logger.warning(f"run.prompts_per_step {config.run.prompts_per_step} is more than the {len(self.prompt_ids)} "
                           f"training prompts: each step takes some prompts more than once (as separate groups)")
        self.async_rollouts = config.generation.async_rollouts
        self._ahead: Background | None = None  # the rollout thread making the next step's experience
        self._ready: Experience | None = None  # the next step's experience, made ahead
        self._ahead_failed: Exception | None = None  # the rollout thread's error, raised at the next step
        self._loop = None  # only for the deprecated Trainer.train / save / restore / step_done

    @property
    def optimizer(self):
        return self.learner.optimizer

    @property
    def nonfinite_in_a_row(self) -> int:
        return self.learner.nonfinite_in_a_row

    # ---- components loaded on first use -------------------------------------------------------

    def _make_generator(self, model, tokenizer, *, sleep: bool = False):
        """An engine from the generation section: the policy's (which may sleep through updates), or
        a separate anchor's."""
        c = self.config
        return generator_from_config(c.generation, model, tokenizer, dtype=c.model.dtype, seed=c.run.seed, sleep=sleep)

    @property
    def initial_policy(self):
        """pi_0: loaded once, frozen, held in the compute dtype; the KL reference and the anchor."""
        if self._initial is None and self.learner.lora:
            from cat.models.lora import AdapterOff

            self._initial = AdapterOff(self.policy)  # the base model: no second copy
        if self._initial is None:
            m = self.config.model
            self._initial = load_model(m.name_or_path, dtype=m.dtype, device=self.device,
                                       trust_remote_code=m.trust_remote_code, frozen=True)
        return self._initial

    def _needs_anchor(self) -> bool:
        return self.estimator.needs_anchor or "anchor" in self.reward.needs

    @property
    def anchor(self):
        if self._anchor is None and self._needs_anchor():
            self._anchor = self._build_anchor()
        return self._anchor

    def _build_anchor(self):
        from cat.generation.hf import HFGenerator
        from cat.teacher.anchor import build_anchor

        def pi0_generator():
            if self.shared is not None:
                return self.shared.view("pi_0")
            return HFGenerator(self.initial_policy, self.tokenizer, batch_size=self.config.generation.batch_size,
                               compute_dtype=self.config.model.dtype)

        return build_anchor(self.config.anchor, self.config.model, self.tokenizer, seed=self.config.run.seed,
                            device=self.device, pi0_generator=pi0_generator, make_generator=self._make_generator)

    @property
    def eval_judge(self):
        """The judge that grades HealthBench evaluations: ``eval.judge``, else the reward's own when
        it has one (with a warning: the policy is then scored by the judge it learnt from)."""
        if self.reward.judge is not None and self.config.eval.judge is None:
            if not self._warned_same_judge:
                self._warned_same_judge = True
                self.log(f"evaluation is graded by the reward's own judge ({self.config.judge.model}): the policy is "
                         "scored by the judge whose quirks it can learn; set eval.judge to a separate grader")
            return self.reward.judge
        if self._eval_judge is None:
            self._eval_judge = self._open_eval_judge()
        return self._eval_judge

    def _open_eval_judge(self):
        from cat.rewards.judge import Judge

        c = self.config
        cache = self.run_dir / ("verdicts.jsonl" if c.eval.judge is None else "verdicts-eval.jsonl")
        judge = Judge.from_config(grader_section(c), cache_path=cache, generation=c.generation, dtype=c.model.dtype,
                                  device=c.model.device, seed=c.run.seed)
        judge.check()
        return judge

    # ---- the algorithm -------------------------------------------------------------------------

    def step(self, step: int) -> StepResult:
        """One step on the whole batch of prompts; in a multi-process run this rank generates,
        references and rewards its shard, the shards are gathered, and it backpropagates its rows.
        With ``generation.async_rollouts`` the experience of step + 1 is made on a second thread
        (``cat.run.ahead``) while this step updates, from the weights before this update."""
        timer = _Timer()
        if not self.async_rollouts:
            experience = self._gathered(self.experience(step, version=step))
            timer.times.update(experience.times)
            return self._learn(step, experience, timer, sync=True)
        experience = self._take_ahead(step, timer)
        if step + 1 >= self.config.run.steps:  # nothing to make ahead: the engine gets this step's update, as synchronous
            return self._learn(step, experience, timer, sync=True)
        with timer("weight_sync"):  # the weights step + 1's rollouts are made with: this step's, before its update
            self.generator.sync_weights(self.policy)
        # what loads on first use is built here, not on the rollout thread: a new engine makes
        # process groups, collectives that must not run beside the update's (a plug-in estimator
        # that builds one builds it in its ``open``)
        _ = self.anchor
        opener = getattr(self.estimator, "open", None)  # the Estimator protocol's optional open(): judge_bon's judge
        if opener is not None:
            opener()
        self._ahead = Background(lambda: self.experience(step + 1, version=step), name="cat-rollouts",
                                 device=self.device)
        return self._learn(step, experience, timer, sync=False)

    def experience(self, step: int, *, version: int) -> Experience:
        """This rank's shard of step ``step`` before any update: rollouts from the engine's
        weights (``version``: the updates they had taken), the estimator's references from them,
        the rewards. No collective: it may run on the rollout thread."""
        timer = _Timer()
        start = self.ranks.shard(len(self.order.batch(step)))[0]
        with timer("generate"):
            voting, groups = self._split(self.rollout(step))
        with timer("reference"):
            anchor = self.anchor
            if anchor is not None:  # sampled anchors draw fresh streams every step, the same on any number of ranks
                anchor = anchor.at(seed=_step_seed(self.config.run.seed, step) + 2, row_offset=start)
            # a label-free run's estimator and rewards see no label (cat.teacher.firewall)
            references = self.estimator(firewall.view(voting, self.hidden_labels), anchor)
        with timer("reward"):
            scores, reward_stats, audit = self.score(firewall.view(groups, self.hidden_labels), references, step)
            reward_stats = with_estimator_stats(reward_stats, self.estimator)
        return Experience(step, version, groups, references, scores, reward_stats, audit, times=timer.times)

    def _gathered(self, experience: Experience) -> Experience:
        """Every rank's shard of ``experience`` on every rank (collectives: the update thread's)."""
        if experience.whole:
            return experience
        if self.ranks.world == 1:
            return replace(experience, whole=True)
        counts = self.ranks.gather(len(experience.groups))
        groups, references, scores, audit = gather_lists(self.ranks, experience.groups, experience.references,
                                                         experience.scores, experience.audit)
        reward_stats = combine_stats(self.ranks.gather(experience.reward_stats), counts)
        return replace(experience, groups=groups, references=references, scores=scores, audit=audit,
                       reward_stats=reward_stats, whole=True)

    def _take_ahead(self, step: int, timer: _Timer) -> Experience:
        """Step ``step``'s experience made ahead (waiting for the rollout thread, if it is still
        at it), or made now when there is none: the first step of a run, or of a resumed one whose
        checkpoint holds none."""
        timer.times["rollout_wait"] = 0.0  # none when a checkpoint or an evaluation has waited already
        if self._ahead_failed is not None:  # the rollout thread failed while a checkpoint waited for it
            raise self._ahead_failed
        if self._ahead is not None:
            with timer("rollout_wait"):  # the rollouts' time the update did not hide
                self.join_ahead()
        ready, self._ready = self._ready, None
        if ready is None:
            with timer("rollout_wait"):
                ready = self._gathered(self.experience(step, version=step))
        if ready.step != step:
            raise RuntimeError(f"the experience made ahead is step {ready.step + 1}'s, not step {step + 1}'s")
        return ready

    def join_ahead(self) -> None:
        """Wait for the rollout thread and keep what it made (gathered: every rank calls this at
        the same point), so that the engine is free: before an evaluation or a checkpoint."""
        if self._ahead is not None:
            made = self._ahead.result()
            self._ahead = None  # only once the thread is done with the engine (close() looks at it)
            self._ready = self._gathered(made)

    def ahead_state(self) -> dict:
        """For a checkpoint: the experience made ahead for the next step, if any. Made by weights
        a resumed run no longer has, it is saved, so that the resumed run learns what this one would.
        In one process, a rollout thread that failed does not cost the checkpoint of the update
        before it: the checkpoint is saved without it (a resumed run makes that step's rollouts
        itself) and the error stops the run at the next step. Across processes the failure is raised
        here, as the other ranks are already gathering what theirs made."""
        try:
            self.join_ahead()
        except Exception as exc:
            if self.ranks.world > 1:
                raise
            self._ahead, self._ahead_failed = None, exc
            logger.warning(f"the rollout thread failed ({type(exc).__name__}: {exc}); the checkpoint is saved without "
                           f"the next step's experience, and the run stops at that step")
            return {}
        if not (self.async_rollouts and self._ready is not None):
            return {}
        return {"experience_ahead": self._ready.as_state(), "experience_settings": self._experience_settings()}

    def load_ahead_state(self, state: dict) -> None:
        """The checkpoint's experience made ahead, for the step it resumes at. A run resumed with
        async rollouts off, or with settings that change what a step's experience is (a resume
        with ``--allow-config-change``), makes that step's rollouts itself, from the checkpoint's
        weights, and says so."""
        ahead, self._ready = state.get("experience_ahead"), None
        if not ahead:
            return
        why = "generation.async_rollouts is off" if not self.async_rollouts else \
            "the settings that make it changed" if state.get("experience_settings") != self._experience_settings() else None
        if why is None:
            self._ready = Experience.from_state(ahead)
        else:
            self.log(f"the checkpoint holds step {ahead['step'] + 1}'s experience made ahead (async rollouts); {why}, "
                     f"so that step's rollouts are made again from its weights")

    def _experience_settings(self) -> str:
        """What a step's experience depends on besides the weights: the sections that sample, read
        and reward the rollouts, the seed and the step's prompts (a digest)."""
        import hashlib
        import json

        c = self.config.model_dump(mode="json")
        generation = {k: v for k, v in c["generation"].items()
                      if k not in ("async_rollouts", "vllm_sleep", "weight_sync_bucket_mb")}
        made_by = {**{k: c[k] for k in ("plugins", "model", "data", "answer", "reward", "estimator", "anchor",
                                         "rubric", "judge")},
                   "generation": generation, "seed": c["run"]["seed"], "prompts_per_step": c["run"]["prompts_per_step"]}
        return hashlib.sha256(json.dumps(made_by, sort_keys=True).encode()).hexdigest()

    def _learn(self, step: int, experience: Experience, timer: _Timer, *, sync: bool) -> StepResult:
        """The update on a gathered ``experience``, the weight sync that follows it when ``sync``
        (async rollouts sync before the next rollouts instead), and the step's record."""
        groups, references, scores = experience.groups, experience.references, experience.scores
        shard = self.ranks.shard(len(groups))  # the step's prompts (the rollout thread alone asks PromptOrder)
        batch, batch_metrics = self.objective.batch(groups, references, scores)
        if self.config.generation.vllm_sleep:  # the engine's GPU memory to the update; the sync below wakes it
            with timer("sleep"):
                self.engine.release()
        update = {**(self.update(batch, timer, shard) if batch is not None else {}), **batch_metrics}
        if sync:
            if self.config.generation.vllm_sleep:  # the gradients go before the engine wakes (cat-rl plan counts on it)
                self.learner.zero_grad()
                if self.device.type == "cuda":  # vLLM wakes with the driver's memory, not torch's cache
                    gc.collect()
                    torch.cuda.empty_cache()
            with timer("weight_sync"):
                self.generator.sync_weights(self.policy)
        metrics = {"step": step + 1, **self._rollout_metrics(groups, scores), **update, **experience.reward_stats}
        metrics.update(self.diagnose(groups, references, scores))
        if self.async_rollouts:  # the rollouts' own phases, which ran beside the update before this step
            metrics.update({f"time/{k}": v for k, v in experience.times.items()})
            metrics["async/staleness"] = step - experience.version  # steps between the rollouts' weights and the learner's
        metrics.update(timer.metrics())
        tokens = sum(len(c.token_ids) for grp in groups for c in grp.completions)
        metrics["tokens_per_second"] = tokens / max(timer.total, 1e-9)
        metrics["tokens/rollouts"] = tokens  # beside anchor/prompt_tokens and anchor/completion_tokens: who spent what
        return StepResult(metrics, self._samples(step, groups, references, scores, self.objective.rollout_advantages(batch)),
                          [{"step": step + 1, **row} for row in experience.audit])

    def probe(self, n: int) -> tuple[dict, list[Group], list[Reference]]:
        """The first ``n`` prompts of step 1 through rollouts, references and rewards, with no
        update and no record: (metrics as a step reports them, groups, references). On other
        sampling streams than the steps' and with the random state restored after, so the run
        that follows is the one it would have been. Every rank probes the same prompts."""
        from cat.run.checkpoint import rng_state, set_rng_state

        saved = rng_state()
        indices = self.order.batch(0)[:n]
        params = self._sampling(seed=_step_seed(self.config.run.seed, 0) + 3, row_offset=0)
        with self._generating():
            completions = self.generator.generate([self.prompt_ids[i] for i in indices], params)
        voting, groups = self._split([Group(prompt=self.prompts[i], prompt_ids=tuple(self.prompt_ids[i]),
                                            completions=tuple(c)) for i, c in zip(indices, completions, strict=True)])
        anchor = self.anchor
        if anchor is not None:
            anchor = anchor.at(seed=_step_seed(self.config.run.seed, 0) + 5, row_offset=0)
        references = self.estimator(firewall.view(voting, self.hidden_labels), anchor)
        scores, reward_stats, _ = self.score(firewall.view(groups, self.hidden_labels), references, 0)
        reward_stats = with_estimator_stats(reward_stats, self.estimator)
        set_rng_state(saved)
        metrics = {"step": 0, **self._rollout_metrics(groups, scores), **reward_stats,
                   **self.diagnose(groups, references, scores)}
        return metrics, groups, references

    def diagnose(self, groups: list[Group], references: list[Reference], scores: list[GroupScore]) -> dict:
        """The teacher measured, never trained on: the task's own diagnostics (against gold where
        it has one) and what the anchor spent."""
        return {**self.task.diagnose(groups, references, scores), **anchor_costs(references)}

    def score(self, groups: list[Group], references: list[Reference], step: int):
        """The run's rewards for every group: (scores, step metrics, audit rows)."""
        ctx = RewardContext(anchor=self.anchor if "anchor" in self.reward.needs else None,
                            seed=_step_seed(self.config.run.seed, step) + 1, step=step)
        out = self.reward.score(groups, references, ctx)
        return out.scores, out.metrics, out.audit

    def rollout(self, step: int) -> list[Group]:
        """This rank's groups of step ``step`` (all of them in one process)."""
        indices = self.order.batch(step)
        start, stop = self.ranks.shard(len(indices))
        indices = indices[start:stop]
        params = self._sampling(seed=_step_seed(self.config.run.seed, step), row_offset=start)
        with self._generating():
            completions = self.generator.generate([self.prompt_ids[i] for i in indices], params)
        return [
            Group(prompt=self.prompts[i], prompt_ids=tuple(self.prompt_ids[i]), completions=tuple(c))
            for i, c in zip(indices, completions, strict=True)
        ]

    def _split(self, sampled: list[Group]) -> tuple[list[Group], list[Group]]:
        """(the groups the estimator reads, the groups trained on): the first ``estimator.votes``
        and the first G rollouts of each prompt's samples; both all of them unless votes is set."""
        votes, g = self.config.estimator.votes, self.config.generation.num_generations
        if votes is None or votes == g:
            return sampled, sampled
        return ([replace(x, completions=x.completions[:votes]) for x in sampled],
                [replace(x, completions=x.completions[:g]) for x in sampled])

    def _sampling(self, *, seed: int, row_offset: int) -> SamplingParams:
        """The rollouts' sampling settings (``generation``) with these streams: G per prompt, or
        ``estimator.votes`` when more are drawn for the vote."""
        gen = self.config.generation
        n = max(gen.num_generations, self.config.estimator.votes or 0)
        return SamplingParams(n=n, max_new_tokens=gen.max_new_tokens, temperature=gen.temperature,
                              top_p=gen.top_p, top_k=gen.top_k, stop=tuple(gen.stop), seed=seed, row_offset=row_offset)

    def update(self, batch: Batch, timer: _Timer, shard: tuple[int, int] | None = None) -> dict:
        """num_iterations optimiser steps of the run's objective (``cat.algo.objectives``) on one
        generation batch (the whole step's), micro-batched exactly. This rank backpropagates the
        rows of the groups in ``shard`` (its own; None: all); the normalisers, the loss and every
        statistic are the whole batch's."""
        g, run, objective = self.config.grpo, self.config.run, self.objective
        T = batch.completion_length
        temperature = objective.temperature
        total_tokens = float(batch.completion_mask.sum().item())  # the normaliser: every row's tokens
        lo, hi = _rows_of(batch, shard)
        full, batch = batch, batch.rows(lo, hi)  # from here on: this rank's rows
        if objective.skip_zero_advantage:
            batch = batch.select((batch.advantages != 0).nonzero().flatten())
        batch = batch.select(batch.longest_first())  # micro-batches of like lengths, each trimmed below
        share = self.config.run.share_prompt_forward
        chunks = [(s, min(s + run.micro_batch_size, len(batch))) for s in range(0, len(batch), run.micro_batch_size)]
        use_sampler_old = objective.old_logprobs == "sampler"
        learner = self.learner
        passes = learner.forwards_in_step(max(len(chunks), 1))  # FSDP: the same on every rank
        with timer("logprobs"):
            old = self._logprobs(self.policy, batch, chunks, temperature, passes, idle=full) \
                if g.num_iterations > 1 and not use_sampler_old else None
            ref = self._logprobs(self.initial_policy, batch, chunks, temperature) if g.beta > 0 else None
        out: dict = {}
        mismatch = MismatchStats(0, 0, 0, 0)
        is_weights: dict[int, torch.Tensor] = {}  # micro-batch start -> [b, T], fixed by the first iteration
        with timer("update"):
            for iteration in range(g.num_iterations):
                learner.zero_grad()
                stats = LossStats(0, 0, 0, 0, 0, 0)
                # float64 running sums: the step's totals do not depend on how rows are split into
                # micro-batches or ranks beyond the rounding of each part
                loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
                logged_sum = torch.zeros((), dtype=torch.float64, device=self.device)  # what the objective logs
                entropy_sum = torch.zeros((), dtype=torch.float64, device=self.device)
                for k in range(passes):
                    if k >= len(chunks):  # this rank ran out of rows (or had none): the collectives still need it
                        with learner.micro_batch(last=k == passes - 1):
                            first = full.rows(0, 1)
                            learner.idle_backward(first.input_ids, first.attention_mask, T, temperature)
                        continue
                    start, stop = chunks[k]
                    mb = batch.rows(start, stop).trimmed()
                    Tm = mb.completion_length  # old, ref and is_weights[start] hold T columns; this has Tm
                    mask = mb.completion_mask.to(self.device)
                    sampler_lp = mb.sampler_logprobs.to(self.device)
                    offset = start  # into old / ref, which hold the same rows
                    with learner.micro_batch(last=k == passes - 1):
                        logp, entropy = learner.logprobs(mb.input_ids, mb.attention_mask, Tm, temperature,
                                                         with_entropy=True,
                                                         prompt_groups=mb.group_index if share else None)
                        if iteration == 0:
                            # the policy before this batch's updates: what the sampler should have matched
                            before = old[offset:offset + len(mb), :Tm].to(self.device) if old is not None \
                                else logp.detach()
                            is_weights[start], mb_mismatch = truncated_is_weights(before, sampler_lp, mask,
                                                                                  cap=g.sampler_correction_cap)
                            mismatch = mismatch + mb_mismatch
                        weights = is_weights[start] if objective.sampler_correction else None
                        if use_sampler_old:
                            old_lp = sampler_lp
                        else:
                            old_lp = old[offset:offset + len(mb), :Tm].to(self.device) if old is not None \
                                else logp.detach()
                        ref_lp = ref[offset:offset + len(mb), :Tm].to(self.device) if ref is not None else None
                        loss, mb_stats = objective.loss(logp, old_lp, ref_lp, mb.advantages.to(self.device), mask,
                                                        sampler_weights=weights, total_sequences=len(full),
                                                        total_tokens=total_tokens)
                        learner.backward(loss)
                    loss_sum += loss.detach()
                    logged_sum += objective.logged_loss(loss, logp, mask)
                    entropy_sum += (entropy * mask).sum()
                    stats = stats + mb_stats
                values = to_floats([loss_sum, logged_sum, entropy_sum, *stats.as_tuple()])  # the step's one read from the device
                loss_value, logged, entropy_total, skipped, *sums = self.ranks.sum(
                    [*values[:3], float(hi - lo - len(batch)), *values[3:]])
                stats = LossStats(*sums)
                out = {"loss": loss_value, "entropy": entropy_total / max(stats.tokens, 1.0), **stats.means(),
                       "update/skipped_rows": skipped, **objective.loss_metrics(logged, total_tokens)}
                out.update(learner.step(loss_value))
        if self.ranks.world > 1:
            mismatch = MismatchStats(*self.ranks.sum(list(mismatch.floats())))
        out.update(objective.mismatch_metrics(mismatch))
        return out

    @torch.no_grad()
    def _logprobs(self, model, batch: Batch, chunks, temperature: float, passes: int | None = None, *,
               idle: Batch | None = None) -> torch.Tensor:
        """Log-probs of the rows in ``chunks`` under a model that is not being updated, at the
        update's ``temperature`` (``passes``: forward passes to make in all, idle ones on the first
        row of ``idle`` after the chunks, for a sharded policy)."""
        parts = []
        T = batch.completion_length
        extra = max(0, (passes or 0) - len(chunks))
        share = self.config.run.share_prompt_forward and self.learner.shares_prompts
        for k, (start, stop) in enumerate(chunks + [(0, 1)] * extra):
            if k < len(chunks):
                mb = batch.rows(start, stop).trimmed()  # as the update cuts it
            else:
                mb = (idle if idle is not None else batch).rows(0, 1)
            logp, _ = token_logprobs(model, mb.input_ids.to(self.device), mb.attention_mask.to(self.device),
                                     mb.completion_length, temperature, compute_dtype=self.config.model.dtype,
                                     prompt_groups=mb.group_index if share else None)
            if k < len(chunks):
                parts.append(torch.nn.functional.pad(logp.cpu(), (0, T - mb.completion_length)))  # [b, T]
        return torch.cat(parts) if parts else torch.zeros((0, T))

    def _generating(self):
        """Around the policy's generation: its weights whole when FSDP shards them (hf backend)."""
        if self.config.generation.backend == "hf":
            return self.learner.whole_weights()
        return contextlib.nullcontext()

    # ---- bookkeeping ---------------------------------------------------------------------------

    def _rollout_metrics(self, groups: list[Group], scores: list[GroupScore]) -> dict:
        lengths = [len(c.token_ids) for g in groups for c in g.completions]
        truncated = [c.finish_reason == "length" for g in groups for c in g.completions]
        scored = [s.rewards for s in scores if s.rewards is not None]
        flat = [r for rs in scored for r in rs]
        mean = sum(flat) / len(flat) if flat else float("nan")
        std = math.sqrt(sum((r - mean) ** 2 for r in flat) / (len(flat) - 1)) if len(flat) > 1 else 0.0
        zero_std = sum(1 for rs in scored if max(rs) == min(rs))
        out = {
            "reward/mean": mean,
            "reward/std": std,
            "frac_reward_zero_std": zero_std / len(scored) if scored else float("nan"),
            "groups/scored": len(scored),
            "groups/unscored": len(scores) - len(scored),
            "completion/mean_length": sum(lengths) / len(lengths),
            "completion/max_length": max(lengths),
            "completion/min_length": min(lengths),
            "completion/clipped_ratio": sum(truncated) / len(truncated),
            "completion/empty_ratio": sum(not c.text.strip() for g in groups for c in g.completions) / len(lengths),
        }
        for key in sorted({k for s in scores for k in s.info}):
            values = [s.info[key] for s in scores if key in s.info]
            out[f"reward/{key}"] = sum(values) / len(values)
        return out

    def _samples(self, step, groups, references, scores, adv_by_group: dict[int, list[float]]) -> list[dict]:
        n = self.config.run.log_samples
        out = []
        for gi, (group, ref, score) in enumerate(zip(groups, references, scores, strict=True)):
            for ci, c in enumerate(group.completions):
                if len(out) >= n:
                    return out
                out.append({
                    "step": step + 1,
                    "prompt": group.prompt.text,
                    "completion": c.text,
                    "finish_reason": c.finish_reason,
                    "reward": score.rewards[ci] if score.rewards is not None else None,
                    "advantage": adv_by_group[gi][ci] if ci < len(adv_by_group.get(gi, ())) else None,
                    "reference": ref.text,
                    "reference_answer": ref.answer,
                    "gold": group.prompt.gold,
                })
        return out

    def evaluate(self) -> dict:
        """The task's evaluation of the current policy (sharded across ranks and gathered)."""
        if self.async_rollouts:  # the engine is free and holds the policy of the last update
            self.join_ahead()
            self.generator.sync_weights(self.policy)
        judge = self.eval_judge if self.task.needs_judge else None
        generator = self.generator
        if self.ranks.world > 1:
            generator = ShardedGenerator(self.generator, self.ranks)
            if judge is not None:
                judge = ShardedJudge(judge, self.ranks)
        with self._generating():
            result = self.task.evaluate(generator, judge)
        if judge is not None:  # which judge graded it, and whether it is the one the reward trained on
            grader = grader_section(self.config)
            result["judge"] = {"model": grader.model, "backend": grader.backend,
                               "is_reward_judge": self.config.eval.judge is None and self.reward.judge is not None}
        return result

    def close(self) -> None:
        """Release what the run holds, whether it finished or failed: the reward's judge and
        caches, every engine (vLLM's shut down), the models, the optimizer, then the allocator's
        cached blocks, so that a process training runs one after another (``cat.train`` in a
        notebook) holds one run at a time. Without it a vLLM engine outlives its run, memory and
        all. What vLLM keeps per process is beyond it: ``cat-rl compare`` trains each run in a
        process of its own (``cat.tools.compare.train_apart``). The trainer is not used after; a
        second call does nothing."""
        if self._ahead is not None and self._ahead.running:
            # interrupted (a second Ctrl-C) or failed while the rollout thread generates: shutting
            # the engines down under it would crash it, and waiting would make a stop wait out a
            # whole rollout. The process is ending; its engines go with it.
            logger.warning("the rollout thread is still generating: its engines are left to the process's exit")
            self._ahead = None
            return
        self._ahead = None
        try:
            self.reward.close()
        finally:
            if self._anchor is not None:
                self._anchor.close()
            if self.engine is not None:
                self.engine.close()
            # what holds weights or an engine: the learner (policy, optimizer), pi_0, the
            # generators, a local judge (the evaluation's, judge_bon's)
            self.learner = self.policy = self._initial = None
            self.engine = self.generator = self.shared = self._anchor = self._eval_judge = self.estimator = None
            self._loop = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    # ---- the run loop's, deprecated here: the loop owns the trainer -----------------------------

    def _run_loop(self, name: str):
        """The loop these deprecated names go to (one per trainer, so restore then train continues)."""
        warnings.warn(f"Trainer.{name} is the run loop's: loop = RunLoop(trainer) (cat.run.loop), then "
                      f"loop.{name}", DeprecationWarning, stacklevel=3)
        if self._loop is None:
            from cat.run.loop import RunLoop

            self._loop = RunLoop(self)
        return self._loop

    @property
    def step_done(self) -> int:
        """Deprecated: ``RunLoop.step_done``."""
        return self._run_loop("step_done").step_done

    @step_done.setter
    def step_done(self, value: int) -> None:
        self._run_loop("step_done").step_done = value

    def state_dict(self) -> dict:
        """Deprecated: ``RunLoop.state_dict``."""
        return self._run_loop("state_dict()").state_dict()

    def save(self) -> Path:
        """Deprecated: ``RunLoop.save``."""
        return self._run_loop("save()").save()

    def restore(self, path: Path) -> None:
        """Deprecated: ``RunLoop.restore``."""
        self._run_loop("restore(path)").restore(path)

    def train(self, *, progress: bool = True) -> dict:
        """Deprecated: ``RunLoop.train``."""
        return self._run_loop("train()").train(progress=progress)


def build_objective(config: Config, tokenizer) -> Objective:
    """The run's objective (``algorithm``) from the sections it reads."""
    g, gen = config.grpo, config.generation
    if config.algorithm == "sft":
        # verifiable tasks train only on targets whose final answer could be read
        verifiable = "math_equivalence" in [name for name, _ in reward_names(config)]
        return SFT(config.sft, g, tokenizer, max_completion_length=gen.max_new_tokens, require_answer=verifiable)
    return GRPO(g, temperature=gen.temperature, sampler_correction=config.sampler_correction,
                pad_id=tokenizer.pad_token_id, max_completion_length=gen.max_new_tokens)


class _Timer:
    def __init__(self):
        self.times: dict[str, float] = {}
        self.start = time.perf_counter()

    def __call__(self, name: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                timer.times[name] = timer.times.get(name, 0.0) + time.perf_counter() - self.t

        return _Ctx()

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start

    def metrics(self) -> dict:
        out = {f"time/{k}": v for k, v in self.times.items()}
        out["time/step"] = self.total
        return out


def _rows_of(batch: Batch, shard: tuple[int, int] | None) -> tuple[int, int]:
    """The rows [lo, hi) of the groups with index in ``shard`` (rows are ordered by group)."""
    if shard is None:
        return 0, len(batch)
    mine = ((batch.group_index >= shard[0]) & (batch.group_index < shard[1])).nonzero().flatten()
    return (int(mine[0]), int(mine[-1]) + 1) if len(mine) else (0, 0)


def _quiet(*args, **kwargs) -> None:
    """The log of ranks other than 0 (rank 0 speaks for the run)."""


def with_estimator_stats(reward_stats: dict, estimator) -> dict:
    """The step's reward metrics with the estimator's own counts (``last_stats``: ``judge_bon``'s
    judge calls and tokens) beside them; a count both report is added up."""
    out = dict(reward_stats)
    for key, value in (getattr(estimator, "last_stats", None) or {}).items():
        both_counts = isinstance(value, int) and isinstance(out.get(key), int)
        out[key] = out[key] + value if both_counts else out.get(key, value)
    return out
