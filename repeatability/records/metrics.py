"""Every per-run metric, declared once: where the summary keeps it, how it is labelled, its
unit, which direction is better, whether it is analysed on the log scale, and which parts of
the harness use it. Compute, plots, tables, the variance decomposition, the ANOVA, the trackers
and the loader read this table; none keeps its own list.

A new metric = one :class:`Metric` here + where it is measured + its field in the summary schema
(:mod:`repeatability.records.summary`); a task score is declared with its evaluator instead
(:mod:`repeatability.config.evaluators`), which makes its field and its entry here. Code that
fills or reads the summary's ``metrics`` group names a field through :data:`NAME`
(``NAME.perplexity_token_weighted``), never as a bare string. Uses:

- ``perplexity``: a held-out perplexity: Tables 1/2 and cell statistics (the first is primary);
- ``loss``: a final loss: its statistics beside the loss curves;
- ``ofat`` / ``anova``: a response of the variance decomposition / the crossed ANOVA (on the log
  scale when ``log_scale``; the OFAT table also shows a log-scale metric as it is);
- ``tracker``: logged to the experiment tracker at the end of a run (``heldout/<name>``);
- ``eval``: replaced by an evaluation record (``evals/<name>.json``) in ``analysis.report --eval``;
- ``task``: a task score (``eval.tasks``): its spread between identical trials and its arm
  difference (TOST on the difference, with an absolute margin) in the report.
"""

from __future__ import annotations

from dataclasses import dataclass

from repeatability.config import evaluators as task_evaluators
from repeatability.records.schema import Keys
from repeatability.records.summary import COLUMNS as S
from repeatability.records.summary import Metrics


@dataclass(frozen=True)
class Metric:
    key: str  # the flattened summary path, e.g. ``metrics.perplexity_token_weighted``
    label: str  # axis and caption text, with its definition
    short: str  # its name in tables of responses, e.g. ``perplexity``
    unit: str
    lower_is_better: bool
    log_scale: bool
    uses: frozenset[str]

    @property
    def name(self) -> str:
        """The key's last part (``perplexity_token_weighted``): the name in evaluations and trackers."""
        return self.key.rsplit(".", 1)[-1]


def _m(key: str, label: str, short: str, unit: str, uses: str, log_scale: bool = False,
       lower_is_better: bool = True) -> Metric:
    return Metric(key, label, short, unit, lower_is_better, log_scale, frozenset(uses.split()))


M = S.metrics
# ``NAME.final_val_loss == "final_val_loss"``: a field of the summary's ``metrics`` group as the pipeline, the
# evaluations and the trackers key it; a misspelt one raises AttributeError where it is written
NAME = Keys(Metrics)
METRICS: tuple[Metric, ...] = (
    _m(M.perplexity_token_weighted, "held-out perplexity (token-weighted)", "perplexity", "",
       "perplexity ofat anova tracker eval", log_scale=True),
    _m(M.perplexity_mean_per_sequence, "held-out perplexity (mean of per-sequence)", "mean per-sequence perplexity",
       "", "perplexity tracker eval", log_scale=True),
    _m(M.final_train_loss, "final training loss (nats/token)", "final train loss", "nats/token",
       "loss ofat anova tracker"),
    _m(M.final_val_loss, "final validation loss (nats/token)", "final val loss", "nats/token",
       "loss ofat anova tracker"),
    _m(M.heldout_mean_token_nll, "held-out mean NLL (nats/token)", "held-out NLL", "nats/token", "tracker eval"),
    _m(M.heldout_tokens, "held-out target tokens", "held-out tokens", "tokens", "eval"),
    _m(M.heldout_sequences, "held-out sequences", "held-out sequences", "sequences", "eval"),
    _m(M.base_perplexity_token_weighted, "base-model held-out perplexity (token-weighted)", "base perplexity", "",
       "tracker eval", log_scale=True),
    _m(M.base_perplexity_mean_per_sequence, "base-model held-out perplexity (mean of per-sequence)",
       "base mean per-sequence perplexity", "", "tracker eval", log_scale=True),
    *(_m(getattr(M, s.name), s.label, s.short, "", "task tracker", lower_is_better=False)
      for s in task_evaluators.SCORES),  # declared with their evaluator
    _m(S.timings.train_s, "training time (s)", "training time", "s", ""),
    _m(S.timings.eval_s, "held-out scoring time (s)", "scoring time", "s", ""),
)
BY_KEY = {m.key: m for m in METRICS}
PRIMARY = METRICS[0]

# how both perplexities are computed (the summary's ``perplexity_definition``; :mod:`repeatability.trial.evaluate`
# computes them this way)
PERPLEXITY_DEFINITION = (
    "Each held-out example is templated, tokenized without automatic special tokens and truncated "
    "to max_length; every token after the first is a target. perplexity_token_weighted = "
    "exp(total NLL / total target tokens) over the whole held-out split (primary). "
    "perplexity_mean_per_sequence = mean over examples of exp(mean NLL of that example) "
    "(HF evaluate's 'mean_perplexity', dominated by the worst examples). Natural log; computed "
    "from the model's raw distribution (no temperature)."
)


def using(use: str) -> tuple[Metric, ...]:
    """The metrics declared with ``use``, in declaration order."""
    return tuple(m for m in METRICS if use in m.uses)


def keys(use: str) -> tuple[str, ...]:
    return tuple(m.key for m in using(use))


def names(use: str) -> tuple[str, ...]:
    return tuple(m.name for m in using(use))


def label(key: str) -> str:
    """A summary key's label (with its definition and unit); the key itself when undeclared."""
    return BY_KEY[key].label if key in BY_KEY else key


def responses(use: str) -> tuple[tuple[str, str, bool], ...]:
    """(label, key, on the log scale?) of the ``ofat`` or ``anova`` responses: a log-scale metric
    as ``log <short>`` (and, for ``ofat``, also as it is)."""
    out: list[tuple[str, str, bool]] = []
    for m in using(use):
        if m.log_scale:
            out.append((f"log {m.short}", m.key, True))
            if use == "ofat":
                out.append((m.short, m.key, False))
        else:
            out.append((m.short, m.key, False))
    return tuple(out)
