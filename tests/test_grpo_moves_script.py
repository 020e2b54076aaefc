"""benchmarks/grpo_moves.py scores every kept checkpoint of a real (tiny, random-weight) GRPO run move by move and
exports the best one as tiny weights that keep the run's sampler."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from spiral.models.tiny_video import TinyVideoConfig, TinyVideoDiT, load_weights, save_weights
from spiral.train.grpo import GRPOConfig, GRPOTrainer, Stage

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "grpo_moves.py"
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _script():
    spec = importlib.util.spec_from_file_location("grpo_moves", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_suite_weights_are_the_step_mix_of_the_suite():
    w = _script().suite_weights("tabletop-v1")
    assert abs(sum(w.values()) - 1) < 1e-9
    assert set(w) == {"trained", "red->far_right", "blue->left", "yellow->box", "green->red"}
    assert all(0 < v < 0.1 for k, v in w.items() if k != "trained") and w["trained"] > 0.8


def test_scores_each_kept_checkpoint_and_exports_the_best(tmp_path):
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
    res = _script().main(["--runs", str(run), "--per-move", "1", "--trained", "2", "--threads", "1",
                          "--export-best", "1", "--export-dir", str(best), "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == res["rows"]
    assert [(r["run"], r["step"]) for r in res["rows"]] == [("base", 0), (str(run), 1), (str(run), 2)]
    for r in res["rows"]:
        assert r["trained"]["n"] == 2 and all(r[k]["n"] == 1 for k in ("yellow->box", "green->red"))
        assert 0 <= r["est_step_success_judge"] <= 1
    (path,) = res["exported"]
    exported, meta = load_weights(path)
    assert json.loads(meta["sampler"]) == {"cfg_scale": 2.0, "cfg_max_sigma": 0.5}
    assert meta["grpo_steps"] in {"1", "2"}
    kept = {n: t for n, t in exported.state_dict().items()}
    assert any(not torch.equal(kept[n], t) for n, t in model.state_dict().items())  # the evolved, not the base
