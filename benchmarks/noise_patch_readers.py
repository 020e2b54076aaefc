"""Do the state readers see a block where there is only colour noise? And does the artifact check catch it?

The judge and the critic read every frame as *some* state (docs/bench.md, "Known blind spot"). This renders
sampled tabletop scenes, replaces one clear block's pixels with uniform colour noise (the block's own
footprint, dilated by one pixel), and asks each reader where the block is. "Fooled" means it reads the
block where it was, as if it were still drawn. "Flagged" means the artifact check fires, that is, more than
``FAITHFUL_AREA`` of the frame differs from a render of what the reader read
(``spiral.world.render.artifact_area``). Blocks in the box (seen through the glass) and on the table are
counted apart.

    python benchmarks/noise_patch_readers.py              # 200 scenes (~1 min on 2 cores)

Writes ``benchmarks/results/noise_patch_readers.json``.
"""

from __future__ import annotations

import time

import numpy as np
from benchlib import parser, write_result
from rich.console import Console
from rich.table import Table

from spiral.bench.metrics import FAITHFUL_AREA, dilate
from spiral.world.domain import BLOCKS, BOX, SLOTS, State
from spiral.world.render import Appearance, artifact_area, render_state
from spiral.world.tasks import sample_state


def patched_frame(state: State, block: str, look: Appearance, rng: np.random.Generator,
                  size: int = 64) -> np.ndarray | None:
    """A render of ``state`` with ``block`` painted over by colour noise (None if its footprint cannot be
    isolated: fewer than two free slots to move it to)."""
    free = [s for s in SLOTS if state.free(s) and s != state.where(block)]
    if len(free) < 2:
        return None
    frame = render_state(state, appearance=look, size=size)
    a = render_state(state.with_loc(block, free[0]), appearance=look, size=size).astype(int)
    b = render_state(state.with_loc(block, free[1]), appearance=look, size=size).astype(int)
    gone = np.any(np.abs(frame.astype(int) - a) > 0, axis=-1) & ~np.any(np.abs(a - b) > 0, axis=-1)
    mask = dilate(gone, 1)
    out = frame.copy()
    out[mask] = rng.integers(0, 256, (int(mask.sum()), 3), dtype=np.uint8)
    return out


def main(argv: list[str] | None = None) -> dict:
    from spiral.bench.judge import make_judge
    from spiral.critics.recognizer import load_recognizer

    ap = parser(__doc__, "noise_patch_readers.json")
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    readers = {"judge": make_judge("recognizer"), "critic": load_recognizer()}
    rng = np.random.default_rng(args.seed)
    counts: dict[str, dict[str, dict[str, int]]] = {r: {} for r in readers}
    for _ in range(args.scenes):
        scene = int(rng.integers(2**31))
        state, look = sample_state(np.random.default_rng(scene)), Appearance.sample(scene)
        clear = [b for b in BLOCKS if state.clear(b)]
        block = clear[int(rng.integers(len(clear)))]
        frame = patched_frame(state, block, look, rng)
        if frame is None:
            continue
        where = "box" if state.where(block) == BOX else "table"
        for name, reader in readers.items():
            read = reader.read_state(frame)
            c = counts[name].setdefault(where, {"n": 0, "fooled": 0, "flagged": 0, "fooled_and_flagged": 0})
            fooled = read.where(block) == state.where(block)
            flagged = artifact_area(frame, render_state(read, appearance=look, size=frame.shape[0])) > FAITHFUL_AREA
            c["n"] += 1
            c["fooled"] += int(fooled)
            c["flagged"] += int(flagged)
            c["fooled_and_flagged"] += int(fooled and flagged)
    table = Table(title="a clear block painted over by colour noise: what the readers make of it")
    for col in ("reader", "block was", "n", "fooled (reads it there)", "flagged by the artifact check",
                "fooled, then flagged"):
        table.add_column(col)
    for name, per in counts.items():
        for where, c in sorted(per.items()):
            table.add_row(name, where, str(c["n"]), f"{c['fooled'] / c['n']:.2f}", f"{c['flagged'] / c['n']:.2f}",
                          f"{c['fooled_and_flagged'] / max(c['fooled'], 1):.2f}")
    Console().print(table)
    out = {"scenes": args.scenes, "seed": args.seed, "faithful_area": FAITHFUL_AREA, "counts": counts,
           "seconds": round(time.perf_counter() - t0, 1), "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_result(args.json, out, indent=1)
    return out


if __name__ == "__main__":
    main()
