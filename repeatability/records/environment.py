"""The environment a run happened in, and its peak memory."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from repeatability.records import lock

if TYPE_CHECKING:  # typing.Self from Python 3.11
    from typing_extensions import Self

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "hydra-core",
            "numpy", "tokenizers", "gguf")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_has_bf16() -> bool:
    """True when the CPU has bf16 units (AVX512-BF16 or AMX); emulated bf16 is ~65x slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def _cuda() -> dict[str, Any]:
    info: dict[str, Any] = {"available": torch.cuda.is_available(), "version": torch.version.cuda}
    if info["available"]:
        props = torch.cuda.get_device_properties(0)
        info.update(device_name=props.name, device_count=torch.cuda.device_count(),
                    device_total_mb=props.total_memory / 2**20)
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10, check=False)
            info["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError, IndexError):
            info["driver"] = None
    return info


def capture_environment() -> dict[str, Any]:
    """Versions, hardware and the project commit; cheap (no model)."""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "packages": {name: _version(name) for name in PACKAGES},
        "cuda": _cuda(),
        "cpu": {"model": cpu_model(), "cores": os.cpu_count(), "bf16_units": cpu_has_bf16()},
        "torch_num_threads": torch.get_num_threads(),
        "git": _git(),
        "lock": lock.check().to_dict(),
    }


class PeakMemory:
    """Peak memory of this run: sampled RSS on CPU; max allocated on CUDA (the paper's Table 3).

    ``ru_maxrss`` alone would carry the peak of earlier runs in the same process (Hydra's basic
    launcher runs every job in one process), so RSS is sampled in a thread during the run.
    """

    def __init__(self, device: str, interval_s: float = 0.25):
        import psutil

        self.device, self.interval = device, interval_s
        self.process = psutil.Process()
        self.peak_rss = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)

    def __enter__(self) -> Self:
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "peak_rss_mb": self.peak_rss / 2**20,
            "process_max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        if self.device == "cuda":
            total = torch.cuda.get_device_properties(0).total_memory
            peak = torch.cuda.max_memory_allocated()
            out.update(max_allocated_mb=peak / 2**20, device_total_mb=total / 2**20,
                       max_allocated_pct=100.0 * peak / total)
        return out
