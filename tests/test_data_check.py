"""`spiral data check` checks what the consumers need (issue 22 item 4): the world's objects and states, every
video decoded in full, and a manifest with at least one episode."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from spiral.cli import app
from spiral.data.build import BuildConfig, build_tabletop
from spiral.data.format import check_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    eps = build_tabletop(root, BuildConfig(episodes=3, seed=21, failures=0.5, min_steps=3, max_steps=5),
                         progress=False)
    return root, eps


def _copy_with(dataset, tmp_path, edit):
    """A copy of the dataset whose first episode line is replaced by ``edit(line)``."""
    root, eps = dataset
    d = tmp_path / "ds"
    shutil.copytree(root, d)
    lines = (d / "manifest.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    lines[0] = json.dumps(edit(first))
    (d / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return d, first


def _check(d, *flags):
    r = CliRunner().invoke(app, ["data", "check", str(d), *flags])
    return r.exit_code, r.output


@pytest.mark.parametrize("where", ["objects", "initial_state", "post", "end_state"])
def test_an_unknown_object_fails_the_line(dataset, tmp_path, where):
    """Before: `purple_block` in a step or the initial state passed, and later killed `eval critic`."""
    def edit(ep):
        step = ep["steps"][0]
        if where == "objects":
            step["objects"] = ["purple_block"] + step["objects"][1:]
        elif where == "initial_state":
            ep["initial_state"]["loc"]["purple_block"] = "center"
        elif where == "post":
            step["post"] = ["in(purple_block, box)"]
        else:
            step["end_state"]["loc"] = {"purple_block": "box", **step["end_state"]["loc"]}
        return ep

    d, first = _copy_with(dataset, tmp_path, edit)
    report = check_dataset(d)
    assert [e.line for e in report.errors] == [1] and "purple_block" in report.errors[0].message
    assert first["id"] not in [e.id for e in report.episodes] and len(report.episodes) == len(dataset[1]) - 1
    code, out = _check(d)
    assert code == 1 and "line 1" in out and "purple_block" in out


def test_a_step_that_cannot_happen_where_it_starts_fails_the_line(dataset, tmp_path):
    """The same action twice in a row can never happen (moved already, open already, lit already)."""
    def edit(ep):
        ep["steps"].insert(1, dict(ep["steps"][0]))
        return ep

    d, _ = _copy_with(dataset, tmp_path, edit)
    msg = check_dataset(d).errors[0].message
    assert msg.startswith("step 1 (") and "cannot happen where it starts" in msg


def _zero(path, start, n=400):
    data = bytearray(path.read_bytes())
    data[start:start + n] = bytes(n)
    path.write_bytes(bytes(data))


def test_a_damaged_video_fails_unless_fast(dataset, tmp_path):
    """Before: 400 zeroed bytes (45 of 57 frames damaged) passed, as only the header was read. `data build`
    writes the SHA-256 of each video's decoded frames, so damage the decoder conceals fails too; --fast reads
    headers only."""
    root, eps = dataset
    d = tmp_path / "ds"
    shutil.copytree(root, d)
    video = d / eps[0].video
    _zero(video, video.stat().st_size // 3)  # this spot decodes without an error: only the digest sees it
    report = check_dataset(d, decode=True)
    assert [e.id for e in report.errors] == [eps[0].id] and "frames differ from the manifest's" in report.errors[0].message
    assert check_dataset(d).ok  # the header alone still looks whole: what --fast trades away
    code, out = _check(d)
    assert code == 1 and "frames_sha256" in out
    code, out = _check(d, "--fast")
    assert code == 0 and "--fast" in out


def test_without_checksums_decoding_catches_most_damage(dataset, tmp_path):
    """A manifest from elsewhere may have no frames_sha256: strict decoding alone still fails >= 75 % of 400-byte
    holes spread over the file (the rest sit where H.264 conceals the loss, or in metadata)."""
    root, eps = dataset
    d = tmp_path / "ds"
    shutil.copytree(root, d)
    lines = [json.loads(x) for x in (d / "manifest.jsonl").read_text().splitlines()]
    (d / "manifest.jsonl").write_text("".join(json.dumps({k: v for k, v in x.items() if k != "frames_sha256"}) + "\n"
                                              for x in lines))
    video = d / eps[0].video
    clean = video.read_bytes()
    caught = 0
    offsets = list(range(len(clean) // 21, len(clean) - 400, len(clean) // 21))[:20]
    for off in offsets:
        video.write_bytes(clean)
        _zero(video, off)
        caught += not check_dataset(d, decode=True).ok
    assert caught >= 0.75 * len(offsets), (caught, len(offsets))


def test_an_empty_manifest_is_an_error(tmp_path):
    """Before: exit 0 with '0 usable episodes'."""
    (tmp_path / "manifest.jsonl").write_text("\n\n")
    code, out = _check(tmp_path)
    assert code == 2 and "holds no episodes" in out
    with pytest.raises(ValueError, match="holds no episodes"):
        check_dataset(tmp_path)


def test_a_clean_dataset_passes_in_full(dataset):
    root, eps = dataset
    report = check_dataset(root, decode=True)
    assert report.ok and len(report.episodes) == len(eps)
    code, out = _check(root)
    assert code == 0 and f"{len(eps)} usable episodes" in out
