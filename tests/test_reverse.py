"""Hindsight by time reversal (``spiral.train.reverse``): which moves reverse, what the critic accepts, the fine-tune.

The collection runs the shipped tiny generator and the real critic on a few PlanAgent prompts; the fine-tune and the
end-to-end command run for two steps on small batches.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spiral.types import SubAction
from spiral.world import domain
from spiral.world.splits import is_heldout

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def sub(verb: str, *objects: str) -> SubAction:
    return SubAction(id=0, text=domain.Action(verb, objects).text(), verb=verb, objects=list(objects))


def test_inverse_move_puts_the_block_back_and_refuses_what_cannot_be_reversed():
    from spiral.train.reverse import inverse_move

    s = domain.State.make({"red_block": "left", "green_block": "center", "blue_block": "far_left",
                           "yellow_block": "right"}, box_open=True)
    assert inverse_move(sub("move", "yellow_block", "box"), s) == domain.Action("move", ("yellow_block", "right"))
    assert inverse_move(sub("move", "green_block", "red_block"), s) == domain.Action("move", ("green_block", "center"))
    assert inverse_move(sub("open", "box"), s) is None  # not a move
    at_far_right = domain.State.make({**s.locs, "red_block": "far_right"}, box_open=True)
    back = domain.Action("move", ("red_block", "far_right"))
    assert is_heldout("move", back.args)  # the way back is itself a held-out move: the generator cannot draw it
    assert inverse_move(sub("move", "red_block", "left"), at_far_right) is None
    closed = domain.State.make({**s.locs, "yellow_block": "box"}, box_open=False)
    assert inverse_move(sub("move", "yellow_block", "right"), closed) is None  # into a closed box: not applicable


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    from spiral.train.grpo import GRPOConfig, GRPOTrainer
    from spiral.train.reverse import ReverseConfig, collect

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reverse")
    trainer = GRPOTrainer(GRPOConfig(out=str(out / "collect"), eval_every=0, sample_every=0), progress=False)
    cfg = ReverseConfig(out=str(out), prompts=6, gen_batch=4)
    kept, stats = collect(trainer, cfg)
    return trainer, kept, stats


def test_collect_keeps_reversed_held_out_moves_that_end_on_the_picture_of_the_move_done(collected):
    """The shipped tiny generator cannot draw a held-out move, but the critic accepts its trained inverse played
    backwards as one."""
    trainer, kept, stats = collected
    assert stats["prompts"] == 6 and 0 < stats["reversible"] <= 6
    assert stats["accepted"] == len(kept) >= stats["reversible"] // 2
    assert sum(c["accepted"] for c in stats["per_move"].values()) == len(kept)
    for item in kept:
        verb, objects = item["action"]
        assert is_heldout(verb, objects)
        clip = item["clip"]
        assert clip.shape == (9, 64, 64, 3) and clip.dtype == np.uint8
        # the last frame is the generator's conditioning picture: the state with the held-out move done
        end = trainer.critic.observe(clip[-1])
        assert end.where(objects[0]) == objects[1]
        assert trainer.critic.observe(clip[0]).where(objects[0]) != objects[1]


def test_finetune_step_trains_on_reversed_and_replayed_clips_and_moves_the_ema(collected):
    from spiral.train.generator import ClipBank
    from spiral.train.reverse import Finetune, ReverseConfig
    from spiral.train.world_clips import render_world_clips

    trainer, kept, _ = collected
    model = trainer.policy.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train, _ = render_world_clips(4, 1, 9, 64, progress=False)
    replay = ClipBank.from_world(train, 8, 64)
    cfg = ReverseConfig(out="unused", batch=4, reverse_share=0.5, lr=1e-3, ema=0.5)
    ft = Finetune(cfg, model, trainer.policy.gen.text_encoder, kept, replay)
    rec = ft.step()
    assert all(np.isfinite(v) for v in rec.values())
    assert rec["loss_reversed"] > 0 and rec["loss_replay"] > 0
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed
    ema = ft.ema_state()
    n = changed[0]
    assert not torch.equal(ema[n], before[n]) and not torch.equal(ema[n], dict(model.named_parameters())[n])
    with pytest.raises(ValueError, match="no reversed clip"):
        Finetune(cfg, model, trainer.policy.gen.text_encoder, [], replay)


def test_run_reverse_exports_weights_that_load_and_refuses_to_overwrite(tmp_path):
    from spiral.models.tiny_video import load_weights
    from spiral.train.reverse import ReverseConfig, run_reverse

    cfg = ReverseConfig(out=str(tmp_path / "r"), prompts=3, replay="world:3:1", steps=2, batch=4, gen_batch=4,
                        log_every=1)
    res = run_reverse(cfg, progress=False)
    model, meta = load_weights(res["weights"])
    assert meta["reverse_steps"] == "2" and int(meta["reverse_clips"]) == res["accepted"] > 0
    assert meta["reverse_from"] == "tiny.safetensors" and "sampler" not in meta  # tiny samples unguided
    assert [json.loads(line)["step"] for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["accepted"] == res["accepted"]
    with pytest.raises(FileExistsError, match="already holds"):
        run_reverse(cfg, progress=False)
    with pytest.raises(ValueError, match="world:EPISODES"):
        run_reverse(cfg.model_copy(update={"out": str(tmp_path / "s"), "replay": "data/foo"}), progress=False)


def test_shipped_reverse_config_loads_and_bad_values_are_named(tmp_path):
    from pathlib import Path

    from pydantic import ValidationError

    from spiral.train.reverse import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs/train/reverse-tiny.yaml")
    assert cfg.moves == "heldout" and cfg.replay.startswith("world:") and cfg.steps > 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("prompt: 10\n")
    with pytest.raises(ValidationError, match="prompt"):
        load_config(bad)
    with pytest.raises(ValidationError, match="reverse_share"):
        load_config(Path(__file__).resolve().parents[1] / "configs/train/reverse-tiny.yaml", reverse_share=0)
