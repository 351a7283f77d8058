"""The run-directory contract: the one module that knows file names, schema and atomic writes.

Two roots (:data:`RUNS_ROOT`, :data:`PUBLISHED_ROOT`): a user's runs go to ``runs/<study>/`` (the
config's ``results_dir``, ignored by git); published studies — run records and report committed
so anyone can rebuild them — live in ``results/<study>/`` and nothing a user runs writes there
(a study is published by running it with ``results_dir=results`` from a clean commit).
:func:`published_reference` finds the published study a user's study is compared with.

Layout of a study (``docs/run-directory.md`` documents every file and key)::

    runs/<study>/  or  results/<study>/
      <model>__<dataset>__<optim>[__<variant>]/trial-<NN>/   one run
        summary.json        status, seeds, optimizer requested/effective, metrics, timings ...
        loss_curve.csv      one row per logged step (train) and per validation evaluation (val)
        generations.jsonl   one row per (prompt, decoding mode)
        environment.json    python/torch/transformers/peft/bitsandbytes/CUDA/CPU/git commit
        config.yaml         the resolved Hydra config this run used
        overrides.yaml      the command-line overrides of the job
        adapter/            standard PEFT adapter (adapter_config.json, adapter_model.safetensors)
        checkpoints/        mid-run checkpoints (while running; removed once DONE is written)
        tensorboard/        TensorBoard event files (tracking=tensorboard only)
        error.txt           traceback (failed runs only)
        MANIFEST.json       SHA-256 of every file above but summary.json (finished runs)
        DONE                completion marker, written last (complete and diverged runs)
      <model>__<dataset>__<optim>[__<variant>]/trial-<NN>.claim   a launcher's claim on that run, while it works
      <model>__<dataset>__<optim>[__<variant>]/.claims.lock       locked while a claim there changes
      _splits/<sha>.jsonl   the held-out examples as scored (template applied), by split hash
      _base/<key>.json      base-model perplexity, computed once per (model, dataset, split, eval)
      _sweeps/<time>_<pid>/ Hydra's own logs, the sweep ledger, .notices/ and, after a full disk,
                            the stopped marker (never a run directory)
      _mlflow/ _wandb/      tracking=mlflow's local file store, tracking=wandb's offline runs
      _report/              the generated variance report (analysis.report; written in .staging-*/, then moved)

A run imported from a published table (``python -m analysis.import_table``) holds
``summary.json`` (with an ``imported`` key: source, citation, the table row) and ``DONE`` only.

Everything else (analysis included) reads and writes runs only through this module and the
file modules beside it, which take their names from here: :mod:`~repeatability.records.integrity`
(MANIFEST.json, DONE), :mod:`~repeatability.records.adapter_files`,
:mod:`~repeatability.records.checkpoint_files`, :mod:`~repeatability.records.curve_files` (the CSVs)
and :mod:`~repeatability.records.eval_records` (evals/).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repeatability.records import storage
from repeatability.records import summary as schema
from repeatability.records.errors import RunDirError

if TYPE_CHECKING:  # the config schema only types an argument here: not imported at run time
    from repeatability.config.run import RunConfig

# the summary's schema lives in repeatability/records/summary.py (typed records, one doc per field)
SCHEMA_VERSION = schema.SCHEMA_VERSION
SUPPORTED_SCHEMA_VERSIONS = schema.SUPPORTED_SCHEMA_VERSIONS

SUMMARY = "summary.json"
LOSS_CURVE = "loss_curve.csv"
# only with diagnostics.optimizer_trace=true (repeatability/trial/optimtrace.py)
OPTIMIZER_TRACE = "optimizer_trace.csv"
GENERATIONS = "generations.jsonl"
ENVIRONMENT = "environment.json"
CONFIG = "config.yaml"
OVERRIDES = "overrides.yaml"
ADAPTER = "adapter"
ERROR = "error.txt"
MANIFEST = "MANIFEST.json"
DONE = "DONE"
CLAIM_SUFFIX = ".claim"  # <cell>/trial-NN.claim: beside the run directory, so start_fresh keeps it
CLAIMS_LOCK = ".claims.lock"  # <cell>/.claims.lock: serialises every change to the cell's claims
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# A published study commits its run records but not adapter weights (.gitignore): the manifest
# still lists the weights' SHA-256 (as does the summary), and their absence means "not kept"
WEIGHTS_FILE = f"{ADAPTER}/{ADAPTER_WEIGHTS}"
ADAPTER_CONFIG = "adapter_config.json"  # PEFT's file next to the weights (r, lora_alpha, ...)
CHECKPOINTS = "checkpoints"  # the Trainer's checkpoint-<step>/ folders, while the run is unfinished
RESUME_STATE = "repeatability_state.json"  # written into a checkpoint after the Trainer's files: it is complete
# experiment trackers (repeatability.records.tracking): TensorBoard event files inside the run (kept on
# resume: TensorBoard itself drops the steps a restarted writer logs again); MLflow's local
# file store and W&B's offline runs under the study
TENSORBOARD = "tensorboard"
MLFLOW_STORE = "_mlflow"
WANDB_DIR = "_wandb"
_KEPT_ON_RESUME = (CHECKPOINTS, TENSORBOARD)

LOSS_COLUMNS = ("step", "epoch", "split", "loss", "learning_rate", "grad_norm", "elapsed_s")
FINISHED_STATUSES = ("complete", "diverged")  # runs that are kept and skipped on re-run
STATUSES = schema.STATUSES

# The files of a finished run (a failed run has error.txt instead of DONE, and may lack adapter).
RUN_FILES = (SUMMARY, LOSS_CURVE, GENERATIONS, ENVIRONMENT, CONFIG, OVERRIDES, ADAPTER, MANIFEST, DONE)
# Summary key of a run imported from a published table ({source, citation, row}): such a run
# holds summary.json and DONE only, because nothing else was reported.
IMPORTED = "imported"
IMPORTED_FILES = (SUMMARY, DONE)


@dataclass(frozen=True)
class CellKey:
    """What identifies a cell; the run directory's name is built from it."""

    model: str
    dataset: str
    optim: str
    variant: str = ""

    @property
    def dirname(self) -> str:
        parts = [self.model, self.dataset, self.optim] + ([self.variant] if self.variant else [])
        for part in parts:
            if not part or "/" in part or "__" in part:
                raise RunDirError(f"cell name part {part!r} must be non-empty, without '/' or '__'")
        return "__".join(parts)


def cell_of(cfg: RunConfig) -> CellKey:
    """The run's cell; historical state maps always make their own cell (never mixed with today's)."""
    optim, maps = cfg.optim.name, cfg.optim.state_maps
    if maps != "current" and maps not in optim:
        optim = f"{optim}-maps_{maps}"
    return CellKey(cfg.model.name, cfg.dataset.name, optim, cfg.variant)


def claim_file(run: Path) -> Path:
    """``<cell>/trial-NN.claim``: the claim on a run directory (see :mod:`repeatability.launching.claims`)."""
    return run.parent / f"{run.name}{CLAIM_SUFFIX}"


def claims_lock_file(run: Path) -> Path:
    """``<cell>/.claims.lock``: the lock held while a claim of the cell is created, changed or removed."""
    return run.parent / CLAIMS_LOCK


PROJECT_ROOT = Path(__file__).resolve().parents[2]
RUNS_ROOT = "runs"  # the config's default results_dir: a user's runs (git ignores it)
PUBLISHED_ROOT = "results"  # published studies, committed with their run records and report


def published_study(name: str, root: Path = PROJECT_ROOT) -> Path:
    """Where the published study ``name`` lives: ``<project>/results/<name>``."""
    return root / PUBLISHED_ROOT / name


def published_reference(study: Path, root: Path = PROJECT_ROOT) -> Path | None:
    """The published study of the same name as ``study``, when there is one holding runs and it is
    not ``study`` itself: what a user's study is compared with seed for seed (``make study``)."""
    reference = published_study(study.resolve().name, root)
    if not reference.is_dir() or reference.resolve() == study.resolve():
        return None
    return reference if any(True for _ in iter_run_dirs(reference)) else None


def study_dir(results_dir: str | Path, study: str) -> Path:
    return Path(results_dir) / study


def run_dir(results_dir: str | Path, study: str, cell: CellKey, trial: int) -> Path:
    """``results/<study>/<model>__<dataset>__<optim>[__<variant>]/trial-NN``."""
    return study_dir(results_dir, study) / cell.dirname / f"trial-{trial:02d}"


def parse_trial_dirname(name: str) -> int:
    """The trial number of a ``trial-NN`` directory name (exactly as :func:`run_dir` writes it)."""
    prefix, _, digits = name.partition("-")
    if prefix != "trial" or not digits.isdigit() or f"trial-{int(digits):02d}" != name:
        raise RunDirError(f"{name}: not a trial directory (expected trial-NN)")
    return int(digits)


def parse_cell_dirname(name: str) -> CellKey:
    parts = name.split("__")
    if len(parts) not in (3, 4):
        raise RunDirError(f"{name}: not a cell directory (expected model__dataset__optim[__variant])")
    return CellKey(*parts)


# --------------------------------------------------------------------------- atomic writes


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all (temporary file, fsync, rename); a full, read-only or
    failing filesystem raises :class:`~repeatability.records.storage.StorageFault` naming ``path``."""
    with storage.writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _clean_floats(obj: Any) -> Any:
    """JSON has no NaN/inf: store them as strings "nan"/"inf"/"-inf" so files stay standard."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_floats(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    text = json.dumps(_clean_floats(obj), indent=2, sort_keys=True, default=_json_default)
    _atomic_write_bytes(path, (text + "\n").encode())


def write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode())


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    lines = [json.dumps(_clean_floats(r), sort_keys=True, default=_json_default) for r in rows]
    _atomic_write_bytes(path, ("\n".join(lines) + ("\n" if lines else "")).encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path}: corrupted JSON ({exc.msg if hasattr(exc, 'msg') else exc}); "
                          "delete the run directory and re-run its trial") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise RunDirError(f"{path}:{i}: corrupted JSON line; re-run this trial") from None
    return rows


def as_float(value: Any) -> float:
    """Undo :func:`_clean_floats` for numbers read back from the contract's JSON."""
    if value is None:
        return math.nan
    return float(value)


# --------------------------------------------------------------------------- run state


def run_state(path: Path) -> str:
    """``absent`` | ``incomplete`` (half-finished) | ``failed`` | ``complete`` | ``diverged``."""
    if not path.exists():
        return "absent"
    if (path / DONE).exists():
        status = read_json(path / SUMMARY).get("status")
        if status not in FINISHED_STATUSES:
            raise RunDirError(f"{path}: DONE marker but summary status {status!r}; delete and re-run")
        return status
    if (path / SUMMARY).exists():
        try:
            if read_json(path / SUMMARY).get("status") == "failed":
                return "failed"
        except RunDirError:
            pass
    return "incomplete"


def start_fresh(path: Path, keep_checkpoints: bool = False) -> None:
    """Remove what a half-finished or failed attempt left, then create the directory.

    With ``keep_checkpoints`` the attempt's ``checkpoints/`` (the run resumes from them) and
    ``tensorboard/`` stay and everything else goes. Refuses to touch a finished run: those are never overwritten.
    """
    state = run_state(path)
    if state in FINISHED_STATUSES:
        raise RunDirError(f"{path}: holds a {state} run; it is never overwritten")
    if path.exists() and keep_checkpoints:
        for child in path.iterdir():
            if child.name not in _KEPT_ON_RESUME:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        return
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def _refuse_if_done(path: Path, what: str) -> None:
    """A finished run's record is final: nothing may write its summary or an error into it."""
    if (path / DONE).exists():
        raise RunDirError(f"{path}: holds a finished run; refusing to write {what} into it")


# --------------------------------------------------------------------------- integrity


# --------------------------------------------------------------------------- writers


def write_summary(path: Path, summary: schema.Summary | dict[str, Any]) -> None:
    """Write ``summary.json`` at the current schema version.

    A dict is checked against :class:`repeatability.records.summary.Summary` first: a key the schema
    does not declare, or a value of another type, raises :class:`RunDirError` naming it.
    """
    record = (summary if isinstance(summary, schema.Summary)
              else schema.parse({**summary, "schema_version": SCHEMA_VERSION}))
    record.schema_version = SCHEMA_VERSION
    if record.status not in STATUSES:
        raise ValueError(f"summary status must be one of {STATUSES}")
    _refuse_if_done(path, SUMMARY)
    write_json(path / SUMMARY, schema.dump(record))


def write_generations(path: Path, rows: list[dict[str, Any]]) -> None:
    write_jsonl(path / GENERATIONS, rows)


def write_environment(path: Path, env: dict[str, Any]) -> None:
    write_json(path / ENVIRONMENT, env)


def write_config(path: Path, config_yaml: str, overrides: list[str]) -> None:
    write_text(path / CONFIG, config_yaml)
    write_text(path / OVERRIDES, "".join(f"- {o}\n" for o in overrides) or "[]\n")


def write_error(path: Path, traceback_text: str) -> None:
    _refuse_if_done(path, ERROR)
    write_text(path / ERROR, traceback_text)


def read_config(path: Path) -> str:
    """The resolved ``config.yaml`` the run used, as text."""
    try:
        return (path / CONFIG).read_text()
    except FileNotFoundError:
        raise RunDirError(f"{path / CONFIG}: missing; this run cannot be re-scored") from None


# --------------------------------------------------------------------------- readers


def read_summary(path: Path) -> dict[str, Any]:
    """The run's summary as JSON, checked for a supported schema version and against the
    schema (:func:`read_summary_record` gives the typed record)."""
    summary = read_json(path / SUMMARY)
    if not isinstance(summary, dict):
        raise RunDirError(f"{path / SUMMARY}: not a JSON object; delete the run and re-run it")
    version = summary.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise RunDirError(
            f"{path / SUMMARY}: schema version {version!r} is not supported "
            f"(this code reads {SUPPORTED_SCHEMA_VERSIONS}); use the repeatability version that wrote it"
        )
    try:
        schema.parse(summary)
    except RunDirError as exc:
        raise RunDirError(f"{path / SUMMARY}: {exc}") from None
    return summary


def read_summary_record(path: Path) -> schema.Summary:
    """The run's summary as the typed record (keys it lacks are ``summary.ABSENT``)."""
    return schema.parse(read_summary(path))


def has_summary(path: Path) -> bool:
    """Whether the run has written its summary yet (a half-finished run has not)."""
    return (path / SUMMARY).exists()


def read_generations(path: Path) -> list[dict[str, Any]]:
    file = path / GENERATIONS
    return read_jsonl(file) if file.exists() else []


def read_environment(path: Path) -> dict[str, Any]:
    file = path / ENVIRONMENT
    return read_json(file) if file.exists() else {}


def iter_run_dirs(study: Path) -> Iterator[Path]:
    """Every run directory of a study (finished, failed or half-finished), in name order."""
    for cell in sorted(p for p in study.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        for trial in sorted(cell.glob("trial-*")):
            if trial.is_dir():
                yield trial


# --------------------------------------------------------------------------- study-level files


def split_file(study: Path, split_hash: str) -> Path:
    return study / "_splits" / f"{split_hash}.jsonl"


def base_perplexity_file(study: Path, key: str) -> Path:
    return study / "_base" / f"{key}.json"


def report_dir(study: Path) -> Path:
    """Where ``python -m analysis.report`` writes report.md/html, figures/ and tables/."""
    return study / "_report"
