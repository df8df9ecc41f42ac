"""One figure of the demo's report: its stable ``--json`` key and value, and how the text report shows it.

Every figure carries its unit and a glossary line (``meaning``), so the text report never prints a label
that is not explained, and the JSON key is never a display label (docs/demo.md lists the keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Figure", "render_value"]


@dataclass(frozen=True, slots=True)
class Figure:
    key: str  # the --json key: snake_case, stable
    label: str  # what the text report prints
    value: Any  # int, float, bool, str, None, or a JSON object of those
    unit: str  # "requests", "commands", "s", "%", ... ("" for a yes/no or a text)
    meaning: str  # the glossary line: what the figure counts, and what it should be
    text: str | None = None  # how the text report prints the value, when the value alone would not read well


def render_value(value: Any) -> str:
    """A value as the text report prints it: thousands separators, yes/no, "none", never a Python repr."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    if isinstance(value, dict):
        return ", ".join(f"{k} {render_value(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list | tuple):
        return "; ".join(render_value(v) for v in value) or "none"
    return str(value)
