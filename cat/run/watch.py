"""Never a silent no-op: the checks that stop a run which would train on nothing.

* ``preflight_report`` reads a probe of a few prompts, taken before the first step (rollouts,
  references and rewards, no update), and says what a user must see before spending compute:
  how many rollouts and references have an answer the run's answer chain reads, how many groups
  could be scored, and how many have rewards that differ (the only ones GRPO learns from). When
  no group can be scored it names the cause and the fix instead.
* ``UnscoredWatch`` follows the steps: ``run.max_unscored_steps`` steps in a row with more than
  ``run.max_unscored_share`` of their groups unscored stop the run, and a run none of whose steps
  scored a group (GRPO: had a group with differing rewards), or none of whose updates was taken
  (each skipped: a non-finite loss or gradient, an fp16 overflow), ends with an error, not exit 0.
  The steps before a resume count too.

Both raise :class:`~cat.errors.TrainingHalted` (the CLI prints it and exits 2).
"""

from __future__ import annotations

from cat.display import excerpt, percent
from cat.errors import TrainingHalted
from cat.rewards.criteria import RUBRIC_FIX
from cat.rewards.judge import JUDGE_FIX, SCORE_FIX
from cat.types import Group, Reference


def _judge_failures(metrics: dict) -> float:
    """Verdicts the judge failed to give in this step or probe (0 without a judge)."""
    return metrics.get("judge/failures", 0) or 0


def _rubric_failures(metrics: dict) -> int:
    """Groups whose self-proposed rubric did not parse in this step or probe (0 without rubrics)."""
    return int(metrics.get("rubric/failures", 0) or 0)


def _refused(share: float, config) -> str:
    """What ``answer.form`` refused, for a cause (empty when it refused nothing)."""
    return f" ({share:.0%} gave an answer that is not a {config.answer.form}: answer.form)" if share else ""


def preflight_report(metrics: dict, groups: list[Group], references: list[Reference], config) -> str:
    """One line for the log, or TrainingHalted with the cause and the fix when nothing is scored."""
    rollout_rate = metrics.get("answer/rollout_rate")
    reference_rate = metrics.get("answer/reference_rate")
    scored, unscored = metrics["groups/scored"], metrics["groups/unscored"]
    spread = scored * (1 - metrics["frac_reward_zero_std"]) if scored else 0
    clipped = metrics["completion/clipped_ratio"]
    rubrics = config.reward.name == "rubric"  # an open-ended task: no answer to read, a rubric and verdicts instead
    parts = [f"preflight on {len(groups)} prompt(s) x {config.generation.num_generations} rollouts:"]
    if rubrics:
        if "rubric/parse_rate" in metrics:  # self-proposed rubrics (a dataset's own need no parsing)
            parts.append(f"rubric proposals that parsed {percent(metrics['rubric/parse_rate'])},")
        if "judge/parse_rate" in metrics:
            parts.append(f"judge replies that were verdicts {percent(metrics['judge/parse_rate'])},")
        rollout_rate = reference_rate = None
    if rollout_rate is not None:
        parts.append(f"rollouts with an answer {rollout_rate:.0%},")
    refused = metrics.get("answer/rollout_refused", 0)
    if refused and not rubrics:
        parts.append(f"rollouts whose answer answer.form={config.answer.form} refused {refused:.0%},")
    if reference_rate is not None:
        parts.append(f"references with an answer {reference_rate:.0%},")
    parts.append(f"groups scored {scored}/{scored + unscored}, with differing rewards {spread:.0f},")
    parts.append(f"rollouts cut at max_new_tokens {clipped:.0%}")
    line = " ".join(parts)
    if scored:
        return line
    chain = f"answer.rules={list(config.answer.rules)}" + (
        f" with answer.form={config.answer.form}" if config.answer.form != "any" else "")
    unrated = int(metrics.get("judge/score_failures", 0) or 0)  # judge_bon: rollouts its judge did not rate
    causes = []
    if rollout_rate is not None and rollout_rate == 0:
        causes.append(f"no rollout has an answer that {chain} reads{_refused(refused, config)}")
    unchosen = [r for r in references if "choice_text" in r.meta and r.meta.get("index") is None]  # self_bon
    if unrated:
        causes.append(f"the judge gave no rating for {unrated} rollouts (judge/score_failures; the warning above "
                      f"quotes a reply), so best-of-N had no rollout to pick")
    elif unchosen:
        causes.append(f"the anchor named no rollout (a line 'BEST: k') for {len(unchosen)} of {len(references)} "
                      f"groups, so those groups have no reference")
    elif reference_rate is not None and reference_rate == 0:
        causes.append(f"no reference has an answer that {chain} reads"
                      f"{_refused(metrics.get('answer/reference_refused', 0), config)}")
    no_reference = int(metrics.get("rubric/no_reference", 0) or 0)
    if no_reference:
        causes.append(f"the anchor's synthesis was empty for {no_reference} of {scored + unscored} groups, so no "
                      f"rubric could be written (rubric/no_reference)")
    no_rubric = _rubric_failures(metrics)
    if no_rubric:
        causes.append(f"the anchor's rubric did not parse for {no_rubric} of {scored + unscored} groups "
                      f"(rubric/failures; the warning above quotes a reply)")
    failed = _judge_failures(metrics)
    if failed:
        causes.append(f"the judge gave no usable verdict for {failed:.0f} (rollout, criterion) pairs "
                      f"(judge/failures; the warning above quotes a reply it gave)")
    if not causes:
        causes.append("the reward scored no group (see its warnings above)")
    fixes = ([RUBRIC_FIX] if no_rubric else []) + ([JUDGE_FIX] if failed else []) + ([SCORE_FIX] if unrated else [])
    if no_reference:
        fixes.append(f"look at the anchor's syntheses in samples.jsonl (anchor.model, anchor.template "
                     f"{config.anchor.template}, anchor.max_new_tokens {config.anchor.max_new_tokens})")
    if clipped > 0.5 and not rubrics:
        fixes.append(f"raise generation.max_new_tokens ({config.generation.max_new_tokens}): "
                     f"{clipped:.0%} of rollouts were cut off before an answer")
    if unchosen:
        fixes.append(f"raise anchor.max_new_tokens ({config.anchor.max_new_tokens}) or change the anchors/self_bon "
                     f"template so that the anchor ends with 'BEST: k' (its reply is quoted below)")
    if reference_rate == 0 and config.estimator.name == "synthesis":
        fixes.append(f"raise anchor.max_new_tokens ({config.anchor.max_new_tokens}) or change anchor.template "
                     f"({config.anchor.template}) so the anchor ends with an answer the chain reads")
    only_unchosen = len(unchosen) == len(references) and rollout_rate != 0  # the rollouts' answers are read
    if not rubrics and not only_unchosen and (not (failed or unrated) or rollout_rate == 0
                                              or (reference_rate == 0 and not unrated)):
        fixes.append("ask for the answer format in data.prompt_template (for example '... put your final answer "
                     "within \\boxed{}'), or add a rule to answer.rules (answer_phrase, equals_end, last_number, "
                     "regex with answer.regex)")
    example = groups[0].completions[0].text if groups and groups[0].completions else ""
    reference = references[0].text if references else ""
    said = f"\nthe anchor's reply: {excerpt(unchosen[0].meta['choice_text'], 160)!r}" if unchosen else ""
    raise TrainingHalted(
        f"{line}\nnothing can be scored, so training would learn nothing: {'; '.join(causes)}.\n"
        f"fix: " + "; or ".join(fixes) + ".\n"
        f"a rollout: {excerpt(example, 160)!r}\na reference: {excerpt(reference, 160)!r}{said}\n"
        f"(run.preflight_prompts=0 skips this check)")


class UnscoredWatch:
    """Follows the step metrics of one process's steps (the same on every rank)."""

    def __init__(self, run_config):
        self.share, self.limit = run_config.max_unscored_share, run_config.max_unscored_steps
        self.in_a_row = 0
        self.steps = 0
        self.scored_steps = 0
        self.learning_steps = 0
        self.updated_steps = 0
        self.judge_failures = 0.0
        self.rubric_failures = 0
        self.yes_rates: set[float] = set()  # the judge's per-step share of "yes" verdicts, where it judged

    def count(self, rows: list[dict]) -> None:
        """Steps taken before a resume: they count towards ``finish``, not towards a stop."""
        for metrics in rows:
            self._tally(metrics)

    def _tally(self, metrics: dict) -> None:
        self.steps += 1
        self.scored_steps += metrics["groups/scored"] > 0
        self.learning_steps += metrics["groups/scored"] > 0 and metrics["frac_reward_zero_std"] < 1
        self.updated_steps += not metrics.get("skipped_update", 0)
        self.judge_failures += _judge_failures(metrics)
        self.rubric_failures += _rubric_failures(metrics)
        yes = metrics.get("judge/yes_rate")
        if isinstance(yes, (int, float)) and yes == yes:
            self.yes_rates.add(float(yes))

    def observe(self, metrics: dict) -> None:
        scored, unscored = metrics["groups/scored"], metrics["groups/unscored"]
        total = scored + unscored
        self._tally(metrics)
        self.in_a_row = self.in_a_row + 1 if total and unscored / total > self.share else 0
        if self.in_a_row >= self.limit:
            rate = metrics.get("answer/reference_rate")
            read = f"; references with an answer {rate:.0%}" if rate is not None else ""
            failed, no_rubric = _judge_failures(metrics), _rubric_failures(metrics)
            if no_rubric:
                read += f"; rubrics that did not parse {no_rubric}"
                fix = f"The anchor's rubrics did not parse (the warnings above quote its replies): {RUBRIC_FIX}"
            elif failed:
                read += f"; judge verdicts that failed {failed:.0f}"
                fix = f"The judge failed (the warnings above quote its replies): {JUDGE_FIX}"
            else:
                fix = ("Look at samples.jsonl for what the model and the anchor write, then fix the answer format "
                       "(data.prompt_template, answer.rules) or the anchor (anchor.max_new_tokens, anchor.template)")
            raise TrainingHalted(
                f"step {metrics['step']}: {self.in_a_row} steps in a row left more than {self.share:.0%} of their "
                f"groups unscored (this step {unscored} of {total}{read}): the run is training on almost "
                f"nothing. {fix}; run.max_unscored_share and run.max_unscored_steps set this limit")

    def finish(self, *, needs_spread: bool = True) -> None:
        """At the end of the run: TrainingHalted when no step scored a group, or (GRPO,
        ``needs_spread``) when no step had a group whose rewards differ, or when every step's update
        was skipped."""
        if self.steps and not self.scored_steps:
            if self.rubric_failures:
                cause = (f"The anchor's rubric did not parse for {self.rubric_failures} groups (rubric/failures; the "
                         f"warnings above quote its replies, rubrics.jsonl keeps each group's reason): {RUBRIC_FIX}")
            elif self.judge_failures:
                cause = (f"The judge gave no usable verdict for {self.judge_failures:.0f} (rollout, criterion) pairs "
                         f"(judge/failures; the warnings above quote its replies): {JUDGE_FIX}")
            else:
                cause = "See samples.jsonl for what the model and the teacher wrote"
            raise TrainingHalted(f"none of the {self.steps} step(s) scored a group: the run trained on nothing. {cause}")
        if self.steps and not self.updated_steps:
            raise TrainingHalted(
                f"none of the {self.steps} step(s) updated the policy: every update was skipped (a non-finite loss "
                f"or gradient, or fp16 gradients that overflowed; see the warnings above and skipped_update in "
                f"metrics.jsonl). Lower optim.lr, use model.dtype bfloat16 or float32, or run more steps")
        if needs_spread and self.steps and not self.learning_steps:
            if self.yes_rates and self.yes_rates <= {0.0, 1.0} and len(self.yes_rates) == 1:
                word = "no" if self.yes_rates == {0.0} else "yes"
                raise TrainingHalted(
                    f"none of the {self.steps} step(s) had a group whose rewards differ: the judge answered {word} to "
                    f"every criterion of every rollout (judge/yes_rate {self.yes_rates.pop():g}), so every rollout "
                    f"earned the same reward and the policy learned nothing. A judge that cannot tell responses "
                    f"apart: use a stronger judge.model, or a judge.template it follows (rubrics.jsonl keeps its "
                    f"verdicts)")
            raise TrainingHalted(
                f"none of the {self.steps} step(s) had a group whose rewards differ, so every advantage was 0 "
                f"and the policy learned nothing (only a KL term, if any, moved it). Rewards that never differ "
                f"mean the reference is unreadable or the task is all solved or all failed: see samples.jsonl")
