"""What every script in benchmarks/ shares: the argument conventions, the machine block, writing the results JSON.

* :func:`parser` — ``--json PATH`` is always the results file (default ``benchmarks/results/<name>``); a script
  that writes no run folder also takes ``--out PATH`` for it (the older spelling); ``--threads`` (torch CPU
  threads: one number, or a comma-separated list for scripts that measure each).
* :func:`machine` — what the numbers were measured on: CPU, cores, load average, GPU, python/torch versions.
* :func:`write_result` — the results dict with its machine block, written atomically as indented JSON.

Scripts import it as ``from benchlib import ...`` (``python benchmarks/X.py`` puts this folder on ``sys.path``;
tests load the scripts through ``tests/conftest.py``'s ``bench_script``, which does the same). benchmarks/README.md
maps each script to what it measures, the file it writes and the page that quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def parser(doc: str | None, result: str, run_folder: bool = False, threads: int | str | None = None,
           threads_help: str = "torch CPU threads") -> argparse.ArgumentParser:
    """An ArgumentParser described by the script's docstring's first line, with the shared arguments."""
    ap = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    names = ["--json"] if run_folder else ["--json", "--out"]
    ap.add_argument(*names, dest="json", type=Path, default=RESULTS / result,
                    help=f"results JSON (default benchmarks/results/{result})")
    if threads is not None:
        ap.add_argument("--threads", type=type(threads), default=threads,
                        help=threads_help + (" (comma-separated: each is measured)" if isinstance(threads, str) else ""))
    return ap


def machine(device: str | None = None) -> dict[str, Any]:
    """The machine block of a results file."""
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
                            "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                            "torch_threads": torch.get_num_threads()}
    if hasattr(os, "getloadavg"):
        info["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    if (device or "").startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_result(path: str | Path, result: dict[str, Any], device: str | None = None, indent: int = 2) -> Path:
    """``result`` with a ``machine`` block (unless it has one) as JSON at ``path``, written atomically."""
    from spiral import atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps({**result, "machine": result.get("machine") or machine(device)},
                                       indent=indent, default=str) + "\n")
    return path
