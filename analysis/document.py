"""A tiny document model rendered twice: Markdown (figures as files) and one self-contained
HTML page (figures as base64 PNGs). Text is plain with `code` spans, nothing else, so both
renderings say the same thing without a Markdown library.
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

from analysis.tables import format_number, to_markdown

_CSS = """body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;
line-height:1.45;color:#222}table{border-collapse:collapse;margin:.6rem 0 1.2rem;font-size:.85rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}img{max-width:100%}figure{margin:1rem 0}figcaption{font-size:.85rem;
color:#555}code{background:#f3f3f3;padding:0 .2rem}pre{white-space:pre-wrap;background:#f7f7f7;
padding:.5rem}.cap{font-size:.85rem;color:#555}"""


@dataclass
class Doc:
    """Blocks in order; each is ``(kind, payload)``. Figures are stored as PNG bytes."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)

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


def _md_block(kind: str, payload: Any) -> str:
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
        return (f"*{caption}*\n\n" if caption else "") + body
    name, caption = payload
    return f"![{caption}](figures/{name}.png)\n\n*{caption}*"


def render_markdown(doc: Doc) -> str:
    """The document as Markdown; figures are linked as ``figures/<name>.png``."""
    return f"# {doc.title}\n\n" + "\n\n".join(_md_block(k, p) for k, p in doc.blocks) + "\n"


def _inline(text: str) -> str:
    """Escape for HTML, then turn `code` spans into <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _html_table(table: pd.DataFrame, index: bool) -> str:
    shown = table.copy()
    if isinstance(shown.columns, pd.MultiIndex):
        shown.columns = [" / ".join(str(p) for p in c) for c in shown.columns]
    return shown.astype(object).map(format_number).to_html(index=index, escape=True, border=0)


def _html_block(kind: str, payload: Any, figures: dict[str, bytes]) -> str:
    if kind == "heading":
        return f"<h{payload[0]}>{_inline(payload[1])}</h{payload[0]}>"
    if kind == "para":
        return f"<p>{_inline(payload)}</p>"
    if kind == "bullets":
        return "<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in payload) + "</ul>"
    if kind == "pre":
        return f"<pre>{html.escape(payload)}</pre>"
    if kind == "table":
        table, caption, index = payload
        cap = f'<p class="cap">{_inline(caption)}</p>' if caption else ""
        return cap + (_html_table(table, index) if len(table) else "<p>(no rows)</p>")
    name, caption = payload
    data = base64.b64encode(figures[name]).decode()
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_inline(caption)}</figcaption></figure>")


def render_html(doc: Doc) -> str:
    """One page with every figure embedded: it can be mailed or opened offline."""
    body = "\n".join(_html_block(k, p, doc.figures) for k, p in doc.blocks)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(doc.title)}</title><style>{_CSS}</style></head>\n"
            f"<body><h1>{html.escape(doc.title)}</h1>\n{body}\n</body></html>\n")


def write_figures(doc: Doc, out_dir: Path) -> list[Path]:
    """Write every figure's PNG as ``<out_dir>/<name>.png``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, png in doc.figures.items():
        path = out_dir / f"{name}.png"
        path.write_bytes(png)
        paths.append(path)
    return paths
