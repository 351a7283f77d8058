"""Known library notices become one harness line each, once per sweep; anything else gets through."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from repeatability.launching import notices
from repeatability.records import artifacts
from tests.conftest import ROOT, run_cli, tiny_overrides

CELL = "tiny__tq__paged_adamw_8bit"  # the default optim

RAW_KERNELS = ("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
               "`pip install kernels` and the kernels >= 0.11.1")
RAW_PAGED = "Paged optimizers are not supported on CPU. Falling back to non-paged optimizer behavior."


def _line(notice: notices.Notice, detail: str = "") -> str:
    return "note: " + notice.line.format(detail=detail)


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[Any, ...]]]:
    """Notices installed afresh; yields the warnings that reached the previous ``showwarning``."""
    shown: list[tuple[Any, ...]] = []
    monkeypatch.setattr(warnings, "showwarning", lambda *args: shown.append(args))
    monkeypatch.setattr(notices, "_said", set())
    monkeypatch.setattr(notices, "_marker_dir", None)
    from transformers.utils import logging as hf_logging

    hook = hf_logging.set_tqdm_hook(None)
    hf_logging.set_tqdm_hook(hook)
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # every warn() reaches showwarning: the filter must not rely on dedup
        yield shown
    hf_logging.set_tqdm_hook(hook)
    for notice in notices.LOG_NOTICES:
        logger = logging.getLogger(notice.logger)
        for f in [f for f in logger.filters if isinstance(f, notices._LogNotices)]:
            logger.removeFilter(f)


def test_kernels_log_record_becomes_one_line(fresh: list, caplog: pytest.LogCaptureFixture) -> None:
    notices.install()
    bnb_log = logging.getLogger(notices.KERNELS.logger)
    with caplog.at_level(logging.INFO):
        for _ in range(2):
            bnb_log.warning(RAW_KERNELS, ModuleNotFoundError("No module named 'kernels'"))
        bnb_log.warning("some other bitsandbytes warning")
    said = [r.getMessage() for r in caplog.records]
    assert said == [_line(notices.KERNELS, "No module named 'kernels'"), "some other bitsandbytes warning"]
    record = logging.LogRecord(notices.KERNELS.logger, logging.WARNING, "ops.py", 253, RAW_KERNELS, ("x",), None)
    assert notices.match_record(record) is notices.KERNELS
    record.name = "someone.else"
    assert notices.match_record(record) is None


def test_paged_warning_becomes_one_line_and_others_pass(fresh: list, caplog: pytest.LogCaptureFixture) -> None:
    notices.install()
    with caplog.at_level(logging.INFO):
        for _ in range(2):
            warnings.warn(RAW_PAGED, UserWarning, stacklevel=1)
        warnings.warn("an unknown warning", UserWarning, stacklevel=1)
    assert [r.getMessage() for r in caplog.records] == [_line(notices.PAGED)]
    assert len(fresh) == 1 and str(fresh[0][0]) == "an unknown warning" and fresh[0][1] is UserWarning
    notices.install()  # a second job of the same process: still one wrapper, still said once
    warnings.warn(RAW_PAGED, UserWarning, stacklevel=1)
    assert len(caplog.records) == 1 and not isinstance(warnings.showwarning.previous, notices._ShowWarning)


def test_weight_loading_bar_is_hidden_and_other_bars_kept(fresh: list, caplog: pytest.LogCaptureFixture,
                                                          capsys: pytest.CaptureFixture) -> None:
    from transformers.utils import logging as hf_logging

    notices.install()
    made: list[dict[str, Any]] = []

    def factory(*args: Any, **kwargs: Any) -> list[Any]:
        made.append(kwargs)
        return list(args[0])

    hook = hf_logging.set_tqdm_hook(None)
    hf_logging.set_tqdm_hook(hook)
    with caplog.at_level(logging.INFO):
        assert hook(factory, (range(3),), {"desc": "Loading weights"}) == [0, 1, 2]
        hook(factory, (range(3),), {"desc": "Loading weights"})
        hook(factory, (range(2),), {"desc": "Downloading"})
    assert made == [{"desc": "Loading weights", "disable": True}] * 2 + [{"desc": "Downloading"}]
    assert [r.getMessage() for r in caplog.records] == [_line(notices.WEIGHT_BARS)]


def test_once_per_sweep_across_processes(fresh: list, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    """A parallel worker is another process: the marker in the sweep directory is what it shares."""
    notices.install(tmp_path)
    with caplog.at_level(logging.INFO):
        notices.say(notices.PAGED)
        notices._said.clear()  # as if in another worker of the same sweep
        notices.say(notices.PAGED)
        notices.install(tmp_path / "next-sweep")
        notices.say(notices.PAGED)
    assert [r.getMessage() for r in caplog.records] == [_line(notices.PAGED)] * 2
    assert (tmp_path / notices.MARKERS / notices.PAGED.key).exists()


def _has_kernels_notice() -> bool | None:
    """True where bitsandbytes logs its kernels notice (AVX512-BF16 CPU, no `kernels`), None if unsure."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if importlib.util.find_spec("kernels") is not None:
        return None  # installed: the notice depends on whether its hub download works
    return "avx512_bf16" in flags


def test_parallel_sweep_in_its_own_process(tiny_model_dir: Path, quotes_jsonl: Path, tmp_path: Path) -> None:
    """The real command, in its own process (bitsandbytes imported fresh), with two joblib workers
    and no thread count: each notice is said once for the sweep; each worker got half the cores;
    and a parallel trial has the bits of the same trial run alone with that thread count (before
    the harness pinned bitsandbytes' CPU 4-bit layout, whichever worker scored the base model
    first trained with broken gradients). One sweep for all three: each costs ~1 min of the suite."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    args = tiny_overrides(tiny_model_dir, quotes_jsonl, tmp_path, **{"train.max_steps": 2,
                                                                     "determinism.threads": "null"})
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "repeatability.run", "-m", "hydra/launcher=local_parallel",
                           "hydra.launcher.n_jobs=2", "study=noise", "trial=1,2", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    for raw in ("Failed to load CPU gemm_4bit_forward", "Paged optimizers are not supported", "Loading weights"):
        assert raw not in output, raw
    assert output.count(_line(notices.PAGED)) == 1, output
    assert output.count(_line(notices.WEIGHT_BARS)) == 1, output
    kernels = output.count("note: bitsandbytes: no kernels-community CPU gemm_4bit kernel")
    expected = _has_kernels_notice()
    assert kernels == expected if expected is not None else kernels <= 1, output
    for progress in ("run 1/2", "run 2/2", "step 2/2", "sweep finished: 2 runs (2 complete)"):
        assert progress in proc.stdout, progress  # the harness's own lines are untouched

    par = [tmp_path / "noise" / CELL / f"trial-0{t}" for t in (1, 2)]
    assert [artifacts.run_state(p) for p in par] == ["complete", "complete"]
    ledgers = list((tmp_path / "noise" / "_sweeps").glob("*/ledger.jsonl"))
    assert len(ledgers) == 1 and len(ledgers[0].read_text().splitlines()) == 2
    threads = set()
    for run in par:
        det = artifacts.read_summary(run)["determinism"]
        budget = det["thread_budget"]
        assert budget["parallel_jobs"] == 2 and budget["source"] == "joblib n_jobs=2"
        assert budget["threads"] == max(1, budget["cores"] // 2) == det["torch_num_threads"]
        threads.add(budget["threads"])
    [n] = threads
    alone = [a for a in args if not a.startswith("determinism.threads=")] + [f"determinism.threads={n}"]
    assert run_cli(["study=seq", "trial=1", *alone]) == 0
    seq = artifacts.read_summary(tmp_path / "seq" / CELL / "trial-01")["adapter"]["sha256"]
    assert artifacts.read_summary(par[0])["adapter"]["sha256"] == seq
    assert artifacts.read_summary(par[1])["adapter"]["sha256"] != seq
