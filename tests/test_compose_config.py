from pathlib import Path

import numpy as np
import pytest
import yaml

from spiral import registry
from spiral.compose import compose
from spiral.config import load_config


def _seg(start_value, n=5, size=4):
    return np.stack([np.full((size, size, 3), start_value + i, np.uint8) for i in range(n)])


def test_compose_drops_shared_boundary_frames():
    a, b = _seg(0), _seg(4)  # b[0] == a[-1]
    video, bounds = compose([a, b])
    assert len(video) == 9 and bounds == [(0, 4), (4, 8)]
    assert [int(f[0, 0, 0]) for f in video] == list(range(9))
    assert np.array_equal(video[bounds[1][0]], b[0])


def test_compose_crossfade_blends_towards_previous_frame():
    a, b = _seg(0), _seg(100)
    video, _ = compose([a, b], crossfade=1)
    assert int(video[5, 0, 0, 0]) == round(0.5 * 4 + 0.5 * 101)
    assert int(video[6, 0, 0, 0]) == 102


def test_compose_rejects_mismatched_sizes_and_empty():
    with pytest.raises(ValueError, match="resize"):
        compose([_seg(0, size=4), _seg(0, size=8)])
    with pytest.raises(ValueError, match="no accepted"):
        compose([])


ORACLE = Path(__file__).resolve().parents[1] / "configs" / "run" / "tabletop-oracle.yaml"


def test_config_overrides_and_typos(tmp_path):
    cfg = load_config(ORACLE, ["loop.max_replans=1", "generator.options.failure_rate=0.5", "video.crossfade=2"])
    assert cfg.loop.max_replans == 1 and cfg.generator.options == {"failure_rate": 0.5} and cfg.video.crossfade == 2
    with pytest.raises(ValueError, match="did you mean 'loop.max_replans'"):
        load_config(None, ["loop.max_replan=2"])
    p = tmp_path / "c.yaml"
    p.write_text("generator:\n  name: tiny\nloop:\n  mode: closed_lop\n")
    with pytest.raises(ValueError, match="loop.mode"):
        load_config(p)
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["loop.seed"])
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


def test_config_backend_switch_drops_default_options(tmp_path):
    """The embedded default's tiny generator has options (steps: 10) that the world generator does not take."""
    p = tmp_path / "c.yaml"
    p.write_text("generator:\n  name: world\n")
    assert load_config(p).generator.options == {}
    assert load_config(None, ["generator.name=world"]).generator.options == {}
    assert load_config(None, ["generator.options.failure_rate=0.5", "generator.name=world"]).generator.options == {
        "failure_rate": 0.5}  # options given by --set stay, whatever their order


def test_registry_names_unknown_backend_and_registers_new():
    with pytest.raises(ValueError, match="did you mean 'world'"):
        registry.resolve("generator", "wrld")

    @registry.register("generator", "unit-test-gen")
    class G:
        def __init__(self, k=1):
            self.k = k

    assert registry.create("generator", "unit-test-gen", k=3).k == 3
    assert "unit-test-gen" in registry.available("generator")


def test_third_party_backend_through_entry_point(tmp_path, monkeypatch):
    """A package that declares `[spiral.backends] generator.thirdparty = mod:Cls` is found by name."""
    (tmp_path / "thirdmod.py").write_text("class Gen:\n    def __init__(self, scale=1):\n        self.scale = scale\n")
    dist = tmp_path / "thirdparty_spiral-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-spiral\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[spiral.backends]\ngenerator.thirdparty = thirdmod:Gen\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "thirdparty" in registry.available("generator")
    assert registry.create("generator", "thirdparty", scale=2).scale == 2


def test_embedded_default_is_tiny_evolved_and_the_oracle_config_differs_only_there():
    """configs/run/tabletop.yaml (the default of `spiral run`/`demo`/`bench`) runs the tiny video model after
    self-evolution (`tiny-evolved`); configs/run/tabletop-oracle.yaml is the same config with the world renderer as the
    generator."""
    from spiral.api import DEFAULT_CONFIG, resolve_config

    oracle = Path(__file__).resolve().parents[1] / "configs" / "run" / "tabletop-oracle.yaml"
    assert DEFAULT_CONFIG == oracle.with_name("tabletop.yaml")
    default = resolve_config(None)
    assert default.generator.name == "tiny-evolved" and default == resolve_config(DEFAULT_CONFIG)
    world = resolve_config(oracle)
    assert world.generator.name == "world" and "failure_rate" in world.generator.options
    # the YAML files and the resolved configs agree everywhere but the generator section
    raw_default, raw_oracle = yaml.safe_load(DEFAULT_CONFIG.read_text()), yaml.safe_load(oracle.read_text())
    assert raw_default.pop("generator") != raw_oracle.pop("generator")
    assert raw_default == raw_oracle
    d, o = default.model_dump(mode="json"), world.model_dump(mode="json")
    assert d.pop("generator") != o.pop("generator") and d == o
