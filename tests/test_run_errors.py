"""`spiral run` rejects bad input with one clear line, a non-zero exit, and writes nothing."""

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from spiral.cli import app

runner = CliRunner()


def _run(*args):
    r = runner.invoke(app, ["run", *args])
    return r.exit_code, r.output


def _assert_one_line_error(code, out, *needles):
    assert code != 0
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error:"), out
    for n in needles:
        assert n in out, out


def test_unparseable_goal(tmp_path):
    code, out = _run("make me a sandwich", "--scene", "1", "--out", str(tmp_path / "r"))
    _assert_one_line_error(code, out, "red")
    assert not (tmp_path / "r").exists()


def test_image_not_rgb_or_unreadable(tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(np.zeros((64, 64), np.uint8), mode="L").save(gray)
    code, out = _run("open the box", "--image", str(gray), "--out", str(tmp_path / "r"))
    _assert_one_line_error(code, out, "not RGB")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    code, out = _run("open the box", "--image", str(junk), "--out", str(tmp_path / "r"))
    _assert_one_line_error(code, out, "cannot read image")
    code, out = _run("open the box", "--image", str(tmp_path / "missing.png"), "--out", str(tmp_path / "r"))
    _assert_one_line_error(code, out, "not found")
    assert not (tmp_path / "r").exists()


def test_unknown_backend_and_config_typo(tmp_path):
    code, out = _run("open the box", "--scene", "1", "--set", "generator.name=wan99", "--out", str(tmp_path / "r"))
    _assert_one_line_error(code, out, "unknown generator backend 'wan99'")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("loop:\n  max_refine_per_step: 2\n")
    code, out = _run("open the box", "--scene", "1", "--config", str(cfg), "--out", str(tmp_path / "r"))
    _assert_one_line_error(code, out, "unknown config key 'loop.max_refine_per_step'", "max_refines_per_step")
    assert not (tmp_path / "r").exists()


def test_resume_of_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "notarun").mkdir()
    (tmp_path / "notarun" / "keep.txt").write_text("mine")
    code, out = _run("--resume", str(tmp_path / "notarun"))
    _assert_one_line_error(code, out, "not a SPIRAL run directory")
    assert [p.name for p in (tmp_path / "notarun").iterdir()] == ["keep.txt"]


def test_existing_output_folder_is_not_overwritten(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "precious.txt").write_text("x")
    code, text = _run("open the box", "--scene", "1", "--out", str(out))
    _assert_one_line_error(code, text, "not empty")
    assert (out / "precious.txt").read_text() == "x"
