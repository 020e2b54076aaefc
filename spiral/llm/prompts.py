"""Versioned prompt templates (``spiral/prompts/<role>_<version>.md``), shipped as package data.

Prompts are data, not code: a template file has sections introduced by a line
``=== name ===`` and uses ``$name`` placeholders (``$$`` for a literal dollar). A run's
config names the version (``prompt_version: v1``) or a file of the user's own
(``prompt_file: my_planner.md``), and the agent records which one it used, so changing
a prompt is a reviewable diff with a new version rather than an edit hidden in code.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

PROMPT_DIR = Path(__file__).resolve().parent.parent / "prompts"
_SECTION = re.compile(r"^=== *([a-z_]+) *=== *$", re.M)


@dataclass(frozen=True)
class PromptTemplate:
    """The sections of one template file, with an id (file stem + content hash) for run records."""

    id: str
    sections: dict[str, str]

    def render(self, section: str, **values: object) -> str:
        """Fill one section; a missing placeholder is an error naming it."""
        if section not in self.sections:
            raise ValueError(f"prompt template {self.id} has no section {section!r}; it has {sorted(self.sections)}")
        try:
            return Template(self.sections[section]).substitute({k: str(v) for k, v in values.items()})
        except KeyError as e:
            raise ValueError(f"prompt template {self.id} section {section!r} needs a value for ${e.args[0]}") from None

    def raw(self, section: str) -> str:
        """A section unfilled (for placeholders filled later, e.g. ``$error`` at repair time)."""
        return self.sections[section]


def parse_template(text: str, name: str) -> PromptTemplate:
    """Split a template file into its ``=== section ===`` parts."""
    parts = _SECTION.split(text)
    sections = {parts[i]: parts[i + 1].strip("\n") for i in range(1, len(parts) - 1, 2)}
    if not sections:
        raise ValueError(f"prompt template {name} has no '=== section ===' lines")
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return PromptTemplate(id=f"{name}@{digest}", sections=sections)


def load_template(role: str, version: str = "v1", path: str | Path | None = None,
                  required: tuple[str, ...] = ()) -> PromptTemplate:
    """Load ``<role>_<version>.md`` from the package, or a user's file when ``path`` is given."""
    p = Path(path) if path else PROMPT_DIR / f"{role}_{version}.md"
    if not p.is_file():
        known = sorted(f.stem for f in PROMPT_DIR.glob(f"{role}_*.md"))
        raise FileNotFoundError(f"prompt template not found: {p}; shipped {role} templates: {', '.join(known) or 'none'}")
    t = parse_template(p.read_text(encoding="utf-8"), p.stem)
    missing = [s for s in required if s not in t.sections]
    if missing:
        raise ValueError(f"prompt template {p} lacks section(s) {missing}; it needs {list(required)}")
    return t
