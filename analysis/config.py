"""Settings of the analysis that change what the report concludes, declared in one place.

The report states each of them next to the result it shapes; ``python -m analysis.report``
sets the two that matter most (``--margin``, ``--blowup-k``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class AnalysisConfig:
    """Declared before looking at a study's numbers; checked on construction.

    Attributes:
        margin: equivalence margin, relative: two arms are "equivalent within ±margin" when
            TOST shows their mean log perplexities differ by less than log(1 + margin) either
            way (0.01 = ±1%, i.e. a geometric-mean ratio inside [1/1.01, 1.01]).
        blowup_k: a finished run "blew up" when it diverged or its perplexity exceeds
            ``blowup_k`` × the reference of its (model, dataset) (see :mod:`analysis.compute.blowups`).
        gap_decades: an arm's perplexities are reported as split into clusters where two
            consecutive sorted values are more than this many decades (powers of 10) apart.
        alpha: significance level of every test whose p-value the report turns into words.
        n_resamples: bootstrap resamples (P(X > Y) CI).
        task_margin: equivalence margin of task scores (accuracy, F1, exact match, ROUGE: in [0, 1]),
            absolute: 0.01 = ±1 point (:mod:`analysis.compute.task_scores`).
        seed: seed of the bootstrap generator (same seed, same CI).
    """

    margin: float = 0.01
    blowup_k: float = 10.0
    gap_decades: float = 1.0
    alpha: float = 0.05
    n_resamples: int = 9999
    seed: int = 0
    task_margin: float = 0.01

    def __post_init__(self) -> None:
        checks = {"margin": 0 < self.margin < 1, "blowup_k": self.blowup_k >= 1,
                  "gap_decades": self.gap_decades > 0, "alpha": 0 < self.alpha < 1,
                  "n_resamples": self.n_resamples >= 100, "task_margin": 0 < self.task_margin < 1}
        wanted = {"margin": "a fraction in (0, 1), e.g. 0.01 for ±1%",
                  "blowup_k": "a factor of at least 1 (1: worse than the base model), e.g. 10",
                  "gap_decades": "positive, e.g. 1",
                  "alpha": "in (0, 1), e.g. 0.05", "n_resamples": "at least 100",
                  "task_margin": "a score difference in (0, 1), e.g. 0.01 for ±1 point"}
        for name, ok in checks.items():
            value = getattr(self, name)
            if not ok or (isinstance(value, float) and not math.isfinite(value)):
                raise ValueError(f"{name}={value!r}: must be {wanted[name]}")

    @property
    def log_margin(self) -> float:
        """The margin on the log-perplexity scale: log(1 + margin) on each side."""
        return math.log1p(self.margin)


DEFAULT = AnalysisConfig()  # the report's settings when none are given
