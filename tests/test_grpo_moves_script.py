"""benchmarks/grpo_moves.py scores every kept checkpoint of a real (tiny, random-weight) GRPO run move by move and
exports the best one as tiny weights that keep the run's sampler."""

import json

import pytest
import torch

from spiral.models.tiny_video import TinyVideoConfig, TinyVideoDiT, load_weights, save_weights
from spiral.train.grpo import GRPOConfig, GRPOTrainer, Stage

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py



def test_suite_weights_are_the_step_mix_of_the_suite(bench_script):
    w = bench_script("grpo_moves").suite_weights("tabletop-v1")
    assert abs(sum(w.values()) - 1) < 1e-9
    assert set(w) == {"trained", "red->far_right", "blue->left", "yellow->box", "green->red"}
    assert all(0 < v < 0.1 for k, v in w.items() if k != "trained") and w["trained"] > 0.8


def test_scores_each_kept_checkpoint_and_exports_the_best(tmp_path, bench_script):
    script = bench_script("grpo_moves")
    torch.manual_seed(0)
    model = TinyVideoDiT(TinyVideoConfig(resolution=64, num_frames=4, patch=16, tubelet=4, dim=32, depth=1, heads=1,
                                         text_tokens=2, text_encoder="hash"))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    weights = save_weights(model, tmp_path / "base.safetensors")
    run = tmp_path / "run"
    cfg = GRPOConfig(out=str(run), weights=str(weights), steps=2, prompts_per_step=2, group_size=2, sample_steps=4,
                     cfg_scale=2.0, cfg_max_sigma=0.5, heldout_moves="half", eval_every=0, sample_every=0,
                     ckpt_every=1, keep_ema=True, lr=1e-2,
                     stages=[Stage(name="single", kind="single", min_steps=1, max_steps=3)])
    GRPOTrainer(cfg, progress=False).run()

    out, best = tmp_path / "moves.json", tmp_path / "best"
    res = script.main(["--runs", str(run), "--per-move", "1", "--trained", "2", "--threads", "1",
                          "--export-best", "1", "--export-dir", str(best), "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == res["rows"]
    assert [(r["run"], r["step"]) for r in res["rows"]] == [("base", 0), (str(run), 1), (str(run), 2)]
    for r in res["rows"]:
        assert r["trained"]["n"] == 2 and all(r[k]["n"] == 1 for k in ("yellow->box", "green->red"))
        assert 0 <= r["est_step_success_judge"] <= 1 and 0 < r["est_drift"] < 1  # random weights: noise, not 0
        assert 0 <= r["est_step_success_faithful"] <= r["est_step_success_judge"]
        assert all(r[k]["faithful"] <= r[k]["judge"] for k in ("trained", "yellow->box", "green->red"))
        assert r["sampler"]["cfg_scale"] == 2.0
    (path,) = res["exported"]
    exported, meta = load_weights(path)
    assert json.loads(meta["sampler"]) == {"cfg_scale": 2.0, "cfg_max_sigma": 0.5}
    assert meta["grpo_steps"] in {"1", "2"}
    kept = {n: t for n, t in exported.state_dict().items()}
    assert any(not torch.equal(kept[n], t) for n, t in model.state_dict().items())  # the evolved, not the base

    # weights files are scored as they are, under their own sampler or the one asked for, on the same prompts
    again = script.main(["--weights", str(weights), path, "--sample-steps", "4", "--per-move", "1", "--trained", "2",
                            "--threads", "1", "--out", str(out)])
    assert [r["sampler"]["cfg_scale"] for r in again["rows"]] == [1.0, 2.0]
    step = int(meta["grpo_steps"])
    as_run = next(r for r in res["rows"] if r["run"] == str(run) and r["step"] == step)
    classes = ("trained", "yellow->box", "green->red", "blue->left", "red->far_right")
    assert all(again["rows"][1][k] == as_run[k] for k in classes)  # the exported file scores as its checkpoint
    plain = script.main(["--weights", path, "--cfg-scale", "1", "--per-move", "1", "--trained", "2",
                            "--threads", "1", "--out", str(out)])
    assert plain["rows"][0]["sampler"]["cfg_scale"] == 1.0
    local = script.main(["--runs", str(run), "--cfg-tau", "0.05", "--per-move", "1", "--trained", "2",
                            "--threads", "1", "--export-best", "1", "--max-drift", "0", "--export-dir", str(best),
                            "--out", str(out)])
    assert all(r["sampler"]["cfg_tau"] == 0.05 for r in local["rows"])
    assert local["exported"] == []  # every checkpoint drifts more than 0: none may be picked
    with pytest.raises(SystemExit, match="nothing to score"):
        script.main(["--out", str(out)])
