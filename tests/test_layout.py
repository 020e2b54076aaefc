"""The house in order: every result file and benchmark is indexed, every docs page is indexed, no file names a
config that is gone, no doc or comment points at a numbered item of the old lab notebook, and every benchmark
script goes through the shared helper."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = (".py", ".md", ".yaml", ".yml", ".sh", ".txt", ".toml")


def _files(*folders: str) -> list[Path]:
    out = []
    for folder in folders:
        base = ROOT / folder
        out += [base] if base.is_file() else [p for p in base.rglob("*") if p.is_file() and p.suffix in TEXT
                                               and "results" not in p.parts and "__pycache__" not in p.parts]
    return out


def test_every_result_file_and_benchmark_script_is_in_the_benchmarks_readme():
    readme = (ROOT / "benchmarks/README.md").read_text()
    results = sorted(p.name for p in (ROOT / "benchmarks/results").iterdir() if p.is_file())
    assert results and [r for r in results if f"`{r}`" not in readme] == []
    scripts = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if p.name != "benchlib.py")
    assert [p.name for p in scripts if f"`{p.name}`" not in readme] == []
    # one helper for the common parts: arguments, the machine block, writing the JSON
    assert [p.name for p in scripts if "from benchlib import" not in p.read_text()] == []


def test_every_docs_page_is_in_the_docs_index():
    index = (ROOT / "docs/README.md").read_text()
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md") if p.name != "README.md")
    assert pages and [p for p in pages if f"({p})" not in index] == []


def test_no_file_names_a_config_that_is_not_in_the_tree():
    """Withdrawn recipes leave configs/; a line may still cite one at a commit (git show COMMIT:configs/...)."""
    named = re.compile(r"(?<![:\w/])configs/[\w./-]+\.ya?ml")
    joined = re.compile(r'"configs"((?:\s*/\s*"[\w.-]+")*\s*/\s*"[\w.-]+\.ya?ml")')
    missing = []
    for path in _files("README.md", "docs", "configs", "spiral", "scripts", "benchmarks", "tests", "Makefile"):
        text = path.read_text(errors="ignore")
        for m in named.finditer(text):
            if not (ROOT / m.group(0)).is_file():
                missing.append(f"{path.relative_to(ROOT)}: {m.group(0)}")
        for m in joined.finditer(text):  # paths joined in code: ROOT / configs / run / x.yaml
            rel = "/".join(["configs", *re.findall(r'"([^"]+)"', m.group(1))])
            if not (ROOT / rel).is_file():
                missing.append(f"{path.relative_to(ROOT)}: {rel}")
    assert missing == []
    assert sorted(p.parent.name for p in (ROOT / "configs").rglob("*.yaml")) and \
        {p.parent.name for p in (ROOT / "configs").rglob("*.yaml")} == {"run", "train"}


def test_no_doc_or_comment_points_at_a_notebook_item():
    pattern = re.compile(r"self_evolution\.md`?,? items? \d|\(items? \d+|\bitems? \d+[-–]\d+\b|; item \d+\)")
    hits = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in _files("README.md", "docs", "configs", "spiral", "scripts",
                                                                    "benchmarks", "tests")
            for m in pattern.finditer(p.read_text(errors="ignore"))]
    assert hits == []
