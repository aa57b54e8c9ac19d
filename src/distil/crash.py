"""When a process dies: its signal named, its Python stacks kept, and a training job restarted.

OneFlow 0.9 sometimes kills a process with SIGSEGV (bench/README.md, "Crashes"), and a machine can kill one
for its memory. Every `python -m distil` process therefore enables `faulthandler`, which writes every Python
thread's stack when a fatal signal arrives. A *watched* process — the training process under its supervisor,
each rank under `python -m distil.launch` — writes them into a folder its watcher made; when it dies from a
signal, the watcher prints "error: <who> (pid, host) died from SIGSEGV" and the stacks on stderr, appends
both to `<model_dir>/crash.log`, and records the death for the supervisor.

`supervise` runs a training job as `torchrun --max-restarts` does: when a process of the job died from a
signal (not from a usage error, a Python exception, or SIGINT/SIGTERM/SIGHUP, which ask it to stop), the
whole job starts again and resumes from its last saved `train_state/`, at most `max_restarts` times.
"""

from __future__ import annotations

import ctypes
import dataclasses
import faulthandler
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from distil.fileio import write_json_atomic

log = logging.getLogger(__name__)

WATCH_DIR = "DISTIL_WATCH_DIR"  # set for a watched process: the folder where it reports to its watcher
WATCHER_PID = "DISTIL_WATCHER_PID"  # its watcher, whose death ends it too
JOB_DIR = "DISTIL_JOB_DIR"  # set by a supervisor: where each watcher records a death
ATTEMPT = "DISTIL_ATTEMPT"  # set by a supervisor: 0 on the first attempt, k after k restarts
FAULTS_FILE, RUN_FILE, FINISHED_FILE = "faults.log", "run.json", "finished"
CRASH_LOG = "crash.log"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # a request to stop: never restarted
_PR_SET_PDEATHSIG = 1

_fault_file = None  # kept open for faulthandler, which writes to its descriptor when the process dies


def _watch_dir() -> Path | None:
    folder = os.environ.get(WATCH_DIR)
    return Path(folder) if folder else None


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def die_with_parent(parent: int | None = None) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (a killed supervisor leaves no orphans);
    exit at once if `parent` is already gone."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return  # not Linux: orphans are possible, nothing else changes
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def enable_fault_reports() -> None:
    """Fatal signals print every Python thread's stack: into the watcher's folder when this process is
    watched (the watcher shows them and keeps them in crash.log), else on stderr. Call first thing."""
    global _fault_file
    folder = _watch_dir()
    if folder is None:
        faulthandler.enable(sys.stderr, all_threads=True)
        return
    die_with_parent(int(os.environ.get(WATCHER_PID, "0")) or None)
    _fault_file = open(folder / FAULTS_FILE, "a", encoding="utf-8")
    faulthandler.enable(_fault_file, all_threads=True)


def note_run(model_dir: Path, state_dir: Path) -> None:
    """Tell this process's watcher where its crash.log goes (the run's model directory) and where the stage
    it trains saves its train_state/ (the same folder, or a nested one for a first stage)."""
    folder = _watch_dir()
    if folder is not None:
        write_json_atomic(
            folder / RUN_FILE,
            {"model_dir": str(Path(model_dir).resolve()), "state_dir": str(Path(state_dir).resolve())},
        )


def report_finished(status: int) -> None:
    """Tell the watcher this process has finished its work with `status`: a crash after this point (OneFlow's
    teardown) does not change the verdict."""
    folder = _watch_dir()
    if folder is not None:
        (folder / FINISHED_FILE).write_text(str(status), encoding="utf-8")


def attempt(env: Mapping[str, str] = os.environ) -> int:
    """0 in the first attempt of a supervised job (or outside one), k after k restarts (`env`: a process's
    environment, this one's by default)."""
    return int(env.get(ATTEMPT, "0") or 0)


def supervised() -> bool:
    """True in a process a supervisor started (directly, or as a rank of its launcher)."""
    return ATTEMPT in os.environ


# ---------------------------------------------------------------- the watcher


@dataclasses.dataclass
class Death:
    """How a watched process ended, when it failed: its exit status, or the signal that killed it."""

    who: str
    pid: int
    status: int  # exit status; -N: killed by signal N
    time: float
    model_dir: str | None = None  # a training run's (crash.log) and its stage's (train_state/)
    state_dir: str | None = None

    @property
    def signal(self) -> int | None:
        return -self.status if self.status < 0 else None

    def describe(self) -> str:
        if self.signal is None:
            return f"{self.who} failed with exit status {self.status}"
        return f"{self.who} died from {signal_name(self.signal)}"


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _crash_report(death: Death, stacks: str, attempt_number: int) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(death.time))
    body = stacks.strip() or (
        f"(no Python stack: {signal_name(death.signal)} cannot be caught)"
        if death.signal == signal.SIGKILL
        else "(no Python stack was written)"
    )
    return (
        f"=== {when} {death.who} (pid {death.pid} on {socket.gethostname()}) died from "
        f"{signal_name(death.signal)} (attempt {attempt_number + 1}) ===\n{body}\n"
    )


def _report_death(death: Death, stacks: str, attempt_number: int) -> None:
    """The death and its stacks on stderr, and appended to the model directory's crash.log when there is one."""
    report = _crash_report(death, stacks, attempt_number)
    where = ""
    if death.model_dir and Path(death.model_dir).is_dir():
        with open(Path(death.model_dir) / CRASH_LOG, "a", encoding="utf-8") as f:
            f.write(report)
        where = f"; its Python stacks are in {Path(death.model_dir) / CRASH_LOG}"
    sys.stderr.write(report)
    sys.stderr.write(f"error: {death.describe()} (pid {death.pid} on {socket.gethostname()}){where}\n")
    sys.stderr.flush()


def _record(death: Death, job_dir: str | None) -> None:
    """Leave the death where the supervisor looks (none: nothing to do)."""
    if job_dir and Path(job_dir).is_dir():
        write_json_atomic(Path(job_dir) / f"death-{death.pid}.json", dataclasses.asdict(death))


def wait_handling_signals(
    process: subprocess.Popen, handler: Callable, meanwhile: Callable[[], None] = lambda: None
) -> int:
    """`process`'s exit status, after `meanwhile()`; SIGTERM, SIGINT and SIGHUP go to `handler` until then, and
    back to what they were after."""
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        meanwhile()
        return process.wait()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _finished(folder: Path) -> tuple | None:
    """(status, when) that a watched process reported with :func:`report_finished`, if it got that far."""
    path = folder / FINISHED_FILE
    text = _read(path)
    if text is None or not text.strip().lstrip("-").isdigit():
        return None
    return int(text), path.stat().st_mtime


def watch(command: list[str], who: str, env: dict[str, str] | None = None, name_failures: bool = False) -> int:
    """Run `command` (a `python -m distil ...`) as a watched process and return its exit status (negative: the
    signal that killed it, unless it had reported its work finished before).

    A failure is recorded for the job's supervisor, and a signal death also reported (stderr, crash.log), as is
    any other failure with `name_failures` (the rank of a job); a stop this process was asked for (SIGTERM,
    SIGINT, SIGHUP, forwarded to the child) is neither. A failure's
    time is when the process reported it (before it exited), else when it was seen: the supervisor's
    "first failure" is then the cause, not a peer that died of it.
    """
    env = dict(env if env is not None else os.environ)
    folder = Path(tempfile.mkdtemp(prefix="distil-watch-"))
    try:
        child = subprocess.Popen(
            command, env=dict(env, PYTHONUNBUFFERED="1", **{WATCH_DIR: str(folder), WATCHER_PID: str(os.getpid())})
        )
        stopped: list[int] = []

        def forward(signum, frame):
            stopped.append(signum)
            child.send_signal(signum)

        status = wait_handling_signals(child, forward)
        seen = time.time()
        finished = _finished(folder)
        if status < 0 and finished is not None:
            status = finished[0]  # died in teardown, after its work was done
        if status == 0 or stopped:
            return status
        run = json.loads(_read(folder / RUN_FILE) or "{}")
        death = Death(who, child.pid, status, finished[1] if finished else seen, **run)
        if death.signal in STOP_SIGNALS:
            sys.stderr.write(f"{who} (pid {child.pid}) was stopped by {signal_name(death.signal)}\n")
        elif death.signal is not None:
            _report_death(death, _read(folder / FAULTS_FILE) or "", attempt(env))
        elif name_failures:
            sys.stderr.write(f"error: {death.describe()} (pid {child.pid} on {socket.gethostname()})\n")
        _record(death, env.get(JOB_DIR))
        return status
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------- the supervisor


def _deaths(job_dir: Path) -> list[Death]:
    deaths = []
    for path in job_dir.glob("death-*.json"):
        try:
            deaths.append(Death(**json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, TypeError):
            continue
    return sorted(deaths, key=lambda d: d.time)


def _resume_step(state_dir: str | None) -> str:
    """Where a restarted run goes on: the step of its last saved train_state/."""
    if not state_dir:
        return "its last saved state"
    try:
        return (
            f"step {json.loads((Path(state_dir) / 'train_state' / 'state.json').read_text(encoding='utf-8'))['step']}"
        )
    except (OSError, ValueError, KeyError):
        return "step 0 (nothing saved yet)"


def supervise(run_attempt: Callable[[dict[str, str]], int], max_restarts: int) -> int:
    """Run a job (`run_attempt(extra environment)` -> exit status) and start it again, up to `max_restarts`
    times, whenever the first of its processes to fail died from a signal other than a stop request.

    Returns the exit status of the last attempt (1 when its process died from a signal).
    """
    job_dir = Path(tempfile.mkdtemp(prefix="distil-job-"))
    try:
        for number in range(max_restarts + 1):
            for old in job_dir.iterdir():
                old.unlink()
            status = run_attempt({JOB_DIR: str(job_dir), ATTEMPT: str(number)})
            deaths = _deaths(job_dir)
            if status == 0 or not deaths:
                return status
            first = deaths[0]
            if first.signal is None or first.signal in STOP_SIGNALS:
                return status if status > 0 else 1
            if number == max_restarts:
                log.error(
                    "%s; not restarting (--max_restarts %d %s)",
                    first.describe(),
                    max_restarts,
                    "turns restarts off" if max_restarts == 0 else "reached",
                )
                return 1
            log.warning(
                "restart %d of %d: %s; the job starts again and resumes from %s",
                number + 1,
                max_restarts,
                first.describe(),
                _resume_step(first.state_dir),
            )
        return 1
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)


if __name__ == "__main__":  # `python -m distil.crash CMD ...`: run CMD so that it dies with this process's parent
    die_with_parent()
    os.execvp(sys.argv[1], sys.argv[1:])
