"""The hard tier of the tiny arithmetic world: ``tiny:arith-hard``, where majority vote is wrong.

Its problems are the two-digit additions whose ones column carries (``47+38``: 7+8=15), and its
policy has a systematic slip: in most samples it drops that carry (``tens 4+3+0=07 so
\\boxed{75}``), on top of ``tiny:arith``'s random errors. A wrong answer is then the mode of the
policy's samples, so majority vote (TTRL) usually picks it and reinforces it. The anchor was
taught, as in ``tiny:arith``, to re-check every column of the candidates it reads, so it writes
the carry back (``4+3+1=08``) without seeing the question. This is the situation CaT is for: the
teacher is right where the crowd is wrong (the paper's "right when all wrong"), and the three
teachers (synthesis, majority, gold) separate in training.

Built by continuing the training of ``tiny:arith`` (same tokenizer) on the slipping teacher's
policy examples and on anchor examples whose candidates come from that teacher and whose target
is the reconciled, correct solution; ``tiny:arith``'s own policy data is not replayed, so on the
easy problems this model is not the easy world's policy. Measured on its held-out problems
(docs/results.md): single sample, majority of 8 and the anchor's synthesis.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from cat.worlds import arith


@dataclass(frozen=True)
class HardSpec:
    version: int = 1
    seed: int = 2
    slip: float = 0.6  # probability that a sample drops the ones column's carry
    steps: int = 360
    lr: float = 1e-3
    policy_batch: int = 64
    anchor_batch: int = 12
    threads: int = 2  # CPU threads of the build (see arith.TinySpec.threads)

    def templates(self) -> dict[str, str]:
        return arith.TinySpec().templates()


def carries(a: int, b: int) -> bool:
    return a % 10 + b % 10 >= 10


def hard_pairs() -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(train, held_out): ``tiny:arith``'s split, kept to the problems whose ones column carries."""
    train, held_out = arith.split_pairs(arith.TinySpec())
    return [p for p in train if carries(*p)], [p for p in held_out if carries(*p)]


def solution(a: int, b: int, rng: random.Random, spec: HardSpec) -> str:
    """A sample of the slipping teacher: ``tiny:arith``'s noisy solution, and with probability
    ``slip`` the carry into the tens column dropped (the tens sum and answer follow from that)."""
    arith_spec = arith.TinySpec()
    s = arith.steps(a, b, rng, arith_spec)
    if s.ones < 10 or rng.random() >= spec.slip:
        return s.text()
    (a1, a0), (b1, b0) = s.a_digits, s.b_digits
    tens = a1 + b1
    if rng.random() < arith_spec.field_error:
        tens = arith._perturb(tens, 1, 19, rng)
    answer = tens * 10 + s.ones % 10
    return f"ones {a0}+{b0}={s.ones:02d} tens {a1}+{b1}+0={tens:02d} so \\boxed{{{answer}}}"


def _policy_example(pair, rng, spec: HardSpec) -> tuple[str, str]:
    a, b = pair
    return arith._chat(f"{a}+{b}"), solution(a, b, rng, spec) + "<|end|>"


def _anchor_example(pair, rng, spec: HardSpec) -> tuple[str, str]:
    a, b = pair
    k = rng.choice([4, 6, 8, 8, 8, 8])
    candidates = [solution(a, b, rng, spec) for _ in range(k)]
    return arith._chat(arith.anchor_prompt(candidates, arith.TinySpec())), arith.anchor_target(a, b) + "<|end|>"


def finetune(base: Path, spec: HardSpec, out_dir: Path | None, stop_after: int | None = None) -> dict[str, str]:
    """Continue training the arithmetic world in ``base`` into the hard tier; save to ``out_dir``;
    return the trail (see :func:`cat.worlds.arith.pretrain`)."""
    train, held_out = hard_pairs()

    def next_examples(step: int, rng: random.Random) -> list[tuple[str, str]]:
        if step % 2 == 0:
            return [_anchor_example(rng.choice(train), rng, spec) for _ in range(spec.anchor_batch)]
        return [_policy_example(rng.choice(train), rng, spec) for _ in range(spec.policy_batch)]

    model, tokenizer, trail, finished = arith.continue_training(base, spec, next_examples, "hard-tier fine-tune",
                                                                stop_after)
    if not finished:
        return trail
    model.save_pretrained(out_dir / "model")
    tokenizer.save_pretrained(out_dir / "model")
    arith.write_splits(out_dir, train, held_out)
    (out_dir / "spec.json").write_text(json.dumps(asdict(spec), indent=2))
    arith.write_build_record(out_dir, "tiny-arith-hard", spec, spec.templates(), trail,
                             extra={"base": arith.final_weights(base)})
    return trail


def ensure_built(spec: HardSpec | None = None, *, force_build: bool = False) -> Path:
    """The folder of the hard tier: shipped, cached, or built on first use (a few CPU minutes)."""
    spec = spec or HardSpec()
    base = arith.ensure_built()
    return arith.locate("tiny-arith-hard", {"spec": asdict(spec), "base": arith.final_weights(base)}, spec.templates(),
                        lambda out: finetune(base, spec, out), force_build=force_build)
