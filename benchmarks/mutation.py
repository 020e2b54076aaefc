"""Mutation score of the core (mutmut), one module at a time, with only the tests that cover it. Not run in CI.

Each target below is one entry: the file, the functions in it that count (all of them when ``functions`` is
None), the pytest arguments that select its covering tests, and the mutants judged *equivalent* (no test can
tell them from the original: they are named with the reason, and left out of the score). For every target the
script copies the working tree (``git ls-files``: tracked and untracked, not ignored) into a scratch folder,
writes mutmut's settings into that copy's pyproject.toml, runs ``mutmut run`` on the target's functions (mutmut
forks one worker per mutant and runs only the tests that reached the mutated function, fastest first, ``-x``),
reads mutmut's per-file results and recovers every mutant's diff from the mutated source it wrote, then prints
a table and writes ``benchmarks/results/mutation_<target>.json``.

    python benchmarks/mutation.py                      # every target but those marked rerun_after_merge
    python benchmarks/mutation.py flow grpo_objective  # some targets
    python benchmarks/mutation.py --list
    python benchmarks/mutation.py --resume flow       # re-test only what the last run in --scratch did not kill
    python benchmarks/mutation.py --survivors metrics  # re-test only its survivors (after a test was added)

``--resume`` keeps the scratch copy of an earlier run, refreshes its files from the tree, and re-tests only the
target's mutants that run did not kill (survivors and unchecked ones); the killed verdicts carry over. That is
sound only while the mutated file is unchanged and its tests were only added or tightened since (a killed
mutant cannot then come back); the results file says how many verdicts were carried.

Score = killed / (mutants - equivalent); killed includes a timeout (the tests noticed a hang). A run stopped
early (``complete: false``) is scored over the mutants it checked, and ``not_checked`` says how many remain. A surviving
mutant that matters gets a test (docs/mutation.md); an equivalent one gets an entry in ``equivalent``. Mutants
are matched to equivalents by function and changed line, so the entries survive renumbering. It is CPU-heavy:
``nice``, one torch thread, ``--max-children 1`` by default on the 2-core machine; ~5-30 min per target.
Needs the ``mutation`` extra (``pip install -e '.[mutation]'``).
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchlib import parser, write_result

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
KILLED = {"killed", "timeout", "segfault", "caught by type check"}


@dataclass(frozen=True)
class Equivalent:
    """A mutant no test can tell from the original: ``function`` with line ``before`` changed to ``after``
    (substrings of the stripped lines), and why the behaviour is the same."""

    function: str
    before: str
    after: str
    why: str


@dataclass
class Target:
    """One module's mutation check."""

    file: str
    tests: list[str]
    functions: list[str] | None = None  # "name" or "Class.method"; None: every function of the file
    equivalent: list[Equivalent] = field(default_factory=list)
    rerun_after_merge: bool = False  # skipped by default (the code is being rewritten elsewhere)
    note: str = ""


_NO_WRAP = ("the other operand is int16, so the difference is computed without uint8 wrap-around either way (float64 "
            "or int16 of the same 0..255 integers)")
_AS_FLOAT = ("the guess is clipped and cast to uint8 right after: any numeric array the interpolator returns (float32, "
             "float64, integers) truncates to the same pixels")
_NO_STATES = ("a step judge reads no states: every entry is None, and drift and faithfulness stop at states[0] being "
              "None (or the list being empty or None), so the list's length and the list itself are never read")
_F64 = ("astype(None) / asarray(..., None) is float64 (numpy's default) for uint8 frames, or promotes to float64 in the "
        "subtraction or division that follows: the same numbers")
_EQUAL_PAIRS = ("every pair of frames has the same number of pixels, so the mean of the per-pair means is the mean over "
                "all of them however the pixels are grouped")
_CPU_ONLY = "equivalent on a CPU-only machine: every tensor is on the CPU already, so device=None is the same device"
_ANCHOR_STATE = ("faithfulness asks its reference only for artifact_area, which renders the step's own state; the "
                 "anchor state is read by drift() alone")
_NOISE = "a different but equally distributed draw: the step stays an exact sample of the same Gaussian"
_FLOOR = ("below z = -50, 1/(1 + e^z) rounds to exactly 1.0 in float64 (e^-50 is far below half an ulp of 1), so a "
          "lower clip at -50, at -51 or none gives the same score")
_CLEAR_FREE = ("the clear and free branches of _pred_prob compute the same expression (no block on the object), so "
               "sending either literal down the other branch changes nothing")
_PROB_CLIP = ("the action and preservation scores are minima of probabilities (recogniser softmax classes and layout "
              "marginals times a rest probability clipped to [0, 1]), already within [0, 1]")
_CHANGE_TEXT = "_change_text ignores its start state (it words where the object is now), so passing None changes nothing"

TARGETS: dict[str, Target] = {
    "flow": Target(
        file="spiral/flow.py",
        tests=["tests/test_flow.py"],
        equivalent=[
            Equivalent("_per_sample", "device=x.device", "device=None", _CPU_ONLY),
            Equivalent("_per_sample", "device=x.device", "dtype=x.dtype, )", _CPU_ONLY),
            Equivalent("sde_step", "device=x.device", "device=None", _CPU_ONLY),
            Equivalent("sde_step", "device=x.device", "dtype=torch.float32, )", _CPU_ONLY),
            Equivalent("sde_step", "torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)",
                       "torch.randn(x.shape, generator=generator, dtype=x.dtype, )", _CPU_ONLY),
            Equivalent("sde_step", "dtype=torch.float32, device=x.device", "dtype=None",
                       "torch.zeros defaults to float32, the dtype named"),
            Equivalent("sde_step", "dtype=torch.float32, device=x.device", "torch.zeros(x.shape[0], device=x.device)",
                       "torch.zeros defaults to float32, the dtype named"),
            Equivalent("sde_step", "torch.randn(x.shape, generator=generator, dtype=x.dtype",
                       "torch.randn(x.shape, generator=generator, dtype=None", _NOISE + " (drawn in float32, cast)"),
            Equivalent("sde_step", "torch.randn(x.shape, generator=generator, dtype=x.dtype",
                       "torch.randn(x.shape, generator=generator, device=x.device)", _NOISE + " (drawn in float32)"),
            Equivalent("sigma_schedule", "dtype=torch.float64), shift)", "dtype=None), shift)",
                       "the float32 grid 1..0 rounds to the same float32 σ after the float64 shift"),
            Equivalent("sigma_schedule", "dtype=torch.float64), shift)", "steps + 1, ), shift)",
                       "the float32 grid 1..0 rounds to the same float32 σ after the float64 shift"),
        ],
    ),
    "grpo_objective": Target(
        file="spiral/train/grpo.py",
        functions=["group_advantages", "clipped_objective"],
        tests=["tests/test_grpo.py", "-k",
               "advantages or clipped_objective or raises_the_log_prob"],
    ),
    "score_combination": Target(
        file="spiral/types.py",
        functions=["combine_scores"],
        tests=["tests/test_contracts.py", "tests/test_grpo.py", "-k", "combin"],
    ),
    "critic_eval_accuracy": Target(
        file="spiral/bench/critic_eval.py",
        functions=["accuracy_with_ties", "LabelledResult.summary", "_mean"],
        tests=["tests/test_critic.py", "-k", "accuracy_with_ties or labelled_summary or harness"],
        equivalent=[
            Equivalent("accuracy_with_ties", "np.asarray(margins, np.float64)", "np.asarray(margins, None)",
                       "integer margins compare and take abs the same; ε and τ are cast to float anyway"),
            Equivalent("accuracy_with_ties", "np.asarray(margins, np.float64)", "np.asarray(margins, )",
                       "integer margins compare and take abs the same; ε and τ are cast to float anyway"),
            Equivalent("accuracy_with_ties", "best, best_eps = -1.0, 0.0", "best, best_eps = -2.0, 0.0",
                       "τ ≥ 0, so any negative start is beaten by the first ε"),
            Equivalent("accuracy_with_ties", "best, best_eps = -1.0, 0.0", "best, best_eps = -1.0, 1.0",
                       "the first ε always replaces the starting best_eps (τ ≥ 0 > −1)"),
            Equivalent("_mean", 'if v else float("nan")', 'if (v) or True else float("nan")',
                       "np.mean of an empty list is NaN too (with a warning)"),
            Equivalent("_mean", 'float("nan")', 'float("NAN")', 'float("NAN") is NaN as well'),
            Equivalent("accuracy_with_ties", 'without = float("nan")', 'without = float("NAN")',
                       'float("NAN") is NaN as well'),
            Equivalent("accuracy_with_ties", "(s == lab[nt]).astype(float)", "(s == lab[nt]).astype(None)",
                       "astype(None) is numpy's default dtype, float64, the same as astype(float)"),
        ],
    ),
    "critic_rules": Target(
        file="spiral/critics/tabletop.py",
        functions=["TabletopCritic.judge", "TabletopCritic._pred_prob", "TabletopCritic._same_prob", "_sigmoid_score",
                   "_changed"],
        tests=["tests/test_critic.py"],
        note="the judge's rule cascade: scores, thresholds, cause and decision (feedback wording included)",
        equivalent=[
            Equivalent("_sigmoid_score", "np.clip(sharpness * (evidence - at_half), -50, 50)",
                       "np.clip(sharpness * (evidence - at_half), None, 50)", _FLOOR),
            Equivalent("_sigmoid_score", "np.clip(sharpness * (evidence - at_half), -50, 50)",
                       "np.clip(sharpness * (evidence - at_half), -51, 50)", _FLOOR),
            Equivalent("TabletopCritic._pred_prob", 'elif p.name == "clear":', 'elif p.name != "clear":', _CLEAR_FREE),
            Equivalent("TabletopCritic._pred_prob", 'elif p.name == "clear":', 'elif p.name == "XXclearXX":',
                       _CLEAR_FREE),
            Equivalent("TabletopCritic._pred_prob", 'elif p.name == "clear":', 'elif p.name == "CLEAR":', _CLEAR_FREE),
            Equivalent("TabletopCritic.judge", "default=1.0)", "default=2.0)",
                       "the action score is clipped to [0, 1] before any use, so an empty post-condition list scores 1 "
                       "either way"),
            Equivalent("TabletopCritic.judge", "if area is not None else 1.0", "if area is not None else 2.0",
                       "consistency = min(steady, faithful) and steady <= 1, so a faithful score of 1 or 2 gives the same "
                       "consistency, and faithful < threshold is false for both"),
            *(Equivalent("TabletopCritic.judge", before, after, _PROB_CLIP) for before, after in (
                ("np.clip(action_score, 0, 1)", "np.clip(action_score, None, 1)"),
                ("np.clip(action_score, 0, 1)", "np.clip(action_score, 0, None)"),
                ("np.clip(action_score, 0, 1)", "np.clip(action_score, 0, 2)"),
                ("np.clip(preservation, 0, 1)", "np.clip(preservation, None, 1)"),
                ("np.clip(preservation, 0, 1)", "np.clip(preservation, 0, None)"),
                ("np.clip(preservation, 0, 1)", "np.clip(preservation, 0, 2)"))),
            Equivalent("TabletopCritic.judge", "self._not_rest_feedback(not_rest, lid_partial, action, r)",
                       "self._not_rest_feedback(not_rest, None, action, r)",
                       "_not_rest_feedback never reads its lid_partial argument (without a block off its rest it is "
                       "the lid, by the rule that called it)"),
            Equivalent("TabletopCritic.judge", 'cause, feedback = None, ""', 'cause, feedback = None, "XXXX"',
                       "every branch of the cascade sets the feedback (the accepting one to \"done: ...\"), so the "
                       "starting value is never read"),
            *(Equivalent("TabletopCritic.judge", before, after, _CHANGE_TEXT) for before, after in (
                ("_change_text(o, s0, s_end) for o in changed)", "_change_text(o, None, s_end) for o in changed)"),
                ("_change_text(o, s0, s_end) for o in others)", "_change_text(o, None, s_end) for o in others)"),
                ('feedback = (f"{_change_text(target, s0, s_end)}, but it cannot',
                 'feedback = (f"{_change_text(target, None, s_end)}, but it cannot'),
                ('feedback = (f"{_change_text(target, s0, s_end)}, but the step',
                 'feedback = (f"{_change_text(target, None, s_end)}, but the step'),
                ('feedback = (f"{_change_text(target, s0, s_end)} instead;',
                 'feedback = (f"{_change_text(target, None, s_end)} instead;'))),
        ],
    ),
    "metrics": Target(
        file="spiral/bench/metrics.py",
        equivalent=[
            Equivalent("faithfulness", "DriftReference(view.anchor, states[0], view.scene)",
                       "DriftReference(view.anchor, None, view.scene)", _ANCHOR_STATE),
            Equivalent("faithfulness", "DriftReference(view.anchor, states[0], view.scene)",
                       "DriftReference(view.anchor, states[1], view.scene)", _ANCHOR_STATE),
            Equivalent("vbench_motion_smoothness", "0, 255).astype(np.uint8)", "0, 255).astype(None)",
                       "the guess is cast to int16 before the difference, which truncates a float guess in 0..255 to "
                       "the same integer the uint8 cast gives"),
            Equivalent("vbench_motion_smoothness", "np.abs(odd[i].astype(np.int16) - guess.astype(np.int16))",
                       "np.abs(odd[i].astype(None) - guess.astype(np.int16))", _NO_WRAP),
            Equivalent("vbench_motion_smoothness", "np.abs(odd[i].astype(np.int16) - guess.astype(np.int16))",
                       "np.abs(odd[i].astype(np.int16) - guess.astype(None))", _NO_WRAP),
            Equivalent("vbench_motion_smoothness", "np.asarray(interp(even[i], even[i + 1]), np.float64)",
                       "np.asarray(interp(even[i], even[i + 1]), None)", _AS_FLOAT),
            Equivalent("vbench_motion_smoothness", "np.asarray(interp(even[i], even[i + 1]), np.float64)",
                       "np.asarray(interp(even[i], even[i + 1]), )", _AS_FLOAT),
            Equivalent("_cos", "if na == 0.0 or nb == 0.0:", "if na == 0.0 and nb == 0.0:",
                       "one zero vector then gives 0/0 = NaN instead of 0.0, and the only caller (feature_consistency) "
                       "takes max(0, cos), which is 0.0 for both"),
            *(Equivalent("action_quality", 'step.get("verb", "")', after,
                         "a step without a verb acts on all its objects whatever stands in for the verb: acted_objects "
                         "only singles out 'move'") for after in ('step.get("verb", None)', 'step.get("verb", )',
                                                                    'step.get("verb", "XXXX")')),
            Equivalent("action_quality", "readings = None", 'readings = ""',
                       "readings is only read as a truth value (no goal: no task completion, no order)"),
            *(Equivalent(fn, before, after, _F64) for fn, before, after in (
                ("feature_consistency", "np.asarray(features, dtype=np.float64)", "np.asarray(features, dtype=None)"),
                ("feature_consistency", "np.asarray(features, dtype=np.float64)", "np.asarray(features, )"),
                ("linear_interpolation", "prev.astype(np.float64) + nxt", "prev.astype(None) + nxt"),
                ("linear_interpolation", "nxt.astype(np.float64)) / 2.0", "nxt.astype(None)) / 2.0"),
                ("motion_smoothness", "np.abs(f[t].astype(np.float64)", "np.abs(f[t].astype(None)"),
                ("motion_smoothness", "f[t + 1]), np.float64)).mean()", "f[t + 1]), None)).mean()"),
                ("motion_smoothness", "f[t + 1]), np.float64)).mean()", "f[t + 1]), )).mean()"),
                ("temporal_flickering", "_check_video(frames, 2).astype(np.float64)",
                 "_check_video(frames, 2).astype(None)"),
                ("masked_mean_abs", "np.abs(a.astype(np.float64) - b", "np.abs(a.astype(None) - b"),
                ("masked_mean_abs", "b.astype(np.float64))[mask]", "b.astype(None))[mask]"),
                ("DriftReference.drift", "np.clip(self.anchor.astype(np.float64) + (r0_lit - r0), 0, 255)",
                 "np.clip(self.anchor.astype(None) + (r0_lit - r0), 0, 255)"))),
            *(Equivalent("temporal_flickering", "per_pair = diffs[:, mask]", after, _EQUAL_PAIRS) for after in (
                "if (mask is not None) or True else", "diffs[:, mask].mean(axis=None)", "diffs.mean(axis=None)")),
            Equivalent("DriftReference.drift", "np.abs(r0_lit - rk) > 0.5", "np.abs(r0_lit - rk) >= 0.5",
                       "the renders are uint8 pictures as float64, so their differences are whole numbers: > 0.5 and "
                       ">= 0.5 pick the same pixels"),
            Equivalent("DriftReference.drift", "mask = ~dilate(changed, 1)", "mask = ~dilate(changed, )",
                       "1 is dilate's default radius"),
            Equivalent("load_run", '.convert("RGB")', ".convert(None)",
                       "a run folder's first_frame.png is written by spiral from an RGB array, and convert(None) of an "
                       "RGB image is the same RGB image"),
            *(Equivalent("score_run", 'aq["_states"] = [None] * (len(view.segments) + 1)', after, _NO_STATES)
              for after in ('aq["_states"] = None', 'aq["_states"] = [None] * (len(view.segments) - 1)',
                            'aq["_states"] = [None] * (len(view.segments) + 2)')),
        ],
        tests=["tests/test_bench.py", "tests/test_bench_metrics.py", "tests/test_bench_features.py", "-k",
               "flicker or consistency_and_smoothness or drift_reference or action_quality or known_outcomes or "
               "faithful_step_success or faithful_task_completion or scene_relative or vbench_motion_smoothness or "
               "motion_default or metric"],
    ),
    "loop": Target(
        file="spiral/loop.py",
        functions=["_respond", "_best", "_final_status", "failure_signature", "_Run.current_step",
                   "_Run.give_up"],
        tests=["tests/test_loop_decisions.py", "tests/test_escalation.py", "tests/test_loop.py", "-k",
               "not sigkill and not demo and not killed"],
        equivalent=[
            Equivalent("_Run.current_step", 'once = ""', "once = None",
                       "once is only read as a truth value (_respond: `if here.once`), and None is as falsy as \"\""),
            Equivalent("_Run.current_step", "entry = GivenUpStep(sub_action=sub, attempts=0,",
                       "entry = GivenUpStep(sub_action=sub, plan_version=s.version,",
                       "attempts defaults to 0 (StepFailure.attempts), the value the line names"),
            Equivalent("_Run.current_step", "s.stuck = None", 's.stuck = ""',
                       "stuck is only compared with an action key, a tuple, which \"\" never equals, and it is reset "
                       "to None before the next attempt"),
            Equivalent("_Run.give_up", "tried = s.here.candidates if s.here is not None else []",
                       "if (s.here is not None) or True else []",
                       "a dead guard: give_up is only reached after current_step made s.here the current step's "
                       "attempts (its stuck branch, within_budget and the loop's give_up all come after it)"),
        ],
        note="the loop's decision logic: the response to a verdict (escalation ladder, budgets, give up), the best "
             "attempt, the final status, a given-up step asked again",
    ),
    "loop_fallback": Target(
        file="spiral/loop.py",
        functions=["prefer_open_loop", "_Run.needs_fallback", "_Run.reading", "_Run.fall_back"],
        tests=["tests/test_fallback.py"],
        equivalent=[
            Equivalent("_Run.fall_back", "segment_path=self.run_dir.segment_file(OPEN_LOOP, k, 0)",
                       "segment_path=self.run_dir.segment_file(OPEN_LOOP, k, None)",
                       "RunDir.segment_file names the fallback's segments by step alone (open_loop_sNN.npz): the "
                       "attempt index is not read for plan version OPEN_LOOP"),
            Equivalent("_Run.fall_back", "segment_path=self.run_dir.segment_file(OPEN_LOOP, k, 0)",
                       "segment_path=self.run_dir.segment_file(OPEN_LOOP, k, 1)",
                       "RunDir.segment_file names the fallback's segments by step alone (open_loop_sNN.npz): the "
                       "attempt index is not read for plan version OPEN_LOOP"),
        ],
        note="the loop's open-loop fallback (section 8): when a run falls back, how the first plan is rolled out as "
             "plan_only makes it, and which video is kept",
    ),
}


# ---- mutmut's names and results -----------------------------------------------------------------
_NAME = re.compile(r"^x(?:ǁ(?P<cls>\w+)ǁ|_)(?P<fn>\w+?)__mutmut_(?P<n>\d+|orig)$")  # x_fn or xǁClassǁfn


def _function_of(key: str) -> str:
    """``spiral.flow.xǁExplorationNoiseǁkl__mutmut_3`` -> ``ExplorationNoise.kl``."""
    m = _NAME.match(key.rsplit(".", 1)[-1])
    if not m:
        raise ValueError(f"not a mutmut mutant name: {key}")
    return f"{m['cls']}.{m['fn']}" if m["cls"] else m["fn"]


def _variants(mutated_source: str) -> dict[str, list[str]]:
    """Every function variant mutmut wrote (``x…__mutmut_N`` and ``…_orig``) by short name, as stripped source
    lines; the def line's name is blanked (default-argument mutants change the def line, nothing else)."""
    lines = mutated_source.splitlines()
    out: dict[str, list[str]] = {}
    for node in ast.walk(ast.parse(mutated_source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _NAME.match(node.name):
            body = [line.strip() for line in lines[node.lineno - 1:node.end_lineno]]
            body[0] = body[0].replace(f"def {node.name}(", "def (", 1)
            out[node.name] = body
    return out


def _diff(orig: list[str], mutant: list[str]) -> tuple[list[str], list[str]]:
    before, after = [], []
    for line in difflib.ndiff(orig, mutant):
        if line.startswith("- "):
            before.append(line[2:])
        elif line.startswith("+ "):
            after.append(line[2:])
    return before, after


def _equivalent(target: Target, function: str, before: list[str], after: list[str]) -> Equivalent | None:
    for e in target.equivalent:
        if e.function == function and any(e.before in b for b in before) and any(e.after in a for a in after):
            return e
    return None


def collect(work: Path, name: str, target: Target) -> dict:
    """Read mutmut's results for one target from its scratch folder."""
    from mutmut.stats import status_by_exit_code

    meta = json.loads((work / "mutants" / f"{target.file}.meta").read_text())
    source = (work / "mutants" / target.file).read_text()
    variants = _variants(source)
    rows = []
    for key, code in sorted(meta["exit_code_by_key"].items(), key=lambda kv: _sort_key(kv[0])):
        function = _function_of(key)
        if target.functions is not None and function not in target.functions:
            continue
        short = key.rsplit(".", 1)[-1]
        orig = variants.get(short.rsplit("__mutmut_", 1)[0] + "__mutmut_orig", [])
        before, after = _diff(orig, variants.get(short, []))
        status = status_by_exit_code[code]
        eq = _equivalent(target, function, before, after) if status not in KILLED else None
        rows.append({"mutant": key, "function": function, "status": status, "before": before, "after": after,
                     "equivalent": eq.why if eq else None})
    if target.functions is not None:
        missing = sorted(set(target.functions) - {r["function"] for r in rows})
        if missing:
            raise SystemExit(f"{name}: no mutants of {missing} in {target.file}; fix benchmarks/mutation.py TARGETS "
                             "(renamed or removed functions)")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    unchecked = counts.get("not checked", 0)  # a run stopped early: scored over the mutants it checked
    checked = [r for r in rows if r["status"] != "not checked"]
    killed = sum(r["status"] in KILLED for r in checked)
    equivalent = [r for r in checked if r["equivalent"]]
    scored = len(checked) - len(equivalent)
    return {
        "target": name, "file": target.file, "functions": target.functions, "tests": target.tests, "note": target.note,
        "mutants": len(rows), "complete": unchecked == 0, "not_checked": unchecked, "killed": killed,
        "equivalent": len(equivalent), "counts": counts,
        "score": round(killed / scored, 4) if scored else None,
        "score_without_exclusions": round(killed / len(checked), 4) if checked else None,
        "surviving": [r for r in checked if r["status"] not in KILLED and not r["equivalent"]],
        "excluded_equivalent": equivalent,
    }


def _sort_key(key: str) -> tuple[str, int]:
    head, _, n = key.rpartition("__mutmut_")
    return head, int(n) if n.isdigit() else -1


# ---- running -----------------------------------------------------------------------------------
def _patterns(target: Target) -> list[str]:
    """mutmut name globs for the target's functions (all of the file's when None)."""
    module = target.file.removesuffix(".py").replace("/", ".")
    if target.functions is None:
        return []
    out = []
    for f in target.functions:
        cls, _, fn = f.rpartition(".")
        out.append(f"{module}.x{'ǁ' + cls + 'ǁ' if cls else '_'}{fn}__mutmut_*")
    return out


def prepare(work: Path, target: Target, resume: bool = False) -> None:
    """A scratch copy of the working tree with mutmut's settings for ``target`` in its pyproject.toml (with
    ``resume`` an earlier copy keeps mutmut's state and gets the tree's files copied over it)."""
    if work.exists() and not resume:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file() and not src.is_symlink():
            dst = work / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    settings = {
        "source_paths": ["spiral"],
        "only_mutate": [target.file],
        "pytest_add_cli_args_test_selection": target.tests,
        "pytest_add_cli_args": ["-p", "no:cacheprovider"],
        "process_isolation": "forkserver",  # torch is not fork-safe once a test ran in the parent
        "use_git_change_detection": False,
        # mutmut's CPU-time limit scales the covering tests' own time, not their fixtures' (a real oracle run is
        # built once per module): 60 CPU seconds more keeps a slow fixture from passing for a hang
        "timeout_constant": 60.0,
        "also_copy": ["configs", "benchmarks"],
    }
    toml = "\n[tool.mutmut]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
    with open(work / "pyproject.toml", "a", encoding="utf-8") as f:
        f.write(toml)


def _commit() -> str:
    """The commit the copy was made from, +dirty when tracked files differ from it."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip())
    return commit.strip() + ("+dirty" if dirty else "")


def _meta_path(work: Path, target: Target) -> Path:
    return work / "mutants" / f"{target.file}.meta"


def _verdicts(work: Path, target: Target) -> dict[str, int | None]:
    """mutmut's exit code per mutant of the target's functions, from an earlier run in ``work`` ({} if none)."""
    path = _meta_path(work, target)
    if not path.is_file():
        return {}
    codes = json.loads(path.read_text())["exit_code_by_key"]
    return {k: c for k, c in codes.items() if target.functions is None or _function_of(k) in target.functions}


def _named_equivalent(work: Path, target: Target) -> set[str]:
    """The mutants of an earlier run in ``work`` that match a named equivalent (not worth re-testing)."""
    path = work / "mutants" / target.file
    if not path.is_file() or not target.equivalent:
        return set()
    variants, out = _variants(path.read_text()), set()
    for key in _verdicts(work, target):
        short = key.rsplit(".", 1)[-1]
        before, after = _diff(variants.get(short.rsplit("__mutmut_", 1)[0] + "__mutmut_orig", []), variants.get(short, []))
        if _equivalent(target, _function_of(key), before, after):
            out.add(key)
    return out


def _killed(code: int | None, timeout: bool = True) -> bool:
    from mutmut.stats import status_by_exit_code

    return code is not None and status_by_exit_code[code] in KILLED and (timeout or status_by_exit_code[code] != "timeout")


def run_target(name: str, target: Target, scratch: Path, max_children: int, resume: bool = False,
               survivors_only: bool = False, stop_after: float | None = None) -> dict:
    work = scratch / name
    commit = _commit()
    before = _verdicts(work, target) if resume else {}
    if resume and not before:
        raise SystemExit(f"{name}: nothing to resume in {work}; run it without --resume first")
    prepare(work, target, resume=resume)
    # a timeout is re-tested too: under load a slow fixture can run out of CPU time where nothing hangs
    equivalent = _named_equivalent(work, target)
    rerun = sorted(k for k, c in before.items() if not _killed(c, timeout=False) and k not in equivalent
                   and (c is not None or not survivors_only))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the mutated copy must win over the tree
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    mutmut = Path(sys.executable).with_name("mutmut")
    cmd = ["nice", "-n", "10", str(mutmut), "run", "--max-children", str(max_children),
           *(rerun if resume else _patterns(target))]
    t0 = time.time()
    if not resume or rerun:
        with open(work / "mutmut.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                rc = proc.wait(timeout=stop_after)
            except subprocess.TimeoutExpired:  # stop cleanly: mutmut keeps every verdict it has, the rest stay unchecked
                proc.send_signal(signal.SIGINT)
                proc.wait()
                rc = 0
        if rc != 0:
            raise SystemExit(f"{name}: mutmut exited {rc}; see {work / 'mutmut.log'}")
    wall = time.time() - t0
    carried = 0
    if resume:  # mutmut may have reset verdicts it cannot vouch for (changed settings): put the kills back
        meta = json.loads(_meta_path(work, target).read_text())
        for key, code in before.items():
            if key not in rerun and _killed(code) and not _killed(meta["exit_code_by_key"].get(key)):
                meta["exit_code_by_key"][key] = code
            carried += key not in rerun and _killed(code)
        _meta_path(work, target).write_text(json.dumps(meta))
    import mutmut

    run = {"wall_seconds": round(wall, 1), "mutmut": mutmut.__version__, "commit": commit,
           "date": time.strftime("%Y-%m-%d")}
    if resume:
        previous = json.loads((work / "run.json").read_text()) if (work / "run.json").is_file() else {}
        run["resumed"] = {"carried_killed": carried, "retested": len(rerun),  # wall_seconds: this part only
                          "earlier_run": previous}  # its own "resumed" names the run before it
    (work / "run.json").write_text(json.dumps(run))
    return collect(work, name, target) | run


def table(results: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="mutation score (mutmut, covering tests only)")
    for c in ("target", "file", "mutants", "killed", "equivalent", "surviving", "unchecked", "score", "wall s"):
        t.add_column(c)
    for r in results:
        t.add_row(r["target"], r["file"], str(r["mutants"]), str(r["killed"]), str(r["equivalent"]),
                  str(len(r["surviving"])), str(r.get("not_checked", 0)), f"{100 * r['score']:.1f} %" if r["score"] is not None else "-",
                  str(r.get("wall_seconds", "")))
    Console().print(t)
    for r in results:
        for s in r["surviving"]:
            print(f"  survived {r['target']}: {s['function']}: {' | '.join(s['before'])} -> {' | '.join(s['after'])}")


def main(argv: list[str] | None = None) -> list[dict]:
    ap = parser(__doc__, "mutation_{target}.json")
    ap.add_argument("targets", nargs="*", help=f"default: every target not marked rerun_after_merge ({', '.join(TARGETS)})")
    ap.add_argument("--list", action="store_true", help="print the targets and exit")
    ap.add_argument("--max-children", type=int, default=1, help="parallel mutant workers (1 on the shared 2 cores)")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/spiral-mutation"), help="where the copies go")
    ap.add_argument("--collect-only", action="store_true", help="re-read finished runs in --scratch, run nothing")
    ap.add_argument("--resume", action="store_true",
                    help="re-test only what the last run in --scratch did not kill (module docstring: when it is sound)")
    ap.add_argument("--survivors", action="store_true",
                    help="like --resume, but re-test only the survivors (a stopped run's unchecked mutants stay so)")
    ap.add_argument("--stop-after", type=float, default=None, metavar="SECONDS",
                    help="stop each target's mutmut after this long and score what it checked (resume it later)")
    args = ap.parse_args(argv)
    if "{target}" not in str(args.json) and len(args.targets) != 1:
        raise SystemExit("--json names one file: give one target, or put {target} in the path")
    if args.list:
        for n, t in TARGETS.items():
            print(f"{n}: {t.file} {t.functions or 'all functions'} tests={' '.join(t.tests)}"
                  f"{' (rerun after merge)' if t.rerun_after_merge else ''}")
        return []
    unknown = [n for n in args.targets if n not in TARGETS]
    if unknown:
        raise SystemExit(f"unknown target(s) {unknown}; choose from {list(TARGETS)}")
    names = args.targets or [n for n, t in TARGETS.items() if not t.rerun_after_merge]
    results = []
    for n in names:
        work = args.scratch / n
        if args.collect_only:
            res = collect(work, n, TARGETS[n])
            res.update(json.loads((work / "run.json").read_text()) if (work / "run.json").is_file() else {})
        else:
            res = run_target(n, TARGETS[n], args.scratch, args.max_children, resume=args.resume or args.survivors,
                             survivors_only=args.survivors, stop_after=args.stop_after)
        res["equivalent_rules"] = [asdict(e) for e in TARGETS[n].equivalent]
        write_result(str(args.json).replace("{target}", n), res, indent=1)
        results.append(res)
    table(results)
    return results


if __name__ == "__main__":
    main()
