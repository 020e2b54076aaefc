"""Diffusers image-to-video backends on tiny random-weight pipelines built in code (no download).

Each pipeline is saved with ``save_pretrained`` and loaded back through the backend by path,
the way a user's hub checkpoint would be.
"""

from __future__ import annotations

import inspect
import sys
import time

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers", reason="needs the diffusers extra: pip install 'spiral-video[diffusers]'")

from spiral import registry  # noqa: E402
from spiral.generators import diffusers as dg  # noqa: E402
from spiral.generators.diffusers.testing import TINY_BUILDERS, save_tiny  # noqa: E402
from spiral.types import GenerationRequest  # noqa: E402

BACKENDS = ["wan21-i2v", "wan22-ti2v", "cogvideox-i2v", "ltx-i2v"]
FLOW_BACKENDS = ["wan21-i2v", "wan22-ti2v", "ltx-i2v"]
STEPS = 2


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny_pipelines")
    return {name: str(save_tiny(name, root / name)) for name in TINY_BUILDERS}


_ADAPTERS: dict[tuple, object] = {}


def adapter(name: str, path: str, **options):
    """One loaded adapter per (backend, options) for the whole module."""
    key = (name, path, tuple(sorted((k, repr(v)) for k, v in options.items())))
    if key not in _ADAPTERS:
        _ADAPTERS[key] = registry.create("generator", name, model=path, num_inference_steps=STEPS, **options)
    return _ADAPTERS[key]


def frame(seed: int, h: int = 64, w: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def request(cond: np.ndarray, seed: int = 7, **kw) -> GenerationRequest:
    defaults = dict(prompt="move the red block into the box",
                    context="Scene: a table with a box. Done so far: nothing yet. Now: move the red block into the box",
                    cond_frame=cond, seed=seed, num_frames=9, height=cond.shape[0], width=cond.shape[1])
    return GenerationRequest(**{**defaults, **kw})


# ----------------------------------------------------------------------------------------------- generate


@pytest.mark.parametrize("name", BACKENDS)
def test_generate_shape_frame0_seed_and_conditioning(tiny_dirs, name):
    gen = adapter(name, tiny_dirs[name])
    cond = frame(1)
    seg = gen.generate(request(cond))
    assert seg.frames.shape == (9, 64, 64, 3) and seg.frames.dtype == np.uint8
    assert np.array_equal(seg.frames[0], cond), "frame 0 must be the conditioning frame itself"
    assert seg.backend == name and seg.seed == 7 and seg.fps == gen.fps
    assert seg.meta["pipeline"].endswith("Pipeline") and np.isfinite(seg.meta["frame0_mae"])

    again = gen.generate(request(cond))
    assert np.array_equal(again.frames, seg.frames), "same seed, same request → same frames"
    other_seed = gen.generate(request(cond, seed=8))
    assert not np.array_equal(other_seed.frames[1:], seg.frames[1:])
    other_cond = gen.generate(request(frame(2)))
    assert not np.array_equal(other_cond.frames[1:], seg.frames[1:]), "the conditioning frame must reach the model"


class TextEncoderInputs:
    """Records the token ids every call of a pipeline's text encoder receives (a forward pre-hook)."""

    def __init__(self, gen):
        self.calls: list[list[int]] = []
        self.pad = gen.pipe.tokenizer.pad_token_id
        self.handle = gen.pipe.text_encoder.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs) -> None:
        ids = args[0] if args else kwargs["input_ids"]
        self.calls += [[int(t) for t in row if int(t) != self.pad] for row in ids]

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


PROMPTS = ("Now: move the red block into the box", "Now: switch off the lamp")


@pytest.mark.parametrize("name", BACKENDS)
def test_the_prompt_reaches_the_text_encoder(tiny_dirs, name):
    """The request's text is what the text encoder reads (token for token, before the negative prompt), and two
    texts with the same frame and seed give different videos: an adapter that sends a constant prompt fails."""
    gen = adapter(name, tiny_dirs[name])
    cond, videos = frame(1), []
    for text in PROMPTS:
        with TextEncoderInputs(gen) as seen:
            videos.append(gen.generate(request(cond, context=text)).frames)
        assert seen.calls and seen.calls[0] == gen.pipe.tokenizer(text).input_ids, (text, seen.calls)
    assert not np.array_equal(videos[0][1:], videos[1][1:]), "the prompt must change the video"
    if name in FLOW_BACKENDS:  # the hand-driven path (GRPO) encodes the same text
        embeds = []
        for text in PROMPTS:
            with TextEncoderInputs(gen) as seen:
                embeds.append(gen.prepare(request(cond, context=text)).cond["prompt_embeds"])
            assert seen.calls[0] == gen.pipe.tokenizer(text).input_ids
        assert not torch.equal(embeds[0], embeds[1])
    # prompt_source instruction: the step's instruction is what is encoded, whatever the context says
    inst = adapter(name, tiny_dirs[name], prompt_source="instruction")
    with TextEncoderInputs(inst) as seen:
        inst.generate(request(cond, prompt="open the box", context=PROMPTS[0]))
    assert seen.calls[0] == inst.pipe.tokenizer("open the box").input_ids


def test_prompt_source_and_template(tiny_dirs):
    req = request(frame(1))
    assert adapter("ltx-i2v", tiny_dirs["ltx-i2v"]).prompt_for(req) == req.context
    gen = adapter("ltx-i2v", tiny_dirs["ltx-i2v"], prompt_source="instruction", prompt_template="A robot arm: {text}")
    assert gen.prompt_for(req) == "A robot arm: move the red block into the box"
    assert gen.prompt_for(req.model_copy(update={"context": ""})) == "A robot arm: move the red block into the box"
    with pytest.raises(ValueError, match="prompt_source"):
        registry.create("generator", "ltx-i2v", model=tiny_dirs["ltx-i2v"], prompt_source="memory")


# ----------------------------------------------------------------------------------------------- sizes


def test_model_constraints_snap_or_refuse(tiny_dirs):
    wan = adapter("wan21-i2v", tiny_dirs["wan21-i2v"])
    assert (wan.frame_step(), wan.spatial_multiple()) == (4, 16)
    assert wan.model_size(request(frame(1, 60, 70), num_frames=10)) == dg.ModelSize(64, 64, 13)
    strict = adapter("wan21-i2v", tiny_dirs["wan21-i2v"], snap=False)
    with pytest.raises(ValueError, match=r"num_frames = 4k\+1.*valid nearby: 64x64x13"):
        strict.model_size(request(frame(1, 60, 70), num_frames=10))

    assert adapter("wan22-ti2v", tiny_dirs["wan22-ti2v"]).spatial_multiple() == 32
    ltx = adapter("ltx-i2v", tiny_dirs["ltx-i2v"])
    assert (ltx.frame_step(), ltx.spatial_multiple()) == (8, 32)
    assert ltx.model_size(request(frame(1), num_frames=12)) == dg.ModelSize(64, 64, 17)

    cog = adapter("cogvideox-i2v", tiny_dirs["cogvideox-i2v"])
    assert cog.frame_step() == 8 and cog.fixed_size() == (32, 32)  # transformer sample size 4x4 latents
    assert cog.model_size(request(frame(1), num_frames=9)) == dg.ModelSize(32, 32, 9)
    with pytest.raises(ValueError, match="only generates 32x32"):
        adapter("cogvideox-i2v", tiny_dirs["cogvideox-i2v"], height=64).model_size(request(frame(1)))


def test_other_aspect_is_cropped_and_restored(tiny_dirs):
    """A 48x96 run on a model forced to 64x64: the model sees the center square, the output is 48x96
    with generated pixels in the center and the conditioning frame's pixels outside it."""
    gen = adapter("wan21-i2v", tiny_dirs["wan21-i2v"], height=64, width=64)
    cond = frame(3, 48, 96)
    seg = gen.generate(request(cond))
    assert seg.frames.shape == (9, 48, 96, 3) and seg.meta["model_size"] == [64, 64, 9]
    assert np.array_equal(seg.frames[0], cond)
    assert (seg.frames[1:, :, :24] == cond[None, :, :24]).all() and (seg.frames[1:, :, 72:] == cond[None, :, 72:]).all()
    assert not np.array_equal(seg.frames[1:, :, 24:72], np.repeat(cond[None, :, 24:72], 8, 0))
    stretch = adapter("wan21-i2v", tiny_dirs["wan21-i2v"], height=64, width=64, resize="stretch")
    assert not np.array_equal(stretch.generate(request(cond)).frames[1:, :, :24], seg.frames[1:, :, :24])


# ----------------------------------------------------------------------------------------------- flow access


@pytest.mark.parametrize("name", FLOW_BACKENDS)
def test_hand_driven_flow_matches_scheduler_and_pipeline(tiny_dirs, name):
    """The transformer driven by hand (prepare → velocity → Euler → decode) reproduces the pipeline."""
    gen = adapter(name, tiny_dirs[name], scheduler="FlowMatchEulerDiscreteScheduler", scheduler_kwargs={"shift": 3.0})
    assert gen.denoiser is gen.pipe.transformer and gen.scheduler is gen.pipe.scheduler
    req = request(frame(4))
    inputs = gen.prepare(req)
    assert len(inputs.sigmas) == len(inputs.timesteps) + 1 == STEPS + 1 and float(inputs.sigmas[-1]) == 0.0

    x0, t0 = inputs.latents, inputs.timesteps[0]
    v = gen.velocity(x0, t0, inputs)
    assert v.shape == x0.shape and v.dtype == torch.float32 and v.requires_grad  # differentiable for GRPO
    v = v.detach()
    by_hand = x0 + (inputs.sigmas[1] - inputs.sigmas[0]) * v
    by_scheduler = gen.scheduler.step(v, t0, x0, return_dict=False)[0]
    torch.testing.assert_close(by_hand, by_scheduler, rtol=0, atol=1e-6)

    with torch.no_grad():
        x = x0
        for i, t in enumerate(inputs.timesteps):
            x = x + (inputs.sigmas[i + 1] - inputs.sigmas[i]) * gen.velocity(x, t, inputs)
        v_pair = gen.velocity(torch.cat([x0, x0]), t0, inputs)  # GRPO groups: B rollouts share one request
    torch.testing.assert_close(v_pair[1:], v_pair[:1], rtol=1e-5, atol=1e-5)
    assert np.array_equal(gen.decode(x, inputs).frames, gen.generate(req).frames)


def test_flow_module_drives_the_adapter(tiny_dirs):
    """``spiral.flow.sample`` (σ in [0, 1]) through ``flow_fn`` gives the pipeline's video."""
    from spiral import flow

    gen = adapter("wan21-i2v", tiny_dirs["wan21-i2v"], scheduler="FlowMatchEulerDiscreteScheduler",
                  scheduler_kwargs={"shift": 3.0})
    req = request(frame(5))
    inputs = gen.prepare(req)
    x, _, _ = flow.sample(gen.flow_fn(inputs), inputs.latents, inputs.sigmas, mode="ode")
    assert np.abs(gen.decode(x, inputs).frames.astype(int) - gen.generate(req).frames.astype(int)).max() <= 1


def test_default_unipc_schedule_is_a_flow_schedule(tiny_dirs):
    inputs = adapter("wan21-i2v", tiny_dirs["wan21-i2v"]).prepare(request(frame(1)))
    assert type(adapter("wan21-i2v", tiny_dirs["wan21-i2v"]).scheduler).__name__ == "UniPCMultistepScheduler"
    assert float(inputs.sigmas[0]) == pytest.approx(1.0, abs=1e-4) and float(inputs.sigmas[-1]) == 0.0
    torch.testing.assert_close(inputs.timesteps.float() / 1000, inputs.sigmas[:-1], atol=2e-3, rtol=0)


# ----------------------------------------------------------------------------------------------- errors


def test_bad_model_path_names_the_path_and_the_fix(tmp_path):
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=r"model path .*nope does not exist; fix: set generator.options.model"):
        registry.create("generator", "wan21-i2v", model=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        registry.create("generator", "ltx-i2v", model=str(tmp_path / "empty"))
    assert time.perf_counter() - start < 5


def test_unknown_hub_id_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=r"'spiral-test/no-such-model' is not in the local Hugging Face cache"):
        registry.create("generator", "ltx-i2v", model="spiral-test/no-such-model")
    assert time.perf_counter() - start < 10


def test_missing_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers → ImportError
    with pytest.raises(ImportError, match=r"pip install 'spiral-video\[diffusers\]'"):
        registry.create("generator", "wan21-i2v", model="x")


def test_wrong_class_and_wrong_checkpoint(tiny_dirs):
    with pytest.raises(ValueError, match="did you mean"):
        registry.create("generator", "diffusers", model=tiny_dirs["ltx-i2v"], pipeline_class="LTXImageToVideoPipelin")
    with pytest.raises(ValueError, match="not a Wan 2.2 TI2V checkpoint"):
        registry.create("generator", "wan22-ti2v", model=tiny_dirs["wan21-i2v"])
    with pytest.raises(ValueError, match="needs options.pipeline_class"):
        registry.create("generator", "diffusers", model=tiny_dirs["ltx-i2v"])
    with pytest.raises(ValueError, match="no conditioning frame"):
        adapter("ltx-i2v", tiny_dirs["ltx-i2v"]).generate(GenerationRequest(prompt="x"))


def test_generic_backend_by_pipeline_class(tiny_dirs):
    gen = adapter("diffusers", tiny_dirs["ltx-i2v"], pipeline_class="LTXImageToVideoPipeline",
                  call_kwargs={"frame_rate": 24})
    cond = frame(6)
    seg = gen.generate(request(cond))
    assert seg.frames.shape == (9, 64, 64, 3) and np.array_equal(seg.frames[0], cond) and seg.backend == "diffusers"


@pytest.mark.parametrize("config", ["wan21-i2v-qwen25vl-vllm", "wan22-ti2v", "cogvideox-i2v", "ltx-i2v"])
def test_example_gpu_configs(config):
    """The shipped GPU configs name real options and sizes each model accepts (nothing is loaded)."""
    from pathlib import Path

    from spiral.config import load_config

    cfg = load_config(Path(__file__).parent.parent / "configs" / "run" / f"{config}.yaml")
    cls = registry.resolve("generator", cfg.generator.name)
    assert set(cfg.generator.options) <= set(inspect.signature(cls.__init__).parameters)
    step, multiple = {"wan21-i2v": (4, 16), "wan22-ti2v": (4, 32), "cogvideox-i2v": (8, 16), "ltx-i2v": (8, 32)}[
        cfg.generator.name]
    v = cfg.video
    assert (v.frames_per_step - 1) % step == 0 and v.height % multiple == 0 and v.width % multiple == 0
    assert v.fps == cfg.generator.options["fps"] and cfg.generator.options["model"].count("/") == 1
    if cfg.generator.name == "cogvideox-i2v":
        assert (v.height, v.width) == (480, 720) and v.frames_per_step <= 49


def test_registry_names():
    classes = {n: registry.resolve("generator", n).__name__ for n in BACKENDS + ["diffusers"]}
    assert classes == {"wan21-i2v": "WanI2VAdapter", "wan22-ti2v": "Wan22TI2VAdapter",
                       "cogvideox-i2v": "CogVideoXI2VAdapter", "ltx-i2v": "LTXI2VAdapter", "diffusers": "DiffusersI2V"}


# ----------------------------------------------------------------------------------------------- end to end

GOAL = "put the red block in the box and switch on the lamp"  # 2 steps from scene 3


# the real tabletop critic (plan_only never asks it to judge, but the run builds it): if it cannot be built, the
# tests fail rather than run with a stand-in
CRITIC = "tabletop"


@pytest.mark.parametrize("name", BACKENDS)
def test_api_run_plan_only(tiny_dirs, tmp_path, name):
    from spiral.api import run
    from spiral.config import BackendConfig, Config, LoopConfig, VideoConfig
    from spiral.video import read_video

    cfg = Config(generator=BackendConfig(name=name, options={"model": tiny_dirs[name], "num_inference_steps": STEPS}),
                 critic=BackendConfig(name=CRITIC), loop=LoopConfig(mode="plan_only"),
                 video=VideoConfig(height=64, width=64, frames_per_step=9))
    record = run(GOAL, scene=3, config=cfg, out=tmp_path / "run")
    assert record.status == "completed_unverified" and record.counts["accepted"] == 2 == len(record.unverified)
    video = read_video(tmp_path / "run" / "final.mp4")
    assert video.shape == (1 + 2 * 8, 64, 64, 3)


@pytest.mark.parametrize("name", BACKENDS)
def test_cli_run_with_yaml_config(tiny_dirs, tmp_path, name):
    from typer.testing import CliRunner

    from spiral.cli import app

    cfg = tmp_path / "gen.yaml"
    cfg.write_text(f"generator:\n  name: {name}\n  options:\n    model: {tiny_dirs[name]}\n"
                   f"    num_inference_steps: 1\ncritic:\n  name: {CRITIC}\nloop:\n  mode: plan_only\n")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "switch on the lamp", "--scene", "3", "--config", str(cfg), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "final.mp4").is_file()


def test_cli_wrong_model_path_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from spiral.cli import app

    cfg = tmp_path / "gen.yaml"
    cfg.write_text(f"generator:\n  name: wan21-i2v\n  options:\n    model: {tmp_path / 'missing'}\n"
                   f"critic:\n  name: {CRITIC}\n")
    res = CliRunner().invoke(app, ["run", GOAL, "--scene", "3", "--config", str(cfg), "--out", str(tmp_path / "r"),
                                   "--mode", "plan_only"])
    assert res.exit_code == 2
    assert "does not exist; fix:" in res.output and "Traceback" not in res.output
