"""A tiny document model rendered twice: Markdown (figures as files) and one self-contained
HTML page (figures as base64 PNGs). Text is plain with `code` spans, nothing else, so both
renderings say the same thing without a Markdown library.

Both open with a table of contents (links to the level-2 headings, GitHub's anchor rule).
In HTML, an appendix (:meth:`Doc.appendix`) is a collapsed ``<details>``, a table longer than
:data:`SHOWN_ROWS` rows shows its first rows with the rest one click away, long cell text wraps
so nothing is wider than the page, and a table written to ``tables/`` links its CSV
(:attr:`Doc.csv`). Markdown stays plain GitHub-flavoured Markdown: the appendix is a section,
tables are whole.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from analysis.present.formatting import format_frame, to_markdown

SHOWN_ROWS = 15  # rows of a long HTML table shown before "all N rows"

_CSS = """body{font-family:system-ui,sans-serif;max-width:72rem;margin:1.2rem auto;padding:0 1rem;
line-height:1.45;color:#222;overflow-wrap:anywhere}table{border-collapse:collapse;
margin:.6rem 0 1.2rem;font-size:.85rem;max-width:100%}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top;
overflow-wrap:anywhere}th{background:#f3f3f3}img{max-width:100%;height:auto}figure{margin:1rem 0}
figcaption{font-size:.85rem;color:#555}code{background:#f3f3f3;padding:0 .2rem}
pre{white-space:pre-wrap;background:#f7f7f7;padding:.5rem}.cap{font-size:.85rem;color:#555}
nav.toc{font-size:.85rem;color:#555}details>summary{cursor:pointer}
details.appendix>summary h2{display:inline}section#answer{border-left:4px solid #2a6;padding:.1rem 1rem;
background:#f6fbf7}"""


@dataclass
class Doc:
    """Blocks in order; each is ``(kind, payload)``. Figures are stored as PNG bytes."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)
    csv: dict[str, str] = field(default_factory=dict)  # table caption → its CSV, relative path

    def appendix(self, title: str) -> None:
        """Everything added after this is the appendix (collapsed in HTML, a section in Markdown)."""
        self.blocks.append(("appendix", title))

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def para(self, text: str) -> None:
        self.blocks.append(("para", text))

    def bullets(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("bullets", list(items)))

    def pre(self, text: str) -> None:
        self.blocks.append(("pre", text))

    def table(self, table: pd.DataFrame, caption: str = "", index: bool = True) -> None:
        self.blocks.append(("table", (table, caption, index)))

    def figure(self, name: str, fig: Figure, caption: str, dpi: int = 110) -> None:
        """Render ``fig`` to PNG now; it is written as ``figures/<name>.png``."""
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        self.figures[name] = buf.getvalue()
        self.blocks.append(("figure", (name, caption)))


def anchor(text: str) -> str:
    """A heading's anchor as GitHub writes it: lower case, punctuation dropped, spaces → ``-``."""
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def _toc(doc: Doc) -> list[str]:
    return [t for k, p in doc.blocks for t in ((p[1],) if k == "heading" and p[0] == 2 else
                                               (p,) if k == "appendix" else ())]


def _md_block(kind: str, payload: Any, csv: dict[str, str], figures: bool = True) -> str:
    if kind == "appendix":
        return f"## {payload}"
    if kind == "heading":
        return f"{'#' * payload[0]} {payload[1]}"
    if kind == "para":
        return payload
    if kind == "bullets":
        return "\n".join(f"- {item}" for item in payload)
    if kind == "pre":
        return f"```\n{payload}\n```"
    if kind == "table":
        table, caption, index = payload
        body = to_markdown(table, index) if len(table) else "(no rows)"
        link = f" ([CSV]({csv[caption]}))" if caption in csv else ""
        return (f"*{caption}*{link}\n\n" if caption else "") + body
    name, caption = payload
    return f"![{caption}](figures/{name}.png)\n\n*{caption}*" if figures else f"*Figure: {caption}*"


def render_markdown(doc: Doc, figures: bool = True) -> str:
    """The document as Markdown; figures are linked as ``figures/<name>.png`` (``figures=False``:
    only their captions, e.g. in a notebook that shows the figures itself)."""
    toc = "Contents: " + " · ".join(f"[{t}](#{anchor(t)})" for t in _toc(doc))
    return (f"# {doc.title}\n\n{toc}\n\n" + "\n\n".join(_md_block(k, p, doc.csv, figures) for k, p in doc.blocks)
            + "\n")


_CODE = re.compile(r"(`[^`]+`)")
_EM = re.compile(r"(?<![\w*])\*([^*\s](?:[^*]*[^*\s])?)\*(?![\w*])")


def _inline(text: str) -> str:
    """Escape for HTML, then turn `code` spans into <code> and *emphasis* outside them into <em>
    (the Markdown the prose writes, so a page does not show its asterisks)."""
    return "".join(f"<code>{html.escape(part[1:-1])}</code>" if _CODE.fullmatch(part)
                   else _EM.sub(r"<em>\1</em>", html.escape(part)) for part in _CODE.split(text))


def _html_table(table: pd.DataFrame, index: bool) -> str:
    shown = table.copy()
    if isinstance(shown.columns, pd.MultiIndex):
        shown.columns = [" / ".join(str(p) for p in c) for c in shown.columns]
    return format_frame(shown).to_html(index=index, escape=True, border=0)


def _rows_html(table: pd.DataFrame, index: bool) -> str:
    """A table; past :data:`SHOWN_ROWS` rows, the first ones and then all of them one click away."""
    if len(table) <= SHOWN_ROWS:
        return _html_table(table, index)
    return (_html_table(table.iloc[:SHOWN_ROWS], index)
            + f"<details><summary>all {len(table)} rows</summary>{_html_table(table, index)}</details>")


def _html_block(kind: str, payload: Any, figures: dict[str, bytes], csv: dict[str, str]) -> str:
    if kind == "appendix":
        return (f'<details class="appendix" id="{anchor(payload)}"><summary><h2>{_inline(payload)}</h2>'
                "</summary>")
    if kind == "heading":
        level, text = payload
        ident = f' id="{anchor(text)}"' if level == 2 else ""
        return f"<h{level}{ident}>{_inline(text)}</h{level}>"
    if kind == "para":
        return f"<p>{_inline(payload)}</p>"
    if kind == "bullets":
        return "<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in payload) + "</ul>"
    if kind == "pre":
        return f"<pre>{html.escape(payload)}</pre>"
    if kind == "table":
        table, caption, index = payload
        link = f' (<a href="{html.escape(csv[caption])}">CSV</a>)' if caption in csv else ""
        cap = f'<p class="cap">{_inline(caption)}{link}</p>' if caption else ""
        return cap + (_rows_html(table, index) if len(table) else "<p>(no rows)</p>")
    name, caption = payload
    data = base64.b64encode(figures[name]).decode()
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_inline(caption)}</figcaption></figure>")


def render_html(doc: Doc) -> str:
    """One page with every figure embedded: it can be mailed or opened offline."""
    parts, in_answer = [], False
    for kind, payload in doc.blocks:
        opens = kind == "heading" and payload[0] == 2 or kind == "appendix"
        if opens and in_answer:
            parts.append("</section>")
            in_answer = False
        if kind == "heading" and payload == (2, "Answer"):  # the answer block: one <section>
            parts.append('<section id="answer">')
            in_answer = True
            parts.append("<h2>Answer</h2>")
            continue
        parts.append(_html_block(kind, payload, doc.figures, doc.csv))
    closing = ("</section>" if in_answer else "") + ("</details>" if any(k == "appendix" for k, _ in doc.blocks)
                                                     else "")
    toc = " · ".join(f'<a href="#{anchor(t)}">{_inline(t)}</a>' for t in _toc(doc))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(doc.title)}</title><style>{_CSS}</style></head>\n"
            f"<body><h1>{html.escape(doc.title)}</h1>\n<nav class=\"toc\">Contents: {toc}</nav>\n"
            + "\n".join(parts) + f"{closing}\n</body></html>\n")


def write_figures(doc: Doc, out_dir: Path) -> list[Path]:
    """Write every figure's PNG as ``<out_dir>/<name>.png``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, png in doc.figures.items():
        path = out_dir / f"{name}.png"
        path.write_bytes(png)
        paths.append(path)
    return paths
