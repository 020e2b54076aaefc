"""Nothing silent, nothing written on bad input (issue 22, validation and error text): every input of `spiral run` is checked before
the run folder exists, typed per-backend options, weights, first images, errors that name their source."""

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from spiral import registry
from spiral.cli import app
from spiral.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "spiral" / "models" / "weights" / "tiny.safetensors"
GOAL = "turn on the lamp"  # scene 0: the lamp is off, so the run has work to do


def _png(path: Path, width: int, height: int) -> Path:
    """A valid RGB PNG of any size, written row by row (a 20000x20000 one is 5 MB on disk, 1.2 GB decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z, row = zlib.compressobj(1), b"\0" * (1 + 3 * width)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """Every bad input the issue lists, as files."""
    d = tmp_path_factory.mktemp("bad")
    with safe_open(str(TINY), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(TINY))
    name = next(k for k, v in tensors.items() if v.ndim == 2)
    save_file({**tensors, name: tensors[name][:-1].clone()}, str(d / "wrong_shape.safetensors"), metadata=meta)
    save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in tensors.items()},
              str(d / "nan.safetensors"), metadata=meta)
    (d / "garbage.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    (d / "steps_ten.yaml").write_text("generator:\n  name: tiny\n  options:\n    steps: ten\n")
    (d / "stepz.yaml").write_text("generator:\n  name: tiny\n  options:\n    stepz: 10\n")
    (d / "empty.yaml").write_text("# nothing here yet\n")
    _png(d / "huge.png", 20000, 20000)
    _png(d / "big.png", 12000, 12000)
    return d


CASES = {  # name -> (extra arguments of `spiral run GOAL` (--goal replaces GOAL), text the one line must contain)
    "wrong-type option": (["--config", "{d}/steps_ten.yaml"], "generator 'tiny' option 'steps'"),
    "unknown option": (["--config", "{d}/stepz.yaml"], "has no option 'stepz' (did you mean 'steps'?)"),
    "generator weights of the wrong shape": (["--set", "generator.options.weights={d}/wrong_shape.safetensors"],
                                             "the architecture needs"),
    "garbage recogniser weights": (["--set", "critic.options.recognizer={d}/garbage.safetensors"],
                                   "not a .safetensors file"),
    "20000x20000 PNG": (["--image", "{d}/huge.png"], "400 megapixels: too large"),
    "12000x12000 PNG": (["--image", "{d}/big.png"], "12000x12000 pixels: too large"),
    "NaN weights": (["--set", "generator.options.weights={d}/nan.safetensors"], "NaN or infinite"),
    "empty config": (["--config", "{d}/empty.yaml"], "empty.yaml is empty"),
    "steps=0": (["--set", "generator.options.steps=0"], "--set generator.options.steps=0: generator 'tiny-evolved'"),
    "options of another backend": (["--config", str(ROOT / "configs" / "run" / "tabletop-oracle.yaml"), "--set",
                                    "generator.options.steps=3"], "generator 'world' has no option 'steps'"),
    "value that is not YAML": (["--set", "loop.max_replans=[1"], "not valid YAML"),
    "unknown word in the goal": (["--goal", "put teh red block in the box"], "did you mean 'the'?"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_bad_input_is_one_line_exit_2_and_writes_nothing(case, bad_inputs, tmp_path):
    """The issue's list: tracebacks (exit 1) or silent runs before; now one red line, exit 2, no run folder."""
    args, needle = CASES[case]
    args = [a.format(d=bad_inputs) for a in args]
    goal = GOAL
    if args[:1] == ["--goal"]:
        goal, args = args[1], args[2:]
    out = tmp_path / "run"
    start = [] if "--image" in args else ["--scene", "0"]
    r = CliRunner().invoke(app, ["run", goal, *start, "--out", str(out), *args])
    assert isinstance(r.exception, SystemExit) and r.exit_code == 2, (r.exception, r.output)
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.output
    assert "Traceback" not in r.output and not out.exists()


def test_a_bad_option_fails_before_the_folder_so_the_fixed_command_just_runs(tmp_path):
    """Before: the folder was created, so the corrected rerun said 'resume it' and the resume failed again."""
    out = tmp_path / "run"
    cfg = str(ROOT / "configs" / "run" / "tabletop-oracle.yaml")
    r = CliRunner().invoke(app, ["run", GOAL, "--scene", "0", "--out", str(out), "--config", cfg,
                                 "--set", "generator.options.failure_rate=2"])
    assert r.exit_code == 2 and "failure_rate" in r.output and not out.exists()
    r = CliRunner().invoke(app, ["run", GOAL, "--scene", "0", "--out", str(out), "--config", cfg])
    assert r.exit_code == 0, r.output


def test_every_builtin_backend_declares_typed_options_matching_its_constructor():
    """The options model is what configs are checked against: every option it declares must reach the
    constructor, and every constructor keyword a config can give must be declared (Python-only objects such as
    a built model or pipeline are not config options)."""
    from spiral.critics.tabletop import CriticConfig, TabletopCritic
    from spiral.llm.client import ChatClient
    from spiral.options import options_model, signature_model

    python_only = {"model": ("TinyGenerator",), "pipeline": ("DiffusersI2V",), "config": ("TabletopCritic",)}
    for kind in registry.KINDS:
        for name in registry.available(kind):
            cls = registry.resolve(kind, name)
            model = options_model(cls)
            declared = {f.alias or k for k, f in model.model_fields.items()}
            accepted = {f.alias for f in signature_model(cls).model_fields.values()}
            if hasattr(cls, "backend_class"):  # chat agents pass the rest to their transport
                accepted |= {f.alias for f in signature_model(cls.backend_class or ChatClient).model_fields.values()}
            if issubclass(cls, TabletopCritic):  # passes the rest to CriticConfig (subclasses too)
                accepted |= set(CriticConfig.model_fields)
            skip = {k for k, owners in python_only.items() if any(c.__name__ in owners for c in cls.__mro__)}
            assert model.model_config.get("extra") == "forbid", (kind, name)
            assert declared <= accepted, (kind, name, sorted(declared - accepted))
            assert accepted - skip <= declared, (kind, name, sorted(accepted - skip - declared))


def test_options_are_coerced_and_named_in_errors():
    assert registry.check_options("generator", "tiny", {"steps": "12"}) == {"steps": 12}
    assert load_config(None, ["generator.options.steps=12"]).generator.options == {"steps": 12}
    with pytest.raises(ValueError, match=r"critic 'tabletop' option 'thresholds.action': Input should be a valid "):
        registry.create("critic", "tabletop", thresholds={"action": "high"})


def test_set_errors_name_the_set_and_file_errors_the_file(tmp_path):
    """Before: an invalid --set was blamed on configs/run/tabletop.yaml."""
    with pytest.raises(ValueError, match=r"^--set loop.max_replans=-1: config key 'loop.max_replans'"):
        load_config(None, ["loop.max_replans=-1"])
    p = tmp_path / "mine.yaml"
    p.write_text("loop:\n  max_replans: -1\n")
    with pytest.raises(ValueError, match=r"mine.yaml: config key 'loop.max_replans'"):
        load_config(p, ["loop.seed=3"])
    with pytest.raises(ValueError, match=r"^--set generator.options.stepz=1: generator 'tiny-evolved' has no option 'stepz'"):
        load_config(None, ["loop.seed=3", "generator.options.stepz=1"])


def test_an_empty_config_never_runs_the_oracle(tmp_path):
    """Before: an empty file ran Config()'s defaults, whose generator was the oracle `world`. Now an empty file
    is an error and a partial one is read on top of the embedded default (the tiny-evolved model)."""
    from spiral.config import Config

    p = tmp_path / "empty.yaml"
    p.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        load_config(p)
    p.write_text("loop:\n  max_replans: 1\n")
    cfg = load_config(p)
    assert cfg.generator.name == "tiny-evolved" and cfg.loop.max_replans == 1
    with pytest.raises(ValueError, match="generator"):
        Config()  # no silent default generator


def test_first_image_modes_and_orientation(tmp_path):
    """RGB as is; RGBA and palette images composited over black; EXIF orientation applied; grey refused."""
    from spiral.api import load_image

    rgba = np.zeros((8, 16, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :8, 3] = 255  # left half opaque red, right half transparent red
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    got = load_image(tmp_path / "a.png", (8, 16))
    assert (got[:, :7, 0] >= 190).all() and (got[:, 9:] == 0).all()
    Image.fromarray(rgba[..., :3]).convert("P").save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png", (8, 16)).shape == (8, 16, 3)
    img = Image.fromarray(np.zeros((8, 16, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotated 90 degrees: shown upright it is 16 high and 8 wide
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg", (16, 8)).shape == (16, 8, 3)
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(tmp_path / "g.png")
    with pytest.raises(ValueError, match="is L, not RGB"):
        load_image(tmp_path / "g.png", (8, 8))


def test_weights_checks_name_the_file_and_the_problem(bad_inputs):
    from spiral.critics.recognizer import load_net
    from spiral.models.tiny_video import load_weights

    with pytest.raises(ValueError, match=r"tensor \S+ has shape \(767, 192\), the architecture needs \(768, 192\)"):
        load_weights(bad_inputs / "wrong_shape.safetensors")
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_weights(bad_inputs / "nan.safetensors")
    with pytest.raises(ValueError, match="cannot read recogniser weights .* not a .safetensors file"):
        load_net(bad_inputs / "garbage.safetensors")
    with pytest.raises(ValueError, match="not a SPIRAL recogniser"):  # a generator file given as the recogniser
        load_net(TINY)


def test_goal_typos_get_the_nearest_known_word():
    from spiral.world.goals import GoalParseError, parse_goal

    for goal, word in [("put teh red block in the box", "the"), ("put the red blok in the box", "block"),
                       ("opne the box", "open"), ("turn on the lmap", "lamp"), ("swich on the lamp", "switch")]:
        with pytest.raises(GoalParseError, match=f"did you mean '{word}'"):
            parse_goal(goal)
    with pytest.raises(GoalParseError) as e:
        parse_goal("xyzzy the red block")
    assert "did you mean" not in str(e.value) and "Known objects" in str(e.value)


def test_stop_reason_and_a_goal_that_already_holds_are_said(tmp_path):
    """Before: the stop reason was in neither the summary nor the report; a goal that already held 'succeeded'
    with 0 generations without a word."""
    oracle = str(ROOT / "configs" / "run" / "tabletop-oracle.yaml")
    out = tmp_path / "b"
    r = CliRunner().invoke(app, ["run", "put the red block in the box and close it, then turn on the lamp", "--scene",
                                 "4", "--config", oracle, "--out", str(out), "--set", "generator.options.failure_rate=1",
                                 "--set", "loop.max_refines_per_step=0", "--set", "loop.max_replans=1",
                                 "--set", "loop.on_budget_exhausted=stop"])
    assert r.exit_code == 1 and "stopped because" in r.output and "given up" in r.output
    assert 'id="stop-reason">Stopped because: step 1 (move the green block to the center slot) given up: ' \
        'max_replans=1 spent' in (out / "report.html").read_text()
    out = tmp_path / "held"
    r = CliRunner().invoke(app, ["run", "put the red block in the box", "--scene", "0", "--config", oracle,
                                 "--out", str(out)])
    assert r.exit_code == 0 and "the goal already holds in the first frame" in r.output
    assert json.loads((out / "record.json").read_text())["stop_reason"].startswith("the goal already holds")
    assert "the goal already holds" in (out / "report.html").read_text()
