"""The tiny rubric world: ``tiny:arith`` taught two more jobs so the rubric path runs offline.

Continued pretraining of the tiny arithmetic model (same tokenizer) on:
* **rubric proposal**: ``rubrics/rubric_proposal.txt`` filled with a reference solution (never
  the question); the target is a ``<rubric>`` of five criteria describing that reference (each
  column step, the carry, the final answer, the box);
* **judging**: ``rubrics/judge_criterion.txt`` filled with a response and one criterion; the target
  quotes the response's step of that kind, then ``<verdict>yes</verdict>`` when it says exactly
  what the criterion says, else ``<verdict>no</verdict>``.
  Responses come from the noisy teacher, sometimes cut short, so both answers are common.

The policy and anchor data of ``tiny:arith`` are replayed so neither skill is forgotten.
``tiny:rubric`` names the result; tiny configs use it as policy, anchor and (as a separate,
frozen in-process copy) judge. A real run uses an independent judge model.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from cat.templates import load_template
from cat.worlds import arith

_FIELDS = re.compile(r"ones (\d)\+(\d)=(\d\d)|tens (\d)\+(\d)\+(\d)=(\d\d)|\\boxed\{(\d+)\}")
_QUOTE = {"ones": re.compile(r"ones \d\+\d=\d\d"), "tens": re.compile(r"tens \d\+\d\+\d=\d\d"),
          "carry": re.compile(r"tens \d\+\d\+\d=\d\d"), "answer": re.compile(r"\\boxed\{\d+\}"),
          "box": re.compile(r"\\boxed\{\d+\}")}


@dataclass(frozen=True)
class RubricSpec:
    version: int = 2
    seed: int = 1
    steps: int = 720
    lr: float = 1e-3
    batch: int = 48
    threads: int = 2  # CPU threads of the build (see arith.TinySpec.threads)

    def templates(self) -> dict[str, str]:
        return arith._template_hashes("rubrics", ["rubric_proposal", "judge_criterion"])


def criteria_of(text: str) -> dict[str, str]:
    """The criteria a solution text supports, by kind (a kind is absent when its step is)."""
    out: dict[str, str] = {}
    for m in _FIELDS.finditer(text):
        if m.group(1) is not None:
            out.setdefault("ones", f"The ones column is {m.group(1)}+{m.group(2)}={m.group(3)}.")
        elif m.group(4) is not None:
            out.setdefault("tens", f"The tens column is {m.group(4)}+{m.group(5)}+{m.group(6)}={m.group(7)}.")
            out.setdefault("carry", f"The response carries {m.group(6)} into the tens column.")
        else:
            out["answer"] = f"The final answer is {m.group(8)}."
            out["box"] = "The final answer is written in a box."
    return out


KINDS = ("ones", "tens", "carry", "answer", "box")


def rubric_text(reference: str) -> str:
    found = criteria_of(reference)
    return "<rubric>\n" + "".join(f"<criterion>{found[k]}</criterion>\n" for k in KINDS if k in found) + "</rubric>"


def _reference(pair, rng, spec) -> str:
    a, b = pair
    body = arith.solution(a, b, rng if rng.random() < 0.5 else None, spec)
    return f"{arith.SUMMARY}\nUNIFIED RESPONSE: {body}" if rng.random() < 0.7 else body


def _rubric_example(pair, rng, spec) -> tuple[str, str]:
    template = load_template("rubric_proposal", kind="rubrics", required={"reference"}, allowed={"min_criteria"})
    reference = _reference(pair, rng, spec)
    return arith._chat(template.render(reference=reference, min_criteria="5")), rubric_text(reference) + "<|end|>"


def _judge_example(pair, rng, spec) -> tuple[str, str]:
    template = load_template("judge_criterion", kind="rubrics", required={"response", "criterion"}, allowed=set())
    a, b = pair
    response = arith.solution(a, b, rng, spec)
    if rng.random() < 0.15:
        response = response[: rng.randrange(len(response))]
    source = criteria_of(arith.solution(a, b, rng if rng.random() < 0.5 else None, spec))
    kind = rng.choice(KINDS)
    criterion = source[kind]
    verdict = "yes" if criteria_of(response).get(kind) == criterion else "no"
    quote = _QUOTE[kind].search(response)
    evidence = f"The response has {quote.group(0)}." if quote else "The response does not have this step."
    target = f"{evidence} <verdict>{verdict}</verdict>"
    return arith._chat(template.render(response=response, criterion=criterion)), target + "<|end|>"


def finetune(base: Path, spec: RubricSpec, out_dir: Path | None, stop_after: int | None = None) -> dict[str, str]:
    """Continue training the arithmetic world in ``base``; save to ``out_dir``; return the trail
    (see :func:`cat.worlds.arith.pretrain`; ``stop_after`` stops early and saves nothing)."""
    arith_spec = arith.TinySpec()
    train_pairs, _ = arith.split_pairs(arith_spec)
    makers = [(_rubric_example, 12), (_judge_example, spec.batch), (_rubric_example, 12), (_judge_example, spec.batch),
              (arith._anchor_example, 12), (arith._policy_example, 64)]

    def next_examples(step: int, rng: random.Random) -> list[tuple[str, str]]:
        make, size = makers[step % len(makers)]
        return [make(rng.choice(train_pairs), rng, arith_spec) for _ in range(size)]

    model, tokenizer, trail, finished = arith.continue_training(base, spec, next_examples, "rubric fine-tune", stop_after)
    if not finished:
        return trail
    model.save_pretrained(out_dir / "model")
    tokenizer.save_pretrained(out_dir / "model")
    for name in ("train.jsonl", "test.jsonl"):
        shutil.copy(base / name, out_dir / name)
    (out_dir / "spec.json").write_text(json.dumps(asdict(spec), indent=2))
    arith.write_build_record(out_dir, "tiny-rubric", spec, spec.templates(), trail, extra={"base": arith.final_weights(base)})
    return trail


def ensure_built(spec: RubricSpec | None = None, *, force_build: bool = False) -> Path:
    """The folder of the tiny rubric world: shipped, cached, or built on first use."""
    spec = spec or RubricSpec()
    base = arith.ensure_built()
    return arith.locate("tiny-rubric", {"spec": asdict(spec), "base": arith.final_weights(base)}, spec.templates(),
                        lambda out: finetune(base, spec, out), force_build=force_build)
