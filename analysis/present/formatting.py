"""Numbers and tables as text: the report's one number format (:func:`format_number`; a column of a
table in one format, :func:`format_frame`), learning rates as people write them, and the table files
(:func:`write_table`: CSV at full precision, Markdown and LaTeX formatted). The compute layer returns
numbers; only the present layer turns them into text.
"""

from __future__ import annotations

import logging
import math
import numbers
import re
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)


def format_number(value: Any) -> str:
    """Readable text for a table cell: 5 significant digits below 1e5, integers up to 1e9,
    scientific beyond; NaN/None → "–"; non-numbers unchanged.
    """
    if value is None or isinstance(value, bool) or not isinstance(value, numbers.Real):
        return "–" if value is None else str(value)
    if isinstance(value, numbers.Integral):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "–"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    size = abs(value)
    if size >= 1e9:
        return f"{value:.4e}"
    return f"{value:.0f}" if size >= 1e5 else f"{value:.5g}"


def _finite_real(value: Any) -> bool:
    """A finite real number (not a bool, not NaN or ±inf): what a column format applies to."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def _column_formatter(values: pd.Series) -> Any:
    """One format for a whole column: whole numbers as integers when every number in it is whole,
    else 5 significant digits *with* trailing zeros (``0.35800`` beside ``0.49394``, not ``0.358``)."""
    reals = [float(v) for v in values if _finite_real(v)]
    if all(v.is_integer() for v in reals):
        return lambda v: format_number(int(v)) if _finite_real(v) else format_number(v)

    def fmt(v: Any) -> str:
        if not _finite_real(v) or abs(float(v)) >= 1e5 or float(v) == 0:
            return format_number(v)
        return f"{float(v):#.5g}".rstrip(".")

    return fmt


def format_interval(low: Any, high: Any) -> str:
    """``[low, high]`` with both ends in one format (:func:`_column_formatter`)."""
    fmt = _column_formatter(pd.Series([low, high], dtype=object))
    return f"[{fmt(low)}, {fmt(high)}]"


def format_frame(table: pd.DataFrame) -> pd.DataFrame:
    """Every cell as text, each column in one format (:func:`_column_formatter`)."""
    out = table.astype(object).copy()
    for i in range(out.shape[1]):
        out.iloc[:, i] = out.iloc[:, i].map(_column_formatter(out.iloc[:, i]))
    return out


def format_lr(value: float) -> str:
    """A learning rate as people write it: 0.0002 → ``2e-4``, 0.003 → ``3e-3``, 1.5e-4 →
    ``1.5e-4``; NaN → "–"."""
    if value is None or not math.isfinite(value):
        return "–"
    mantissa, exponent = f"{value:.3e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _flat_columns(table: pd.DataFrame) -> pd.DataFrame:
    flat = table.copy()
    if isinstance(flat.columns, pd.MultiIndex):
        flat.columns = [" / ".join(str(p) for p in col) for col in flat.columns]
    return flat


def _md_cell(text: str) -> str:
    """A table cell on one line: newlines shown as ⏎, pipes escaped."""
    return text.replace("\r", "").replace("\n", " ⏎ ").replace("|", "\\|")


def to_markdown(table: pd.DataFrame, index: bool = True) -> str:
    """A GitHub Markdown table, each column in one format (:func:`format_frame`; needs ``tabulate``)."""
    flat = format_frame(_flat_columns(table)).map(_md_cell)
    if index and isinstance(flat.index, pd.MultiIndex):
        flat.index = [" / ".join(str(p) for p in i) for i in flat.index]
    return flat.to_markdown(index=index, disable_numparse=True)


_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                   "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                   "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """Plain text (with `code` spans) → LaTeX: specials escaped, code spans in \\texttt."""
    escaped = "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)
    return re.sub(r"`([^`]*)`", r"\\texttt{\1}", escaped)


def write_table(table: pd.DataFrame, out_dir: Path, name: str, caption: str = "",
                index: bool = True) -> dict[str, Path]:
    """Write ``name.csv`` (full precision), ``name.md`` and ``name.tex`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{name}.{ext}" for ext in ("csv", "md", "tex")}
    table.to_csv(paths["csv"], index=index)
    md = (f"{caption}\n\n" if caption else "") + to_markdown(table, index) + "\n"
    paths["md"].write_text(md)
    latex = format_frame(table).to_latex(
        index=index, caption=latex_escape(caption) or None, label=f"tab:{name}", escape=True)
    paths["tex"].write_text(latex)
    log.debug("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths
