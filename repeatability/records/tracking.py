"""Experiment trackers (``tracking=tensorboard|mlflow|wandb``) through the Trainer's ``report_to``.

The Trainer's own callbacks (``transformers.integrations.TensorBoardCallback``,
``MLflowCallback``, ``WandbCallback``) log every step: training loss, learning rate, grad norm,
validation loss. This module only does what they cannot: it points them at the study (their
environment variables), groups the runs of a cell (MLflow experiment = study, tags
study/cell/trial; W&B project = study, group = cell; TensorBoard: one folder per run under the
study, so ``tensorboard --logdir results/<study>`` shows the cells side by side), and logs what
exists only outside the training loop: the resolved config and seeds at the start, the
effective optimizer and the held-out perplexities at the end — with the trackers' own clients.

Tracking never changes a result, and a tracker that is not installed is refused by preflight
(:func:`check_available`) before any training.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import netrc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from repeatability.config.errors import ConfigError
from repeatability.config.run import TrackingConfig
from repeatability.records import artifacts
from repeatability.records import metrics as metrics_registry

log = logging.getLogger(__name__)

# tracker -> (module the Trainer's callback imports, this project's pip extra)
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"),
            "wandb": ("wandb", "wandb")}
# the summary numbers logged at the end of a run, under these tracker names
FINAL_METRICS = metrics_registry.names("tracker")  # repeatability.records.metrics
FINAL_PREFIX = "heldout/"
EFFECTIVE_OPTIMIZER = ("class", "bits", "paging_effective", "state_8bit_param_fraction")


def check_available(cfg: TrackingConfig) -> None:
    """Raise one line naming the pip extra when the chosen tracker's package is missing."""
    if cfg.name == "none":
        return
    module, extra = PACKAGES[cfg.name]
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"tracking={cfg.name} needs the {module} package, which is not installed; install "
                          f"this project's extra: .venv/bin/pip install -e '.[{extra}]' (or tracking=none)")


def mlflow_uri(cfg: TrackingConfig, study: Path) -> str:
    """The user's tracking URI, else a local file store under the study."""
    return cfg.tracking_uri or (study / artifacts.MLFLOW_STORE).resolve().as_uri()


def wandb_mode(cfg: TrackingConfig) -> str:
    """``online`` when asked, or (auto) when an API key is configured; else ``offline``."""
    if cfg.mode != "auto":
        return cfg.mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        return "online" if netrc.netrc().authenticators("api.wandb.ai") else "offline"
    except (FileNotFoundError, netrc.NetrcParseError):
        return "offline"


def flat_params(obj: Any, prefix: str = "") -> dict[str, str]:
    """Nested config → ``{"train.lr": "0.0002", ...}`` (trackers store parameters as text)."""
    if isinstance(obj, dict):
        out: dict[str, str] = {}
        for key, value in obj.items():
            out.update(flat_params(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: json.dumps(obj) if isinstance(obj, (list, tuple)) else str(obj)}


class TrackerRun:
    """One run's tracker session: opened before the Trainer is built, closed after scoring.

    ``report_to`` and ``run_name`` go to ``TrainingArguments``; :meth:`start` and
    :meth:`log_end` add the values the Trainer's callback does not see.
    """

    def __init__(self, cfg: TrackingConfig, run: Path, study: Path, ids: dict[str, Any]):
        self.cfg, self.run, self.study, self.ids = cfg, run, study, ids
        self.run_name = f"{ids['cell']}/trial-{ids['trial']:02d}"
        self.report_to = [] if cfg.name == "none" else [cfg.name]
        self.record: dict[str, Any] | None = None  # what the summary says about the tracker run
        self._client: Any = None  # the tracker's module (mlflow, wandb) or a SummaryWriter class

    def env(self) -> dict[str, str]:
        """Environment variables the Trainer's callback reads when it is built."""
        if self.cfg.name == "tensorboard":
            return {"TENSORBOARD_LOGGING_DIR": str(self.run / artifacts.TENSORBOARD)}
        if self.cfg.name == "mlflow" and not self.cfg.tracking_uri:
            # MLflow >= 3.7 refuses the file store unless asked: here it is what the user chose
            return {"MLFLOW_ALLOW_FILE_STORE": "true"}
        return {}

    def start(self, config: dict[str, Any], seeds: dict[str, Any]) -> None:
        """Open the tracker run (grouped by study/cell/trial) and log the config and seeds."""
        # prefixed: the Trainer's callback logs TrainingArguments and the model config as
        # parameters too, and MLflow refuses a parameter logged twice with two values
        params = {**flat_params(config, "config"), **flat_params(seeds, "seeds")}
        tags = {k: str(v) for k, v in self.ids.items()}
        project = self.cfg.project or self.ids["study"]
        if self.cfg.name == "mlflow":
            import mlflow

            self._client = mlflow
            mlflow.set_tracking_uri(mlflow_uri(self.cfg, self.study))
            mlflow.set_experiment(project)
            active = mlflow.start_run(run_name=self.run_name, tags=tags)
            mlflow.log_params(params)
            self.record = {"name": "mlflow", "uri": mlflow.get_tracking_uri(), "experiment": project,
                           "run_id": active.info.run_id, "run_name": self.run_name}
        elif self.cfg.name == "wandb":
            import wandb

            self._client = wandb
            folder = self.study / artifacts.WANDB_DIR
            folder.mkdir(parents=True, exist_ok=True)
            mode = wandb_mode(self.cfg)
            active = wandb.init(project=project, group=self.ids["cell"], name=self.run_name, job_type="trial",
                                tags=[f"{k}:{v}" for k, v in tags.items()], config={"harness": config, "seeds": seeds},
                                dir=str(folder), mode=mode, reinit="finish_previous")
            self.record = {"name": "wandb", "mode": mode, "project": project, "run_id": active.id,
                           "run_name": self.run_name, "dir": str(Path(active.dir).parent.relative_to(self.study))}
        elif self.cfg.name == "tensorboard":
            self._text({"config": json.dumps(config, indent=1), "seeds": json.dumps(seeds)}, step=0)
            self.record = {"name": "tensorboard", "dir": artifacts.TENSORBOARD, "run_name": self.run_name}

    def log_end(self, summary: dict[str, Any]) -> None:
        """The held-out perplexities, final losses and the effective optimizer of a finished run."""
        metrics = summary.get("metrics") or {}
        final = {f"{FINAL_PREFIX}{k}": float(metrics[k]) for k in FINAL_METRICS
                 if isinstance(metrics.get(k), (int, float))}
        effective = (summary.get("optimizer") or {}).get("effective") or {}
        optimizer = {f"optimizer.effective.{k}": effective[k] for k in EFFECTIVE_OPTIMIZER if k in effective}
        step = int(metrics.get("steps") or 0)
        if self.cfg.name == "mlflow":
            self._client.log_metrics(final, step=step)
            self._client.log_params({k: str(v) for k, v in optimizer.items()})
            self._client.set_tags({"status": summary["status"]})
        elif self.cfg.name == "wandb":
            run = self._client.run
            run.summary.update({**final, **optimizer, "status": summary["status"]})
        elif self.cfg.name == "tensorboard":
            writer = self._writer()
            for key, value in final.items():
                writer.add_scalar(key, value, step)
            writer.add_text("optimizer/effective", json.dumps(effective), step)
            writer.add_text("status", summary["status"], step)
            writer.close()

    def close(self, failed: bool) -> None:
        """End the tracker run (MLflow status FAILED / W&B exit code 1 after an exception)."""
        if self.cfg.name == "mlflow" and self._client is not None and self._client.active_run():
            self._client.end_run(status="FAILED" if failed else "FINISHED")
        elif self.cfg.name == "wandb" and self._client is not None and self._client.run is not None:
            self._client.run.finish(exit_code=1 if failed else 0)

    def _writer(self) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(self.run / artifacts.TENSORBOARD))

    def _text(self, texts: dict[str, str], step: int) -> None:
        writer = self._writer()
        for key, text in texts.items():
            writer.add_text(key, text, step)
        writer.close()


@contextmanager
def tracker_run(cfg: TrackingConfig, run: Path, study: Path, ids: dict[str, Any]) -> Iterator[TrackerRun]:
    """A :class:`TrackerRun` with its environment variables set (restored afterwards: Hydra's
    basic launcher runs every job in this process)."""
    session = TrackerRun(cfg, run, study, ids)
    saved = {key: os.environ.get(key) for key in session.env()}
    os.environ.update(session.env())
    failed = True
    try:
        yield session
        failed = False
    finally:
        try:
            session.close(failed)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
