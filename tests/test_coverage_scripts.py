"""benchmarks/recognizer_coverage.py and benchmarks/critic_on_generated.py run end to end on small samples, and their
rates agree with the rows they report."""

from __future__ import annotations

import json

import pytest


def test_recognizer_coverage_script(bench_script, tmp_path, one_thread):
    mod = bench_script("recognizer_coverage")
    out = tmp_path / "cov.json"
    res = mod.main(["--looks", "1", "--every", "400", "--clips", "8", "--out", str(out)])
    assert json.loads(out.read_text())["stills"]["states"] == 28 == res["stills"]["states"]
    for role in ("critic", "judge"):
        r = res["stills"]["roles"][role]
        assert r["exact"] == 1.0 and sum(g["n"] for g in r["by_class_exact"]["tower"].values()) == 28
    c = res["clips"]
    assert c["clips"] >= 8 and sum(g["n"] for g in c["by_kind"].values()) == c["clips"]
    assert c["false_reject_rate"] == len(c["rejections"]) / c["clips"]
    with pytest.raises(SystemExit):
        mod.main(["--looks", "0", "--out", str(out)])


def test_critic_on_generated_script(bench_script, tmp_path, one_thread):
    mod = bench_script("critic_on_generated")
    doc = tmp_path / "docs" / "cog.md"
    res = mod.main(["--suite", "tabletop-smoke", "--generators", "world", "--limit", "4", "--runs", str(tmp_path / "runs"),
                    "--out", str(tmp_path / "cog.json"), "--doc", str(doc)])
    g = res["generators"]["world"]
    r = g["rates"]
    assert r["segments"] == r["reference_good"] + r["reference_bad"] > 0
    dis = g["disagreements"]
    assert all(d["critic_passed"] != d["reference_good"] for d in dis)
    assert r["false_rejects"] == sum(d["reference_good"] for d in dis)
    assert r["false_accepts"] == sum(not d["reference_good"] for d in dis)
    assert g["truth"] is not None and g["truth"]["segments"] + g["truth"]["excluded"] == r["segments"]
    text = doc.read_text()
    assert "| world | " in text and "Against the truth" in text
    assert len(list((doc.parent / "critic_on_generated").glob("*.png"))) == (1 if dis else 0)
    again = mod.main(["--suite", "tabletop-smoke", "--generators", "world", "--limit", "4", "--runs",
                      str(tmp_path / "runs"), "--out", str(tmp_path / "cog2.json"), "--doc", str(doc),
                      "--strip-rows", "0"])
    assert again["generators"]["world"]["rates"] == r  # runs are reused: same segments, same verdicts
    # no strip drawn, yet every disagreement is still listed
    text = doc.read_text()
    assert ("(strips: the first 0 of" in text) == bool(dis) and "world disagreements, page" not in text
    assert all(f"| {i + 1} | {d['case']} / {d['step'] + 1} |" in text for i, d in enumerate(dis))
    with pytest.raises(SystemExit):
        mod.main(["--generators", "sora", "--out", str(tmp_path / "x.json")])
