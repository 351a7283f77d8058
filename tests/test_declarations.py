"""One source per declaration (issue 28): what one part of the harness declares, the others derive.

A mirror kept by hand (a list copied from another, a string spelled again) fails here instead of
after a run's training, when its summary is checked. Also: no import cycle between the project's
modules, lazy imports included, and the layers point down (launching -> trial -> records -> config;
analysis reads records and config only).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import typing
from pathlib import Path

import pytest
import yaml

from repeatability.config import evaluators
from repeatability.config.cell import OPTIM_CLASSES, OptimConfig
from repeatability.config.run import SEED_SOURCES, TASK_EVALUATORS, DeterminismConfig
from repeatability.records import metrics
from repeatability.records import run_setup as R
from repeatability.records import summary as S

ROOT = Path(__file__).resolve().parent.parent


def _fields(record: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(record)}


# --------------------------------------------------------------------------- optimizer


def test_optim_requested_is_the_optim_config_and_the_learning_rate() -> None:
    """The summary copies ``asdict(cfg.optim)`` into ``optimizer.requested``: same names, types and
    texts as the config's fields, plus ``lr``."""
    config, requested = _fields(OptimConfig), _fields(R.OptimRequested)
    assert list(requested) == [*config, "lr"]
    config_types, requested_types = typing.get_type_hints(OptimConfig), typing.get_type_hints(R.OptimRequested)
    for name, f in config.items():
        assert requested[name].metadata["doc"] == f.metadata["doc"], name
        assert requested_types[name] == config_types[name], name
    record = S.parse({"optimizer": {"requested": {**dataclasses.asdict(OptimConfig(name="x")), "lr": 2e-4}}})
    assert record.optimizer.requested.min_8bit_size == 4096 and record.optimizer.requested.lr == 2e-4


def test_every_optim_impl_has_one_builder_and_every_optim_config_names_one() -> None:
    from repeatability.trial import train

    assert tuple(train.OPTIMIZERS) == OPTIM_CLASSES
    configs = [yaml.safe_load(p.read_text()) for p in (ROOT / "conf" / "optim").glob("*.yaml")]
    impls = {c.get("impl", OptimConfig.impl) for c in configs}
    assert impls == set(OPTIM_CLASSES)
    cls, kwargs = train.optimizer_class_and_kwargs(OptimConfig(name="adamw_torch", impl="torch_adamw"), 1e-3)
    assert (cls.__module__, cls.__name__) == ("torch.optim.adamw", "AdamW")
    assert kwargs == {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}


# --------------------------------------------------------------------------- task evaluators


def test_config_choices_and_implementations_are_the_declared_evaluators() -> None:
    from repeatability.trial import tasks

    assert TASK_EVALUATORS == evaluators.NAMES == tuple(tasks.IMPLEMENTATIONS)
    assert S.Tasks.__dataclass_fields__["evaluators"].metadata["doc"] == "`classification` and/or `generation`"


def test_every_declared_score_is_a_summary_field_and_a_task_metric() -> None:
    declared = tuple(s.name for s in evaluators.SCORES)
    assert len(set(declared)) == len(declared), "two evaluators declare the same score"
    assert S.TASK_SCORES == declared == tuple(_fields(S.TaskScores)) == metrics.names("task")
    metric_fields = _fields(S.Metrics)
    for score in evaluators.SCORES:
        assert metric_fields[score.name].metadata["doc"] == score.doc
        entry = metrics.BY_KEY[getattr(S.COLUMNS.metrics, score.name)]
        assert (entry.label, entry.short, entry.lower_is_better) == (score.label, score.short, False)


def test_each_evaluator_scores_exactly_what_it_declares() -> None:
    from repeatability.trial import tasks

    classified = tasks.classification_scores(["a", "b"], ["a", "a"], ["a", "b"])
    generated = tasks.generation_scores(["the cat"], ["the cat sat"])
    assert tuple(classified) == evaluators.score_names("classification")
    assert tuple(generated) == evaluators.score_names("generation")
    assert classified["accuracy"] == 0.5 and generated["exact_match"] == 0.0


# --------------------------------------------------------------------------- seeded sources


def test_every_seeded_source_has_an_override_a_seed_and_a_rule() -> None:
    """The config declares the sources; the determinism config's overrides and the summary's seeds
    and rules spell them as fields (each needs its own text), so they are checked here."""
    assert tuple(_fields(R.SeedRules)) == SEED_SOURCES
    assert set(SEED_SOURCES) <= set(_fields(R.Seeds)) and set(SEED_SOURCES) <= set(_fields(DeterminismConfig))


# --------------------------------------------------------------------------- metric keys

KEYED_MODULES = ("repeatability/trial/evaluate.py", "repeatability/trial/pipeline.py",
                 "repeatability/records/record.py", "repeatability/launching/sweep.py")


@pytest.mark.parametrize("module", KEYED_MODULES)
def test_metric_keys_are_named_through_the_registry(module: str) -> None:
    """``metrics.NAME.<field>``, never the field spelled as a string (a misspelling would pass)."""
    names = set(_fields(S.Metrics))
    tree = ast.parse((ROOT / module).read_text())
    spelled = sorted({node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and node.value in names})
    assert spelled == [], f"{module} spells metric keys {spelled}: use repeatability.records.metrics.NAME"


def test_metric_names_refuse_a_misspelt_key() -> None:
    assert metrics.NAME.perplexity_token_weighted == "perplexity_token_weighted"
    with pytest.raises(AttributeError, match="Metrics has no field 'perplexity'"):
        metrics.NAME.perplexity  # noqa: B018


# --------------------------------------------------------------------------- import cycles

PACKAGES = ("repeatability", "analysis", "bench")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "bench":  # scripts: bench/ is on sys.path, so they import each other by bare name
        return parts[-1]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _source(path: Path) -> str:
    """A module's text; a notebook's code cells (IPython magics and shell lines left out)."""
    if path.suffix != ".ipynb":
        return path.read_text()
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    lines = [line for c in cells for line in "".join(c["source"]).splitlines()
             if not line.lstrip().startswith(("%", "!"))]
    return "\n".join(lines)


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules ``path`` imports anywhere: at module level, under ``TYPE_CHECKING`` and inside
    functions (a lazy import hides a cycle from Python, not from this test)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(_source(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            out |= {base, *(f"{base}.{a.name}" for a in node.names)}
    return {m for m in out if m in known and m != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (depth-first search), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _graph() -> dict[str, set[str]]:
    """Each project module (and each notebook under ``analysis/``) -> the project modules it imports."""
    files = {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph = {name: _imports(name, path, set(files)) for name, path in files.items()}
    for notebook in (ROOT / "analysis").rglob("*.ipynb"):
        if ".ipynb_checkpoints" not in notebook.parts:
            graph[str(notebook.relative_to(ROOT))] = _imports("", notebook, set(files))
    return graph


def test_the_import_graph_is_acyclic() -> None:
    graph = _graph()
    assert graph["repeatability.launching.claims"] >= {"repeatability.launching.launchers"}  # the scan sees imports
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


# --------------------------------------------------------------------------- layers

TRIAL, LAUNCHING = "repeatability.trial", "repeatability.launching"
RECORDS, CONFIG = "repeatability.records", "repeatability.config"
# (the modules a rule covers, the packages they must not import, at any depth): launching → trial → records →
# config. The entries at the top of the package (repeatability.run, rescore, reproduce) and bench/ may import any
# layer.
LAYERS = (
    (CONFIG, (RECORDS, TRIAL, LAUNCHING)),  # the config schema is checked before any run exists: it knows none
    (RECORDS, (TRIAL, LAUNCHING)),  # the contract and the summary schema know no run and no launcher
    (TRIAL, (LAUNCHING,)),  # a launcher hands the trial its thread budget and stop check (trial.stopping)
    ("analysis", (TRIAL, LAUNCHING)),  # reports read run records only (notebooks included)
    ("analysis.compute", ("analysis.present", "analysis.report")),  # numbers and typed records, no words
)


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _upward(graph: dict[str, set[str]]) -> list[str]:
    """``module -> imported`` for each import that breaks a rule of :data:`LAYERS`."""
    def in_layer(module: str, layer: str) -> bool:  # a notebook is named by its path
        return _within(module, layer) or module.startswith(layer.replace(".", "/") + "/")

    return sorted(f"{module} -> {imported}" for module, imports in graph.items() for layer, banned in LAYERS
                  if in_layer(module, layer) for imported in imports if any(_within(imported, b) for b in banned))


def test_the_layers_point_down() -> None:
    graph = _graph()
    assert f"{TRIAL}.pipeline" in graph["repeatability.launching.sweep"]  # the scan sees a lazy import
    assert "repeatability.records.record" in graph[f"{TRIAL}.pipeline"]
    assert f"{CONFIG}.cell" in graph[f"{RECORDS}.run_setup"]  # the records derive from the config
    assert any(name.endswith(".ipynb") for name in graph)  # the notebooks are read too
    assert _upward(graph) == []


def test_the_layer_check_finds_an_upward_import() -> None:
    graph = {"repeatability.records.record": {f"{TRIAL}.evaluate"}, f"{TRIAL}.train": {f"{LAUNCHING}.preemption"},
             "analysis/notebooks/x.ipynb": {LAUNCHING}, f"{LAUNCHING}.sweep": {f"{TRIAL}.pipeline"},
             f"{TRIAL}.pipeline": {"repeatability.records.record"}, "repeatability.trialx": {LAUNCHING},
             "analysis.compute.verdict": {"analysis.present.prose"},
             "analysis.present.prose": {"analysis.compute.stats"}, f"{CONFIG}.run": {f"{RECORDS}.run_setup"},
             f"{RECORDS}.run_setup": {f"{CONFIG}.cell"}, "analysis.load": {f"{CONFIG}.run"}}
    assert _upward(graph) == ["analysis.compute.verdict -> analysis.present.prose",
                              "analysis/notebooks/x.ipynb -> repeatability.launching",
                              "repeatability.config.run -> repeatability.records.run_setup",
                              "repeatability.records.record -> repeatability.trial.evaluate",
                              "repeatability.trial.train -> repeatability.launching.preemption"]
