"""Render docs/faithfulness_yellow_box.png: "move the yellow block into the box" on tabletop-v1, as each model made it.

Run from the repository root after benchmarking the runs named (plan-only), e.g.
``python docs/make_faithfulness_strip.py runs/bench2/tiny runs/bench2/tiny-guided runs/bench2/evolved``.
Each row is one case: a render of the true state after the step, then each run's last frame of that step
with the judge's verdict (step success / faithful), cropped to the right half of the frame and upscaled ×3.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spiral.bench.judge import make_judge  # noqa: E402
from spiral.bench.metrics import FAITHFUL_AREA, DriftReference, holds_all, load_run, read_states  # noqa: E402
from spiral.world import domain  # noqa: E402
from spiral.world.tasks import sample_state  # noqa: E402

SCALE, ROWS, LABEL_H, GAP = 3, 8, 14, 3
MOVE = ("move", ["yellow_block", "box"])


def step_of(view) -> int | None:
    return next((k for k, s in enumerate(view.steps) if (s.get("verb"), s.get("objects")) == MOVE), None)


def main(runs: list[str]) -> Path:
    judge = make_judge("recognizer")
    results = json.loads((Path(runs[0]) / "results.json").read_text())["cases"]
    cases = [c for c in results if c["mode"] == "plan_only"]
    tiles: list[list[tuple[np.ndarray, str]]] = []
    for c in cases:
        views = [load_run(Path(r) / c["run_dir"]) for r in runs]
        ks = [step_of(v) for v in views]
        if any(k is None for k in ks) or len(set(ks)) != 1:
            continue
        k = ks[0]
        row = []
        for i, v in enumerate(views):
            states = read_states(judge, [v.anchor] + [s[-1] for s in v.segments[:k + 1]])
            ref = DriftReference(v.anchor, states[0], v.scene)
            if i == 0:  # the true state after the step (the scene's layout, the plan applied), in its look
                after = sample_state(np.random.default_rng(v.scene))
                for s in v.steps[:k + 1]:
                    after = domain.apply(after, domain.Action(s["verb"], tuple(s["objects"])))
                row.append((ref._render(after).astype(np.uint8), "true"))
            frame = v.segments[k][-1]
            ok = holds_all(states[k + 1], v.steps[k].get("postconditions", []))
            area = ref.artifact_area(frame, states[k + 1])
            faithful = ok and area is not None and area <= FAITHFUL_AREA
            row.append((frame, f"{'ok' if ok else 'fail'}/{'F' if faithful else '-'}"))
        tiles.append(row)
        if len(tiles) == ROWS:
            break
    w, h = 32 * SCALE, 40 * SCALE
    cols = len(tiles[0])
    img = Image.new("RGB", (cols * (w + GAP), len(tiles) * (h + LABEL_H + GAP) + LABEL_H), "white")
    draw = ImageDraw.Draw(img)
    for j, name in enumerate(["true"] + [Path(r).name for r in runs]):
        draw.text((j * (w + GAP) + 2, 1), name, fill="black")
    for i, row in enumerate(tiles):
        y = LABEL_H + i * (h + LABEL_H + GAP)
        for j, (frame, label) in enumerate(row):
            crop = Image.fromarray(frame[20:60, 32:64]).resize((w, h), Image.NEAREST)
            img.paste(crop, (j * (w + GAP), y))
            draw.text((j * (w + GAP) + 2, y + h + 1), label, fill="black")
    out = ROOT / "docs" / "faithfulness_yellow_box.png"
    img.save(out, optimize=True)
    return out


if __name__ == "__main__":
    print(main(sys.argv[1:]))
