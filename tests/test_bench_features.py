"""VBench-comparable features (issue 26 item 3): tiny random DINO / CLIP / aesthetic-head models built in code,
saved with save_pretrained / safetensors, loaded back by path, and scored on synthetic videos whose answers are
worked out by hand (static, alternating, noise). Motion smoothness under VBench's protocol is checked against a
hand computation written down below."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from spiral.bench import features as F
from spiral.bench import metrics as M
from spiral.cli import app

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """Tiny random models in the layouts the real checkpoints use, saved to disk."""
    from safetensors.torch import save_file
    from transformers import (
        CLIPConfig,
        CLIPModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        Dinov2Config,
        Dinov2Model,
        ViTConfig,
        ViTModel,
    )
    from transformers.utils import logging

    logging.set_verbosity_error()
    root = tmp_path_factory.mktemp("feature-models")
    torch.manual_seed(0)
    paths = {k: str(root / k) for k in ("dino", "dinov2", "clip", "clip-vision", "head", "mlp-head")}
    ViTModel(ViTConfig(**TINY, image_size=224, patch_size=16), add_pooling_layer=False).save_pretrained(paths["dino"])
    Dinov2Model(Dinov2Config(**TINY, image_size=56, patch_size=14)).save_pretrained(paths["dinov2"])
    CLIPModel(CLIPConfig(text_config=dict(TINY, vocab_size=99, bos_token_id=0, eos_token_id=1),
                         vision_config=dict(TINY, image_size=224, patch_size=32), projection_dim=16)
              ).save_pretrained(paths["clip"])
    CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY, image_size=224, patch_size=32, projection_dim=16)
                                  ).save_pretrained(paths["clip-vision"])
    paths["head"] += ".safetensors"
    paths["mlp-head"] += ".safetensors"
    save_file({"weight": torch.randn(1, 16), "bias": torch.tensor([5.0])}, paths["head"])
    save_file({"layers.0.weight": torch.randn(8, 16), "layers.0.bias": torch.randn(8),
               "layers.2.weight": torch.randn(1, 8), "layers.2.bias": torch.randn(1)}, paths["mlp-head"])
    return paths


def _frame(value, h=64, w=64):
    return np.full((h, w, 3), value, np.uint8)


def _pattern(seed: int, h=64, w=96) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---- motion smoothness: VBench's even → odd protocol, by hand -----------------------------------------------------
def _video(values: list[list[int]]) -> np.ndarray:
    """A 1×2-pixel grey video: values[t] = the two pixels of frame t."""
    return np.stack([np.array([[[v, v, v] for v in row]], np.uint8) for row in values])


def test_vbench_motion_smoothness_matches_a_hand_computation():
    # frames t=0..5; even frames 0, 2, 4 are kept, the odd frames 1 and 3 are interpolated and scored; frame 5 (the
    # last odd frame of an even-length video) has no right neighbour and is not scored, as in VBench.
    video = _video([[0, 100], [7, 90], [10, 81], [20, 50], [21, 0], [255, 255]])
    # frame 1 ≈ mean(frame 0, frame 2) = [5, 90.5] → uint8 by truncation [5, 90]; |[7, 90] − [5, 90]| = [2, 0] → 1.0
    # frame 3 ≈ mean(frame 2, frame 4) = [15.5, 40.5] → [15, 40];        |[20, 50] − [15, 40]| = [5, 10] → 7.5
    expected = (255 - (1.0 + 7.5) / 2) / 255
    assert M.vbench_motion_smoothness(video) == pytest.approx(expected, abs=1e-6)
    assert F.MotionScorer("vbench").score(video) == pytest.approx(expected, abs=1e-6)
    # an odd number of frames scores every odd frame: dropping frame 5 changes nothing here
    assert M.vbench_motion_smoothness(video[:5]) == pytest.approx(expected, abs=1e-6)
    # the old all-frames protocol is a different number on the same video (it also scores even frames)
    assert abs(M.motion_smoothness(video) - expected) > 1e-3
    # a plugged interpolator is used as given: predicting the right neighbour scores |odd − next even|
    right = F.MotionScorer("vbench", lambda prev, nxt: nxt.astype(np.float64), "right-neighbour")
    assert right.score(video) == pytest.approx((255 - (np.mean([3, 9]) + np.mean([1, 50])) / 2) / 255, abs=1e-6)
    assert right.name == "vbench:right-neighbour" and right.vbench.comparable is None
    with pytest.raises(ValueError, match="at least 3 frames"):
        M.vbench_motion_smoothness(video[:2])


def test_vbench_motion_smoothness_clips_a_plugged_interpolators_guess_to_pixel_range():
    """A plugged interpolator may overshoot (AMT-S can): its guess is clipped to 0..255 before the uint8 cast, as
    VBench's output frames are, not wrapped around."""
    video = _video([[0, 100], [7, 90], [10, 81], [20, 50], [21, 0]])
    odd = np.stack([video[1], video[3]]).astype(np.float64)
    for value, guess in ((300.0, 255.0), (256.0, 255.0), (-20.0, 0.0)):
        over = F.MotionScorer("vbench", lambda prev, nxt, v=value: np.full(prev.shape, v), "constant")
        assert over.score(video) == pytest.approx((255 - np.abs(odd - guess).mean()) / 255, abs=1e-9), value


def test_motion_default_is_the_old_all_frames_metric_and_labelled_not_comparable():
    video = np.stack([_pattern(i, 8, 8) for i in range(7)])
    default = F.make_extractor("motion", None)
    assert default.score(video) == M.motion_smoothness(video) and default.name == "all-frames:linear"
    assert default.vbench.comparable is False
    stand_in = F.make_extractor("motion", "vbench")
    assert stand_in.vbench.comparable is False and "stands in for its AMT-S" in stand_in.vbench.why
    with pytest.raises(ValueError, match="all-frames | vbench"):
        F.make_extractor("motion", "amt")


# ---- VBench's preprocessing -------------------------------------------------------------------------------------
def test_vbench_resize_follows_torchvision_resize_and_center_crop():
    frames = np.stack([_pattern(0), _pattern(1)])  # 64×96
    x = F.vbench_resize(frames, 224, "bilinear")
    assert tuple(x.shape) == (2, 3, 224, 336)  # short side → 224, long side int(224·96/64)
    assert torch.equal(x, x.round()) and x.min() >= 0 and x.max() <= 255  # rounded back to uint8 values
    c = F.vbench_resize(frames, 224, "bicubic", crop=True)
    assert tuple(c.shape) == (2, 3, 224, 224)
    assert torch.equal(c, F.vbench_resize(frames, 224, "bicubic")[..., :, 56:280])  # the centre
    flat = F.vbench_resize(np.stack([_frame(77)]), 224, "bicubic")
    assert torch.all(flat == 77)  # a constant frame stays constant
    same = np.stack([_pattern(2, 224, 224)])
    assert torch.equal(F.vbench_resize(same, 224, "bilinear")[0].permute(1, 2, 0), torch.from_numpy(same[0]).float())


# ---- consistency on DINO / CLIP features: static, alternating, noise --------------------------------------------
def _cos(a, b):
    return max(0.0, float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))))


@pytest.mark.parametrize("spec", ["dino:{dino}", "dino:{dinov2}", "clip:{clip}", "clip:{clip-vision}"])
def test_consistency_on_tiny_backbones_gives_the_hand_worked_values(models, spec):
    ex = F.make_extractor("subject", spec.format(**models))
    a, b = _pattern(10), _pattern(11)
    fa, fb = ex.features(np.stack([a]))[0], ex.features(np.stack([b]))[0]
    assert np.linalg.norm(fa) == pytest.approx(1.0, abs=1e-5)  # L2-normalised, as VBench does
    # static: every similarity is 1
    assert M.feature_consistency(ex.features(np.stack([a] * 5))) == pytest.approx(1.0, abs=1e-6)
    # alternating a b a b: t=2 (b) ½(c + c) = c, t=3 (a) ½(c + 1), t=4 (b) c  → (2c + (c+1)/2) / 3
    c = _cos(fa, fb)
    assert 0 < c < 0.9999
    assert M.feature_consistency(ex.features(np.stack([a, b, a, b]))) == pytest.approx((2 * c + (c + 1) / 2) / 3,
                                                                                        abs=1e-5)
    # noise: five unrelated frames, each frame's features taken alone, then the formula by hand
    noise = np.stack([_pattern(20 + i) for i in range(5)])
    f = [ex.features(noise[i:i + 1])[0] for i in range(5)]
    hand = np.mean([(_cos(f[t - 1], f[t]) + _cos(f[0], f[t])) / 2 for t in range(1, 5)])
    got = M.feature_consistency(ex.features(noise))
    assert got == pytest.approx(hand, abs=1e-5) and got < 1 - 1e-4


def test_features_are_dino_cls_and_clip_image_embeds_on_vbench_preprocessing(models):
    """The vectors VBench compares: DINO's CLS token after the final norm (ImageNet mean/std) and CLIP's projected
    image embedding (CLIP mean/std, centre crop), read here straight from the transformers models."""
    from transformers import CLIPModel, ViTModel

    video = np.stack([_pattern(40), _pattern(41)])
    x = F.vbench_resize(video, 224, "bilinear") / 255.0
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        cls = ViTModel.from_pretrained(models["dino"], add_pooling_layer=False)(
            pixel_values=x, interpolate_pos_encoding=True).last_hidden_state[:, 0]
    want = torch.nn.functional.normalize(cls, dim=-1).numpy()
    assert np.allclose(F.make_extractor("subject", f"dino:{models['dino']}").features(video), want, atol=1e-5)
    y = F.vbench_resize(video, 224, "bicubic", crop=True) / 255.0
    y = (y - torch.tensor(F.CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(F.CLIP_STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        out = CLIPModel.from_pretrained(models["clip"]).get_image_features(pixel_values=y)
    emb = getattr(out, "pooler_output", out)  # transformers 5 returns the projected embedding as pooler_output
    want = torch.nn.functional.normalize(emb, dim=-1).numpy()
    assert np.allclose(F.make_extractor("background", f"clip:{models['clip']}").features(video), want, atol=1e-5)


def test_tiny_backbones_are_labelled_not_comparable_and_published_shapes_are(models):
    from transformers import CLIPVisionConfig, Dinov2Config, ViTConfig

    dino = F.make_extractor("subject", f"dino:{models['dino']}")
    assert dino.vbench.comparable is False and "hidden_size=32 (published 768)" in dino.vbench.why
    assert dino.name == f"dino:{models['dino']}"
    assert F.dino_comparability(ViTConfig()).comparable is True  # transformers' ViT defaults are ViT-B/16
    assert F.dino_comparability(ViTConfig(), size=256).comparable is False
    assert F.dino_comparability(Dinov2Config()).comparable is False
    assert F.clip_comparability(CLIPVisionConfig(), 512).comparable is True  # ViT-B/32
    assert F.clip_comparability(CLIPVisionConfig(patch_size=16), 512).comparable is False
    large = CLIPVisionConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, patch_size=14)
    assert F.clip_comparability(large, 768, "CLIP ViT-L/14").comparable is True


# ---- aesthetic quality -------------------------------------------------------------------------------------------
def test_aesthetic_quality_is_the_laion_head_on_normalised_clip_embeddings(models, tmp_path):
    from safetensors.torch import load_file, save_file

    scorer = F.make_extractor("aesthetic", f"laion:{models['clip']},{models['head']}")
    clip = F.ClipFeatures(models["clip"])
    video = np.stack([_pattern(30), _pattern(31), _pattern(32)])
    e = clip.features(video)
    w = load_file(models["head"])
    hand = float(np.mean((e @ w["weight"].numpy().T)[:, 0] + w["bias"].numpy()[0]) / 10)
    assert scorer.score(video) == pytest.approx(hand, abs=1e-5)
    assert scorer.score(video) == pytest.approx(np.mean([scorer.score(video[i:i + 1]) for i in range(3)]), abs=1e-6)
    save_file({"weight": torch.zeros(1, 16), "bias": torch.tensor([50.0])}, tmp_path / "flat.safetensors")
    assert F.AestheticScorer(models["clip"], str(tmp_path / "flat.safetensors")).score(video) == pytest.approx(5.0)
    mlp = F.AestheticScorer(models["clip"], models["mlp-head"])
    m = load_file(models["mlp-head"])
    h = e @ m["layers.0.weight"].numpy().T + m["layers.0.bias"].numpy()
    hand = float(np.mean((h @ m["layers.2.weight"].numpy().T)[:, 0] + m["layers.2.bias"].numpy()[0]) / 10)
    assert mlp.score(video) == pytest.approx(hand, abs=1e-5)
    torch.save({"weight": torch.zeros(1, 16), "bias": torch.tensor([20.0])}, tmp_path / "head.pth")
    assert F.AestheticScorer(models["clip"], str(tmp_path / "head.pth")).score(video[:1]) == pytest.approx(2.0)
    save_file({"weight": torch.zeros(1, 7), "bias": torch.zeros(1)}, tmp_path / "wrong.safetensors")
    with pytest.raises(F.FeatureUnavailable, match="maps 7 → 1; the CLIP model gives 16-d"):
        F.AestheticScorer(models["clip"], str(tmp_path / "wrong.safetensors"))


def test_imaging_quality_says_clearly_that_musiq_is_not_available():
    try:
        import pyiqa  # noqa: F401
    except ImportError:
        with pytest.raises(F.FeatureUnavailable, match="needs MUSIQ from the pyiqa package, which is not installed"):
            F.make_extractor("imaging", "musiq:/models/musiq_spaq_ckpt.pth")
    with pytest.raises(ValueError, match="expected musiq:WEIGHTS"):
        F.make_extractor("imaging", "brisque:x")


# ---- bad input: one clear line, nothing written ------------------------------------------------------------------
@pytest.mark.parametrize("features, message", [
    ("subject=dino:/no/such/dino", "dino features: no model folder at /no/such/dino"),
    ("background=clip:/no/such/clip", "clip features: no model folder at /no/such/clip"),
    ("aesthetic=laion:/no/clip,/no/head.pth", "aesthetic clip: no model folder at /no/clip"),
    ("imaging=musiq:/no/musiq.pth", "pyiqa"),
    ("colour=clip:/x", "unknown metric 'colour'"),
    ("motion", "expected METRIC=SPEC"),
])
def test_bad_feature_specs_fail_with_one_line_before_anything_is_written(tmp_path, features, message):
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["bench", "--suite", "tabletop-smoke", "--out", str(out), "--features", features,
                                 "--quiet"])
    assert r.exit_code != 0 and message in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not out.exists()


def test_a_config_folder_that_is_not_the_model_asked_for_is_refused(models, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(F.FeatureUnavailable, match="holds no config.json"):
        F.make_extractor("subject", f"dino:{tmp_path / 'empty'}")
    with pytest.raises(F.FeatureUnavailable, match="is a 'clip' model; expected a ViT"):
        F.make_extractor("subject", f"dino:{models['clip']}")


# ---- the benchmark records which features made each number, and whether it is VBench-comparable -----------------
def test_bench_scores_with_vbench_features_and_reports_comparability(models, tmp_path):
    from spiral.bench.runner import BenchConfig, run_bench

    root = Path(__file__).resolve().parents[1]
    feats = {"subject": f"dino:{models['dino']}", "background": f"clip:{models['clip']}", "motion": "vbench",
             "aesthetic": f"laion:{models['clip']},{models['head']}"}
    res = run_bench(BenchConfig(suite="tabletop-smoke", out=str(tmp_path / "b"), modes=["plan_only"], limit=1,
                                config=str(root / "configs" / "run" / "tabletop-oracle.yaml"), judge="truth",
                                overrides=["output.report=false", "output.segment_videos=false"], features=feats),
                    progress=False)
    case = res["cases"][0]
    assert case["status"] == "ok", case.get("error")
    assert case["features"] == {"subject": feats["subject"], "background": feats["background"],
                                "motion": "vbench:linear", "aesthetic": f"laion:{models['clip']},{models['head']}"}
    m = case["metrics"]
    assert 0 < m["subject_consistency"] <= 1 and 0 < m["background_consistency"] <= 1
    assert 0 < m["motion_smoothness"] <= 1 and m["aesthetic_quality"] is not None
    comp = case["vbench_comparable"]
    assert comp["temporal_flickering"]["comparable"] is None  # the formula is VBench's, its static-scene prompts not
    assert all(comp[k]["comparable"] is False for k in ("subject_consistency", "background_consistency",
                                                        "motion_smoothness", "aesthetic_quality"))
    summary = (tmp_path / "b" / "summary.md").read_text()
    assert "## Comparable to published VBench?" in summary and "## Quality (VBench scorers)" in summary
    assert "| smoothness | no | VBench's even→odd protocol, but linear interpolation stands in" in summary
    saved = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert saved["identity"]["features"] == feats
