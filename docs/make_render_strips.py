"""Render docs/render_strips.png: one scene, a success of each action type and one strip per failure kind.

Run from the repository root: ``python docs/make_render_strips.py`` (deterministic; about a second).
Each row is one clip (9 frames at 64×64), upscaled ×3 with nearest-neighbour so details stay crisp.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spiral.world.domain import Action, State, apply  # noqa: E402
from spiral.world.render import Appearance, render_action  # noqa: E402

SCALE, SIZE, FRAMES, LABEL_H, GAP = 3, 64, 9, 22, 4


def rows() -> list[tuple[str, np.ndarray]]:
    app = Appearance.sample(3)
    s0 = State.make({"red_block": "left", "green_block": "red_block", "blue_block": "center", "yellow_block": "far_right"})
    out: list[tuple[str, np.ndarray]] = []
    story = [
        ("move onto a slot", "move(blue_block, far_left)"),
        ("stack", "move(yellow_block, blue_block)"),
        ("open the box", "open(box)"),
        ("into the box", "move(green_block, box)"),
        ("close the box", "close(box)"),
        ("lamp on", "switch_on(lamp)"),
        ("lamp off", "switch_off(lamp)"),
    ]
    s = s0
    for i, (label, text) in enumerate(story):
        a = Action.parse(text)
        r = render_action(s, a, appearance=app, seed=i, size=SIZE, frames=FRAMES)
        out.append((f"success: {label}  {a}", r.frames))
        s = apply(s, a)
    a = Action.parse("move(blue_block, far_left)")
    fails = [
        ("incomplete", s0, a, 0),
        ("incomplete", s0, a, 1),
        ("incomplete", s0, Action.parse("open(box)"), 0),
        ("wrong_object", s0, a, 0),
        ("extra_motion", s0, a, 0),
        ("teleport", s0, a, 0),
        ("drift", s0, a, 0),
        ("no_motion", s0, a, 0),
    ]
    for kind, st, act, seed in fails:
        r = render_action(st, act, appearance=app, seed=seed, size=SIZE, frames=FRAMES, failure=kind)
        detail = {k: r.meta[k] for k in ("incomplete", "performed", "extra", "jump_frame", "drift_rgb") if k in r.meta}
        if "incomplete" in detail:
            detail = {"variant": detail["incomplete"]["variant"]}
        out.append((f"FAILURE {kind} ({r.meta['failure_kind']}): {act}  {detail}", r.frames))
    return out


def main(path: Path = ROOT / "docs" / "render_strips.png") -> None:
    data = rows()
    fw = SIZE * SCALE
    width = FRAMES * fw + (FRAMES - 1) * GAP
    height = len(data) * (fw + LABEL_H)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1 has no sized default font
        font = ImageFont.load_default()
    for r, (label, frames) in enumerate(data):
        y = r * (fw + LABEL_H)
        draw.text((4, y + 3), label, fill=(0, 0, 0), font=font)
        for i, f in enumerate(frames):
            tile = Image.fromarray(f).resize((fw, fw), Image.NEAREST)
            sheet.paste(tile, (i * (fw + GAP), y + LABEL_H))
    sheet.save(path)
    print(f"wrote {path} ({width}x{height}, {len(data)} rows)")


if __name__ == "__main__":
    main()
