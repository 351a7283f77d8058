"""Run claims (repeatability.launching.claims): create, refuse, take over stale ones, race-free (no training)."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from repeatability.launching import claims
from repeatability.records import artifacts

RUN = Path("study") / "tiny__tq__paged_adamw_8bit" / "trial-01"


def _forge(run: Path, **fields: object) -> claims.Holder:
    """Write a claim as another launcher would have (this host and process space unless told)."""
    holder = replace(claims._new_holder(), token="forged", **fields)
    artifacts.write_json(artifacts.claim_file(run), asdict(holder))
    return holder


def _ago(seconds: float) -> str:
    return (claims.utc_now() - dt.timedelta(seconds=seconds)).isoformat(timespec="seconds")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_claim_is_a_file_beside_the_run_and_is_removed_on_release(tmp_path: Path) -> None:
    run = tmp_path / RUN
    claim = claims.acquire(run, stale_after_s=600, heartbeat_s=30)
    file = run.parent / "trial-01.claim"
    assert artifacts.claim_file(run) == file and not run.exists()  # the run directory is not touched
    stored = json.loads(file.read_text())
    assert set(stored) == {"host", "pid", "pid_started", "process_space", "token", "started_at", "heartbeat",
                           "slurm_job", "launcher_pid"}
    assert (stored["host"], stored["pid"], stored["token"]) == (socket.gethostname(), os.getpid(), claim.holder.token)
    assert claims.read_claim(run) == claim.holder and claim.took_over is None and claim.held()
    with claim:
        assert file.exists()
    assert not file.exists() and claims.read_claim(run) is None
    assert {p.name for p in run.parent.iterdir()} == {".claims.lock"}  # the lock file stays (deleting it races)


def test_a_live_claim_is_refused_naming_host_and_pid(tmp_path: Path) -> None:
    run = tmp_path / RUN
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        holder = _forge(run, pid=live.pid, pid_started=claims._proc_stat(live.pid)[1])
        with pytest.raises(claims.ClaimHeld) as exc:
            claims.acquire(run, stale_after_s=600, heartbeat_s=30)
        assert str(exc.value) == f"{run} running elsewhere: {socket.gethostname()}/{live.pid}"
        assert exc.value.holder == holder and claims.read_claim(run) == holder  # left as it was
    finally:
        live.kill()
        live.wait()
    # the same claim once its process is gone: taken over
    claim = claims.acquire(run, stale_after_s=600, heartbeat_s=30)
    assert claim.took_over == (holder, f"pid {live.pid} is no longer running on this host")


def test_a_dead_pid_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    run = tmp_path / RUN
    pid = _dead_pid()
    stale = _forge(run, pid=pid, pid_started=None, heartbeat=_ago(1))  # fresh heartbeat: the pid decides
    claim = claims.acquire(run, stale_after_s=600, heartbeat_s=30)
    assert claim.took_over == (stale, f"pid {pid} is no longer running on this host")
    assert claims.read_claim(run) == claim.holder and claim.holder.token != "forged"


def test_a_reused_pid_is_not_the_claiming_process(tmp_path: Path) -> None:
    run = tmp_path / RUN
    _forge(run, pid=os.getpid(), pid_started="1")  # our pid, but a process started at another time
    assert claims.acquire(run, stale_after_s=600, heartbeat_s=30).took_over is not None


def test_other_hosts_are_judged_by_heartbeat_age(tmp_path: Path) -> None:
    run = tmp_path / RUN
    recent = _forge(run, host="node-17", pid=1, heartbeat=_ago(100))
    with pytest.raises(claims.ClaimHeld, match="running elsewhere: node-17/1$"):
        claims.acquire(run, stale_after_s=600, heartbeat_s=30)
    assert claims.read_claim(run) == recent
    old = _forge(run, host="node-17", pid=1, heartbeat=_ago(900))
    claim = claims.acquire(run, stale_after_s=600, heartbeat_s=30)
    assert claim.took_over is not None and claim.took_over[0] == old
    assert claim.took_over[1].startswith("last heartbeat 9") and "over claim_stale_after_s=600" in claim.took_over[1]
    # same host name but another pid namespace (a container): pids cannot be compared, heartbeat decides
    _forge(run, pid=_dead_pid(), process_space="other-boot:1", heartbeat=_ago(5))
    with pytest.raises(claims.ClaimHeld):
        claims.acquire(run, stale_after_s=600, heartbeat_s=30)


def test_a_requeued_slurm_job_takes_its_earlier_attempts_claim_over(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed on node-3 and requeued here: the fresh heartbeat of attempt 0 does not block attempt 1."""
    run = tmp_path / RUN
    monkeypatch.setenv("SLURM_JOB_ID", "4711")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    earlier = _forge(run, host="node-3", pid=1, heartbeat=_ago(5), slurm_job="4711.0")
    claim = claims.acquire(run, stale_after_s=600, heartbeat_s=30)
    assert claim.took_over == (earlier, "SLURM job 4711 was requeued: its attempt 4711.0 is over")
    assert claims.read_claim(run).slurm_job == "4711.1"
    claim.release()
    # another SLURM job's live claim (or one without a job id) is still judged by its heartbeat
    for other in ("4712.0", None):
        _forge(run, host="node-3", pid=1, heartbeat=_ago(5), slurm_job=other)
        with pytest.raises(claims.ClaimHeld):
            claims.acquire(run, stale_after_s=600, heartbeat_s=30)


def test_a_claim_written_before_slurm_job_existed_still_reads(tmp_path: Path) -> None:
    run = tmp_path / RUN
    old = {k: v for k, v in asdict(replace(claims._new_holder(), pid=_dead_pid())).items() if k != "slurm_job"}
    artifacts.write_json(artifacts.claim_file(run), old)
    assert claims.read_claim(run) == claims.Holder(**old)


def test_an_unreadable_claim_is_taken_over(tmp_path: Path) -> None:
    run = tmp_path / RUN
    run.parent.mkdir(parents=True)
    artifacts.claim_file(run).write_text("{half a cla")
    claim = claims.acquire(run, stale_after_s=600, heartbeat_s=30)
    assert claim.took_over is not None and claim.took_over[0].host == "?"


def test_only_one_of_many_concurrent_takeovers_wins(tmp_path: Path) -> None:
    run = tmp_path / RUN
    _forge(run, host="node-17", heartbeat=_ago(3600))
    barrier, won, refused = threading.Barrier(8), [], []

    def take() -> None:
        barrier.wait()
        try:
            won.append(claims.acquire(run, stale_after_s=600, heartbeat_s=30))
        except claims.ClaimHeld as exc:
            refused.append(exc.holder.token)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # every thread is this process, so the winner's claim is live for the 7 others
    assert len(won) == 1 and len(refused) == 7 and set(refused) == {won[0].holder.token}
    assert claims.read_claim(run) == won[0].holder


def test_heartbeat_advances_while_held_and_stops_when_taken_over(tmp_path: Path) -> None:
    run = tmp_path / RUN
    with claims.acquire(run, stale_after_s=600, heartbeat_s=0.05) as claim:
        artifacts.write_json(artifacts.claim_file(run), asdict(claim.holder) | {"heartbeat": _ago(500)})
        time.sleep(0.3)
        beat = dt.datetime.fromisoformat(claims.read_claim(run).heartbeat)
        assert (claims.utc_now() - beat).total_seconds() < 5
        thief = _forge(run, host="node-17", heartbeat=_ago(0))  # as if another launcher took it over
        time.sleep(0.3)
        assert claims.read_claim(run) == thief  # no heartbeat overwrote it
        assert not claim.held()
        with pytest.raises(claims.ClaimLost, match="taken over by node-17/"):
            claim.check()
    assert claims.read_claim(run) == thief  # release leaves another launcher's claim alone


def test_stale_reason_needs_the_timeout_exceeded(tmp_path: Path) -> None:
    holder = replace(claims._new_holder(), host="node-17", heartbeat="2026-01-01T00:00:00+00:00")
    at = dt.datetime(2026, 1, 1, 0, 10, tzinfo=dt.timezone.utc)
    assert claims.stale_reason(holder, 600, at) is None  # exactly 600 s: still live
    assert claims.stale_reason(holder, 599, at) == "last heartbeat 600 s ago, over claim_stale_after_s=599"
