"""Test-time CaT: answer each prompt with an estimator's reference instead of a single sample.

No training: pi_t = pi_0. For every evaluation prompt the policy samples G rollouts once; every
estimator named (single, majority_vote, self_bon, judge_bon, min_perplexity,
mutual_predictability, synthesis, or a plug-in) turns the *same* rollouts into a reference, and the reference's answer
is graded against gold. With several G values the first g rollouts of each group are used, so
the comparison across G is paired too. The rollouts depend only on ``run.seed``: two invocations
that differ in the anchor alone (``anchor.greedy=false``, another template) read the same rollouts.

Per estimator and G the result holds the accuracy, its 95% interval over prompts
(``interval``), the paired difference from one sample and from the vote with its interval and
verdict (``paired``), and, when ``majority_vote`` is among the estimators, the paper's
comparison with the vote (``versus_majority``): how often the two answers differ, and of those
prompts how often each one is right. ``oracle_pass@G`` is pass@G: some rollout of the first G is
right (the ceiling of any selection). The anchor's estimators run once per decoding
(``anchor_decodings``) and per question setting (``anchor_questions``: without the question, as
the paper's default, and with it through ``question_template``). ``examples`` keep, per prompt, every rollout's text and answer and every
reference's text and answer, to read what the model and the anchor actually wrote.

``no_answer`` counts, per estimator and G, the prompts whose reference has no answer (an anchor
that wrote no parsable ``BEST: k``, a judge that rated nothing): each is scored wrong, as the
accuracy has always counted it, and the table names the count so that such an arm does not read
as a bad estimator.

``settings`` records what made the rollouts and grades them (``ROLLOUT_SETTINGS``,
``GRADING_SETTINGS``): ``--extend`` refuses a saved result whose record differs from its config,
and one that records nothing (saved before the record existed) unless told to trust it.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from functools import partial
from pathlib import Path

import yaml

from cat.config import AnswerConfig
from cat.display import number
from cat.errors import ConfigError
from cat.registry import import_plugin
from cat.rewards.answers import AnswerChain
from cat.rewards.math import answers_match
from cat.tasks.data import load_split
from cat.tasks.evaluate import grade
from cat.tasks.settings import TaskSettings
from cat.teacher.anchor import synthesis_template
from cat.teacher.estimators import build_estimator, majority_answer
from cat.teacher.firewall import blind, label_fields
from cat.tools.stats import mean_ci, paired
from cat.tools.testtime_policy import load_engine, load_prompts, pi0_anchor, sample_rollouts
from cat.types import Group

ANCHOR_DECODINGS = ("greedy", "sampled")
ANCHOR_QUESTIONS = ("without", "with")
MATH_ESTIMATORS = ("single", "majority_vote", "synthesis")
"""The estimators compared when none are named."""


def run_test_time(config, estimator_names: list[str], group_sizes: list[int] | None = None,
                  anchor_decodings: list[str] | None = None, anchor_questions: list[str] | None = None,
                  question_template: str = "math_synthesis_with_question", verdicts: Path | None = None,
                  extend: dict | None = None, save=None, allow_unrecorded: bool = False) -> dict:
    """On HealthBench data (``data.format: healthbench``) the rubric protocol of
    ``cat.tools.testtime_rubric`` runs instead, with ``estimator_names`` its arms (None: all of
    them) and ``verdicts`` its judges' cache file. ``estimator_names`` None: ``MATH_ESTIMATORS``.

    ``anchor_decodings``: run the estimators that write with the anchor once per decoding named
    (``greedy``, ``sampled`` at ``anchor.temperature``), on the same rollouts, keyed
    ``NAME[DECODING]@G``; ``anchor_questions``: once without the question (``anchor.template``)
    and/or once with it (``question_template``), keyed ``NAME[...,question]@G``; None: as
    ``anchor.greedy`` and ``anchor.include_question`` say, keyed ``NAME@G``.

    ``extend``: a saved result of this config (``--output``) whose rollouts are read again instead
    of sampled: the estimators named add their references to it, at its group sizes, and every
    statistic is recomputed as ``regrade`` does. Sampling is most of a run's cost, so a new arm
    costs only its own calls. Its ``settings`` must be this config's (``check_settings``); one
    that records none is refused unless ``allow_unrecorded``.

    ``save``: called with the rollouts as a result without arms (``partial``) as soon as they are
    sampled, so that a run stopped later keeps them: ``extend`` continues from that file."""
    e, gen = config.eval, config.generation
    for d in anchor_decodings or ():
        if d not in ANCHOR_DECODINGS:
            raise ConfigError(f"anchor decoding {d!r}: choose from {', '.join(ANCHOR_DECODINGS)}")
    for q in anchor_questions or ():
        if q not in ANCHOR_QUESTIONS:
            raise ConfigError(f"anchor question setting {q!r}: choose from {', '.join(ANCHOR_QUESTIONS)}")
    if "without" in (anchor_questions or ()) and config.anchor.include_question:
        raise ConfigError("--anchor-question without: anchor.include_question is true, so anchor.template shows the "
                          "question; set anchor.include_question=false and a template without {{question}} "
                          "(the question-free run), and name the other with --question-template")
    anchor_decodings = list(dict.fromkeys(anchor_decodings)) if anchor_decodings else None
    anchor_questions = list(dict.fromkeys(anchor_questions)) if anchor_questions else None
    if "with" in (anchor_questions or ()):
        synthesis_template(question_template, with_question=True)  # a bad template fails before any model loads
    if e.path is None:
        raise ConfigError("eval.path is not set: test-time CaT needs prompts with gold answers to grade")
    for plugin in config.plugins:
        import_plugin(plugin)
    sizes = sorted(set(group_sizes or [gen.num_generations]))
    if sizes[-1] > gen.num_generations or sizes[0] < 1:
        raise ConfigError(f"group sizes {sizes} must lie in 1..generation.num_generations={gen.num_generations}")
    if config.data.format == "healthbench":  # no final answer to grade: arms graded by the physician rubric
        if anchor_decodings or anchor_questions:
            raise ConfigError("--anchor-decoding and --anchor-question compare syntheses by their final answers; "
                              "on HealthBench data set anchor.greedy / anchor.include_question and run again instead")
        from cat.tools.testtime_rubric import ARMS, run_rubric_test_time

        return run_rubric_test_time(config, estimator_names or list(ARMS), sizes, verdicts=verdicts)
    estimators = {name: build_estimator(config, name) for name in estimator_names or MATH_ESTIMATORS}
    if extend is not None:
        sizes = _extended_sizes(extend, group_sizes)
        check_settings(extend, config, allow_unrecorded=allow_unrecorded)
        token_level = [n for n in estimators if n in TOKEN_ESTIMATORS]
        if token_level:
            raise ConfigError(f"--extend: {', '.join(token_level)} score the rollouts' sampled token ids, which a saved "
                              f"result does not keep: run them with the others in one cat-rl testtime")
    prompts, ids, skipped, tokenizer = load_prompts(config)
    anchor = None
    needs_anchor = any(x.needs_anchor for x in estimators.values())
    if extend is None or needs_anchor:  # arms added to saved rollouts by a judge alone need no policy engine
        model, generator = load_engine(config, tokenizer)
    if needs_anchor:
        anchor = pi0_anchor(config, tokenizer, model, generator)
    if extend is None:
        _say(f"sampling {gen.num_generations} rollouts for each of {len(prompts)} prompts")
        start = time.perf_counter()
        completions = sample_rollouts(config, generator, ids)
        _say(f"rollouts sampled in {time.perf_counter() - start:.0f} s")
    else:
        completions = saved_rollouts(extend, prompts, tokenizer, sizes[-1])
    answer_of = AnswerChain.from_config(config.answer)
    examples = [{"index": p.index, "question": p.text, "gold": p.gold, "references": {},
                 "rollouts": [{"text": c.text, "answer": answer_of(c.text), "finish_reason": c.finish_reason}
                              for c in cs]}
                for p, cs in zip(prompts, completions, strict=True)]
    if save is not None and extend is None:
        save({"n": len(prompts), "skipped_long": skipped, "settings": settings_record(config),
              "group_sizes": sizes, "accuracy": {},
              "partial": "rollouts only: add the estimators with cat-rl testtime --extend THIS_FILE --estimators ...",
              "examples": examples})
    variants = _variants(estimators, anchor, anchor_decodings, anchor_questions, question_template)
    if extend is not None:
        present = sorted({name for name, _, _ in variants} & {k.rpartition("@")[0] for k in extend["accuracy"]})
        if present:
            raise ConfigError(f"--extend: {', '.join(present)} already in the saved result; name only new estimators "
                              f"(or another --anchor-question / --anchor-decoding)")
    seconds, judged = {}, {}
    for g in sizes:
        groups = [Group(prompt=p, prompt_ids=tuple(i), completions=tuple(cs[:g]))
                  for p, i, cs in zip(prompts, ids, completions, strict=True)]
        blind_groups = blind(groups, label_fields(config.data))  # the estimators read no label; grading below does
        for name, estimator, view in variants:
            start = time.perf_counter()
            refs = estimator(groups if name == "gold" else blind_groups, view)
            seconds[f"{name}@{g}"] = time.perf_counter() - start
            _say(f"{name}@{g}: answered in {seconds[f'{name}@{g}']:.0f} s")
            if getattr(estimator, "last_stats", None):  # judge_bon: its judge's calls, failures and tokens
                judged[f"{name}@{g}"] = estimator.last_stats
            for ex, r in zip(examples, refs, strict=True):
                ex["references"][f"{name}@{g}"] = {"answer": r.answer, "text": r.text, **{
                    k: r.meta[k] for k in ("order_answers", "order_texts", "scores") if k in r.meta}}
    if extend is not None:
        return _merged(config, extend, examples, [name for name, _, _ in variants], seconds, judged)
    results = score(examples, prompts, sizes, [name for name, _, _ in variants], config)
    return {"n": len(prompts), "skipped_long": skipped, "settings": settings_record(config), **results,
            "seconds": seconds,
            **({"judge": judged} if judged else {}), "examples": examples}


logger = logging.getLogger(__name__)


def _say(line: str) -> None:
    """A progress line: a long run shows where it is."""
    logger.info(f"testtime: {line}")


TOKEN_ESTIMATORS = ("min_perplexity", "mutual_predictability")
"""Estimators that score the rollouts' sampled token ids, which a saved result does not keep."""


def _extended_sizes(saved: dict, group_sizes: list[int] | None) -> list[int]:
    if not isinstance(saved, dict) or not {"accuracy", "group_sizes", "examples"} <= saved.keys() or not saved["examples"]:
        raise ConfigError("--extend: not a saved test-time result (it needs accuracy, group_sizes and examples: "
                          "write it with cat-rl testtime --output)")
    if saved.get("task") == "rubric":
        raise ConfigError("--extend adds arms to a result graded by final answers; a HealthBench result is graded by "
                          "a judge: run it again with --verdicts FILE, which reuses the judge calls already made")
    sizes = sorted(saved["group_sizes"])
    if group_sizes and sorted(set(group_sizes)) != sizes:
        raise ConfigError(f"--group-sizes {sorted(set(group_sizes))}: an extended result keeps its own group sizes "
                          f"{sizes}; leave --group-sizes out")
    return sizes


ROLLOUT_SETTINGS = ("model.name_or_path", "model.dtype", "model.system_prompt", "model.chat_template",
                    "model.chat_template_kwargs", "generation.backend", "generation.num_generations",
                    "generation.max_new_tokens", "generation.temperature", "generation.top_p", "generation.top_k",
                    "generation.stop", "run.seed", "data.format", "data.prompt_field", "data.prompt_template",
                    "data.max_prompt_tokens", "eval.path", "eval.name", "eval.split", "eval.limit", "eval.seed",
                    "eval.task_config")
"""The settings that make a result's prompts and rollouts: the policy and how its prompts are
written, how it samples and from which seed, and which evaluation rows. Not the device, the
batch size or the engine's memory (the rollouts are drawn per row from ``run.seed``), nor what an
added arm may change: ``anchor``, ``estimator``, ``judge``, ``data.label_fields``, ``plugins``. A
reasoning-gym task's evaluation rows also depend on the training rows' settings; those are caught
by comparing the prompts themselves (``saved_rollouts``)."""
GRADING_SETTINGS = ("data.answer_field", "data.answer_format", *(f"answer.{k}" for k in AnswerConfig.model_fields),
                    "reward.mode", "reward.timeout_s")
"""The settings that grade a result: the gold answer, the chain that reads every answer, the
comparison. ``regrade`` changes them (and records the new ones); ``--extend`` keeps them."""


def settings_record(config) -> dict:
    """``config``'s values of ``ROLLOUT_SETTINGS`` and ``GRADING_SETTINGS``, keyed by their dotted
    names, as JSON writes them: what a saved result records as ``settings``."""
    tree = config.model_dump(mode="json")
    out = {}
    for key in ROLLOUT_SETTINGS + GRADING_SETTINGS:
        section, _, field = key.partition(".")
        out[key] = tree[section][field]
    return out


def check_settings(saved: dict, config, *, allow_unrecorded: bool = False) -> None:
    """ConfigError unless the ``settings`` that ``saved`` records equal ``config``'s, naming each
    key that differs with both values and how to go on. A key the record lacks (added to the
    record after the result was saved) is not compared. A result that records no settings (saved
    before results recorded them) is refused too, unless ``allow_unrecorded``: whether its
    rollouts are this config's cannot be told, and a mixed table looks like any other."""
    recorded = saved.get("settings")
    if recorded is None:
        if not allow_unrecorded:
            raise ConfigError("--extend: the saved result records no settings (it was saved before results recorded "
                              "the model, sampling and grading that made them), so whether its rollouts are this "
                              "config's cannot be checked: sample again with --output, or, if you know this config "
                              "made it, pass --allow-unrecorded")
        logger.warning("testtime: --extend: the saved result records no settings; --allow-unrecorded takes its "
                       "rollouts as this config's, unchecked")
        return
    now = settings_record(config)
    differ = [k for k in now if k in recorded and recorded[k] != now[k]]
    if not differ:
        return
    lines = [f"  {k}: saved {json.dumps(recorded[k])}, now {json.dumps(now[k])}" for k in differ]
    rollouts = [k for k in differ if k in ROLLOUT_SETTINGS]
    if rollouts:
        back = " ".join(f"{k}={_override(recorded[k])}" for k in rollouts)
        lines.append(f"To read its rollouts, give the saved values back ({back}); to compare these settings, sample "
                     f"again into another --output.")
    if len(rollouts) < len(differ):
        lines.append("To grade with other answer settings, --regrade the saved result with them first (it re-reads "
                     "every saved answer and records them), then --extend that.")
    raise ConfigError("--extend: the saved result was made with other settings than this config's, so one table "
                      "would mix two runs:\n" + "\n".join(lines))


def _override(value) -> str:
    """``value`` as the right side of a ``section.key=value`` override."""
    if isinstance(value, str):
        try:
            if yaml.safe_load(value) == value:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value)


def saved_rollouts(saved: dict, prompts, tokenizer, g: int) -> list:
    """A saved result's first ``g`` rollouts per prompt as completions, [prompts][g], after checking
    that its prompts are these, in this order. Their token ids are the text encoded again (the
    sampled ids are not saved) and their sampling log-probs unknown (NaN)."""
    from cat.types import Completion

    examples = saved["examples"]
    if [ex["index"] for ex in examples] != [p.index for p in prompts] or \
            any(ex["question"] != p.text for ex, p in zip(examples, prompts, strict=True)):
        raise ConfigError("--extend: the saved result's prompts are not this config's evaluation prompts (eval.path, "
                          "eval.seed, eval.limit and the task's settings must be those that produced it)")
    out = []
    for ex in examples:
        if len(ex["rollouts"]) < g:
            raise ConfigError(f"--extend: prompt {ex['index']} has {len(ex['rollouts'])} saved rollouts, fewer than "
                              f"its group size {g}")
        group = []
        for r in ex["rollouts"][:g]:
            ids = tuple(tokenizer(r["text"], add_special_tokens=False)["input_ids"])
            group.append(Completion(text=r["text"], token_ids=ids, logprobs=(float("nan"),) * len(ids),
                                    finish_reason=r.get("finish_reason", "stop")))
        out.append(group)
    return out


def _merged(config, saved: dict, examples: list[dict], names: list[str], seconds: dict, judged: dict) -> dict:
    """``saved`` with the new references of ``examples`` added, every statistic recomputed."""
    merged = copy.deepcopy(saved)
    old = list(dict.fromkeys(k.rpartition("@")[0] for k in saved["accuracy"] if not k.startswith("oracle_pass@")))
    for ex, new in zip(merged["examples"], examples, strict=True):
        ex["references"].update(new["references"])
    merged["seconds"] = {**saved.get("seconds", {}), **seconds}
    if judged or saved.get("judge"):
        merged["judge"] = {**saved.get("judge", {}), **judged}
    result = regrade(config, merged, names=old + [n for n in names if n not in old])
    return {**result, **({"judge": merged["judge"]} if "judge" in merged else {})}


def score(examples: list[dict], prompts, sizes: list[int], names: list[str], config) -> dict:
    """Every statistic of a test-time result, from its examples (each rollout's and reference's
    answer, per key ``NAME@G``), graded against the prompts' gold answers; marks each reference
    ``correct``. ``no_answer``: per key, the prompts whose reference has no answer, each scored
    wrong."""
    grading = {"mode": config.reward.mode, "timeout_s": config.reward.timeout_s}
    right = [[grade(r["answer"], p, **grading) for r in ex["rollouts"]] for p, ex in zip(prompts, examples, strict=True)]
    single = [sum(r) / len(r) for r in right]
    results: dict = {"group_sizes": sizes, "single_sample_accuracy": sum(single) / len(single),
                     "single_sample_interval": mean_ci(single).half_width, "accuracy": {}, "interval": {},
                     "no_answer": {}, "versus_majority": {}, "paired": {}, "copies": {}}
    for g in sizes:
        one = [sum(r[:g]) / g for r in right]  # the expected accuracy of one of the first g samples
        oracle = [float(any(r[:g])) for r in right]
        results["accuracy"][f"oracle_pass@{g}"] = sum(oracle) / len(oracle)
        results["interval"][f"oracle_pass@{g}"] = mean_ci(oracle).half_width
        per_prompt = {}
        for name in names:
            key = f"{name}@{g}"
            hits = [float(grade(ex["references"][key]["answer"], p, **grading)) for ex, p in zip(examples, prompts, strict=True)]
            for ex, hit in zip(examples, hits, strict=True):
                ex["references"][key]["correct"] = bool(hit)
            results["accuracy"][key] = sum(hits) / len(hits)
            results["interval"][key] = mean_ci(hits).half_width
            results["no_answer"][key] = sum(ex["references"][key]["answer"] is None for ex in examples)
            per_prompt[name] = hits
            if name not in ("single", "majority_vote"):
                results["copies"][key] = copies(examples, key, g, config)
        for name, hits in per_prompt.items():
            results["paired"][f"{name}@{g}"] = {"one_sample": paired(hits, one)}
            if "majority_vote" in per_prompt and name != "majority_vote":
                results["paired"][f"{name}@{g}"]["majority_vote"] = paired(hits, per_prompt["majority_vote"])
                results["versus_majority"][f"{name}@{g}"] = versus_majority(examples, f"{name}@{g}", f"majority_vote@{g}")
    return results


def copies(examples: list[dict], key: str, g: int, config) -> list[float]:
    """For each position i of the first g rollouts, the share of prompts whose reference answer
    equals rollout i's (the run's answer equivalence): a teacher that copies the last rollout it
    was shown scores near 1 there."""
    def same(a, b) -> bool:
        return a is not None and b is not None and answers_match(a, b, mode=config.reward.mode,
                                                                 timeout_s=config.reward.timeout_s)

    return [sum(same(ex["references"][key]["answer"], ex["rollouts"][i]["answer"]) for ex in examples) / len(examples)
            for i in range(g)]


def regrade(config, saved: dict, names: list[str] | None = None) -> dict:
    """A saved result read again with ``config``'s answer chain and grading, no model run: every
    rollout's and reference's saved text is re-read, the vote taken again, every statistic
    recomputed (after a fix to ``answer.rules``, say). The saved ``settings`` are kept with
    ``config``'s ``GRADING_SETTINGS`` in place of the saved ones (a result that recorded none
    records none)."""
    recorded = saved.get("settings")
    if recorded is not None:
        grading = {k: v for k, v in settings_record(config).items() if k in GRADING_SETTINGS}
        recorded = {**recorded, **grading}
    prompts = {p.index: p for p in load_split(TaskSettings.from_config(config), "eval")}
    answer_of = AnswerChain.from_config(config.answer)
    examples = copy.deepcopy(saved.get("examples") or [])
    if not examples:
        raise ConfigError("the saved result holds no examples to regrade (write it with --output)")
    for ex in examples:
        p = prompts.get(ex["index"])
        if p is None or p.text != ex["question"]:
            raise ConfigError(f"the saved result's prompt {ex['index']} is not this config's evaluation prompt "
                              f"{ex['index']}: regrade with the config that produced it")
        for r in ex["rollouts"]:
            r["answer"] = answer_of(r["text"])
        vote = partial(majority_answer, mode=config.reward.mode, timeout_s=config.reward.timeout_s)
        for key, ref in ex["references"].items():
            name, _, g = key.rpartition("@")
            if name == "majority_vote":
                ref["answer"] = vote([r["answer"] for r in ex["rollouts"][: int(g)]])[0]
            elif "order_texts" in ref:  # synthesized over several orders: each read again, the vote taken again
                ref["order_answers"] = [answer_of(t) for t in ref["order_texts"]]
                ref["answer"], k, _ = vote(ref["order_answers"])
                ref["text"] = ref["order_texts"][max(k, 0)]
            else:
                ref.pop("order_answers", None)  # saved without its syntheses: not recomputable, not kept stale
                ref["answer"] = answer_of(ref["text"])
    if names is None:
        names = list(dict.fromkeys(k.rpartition("@")[0] for k in saved["accuracy"] if not k.startswith("oracle_pass@")))
    results = score(examples, [prompts[ex["index"]] for ex in examples], saved["group_sizes"], names, config)
    kept = {k: saved[k] for k in ("n", "skipped_long") if k in saved}
    return {**kept, **({"settings": recorded} if recorded is not None else {}), **results,
            **({"seconds": saved["seconds"]} if "seconds" in saved else {}), "examples": examples}


def _variants(estimators: dict, anchor, decodings: list[str] | None, questions: list[str] | None = None,
              question_template: str = "math_synthesis_with_question"):
    """(key name, estimator, anchor) per run: one per estimator, or, for an estimator that writes
    with the anchor (not those that only score with it: ``decodes_with_anchor = False``), one per
    anchor decoding and question setting named."""
    out = []
    for name, estimator in estimators.items():
        if anchor is None or not (decodings or questions) or \
                not getattr(estimator, "decodes_with_anchor", estimator.needs_anchor):
            out.append((name, estimator, anchor))
            continue
        for d in decodings or [None]:
            for q in questions or [None]:
                view = anchor if d is None else anchor.with_params(greedy=d == "greedy")
                view = view.with_question(question_template) if q == "with" else view
                tags = [t for t in (d, "question" if q == "with" else None) if t]
                out.append((f"{name}[{','.join(tags)}]" if tags else name, estimator, view))
    return out


def versus_majority(examples: list[dict], key: str, vote_key: str) -> dict:
    """How often ``key``'s answer differs from the majority vote's on the same rollouts, and on
    those prompts how often each is right (the paper's analysis of synthesis against the vote).
    Two answers differ unless both are right or both read the same."""
    def differ(a: dict, b: dict) -> bool:
        return not (a["correct"] and b["correct"]) and (a["correct"] != b["correct"] or a["answer"] != b["answer"])

    differing = [ex for ex in examples if differ(ex["references"][key], ex["references"][vote_key])]
    n = len(differing)
    return {
        "disagree_rate": n / len(examples) if examples else float("nan"),
        "disagreements": n,
        "right_when_disagree": sum(ex["references"][key]["correct"] for ex in differing) / n if n else float("nan"),
        "majority_right_when_disagree": sum(ex["references"][vote_key]["correct"] for ex in differing) / n if n else float("nan"),
    }


def table(result: dict) -> str:
    """The result as a text table: accuracy with its interval per estimator and G, a line naming
    the references with no answer (when any), and the comparison with the majority vote; a rubric
    result's own table
    (``cat.tools.testtime_rubric``)."""
    if result.get("task") == "rubric":
        from cat.tools.testtime_rubric import table as rubric_table

        return rubric_table(result)
    sizes = result["group_sizes"]
    names = list(dict.fromkeys(k.rpartition("@")[0] for k in result["accuracy"]))
    skipped = f" ({result['skipped_long']} longer ones skipped)" if result.get("skipped_long") else ""
    sampled = len(result["examples"][0]["rollouts"]) if result.get("examples") else None
    over = f" (the mean over all {sampled} rollouts of a prompt)" if sampled else ""
    lines = [f"{result['n']} prompts{skipped}; one sample: {number(result['single_sample_accuracy'])} "
             f"(+/- {number(result.get('single_sample_interval'))}){over}", ""]
    lines.append("| estimator | " + " | ".join(f"G = {g}" for g in sizes) + " |")
    lines.append("|---|" + "---|" * len(sizes))
    for name in names:
        cells = []
        for g in sizes:
            key = f"{name}@{g}"
            cells.append(f"{number(result['accuracy'][key])} +/- {number(result.get('interval', {}).get(key))}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    missing = result.get("no_answer") or {}
    unanswered = [f"{name}@{g} {missing[f'{name}@{g}']} of {result['n']}" for name in names for g in sizes
                  if missing.get(f"{name}@{g}")]
    if unanswered:
        lines += ["", "references with no answer, scored wrong: " + ", ".join(unanswered)]
    pairs = result.get("paired") or {}
    if pairs:
        lines += ["", "| paired, per prompt | against one sample (of the G it read) | against the vote |", "|---|---|---|"]
        for key, against in pairs.items():
            cells = [f"{number(v['difference'], signed=True)} +/- {number(v['interval'])} ({v['verdict']})" if v else ""
                     for v in (against.get("one_sample"), against.get("majority_vote"))]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    copied = result.get("copies") or {}
    if copied:
        lines += ["", "| reference answer equals rollout i's | " + " | ".join(f"i = {i + 1}" for i in range(max(sizes)))
                  + " |", "|---|" + "---|" * max(sizes)]
        for key, shares in copied.items():
            cells = [f"{x:.2f}" for x in shares] + [""] * (max(sizes) - len(shares))
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    versus = result.get("versus_majority") or {}
    if versus:
        lines += ["", "| against the majority vote | differs | right when they differ | vote right then |", "|---|---|---|---|"]
        for key, v in versus.items():
            right = "n/a" if v["disagreements"] == 0 else f"{v['right_when_disagree']:.2f}"
            vote = "n/a" if v["disagreements"] == 0 else f"{v['majority_right_when_disagree']:.2f}"
            lines.append(f"| {key} | {v['disagree_rate']:.3f} ({v['disagreements']}) | {right} | {vote} |")
    return "\n".join(lines)
