"""Held-out splits for the generator's generalization tests, defined once so training and evaluation agree.

* :data:`HELDOUT_MOVES` — (block, destination) combinations that never appear in generator
  training; the compositional-generalization eval measures step success on exactly these.
  Each block and each kind of destination (slot, block, box) appears once.
* Sub-action paraphrases — training sees the canonical :meth:`Action.text` and the ``train``
  wordings; the paraphrase-robustness eval uses only the ``eval`` wordings, which share no
  template with training.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

from spiral.world.domain import BLOCKS, BOX, SLOTS, Action, name

HELDOUT_MOVES: tuple[tuple[str, str], ...] = (
    ("red_block", "far_right"),
    ("blue_block", "left"),
    ("yellow_block", BOX),
    ("green_block", "red_block"),
)

Split = Literal["train", "eval"]


def is_heldout(verb: str, objects: Sequence[str]) -> bool:
    """Whether a sub-action is one of the held-out (object, destination) combinations."""
    return verb == "move" and tuple(objects) in HELDOUT_MOVES


# Templates: {b} block name ("red block"), {c} its colour, {d} destination name, {dc} destination colour,
# {s} slot words without "slot" ("far left").
_TEMPLATES: dict[str, dict[Split, tuple[str, ...]]] = {
    "slot": {
        "train": ("put the {b} on the {d}", "place the {b} at the {d}", "slide the {c} cube to the {s} position",
                  "pick up the {b} and set it down at the {d}", "{c} block to the {s} slot"),
        "eval": ("carry the {c} one over to the {s} spot", "relocate the {b} onto the {d}",
                 "take the {c} brick and drop it at the {s}"),
    },
    "stack": {
        "train": ("put the {b} on top of the {d}", "place the {b} onto the {d}", "pile the {c} cube on the {dc} cube",
                  "stack {c} on {dc}"),
        "eval": ("set the {c} one on top of the {dc} one", "balance the {b} upon the {d}",
                 "lift the {c} brick onto the {dc} brick"),
    },
    "box": {
        "train": ("put the {b} in the box", "place the {b} inside the box", "drop the {c} cube into the box",
                  "{c} block into the box"),
        "eval": ("stow the {c} one away in the container", "pack the {b} into the bin", "tuck the {c} brick into the box"),
    },
    "open": {"train": ("lift the lid of the box", "open the lid", "open up the box"),
             "eval": ("flip the box lid open", "uncover the container")},
    "close": {"train": ("shut the box", "put the lid back on the box", "close the lid"),
              "eval": ("lower the lid to cover the container", "seal the box shut")},
    "switch_on": {"train": ("turn on the lamp", "turn the light on", "switch the lamp on"),
                  "eval": ("light up the lamp", "power the lamp on")},
    "switch_off": {"train": ("turn off the lamp", "turn the light off", "switch the lamp off"),
                   "eval": ("darken the lamp", "power the lamp off")},
}


def _kind(verb: str, objects: Sequence[str]) -> str:
    if verb != "move":
        return verb
    dest = objects[1]
    return "box" if dest == BOX else "stack" if dest in BLOCKS else "slot"


def paraphrases(verb: str, objects: Sequence[str], split: Split = "train") -> list[str]:
    """Wordings of a sub-action: for ``train`` the canonical text first, then the training templates;
    for ``eval`` only the held-out templates (never seen in training)."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    kind = _kind(verb, objects)
    fill: dict[str, str] = {}
    if verb == "move":
        b, d = objects
        fill = {"b": name(b), "c": b.split("_")[0], "d": name(d), "dc": d.split("_")[0],
                "s": d.replace("_", " ") if d in SLOTS else name(d)}
    texts = [t.format(**fill) for t in _TEMPLATES[kind][split]]
    if split == "train":
        texts.insert(0, Action(verb, tuple(objects)).text())
    return texts


def all_train_texts(actions: Iterable[tuple[str, Sequence[str]]]) -> list[str]:
    """Every distinct training wording of the given (verb, objects) pairs, in a stable order."""
    out: dict[str, None] = {}
    for verb, objs in actions:
        for t in paraphrases(verb, objs, "train"):
            out[t] = None
    return list(out)
