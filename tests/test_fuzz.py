"""Fuzzing every parsed input (issue 22 item 6): config YAML, --set strings, manifests, suite files, journal
lines, LLM plan replies and VLM verdict replies, through the properties of tests/fuzz_props.py.

CI runs a few hundred generated cases per kind (the `ci` profile); benchmarks/fuzz.py runs >= 1,000 per kind
(SPIRAL_FUZZ_PROFILE=bench) and writes the counts. Hypothesis keeps no example database here (reproducible
from the printed falsifying example, nothing written into the tree)."""

import json
import os
import tempfile
from pathlib import Path

import fuzz_props as fp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "spiral-hypothesis")  # its notes stay out of the tree

_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
# CI draws the same cases on every run (derandomize: main stays green on the code it was green on); the bench
# profile draws fresh ones each run, so new inputs are explored there and kept below as @example when they fail.
settings.register_profile("ci", max_examples=int(os.environ.get("SPIRAL_FUZZ_EXAMPLES", 200)), derandomize=True,
                          **_COMMON)
settings.register_profile("bench", max_examples=int(os.environ.get("SPIRAL_FUZZ_EXAMPLES", 1000)), derandomize=False,
                          **_COMMON)
settings.load_profile(os.environ.get("SPIRAL_FUZZ_PROFILE", "ci"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from spiral.data.build import BuildConfig, build_tabletop

    root = tmp_path_factory.mktemp("fuzz-ds")
    build_tabletop(root, BuildConfig(episodes=2, seed=31, failures=0.5, max_steps=3), progress=False)
    good = [json.loads(x) for x in (root / "manifest.jsonl").read_text().splitlines()]
    return root, good


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, one_thread):
    from spiral.api import run

    out = tmp_path_factory.mktemp("fuzz-run") / "ref"
    run("turn on the lamp and open the box", scene=4, seed=0, out=out, config=fp.ORACLE,
        overrides=["generator.options.failure_rate=0.5", "output.report=false"])
    return out


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-scratch")


# Each @example is an input an earlier fuzzing run found to crash or mislead (kept as a regression case).
@given(text=fp.config_docs())
@example(text="{}\n")  # an empty mapping ran the embedded default without a word
def test_config_yaml(text, scratch):
    fp.prop_config_yaml(text, scratch)


@given(assignment=fp.set_strings())
@example(assignment="planner=\n")  # the newline made the error two lines
@example(assignment="planner=\x1f")  # not YAML: a control character
@example(assignment="output.segment_videos=F")  # pydantic reads 'F' as False: the oracle has to know it too
@example(assignment="output.report=nope")  # ... and refuse what is not a bool
def test_set_strings(assignment):
    fp.prop_set_string(assignment)


def test_manifests(dataset, scratch):
    root, good = dataset

    @given(lines=fp.manifest_lines(good))
    @example(lines=["0\x1e0"])  # str.splitlines() split this one line in two
    @example(lines=["0\r0"])  # so did read_text()'s newline translation
    @example(lines=['{"\\n": null}'])  # a field name with a newline made a two-line error
    def check(lines):
        fp.prop_manifest(lines, root, scratch / "ds")

    check()


@given(text=fp.suite_docs())
@example(text='{"cases": [{"id": "a", "goal": "open the box", "scene": 1, "length_class": [], "n_steps": 1}]}')  # TypeError
@example(text='{"cases": ' + "[" * 5000 + "]" * 5000 + "}")  # RecursionError
def test_suite_files(text, scratch):
    fp.prop_suite(text, scratch)


def test_journal_lines(run_dir, scratch):
    good = (run_dir / "attempts.jsonl").read_bytes().splitlines()

    @given(data=fp.journal_files(good))
    @example(data=good[0] + b"\n\x00\n\n")  # a torn line before blank lines was skipped, not set aside
    @example(data=good[0] + b"\n\x00\n\x00\n")  # two bad lines at the end: the first one vanished
    def check(data):
        fp.prop_journal(data, run_dir, scratch / "run")

    check()


@given(replies=st.lists(fp.plan_replies(), min_size=1, max_size=3))
@example(replies=['{"steps": ' + "[" * 3000 + "]" * 3000 + "}"])  # RecursionError out of the JSON parser
def test_llm_plan_replies(replies):
    fp.prop_plan_reply(replies)


@given(replies=st.lists(fp.verdict_replies(), min_size=1, max_size=3))
def test_vlm_verdict_replies(replies):
    fp.prop_verdict_reply(replies)
