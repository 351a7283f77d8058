"""Check every job of a command line before any training starts.

Composes each job's config (the sweep expanded, experiment sweeps included), validates it,
checks that its model and dataset can be had and its splits are not empty, and that the runs
still to do fit the free space of results_dir's filesystem (:mod:`repeatability.launching.footprint`).
The first problem is one line on stderr naming it and the fix; nothing has been computed yet.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from repeatability.config.errors import ConfigError
from repeatability.config.run import GROUPS, RunConfig, register_configs, to_run_config
from repeatability.launching import footprint, launchers
from repeatability.records import artifacts, tracking

ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = ROOT / "conf"
EXPERIMENTS_DIR = ROOT / "experiments"
SEARCHPATH_OVERRIDE = f"hydra.searchpath=[file://{ROOT}]"  # makes experiments/*.yaml the `experiments` group
_HYDRA_ONLY_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc",
                     "--resolve", "--package", "-p", "--version", "--config-path", "-cp", "--config-name", "-cn",
                     "--config-dir", "-cd", "--experimental-rerun"}


SELECTOR_GROUPS = ("vary", "experiments")  # groups that only set other keys (no schema node)


def group_choices(group: str) -> list[str]:
    folder = EXPERIMENTS_DIR if group == "experiments" else CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml"))


def check_group_values(overrides: list[str]) -> None:
    """Unknown choices of our config groups get a one-line error listing the valid ones."""
    parser = OverridesParser.create()
    for ov in parser.parse_overrides(overrides):
        group = ov.key_or_group.lstrip("+~")
        if group not in GROUPS and group not in SELECTOR_GROUPS or ov.is_delete():
            continue
        values = list(ov.sweep_string_iterator()) if ov.is_sweep_override() else [ov.get_value_element_as_str()]
        known = group_choices(group)
        for value in values:
            if value not in known:
                raise ConfigError(f"unknown {group} {value!r}; choose one of: {', '.join(known)}")


def expand_jobs(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The task overrides of every job (``hydra.*`` overrides left out, as Hydra's launcher gets
    them), expanded exactly as Hydra's basic sweeper does.

    Hydra composes the sweep config in multirun mode, takes ``hydra.sweeper.params`` (an
    experiment file's sweep) followed by the command line's task overrides (a key given on
    both: the command line's value, in the params' place) and lets
    ``BasicSweeper.split_arguments`` build their product; this repeats those steps with
    Hydra's own functions (``tests/test_preflight_hydra.py`` checks it against a real
    multirun). Call inside an initialised Hydra (:func:`compose_jobs` does).
    """
    if not multirun:
        return [overrides]
    sweep_cfg = GlobalHydra.instance().hydra.compose_config(  # type: ignore[union-attr]
        "config", [SEARCHPATH_OVERRIDE, *overrides], run_mode=RunMode.MULTIRUN, with_log_configuration=False)
    params = [f"{k}={v}" for k, v in (OmegaConf.select(sweep_cfg, "hydra.sweeper.params") or {}).items()]
    task = list(OmegaConf.to_container(sweep_cfg.hydra.overrides.task, resolve=False))  # type: ignore[arg-type]
    parsed = OverridesParser.create().parse_overrides([*params, *task])
    [jobs] = BasicSweeper.split_arguments(parsed, None)
    return jobs


def compose_jobs(overrides: list[str], multirun: bool) -> list[DictConfig]:
    """Composed config of every job (sweeps in the command line and in experiment files)."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        configs = []
        hydra_overrides = [o for o in overrides if o.lstrip("+~").startswith(("hydra.", "hydra/"))] if multirun else []
        for job in expand_jobs(overrides, multirun):
            cfg = compose("config", overrides=[SEARCHPATH_OVERRIDE, *hydra_overrides, *job], return_hydra_config=True)
            with open_dict(cfg):
                del cfg["hydra"]
            configs.append(cfg)
        return configs


def launcher_config(overrides: list[str]) -> DictConfig:
    """``hydra.launcher`` of the command line, as Hydra will instantiate it."""
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            launcher_keys = [o for o in overrides if o.lstrip("+~").startswith(("hydra/launcher", "hydra.launcher"))]
            cfg = compose("config", overrides=[SEARCHPATH_OVERRIDE, *launcher_keys], return_hydra_config=True)
            return cfg.hydra.launcher
    finally:
        GlobalHydra.instance().clear()


def _data_key(cfg: RunConfig) -> str:
    return repr((cfg.dataset, cfg.determinism.split_seed, cfg.train.val_examples))


def _check_resources(configs: list[RunConfig], remote: bool = False) -> dict[str, int]:
    """Models, data and splits; the device only where the jobs run here (not on SLURM nodes).
    Returns the training examples of each split (by :func:`_data_key`)."""
    from repeatability.trial import data, modelling

    for cfg in {c.model.name + str(c.model.path): c for c in configs}.values():
        modelling.check_model_available(cfg.model)
        if remote:
            continue
        device = modelling.resolve_device(cfg.device)
        modelling.resolve_mixed_precision(cfg.quant, device, modelling.resolve_compute_dtype(cfg.quant, device))
    n_train: dict[str, int] = {}
    for spec in {c.eval.prompts: c for c in configs}.values():
        data.prompt_set(spec)  # a missing preset or an empty file fails here, before any training
    for cfg in configs:
        key = _data_key(cfg)
        if key in n_train:
            continue
        examples = data.load_examples(cfg.dataset)
        split = data.split_examples(examples, cfg.determinism.split_seed, cfg.train.val_examples, cfg.dataset.name)
        n_train[key] = len(split.train)
    return n_train


def _check_space(configs: list[RunConfig], at_once: int, n_train: dict[str, int]) -> None:
    """The runs still to do fit results_dir's free space (:func:`footprint.check_fits`)."""
    from repeatability.trial import data

    def finished(cfg: RunConfig) -> bool:
        run = artifacts.run_dir(cfg.results_dir, cfg.study, artifacts.cell_of(cfg), cfg.trial)
        return (run / artifacts.DONE).exists()

    footprint.check_fits(configs, at_once, lambda c: n_train[_data_key(c)], data.prompt_set, finished)


def check(overrides: list[str], multirun: bool) -> list[RunConfig]:
    """Raise :class:`ConfigError` for the first problem; return the checked job configs."""
    check_group_values(overrides)
    try:
        composed = compose_jobs(overrides, multirun)
    except ConfigError:
        raise
    # Hydra / OmegaConf composition errors, and whatever else composing raises: every one becomes the
    # user's one line (ConfigError), never a traceback
    except Exception as exc:  # noqa: BLE001 - any composition failure is bad input here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{first} (check the spelling of the key and its type in conf/)") from None
    finally:
        GlobalHydra.instance().clear()
    configs = [to_run_config(c) for c in composed]
    for name in sorted({c.tracking.name for c in configs}):  # a missing pip extra, before any model loads
        tracking.check_available(next(c.tracking for c in configs if c.tracking.name == name))
    launcher_cfg = launcher_config(overrides)
    launcher = launchers.classify(launcher_cfg)
    if launcher.check_resources is not None:  # a remote launcher's own check of its cluster
        launcher.check_resources(launcher_cfg, any(c.device == "cuda" for c in configs))
    n_train = _check_resources(configs, launcher.remote)
    # on SLURM every job may run at once; here, the launcher's parallel jobs
    _check_space(configs, len(configs) if launcher.remote else launcher.parallel_jobs, n_train)
    _warn_unlocked()
    return configs


def _warn_unlocked() -> None:
    """One line when this environment is not the project's lock (a warning: runs record it)."""
    from repeatability.records import lock

    line = lock.check().line()
    if line:
        print(f"warning: {line}", file=sys.stderr)


def check_argv(argv: list[str]) -> Any:
    """Preflight for ``python -m repeatability.run ARGS``; None when Hydra flags take over."""
    if any(a.split("=", 1)[0] in _HYDRA_ONLY_FLAGS for a in argv):
        return None
    multirun = any(a in ("-m", "--multirun") for a in argv)
    overrides = [a for a in argv if not a.startswith("-")]
    return check(overrides, multirun)
