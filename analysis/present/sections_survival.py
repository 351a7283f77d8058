"""The report's section on the time to blow-up (:mod:`analysis.compute.survival`): when, within the
horizon, each arm's runs blew up, as Kaplan–Meier curves, the median step, the rate at the horizon
beside the paper's, log-rank tests, and the update inflation on the way. Same conventions as
:mod:`analysis.present.sections`; the section computes its own numbers
(:func:`analysis.compute.survival.compute_survival`, :data:`SURVIVAL`); a study that is not a horizon
study (:func:`analysis.compute.survival.horizon_arms`) gets nothing.

:func:`headline_sentences` and :func:`answer_figure` give the Answer section its lines and figure.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.compute.results import Results
from analysis.compute.survival import PAPER, SurvivalResults, compute_survival
from analysis.present import plots_survival
from analysis.present.document import Doc
from analysis.present.formatting import format_lr, format_number
from analysis.present.labels import short_labels
from analysis.present.section import Section, Tables

INFLATION_ROWS = 10  # steps of the update-inflation table shown in the report (all are in its CSV)


def arm_labels(s: SurvivalResults) -> dict[str, str]:
    """Arm → its short name (:func:`analysis.present.labels.short_labels`), in the arms' order."""
    return short_labels(s.arms)


def _p(value: float) -> str:
    return "–" if pd.isna(value) else f"{value:.2g}"


def _ci(low: float, high: float) -> str:
    return "–" if pd.isna(low) else f"{low:.0%}–{high:.0%}"


def median_text(row: pd.Series, conf: str) -> str:
    """``650 (95% CI 450–900)``; ``not reached`` when the curve never fell below one half."""
    if pd.isna(row["median_step"]):
        return "not reached"
    low, high = row["median_low"], row["median_high"]
    ci = ("–" if pd.isna(low) else f"{low:.0f}–{high:.0f}" if math.isfinite(high)
          else f"{low:.0f} to beyond the horizon")
    return f"{row['median_step']:.0f} ({conf} CI {ci})"


def _primary(s: SurvivalResults) -> pd.DataFrame:
    return s.arm_table[np.isclose(s.arm_table["k"], s.primary)].set_index("arm")


def headline_sentences(r: Results) -> list[str]:
    """At most two sentences from the results: per arm the blow-ups at the horizon (k = the
    config's) with n and the exact CI, and the median step to blow-up with its CI; the log-rank p
    between the first two arms (fewest optimizer bits: the two 8-bit arms of explain-horizon).
    ``[]`` when the study is not a horizon study."""
    s = SURVIVAL.of(r)
    if s is None:
        return []
    labels, rows, conf = arm_labels(s), _primary(s), f"{1 - r.config.alpha:.0%}"
    parts = [f"`{labels[a]}` {int(x['blowups'])}/{int(x['n'])} ({x['rate']:.0%}, {conf} CI "
             f"{_ci(x['ci_low'], x['ci_high'])}; median step to blow-up {median_text(x, conf)})"
             for a, x in rows.iterrows()]
    why = ", ".join(sorted(set(s.left_out["reason"])))
    left = f"; {len(s.left_out)} run(s) left out ({why})" if len(s.left_out) else ""
    first = (f"Within {s.horizon:,} steps at LR {format_lr(s.lr)}, runs blew up (validation loss above "
             f"ln({s.primary:g} × the base model's perplexity), or diverged) in " + "; ".join(parts) + left + ".")
    test = s.logrank[np.isclose(s.logrank["k"], s.primary)]
    if test.empty:
        return [first]
    t = test.iloc[0]
    return [first, f"Log-rank test of the time to blow-up, `{labels[t['x']]}` against `{labels[t['y']]}`: "
            + (f"p = {_p(t['p'])}." if pd.notna(t["p"]) else "no test (neither arm had a blow-up).")]


def answer_figure(r: Results) -> Figure | None:
    """The Kaplan–Meier figure at the config's k; ``None`` when the study is not a horizon study."""
    s = SURVIVAL.of(r)
    if s is None:
        return None
    return plots_survival.km_figure(s.km, s.runs, arm_labels(s), s.primary, s.horizon, r.config.alpha)


def _values(values: tuple) -> str:
    return ", ".join(map(str, values)) or "not recorded"


def paper_line(s: SurvivalResults) -> str:
    """One plain line: what differs from the paper's setup (these runs' values as recorded)."""
    f = s.setup
    same_batch = f["batch_size"] == (PAPER.batch_size,)
    return (f"Not the paper's setup (Alahmari et al. 2024, Tables 1–2: {PAPER.blowups} of {PAPER.n} "
            f"8-bit runs blew up): model {_values(f['models'])} here, {PAPER.models} there; horizon "
            f"{f['steps']:,} steps here, {PAPER.steps} there; compute {_values(f['compute_dtype'])} on "
            f"{_values(f['device'])} here, {PAPER.compute} there; max length {_values(f['max_length'])} "
            f"here, {PAPER.max_length} there; "
            + (f"batch {PAPER.batch_size} in both." if same_batch
               else f"batch {_values(f['batch_size'])} here, {PAPER.batch_size} there."))


def _definitions(doc: Doc, s: SurvivalResults, alpha: float) -> None:
    ks = ", ".join(f"{k:g}" for k in s.ks)
    doc.para(f"A run blows up at the first validation check (every few steps, on the validation slice) whose "
             f"loss exceeds ln(k × the base model's perplexity), k = {s.primary:g} (sensitivity: k = {ks}), or "
             "at its divergence step (loss NaN/inf) when that comes first; a run with neither is censored at "
             "its last step. Per arm, the Kaplan–Meier estimate of the share not yet blown up, with a "
             f"pointwise {1 - alpha:.0%} band (Greenwood, log(−log) scale); the median step to blow-up is the "
             "first step at which that share falls below one half (\"not reached\" otherwise), its CI "
             "inverts the same test (statsmodels `SurvfuncRight`). Blow-ups at the horizon: exact "
             f"(Clopper–Pearson) {1 - alpha:.0%} CIs, and Fisher's exact test against the paper's runs "
             f"of the arm's optimizer precision ({PAPER.blowups}/{PAPER.n} 8-bit, {PAPER.blowups_32bit}/"
             f"{PAPER.n} 32-bit) at k = {s.primary:g}. Between arms: the log-rank test (statsmodels "
             "`survdiff`). Seeds are paired by trial across arms; the tests do not use the pairing.")


def _arms_view(s: SurvivalResults, labels: dict[str, str], alpha: float) -> pd.DataFrame:
    conf = f"{1 - alpha:.0%}"
    t = s.arm_table
    out = pd.DataFrame({"arm": t["arm"].map(labels), "k": [f"{k:g}" for k in t["k"]],
                        "n": t["n"], "blow-ups": t["blowups"], "rate": [f"{v:.0%}" for v in t["rate"]],
                        f"{conf} CI (Clopper–Pearson)": [_ci(lo, hi) for lo, hi in zip(t["ci_low"], t["ci_high"])],
                        "median step to blow-up": [median_text(row, conf) for _, row in t.iterrows()],
                        "paper": [f"{int(b)}/{int(n)}" if pd.notna(b) else ""
                                  for b, n in zip(t["paper_blowups"], t["paper_n"])],
                        "Fisher p vs paper": [_p(v) if pd.notna(v) else "" for v in t["fisher_p"]]})
    return out.set_index(["arm", "k"])


def _logrank_view(s: SurvivalResults, labels: dict[str, str]) -> pd.DataFrame:
    t = s.logrank
    return pd.DataFrame({"k": [f"{k:g}" for k in t["k"]], "x": t["x"].map(labels), "y": t["y"].map(labels),
                         "blow-ups x": [f"{e}/{n}" for e, n in zip(t["events_x"], t["n_x"])],
                         "blow-ups y": [f"{e}/{n}" for e, n in zip(t["events_y"], t["n_y"])],
                         "chi²": [format_number(v) for v in t["chi2"]], "p": [_p(v) for v in t["p"]]}
                        ).set_index(["k", "x", "y"])


def _runs_view(s: SurvivalResults, labels: dict[str, str]) -> pd.DataFrame:
    """Per run, per k: the step of its blow-up (``(diverged)`` when that came first), or ``> last step``."""
    t = s.runs.assign(text=[f"{st}" + (" (diverged)" if how == "diverged" else "") if ev else f"> {st}"
                            for st, ev, how in zip(s.runs["step"], s.runs["event"], s.runs["how"])],
                      label=s.runs["arm"].map(labels), col=[f"k = {k:g}" for k in s.runs["k"]])
    wide = t.pivot_table(index=["label", "trial"], columns="col", values="text", aggfunc="first", sort=False)
    wide.index.names, wide.columns.name = ["arm", "trial"], None
    return wide[[f"k = {k:g}" for k in s.ks]]


def _inflation_view(s: SurvivalResults, labels: dict[str, str]) -> pd.DataFrame:
    """Median [25th–75th percentile] of update inflation per arm at the first traced step and the
    traced steps nearest to each tenth of the horizon (:data:`INFLATION_ROWS`)."""
    steps = np.sort(s.inflation["step"].unique())
    wanted = [steps[0], *(s.horizon * i / INFLATION_ROWS for i in range(1, INFLATION_ROWS + 1))]
    shown = sorted({int(steps[np.abs(steps - w).argmin()]) for w in wanted})
    rows = s.inflation[s.inflation["step"].isin(shown)]
    text = [f"{m:.3g} [{lo:.3g}–{hi:.3g}]" for m, lo, hi in zip(rows["median"], rows["q25"], rows["q75"])]
    wide = rows.assign(text=text, label=rows["arm"].map(labels)).pivot(index="step", columns="label", values="text")
    wide.columns.name = None
    return wide[[labels[a] for a in s.arms if labels[a] in wide.columns]].fillna("–")


def _figures_and_tables(doc: Doc, s: SurvivalResults, labels: dict[str, str], r: Results) -> None:
    conf = f"{1 - r.config.alpha:.0%}"
    doc.figure("survival_km", answer_figure(r), f"Share of runs not yet blown up (validation loss ≤ "
               f"ln({s.primary:g} × base perplexity)) against the optimizer step, per arm: Kaplan–Meier "
               f"estimate with its pointwise {conf} band; a tick marks a run censored at its last step")
    doc.table(_arms_view(s, labels, r.config.alpha), "Blow-ups by the horizon and median step to blow-up, per "
              f"arm and k; the paper's blow-ups in the arm's precision and Fisher's exact p against them at "
              f"k = {s.primary:g}")
    doc.table(_logrank_view(s, labels), "Log-rank test of the time to blow-up, per k and pair of arms")
    doc.table(_runs_view(s, labels), "Step of each run's blow-up per k (> N: none by its last step N, censored)")
    if len(s.left_out):
        doc.table(s.left_out.set_index("run"), "Runs of these arms left out (not judged), and why")
    if len(s.inflation):
        doc.figure("survival_inflation", plots_survival.inflation_figure(s.inflation, labels),
                   "Update inflation (applied update / exact fp32 AdamW's, optimizer trace row `all`) against "
                   "the optimizer step, per arm: median over trials, band from the 25th to the 75th percentile")
        doc.table(_inflation_view(s, labels), "Update inflation per arm: median [25th–75th percentile] over "
                  "trials at some traced steps (every traced step: tables/survival_inflation.csv)")


def survival(doc: Doc, s: SurvivalResults | None, r: Results) -> Tables:
    """When each arm's runs blew up within the horizon; nothing for a study that is not a horizon
    study (``s`` None)."""
    if s is None:
        return {}
    labels = arm_labels(s)
    doc.heading("Time to blow-up")
    doc.para(" ".join(headline_sentences(r)))
    doc.para(paper_line(s))
    _definitions(doc, s, r.config.alpha)
    _figures_and_tables(doc, s, labels, r)
    out: Tables = {"survival_runs": (s.runs, "Time to blow-up per run and k"),
                   "survival_arms": (s.arm_table, "Blow-ups and median step to blow-up per arm and k"),
                   "survival_logrank": (s.logrank, "Log-rank tests per k and pair of arms"),
                   "survival_km": (s.km, "Kaplan–Meier estimates per arm and k")}
    if len(s.inflation):
        out["survival_inflation"] = (s.inflation, "Update inflation per arm and traced step (median, IQR)")
    if len(s.left_out):
        out["survival_left_out"] = (s.left_out, "Runs of the horizon arms left out")
    return out


SURVIVAL: Section[SurvivalResults | None] = Section("survival", present=survival,
                                                    compute=lambda r: compute_survival(r.study, r.config))
