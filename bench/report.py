"""bench/results.md: one table per benchmark (figure, ours, the baseline measured in the same run, the ratio),
each followed by what a reader needs to judge it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Row:
    figure: str
    ours: str
    baseline: str
    ratio: float | None = None


@dataclass
class Section:
    """One benchmark's rows and notes (Markdown)."""

    title: str
    rows: list[Row] = field(default_factory=list)
    notes: str = ""

    def markdown(self) -> str:
        lines = [f"## {self.title}", "", "| figure | ours | baseline | ratio |", "|---|---|---|---|"]
        lines += [f"| {r.figure} | {r.ours} | {r.baseline} | {_ratio(r.ratio)} |" for r in self.rows]
        return "\n".join(lines) + ("\n\n" + self.notes.strip() if self.notes.strip() else "") + "\n"


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table for a section's notes."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def document(preamble: str, sections: list[Section]) -> str:
    return "\n".join([preamble.strip() + "\n", *(section.markdown() for section in sections)])
