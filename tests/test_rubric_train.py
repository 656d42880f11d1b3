"""The rubric path end to end through ``cat-rl train`` on tiny:rubric, and the verdict cache
sparing a restarted run its judge calls."""

import json
import shutil

from conftest import ROOT, cli

CONFIG = str(ROOT / "experiments" / "tiny_rubric_cat.yaml")
# no preflight: the replay below checks the judge's exact accounting of step 1 against its cache
FAST = ["run.steps=1", "eval.path=null", "run.prompts_per_step=4", "run.preflight_prompts=0", "--no-progress"]


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rubric_run_writes_rubrics_verdicts_and_metrics(tmp_path):
    run_dir = tmp_path / "run"
    out = cli("train", CONFIG, "--output-dir", str(run_dir), *FAST)
    assert out.returncode == 0, out.stderr[-3000:]
    [m] = rows(run_dir / "metrics.jsonl")
    for key in ("rubric/length", "rubric/failures", "judge/yes_rate", "judge/failures", "judge/calls", "judge/seconds"):
        assert key in m, key
    assert m["groups/scored"] + m["groups/unscored"] == 4
    # what the teachers spent, beside the policy's tokens/rollouts: the anchor writing rubrics, the judge reading
    assert m["rubric/prompt_tokens"] > 0 and m["rubric/completion_tokens"] > 0
    assert m["judge/prompt_tokens"] > m["judge/completion_tokens"] > 0
    assert 0 < m["rubric/parse_rate"] <= 1 and 0 < m["judge/parse_rate"] <= 1
    # per criterion, nothing cached yet: one request per distinct (criterion, rollout) of the step,
    # one verdict per pair (a repeated rollout is asked once)
    audit = rows(run_dir / "rubrics.jsonl")
    pairs = [(c["text"], r["completion"]) for a in audit if a["rubric"] for r in a["rollouts"] for c in a["rubric"]]
    assert m["judge/asked"] == len(pairs) and m["judge/calls"] == len(set(pairs))
    audit = rows(run_dir / "rubrics.jsonl")
    assert len(audit) == 4 and all(a["step"] == 1 for a in audit)
    scored = [a for a in audit if a["rubric"]]
    assert scored, audit
    for a in scored:
        assert len(a["rubric"]) >= 5 and len(a["rollouts"]) == 8
        for r in a["rollouts"]:
            judged = [v for v in r["verdicts"] if v is not None]
            assert len(r["verdicts"]) == len(a["rubric"])
            assert r["reward"] == sum(judged) / len(judged)  # reward = fraction of criteria met
    assert (run_dir / "verdicts.jsonl").stat().st_size > 0

    # the run dies before its first checkpoint: the restart replays step 1 from the verdict cache
    shutil.rmtree(run_dir / "checkpoints")
    again = cli("train", CONFIG, "--output-dir", str(run_dir), *FAST)
    assert again.returncode == 0, again.stderr[-3000:]
    [m2] = rows(run_dir / "metrics.jsonl")
    assert m2["judge/calls"] == 0 and m2["judge/cache_hits"] == m["judge/asked"] - m["judge/failures"]
    assert m2["judge/prompt_tokens"] == m2["judge/completion_tokens"] == 0  # cached verdicts cost nothing
    assert m2["reward/mean"] == m["reward/mean"]


def test_bad_judge_template_fails_before_loading_models(tmp_path):
    t = tmp_path / "judge.txt"
    t.write_text("Is {{respons}} ok?")
    out = cli("train", CONFIG, "--output-dir", str(tmp_path / "r"), f"judge.template={t}")
    assert out.returncode == 2 and "respons" in out.stderr and "Traceback" not in out.stderr
