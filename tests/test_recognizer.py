"""The shipped state recogniser: safetensors-only loading, readings of rendered frames, labels, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spiral.critics.recognizer import decode_states, load_net, load_recognizer, weights_path
from spiral.models.recognizer import ELSEWHERE, HELD, LOC_CLASSES
from spiral.train.augment import AugConfig, augment, degrade
from spiral.train.recognizer import IGNORE, loc_labels
from spiral.world.domain import BLOCKS, State
from spiral.world.render import BOX_SPOT, SLOT_X, TABLE_Y, Appearance, render_state, rest_positions
from spiral.world.tasks import sample_state


@pytest.fixture(scope="module")
def rec():
    return load_recognizer()


def _scenes(n: int, seed: int) -> list[tuple[State, Appearance]]:
    rng = np.random.default_rng([seed, 31337])
    return [(sample_state(rng), Appearance.sample(int(rng.integers(2**31)))) for _ in range(n)]


def test_weights_are_small_and_load_with_safetensors_only(monkeypatch):
    path = weights_path("critic")
    assert path.suffix == ".safetensors" and path.stat().st_size < 10 * 2**20

    def no_pickle(*a, **k):
        raise AssertionError("torch.load must not be used to read shipped weights")

    monkeypatch.setattr(torch, "load", no_pickle)
    net, info = load_net(path)
    assert info["role"] == "critic" and info["steps"] > 0
    assert float(net.temperature.min()) > 0  # calibrated temperatures travel with the weights


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="spiral train recognizer"):
        load_recognizer(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    bad = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad))
    with pytest.raises(ValueError, match="not a SPIRAL recogniser"):
        load_recognizer(bad)
    with pytest.raises(ValueError, match="unknown recogniser role"):
        load_recognizer(role="oracle")


def test_reads_rendered_states(rec):
    scenes = _scenes(24, 1)
    frames = np.stack([render_state(s, appearance=a) for s, a in scenes])
    got = rec.read_states(frames)
    ok = [g == s for g, (s, _) in zip(got, scenes, strict=True)]
    assert np.mean(ok) >= 0.95, [str(s) for (s, _), k in zip(scenes, ok, strict=True) if not k]
    assert rec.read_state(frames[0]) == got[0]


def test_predict_shapes_probabilities_and_resizing(rec):
    s, a = _scenes(1, 2)[0]
    f64 = render_state(s, appearance=a)
    f128 = render_state(s, appearance=a, size=128)
    p = rec.predict(np.stack([f64, f64]))
    assert p["loc"].shape == (2, len(BLOCKS), len(LOC_CLASSES))
    np.testing.assert_allclose(p["loc"].sum(-1), 1, atol=1e-5)
    np.testing.assert_allclose(p["lid"].sum(-1), 1, atol=1e-5)
    assert p["gripper"].shape == (2, 2) and ((0 <= p["pull"]) & (p["pull"] <= 1)).all()
    assert rec.read_state(f128) == rec.read_state(f64) == s


def test_held_block_and_gripper_are_read(rec):
    s = State.make({"red_block": "left", "green_block": "far_left", "blue_block": "center", "yellow_block": "box"})
    f = render_state(s, gripper=(0.3, 0.25), held="red_block")
    p = rec.predict(f)
    assert p["loc"][0, BLOCKS.index("red_block")].argmax() == HELD
    assert np.abs(p["gripper"][0] - [0.3, 0.25]).max() < 0.05


def test_bad_input_errors(rec):
    f = render_state(_scenes(1, 3)[0][0])
    with pytest.raises(ValueError, match="uint8"):
        rec.predict(f.astype(np.float32))
    with pytest.raises(ValueError, match="square"):
        rec.predict(f[:, :48])
    with pytest.raises(ValueError, match="T×H×W×3"):
        rec.predict(f[..., :1])
    with pytest.raises(ValueError, match="one H×W×3 frame"):
        rec.read_state(f[None])


def test_decode_always_gives_a_valid_state():
    rng = np.random.default_rng(0)
    p = {"loc": rng.dirichlet(np.ones(len(LOC_CLASSES)), size=(5, len(BLOCKS))), "lid": rng.dirichlet(np.ones(3), 5),
         "light": rng.dirichlet(np.ones(3), 5), "lid_level": rng.random(5), "light_level": rng.random(5)}
    for s in decode_states(p):
        s.validate()


def test_location_labels_from_positions():
    app = Appearance.default()
    s = State.make({"red_block": "left", "green_block": "red_block", "blue_block": "box", "yellow_block": "far_right"})
    pos = rest_positions(s, app)
    assert [LOC_CLASSES[c] for c in loc_labels(pos, None, app)] == ["left", "red_block", "box", "far_right"]
    between = dict(pos, yellow_block=((SLOT_X[3] + SLOT_X[4]) / 2, TABLE_Y))
    assert loc_labels(between, None, app)[3] == ELSEWHERE
    lifted = dict(pos, yellow_block=(SLOT_X[4], TABLE_Y - 0.2))
    assert loc_labels(lifted, "yellow_block", app)[3] == HELD
    assert loc_labels(dict(pos, yellow_block=(SLOT_X[4], TABLE_Y - 0.02)), "yellow_block", app)[3] == IGNORE
    assert BOX_SPOT["blue_block"] == pos["blue_block"]


def test_augment_and_degrade_are_deterministic():
    x = torch.from_numpy(np.stack([render_state(s) for s, _ in _scenes(4, 4)])).permute(0, 3, 1, 2).float()
    cfg = AugConfig(p_warp=1, p_blur=1, p_color=1, p_occlude=1, p_noise=1, p_jpeg=1)
    a = augment(x.clone(), torch.Generator().manual_seed(5), cfg)
    b = augment(x.clone(), torch.Generator().manual_seed(5), cfg)
    assert torch.equal(a, b) and not torch.equal(a, x) and a.min() >= 0 and a.max() <= 255
    f = x.permute(0, 2, 3, 1).to(torch.uint8).numpy()
    for kind in ("generator", "blur", "noise", "jpeg", "color"):
        d = degrade(f, kind, seed=1)
        assert d.shape == f.shape and d.dtype == np.uint8
        assert np.array_equal(d, degrade(f, kind, seed=1))
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade(f, "sepia")


def test_training_is_reproducible_and_resumable(tmp_path):
    from safetensors.torch import load_file

    from spiral.train.recognizer import TrainConfig, train

    def cfg(name: str, **kw) -> TrainConfig:
        return TrainConfig(out=tmp_path / name / "w.safetensors", ckpt_dir=tmp_path / name / "ckpt", steps=4, batch=8,
                           pool_clips=4, pool_stills=8, calib_clips=2, test_clips=2, eval_kinds=("clean",),
                           coverage_every=400, **kw)

    quiet = lambda msg: None  # noqa: E731
    train(cfg("straight"), log=quiet)
    first = train(cfg("resumed", stop_after=2), log=quiet)
    assert first["train"]["steps_done"] == 2 and first["train"]["stopped_early"]
    train(cfg("resumed", resume=True), log=quiet)
    a, b = load_file(str(tmp_path / "straight" / "w.safetensors")), load_file(str(tmp_path / "resumed" / "w.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    card = (tmp_path / "straight" / "w.md").read_text()
    assert card.startswith("# w: tabletop state recogniser") and "## Coverage of the state space" in card
    assert "| all | 28 |" in card  # every 400th of the 10,884 valid states
    with pytest.raises(ValueError, match="checkpoint"):
        train(cfg("resumed", resume=True, seed=3), log=quiet)
