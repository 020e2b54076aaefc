"""The critic on GENERATED segments: its false-reject and false-accept rates against the bench's reference.

For each generator, every case of the suite runs plan-only: one generation per step, every first attempt
kept, each step conditioned on the previous generated frame, with the seeds ``spiral bench`` gives the case
(so these are the segments the benchmark's plan-only mode scores and the closed loop's first attempts).
Every kept segment is then judged twice:

- **reference** (what the bench counts as a good step, ``spiral.bench.metrics``): the bench judge reads the
  segment's last frame, the step's post-conditions hold there, and the frame is faithful (artifact area
  ≤ ``FAITHFUL_AREA`` against a render of what the judge read, in the scene's look): faithful step success;
- **critic**: ``TabletopCritic.judge`` with the loop's context (anchor frame, the critic's observed state,
  the scene seed), its memory replayed as if every earlier segment had been accepted.

False-reject rate FR = critic rejects / reference-good segments; false-accept rate FA = critic accepts /
reference-bad segments (Wilson 95 % intervals). Every disagreement is listed with both texts in the markdown
page; the first ``--strip-rows`` of each generator also get a strip row (first frame, last frame, a render of
what the judge read, a render of what the critic read).
For the oracle ``world`` generator the truth is known (no failure rendered on purpose, and the post-conditions
hold in the state it really reached): a third opinion, which shows what the last-frame reference cannot see
(a teleport, drift or another object sliding on its own ends in a state that reads right).

    python benchmarks/critic_on_generated.py --suite tabletop-v1 --generators tiny,tiny-evolved,world --seeds 0,1
    python benchmarks/critic_on_generated.py --suite tabletop-smoke --runs /tmp/cog-smoke --doc /tmp/cog.md

Runs go to ``--runs`` (default ``runs/critic_on_generated/SUITE``, git-ignored) and are reused: a case whose
run finished is not generated again, a killed one resumes.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchlib import parser, write_result
from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table

from spiral import api
from spiral.bench.judge import make_judge
from spiral.bench.metrics import (
    FAITHFUL_AREA,
    DriftReference,
    hallucinated_motion,
    holds_all,
    load_run,
    read_states,
)
from spiral.bench.runner import case_seed
from spiral.bench.stats import wilson
from spiral.bench.suite import load_suite
from spiral.critics.tabletop import TabletopCritic
from spiral.memory import Memory
from spiral.types import Segment, SubAction
from spiral.world.domain import State
from spiral.world.render import Appearance, render_state

#: generator name → (config, overrides); the learned generators run with the embedded default's settings
GENERATORS: dict[str, tuple[str, list[str]]] = {
    "tiny": ("configs/run/tabletop.yaml", ["generator.name=tiny"]),
    "tiny-evolved": ("configs/run/tabletop.yaml", ["generator.name=tiny-evolved"]),
    "world": ("configs/run/tabletop-oracle.yaml", []),  # the renderer with injected failures (failure_rate 0.3)
}
SCALE, GAP, CAPTION = 2, 3, 13
ROWS_PER_STRIP = 40


def generate(suite: Any, gen: str, runs: Path, limit: int | None, seed: int, log: Any) -> list[tuple[Any, Path]]:
    """Plan-only runs of every case (reused when finished, resumed when killed); returns (case, run dir)."""
    config, overrides = GENERATORS[gen]
    out = []
    cases = suite.cases[:limit] if limit else suite.cases
    t = time.perf_counter()
    for i, case in enumerate(cases):
        rd = runs / gen / case.id
        if not (rd / "record.json").is_file():
            if (rd / "meta.json").is_file():
                api.run(resume=rd)
            else:
                api.run(case.goal, image=case.image, scene=case.scene, config=config, out=rd,
                        seed=case_seed(seed, case.id), mode="plan_only",
                        overrides=[*overrides, "output.report=false"])
        out.append((case, rd))
        if (i + 1) % 25 == 0:
            log(f"{gen}: {i + 1}/{len(cases)} cases generated ({time.perf_counter() - t:.0f} s)")
    return out


def judge_run(case: Any, run_dir: Path, critic: TabletopCritic, judge: Any) -> list[dict[str, Any]]:
    """One row per kept segment: the reference's reading and the critic's verdict."""
    view = load_run(run_dir)
    states = read_states(judge, [view.anchor] + [seg[-1] for seg in view.segments])
    ref = DriftReference(view.anchor, states[0], view.scene) if states[0] is not None else None
    memory = Memory.start(view.anchor, critic.observe(view.anchor).to_dict(),
                          hints={"scene_seed": view.scene} if view.scene is not None else {})
    by_file = {a["segment_file"]: a for a in view.attempts}
    true_start = json.loads((run_dir / "meta.json").read_text()).get("initial_state")
    prev_clean = True
    rows = []
    for k, (frames, step) in enumerate(zip(view.segments, view.steps, strict=True)):
        sub = SubAction.model_validate(step)
        verdict = critic.judge(Segment(frames=frames), sub, memory)
        memory.commit(frames, sub, verdict, verdict.observed_state)
        post_ok = holds_all(states[k + 1], sub.postconditions)
        area = ref.artifact_area(frames[-1], states[k + 1]) if ref is not None else None
        faithful = area is not None and area <= FAITHFUL_AREA
        halluc = hallucinated_motion(sub.verb, sub.objects, states[k], states[k + 1])
        meta = by_file.get(view.record["accepted"][k], {}).get("generator_meta") or {}
        # the oracle's label is the truth only when it rendered from the true start in the scene's look: it read
        # the conditioning frame right (its own recogniser) and that frame is a clean picture of a state (not drifted,
        # not a block left hanging or dropped between slots by an incomplete step)
        clean_start = meta.get("state") is not None and meta.get("state") == true_start and prev_clean
        # truth: no failure rendered on purpose and the step's post-conditions hold in the state really reached (a
        # plan-only plan can meet another start than it was made for; a step already done needs no motion)
        true_good = (meta.get("failure") in (None, "not_applicable") and meta.get("end_state") is not None
                     and holds_all(State.from_dict(meta["end_state"]), sub.postconditions))
        true_start = meta.get("end_state")
        # the next start frame is clean unless this segment drifted or stopped half-way (a not-applicable step
        # repeats its start frame, clean or not)
        prev_clean = prev_clean if meta.get("failure") == "not_applicable" else meta.get("failure") not in (
            "drift", "incomplete")
        rows.append({
            "case": case.id, "step": k, "text": sub.text, "verb": sub.verb, "objects": sub.objects,
            "scene": view.scene, "run_dir": str(run_dir), "segment": view.record["accepted"][k],
            "reference_good": bool(post_ok and faithful), "post_ok": bool(post_ok),
            "artifact_area": None if area is None else round(float(area), 5), "faithful": bool(faithful),
            "hallucinated_motion": bool(halluc), "strict_good": bool(post_ok and faithful and halluc is False),
            "judge_state": None if states[k + 1] is None else str(states[k + 1]),
            "judge_state_dict": None if states[k + 1] is None else states[k + 1].to_dict(),
            "critic_passed": bool(verdict.passed), "critic_failure": verdict.failure, "critic_feedback": verdict.feedback,
            "critic_scores": verdict.scores, "critic_state_dict": verdict.observed_state,
            "critic_state": None if verdict.observed_state is None else str(State.from_dict(verdict.observed_state)),
            "generator_failure": meta.get("failure"), "clean_start": bool(clean_start), "true_good": bool(true_good),
        })
    return rows


def rates(rows: list[dict[str, Any]], key: str = "reference_good") -> dict[str, Any]:
    """FR/FA of the critic against the reference in ``key`` (``reference_good``, or ``strict_good``: also no
    hallucinated motion, the bench's HM metric: nothing but the acted-on object changed in the judge's reading)."""
    good = [r for r in rows if r[key]]
    bad = [r for r in rows if not r[key]]
    fr = sum(not r["critic_passed"] for r in good)
    fa = sum(r["critic_passed"] for r in bad)
    return {"segments": len(rows), "reference_good": len(good), "reference_bad": len(bad),
            "false_rejects": fr, "false_reject_rate": fr / len(good) if good else None,
            "false_reject_ci95": wilson(fr, len(good)),
            "false_accepts": fa, "false_accept_rate": fa / len(bad) if bad else None,
            "false_accept_ci95": wilson(fa, len(bad)),
            "agreement": sum(r["critic_passed"] == r[key] for r in rows) / len(rows) if rows else None,
            "false_rejects_by_critic_kind": dict(Counter(r["critic_failure"] for r in good if not r["critic_passed"])),
            "false_accepts_by_reference_reason": dict(Counter(
                ("post-conditions fail" if not r["post_ok"] else "unfaithful") for r in bad if r["critic_passed"]))}


def _render(state: dict | None, scene: int | None, size: int) -> np.ndarray:
    if state is None:
        return np.full((size, size, 3), 128, np.uint8)
    look = Appearance.sample(scene) if scene is not None else Appearance.default()
    return render_state(State.from_dict(state), appearance=look, size=size)


def strips(gen: str, rows: list[dict[str, Any]], folder: Path, stem: str, limit: int) -> list[Path]:
    """PNG pages of disagreements: per row first frame, last frame, render of the judge's / critic's reading."""
    from spiral.rundir import load_frames

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    rows = rows[:limit]
    for page in range(0, len(rows), ROWS_PER_STRIP):
        chunk = rows[page:page + ROWS_PER_STRIP]
        size = 64 * SCALE
        w, h = 4 * (size + GAP), len(chunk) * (size + CAPTION + GAP) + CAPTION
        img = Image.new("RGB", (w, h), "white")
        draw = ImageDraw.Draw(img)
        for j, name in enumerate(("first frame", "last frame", "judge read", "critic read")):
            draw.text((j * (size + GAP) + 2, 1), name, fill="black")
        for i, r in enumerate(chunk):
            frames = load_frames(Path(r["run_dir"]) / r["segment"])
            tiles = [frames[0], frames[-1], _render(r["judge_state_dict"], r["scene"], frames.shape[1]),
                     _render(r["critic_state_dict"], r["scene"], frames.shape[1])]
            y = CAPTION + i * (size + CAPTION + GAP)
            for j, tile in enumerate(tiles):
                img.paste(Image.fromarray(tile).resize((size, size), Image.NEAREST), (j * (size + GAP), y))
            verdict = "accept" if r["critic_passed"] else f"reject ({r['critic_failure']})"
            ref = "good" if r["reference_good"] else ("post fails" if not r["post_ok"] else "unfaithful")
            draw.text((2, y + size + 1), f"#{page + i + 1} critic {verdict}; reference {ref}", fill="black")
        path = folder / f"{stem}_{gen}_{page // ROWS_PER_STRIP + 1}.png"
        img.save(path, optimize=True)
        paths.append(path)
    return paths


def write_doc(result: dict[str, Any], doc: Path, strip_paths: dict[str, list[Path]]) -> None:
    """The markdown page: the FR/FA table, how it was measured, and every disagreement."""
    lines = [f"# The critic on generated segments ({result['suite']})", "",
             "Written by `benchmarks/critic_on_generated.py` (the method is in its docstring); JSON: "
             f"`{result['json']}`. Plan-only runs: every first attempt kept; reference = the bench judge's reading "
             "of the last frame meets the step's post-conditions *and* the frame is faithful (artifact area ≤ "
             f"{FAITHFUL_AREA:.1%}); critic = `TabletopCritic.judge` with the loop's context.", "",
             "| generator | segments | reference good / bad | false rejects | FR [95 % CI] | false accepts | "
             "FA [95 % CI] | agreement |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]

    def pct(x: float | None, ci: list[float] | None) -> str:
        return "–" if x is None else f"{100 * x:.1f} % [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"

    for gen, g in result["generators"].items():
        r = g["rates"]
        agree = "–" if r["agreement"] is None else f"{100 * r['agreement']:.1f} %"
        lines.append(f"| {gen} | {r['segments']} | {r['reference_good']} / {r['reference_bad']} | {r['false_rejects']} | "
                     f"{pct(r['false_reject_rate'], r['false_reject_ci95'])} | {r['false_accepts']} | "
                     f"{pct(r['false_accept_rate'], r['false_accept_ci95'])} | "
                     f"{agree} |")
    lines += ["", "Stricter reference: also no hallucinated motion (the bench's HM: in the judge's reading nothing but "
              "the acted-on object changed between the segment's first and last frame). The critic checks that too "
              "(preservation, continuity), so segments where another object moved count as false rejects above.", "",
              "| generator | reference good / bad | FR [95 % CI] | FA [95 % CI] |", "| --- | --- | --- | --- |"]
    for gen, g in result["generators"].items():
        r = g["rates_strict"]
        lines.append(f"| {gen} | {r['reference_good']} / {r['reference_bad']} | "
                     f"{r['false_rejects']}: {pct(r['false_reject_rate'], r['false_reject_ci95'])} | "
                     f"{r['false_accepts']}: {pct(r['false_accept_rate'], r['false_accept_ci95'])} |")
    for gen, g in result["generators"].items():
        r = g["rates"]
        lines += ["", f"## {gen}", "",
                  f"False rejects by the critic's failure kind: {r['false_rejects_by_critic_kind'] or 'none'}; "
                  f"false accepts by why the reference says bad: {r['false_accepts_by_reference_reason'] or 'none'}."]
        if g.get("truth"):
            t = g["truth"]
            lines.append(f"Against the truth (no failure rendered on purpose, post-conditions hold in the state the "
                         f"renderer really reached; {t['segments']} segments rendered from a clean start, "
                         f"{t['excluded']} after a drifted, half-done or misread start left out): critic FR "
                         f"{t['critic_fr']}, FA {t['critic_fa']}; reference FR {t['reference_fr']}, FA "
                         f"{t['reference_fa']}.")
            for d in t["critic_disagrees"]:
                verdict = "accept" if d["critic_passed"] else f"reject, {d['critic_failure']}: {d['critic_feedback']}"
                seed = f" (seed {d['seed']})" if d["seed"] else ""
                lines.append(f"- critic vs truth: {d['case']} / {d['step'] + 1}{seed} {d['text']}: rendered "
                             f"{d['generator_failure'] or 'success'} (truth: {'good' if d['true_good'] else 'bad'}); "
                             f"critic {verdict}")
        if not g["disagreements"]:
            continue
        lines += [""] + [f"![{gen} disagreements, page {i + 1}]({p.relative_to(doc.parent).as_posix()})"
                         for i, p in enumerate(strip_paths.get(gen, []))]
        if len(g["disagreements"]) > result["strip_rows"]:
            lines += ["", f"(strips: the first {result['strip_rows']} of {len(g['disagreements'])}; "
                      "`--strip-rows` draws more)"]
        lines += ["", "| # | case / step | sub-action | critic | reference (judge read · artifact area) |",
                  "| --- | --- | --- | --- | --- |"]
        for i, d in enumerate(g["disagreements"]):
            verdict = "accept" if d["critic_passed"] else f"reject, {d['critic_failure']}: {d['critic_feedback']}"
            ref = ("good" if d["reference_good"] else "post-conditions fail" if not d["post_ok"] else "unfaithful")
            ref += ", another object moved" if d["hallucinated_motion"] else ""
            area = "–" if d["artifact_area"] is None else f"{100 * d['artifact_area']:.2f} %"
            where = f"{d['case']} / {d['step'] + 1}" + (f" (seed {d['seed']})" if d["seed"] else "")
            lines.append(f"| {i + 1} | {where} | "
                         f"{d['text']} | {verdict} | {ref} "
                         f"({d['judge_state']} · {area}) |")
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines) + "\n")


def truth_rates(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """For the oracle generator: FR/FA of the critic and of the reference against the truth (``true_good``: no
    failure rendered on purpose, post-conditions hold in the true end state), on the
    segments it rendered from a clean start (``clean_start``; after a drifted or half-done frame or a misread start
    its success label is not the truth: the colours snap back, or it rendered another state than frame 0 shows)."""
    clean = [r for r in rows if r["clean_start"]]
    if not clean:
        return None
    ok = [r for r in clean if r["true_good"]]
    bad = [r for r in clean if not r["true_good"]]

    def fmt(k: int, n: int) -> str:
        return f"{k}/{n}" if n else "–"

    return {"segments": len(clean), "excluded": len(rows) - len(clean),
            "critic_fr": fmt(sum(not r["critic_passed"] for r in ok), len(ok)),
            "critic_fa": fmt(sum(r["critic_passed"] for r in bad), len(bad)),
            "reference_fr": fmt(sum(not r["reference_good"] for r in ok), len(ok)),
            "reference_fa": fmt(sum(r["reference_good"] for r in bad), len(bad)),
            "critic_disagrees": [r for r in clean if r["critic_passed"] != r["true_good"]]}


def _shown(path: Path) -> str:
    """A path as the page shows it: relative to the working directory when inside it (no machine's absolute path)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = parser(__doc__, "critic_on_generated_SUITE.json")  # SUITE: the suite's name
    ap.add_argument("--suite", default="tabletop-v1", help="suite name or path (tabletop-v1, tabletop-v2, tabletop-smoke)")
    ap.add_argument("--generators", default="tiny,tiny-evolved,world", help=f"comma-separated: {', '.join(GENERATORS)}")
    ap.add_argument("--runs", type=Path, default=None, help="run folders (default runs/critic_on_generated/SUITE)")
    ap.add_argument("--limit", type=int, default=None, help="first N cases only")
    ap.add_argument("--seeds", default="0", help="bench seeds, comma-separated (case seeds as `spiral bench --seed`); "
                    "each seed is one more plan-only run of every case, for more segments (and more failures to "
                    "measure false accepts on)")
    ap.add_argument("--critic-weights", type=Path, default=None, help="critic recogniser weights (default: shipped)")
    ap.add_argument("--judge", default="recognizer", help="reference judge spec (spiral.bench.judge.make_judge)")
    ap.add_argument("--doc", type=Path, default=None, help="markdown page (default docs/critic_on_generated_SUITE.md)")
    ap.add_argument("--strip-rows", type=int, default=ROWS_PER_STRIP,
                    help="disagreements drawn per generator (the page lists them all; PNG strips are ~7 kB a row)")
    args = ap.parse_args(argv)
    gens = [g.strip() for g in args.generators.split(",") if g.strip()]
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
    unknown = [g for g in gens if g not in GENERATORS]
    if unknown:
        ap.error(f"unknown generator(s) {unknown}; choose from {', '.join(GENERATORS)}")
    suite = load_suite(args.suite)
    stem = f"critic_on_generated_{suite.name}"
    runs = args.runs or Path("runs") / "critic_on_generated" / suite.name
    out = Path(str(args.json).replace("SUITE", suite.name))
    doc = args.doc or Path("docs") / f"{stem}.md"
    torch.set_num_threads(1)
    console = Console()
    critic = TabletopCritic(recognizer=args.critic_weights)
    judge = make_judge(args.judge)
    result: dict[str, Any] = {"suite": suite.name, "cases": len(suite.cases[:args.limit] if args.limit else suite.cases),
                              "seeds": seeds, "judge": args.judge, "json": _shown(out), "strip_rows": args.strip_rows,
                              "critic_weights": str(critic.recognizer.path), "generators": {}}
    strip_paths: dict[str, list[Path]] = {}
    for gen in gens:
        t = time.perf_counter()
        rows = []
        for sd in seeds:
            for case, rd in generate(suite, gen, runs / f"seed{sd}" if sd else runs, args.limit, sd, console.print):
                rows += [{**row, "seed": sd} for row in judge_run(case, rd, critic, judge)]
        dis = [r for r in rows if r["critic_passed"] != r["reference_good"]]
        by_kind: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            by_kind["move" if r["verb"] == "move" else r["verb"]].append(r)
        result["generators"][gen] = {
            "rates": rates(rows), "rates_strict": rates(rows, "strict_good"), "by_verb": {k: rates(v) for k, v in sorted(by_kind.items())},
            "truth": truth_rates(rows) if gen == "world" else None,
            "disagreements": dis, "seconds": round(time.perf_counter() - t, 1)}
        strip_paths[gen] = strips(gen, dis, doc.parent / "critic_on_generated", stem, args.strip_rows) if dis else []
    write_result(out, result, indent=1)
    write_doc(result, doc, strip_paths)
    table = Table(title=f"critic vs reference on generated segments ({suite.name})")
    for col in ("generator", "segments", "good/bad", "FR [95 % CI]", "FA [95 % CI]"):
        table.add_column(col)
    for gen, g in result["generators"].items():
        r = g["rates"]
        table.add_row(gen, str(r["segments"]), f"{r['reference_good']}/{r['reference_bad']}",
                      f"{r['false_rejects']} = {r['false_reject_rate'] or 0:.3f} {r['false_reject_ci95']}",
                      f"{r['false_accepts']} = {r['false_accept_rate'] or 0:.3f} {r['false_accept_ci95']}")
    console.print(table)
    console.print(f"wrote {out} and {doc}")
    return result


if __name__ == "__main__":
    main()
