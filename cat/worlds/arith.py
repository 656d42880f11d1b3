"""The offline tiny world: two-digit addition, a tokenizer and a small causal LM built from scratch.

It exists so that the whole pipeline (generation, anchor, rewards, GRPO, checkpoints) runs on a
laptop CPU with no network, through exactly the code path a hub model takes: the model and
tokenizer are saved with ``save_pretrained`` and loaded back with ``AutoModelForCausalLM`` /
``AutoTokenizer``.

The task. A prompt is ``47+38``. A solution restates each column and its sum, zero-padded, then
the answer: ``ones 7+8=15 tens 4+3+1=08 so \\boxed{85}``.

How the base model gets partial competence fast. Instead of stopping pretraining early (slow and
fragile), the policy half of the corpus is written by a noisy teacher: each column sum is wrong
with probability ``field_error`` (mostly off by one, sometimes anything), operand digits and the
answer are occasionally miscopied, and an error carries into the answer as it would in a real
derivation. The model learns that distribution: its *mode* is usually right, its *samples* often
are not (the shipped build, on 128 held-out prompts: pass@1 over 4 samples 40%, majority of 8
80%, greedy 100%, the anchor's synthesis of 8 rollouts 92%).

The anchor half of the corpus teaches the anchor's job: the math synthesis template from
``anchors/`` filled with K candidates drawn from the same noisy teacher (never the question), and
as the target one reconciled solution with every column re-checked. Because every rollout carries
its checkable steps, an anchor that does not see the question can still resolve disagreements by
checking the work rather than by counting votes, which is what the template asks of it.

Where the built world comes from. The repository ships both built worlds in ``worlds/`` (a few
MB; a wheel carries them in ``cat/_data/worlds``), so a first run starts at once. Each carries a
``build.json``: the spec, the torch version, thread count and CPU it was built with, the hash of
every file, the hash of the anchor template it was trained on, and a trail of weight hashes during
pretraining. ``cat-rl tiny-world --check`` rebuilds a world from this module and compares it to the
shipped one file by file; the test suite replays the start of both builds against the trail. The
build pins its thread count (``TinySpec.threads``) because CPU kernels sum in a different order
with a different number of threads (and on another CPU: ``cpu_fingerprint``). A world is rebuilt
(into ``~/.cache/cat`` or ``$CAT_CACHE``) only when the spec in this module no longer matches the
shipped one; editing the anchor template does not rebuild anything: the run warns that the tiny
anchor was trained on another text and names the command that rebuilds it for the new one.

What this world does and does not show. The anchor here beats majority vote because it checks
steps and decodes greedily, not because it learned to vote: a 1M-parameter model trained for a
few CPU minutes did not learn to reconcile by voting (trained on an answer-only format, the anchor
copies one candidate, below majority vote). Numbers from this world say the machinery learns;
they are not evidence about CaT on real models.

"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cat.teacher.anchor_format import format_rollouts
from cat.templates import data_dir, load_template

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SUMMARY = "SUMMARY: checked every column sum against its digits."


@dataclass(frozen=True)
class TinySpec:
    """Everything that determines the built world; its hash names the cache folder."""

    version: int = 2
    seed: int = 0
    held_out: int = 500
    field_error: float = 0.3
    copy_error: float = 0.05
    vocab_size: int = 1000
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    max_positions: int = 512
    steps: int = 1200
    policy_batch: int = 64
    anchor_batch: int = 12
    anchor_every: int = 2
    lr: float = 3e-3
    template: str = "math_synthesis"
    threads: int = 2  # CPU threads of the build: kernels sum in another order with another count

    def templates(self) -> dict[str, str]:
        """The templates this world is trained on: ``{kind/name: sha256 of the text}``."""
        return _template_hashes("anchors", [self.template])


def _template_hashes(kind: str, names: list[str]) -> dict[str, str]:
    out = {}
    for name in names:
        template = load_template(name, kind=kind, required=set(),
                                 allowed={"rollouts", "num_rollouts", "reference", "min_criteria", "response", "criterion"})
        out[f"{kind}/{name}"] = hashlib.sha256(template.text.encode()).hexdigest()
    return out


def all_pairs() -> list[tuple[int, int]]:
    return [(a, b) for a in range(10, 100) for b in range(10, 100)]


def split_pairs(spec: TinySpec) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(train, held_out): disjoint, fixed by the spec's seed."""
    pairs = all_pairs()
    random.Random(spec.seed).shuffle(pairs)
    return pairs[spec.held_out :], pairs[: spec.held_out]


def _perturb(value: int, low: int, high: int, rng: random.Random) -> int:
    if rng.random() < 0.7:
        candidates = [v for v in (value - 1, value + 1) if low <= v <= high]
    else:
        candidates = [v for v in range(low, high + 1) if v != value]
    return rng.choice(candidates)


@dataclass(frozen=True)
class Steps:
    """One worked solution: the operand digits as copied, the column sums as written, the answer."""

    a_digits: tuple[int, int]  # (tens, ones) of the first operand as written
    b_digits: tuple[int, int]
    ones: int
    tens: int
    answer: int

    def text(self) -> str:
        (a1, a0), (b1, b0) = self.a_digits, self.b_digits
        carry = int(self.ones >= 10)
        return f"ones {a0}+{b0}={self.ones:02d} tens {a1}+{b1}+{carry}={self.tens:02d} so \\boxed{{{self.answer}}}"


def steps(a: int, b: int, rng: random.Random | None = None, spec: TinySpec | None = None) -> Steps:
    """The worked solution of a+b: exact when ``rng`` is None, else drawn from the noisy teacher.

    Noise: each operand digit is miscopied with probability ``copy_error`` / 2; each column sum
    is wrong with probability ``field_error``; the answer is miscopied with probability
    ``copy_error``. Sums are computed from the digits as copied, and an error carries forward
    into the carry and the answer, as it would in a real derivation.
    """
    digits = [a // 10, a % 10, b // 10, b % 10]
    if rng is not None:
        digits = [_perturb(d, 1 if i % 2 == 0 else 0, 9, rng) if rng.random() < spec.copy_error / 2 else d
                  for i, d in enumerate(digits)]
    a1, a0, b1, b0 = digits
    ones = a0 + b0
    if rng is not None and rng.random() < spec.field_error:
        ones = _perturb(ones, 0, 18, rng)
    tens = a1 + b1 + (ones >= 10)
    if rng is not None and rng.random() < spec.field_error:
        tens = _perturb(tens, 1, 19, rng)
    answer = tens * 10 + ones % 10
    if rng is not None and rng.random() < spec.copy_error:
        answer = _perturb(answer, 10, 199, rng)
    return Steps((a1, a0), (b1, b0), ones, tens, answer)


def solution(a: int, b: int, rng: random.Random | None = None, spec: TinySpec | None = None) -> str:
    """A worked solution as text; correct when ``rng`` is None, else from the noisy teacher."""
    return steps(a, b, rng, spec).text()


def anchor_prompt(candidates: list[str], spec: TinySpec) -> str:
    template = load_template(spec.template, kind="anchors", required={"rollouts"}, allowed={"num_rollouts"})
    return template.render(num_rollouts=str(len(candidates)), rollouts=format_rollouts(candidates))


def anchor_target(a: int, b: int) -> str:
    return f"{SUMMARY}\nUNIFIED RESPONSE: {solution(a, b)}"


def _chat(user: str) -> str:
    return f"<|user|>{user}<|end|><|assistant|>"


def _policy_example(pair: tuple[int, int], rng: random.Random, spec: TinySpec) -> tuple[str, str]:
    a, b = pair
    return _chat(f"{a}+{b}"), solution(a, b, rng, spec) + "<|end|>"


def _anchor_example(pair: tuple[int, int], rng: random.Random, spec: TinySpec) -> tuple[str, str]:
    a, b = pair
    k = rng.choice([2, 3, 4, 5, 6, 7, 8, 8, 8, 8, 8, 8])
    candidates = [solution(a, b, rng, spec) for _ in range(k)]
    return _chat(anchor_prompt(candidates, spec)), anchor_target(a, b) + "<|end|>"


def build_tokenizer(spec: TinySpec, corpus: list[str]):
    """A byte-level BPE tokenizer with single-digit tokens and a chat template, trained on ``corpus``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        eos_token="<|end|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=spec.max_positions,
        padding_side="left",
    )


def build_model(spec: TinySpec, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    # Our own initialisation, in name order from a seeded generator (transformers' init code
    # differs between its versions, and the shipped world must rebuild the same on any of them).
    import torch

    gen = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.dim() == 1:
                p.fill_(1.0)  # RMSNorm scales
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model


def _batch(examples: list[tuple[str, str]], tokenizer):
    """Right-padded input ids and labels (-100 outside the completion)."""
    import torch

    rows = []
    for prompt, completion in examples:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"]
        rows.append((p + c, [-100] * len(p) + c))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        attention[i, : len(x)] = 1
    return ids, labels, attention


def weights_hash(model) -> str:
    """sha256 of every parameter's bytes, in state-dict order: equal iff the weights are bitwise equal."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


TRAIL_EVERY = 100
TRAIL_FIRST = 10  # the suite replays this many steps of each build against the shipped trail


def weight_norms(model) -> dict[str, float]:
    """Each parameter's L2 norm: the trail's probe, comparable with a tolerance where the bitwise
    hash cannot be (another torch or transformers version sums in another order)."""
    return {name: float(p.detach().double().norm()) for name, p in sorted(model.named_parameters())}


def trail_step(step: int, total: int) -> bool:
    """Whether the weights after ``step`` updates go into the build's trail."""
    return step in (0, TRAIL_FIRST, total) or step % TRAIL_EVERY == 0


def record_trail(trail: dict, model, done: int, total: int) -> None:
    """After ``done`` of ``total`` updates: the weights' hash at trail steps, the norms after the
    replayed steps."""
    if trail_step(done, total):
        trail[str(done)] = weights_hash(model)
    if done == TRAIL_FIRST:
        trail["norms"] = weight_norms(model)


def continue_training(base: Path, spec, next_examples, what: str, stop_after: int | None = None):
    """Train the world in ``base`` further (the rubric world, the hard tier): AdamW on a cosine
    schedule over ``spec.steps``, on ``next_examples(step, rng)`` each step. Returns (model,
    tokenizer, trail, finished); ``stop_after`` stops early (the suite's replay)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with pinned_threads(spec.threads):
        torch.manual_seed(spec.seed)
        rng = random.Random(spec.seed)
        tokenizer = AutoTokenizer.from_pretrained(base / "model")
        model = AutoModelForCausalLM.from_pretrained(base / "model")
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01, betas=(0.9, 0.98))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / spec.steps)))
        trail = {"0": weights_hash(model)}
        for step in range(spec.steps):
            loss = train_step(model, optimizer, scheduler, next_examples(step, rng), tokenizer)
            record_trail(trail, model, step + 1, spec.steps)
            if step % 100 == 0 or step == spec.steps - 1:
                logger.info(f"  {what} step {step:4d}/{spec.steps}  loss {loss:.3f}")
            if stop_after is not None and step + 1 >= stop_after:
                return model, tokenizer, trail, False
    return model, tokenizer, trail, True


@contextlib.contextmanager
def pinned_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    if torch.get_num_threads() != n:  # a thread pool some library fixed earlier in this process
        logger.warning(f"warning: torch runs {torch.get_num_threads()} threads here, not the build's {n}; "
                       "the world will not match its shipped build bit for bit (build in a fresh process: "
                       "cat-rl tiny-world)")
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_fingerprint() -> str:
    """The CPU model and the vector ISA torch's kernels dispatch to ("AMD EPYC (AVX2)"): the same
    build on another CPU sums in another order, so a build replays bit for bit only on its own."""
    import torch

    name = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"


def write_build_record(out_dir: Path, world: str, spec, templates: dict[str, str], trail: dict[str, str],
                       extra: dict | None = None) -> None:
    """``build.json``: what built this world and the hash of every file in it. Written last: a
    folder without it is not a complete world."""
    import tokenizers
    import torch
    import transformers

    files = {str(p.relative_to(out_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(out_dir.rglob("*")) if p.is_file() and p.name != "build.json"}
    record = {"world": world, "spec": asdict(spec), "templates": templates, "torch": torch.__version__,
              "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
              "threads": spec.threads, "cpu": cpu_fingerprint(), "trail": trail, "files": files, **(extra or {})}
    (out_dir / "build.json").write_text(json.dumps(record, indent=2) + "\n")


def train_step(model, optimizer, scheduler, examples: list[tuple[str, str]], tokenizer) -> float:
    """One supervised step on (prompt, completion) pairs, loss on the completions only."""
    import torch

    ids, labels, attention = _batch(examples, tokenizer)
    loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    return loss.item()


def pretrain(spec: TinySpec, out_dir: Path | None, stop_after: int | None = None) -> dict[str, str]:
    """Build the tokenizer, pretrain the model on the noisy-teacher corpus, save both to ``out_dir``.

    Returns the trail: the weights' hash after each of :func:`trail_step`'s steps. With
    ``stop_after`` the build stops there and saves only the tokenizer (the suite's replay).
    """
    import torch

    with pinned_threads(spec.threads):
        torch.manual_seed(spec.seed)
        rng = random.Random(spec.seed)
        train_pairs, held_out = split_pairs(spec)
        corpus = [" ".join(_policy_example(rng.choice(train_pairs), rng, spec)) for _ in range(2000)]
        corpus += [" ".join(_anchor_example(rng.choice(train_pairs), rng, spec)) for _ in range(300)]
        tokenizer = build_tokenizer(spec, corpus)
        model = build_model(spec, tokenizer)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01, betas=(0.9, 0.98))
        warmup = 100

        def lr_at(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (spec.steps - warmup)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
        trail = {"0": weights_hash(model)}
        start = time.time()
        for step in range(spec.steps):
            if step % spec.anchor_every == 0:
                examples = [_anchor_example(rng.choice(train_pairs), rng, spec) for _ in range(spec.anchor_batch)]
            else:
                examples = [_policy_example(rng.choice(train_pairs), rng, spec) for _ in range(spec.policy_batch)]
            loss = train_step(model, optimizer, scheduler, examples, tokenizer)
            record_trail(trail, model, step + 1, spec.steps)
            if step % 100 == 0 or step == spec.steps - 1:
                logger.info(f"  pretrain step {step:5d}/{spec.steps}  loss {loss:.3f}  {time.time() - start:6.1f}s")
            if stop_after is not None and step + 1 >= stop_after:
                break
    if out_dir is None:
        return trail
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir / "model")
    if stop_after is not None:
        return trail
    model.save_pretrained(out_dir / "model")
    write_splits(out_dir, train_pairs, held_out)
    (out_dir / "spec.json").write_text(json.dumps(asdict(spec), indent=2))
    write_build_record(out_dir, "tiny-arith", spec, spec.templates(), trail)
    return trail


def write_splits(out_dir: Path, train: list[tuple[int, int]], test: list[tuple[int, int]]) -> None:
    """``train.jsonl`` and ``test.jsonl``: one ``{"problem": "a+b", "answer": "sum"}`` per pair."""
    for name, pairs in (("train", train), ("test", test)):
        with open(out_dir / f"{name}.jsonl", "w") as f:
            for a, b in pairs:
                f.write(json.dumps({"problem": f"{a}+{b}", "answer": str(a + b)}) + "\n")


def cache_root() -> Path:
    return Path(os.environ.get("CAT_CACHE", Path.home() / ".cache" / "cat"))


def shipped(world: str) -> Path:
    """Where the repository (or the wheel) keeps the built ``world`` ("tiny-arith", "tiny-rubric")."""
    try:
        return data_dir("worlds") / world
    except Exception:  # noqa: BLE001 - a checkout without worlds/: nothing shipped
        return Path("/nonexistent") / world


def read_record(folder: Path) -> dict | None:
    """The folder's build record, or None when it is not a complete world."""
    try:
        return json.loads((folder / "build.json").read_text())
    except (OSError, ValueError):
        return None


def final_weights(folder: Path) -> str:
    """The hash of a built world's final weights (the last entry of its trail): what a world
    built on top of it records as its base."""
    trail = {k: v for k, v in (read_record(folder) or {}).get("trail", {}).items() if k.isdigit()}
    return trail[max(trail, key=int)] if trail else folder.name


_warned: set[str] = set()


def locate(world: str, identity: dict, templates: dict[str, str], build, *, force_build: bool = False) -> Path:
    """The folder of a built ``world`` whose build record carries ``identity`` (its spec, and the
    weights it started from), in this order:

    1. a world built for this identity and the current templates, in the cache;
    2. the shipped world, when its identity matches; if it was trained on other template text a
       warning says so and how to rebuild (nothing is rebuilt behind the user's back);
    3. else ``build(folder)`` into the cache, once (a few CPU minutes).
    """
    blob = json.dumps(identity, sort_keys=True) + json.dumps(templates, sort_keys=True)
    cache = cache_root() / f"{world}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"
    if read_record(cache) is not None:
        return cache
    ship = shipped(world)
    record = read_record(ship)
    if not force_build and record is not None and all(record.get(k) == v for k, v in identity.items()):
        changed = sorted(k for k, v in templates.items() if record.get("templates", {}).get(k) != v)
        if changed and world not in _warned:
            _warned.add(world)
            logger.warning(
                f"warning: {', '.join(changed)} changed since the shipped {world} world was trained on it; its "
                f"model still answers the old text and may do worse. `cat-rl tiny-world {world.split('-')[1]} "
                f"--build` trains it on the new text (a few CPU minutes, cached in {cache_root()}).")
        return ship
    why = "as asked" if force_build else (f"the shipped world in {ship} was built from another spec or base"
                                           if record is not None else f"no built world ships in {ship}")
    logger.info(f"{world}: {why}")
    return build_once(cache, build, f"the {world} world")


def ensure_built(spec: TinySpec | None = None, *, force_build: bool = False) -> Path:
    """The folder of the tiny arithmetic world: shipped, cached, or built on first use."""
    spec = spec or TinySpec()
    return locate("tiny-arith", {"spec": asdict(spec)}, spec.templates(), lambda out: pretrain(spec, out),
                  force_build=force_build)


def build_once(target: Path, build, what: str) -> Path:
    """``target`` if it is complete, else ``build(tmp)`` into a temporary folder renamed into place
    (an interrupted build leaves nothing that a later run would trust)."""
    if read_record(target) is not None:
        return target
    import fcntl

    target.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time: concurrent runs (parallel tests, two terminals) wait for the first
    # instead of each paying the build. The OS drops the lock if the builder dies.
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if read_record(target) is not None:
            return target
        for debris in target.parent.glob(f".building-{target.name}-*"):  # left by builders that died holding this lock
            shutil.rmtree(debris, ignore_errors=True)
        if target.exists():  # an incomplete world (an older layout without build.json)
            shutil.rmtree(target)
        logger.info(f"building {what} in {target} (once; a few CPU minutes)")
        tmp = Path(tempfile.mkdtemp(prefix=f".building-{target.name}-", dir=target.parent))
        try:
            build(tmp)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def compare_worlds(built: Path, reference: Path) -> list[str]:
    """Files whose bytes differ between two built worlds (by their build records), as lines."""
    a, b = read_record(built), read_record(reference)
    if a is None or b is None:
        return [f"{p}: no build.json" for p, r in ((built, a), (reference, b)) if r is None]
    out = []
    for name in sorted(set(a["files"]) | set(b["files"])):
        if a["files"].get(name) != b["files"].get(name):
            out.append(f"{name}: differs" if name in a["files"] and name in b["files"] else f"{name}: only in one")
    for key in ("torch", "threads", "cpu"):
        if a.get(key) != b.get(key) and out:
            out.append(f"(built with {key} {a.get(key)}; the reference with {b.get(key)})")
    return out
