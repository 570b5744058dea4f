"""What every checker of the fault harness returns: passed, or the violations it found, each a
sentence a person can act on."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Verdict"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """A checker's answer. Use it as ``assert verdict.ok, verdict.explanation``."""

    checker: str
    """Which property was checked (``"linearizability"``, ``"fencing"``, ...)."""
    violations: tuple[str, ...] = ()
    """One human-readable entry per violation; empty when the property held."""

    @classmethod
    def of(cls, checker: str, violations: Iterable[str]) -> Verdict:
        return cls(checker, tuple(violations))

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def explanation(self) -> str:
        if self.ok:
            return f"{self.checker}: ok"
        count = len(self.violations)
        header = f"{self.checker}: {count} violation{'s' if count > 1 else ''}"
        # A violation may span lines (a counterexample); indent them under its bullet.
        bullets = ("- " + v.replace("\n", "\n  ") for v in self.violations)
        return "\n".join([header, *bullets])
