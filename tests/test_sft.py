"""``spiral train sft`` on tiny random-weight diffusers pipelines built in code and a small dataset written here
(real mp4 files, a real manifest): the loss falls, only the LoRA changes, resume is exact, the exported LoRA loads
with the pipeline's own ``load_lora_weights`` and in ``spiral run``, bad input is one line, and two torchrun ranks
(gloo) train on different examples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers", reason="needs the diffusers extra: pip install 'spiral-video[diffusers]'")
pytest.importorskip("peft", reason="needs the diffusers extra: pip install 'spiral-video[diffusers]'")

from spiral.generators.diffusers.testing import TINY_BUILDERS, save_tiny  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
BACKENDS = ["wan21-i2v", "cogvideox-i2v", "ltx-i2v", "wan22-ti2v"]
ROOT = Path(__file__).resolve().parents[1]


def make_dataset(root: Path, episodes: int = 1, frames: int = 12, size: int = 32) -> Path:
    """Episodes of a red square sliding right over a plain background, two annotated steps each."""
    from spiral.data.format import Episode, StepRecord, write_manifest
    from spiral.video import write_video

    (root / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    eps = []
    for e in range(episodes):
        video = np.zeros((frames, size, size, 3), np.uint8) + rng.integers(40, 200, 3).astype(np.uint8)
        for t in range(frames):
            x = 2 + (2 * t) % (size - 10)
            video[t, 10:18, x:x + 8] = (230, 30, 30)
        write_video(root / "videos" / f"ep{e}.mp4", video, fps=8)
        steps = [StepRecord(text="move the red block right", verb="move", objects=["red block"], start_frame=0,
                            end_frame=frames // 2 - 1),
                 StepRecord(text="move the red block further right", verb="move", objects=["red block"],
                            start_frame=frames // 2, end_frame=frames - 1)]
        eps.append(Episode(id=f"ep{e}", goal="move the red block to the right", video=f"videos/ep{e}.mp4", fps=8,
                           resolution=(size, size), steps=steps))
    write_manifest(root, eps)
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny_sft")
    return {name: str(save_tiny(name, root / name)) for name in TINY_BUILDERS}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("sft_data"))


def config(name: str, model: str, data: Path, out: Path, **kw):
    from spiral.train.sft import load_config

    sets = [f"generator.name={name}", f"generator.options.model={model}", f"data={data}", f"out={out}", "height=32",
            "width=32", "num_frames=9", "lora_rank=8", "lr=3e-3", "ckpt_every=1000"]
    return load_config(None, sets + [f"{k}={v}" for k, v in kw.items()])


# ------------------------------------------------------------------------------------------------ training


@pytest.mark.parametrize("name", BACKENDS)
def test_loss_falls_and_only_the_lora_changes(tiny, data, tmp_path, name):
    """40 LoRA steps on the two steps of one episode: the loss on fixed noise/timestep draws falls by ≥ 10 %;
    the LoRA weights moved, every other weight of the pipeline is bit-identical."""
    from spiral.train.sft import SFTTrainer

    tr = SFTTrainer(config(name, tiny[name], data, tmp_path / "run", steps=40, cache_latents=True))
    frozen = {f"{c}.{n}": p.detach().clone() for c, m in tr.adapter.pipe.components.items()
              if isinstance(m, torch.nn.Module) for n, p in m.named_parameters() if "lora_" not in n}
    lora = {n: p.detach().clone() for n, p in tr.params.items()}
    assert lora and all("lora_" in n for n in lora)
    before = tr.evaluate()
    tr.run()
    after = tr.evaluate()
    print(f"{name}: fixed-draw loss {before:.4f} -> {after:.4f}")
    assert after < 0.9 * before, (before, after)
    assert all(not torch.equal(p, lora[n]) for n, p in tr.params.items() if "lora_B" in n)
    now = {f"{c}.{n}": p for c, m in tr.adapter.pipe.components.items()
           if isinstance(m, torch.nn.Module) for n, p in m.named_parameters() if "lora_" not in n}
    assert now.keys() == frozen.keys() and all(torch.equal(now[k], frozen[k]) for k in frozen)
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 41)) and all(np.isfinite(r["loss"]) for r in log)


def test_targets_are_what_the_schedulers_integrate():
    """The flow target is the velocity the pipeline's FlowMatchEuler step follows (a step from x_σ with it lands on
    x_σ' of the same x0, ε); the v target is what CogVideoX's DDIM step reads back as the clean latents."""
    from diffusers import CogVideoXDDIMScheduler, FlowMatchEulerDiscreteScheduler

    from spiral.generators.diffusers.testing import build_cogvideox_i2v
    from spiral.train.sft import flow_pair, v_pair

    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(1, 4, 3, 4, 4, generator=gen), torch.randn(1, 4, 3, 4, 4, generator=gen)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(8)
    for i in (0, 3, 6):
        x, target = flow_pair(x0, noise, sched.sigmas[i:i + 1])
        sched._step_index = None
        sched._init_step_index(sched.timesteps[i])
        nxt = sched.step(target, sched.timesteps[i], x).prev_sample
        torch.testing.assert_close(nxt, flow_pair(x0, noise, sched.sigmas[i + 1:i + 2])[0], rtol=1e-4, atol=1e-5)
    ddim = build_cogvideox_i2v().scheduler
    assert isinstance(ddim, CogVideoXDDIMScheduler)
    ddim.set_timesteps(10)
    for t in ddim.timesteps[1:4]:
        noisy, v = v_pair(ddim, x0, noise, t.reshape(1))
        torch.testing.assert_close(ddim.step(v, t, noisy).pred_original_sample, x0, rtol=1e-4, atol=1e-4)


def test_a_run_folder_is_not_overwritten_but_one_without_a_checkpoint_starts_over(tiny, data, tmp_path):
    from spiral.train.sft import SFTTrainer

    SFTTrainer(config("ltx-i2v", tiny["ltx-i2v"], data, tmp_path / "run", steps=1)).run()
    with pytest.raises(FileExistsError, match="--resume to continue it"):
        SFTTrainer(config("ltx-i2v", tiny["ltx-i2v"], data, tmp_path / "run", steps=1))
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "config.json").write_text("{}")  # a run that died before its first checkpoint
    assert SFTTrainer(config("ltx-i2v", tiny["ltx-i2v"], data, tmp_path / "fresh", steps=1)).run()["steps"] == 1


def test_bf16_model_trains_a_float32_lora(tiny, data, tmp_path):
    """generator.options.dtype: bfloat16 keeps the model in bf16 and trains float32 LoRA weights (diffusers'
    cast_training_params); the loss still falls."""
    from spiral.train.sft import SFTTrainer

    tr = SFTTrainer(config("ltx-i2v", tiny["ltx-i2v"], data, tmp_path / "run", steps=10, cache_latents=True,
                           **{"generator.options.dtype": "bfloat16"}))
    assert tr.model.dtype == torch.bfloat16 and {p.dtype for p in tr.params.values()} == {torch.float32}
    before = tr.evaluate()
    tr.run()
    assert tr.evaluate() < 0.95 * before


@pytest.mark.parametrize("name", ["wan21-i2v", "cogvideox-i2v"])
def test_resume_takes_exactly_the_next_step(tiny, data, tmp_path, name):
    """4 steps straight vs 2 steps + --resume to 4: the same losses for steps 3 and 4 (noise, timesteps, data order
    and optimizer state all come back)."""
    from spiral.train.sft import SFTTrainer

    straight = SFTTrainer(config(name, tiny[name], data, tmp_path / "a", steps=4)).run()["losses"]
    SFTTrainer(config(name, tiny[name], data, tmp_path / "b", steps=2)).run()
    resumed = SFTTrainer(config(name, tiny[name], data, tmp_path / "b", steps=4), resume=True).run()["losses"]
    assert len(resumed) == 2
    np.testing.assert_allclose(resumed, straight[2:], rtol=1e-5)
    assert straight[2] != straight[3]


def test_one_process_steps_are_the_plain_torch_steps(tiny, data, tmp_path):
    """Without torchrun, accelerate's path (accumulate over batch_size micro-batches, backward, clip, step) computes
    exactly the plain loop: each example's loss / batch_size backward, then clip, AdamW and EMA once per step. Same
    seed, same model: the same losses and the same weights after three steps."""
    from spiral.train.sft import SFTTrainer, flow_matching_loss

    kw = {"steps": 3, "batch_size": 2, "ema_decay": 0.9, "warmup_steps": 2, "cache_latents": True}
    res = (tr := SFTTrainer(config("wan21-i2v", tiny["wan21-i2v"], data, tmp_path / "a", **kw))).run()
    ref = SFTTrainer(config("wan21-i2v", tiny["wan21-i2v"], data, tmp_path / "b", **kw))
    assert ref.wrapped is ref.model and ref.adapter.denoiser_wrapper is None  # one process: nothing wraps it
    cfg, params = ref.cfg, list(ref.params.values())
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=cfg.eps)
    ema = {n: p.detach().clone() for n, p in ref.params.items()}
    losses = []
    for step in range(cfg.steps):
        ref.model.train()
        for g in opt.param_groups:
            g["lr"] = ref.lr_at(step)
        total = 0.0
        for micro in range(cfg.batch_size):
            inputs, x0 = ref._inputs(ref.order(step, micro))
            loss, _ = flow_matching_loss(ref.adapter, inputs, x0, cfg, ref.generator)
            (loss / cfg.batch_size).backward()
            total += float(loss.detach()) / cfg.batch_size
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        for n, p in ref.params.items():
            ema[n] += (1 - cfg.ema_decay) * (p.detach() - ema[n])
        losses.append(total)
    np.testing.assert_allclose(res["losses"], losses, rtol=1e-6)
    assert len(set(losses)) == 3
    for n, p in tr.params.items():
        torch.testing.assert_close(p, ref.params[n], rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(tr.ema[n], ema[n], rtol=1e-6, atol=1e-8)


def test_mixed_precision_bf16_runs_the_transformer_under_autocast(tiny, data, tmp_path):
    """mixed_precision: bf16 (accelerate's autocast): the transformer's layers compute in bf16 while its weights
    and the LoRA stay float32, the loss comes back float32 and the step trains; the default computes in float32."""
    from spiral.train.sft import SFTTrainer

    def layer_dtypes(tr) -> set[torch.dtype]:
        seen: set[torch.dtype] = set()
        layer = next(m for n, m in tr.model.named_modules() if n.endswith("attn1.to_q"))
        handle = layer.register_forward_hook(lambda mod, args, out: seen.add(out.dtype))
        rec = tr.train_step()
        handle.remove()
        assert np.isfinite(rec["loss"]) and rec["grad_norm"] > 0
        return seen

    tr = SFTTrainer(config("wan21-i2v", tiny["wan21-i2v"], data, tmp_path / "bf16", mixed_precision="bf16"))
    assert layer_dtypes(tr) == {torch.bfloat16}
    assert {p.dtype for p in tr.model.parameters()} == {torch.float32}
    plain = SFTTrainer(config("wan21-i2v", tiny["wan21-i2v"], data, tmp_path / "fp32"))
    assert layer_dtypes(plain) == {torch.float32}


def test_full_fine_tuning_with_ema_exports_a_pipeline_and_samples(tiny, data, tmp_path):
    """mode: full trains every transformer weight (nothing else), exports the EMA weights as a pipeline folder
    that loads as generator.options.model, and writes the validation samples it was asked for."""
    from spiral import registry
    from spiral.train.sft import SFTTrainer

    tr = SFTTrainer(config("ltx-i2v", tiny["ltx-i2v"], data, tmp_path / "run", mode="full", steps=3, lr=1e-3,
                           ema_decay=0.5, sample_every=3, sample_steps=1))
    start = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    vae = {n: p.detach().clone() for n, p in tr.adapter.pipe.vae.named_parameters()}
    assert tr.params.keys() == start.keys()
    res = tr.run()
    assert all(torch.equal(p, vae[n]) for n, p in tr.adapter.pipe.vae.named_parameters())
    assert sum(not torch.equal(p, start[n]) for n, p in tr.model.named_parameters()) > len(start) // 2
    assert (tmp_path / "run" / "samples" / "step_000003.mp4").is_file()
    exported = registry.create("generator", "ltx-i2v", model=res["export"]).pipe.transformer.state_dict()
    ema = tr.ema.state_dict()
    assert all(torch.equal(exported[n], ema[n]) for n in ema) and any(not torch.equal(ema[n], start[n]) for n in ema)


def test_prompt_is_composed_like_the_loop(tiny, data, tmp_path):
    """The trainer's text is Memory's composition of the step after the earlier steps, shaped by the adapter."""
    from spiral.memory import Memory
    from spiral.train.sft import load_examples
    from spiral.types import SubAction

    cfg = config("wan21-i2v", tiny["wan21-i2v"], data, tmp_path / "r")
    second = load_examples(cfg)[1]
    mem = Memory.start(np.zeros((8, 8, 3), np.uint8))
    mem.commit(np.zeros((2, 8, 8, 3), np.uint8), SubAction(text="move the red block right", verb="move",
                                                            objects=["red block"]), None, None)
    assert second.context == mem.prompt("move the red block further right")
    assert second.cond_index == 6 and second.frames(9) == [6, 7, 7, 8, 8, 9, 10, 10, 11]
    prev = load_examples(config("wan21-i2v", tiny["wan21-i2v"], data, tmp_path / "r", condition="previous_last"))
    assert prev[1].cond_index == 5 and prev[0].cond_index == 0  # step 0 ends at frame 5, step 1 starts at 6


# ------------------------------------------------------------------------------------------------ the LoRA


@pytest.fixture(scope="module")
def trained(tiny, data, tmp_path_factory) -> dict[str, Path]:
    """A LoRA trained for a few steps per backbone (exported by the trainer)."""
    from spiral.train.sft import train_sft

    out = {}
    for name in ("wan21-i2v", "cogvideox-i2v"):
        run = tmp_path_factory.mktemp(f"lora_{name}")
        res = train_sft(config(name, tiny[name], data, run / "run", steps=6, lr=2e-2))
        out[name] = Path(res["export"])
    return out


@pytest.mark.parametrize("name", ["wan21-i2v", "cogvideox-i2v"])
def test_exported_lora_loads_with_load_lora_weights_and_changes_the_output(tiny, trained, name):
    from diffusers import DiffusionPipeline

    from spiral.generators.diffusers.lora import WEIGHT_NAME

    assert (trained[name] / WEIGHT_NAME).is_file()

    def video(lora: bool) -> np.ndarray:
        pipe = DiffusionPipeline.from_pretrained(tiny[name])
        pipe.set_progress_bar_config(disable=True)
        if lora:
            pipe.load_lora_weights(str(trained[name]))
        from PIL import Image

        image = Image.fromarray(np.full((32, 32, 3), 120, np.uint8))
        return pipe(image=image, prompt="move the red block right", height=32, width=32, num_frames=9,
                    num_inference_steps=2, guidance_scale=1.0, output_type="np",
                    generator=torch.Generator().manual_seed(0)).frames[0]

    base, tuned = video(False), video(True)
    assert np.abs(base - tuned).mean() > 1e-3


def test_lora_option_scales_the_adapter(tiny, trained):
    """generator.options.lora: scale 0 gives the base model's video, scale 1 another one."""
    from spiral import registry
    from spiral.types import GenerationRequest

    req = GenerationRequest(prompt="move the red block right", cond_frame=np.full((32, 32, 3), 120, np.uint8),
                            seed=3, num_frames=9, height=32, width=32)
    path = str(trained["wan21-i2v"])

    def frames(**kw) -> np.ndarray:
        gen = registry.create("generator", "wan21-i2v", model=tiny["wan21-i2v"], num_inference_steps=2, **kw)
        return gen.generate(req).frames.astype(int)

    base = frames()
    assert np.array_equal(frames(lora=[{"path": path, "scale": 0.0}]), base)
    assert np.abs(frames(lora=[{"path": path, "scale": 1.0}]) - base).mean() > 0.05


def test_spiral_run_with_the_lora_option(tiny, trained, tmp_path):
    from typer.testing import CliRunner

    from spiral.cli import app

    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"generator:\n  name: wan21-i2v\n  options:\n    model: {tiny['wan21-i2v']}\n"
                   f"    num_inference_steps: 1\n    lora:\n      - path: {trained['wan21-i2v']}\n        scale: 0.8\n"
                   "loop:\n  mode: plan_only\n")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "switch on the lamp", "--scene", "3", "--config", str(cfg), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "final.mp4").is_file()
    assert "scale: 0.8" in (out / "config.yaml").read_text()


# ------------------------------------------------------------------------------------------------ bad input


def _cli(args: list[str]):
    from typer.testing import CliRunner

    from spiral.cli import app

    return CliRunner().invoke(app, args)


def test_lora_of_another_architecture_is_one_line(tiny, trained, tmp_path):
    """A CogVideoX LoRA given to Wan: one line naming the file and the fix, exit 2, no run folder."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"generator:\n  name: wan21-i2v\n  options:\n    model: {tiny['wan21-i2v']}\n"
                   f"    lora:\n      - path: {trained['cogvideox-i2v']}\nloop:\n  mode: plan_only\n")
    res = _cli(["run", "switch on the lamp", "--scene", "3", "--config", str(cfg), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "does not fit Wan 2.1 I2V" in text and "fix:" in text and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


def test_lora_with_layers_the_model_lacks_is_refused(tiny, trained, tmp_path):
    """A LoRA that fits only in part (here: a Wan LoRA plus layers of a deeper Wan) is refused, not half-loaded
    with a warning as diffusers would."""
    from safetensors.torch import load_file, save_file

    from spiral import registry
    from spiral.generators.diffusers.lora import WEIGHT_NAME

    tensors = load_file(str(trained["wan21-i2v"] / WEIGHT_NAME))
    deeper = {k.replace("transformer.blocks.1.", "transformer.blocks.7."): v.clone() for k, v in tensors.items()
              if k.startswith("transformer.blocks.1.")}
    (tmp_path / "deeper").mkdir()
    save_file({**tensors, **deeper}, str(tmp_path / "deeper" / WEIGHT_NAME))
    with pytest.raises(ValueError, match=r"does not fit Wan 2.1 I2V: \d+ of its \d+ layers are not in this model"):
        registry.create("generator", "wan21-i2v", model=tiny["wan21-i2v"], lora=[{"path": str(tmp_path / "deeper")}])


def test_bad_sft_configs_are_one_line(tiny, data, tmp_path):
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(f"data: {data}\nout: {tmp_path / 'o'}\ngenerator:\n  name: tiny\n")
    res = _cli(["train", "sft", "--config", str(cfg)])
    assert res.exit_code == 2 and "cannot be fine-tuned" in res.output and "wan21-i2v" in res.output, res.output
    cfg.write_text(f"data: {data}\nout: {tmp_path / 'o'}\ngenerator:\n  name: wan21-i2v\n  options:\n"
                   f"    model: {tiny['wan21-i2v']}\n    device: cuda\n")
    if not torch.cuda.is_available():
        res = _cli(["train", "sft", "--config", str(cfg)])
        assert res.exit_code == 2 and "fix: set generator.options.device: cpu" in " ".join(res.output.split())
        assert "Traceback" not in res.output and not (tmp_path / "o").exists()
    cfg.write_text(f"data: {tmp_path / 'nodata'}\nout: {tmp_path / 'o'}\ngenerator:\n  name: wan21-i2v\n  options:\n"
                   f"    model: {tiny['wan21-i2v']}\n")
    res = _cli(["train", "sft", "--config", str(cfg)])
    assert res.exit_code == 2 and "no manifest.jsonl" in res.output and not (tmp_path / "o").exists()


def test_fsdp_with_full_fine_tuning_is_one_line(tiny, data, tmp_path):
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(f"data: {data}\nout: {tmp_path / 'o'}\ngenerator:\n  name: wan21-i2v\n  options:\n"
                   f"    model: {tiny['wan21-i2v']}\nmode: full\ndistributed: fsdp\n")
    res = _cli(["train", "sft", "--config", str(cfg)])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "distributed: fsdp trains LoRA only" in text and "fix: mode: lora" in text, text
    assert "Traceback" not in res.output and not (tmp_path / "o").exists()


def test_offloading_is_refused_with_several_processes(tiny, data, tmp_path):
    from spiral.train.sft import check_processes

    for offload in ("model", "group"):
        cfg = config("ltx-i2v", tiny["ltx-i2v"], data, tmp_path / "o", **{"generator.options.cpu_offload": offload})
        check_processes(cfg, 1)  # one process: offloading is how a large model fits
        with pytest.raises(ValueError, match=f"cpu_offload: {offload} cannot be combined with 2 processes.*fix: drop"):
            check_processes(cfg, 2)
    check_processes(config("ltx-i2v", tiny["ltx-i2v"], data, tmp_path / "o"), 2)


def test_cuda_and_dtype_mistakes_name_the_fix(tiny):
    from spiral import registry

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="fix: set generator.options.device: cpu"):
            registry.create("generator", "ltx-i2v", model=tiny["ltx-i2v"], device="cuda")
    with pytest.raises(ValueError, match=r"float16 does not run on the CPU .*; fix"):
        registry.create("generator", "ltx-i2v", model=tiny["ltx-i2v"], device="cpu", dtype="float16")


def test_group_offload_gives_the_same_video_and_compile_reaches_torch(tiny):
    """cpu_offload: group installs diffusers' group-offloading hooks (on this CPU machine they onload to the CPU)
    and changes nothing in the video; compile: true compiles the transformer in place (lazily: the first segment
    compiles it, not timed here)."""
    from spiral import registry
    from spiral.types import GenerationRequest

    req = GenerationRequest(prompt="open the box", cond_frame=np.full((32, 32, 3), 90, np.uint8), seed=5,
                            num_frames=9, height=32, width=32)
    plain = registry.create("generator", "ltx-i2v", model=tiny["ltx-i2v"], num_inference_steps=2)
    grouped = registry.create("generator", "ltx-i2v", model=tiny["ltx-i2v"], num_inference_steps=2,
                              cpu_offload="group")
    assert any(hasattr(m, "_diffusers_hook") for m in grouped.pipe.transformer.modules())
    assert np.array_equal(grouped.generate(req).frames, plain.generate(req).frames)
    compiled = registry.create("generator", "ltx-i2v", model=tiny["ltx-i2v"], compile=True)
    assert compiled.pipe.transformer._compiled_call_impl is not None and plain.pipe.transformer._compiled_call_impl \
        is None


def test_out_of_memory_is_one_line_and_the_run_resumes(tiny, tmp_path, monkeypatch):
    """The GPU running out during a segment (raised here by the pipeline call, as CUDA raises it) ends `spiral run`
    with one line naming the fixes, exit 2, and a run folder that --resume continues."""
    from diffusers import WanImageToVideoPipeline

    def out_of_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"generator:\n  name: wan21-i2v\n  options:\n    model: {tiny['wan21-i2v']}\n"
                   "    num_inference_steps: 1\nloop:\n  mode: plan_only\n")
    with monkeypatch.context() as m:
        m.setattr(WanImageToVideoPipeline, "__call__", out_of_memory)
        res = _cli(["run", "switch on the lamp", "--scene", "3", "--config", str(cfg), "--out", str(tmp_path / "r")])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "out of GPU memory generating" in text and "fix: generator.options.cpu_offload" \
        in text and "Traceback" not in res.output, res.output
    res = _cli(["run", "--resume", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "final.mp4").is_file()


# ------------------------------------------------------------------------------------------------ torchrun


def test_each_torchrun_rank_takes_its_own_gpu(monkeypatch):
    """LOCAL_RANK maps cuda (and auto on a CUDA machine) to cuda:<LOCAL_RANK>; cpu stays; no torchrun, no change.
    (CUDA's presence is faked: this machine has none; the mapping is what is tested.)"""
    from spiral.train.common import rank_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert rank_device("cuda") == "cuda" and rank_device("auto") == "auto"
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert (rank_device("cuda"), rank_device("auto"), rank_device("cpu")) == ("cuda:3", "cuda:3", "cpu")


def test_torchrun_two_ranks_train_on_different_examples(tiny, tmp_path):
    """``torchrun --nproc_per_node 2`` (gloo on CPU): each step the two ranks train on different examples, the
    run exports one LoRA."""
    data = make_dataset(tmp_path / "data", episodes=2)
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(f"data: {data}\nout: {tmp_path / 'run'}\ngenerator:\n  name: wan21-i2v\n  options:\n"
                   f"    model: {tiny['wan21-i2v']}\nheight: 32\nwidth: 32\nnum_frames: 9\nlora_rank: 4\nsteps: 2\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "spiral.cli", "train", "sft", "--config", str(cfg), "--threads", "1"],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    for r in log:
        assert len(r["examples"]) == 2 and set(r["examples"][0]).isdisjoint(r["examples"][1]), r["examples"]
    assert (tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors").is_file()


# the runs of one torchrun launch, one after another in the same two processes; each rank writes what it holds
RANKS_SCRIPT = """
import json, sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.distributed.tensor import DTensor

from spiral.train.common import end_distributed
from spiral.train.sft import SFTTrainer, load_config

torch.set_num_threads(1)
for run in json.loads(Path(sys.argv[1]).read_text()):
    tr = SFTTrainer(load_config(None, run["sets"]), resume=run.get("resume", False))
    res = tr.run()
    whole = {{n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone() for n, p in tr.params.items()}}
    dump = Path(run["dump"])
    dump.mkdir(parents=True, exist_ok=True)
    save_file(whole, str(dump / f"rank{{tr.rank}}.safetensors"))
    local = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in tr.params.values())
    info = {{"world": tr.world, "type": tr.accelerator.distributed_type.value, "wrapped": type(tr.wrapped).__name__,
            "model": type(tr.model).__name__, "local_numel": local, "numel": sum(t.numel() for t in whole.values()),
            "losses": res["losses"], "export": res["export"]}}
    (dump / f"rank{{tr.rank}}.json").write_text(json.dumps(info))
end_distributed()  # as `spiral train sft` ends: without it a rank could abort at exit after a finished run
"""


def torchrun(tmp_path: Path, runs: list[dict], timeout: int = 400) -> None:
    """``torchrun --standalone --nproc_per_node 2`` of RANKS_SCRIPT over ``runs`` (gloo on this CPU machine)."""
    script, spec = tmp_path / "sft_ranks.py", tmp_path / "runs.json"
    script.write_text(textwrap.dedent(RANKS_SCRIPT).format())
    spec.write_text(json.dumps(runs))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(spec)], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def ranks(dump: Path) -> tuple[list[dict], list[dict[str, torch.Tensor]]]:
    from safetensors.torch import load_file

    return ([json.loads((dump / f"rank{r}.json").read_text()) for r in (0, 1)],
            [load_file(str(dump / f"rank{r}.safetensors")) for r in (0, 1)])


def sets(name: str, model: str, data: Path, out: Path, **kw) -> list[str]:
    return [f"generator.name={name}", f"generator.options.model={model}", f"data={data}", f"out={out}", "height=32",
            "width=32", "num_frames=9", "lora_rank=4", "lr=1e-2", "ckpt_every=1000", "tensorboard=false",
            *[f"{k}={v}" for k, v in kw.items()]]


def test_torchrun_ddp_and_fsdp_keep_the_ranks_in_step(tiny, tmp_path):
    """Two gloo ranks on different examples: DDP (accelerate's DistributedDataParallel) leaves both ranks with
    identical trained weights that moved; FSDP (accelerate's FSDP2 plugin) really shards them (each rank holds
    part of every LoRA tensor), follows the same losses as DDP (the same averaged gradients), exports a LoRA that
    diffusers' load_lora_weights reads, samples, and resumes onto the straight run's next loss."""
    data = make_dataset(tmp_path / "data", episodes=2)
    wan = tiny["wan21-i2v"]
    torchrun(tmp_path, [
        {"sets": sets("wan21-i2v", wan, data, tmp_path / "ddp", steps=3), "dump": str(tmp_path / "d_ddp")},
        *[{"sets": sets(name, tiny[name], data, tmp_path / name, steps=2), "dump": str(tmp_path / f"d_{name}")}
          for name in ("cogvideox-i2v", "ltx-i2v")],  # each adapter's transformer call goes through the wrapper
        {"sets": sets("wan21-i2v", wan, data, tmp_path / "fsdp", steps=3, distributed="fsdp", ema_decay=0.5,
                      sample_every=3, sample_steps=1), "dump": str(tmp_path / "d_fsdp")},
        {"sets": sets("wan21-i2v", wan, data, tmp_path / "fsdp2", steps=2, distributed="fsdp", ema_decay=0.5),
         "dump": str(tmp_path / "d_half")},
        {"sets": sets("wan21-i2v", wan, data, tmp_path / "fsdp2", steps=3, distributed="fsdp", ema_decay=0.5),
         "resume": True, "dump": str(tmp_path / "d_resumed")},
    ])
    info, weights = ranks(tmp_path / "d_ddp")
    assert [i["type"] for i in info] == ["MULTI_CPU"] * 2 and info[0]["wrapped"] == "DistributedDataParallel"
    assert weights[0].keys() == weights[1].keys() and all("lora_" in n for n in weights[0])
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[0])  # gradients were synchronised
    assert sum(bool(t.abs().sum() > 0) for n, t in weights[0].items() if "lora_B" in n) > 0  # and it trained
    log = [json.loads(x) for x in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(set(r["examples"][0]).isdisjoint(r["examples"][1]) for r in log)
    for name in ("cogvideox-i2v", "ltx-i2v"):
        _, w = ranks(tmp_path / f"d_{name}")
        assert w[0] and all(torch.equal(w[0][n], w[1][n]) for n in w[0]), name
        assert any(t.abs().sum() > 0 for n, t in w[0].items() if "lora_B" in n), name

    finfo, fweights = ranks(tmp_path / "d_fsdp")
    assert [i["type"] for i in finfo] == ["FSDP"] * 2 and finfo[0]["model"].startswith("FSDP")
    assert all(0 < i["local_numel"] < i["numel"] for i in finfo)  # each rank holds a shard
    assert finfo[0]["local_numel"] + finfo[1]["local_numel"] == finfo[0]["numel"]
    np.testing.assert_allclose(finfo[0]["losses"], info[0]["losses"], rtol=1e-4)
    for n in weights[0]:
        torch.testing.assert_close(fweights[0][n], weights[0][n], rtol=1e-3, atol=1e-5)
    assert (tmp_path / "fsdp" / "samples" / "step_000003.mp4").is_file()
    from safetensors.torch import load_file

    ema = load_file(str(tmp_path / "fsdp" / "checkpoint" / "ema.safetensors"))  # gathered whole, not a shard
    assert ema.keys() == fweights[0].keys() and all(ema[n].shape == fweights[0][n].shape for n in ema)
    assert any(not torch.equal(ema[n], fweights[0][n]) for n in ema if "lora_B" in n)  # an average, not the live
    from diffusers import DiffusionPipeline

    from spiral.generators.diffusers.lora import WEIGHT_NAME

    exported = load_file(str(tmp_path / "fsdp" / "lora" / WEIGHT_NAME))
    assert exported.keys() == load_file(str(tmp_path / "ddp" / "lora" / WEIGHT_NAME)).keys()
    pipe = DiffusionPipeline.from_pretrained(wan)
    pipe.load_lora_weights(str(tmp_path / "fsdp" / "lora"))
    lora_b = {n: p for n, p in pipe.transformer.named_parameters() if "lora_B" in n}
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b.values())

    half, resumed = ranks(tmp_path / "d_half")[0], ranks(tmp_path / "d_resumed")[0]
    assert len(resumed[0]["losses"]) == 1 and half[0]["losses"] == pytest.approx(finfo[0]["losses"][:2], rel=1e-5)
    assert resumed[0]["losses"][0] == pytest.approx(finfo[0]["losses"][2], rel=1e-5)
