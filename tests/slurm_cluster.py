"""A real single-node SLURM cluster on this machine, for the ``slurm`` test tier.

Writes its own ``slurm.conf`` and munge key into a private folder (nothing under /etc is
touched), starts munged, slurmctld and slurmd as root on free ports, waits for the node to be
idle, and stops the daemons by pid. Needs root and Debian's ``slurmctld slurmd slurm-client
munge`` (the Makefile installs them when root and missing: ``make slurm-packages``).

Without slurmdbd, ``sacct`` answers "accounting storage is disabled", and submitit, which asks
``sacct`` for job states, then sees every job as UNKNOWN and waits forever for a cancelled one.
``tests/slurm/sacct`` stands in for it, answering from ``squeue -t all`` (finished jobs stay
listed for ``MinJobAge``); :meth:`LocalSlurm.env` puts it first on PATH.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
PACKAGES = "slurmctld slurmd slurm-client munge"
SACCT_STANDIN = Path(__file__).resolve().parent / "slurm" / "sacct"


def missing() -> str | None:
    """Why this machine cannot run the tier (None when it can)."""
    if os.geteuid() != 0:
        return "the slurm tier runs the daemons as root; this is not root"
    absent = [d for d in (*DAEMONS, "sbatch", "squeue", "scontrol", "scancel", "sinfo") if shutil.which(d) is None
              and not Path("/usr/sbin", d).exists()]
    if absent:
        return f"{', '.join(absent)} not installed (apt-get install --no-install-recommends {PACKAGES})"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _node_facts() -> dict[str, str]:
    """``slurmd -C``: the node's CPUs, sockets, cores and RealMemory as slurmd itself sees them."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    first = out.splitlines()[0]
    return dict(kv.split("=", 1) for kv in first.split())


@dataclass
class LocalSlurm:
    """One cluster: ``start()``, use ``env()`` for clients, ``stop()``."""

    root: Path
    node: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    facts: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    @property
    def cpus(self) -> int:
        return int(self.facts["CPUs"])

    @property
    def memory_mb(self) -> int:
        return int(self.facts["RealMemory"])

    def env(self) -> dict[str, str]:
        """Environment for clients (and the jobs they submit, which inherit it)."""
        standin = self.root / "bin"
        return {"SLURM_CONF": str(self.conf), "PATH": f"{standin}:{os.environ.get('PATH', '')}"}

    def write_config(self) -> None:
        self.facts = _node_facts()
        for sub in ("munge", "state", "spool", "log", "bin"):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        (self.root / "bin" / "sacct").symlink_to(SACCT_STANDIN)
        f = self.facts
        node = (f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={f['CPUs']} Boards={f.get('Boards', 1)} "
                f"SocketsPerBoard={f['SocketsPerBoard']} CoresPerSocket={f['CoresPerSocket']} "
                f"ThreadsPerCore={f['ThreadsPerCore']} RealMemory={f['RealMemory']} State=UNKNOWN")
        lines = [
            "ClusterName=repeatability-test",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
            "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge", "CredType=cred/munge",
            # cred_expire: also how long a requeued job waits before it may start again (default 120 s)
            f"AuthInfo=socket={self.munge_socket},cred_expire=20",
            f"StateSaveLocation={self.root / 'state'}", f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}", f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none",
            "AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none",
            "SchedulerType=sched/backfill", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory",
            # a request no node can satisfy is refused at submission, never left pending
            "EnforcePartLimits=ALL",
            f"DefMemPerCPU={max(256, int(f['RealMemory']) // max(1, int(f['CPUs'])) // 2)}",
            "ReturnToService=2", "JobRequeue=1", "MinJobAge=3600", "KillWait=10",
            # SlurmdTimeout: longer than the stopped-controller test pauses slurmctld (a controller that
            # continues after more than this finds its node not responding and sets it DOWN at once)
            "SlurmctldTimeout=30", "SlurmdTimeout=300", "InactiveLimit=0", "Waittime=0",
            node,
            f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout_s: float = 60) -> None:
        self.write_config()
        env = {**os.environ, **self.env()}
        munge = self.root / "munge"
        subprocess.run(["munged", "--force", f"--socket={self.munge_socket}", f"--key-file={munge / 'munge.key'}",
                        f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
                        f"--seed-file={munge / 'munged.seed'}"], check=True, env=env)
        self.pids["munged"] = int((munge / "munged.pid").read_text())
        # -i: ignore state of an earlier cluster; both daemonize and write their pid files
        subprocess.run(["slurmctld", "-i", "-f", str(self.conf)], check=True, env=env)
        self.pids["slurmctld"] = self._wait_pid(self.root / "slurmctld.pid", timeout_s)
        subprocess.run(["slurmd", "-f", str(self.conf)], check=True, env=env)
        self.pids["slurmd"] = self._wait_pid(self.root / "slurmd.pid", timeout_s)
        self._wait_idle(env, timeout_s)

    def _wait_pid(self, pidfile: Path, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if pidfile.exists() and pidfile.read_text().strip():
                return int(pidfile.read_text())
            time.sleep(0.1)
        raise RuntimeError(f"{pidfile.name} not written in {timeout_s:.0f} s; see {self.root / 'log'}")

    def _wait_idle(self, env: dict[str, str], timeout_s: float) -> None:
        deadline, state = time.monotonic() + timeout_s, ""
        while time.monotonic() < deadline:
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, env=env,
                                 check=False)
            state = out.stdout.strip()
            if state == "idle":
                return
            time.sleep(0.3)
        raise RuntimeError(f"node not idle after {timeout_s:.0f} s (state {state!r}); see {self.root / 'log'}")

    def pause_controller(self) -> None:
        """Freeze slurmctld (SIGSTOP): a controller that stops answering. Clients (squeue, sbatch)
        then hang until their MessageTimeout; jobs already running go on."""
        os.kill(self.pids["slurmctld"], signal.SIGSTOP)

    def resume_controller(self) -> None:
        """Let a paused slurmctld go on (SIGCONT; harmless when it is not paused)."""
        os.kill(self.pids["slurmctld"], signal.SIGCONT)

    def stop(self) -> None:
        """Stop the daemons by pid (slurmd first), waiting for each to be gone."""
        for name in reversed(DAEMONS):
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGCONT)  # a paused daemon would take SIGTERM only once continued
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of both SLURM logs (for failure messages)."""
        parts = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.root / "log" / name
            if path.exists():
                parts.append(f"--- {name}\n" + "\n".join(path.read_text().splitlines()[-lines:]))
        return "\n".join(parts)
