"""Fixtures shared by several test modules."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _strict(report, where: str) -> None:
    """Under CI every extra and tool is installed (.ci/run, make test), so a skip means one is missing: fail."""
    if _under_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{where} skipped under CI, where every extra and tool is installed: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _strict(outcome.get_result(), item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _strict(outcome.get_result(), collector.nodeid)


@pytest.fixture(scope="module")
def one_thread():
    """2 shared cores: one torch thread per test process is faster than two fighting ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    """The loopback llama.cpp server with the tiny GGUF model (``tests/llama_tools.py``), once per test module,
    keyed with that module's ``FAKE_KEY`` (the agent, judge and GRPO tests each check their key is never logged)."""
    import llama_tools

    srv = llama_tools.serve_tiny(tmp_path_factory.mktemp("llama"), request.module.FAKE_KEY)
    yield srv
    srv.stop()


@pytest.fixture
def key_env(monkeypatch, request):
    """The test module's ``FAKE_KEY`` in its ``KEY_ENV``: where the agents read the server's key from."""
    monkeypatch.setenv(request.module.KEY_ENV, request.module.FAKE_KEY)


@pytest.fixture(scope="session")
def bench_script() -> Callable[[str], ModuleType]:
    """Import a script of benchmarks/ by file name (the folder is not a package), once per session; the folder
    goes on sys.path as when a script runs, for the helper they share (benchmarks/benchlib.py)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))

    def load(name: str) -> ModuleType:
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod  # dataclasses look their module up
            spec.loader.exec_module(mod)
        return sys.modules[name]
    return load
