"""Library notices a run prints every time, each turned into one harness line, once per sweep.

Every CPU run used to print the same library notices: bitsandbytes' kernels-community
``gemm_4bit_forward`` log line, its "Paged optimizers are not supported on CPU" warning, and
transformers' per-load "Loading weights" tqdm bar. Their facts are in each run's summary, so
here each known notice becomes one ``note:`` line in the harness's own words, said once per
sweep (a marker file per notice in the sweep directory, so parallel workers say it once too).

Only known notices are touched, each through the machinery that emits it: a ``logging.Filter``
on the emitting logger, a ``warnings.showwarning`` wrapper, transformers' tqdm hook. Anything
else passes through unchanged; stderr is never redirected.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("repeatability")

MARKERS = ".notices"  # in the sweep directory: one empty file per notice already said


@dataclass(frozen=True)
class Notice:
    """A known library notice: what identifies it and the line said instead."""

    key: str  # marker file name
    pattern: str  # regex searched in the library's message
    line: str  # the harness line; ``{detail}`` is the library's first argument, when it has one
    logger: str | None = None  # the emitting logger (None: a Python warning)


KERNELS = Notice(
    key="bnb_cpu_kernels",
    logger="bitsandbytes.backends.cpu.ops",  # logged once, when bitsandbytes is imported on an AVX512-BF16 CPU
    pattern=r"Failed to load CPU gemm_4bit_forward from kernels-community",
    line="bitsandbytes: no kernels-community CPU gemm_4bit kernel ({detail}); not needed: 4-bit layers keep "
         "bitsandbytes' own dequantize path (summary.device.bnb_cpu_inference_repack)",
)
PAGED = Notice(
    key="bnb_paged_cpu",
    pattern=r"Paged optimizers are not supported on CPU",
    line="bitsandbytes: paged optimizers fall back to unpaged state on CPU "
         "(recorded in summary.optimizer.effective.paging_effective)",
)
WEIGHT_BARS = Notice(
    key="hf_loading_weights",
    pattern=r"^Loading weights$",  # the bar's desc, one bar per from_pretrained
    line="transformers: weight-loading progress bars hidden (load time in summary.timings.model_load_s)",
)
LOG_NOTICES = (KERNELS,)
WARNING_NOTICES = (PAGED,)

# harmless and said nowhere: transformers 5 renamed gradient checkpointing, peft still calls the old name
_SILENCED = ((r".*is_gradient_checkpointing.*", FutureWarning),)

_said: set[str] = set()  # without a sweep directory: once per process
_marker_dir: Path | None = None


def install(sweep_dir: Path | None = None) -> None:
    """Turn the known notices into harness lines from now on in this process (idempotent).

    Call it where each job starts (joblib workers are fresh processes) and before bitsandbytes
    is imported, which is when its kernels notice is logged. ``sweep_dir``: where the markers
    that make a notice once-per-sweep live; None for once per process.
    """
    global _marker_dir
    _marker_dir = sweep_dir / MARKERS if sweep_dir is not None else None
    for notice in LOG_NOTICES:
        logger = logging.getLogger(notice.logger)
        if not any(isinstance(f, _LogNotices) for f in logger.filters):
            logger.addFilter(_LogNotices())
    if not isinstance(warnings.showwarning, _ShowWarning):
        warnings.showwarning = _ShowWarning(warnings.showwarning)  # type: ignore[assignment]
    for message, category in _SILENCED:
        warnings.filterwarnings("ignore", message=message, category=category)
    _hide_weight_bars()


def say(notice: Notice, detail: str = "") -> None:
    """Log the notice's line unless this sweep (or process) said it already."""
    if _first_time(notice.key):
        log.info("note: %s", notice.line.format(detail=detail or "unavailable"))


def _first_time(key: str) -> bool:
    if _marker_dir is not None:
        try:
            _marker_dir.mkdir(parents=True, exist_ok=True)
            os.close(os.open(_marker_dir / key, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            return False
        except OSError:  # an unwritable sweep directory: fall back to once per process
            pass
    if key in _said:
        return False
    _said.add(key)
    return True


def match_record(record: logging.LogRecord) -> Notice | None:
    """The known notice this log record is, if any."""
    for notice in LOG_NOTICES:
        if record.name == notice.logger and re.search(notice.pattern, str(record.msg)):
            return notice
    return None


def match_warning(message: Warning | str, category: type[Warning]) -> Notice | None:
    """The known notice this warning is, if any."""
    text = str(message)
    return next((n for n in WARNING_NOTICES if issubclass(category, UserWarning) and re.search(n.pattern, text)), None)


class _LogNotices(logging.Filter):
    """Drops a known record from its library's logger and says the harness line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        notice = match_record(record)
        if notice is None:
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        say(notice, str(args[0]) if args else "")
        return False


class _ShowWarning:
    """``warnings.showwarning`` that says a known warning's harness line and shows any other as before."""

    def __init__(self, previous: Callable[..., Any]) -> None:
        self.previous = previous

    def __call__(self, message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
        notice = match_warning(message, category)
        if notice is None:
            self.previous(message, category, filename, lineno, file, line)
        else:
            say(notice)


class _WeightBars:
    """transformers' tqdm hook: the weight-loading bar is created disabled; other bars as before."""

    def __init__(self, previous: Callable[..., Any] | None) -> None:
        self.previous = previous

    def __call__(self, factory: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if re.search(WEIGHT_BARS.pattern, str(kwargs.get("desc", ""))):
            say(WEIGHT_BARS)
            return factory(*args, **{**kwargs, "disable": True})
        if self.previous is not None:
            return self.previous(factory, args, kwargs)
        return factory(*args, **kwargs)


def _hide_weight_bars() -> None:
    """Only the weight-loading bars: hub download bars (minutes on a GPU machine) keep theirs."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    set_hook = getattr(hf_logging, "set_tqdm_hook", None)
    if set_hook is None:  # transformers without the hook (< 5): no bars at all rather than one per load
        hf_logging.disable_progress_bar()
        return
    previous = set_hook(None)
    set_hook(previous if isinstance(previous, _WeightBars) else _WeightBars(previous))
