"""Re-render a run's report.html and screenshot it with headless Chromium for the README.

Usage: ``python docs/make_report_screenshot.py runs/demo [--out docs/report_screenshot.png] [--height 2400]``.
Needs chromium (Debian: ``apt-get install chromium``); runs offline.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without `pip install -e .`

from spiral.report import screenshot, write_report  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="a run folder written by `spiral run`")
    ap.add_argument("--out", type=Path, default=HERE / "report_screenshot.png", help="PNG to write")
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--height", type=int, default=1600)
    args = ap.parse_args()
    report = write_report(args.run_dir)
    print(screenshot(report, args.out, window=(args.width, args.height)))


if __name__ == "__main__":
    main()
