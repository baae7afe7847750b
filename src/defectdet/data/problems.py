"""Collects what is wrong with input data, so bad records are skipped with a named warning.

Every reader reports into one :class:`ProblemLog`. By default a problem is a warning (the record
is skipped, clipped or repaired and counted); with ``strict=True`` the load fails at the end with
a :class:`~defectdet.errors.DataError` that lists them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from defectdet.errors import DataError


@dataclass(frozen=True)
class Problem:
    """One bad record: where it came from, what is wrong, and what was done about it."""

    file: str
    message: str
    kind: str
    where: str = ""
    action: str = "skipped"

    def __str__(self) -> str:
        loc = f"{self.file} ({self.where})" if self.where else self.file
        return f"{loc}: {self.message} [{self.action}]"


@dataclass
class ProblemLog:
    strict: bool = False
    problems: list[Problem] = field(default_factory=list)

    def add(
        self, file: str, message: str, *, kind: str, where: str = "", action: str = "skipped"
    ) -> None:
        self.problems.append(Problem(str(file), message, kind, str(where), action))

    def __len__(self) -> int:
        return len(self.problems)

    def __iter__(self):
        return iter(self.problems)

    def counts(self) -> dict[str, int]:
        """Number of problems per kind, most frequent first."""
        return dict(Counter(p.kind for p in self.problems).most_common())

    def check_strict(self, limit: int = 20) -> None:
        """Under ``strict``, turn any recorded problem into a fatal error."""
        if self.strict and self.problems:
            raise DataError(self.format(limit, header="--strict: the data has problems"))

    def format(self, limit: int = 20, header: str | None = None) -> str:
        lines = [header] if header else []
        lines += [f"  {p}" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            rest = len(self.problems) - limit
            kinds = ", ".join(f"{k}: {n}" for k, n in self.counts().items())
            lines.append(f"  ... and {rest} more ({kinds})")
        return "\n".join(lines)
