"""GRPO outside the tabletop world, and the agents' health checks, against real pieces end to end.

* ``spiral train grpo``'s config with ``planner`` / ``critic`` given as ``{name, options}``: the ``llm`` planner and the
  ``vlm`` critic on the loopback llama.cpp server (the tiny random GGUF of ``tests/llama_tools.py``), a tiny random
  Wan 2.1 I2V pipeline with LoRA as the policy, and prompts from an ActVideoGen-Dataset imported here from mp4s
  written here (``spiral.data.import_videos``, the generic JSONL schema). Two GRPO steps; then the exported LoRA
  loads in ``spiral run`` (``generator.options.lora``) and the run completes.
* The health check: a closed port fails ``spiral run`` and ``spiral train grpo`` in seconds with one line naming the
  URL, before the generator's constructor runs (a counting generator registered here); the live server passes.

The tiny server's chat template shows images as the text ``<image>``, so it cannot tell two rollouts of one prompt
apart by their pixels: with a fixed sampling seed every rollout of a group would get the same verdict. The critic
samples (temperature 1, no fixed seed), so its verdicts, and the rewards, vary within a group, as a real VLM's
would with the frames; what the test asserts holds whatever they are.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llama_tools  # noqa: E402

from spiral import registry  # noqa: E402
from spiral.cli import app  # noqa: E402

FAKE_KEY = "sk-spiral-grpo-test-5a6b7c8d"
KEY_ENV = "SPIRAL_TEST_GRPO_KEY"

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def client(base_url: str, **kw) -> dict:
    return llama_tools.client_options(base_url, KEY_ENV, **{"timeout": 60, "max_retries": 2, "max_tokens": 400, **kw})


def scene(rng: np.random.Generator, n: int, h: int = 48, w: int = 80) -> np.ndarray:
    """``n`` frames of a lit colour field with a soft blob that travels across it (a real-looking clip)."""
    y, x = np.mgrid[0:h, 0:w] / np.array([h - 1, w - 1])[:, None, None]
    base = np.stack([rng.uniform(40, 200) + rng.uniform(-60, 60) * x + rng.uniform(-60, 60) * y for _ in range(3)], -1)
    colour, (cy0, cx0), (cy1, cx1) = rng.uniform(0, 255, 3), rng.uniform(0.2, 0.8, 2), rng.uniform(0.2, 0.8, 2)
    out = []
    for t in np.linspace(0, 1, n):
        cy, cx = cy0 + (cy1 - cy0) * t, cx0 + (cx1 - cx0) * t
        blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * 0.12**2))[..., None]
        out.append(np.clip(base * (1 - blob) + colour * blob, 0, 255).astype(np.uint8))
    return np.stack(out)


def make_dataset(root: Path) -> Path:
    """Two mp4 episodes (3 s at 8 fps), two annotated steps each, imported with the JSONL importer."""
    from spiral.data.import_videos import ImportConfig, import_dataset
    from spiral.video import write_video

    rng = np.random.default_rng(0)
    episodes = [("tea", "make tea", ["boil the water", "pour the water into the cup"]),
                ("shelf", "put the cup on the shelf", ["pick up the cup", "place the cup on the shelf"])]
    lines = []
    for name, goal, steps in episodes:
        write_video(root / "videos" / f"{name}.mp4", scene(rng, 24), fps=8)
        lines.append(json.dumps({"episode": name, "video": f"{name}.mp4", "goal": goal,
                                 "steps": [{"text": steps[0], "start": 0.0, "end": 1.25},
                                           {"text": steps[1], "start": 1.5, "end": 2.75}]}))
    (root / "steps.jsonl").write_text("\n".join(lines) + "\n")
    res = import_dataset(ImportConfig(format="jsonl", source=root / "steps.jsonl", videos=root / "videos",
                                      out=root / "ds", parse_steps=False), progress=False)
    assert sorted(res.imported) == ["shelf", "tea"] and not res.skipped
    return root / "ds"


def grpo_yaml(path: Path, out: Path, wan: Path, data: Path, base_url: str, **over) -> Path:
    cfg = {"out": str(out), "steps": 2, "seed": 0, "generator": "diffusers", "diffusers_backend": "wan21-i2v",
           "diffusers_model": str(wan), "diffusers_options": {"dtype": "float32", "height": 32, "width": 48,
                                                              "num_frames": 5},
           "lora_rank": 4, "sample_steps": 3, "group_size": 2, "prompts_per_step": 1, "lr": 1e-2,
           "weight_decay": 0.0, "minibatches": 1, "eval_every": 0, "sample_every": 0, "ckpt_every": 0,
           "stages": [{"name": "single", "kind": "single"}],
           "prompts": {"source": "dataset", "path": str(data), "size": [32, 48]},
           "planner": {"name": "llm", "options": client(base_url, domain=None, max_steps=2)},
           "critic": {"name": "vlm", "options": client(base_url, temperature=1.0, seed=None, frames=2,
                                                       image_size=32)},
           **over}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_grpo_with_a_vlm_critic_llm_planner_and_dataset_prompts_trains_only_the_lora(server, key_env, tmp_path):
    pytest.importorskip("peft", reason="LoRA needs peft (the diffusers extra)")
    from spiral.generators.diffusers.testing import save_tiny
    from spiral.train.grpo import GRPOTrainer, load_config

    t0 = time.perf_counter()
    data = make_dataset(tmp_path)
    wan = save_tiny("wan21-i2v", tmp_path / "wan")
    cfg = load_config(grpo_yaml(tmp_path / "grpo.yaml", tmp_path / "run", wan, data, server.base_url))
    assert cfg.backend("critic")[0] == "vlm" and cfg.backend("planner")[1]["domain"] is None
    tr = GRPOTrainer(cfg, progress=False)
    assert tr.pool is not None and tr.pool.total == 2
    model = tr.policy.model
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    hist = tr.run()
    assert [r["step"] for r in hist] == [1, 2]
    for rec in hist:
        assert np.isfinite(rec["loss"]) and np.isfinite(rec["kl"]) and rec["skipped_updates"] == 0
        # the prompts are the dataset's episodes: step k of a planned episode, conditioned on annotated step k
        assert all(t.split("#")[0] in ("tea", "shelf") for t in rec["prompt_tasks"]), rec["prompt_tasks"]
        assert not any(k.startswith("gold_") for k in rec)  # the tabletop judge is not asked about real videos
    # the rewards are the critic's verdicts combined, and they vary within a group: advantages are not all zero
    ro = tr.last_rollout
    assert ro["adv"].abs().sum() > 0 or hist[0]["group_reward_std"] > 0, [r["group_reward_std"] for r in hist]
    assert all(0 <= r <= 1 for r in ro["rewards"].tolist())
    seg = ro["segments"][0]
    assert seg.frames.shape[1:] == (32, 48, 3)
    from spiral.data.format import check_dataset
    from spiral.train.grpo_prompts import fit
    from spiral.train.sft import read_frames

    episodes = {e.id: e for e in check_dataset(data).episodes}
    prompts = tr.sample_prompts(8, tr.stage, np.random.default_rng(5))
    for p in prompts:  # sub-action k of the plan, conditioned on the first frame of the episode's annotated step k
        ep = episodes[p.task]
        start = ep.steps[p.index].start_frame
        assert np.array_equal(p.cond_frame, fit(read_frames(data / ep.video, [start])[start], (32, 48))), p.index
        assert np.array_equal(p.anchor_frame, fit(read_frames(data / ep.video, [0])[0], (32, 48)))
        assert p.goal == ep.goal and p.state is None  # the VLM critic reads no states
        assert p.sub_action == tr.pool.plan([i for i, (_, r) in enumerate(tr.pool.refs) if r[1].id == p.task][0]
                                            ).steps[p.index]
    plan_lengths = [len(tr.pool.plan(i).steps) for i in range(2)]
    assert {p.index for p in prompts} == set(range(max(plan_lengths))), (plan_lengths, [p.index for p in prompts])
    # only the LoRA moved; every base weight is as loaded
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, base[n])}
    assert changed and all("lora_" in n for n in changed), sorted(changed)[:5]
    assert any("lora_B" in n for n in changed)
    # the exported LoRA loads in `spiral run` (generator.options.lora), which completes
    folder = tr.export(tmp_path / "run" / "evolved.safetensors")
    assert (folder / "pytorch_lora_weights.safetensors").is_file()
    train_s = time.perf_counter() - t0
    run_cfg = tmp_path / "run.yaml"
    run_cfg.write_text(yaml.safe_dump({
        "planner": {"name": "llm", "options": client(server.base_url, domain=None, max_steps=2)},
        "generator": {"name": "wan21-i2v", "options": {"model": str(wan), "dtype": "float32", "num_inference_steps": 2,
                                                       "lora": [{"path": str(folder), "scale": 1.0}]}},
        "critic": {"name": "vlm", "options": client(server.base_url, frames=2, image_size=32)},
        "video": {"height": 32, "width": 48, "frames_per_step": 5}, "output": {"report": False}}))
    from PIL import Image

    Image.fromarray(tr.pool.task(0).first).save(tmp_path / "first.png")
    res = CliRunner().invoke(app, ["run", "make tea", "--image", str(tmp_path / "first.png"), "--config", str(run_cfg),
                                   "--mode", "plan_only", "--out", str(tmp_path / "loop")], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "loop" / "record.json").read_text())
    # plan_only: every planned step generated once (with the LoRA), none checked by the critic
    assert record["status"] in ("success", "completed_unverified") and record["attempts"], record["status"]
    saved = yaml.safe_load((tmp_path / "loop" / "config.yaml").read_text())
    assert saved["generator"]["options"]["lora"][0]["path"] == str(folder)
    print(f"\nGRPO 2 steps + export: {train_s:.1f} s; spiral run with the LoRA: {time.perf_counter() - t0 - train_s:.1f} s;"
          f" plan lengths {plan_lengths}; last rewards {ro['rewards'].tolist()}")


# ------------------------------------------------------------------------------------------------ health checks


class CountingGenerator:
    """A generator whose constructor counts its calls (standing in for a pipeline that loads weights)."""

    built = 0

    def __init__(self, model: str = "", **options):
        type(self).built += 1

    def generate(self, request):  # pragma: no cover - never reached: the health check fails first
        raise AssertionError("the generator must not run")


@pytest.fixture
def counting():
    registry.register("generator", "counting-test")(CountingGenerator)
    CountingGenerator.built = 0
    yield CountingGenerator
    registry._REGISTERED["generator"].pop("counting-test", None)


def one_line(res) -> str:
    lines = [x for x in res.output.strip().splitlines() if x.strip()]
    assert res.exit_code not in (0, None) and len(lines) == 1, (res.exit_code, res.output)
    return lines[0]


def test_a_dead_endpoint_fails_spiral_run_in_seconds_before_the_generator_is_built(tmp_path, counting, key_env):
    dead = f"http://127.0.0.1:{llama_tools.free_port()}/v1"  # nothing listens there
    for role in ("critic", "planner"):
        t0 = time.perf_counter()
        args = ["run", "put the red block in the box", "--scene", "1", "--out", str(tmp_path / role),
                "--set", "generator.name=counting-test", "--set", f"{role}.name={'vlm' if role == 'critic' else 'llm'}",
                "--set", f"{role}.options.base_url={dead}", "--set", f"{role}.options.api_key_env={KEY_ENV}",
                "--set", f"{role}.options.timeout=30", "--set", f"{role}.options.max_retries=6"]
        res = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
        line = one_line(res)
        assert dead in line and "does not answer" in line and "base_url" in line and role in line, line
        assert time.perf_counter() - t0 < 10, "the check must not wait for the agent's own timeout and retries"
        assert counting.built == 0  # refused before any weights would load
        assert not (tmp_path / role).exists()


def test_a_dead_endpoint_fails_every_bench_case_before_the_generator_is_built(tmp_path, counting, key_env):
    dead = f"http://127.0.0.1:{llama_tools.free_port()}/v1"
    res = CliRunner().invoke(app, ["bench", "--suite", "tabletop-smoke", "--limit", "2", "--out", str(tmp_path / "b"),
                                   "--quiet", "--set", "generator.name=counting-test", "--set", "critic.name=vlm",
                                   "--set", f"critic.options.base_url={dead}"], env={"COLUMNS": "300"})
    assert res.exit_code != 0 and counting.built == 0, res.output
    cases = json.loads((tmp_path / "b" / "results.json").read_text())["cases"]
    assert len(cases) == 2 and all(dead in c["error"] and "does not answer" in c["error"] for c in cases), cases


def test_a_dead_endpoint_fails_train_grpo_before_the_policy_is_built(tmp_path, counting, key_env):
    dead = f"http://127.0.0.1:{llama_tools.free_port()}/v1"
    cfg = tmp_path / "grpo.yaml"
    cfg.write_text(yaml.safe_dump({"generator": "diffusers", "diffusers_backend": "counting-test",
                                   "diffusers_model": "never-loaded", "lora_rank": 4, "eval_every": 0,
                                   "critic": {"name": "vlm", "options": client(dead)}}))
    res = CliRunner().invoke(app, ["train", "grpo", "--config", str(cfg), "--out", str(tmp_path / "run")],
                             env={"COLUMNS": "300"})
    line = one_line(res)
    assert dead in line and "critic vlm" in line and "does not answer" in line, line
    assert counting.built == 0


def test_the_live_server_passes_the_health_check_and_a_wrong_key_is_named(server, key_env, monkeypatch):
    from spiral.agents import ChecksHealth, check_health

    critic = registry.create("critic", "vlm", **client(server.base_url))
    planner = registry.create("planner", "llm", **client(server.base_url, domain=None))
    assert isinstance(critic, ChecksHealth) and isinstance(planner, ChecksHealth)
    check_health(planner=planner, critic=critic)  # answers: nothing raised
    assert critic.client.stats["requests"] == 0  # the check is no chat request
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    bad = registry.create("critic", "vlm", **client(server.base_url))
    with pytest.raises(ValueError, match=f"critic vlm: .*{KEY_ENV}") as e:
        check_health(critic=bad)
    assert "sk-wrong" not in str(e.value)
    assert not isinstance(registry.create("critic", "tabletop"), ChecksHealth)  # nothing outside to check


def test_planner_and_critic_options_are_checked_when_the_grpo_config_loads(tmp_path):
    from spiral.train.grpo import GRPOConfig, load_config

    base = tmp_path / "c.yaml"
    for spec, want in (({"critic": {"name": "vlm", "options": {"modle": "x"}}}, "did you mean 'model'"),
                       ({"critic": "vlmm"}, "unknown critic backend 'vlmm'"),
                       ({"planner": {"name": "llm", "options": {"max_steps": "many"}}}, "max_steps"),
                       ({"prompts": {"source": "dataset"}}, "needs path"),
                       ({"prompts": {"source": "suite", "path": "x", "plan": "annotations"}}, "annotations"),
                       ({"prompts": {"source": "dataset", "path": "d"}, "heldout_moves": "only"}, "tabletop splits")):
        base.write_text(yaml.safe_dump(spec))
        with pytest.raises(ValueError, match=want):
            load_config(base)
    # a plain name (older configs) and {name, options} both load; the options come out coerced
    cfg = GRPOConfig(critic={"name": "vlm", "options": {"frames": "3", "base_url": "http://h:1/v1"}})
    assert cfg.backend("critic") == ("vlm", {"frames": 3, "base_url": "http://h:1/v1"})
    assert GRPOConfig(planner="symbolic").backend("planner") == ("symbolic", {})
    # the new prompts field left at its default does not change a run's identity (older runs still resume)
    plain = GRPOConfig()
    assert plain.identity() == GRPOConfig(prompts={"source": "tabletop"}).identity()
    assert plain.identity() != GRPOConfig(prompts={"source": "suite", "path": "tabletop-smoke"}).identity()
    assert GRPOConfig.from_saved(json.loads(plain.model_dump_json())).identity() == plain.identity()


# ------------------------------------------------------------------------------------------------ suite prompts


def test_suite_prompts_start_from_each_cases_first_frame_and_chain_later_steps(tmp_path, capsys):
    """A suite gives goal + first frame: single stages draw step 0 from the case's own first frame (no later frame
    is known), continuation stages condition step k ≥ 1 on the policy's chained outputs from that frame."""
    from test_grpo import tiny_policy

    from spiral.api import scene_frame
    from spiral.bench.suite import load_suite
    from spiral.train.grpo import GRPOConfig, GRPOTrainer, Stage

    cfg = GRPOConfig(out=str(tmp_path / "run"), steps=1, prompts_per_step=2, group_size=2, sample_steps=2,
                     sample_every=0, prompts={"source": "suite", "path": "tabletop-smoke", "limit": 6},
                     stages=[Stage(name="single", kind="single")])
    tr = GRPOTrainer(cfg, policy=tiny_policy())
    assert "gold evaluation" in capsys.readouterr().out  # said once, at the start
    cases = {c.id: c for c in load_suite("tabletop-smoke").cases[:6]}
    single = tr.sample_prompts(6, Stage(name="s", kind="single"), np.random.default_rng(1))
    for p in single:
        first, state = scene_frame(cases[p.task].scene, (64, 64))
        assert p.index == 0 and np.array_equal(p.cond_frame, first) and np.array_equal(p.anchor_frame, first)
        assert p.state == state and p.goal == cases[p.task].goal  # the tabletop critic's reading of the true scene
    chained = tr.sample_prompts(6, Stage(name="c", kind="continuation"), np.random.default_rng(1))
    assert any(p.index >= 1 for p in chained)
    for p in chained:
        if p.index >= 1:  # a frame the policy made, not the case's
            assert not np.array_equal(p.cond_frame, p.anchor_frame) and len(p.history) == p.index
    rec = tr.run()[-1]  # gold evaluation skipped (eval_every stays on), the step runs
    assert np.isfinite(rec["loss"]) and not any(k.startswith("gold_") for k in rec)
    assert all(t.split("#")[0] in cases for t in rec["prompt_tasks"])


def test_a_planner_that_cannot_read_a_real_goal_is_named(tmp_path):
    from test_judge_vlm import make_real_suite

    from spiral.train.grpo import GRPOConfig, GRPOTrainer

    suite = make_real_suite(tmp_path / "suite")
    from test_grpo import tiny_policy

    tr = GRPOTrainer(GRPOConfig(out=str(tmp_path / "run"), prompts={"source": "suite", "path": str(suite)}),
                     policy=tiny_policy(), progress=False)
    with pytest.raises(ValueError, match=r"planner symbolic cannot plan task 'real-\d'.*llm with domain null"):
        tr.sample_prompts(1, tr.stage, np.random.default_rng(0))


# ------------------------------------------------------------------------------------------------ torchrun

DIST_SCRIPT = """
import sys

import torch

torch.set_num_threads(1)
import torch.distributed as dist

from spiral.train.grpo import GRPOTrainer, load_config

tr = GRPOTrainer(load_config(sys.argv[1]), progress=False)
assert (tr.rank, tr.world) == (dist.get_rank(), 2) and dist.get_backend() == "gloo"
tr.run()
dist.barrier()
dist.destroy_process_group()
"""


def test_torchrun_two_ranks_draw_different_dataset_prompts(server, key_env, tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU): tiny Wan + LoRA, the VLM critic and the llm planner on the loopback
    server, dataset prompts; each rank draws from its own episodes and the averaged gradients keep the replicas equal."""
    import os
    import subprocess

    pytest.importorskip("peft", reason="LoRA needs peft (the diffusers extra)")
    from spiral.generators.diffusers.testing import save_tiny

    data = make_dataset(tmp_path)
    wan = save_tiny("wan21-i2v", tmp_path / "wan")
    out = tmp_path / "run"
    cfg = grpo_yaml(tmp_path / "grpo.yaml", out, wan, data, server.base_url)
    script = tmp_path / "grpo_dist.py"
    script.write_text(DIST_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(cfg)], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [[json.loads(x) for x in (out / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert [r["step"] for r in ranks[0]] == [r["step"] for r in ranks[1]] == [1, 2]
    episodes = [{t.split("#")[0] for r in rank for t in r["prompt_tasks"]} for rank in ranks]
    assert episodes[0] and episodes[1] and not episodes[0] & episodes[1], episodes  # disjoint shares of the dataset
    assert episodes[0] | episodes[1] <= {"tea", "shelf"}
    for r0, r1 in zip(*ranks):
        assert r0["param_sum"] == r1["param_sum"]  # the averaged gradients kept the replicas identical
    assert ranks[0][0]["param_sum"] != ranks[0][1]["param_sum"]  # and they did train
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["loss"]) for r in log)
