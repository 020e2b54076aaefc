"""The self-contained HTML run report (DESIGN §8): ``report.html`` in the run directory.

Everything a reader needs to judge a run sits in one file that opens offline: the goal and
outcome, the first frame, every plan version with its pre/post-conditions, every attempt's
frames with the critic's scores, decision and feedback, the final video, and where the time
went. Images are embedded as base64 PNG data URIs (no network, no external CSS/JS); only the
``<video>`` element points at ``final.mp4`` beside the report, with the same video embedded as an
animated PNG for browsers without H.264. All text from users, planners and critics is escaped.

The report is rebuilt from the run directory alone, so ``spiral report RUN_DIR`` can re-render
any run, including one that was killed (no ``record.json``) or that ran without a critic.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from spiral import atomic
from spiral.rundir import RUN_MARKER

MAX_STRIP_FRAMES = 12  # attempt strips show at most this many frames (evenly spaced)
MAX_ANIM_FRAMES = 240  # the animated fallback is subsampled beyond this
TARGET_PX = 192  # frames are upscaled (nearest neighbour) by an integer factor to about this height

_STATUS_COLOURS = {"success": "#1a7f37", "completed_unverified": "#9a6700", "budget_exhausted": "#b35900",
                   "failed": "#c62828", "running": "#57606a"}
_DECISION_COLOURS = {"accept": "#1a7f37", "refine": "#8250df", "regenerate": "#0969da", "replan": "#b35900",
                     "give_up": "#c62828"}


# ---- entry point ----------------------------------------------------------------------------
def write_report(run_dir: str | Path) -> Path:
    """Render ``report.html`` for a run directory (atomically) and return its path."""
    root = Path(run_dir)
    if not (root / RUN_MARKER).is_file():
        raise FileNotFoundError(f"{root} is not a SPIRAL run directory (no {RUN_MARKER}); "
                                "pass the folder that `spiral run` wrote")
    run = _load_run(root)
    out = root / "report.html"
    atomic.write_text(out, render_html(run))
    return out


# Headless Chromium with everything that could reach the network or write outside the profile switched off.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def find_chromium() -> str:
    """The chromium binary (Debian: ``apt-get install chromium``); a clear error when there is none."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        exe = shutil.which(name)
        if exe:
            return exe
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    raise FileNotFoundError("chromium not found; install it (Debian: apt-get install chromium)")


def chromium_command(report: Path, profile: Path, *, screenshot: Path | None = None,
                     window: tuple[int, int] = (1200, 1600), dump_dom: bool = False) -> list[str]:
    """The headless Chromium command line that screenshots a report or dumps its DOM (tests and docs use it)."""
    cmd = [find_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    if screenshot is not None:
        cmd += [f"--screenshot={screenshot}", f"--window-size={window[0]},{window[1]}"]
    if dump_dom:
        cmd.append("--dump-dom")
    return [*cmd, Path(report).resolve().as_uri()]


def screenshot(report: str | Path, png: str | Path, window: tuple[int, int] = (1200, 1600), timeout: float = 60) -> Path:
    """Render ``report`` in headless Chromium to ``png`` (a throwaway profile, so nothing leaks between runs)."""
    import tempfile

    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="spiral-chromium-") as profile:
        subprocess.run(chromium_command(Path(report), Path(profile), screenshot=png, window=window),
                       check=True, timeout=timeout, capture_output=True)
    if not png.is_file():
        raise RuntimeError(f"chromium exited without writing {png}")
    return png


# ---- reading the run ------------------------------------------------------------------------
def _read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else default


def _load_run(root: Path) -> dict[str, Any]:
    """Everything the report shows, as plain dicts; missing optional files become empty values."""
    plan_doc = _read_json(root / "plan.json", {"plans": []})
    if isinstance(plan_doc, dict) and "plans" not in plan_doc and "steps" in plan_doc:
        plan_doc = {"plans": [plan_doc]}  # a bare Plan (older demo folders)
    # A resumed run can journal an attempt twice when its segment was lost; the later line wins.
    attempts: dict[tuple[int, int, int], dict] = {}
    for line in atomic.read_jsonl(root / "attempts.jsonl"):
        attempts[(int(line.get("plan_version", 0)), int(line["step"]), int(line["attempt"]))] = line
    config = (root / "config.yaml").read_text(encoding="utf-8") if (root / "config.yaml").is_file() else ""
    return {
        "root": root,
        "meta": _read_json(root / RUN_MARKER, {}),
        "config": config,
        "plans": list(plan_doc.get("plans", [])),
        "reasons": list(plan_doc.get("reasons", [])),
        "attempts": [attempts[k] for k in sorted(attempts)],
        "record": _read_json(root / "record.json", None),
    }


def _load_frames(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as z:
        return z["frames"]


# ---- images ---------------------------------------------------------------------------------
def _scale_for(height: int) -> int:
    return max(1, TARGET_PX // max(1, height))


def _upscale(img: np.ndarray, k: int) -> np.ndarray:
    return img if k == 1 else np.repeat(np.repeat(img, k, axis=0), k, axis=1)


def _png_uri(img: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG", optimize=False, compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _pick(n: int, k: int) -> list[int]:
    """At most ``k`` evenly spaced indices of ``n``, always keeping the first and last."""
    if n <= k:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, k)})


def frame_strip(frames: np.ndarray, indices: Sequence[int] | None = None, gap: int = 2) -> np.ndarray:
    """Frames side by side, upscaled with nearest neighbour so 64×64 frames stay crisp and visible."""
    idx = list(indices) if indices is not None else _pick(len(frames), MAX_STRIP_FRAMES)
    k = _scale_for(frames.shape[1])
    tiles = [_upscale(frames[i], k) for i in idx]
    h, w = tiles[0].shape[:2]
    strip = np.full((h, len(tiles) * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for j, t in enumerate(tiles):
        strip[:, j * (w + gap): j * (w + gap) + w] = t
    return strip


def _apng_uri(frames: np.ndarray, fps: float) -> str:
    """An animated PNG of the video at native size (the page upscales it with pixelated rendering)."""
    idx = _pick(len(frames), MAX_ANIM_FRAMES)
    step = len(frames) / max(1, len(idx))
    imgs = [Image.fromarray(np.ascontiguousarray(frames[i])) for i in idx]
    buf = io.BytesIO()
    imgs[0].save(buf, format="PNG", save_all=True, append_images=imgs[1:], duration=int(1000 * step / max(fps, 1e-3)),
                 loop=0)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ---- html helpers ---------------------------------------------------------------------------
def esc(x: Any) -> str:
    """Escape any value for HTML text or attributes (goals and feedback come from users and LLMs)."""
    return html.escape("" if x is None else str(x), quote=True)


def _chip(text: str, colour: str, cls: str = "chip") -> str:
    return f'<span class="{cls}" style="background:{colour}">{esc(text)}</span>'


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]], attrs: str = "") -> str:
    """A table from already-escaped cell HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _conds(items: Sequence[str]) -> str:
    return "<br>".join(f"<code>{esc(c)}</code>" for c in items) or '<span class="muted">—</span>'


def _fmt_s(x: Any) -> str:
    return f"{float(x):.2f} s" if isinstance(x, (int, float)) else "—"


def _fmt_state(state: Any) -> str:
    if not state:
        return ""
    return f"<details><summary>state</summary><pre>{esc(json.dumps(state, indent=1, sort_keys=True))}</pre></details>"


# ---- sections -------------------------------------------------------------------------------
def _status(run: dict) -> str:
    rec = run["record"]
    return rec.get("status", "running") if rec else "running"


def _header(run: dict) -> str:
    meta, rec = run["meta"], run["record"] or {}
    status = _status(run)
    badge = _chip(status.replace("_", " "), _STATUS_COLOURS.get(status, "#57606a"), "badge")
    note = "" if run["record"] else '<p class="warn">No record.json: the run is still going or was stopped; ' \
                                   "resume it with <code>spiral run --resume</code>.</p>"
    if any(a.get("backend") == "world" for a in run["attempts"]):
        note += ('<p class="warn">Generator: <b>world</b> — the tabletop renderer used as an oracle (it renders the '
                 "requested step exactly, with failures injected on purpose), not a learned video model; results "
                 "with it are the loop's test bench and an upper bound.</p>")
    if rec.get("stop_reason"):
        label = "Stopped because" if status != "success" else "Note"
        note += f'<p class="warn" id="stop-reason">{label}: {esc(rec["stop_reason"])}.</p>'
    for r in rec.get("resumes", []):
        changed = "; ".join(f"{k} from {v[0]} to {v[1]}" for k, v in r.get("changed", {}).items())
        note += f'<p class="muted">Resumed at {esc(r.get("at", "?"))} with {esc(changed)}.</p>'
    note += _unverified_note(rec)
    fb = rec.get("fallback")
    if fb:
        used = "used: its video is this run's" if fb.get("used") else "not used: the closed loop's video is kept"
        note += (f'<p class="warn" id="fallback-note"><b>Open-loop fallback</b> {esc(used)} '
                 f'({esc(fb.get("reason", ""))}).</p>')
    counts = rec.get("counts", {})
    source = f"image {esc(meta['image'])}" if meta.get("image") else f"scene {esc(meta.get('scene'))}"
    facts = [("mode", esc(rec.get("mode") or _cfg(run, "loop", "mode") or "?")), ("start", source),
             ("accepted steps", esc(counts.get("accepted", "—"))),
             ("unverified steps", esc(len(rec.get("unverified", [])) if rec else "—")),
             ("generations", esc(counts.get("generations", len(run["attempts"])))),
             ("replans", esc(counts.get("replans", max(0, len(run["plans"]) - 1)))),
             ("wall time", _fmt_s(rec.get("costs", {}).get("wall_seconds")))]
    dl = "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in facts)
    return (f'<header><h1>{esc(meta.get("goal", "(no goal)"))} {badge}</h1>'
            f'<p class="muted">run folder: {esc(run["root"].resolve().name)}</p><dl class="facts">{dl}</dl>{note}</header>')


def _unverified_note(rec: dict) -> str:
    """The plain account of what the run could not verify: the reason, each given-up step and what was kept."""
    if not rec or rec.get("status") in (None, "success", "running"):
        return ""
    reason = rec.get("stop_reason", "")
    items = []
    given_up = rec.get("given_up", [])
    for i, g in enumerate(given_up):
        sub = g.get("sub_action") or {}
        verdict = ", ".join(x for x in (g.get("failure"), g.get("feedback")) if x)
        stopped = rec.get("status") == "budget_exhausted" and i == len(given_up) - 1
        kept = (f'its best-scoring attempt was kept <b>unverified</b> (<a href="#{_anchor(g["kept"])}">'
                f'{esc(g["kept"])}</a>)') if g.get("kept") else (
            "nothing was kept: the run stopped here" if stopped else "nothing new was kept")
        items.append(f"<li>step {esc(int(g.get('step', 0)) + 1)} of plan v{esc(g.get('plan_version', 0))}: "
                     f"<b>{esc(sub.get('text', ''))}</b>, given up after {esc(g.get('attempts'))} attempt(s) "
                     f"({esc(g.get('reason', ''))})" + (f"; last verdict: {esc(verdict)}" if verdict else "")
                     + f"; {kept}</li>")
    n = len(rec.get("unverified", []))
    head = (f"{n} of {len(rec.get('accepted', []))} kept steps are unverified: no critic passed them. "
            if n else "")
    body = f"<ul>{''.join(items)}</ul>" if items else ""
    return (f'<div class="warn" id="unverified-note"><b>{esc(rec["status"].replace("_", " "))}</b>: '
            f"{esc(head)}{esc(reason)}{body}</div>")


def _anchor(segment_file: str) -> str:
    """The id of the attempt card showing a segment (``segments/v1_s02_a03.npz`` → ``attempt-v1-s2-a3``)."""
    m = re.search(r"v(\d+)_s(\d+)_a(\d+)", segment_file or "")
    if m is None:  # the open-loop fallback's segments (segments/open_loop_s02.npz), journaled as plan version -1
        m = re.search(r"open_loop_s(\d+)", segment_file or "")
        return f"attempt-v-1-s{int(m[1])}-a0" if m else ""
    return f"attempt-v{int(m[1])}-s{int(m[2])}-a{int(m[3])}"


def _media(run: dict) -> str:
    root, rec = run["root"], run["record"] or {}
    first = ""
    if (root / "first_frame.png").is_file():
        img = np.asarray(Image.open(root / "first_frame.png").convert("RGB"))
        first = f'<img class="frame" alt="first frame" src="{_png_uri(_upscale(img, _scale_for(img.shape[0])))}">'
    first_fig = (f'<figure><figcaption>first frame</figcaption>{first or "<p class=muted>missing</p>"}'
                 f'{_fmt_state(run["meta"].get("initial_state"))}</figure>')
    video_name = rec.get("final_video") or "final.mp4"
    path = root / video_name
    if not path.is_file():
        return f'<section class="media">{first_fig}<figure><figcaption>final video</figcaption>' \
               f'<p class="muted">no {esc(video_name)} yet</p></figure></section>'
    fps = float(_cfg(run, "video", "fps") or 8.0)
    try:
        from spiral.video import read_video

        frames: np.ndarray | None = read_video(path)
        err = ""
    except (ValueError, OSError) as e:
        frames, err = None, str(e)
    strip = ""
    if frames is None:
        w = TARGET_PX
        fallback = f'<p class="warn">cannot decode {esc(video_name)}: {esc(err)}</p>'
    else:
        w = frames.shape[2] * _scale_for(frames.shape[1])
        fallback = (f'<img id="final-fallback" class="pixelated" width="{w}" alt="final video (animated)" '
                    f'src="{_apng_uri(frames, fps)}">')
        ends = [int(b) for b in rec.get("step_boundaries", [])][1::2]
        keys = sorted({0, *[b for b in ends if 0 <= b < len(frames)]}) if ends else _pick(len(frames), 9)
        strip = (f'<figure class="wide"><figcaption>key frames (the start and the end of each accepted step: '
                 f'frames {esc(", ".join(map(str, keys)))} of {len(frames)})</figcaption>'
                 f'<img id="final-keyframes" class="strip" alt="final key frames" '
                 f'src="{_png_uri(frame_strip(frames, keys))}"></figure>')
    video = (f'<video id="final-video" controls loop muted src="{esc(video_name)}" class="pixelated" width="{w}" '
             'autoplay playsinline></video>')
    return (f'<section class="media">{first_fig}'
            f'<figure><figcaption>final video (<a href="{esc(video_name)}">{esc(video_name)}</a>)</figcaption>'
            f'{video}</figure>'
            f'<figure><figcaption>the same video as an animated image, for browsers that cannot play the one '
            f'above</figcaption>{fallback}</figure>{strip}</section>')


def _cfg(run: dict, section: str, key: str) -> Any:
    """A value from config.yaml, or None when the file or key is missing or unreadable."""
    import yaml

    try:
        doc = yaml.safe_load(run["config"]) if run["config"] else None
    except yaml.YAMLError:
        return None
    sec = doc.get(section) if isinstance(doc, dict) else None
    return sec.get(key) if isinstance(sec, dict) else None


def _by_key(attempts: list[dict]) -> dict[tuple[int, int], list[dict]]:
    out: dict[tuple[int, int], list[dict]] = {}
    for a in attempts:
        out.setdefault((int(a.get("plan_version", 0)), int(a["step"])), []).append(a)
    return out


def _kept(run: dict) -> set[str]:
    rec = run["record"] or {}
    return set(rec.get("accepted", []))


def _unverified(run: dict) -> set[str]:
    rec = run["record"] or {}
    return set(rec.get("unverified", []))


def _is_kept(a: dict, kept: set[str]) -> bool:
    return a.get("decision") == "accept" or a.get("segment_file") in kept


def _replan_reason(run: dict, version: int) -> str:
    """Why plan ``version`` was made: recorded if the journal says, else inferred from the attempts before it."""
    if version == 0:
        return ""
    recorded = run["reasons"][version] if version < len(run["reasons"]) else None
    plan = run["plans"][version] if version < len(run["plans"]) else {}
    recorded = recorded or (plan.get("reason") if isinstance(plan, dict) else None)
    if recorded:
        return str(recorded)
    prev = [a for a in run["attempts"] if int(a.get("plan_version", 0)) == version - 1]
    if not prev:
        return "re-planned (no attempts recorded for the previous plan)"
    last = prev[-1]
    step = int(last["step"]) + 1
    fb = (last.get("verdict") or {}).get("feedback", "")
    decision = last.get("decision")
    if decision == "accept":
        return "goal not reached after the previous plan's last step"
    if decision == "replan":
        return f"critic asked to re-plan at step {step}" + (f": {fb}" if fb else "")
    n = sum(1 for a in prev if int(a["step"]) == int(last["step"]))
    return f"step {step} spent its attempt budget ({n} attempts, last decision {decision})" + (f": {fb}" if fb else "")


def _step_outcome(attempts: list[dict], kept: set[str], unverified: set[str] = frozenset(),
                  given_up: dict | None = None) -> str:
    n = len(attempts)
    word = "attempt" if n == 1 else "attempts"
    if given_up is not None:
        what = (f"kept its best attempt unverified ({esc(given_up['kept'])})" if given_up.get("kept")
                else esc(given_up.get("reason", "")))
        return f'<span class="warnc">⚠ given up</span> ({n} {word} in this plan; {what})'
    if not attempts:
        return '<span class="muted">not reached</span>'
    if any(a.get("segment_file") in unverified for a in attempts):
        return f'<span class="warnc">⚠ kept unverified</span> ({n} {word})'
    if any(a.get("decision") == "accept" for a in attempts):
        return f'<span class="ok">✓ accepted</span> ({n} {word})'
    if any(_is_kept(a, kept) for a in attempts):
        return f'<span class="warnc">↻ kept, re-planned</span> ({n} {word})'
    return f'<span class="bad">✗ not accepted</span> ({n} {word})'


def _plans(run: dict) -> str:
    plans = run["plans"]
    if not plans:
        return '<section><h2>Plan</h2><p class="muted">no plan.json</p></section>'
    by_key, kept, unverified = _by_key(run["attempts"]), _kept(run), _unverified(run)
    given_up = {(int(g.get("plan_version", 0)), int(g.get("step", 0))): g
                for g in (run["record"] or {}).get("given_up", [])}
    parts = []
    for v, plan in enumerate(plans):
        latest = v == len(plans) - 1
        rows = []
        for i, s in enumerate(plan.get("steps", [])):
            outcome = _step_outcome(by_key.get((v, i), []), kept, unverified, given_up.get((v, i)))
            rows.append([esc(i + 1), esc(s.get("text", "")), _conds(s.get("preconditions", [])),
                         _conds(s.get("postconditions", [])), outcome])
        table_id = "plan-table" if latest else f"plan-table-v{v}"
        cls = "plan" if latest else "plan superseded"
        table = _table(["step", "action", "pre-conditions", "post-conditions", "outcome"], rows,
                       f' id="{table_id}" class="{cls}"')
        reason = _replan_reason(run, v)
        title = f"Plan v{v}" + (" (current)" if latest and len(plans) > 1 else "")
        parts.append(f'<h3>{esc(title)}</h3>'
                     + (f'<p class="reason">re-plan reason: {esc(reason)}</p>' if reason else "")
                     + (f'<p class="muted">{esc(plan["rationale"])}</p>' if plan.get("rationale") else "")
                     + (table if rows else '<p class="muted">empty plan (nothing left to do)</p>'))
    return "<section><h2>Plan</h2>" + "".join(parts) + "</section>"


def _scores(verdict: dict) -> str:
    rows = []
    for k, v in verdict.get("scores", {}).items():
        pct = max(0.0, min(1.0, float(v))) * 100
        rows.append(f'<tr><td>{esc(k)}</td><td class="num">{float(v):.2f}</td>'
                    f'<td><div class="bar"><div style="width:{pct:.0f}%"></div></div></td></tr>')
    return f'<table class="scores">{"".join(rows)}</table>' if rows else ""


def _attempt_card(run: dict, a: dict, kept: set[str], unverified: set[str] = frozenset()) -> str:
    root = run["root"]
    rel = str(a.get("segment_file", ""))
    decision = str(a.get("decision", "?"))
    try:
        frames = _load_frames(root / rel)
        strip = (f'<img class="strip" alt="attempt frames" src="{_png_uri(frame_strip(frames))}">'
                 f'<div class="muted small">{len(frames)} frames'
                 + (" (every frame)" if len(frames) <= MAX_STRIP_FRAMES else f", {MAX_STRIP_FRAMES} shown") + "</div>")
    except (OSError, ValueError, KeyError) as e:
        strip = f'<p class="warn">segment {esc(rel)} unreadable: {esc(type(e).__name__)}: {esc(e)}</p>'
    verdict = a.get("verdict")
    if verdict:
        passed = '<span class="ok">passed</span>' if verdict.get("passed") else '<span class="bad">failed</span>'
        failure = f' · failure: <b>{esc(verdict["failure"])}</b>' if verdict.get("failure") else ""
        fb = verdict.get("feedback", "")
        judged = (f'<div>{passed}{failure}</div>{_scores(verdict)}'
                  + (f'<p class="feedback">{esc(fb)}</p>' if fb else "")
                  + _fmt_state(verdict.get("observed_state")))
    else:
        judged = '<p class="muted">no verdict (no critic in this mode: accepted as generated)</p>'
    response = a.get("response")
    if response and response != decision:
        judged += (f'<p class="loopnote">loop: {_chip(response, _DECISION_COLOURS.get(response, "#57606a"))} '
                   f'{esc(a.get("note", ""))}</p>')
    secs = a.get("seconds", {}) or {}
    timing = " · ".join(f"{esc(k)} {float(v):.2f} s" for k, v in secs.items() if isinstance(v, (int, float)))
    mp4 = rel.replace(".npz", ".mp4")
    link = f' · <a href="{esc(mp4)}">mp4</a>' if (root / mp4).is_file() else ""
    # accepted: green; kept unverified (no critic passed it): yellow; kept as what happened but re-planned: amber;
    # rejected: red edge
    cls = "attempt " + ("unverified" if rel in unverified else "kept" if decision == "accept"
                        else "kept replanned" if _is_kept(a, kept) else "rejected")
    mark = f' {_chip("kept unverified", "#9a6700")}' if rel in unverified else ""
    return (f'<div class="{cls}" id="attempt-v{esc(a.get("plan_version", 0))}-s{esc(a["step"])}-a{esc(a["attempt"])}">'
            f'<div class="ahead"><b>attempt {esc(int(a["attempt"]) + 1)}</b> '
            f'{_chip(decision, _DECISION_COLOURS.get(decision, "#57606a"))}{mark}'
            f'<span class="muted small"> seed {esc(a.get("seed"))}'
            + (f' · {esc(a["backend"])}' if a.get("backend") else "")
            + (f" · {timing}" if timing else "") + f"{link}</span></div>"
            f'<div class="prompt">prompt: {esc(a.get("prompt", ""))}</div>{strip}{judged}</div>')


def _attempts(run: dict) -> str:
    if not run["attempts"]:
        return '<section><h2>Attempts</h2><p class="muted">no attempts recorded</p></section>'
    kept, unverified, parts = _kept(run), _unverified(run), []
    for (v, s), group in _by_key(run["attempts"]).items():
        fallback = v < 0  # the open-loop fallback rolls out the first plan (spiral/loop.py section 8)
        plan = run["plans"][max(v, 0)] if max(v, 0) < len(run["plans"]) else {}
        steps = plan.get("steps", [])
        sub = group[0].get("sub_action") or (steps[s] if s < len(steps) else {})
        where = "open-loop fallback (plan v0 as plan_only makes it)" if fallback else f"plan v{v}"
        title = f"{where} · step {s + 1}: {sub.get('text', '')}"
        parts.append(f'<div class="step"><h3>{esc(title)}</h3>'
                     + "".join(_attempt_card(run, a, kept, unverified) for a in group) + "</div>")
    return "<section><h2>Attempts</h2>" + "".join(parts) + "</section>"


def _costs(run: dict) -> str:
    rec = run["record"]
    if not rec:
        return '<section><h2>Costs</h2><p class="muted">no record.json yet</p></section>'
    c, n = rec.get("costs", {}), rec.get("counts", {})
    wall = float(c.get("wall_seconds") or 0.0)

    def share(x: Any) -> str:
        return f"{100 * float(x) / wall:.1f}%" if wall > 0 and isinstance(x, (int, float)) else "—"

    rows = []
    for label, key in [("generator", "generate"), ("critic", "judge"), ("planner", "plan"), ("compose", "compose"),
                       ("other (loop, I/O)", "other")]:
        secs = c.get(f"{key}_seconds")
        calls = n.get(f"{key}_calls")
        rows.append([esc(label), esc("—" if calls is None else calls), _fmt_s(secs), share(secs)])
    rows.append(["<b>wall</b>", "", f"<b>{_fmt_s(wall)}</b>", "100%" if wall else "—"])
    gen, judge = float(c.get("generate_seconds") or 0.0), float(c.get("judge_seconds") or 0.0)
    outside = f"{100 * max(0.0, wall - gen - judge) / wall:.1f}%" if wall > 0 else "—"
    summary = [["generations per accepted step", esc(c.get("generations_per_accepted_step", "—"))],
               ["share of wall time outside generator + critic calls", outside],
               ["generations", esc(n.get("generations", "—"))], ["accepted steps", esc(n.get("accepted", "—"))],
               ["replans", esc(n.get("replans", "—"))],
               ["journal replays (resume)", esc(n.get("replayed_calls", 0))]]
    return ('<section><h2>Costs</h2><div class="costs">'
            + _table(["component", "calls", "seconds", "share of wall"], rows, ' id="costs-table"')
            + _table(["measure", "value"], summary, ' id="cost-summary"') + "</div></section>")


def _config(run: dict) -> str:
    if not run["config"]:
        return ""
    return f'<section><details><summary>config.yaml</summary><pre>{esc(run["config"])}</pre></details></section>'


_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; background: #f6f8fa;
       margin: 0; padding: 24px; }
main { max-width: 1150px; margin: 0 auto; }
header, section { background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 16px 20px; margin: 0 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 0 0 10px; } h3 { font-size: 14px; margin: 14px 0 6px; }
.badge, .chip { color: #fff; border-radius: 12px; padding: 2px 10px; font-size: 12px; font-weight: 600; vertical-align: middle; }
.chip { padding: 1px 8px; font-size: 11px; }
.muted { color: #57606a; } .small { font-size: 12px; }
.warn { background: #fff8c5; border: 1px solid #d4a72c; padding: 6px 10px; border-radius: 6px; }
.ok { color: #1a7f37; font-weight: 600; } .bad { color: #c62828; font-weight: 600; } .warnc { color: #b35900; font-weight: 600; }
dl.facts { display: flex; flex-wrap: wrap; gap: 8px 28px; margin: 10px 0 0; }
dl.facts dt { font-size: 11px; text-transform: uppercase; color: #57606a; } dl.facts dd { margin: 0; font-weight: 600; }
.media { display: flex; flex-wrap: wrap; gap: 20px; align-items: flex-start; }
figure { margin: 0; } figure.wide { flex-basis: 100%; } figcaption { font-size: 12px; color: #57606a; margin-bottom: 4px; }
.frame, .pixelated, .strip { image-rendering: pixelated; border: 1px solid #d0d7de; background: #000; }
.strip { max-width: 100%; height: auto; display: block; }
table { border-collapse: collapse; margin: 4px 0; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
table.plan { width: 100%; } table.superseded { opacity: .7; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; background: #eff1f3; padding: 0 3px; border-radius: 3px; }
.reason { border-left: 3px solid #b35900; padding-left: 8px; }
.step { border-top: 1px solid #eaeef2; padding-top: 4px; }
.attempt { border: 1px solid #d0d7de; border-left: 4px solid #d0d7de; border-radius: 6px; padding: 8px 10px; margin: 8px 0; }
.attempt.kept { border-color: #1a7f37; border-left-color: #1a7f37; background: #f0fff4; }
.attempt.replanned { border-color: #b35900; border-left-color: #b35900; background: #fff8f0; }
.attempt.rejected { border-left-color: #c62828; }
.attempt.unverified { border-color: #9a6700; border-left-color: #9a6700; background: #fff8c5; }
.loopnote { font-size: 12px; margin: 4px 0 0; }
.ahead { margin-bottom: 4px; } .prompt { font-size: 12px; margin-bottom: 6px; word-break: break-word; }
.feedback { background: #f6f8fa; border-radius: 4px; padding: 4px 8px; margin: 6px 0 0; white-space: pre-wrap; }
table.scores td { border: none; padding: 1px 6px; font-size: 12px; } .num { text-align: right; font-variant-numeric: tabular-nums; }
.bar { width: 120px; height: 8px; background: #eaeef2; border-radius: 4px; overflow: hidden; }
.bar > div { height: 100%; background: #0969da; }
.costs { display: flex; flex-wrap: wrap; gap: 24px; }
pre { background: #f6f8fa; padding: 8px; border-radius: 6px; overflow: auto; font-size: 12px; }
summary { cursor: pointer; color: #0969da; font-size: 12px; }
"""


def render_html(run: dict) -> str:
    """The whole page for a loaded run."""
    body = _header(run) + _media(run) + _plans(run) + _attempts(run) + _costs(run) + _config(run)
    title = f"SPIRAL · {run['meta'].get('goal', '')} · {_status(run)}"
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{_CSS}</style></head>"
            f"<body><main>{body}</main></body></html>\n")
