"""What a report section is: what it computes and how it presents it.

The report (:data:`analysis.report.SECTIONS`) is a list of :class:`Section` records. Each section's
module declares its record: a name, how it presents, and, when it reads numbers no other part of
the report reads, how it computes them. Those are computed once per report, after the core numbers
every section may read (:func:`analysis.compute.results.compute`), and kept in
:attr:`Results.sections <analysis.compute.results.Results.sections>` under the section's name
(:func:`analysis.report.compute`). Adding a section therefore touches its own module(s) (a compute
module under ``analysis/compute/`` when it needs new statistics; the present module that declares
the record) and the list; not the core :class:`~analysis.compute.results.Results`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import pandas as pd

from analysis.compute.results import Results
from analysis.present.document import Doc

T = TypeVar("T")

Tables = dict[str, tuple[pd.DataFrame, str]]  # file stem → (table, caption)


@dataclass(frozen=True)
class Section(Generic[T]):
    """One part of the report.

    Attributes:
        name: the key of its numbers in :attr:`Results.sections` (unique in the report).
        present: adds its headings, text, tables and figures to the document and returns the tables
            to write to ``tables/``: ``present(doc, r)``, or ``present(doc, computed, r)`` when the
            section computes (``computed``: what its ``compute`` returned). It computes nothing: it
            selects, formats and says in words.
        compute: the section's own numbers from the core ones, ``compute(r) -> T`` (frames and
            typed records, no words), or ``None`` when it presents core numbers only.
    """

    name: str
    present: Callable[..., Tables]
    compute: Callable[[Results], T] | None = None

    def of(self, r: Results) -> T:
        """This section's numbers in ``r``, for the section itself and for the parts of the report
        that quote it (the Answer, the headline)."""
        try:
            return r.sections[self.name]
        except KeyError:
            raise KeyError(f"section {self.name!r} was not computed: these results come from the core "
                           "compute alone; use analysis.report.compute") from None

    def render(self, doc: Doc, r: Results) -> Tables:
        """Present the section into ``doc``; return its tables."""
        if self.compute is None:
            return self.present(doc, r)
        return self.present(doc, self.of(r), r)
