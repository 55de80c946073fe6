"""The judge's rubric: prompt text written by us (the paper never published its),
shipped in the package as `rubrics/<version>.txt` and identified everywhere by its
version plus a hash of the exact bytes, so every logged score names the text that
produced it.

A rubric file is a list of `@@ name` sections:
  dimensions      `key = Display Name` per line, in the order of DIMENSIONS
  system          the judge's instructions (system message)
  reasoning_note  appended to `system` when the judge also sees understanding/reasoning
  user            the context and the candidate; placeholders {profile} {situation}
                  {dialogue} {candidate} ({candidate} on a line of its own)
  score           what the judge's turn starts with, per dimension: {dimension}
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from importlib import resources
from pathlib import Path

from kardia_jax.errors import ConfigError

# Column order of every [N, 5] score array (the paper's order).
DIMENSIONS: tuple[str, ...] = (
    "relevance",
    "fluency",
    "empathy",
    "persona_consistency",
    "safety",
)
DEFAULT_RUBRIC = "v1"
_SECTIONS = ("dimensions", "system", "reasoning_note", "user", "score")
_SECTION_RE = re.compile(r"^@@ (\w+)[ \t]*$", re.M)
_USER_FIELDS = ("{profile}", "{situation}", "{dialogue}", "{candidate}")


@dataclasses.dataclass(frozen=True)
class Rubric:
    version: str
    sha256: str  # of the file's bytes
    names: tuple[str, ...]  # display names, in DIMENSIONS order
    system: str
    reasoning_note: str
    user: str
    score: str

    @property
    def id(self) -> str:
        """`version-hash12`: logged with every score."""
        return f"{self.version}-{self.sha256[:12]}"

    def system_text(self, show_reasoning: bool) -> str:
        return f"{self.system}\n\n{self.reasoning_note}" if show_reasoning else self.system

    def score_prefix(self, dimension: int) -> str:
        return self.score.replace("{dimension}", self.names[dimension])

    @classmethod
    def from_text(cls, text: str, version: str) -> Rubric:
        parts = _SECTION_RE.split(text)
        if parts[0].strip():
            raise ConfigError(f"rubric {version}: text before the first '@@ section' line")
        sections = {}
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name not in _SECTIONS or name in sections:
                raise ConfigError(f"rubric {version}: unknown or repeated section {name!r}")
            sections[name] = body.strip("\n")
        missing = [s for s in _SECTIONS if s not in sections]
        if missing:
            raise ConfigError(f"rubric {version}: missing section(s) {', '.join(missing)}")
        names = []
        for line in sections["dimensions"].splitlines():
            key, _, shown = (x.strip() for x in line.partition("="))
            names.append((key, shown))
        if tuple(k for k, _ in names) != DIMENSIONS or not all(s for _, s in names):
            raise ConfigError(f"rubric {version}: dimensions must be {DIMENSIONS}, in order")
        user = sections["user"]
        for field in _USER_FIELDS:
            if user.count(field) != 1:
                raise ConfigError(f"rubric {version}: the user section needs {field} exactly once")
        if not re.search(r"^\{candidate\}$", user, re.M):
            # Alone on its line, the candidate is tokenised apart from the delimiters.
            raise ConfigError(f"rubric {version}: {{candidate}} must be on a line of its own")
        if "{dimension}" not in sections["score"]:
            raise ConfigError(f"rubric {version}: the score section needs {{dimension}}")
        return cls(
            version=version,
            sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
            names=tuple(s for _, s in names),
            system=sections["system"],
            reasoning_note=sections["reasoning_note"],
            user=user,
            score=sections["score"].strip(),
        )


def load_rubric(name: str | Path = DEFAULT_RUBRIC) -> Rubric:
    """A shipped rubric by version ("v1"), or a rubric file by path."""
    path = Path(name)
    if path.suffix == ".txt" or path.exists():
        if not path.is_file():
            raise ConfigError(f"{path}: no such rubric file")
        return Rubric.from_text(path.read_text("utf-8"), version=path.stem)
    shipped = resources.files("kardia_jax.rewards") / "rubrics" / f"{name}.txt"
    if not shipped.is_file():
        raise ConfigError(f"unknown rubric {name!r} (shipped: {', '.join(shipped_rubrics())})")
    return Rubric.from_text(shipped.read_text("utf-8"), version=str(name))


def shipped_rubrics() -> list[str]:
    folder = resources.files("kardia_jax.rewards") / "rubrics"
    return sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".txt"))
