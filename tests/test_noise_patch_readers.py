"""benchmarks/noise_patch_readers.py paints a block over with noise and checks what the readers make of it."""

import json

import numpy as np

from spiral.world.domain import State
from spiral.world.render import Appearance, render_state


def test_the_patch_covers_exactly_the_block_and_every_patch_is_flagged(tmp_path, bench_script):
    mod = bench_script("noise_patch_readers")
    s = State.make({"red_block": "left", "green_block": "red_block", "blue_block": "center", "yellow_block": "box"},
                   box_open=True)
    look = Appearance.sample(3)
    clean = render_state(s, appearance=look)
    patched = mod.patched_frame(s, "blue_block", look, np.random.default_rng(0))
    changed = np.any(patched != clean, axis=-1)
    ys, xs = np.nonzero(changed)
    assert 16 <= changed.sum() <= 120 and np.ptp(ys) <= 12 and np.ptp(xs) <= 12  # one block-sized patch
    away = render_state(s.with_loc("blue_block", "far_left"), appearance=look)
    assert np.any(away[changed] != clean[changed])  # where the blue block was drawn
    out = mod.main(["--scenes", "6", "--json", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text())["counts"] == out["counts"]
    for per in out["counts"].values():
        for c in per.values():
            assert c["flagged"] == c["n"] > 0 and 0 <= c["fooled"] <= c["n"]
