"""A benchmark suite from an ActVideoGen-Dataset folder (``spiral bench make-suite --from-data DIR --out FILE``).

Each episode of the dataset (an imported one — real footage — or one built by ``spiral data build``) becomes one
case: the first frame of its video (saved as ``frames/<id>.png`` beside the suite file), its goal, its number of
annotated steps (which fixes the length class) and those steps' texts as the case's ``reference_plan``. Failure
clips (episodes with a ``parent``) are left out. The suite's ``world`` is ``real`` unless told: only the VLM judge
scores it (``--judge vlm``); give ``--world tabletop`` for a tabletop dataset whose goals the grammar reads.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

from spiral.bench.suite import LENGTH_CLASSES


def length_class(n_steps: int) -> str | None:
    """The length class of a plan of ``n_steps`` steps (None when longer than the longest class)."""
    return next((k for k, (lo, hi) in LENGTH_CLASSES.items() if lo <= n_steps <= hi), None)


def suite_from_dataset(data: str | Path, out: str | Path, world: str = "real", name: str | None = None,
                       split: str | None = None, limit: int | None = None) -> tuple[Path, list[str]]:
    """Write a suite of the dataset's episodes; returns the suite path and why any episode was left out."""
    from PIL import Image

    from spiral import atomic
    from spiral.bench.suite import load_suite
    from spiral.data.format import check_dataset
    from spiral.video import read_frame

    data, out = Path(data), Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; pick another --out (a suite is never overwritten)")
    report = check_dataset(data)
    if not report.episodes:
        raise ValueError(f"{data} has no usable episode ({len(report.errors)} bad manifest lines)")
    cases: list[dict[str, Any]] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for ep in report.episodes:
        if ep.parent:
            continue  # a failure clip of another episode, not a task
        if split and ep.split != split:
            continue
        cls = length_class(len(ep.steps))
        if cls is None:
            skipped.append(f"{ep.id}: {len(ep.steps)} annotated steps, longer than the longest class "
                           f"({max(hi for _, hi in LENGTH_CLASSES.values())})")
            continue
        cid = re.sub(r"[^A-Za-z0-9._-]+", "-", ep.id).strip("-.") or "episode"
        while cid in seen:
            cid += "_"
        seen.add(cid)
        buf = io.BytesIO()
        Image.fromarray(read_frame(data / ep.video, 0)).save(buf, format="PNG")
        atomic.write_bytes(out.parent / "frames" / f"{cid}.png", buf.getvalue())
        cases.append({"id": cid, "goal": ep.goal, "image": f"frames/{cid}.png", "length_class": cls,
                      "n_steps": len(ep.steps), "reference_plan": [s.text for s in ep.steps],
                      "notes": f"episode {ep.id} of {data.name}" + (f" ({ep.source})" if ep.source else "")
                               + (f", licence {ep.license}" if ep.license else "")})
        if limit and len(cases) >= limit:
            break
    if not cases:
        raise ValueError(f"no episode of {data} makes a case" + (f": {skipped[0]}" if skipped else
                                                                (f" in split {split!r}" if split else "")))
    atomic.write_json(out, {"name": name or out.stem, "version": "1.0", "world": world,
                            "created_by": f"spiral bench make-suite --from-data {data}", "cases": cases})
    loaded = load_suite(out, check_plans=False)
    skipped += [f"{e.case_id}: {e.field}: {e.message}" for e in loaded.errors]
    return out, skipped
