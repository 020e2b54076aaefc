"""benchmarks/tiny_generator_quality.py runs end to end (random tiny weights, a few pairs, one long task)."""

import json

import torch

from spiral.models.tiny_video import TinyVideoConfig, TinyVideoDiT, save_weights


def test_quality_script_runs_end_to_end(tmp_path, bench_script):
    torch.manual_seed(0)
    model = TinyVideoDiT(TinyVideoConfig(resolution=64, num_frames=4, patch=16, tubelet=2, dim=32, depth=1, heads=2,
                                         text_tokens=2, text_encoder="hash"))
    weights = save_weights(model, tmp_path / "tiny.safetensors")
    mod = bench_script("tiny_generator_quality")
    out, grid, chain = tmp_path / "q.json", tmp_path / "grid.png", tmp_path / "chain.png"
    res = mod.main(["--weights", str(weights), "--n", "4", "--long", "1", "--n-heldout", "4", "--steps", "2",
                    "--out", str(out), "--docs-grid", str(grid), "--docs-chain", str(chain)])
    assert json.loads(out.read_text())["open_loop"]["n"] == 4
    assert res["paraphrase"]["n"] == 4 and res["compositional"]["n"] == 4
    assert all(it["n"] == 1 for it in res["long_horizon"]["step_success_by_index"])
    assert 6 <= res["long_horizon"]["steps"] <= 8
    assert set(res["open_loop"]["by_type"]) == {"move", "open", "close", "lamp"}
    assert grid.stat().st_size > 0 and chain.stat().st_size > 0
