"""benchmarks/keep_tau_sweep.py runs the benchmark per keep_tau value and picks one without tabletop-v1."""

import json

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_sweep_on_the_smoke_suite_keeps_the_background_and_picks_a_value(tmp_path, bench_script):
    mod = bench_script("keep_tau_sweep")
    out = mod.main(["--suite", "tabletop-smoke", "--generators", "tiny-evolved", "--values", "0.1",
                    "--workers", "1", "--out", str(tmp_path / "runs"), "--json", str(tmp_path / "sweep.json")])
    plain, kept = out["rows"]
    assert (plain["keep_tau"], kept["keep_tau"], plain["n"]) == (None, 0.1, 6)
    assert kept["drift_mean"] < plain["drift_mean"]  # what the value is for
    assert out["chosen"]["tiny-evolved"] == (0.1 if kept["step_success"] >= plain["step_success"] - 0.01 else None)
    assert json.loads((tmp_path / "sweep.json").read_text())["rows"] == out["rows"]
    seg = json.loads((tmp_path / "runs" / "tiny-evolved_0.1" / "bench.json").read_text())
    assert seg["config"]["overrides"] == ["generator.name=tiny-evolved", "generator.options.keep_tau=0.1"]
