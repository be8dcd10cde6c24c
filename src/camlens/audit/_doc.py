"""The audit's documents: headings, paragraphs, lists and tables rendered as Markdown and as
self-contained HTML, and the number formats of their cells."""

from __future__ import annotations

import base64
import csv
import html
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Image:
    """A picture in a table cell: a file next to the report."""

    path: str  # relative to the report's folder
    alt: str


Cell = str | Image


@dataclass
class Doc:
    """A small document model (headings, paragraphs, lists, tables) with two renderings."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(("h", text))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def bullets(self, items: Sequence[str]) -> None:
        self.blocks.append(("ul", list(items)))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Cell]],
              numeric: Sequence[bool] | None = None) -> None:
        self.blocks.append(("table", (list(header), [list(r) for r in rows],
                                      list(numeric or [False] * len(header)))))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "h":
                out += [f"## {value}", ""]
            elif kind == "p":
                out += [value, ""]
            elif kind == "ul":
                out += [f"- {item}" for item in value] + [""]
            else:
                header, rows, numeric = value
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
                for row in rows:
                    out.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
                out.append("")
        return "\n".join(out)

    def html(self, root: Path) -> str:
        """The page with every picture inlined (base64 PNG): one file, nothing to carry."""
        body = [f"<h1>{_inline(self.title)}</h1>"]
        for kind, value in self.blocks:
            if kind == "h":
                body.append(f"<h2>{_inline(value)}</h2>")
            elif kind == "p":
                body.append(f"<p>{_inline(value)}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in value) + "</ul>")
            else:
                header, rows, numeric = value
                head = "".join(f"<th>{_inline(h)}</th>" for h in header)
                lines = []
                for row in rows:
                    cells = "".join(
                        f"<td class=\"num\">{_html_cell(c, root)}</td>" if n
                        else f"<td>{_html_cell(c, root)}</td>" for c, n in zip(row, numeric))
                    lines.append(f"<tr>{cells}</tr>")
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}"
                            "</tbody></table>")
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n"
        )


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;"
    "color:#222}table{border-collapse:collapse;margin:1rem 0}th,td{border:1px solid #ccc;"
    "padding:.25rem .5rem;vertical-align:middle}th{background:#f3f3f3}td.num{text-align:right;"
    "font-variant-numeric:tabular-nums}code{background:#f3f3f3;padding:0 .2rem}img{display:block}"
)


def _md_cell(cell: Cell) -> str:
    if isinstance(cell, Image):
        return f"![{cell.alt}]({cell.path})"
    return str(cell).replace("|", "\\|")


def _html_cell(cell: Cell, root: Path) -> str:
    if isinstance(cell, Image):
        data = base64.b64encode((root / cell.path).read_bytes()).decode("ascii")
        return f"<img src=\"data:image/png;base64,{data}\" alt=\"{html.escape(cell.alt)}\">"
    return _inline(str(cell))


def _inline(text: str) -> str:
    """Markdown's ``**bold**`` and ``code`` spans as HTML; everything else escaped."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f} %"


def num(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)
                         for v in row])
    return buf.getvalue()
