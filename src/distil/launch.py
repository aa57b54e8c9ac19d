"""Multi-process runs: `python -m distil train|eval|report|predict --nproc_per_node N [--nnodes M ...]` relaunches
itself through OneFlow's own launcher (`python -m oneflow.distributed.launch`), once per node.

The original's variables map onto the flags in the bash scripts: GPU_NUM_PER_NODE (processes per node:
GPUs, or CPU processes when no GPU is visible), NUM_NODES, NODE_RANK, NODE_IPS (the first is the
master) and MASTER_PORT. Everything is checked here, before any process starts. Each process the
launcher starts is `python -m distil.launch`, which runs that rank's `python -m distil` and, if it
fails or is killed, says which rank it was; the launcher then stops the others within a second and
the job exits non-zero.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
from typing import IO

from distil import crash
from distil.errors import UsageError

LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")  # OneFlow's launcher sets them


def add_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("processes (data parallelism through python -m oneflow.distributed.launch)")
    group.add_argument(
        "--nproc_per_node",
        type=int,
        default=1,
        help="processes on this node (GPU_NUM_PER_NODE): one per GPU, or CPU processes without one",
    )
    group.add_argument("--nnodes", type=int, default=1, help="nodes (NUM_NODES)")
    group.add_argument("--node_rank", type=int, default=0, help="this node's rank, 0 .. nnodes-1 (NODE_RANK)")
    group.add_argument("--node_ips", default="", help="comma-separated node addresses, the master first (NODE_IPS)")
    group.add_argument("--master_port", type=int, default=29500, help="the master's free TCP port (MASTER_PORT)")


def launched() -> bool:
    """True in a process started by the launcher (OneFlow's import sets WORLD_SIZE=1 in any other)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    return int(os.environ["RANK"]) if launched() else 0


def wants_launch(args: argparse.Namespace) -> bool:
    """True in the first process of a multi-process run."""
    return hasattr(args, "nproc_per_node") and args.nproc_per_node * args.nnodes > 1 and not launched()


def _check(args: argparse.Namespace, probe_port: bool = True) -> str:
    """The master address, after checking every flag (and that the master's port is free, if `probe_port`)."""
    if args.nproc_per_node < 1 or args.nnodes < 1:
        raise UsageError(
            f"--nproc_per_node (GPU_NUM_PER_NODE) and --nnodes (NUM_NODES) must be at least 1, got "
            f"{args.nproc_per_node} and {args.nnodes}"
        )
    if not 0 <= args.node_rank < args.nnodes:
        raise UsageError(
            f"--node_rank (NODE_RANK) {args.node_rank} is outside [0, {args.nnodes}) for {args.nnodes} node(s)"
        )
    ips = [ip.strip() for ip in args.node_ips.split(",") if ip.strip()]
    if args.nnodes > 1 and len(ips) < args.nnodes:
        raise UsageError(
            f"--nnodes (NUM_NODES) {args.nnodes} needs --node_ips (NODE_IPS) with {args.nnodes} "
            f"addresses, the master first; got {ips or 'none'}"
        )
    repeated = sorted({ip for ip in ips if ips.count(ip) > 1})
    if repeated:
        raise UsageError(
            f"--node_ips (NODE_IPS) lists {', '.join(repeated)} more than once: OneFlow tells nodes apart "
            "by address, and two nodes on one address hang; for several processes on one machine use "
            "--nproc_per_node (GPU_NUM_PER_NODE)"
        )
    if not 0 < args.master_port < 65536:
        raise UsageError(f"--master_port (MASTER_PORT) {args.master_port} is not a TCP port")
    if getattr(args, "export_onnx", False):
        raise UsageError(
            "--export_onnx (EXPORT_ONNX) needs a one-process run; after this one, export with: "
            "python -m distil export-onnx MODEL_DIR"
        )
    if getattr(args, "teacher_cache", "auto") == "onnxruntime":
        raise UsageError(
            "--teacher_cache onnxruntime (TEACHER_CACHE) runs the teacher's pass in one process "
            "(onnxruntime uses every core itself); drop --nproc_per_node or use auto"
        )
    if getattr(args, "engine", "auto") == "onnxruntime":
        raise UsageError(
            "--engine onnxruntime runs in one process (onnxruntime uses every core itself); drop "
            "--nproc_per_node or use --engine oneflow"
        )
    if hasattr(args, "inputs") and (not args.inputs or "-" in args.inputs):
        raise UsageError(
            "predict with several processes reads INPUT files, not standard input (every process reads the whole input)"
        )
    from distil.train.placement import resolve_device

    device = resolve_device(getattr(args, "device", "auto"), bool(getattr(args, "use_fp16", False)))
    if device.startswith("cuda"):
        from distil.runtime import import_oneflow

        gpus = import_oneflow().cuda.device_count()
        if args.nproc_per_node > gpus:
            raise UsageError(
                f"--nproc_per_node (GPU_NUM_PER_NODE) {args.nproc_per_node} is more than the "
                f"{gpus} visible GPU(s); use --device cpu for CPU processes"
            )
    if args.node_rank == 0 and probe_port:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("", args.master_port))
            except OSError:
                raise UsageError(
                    f"--master_port (MASTER_PORT) {args.master_port} is in use on this machine; choose a free port"
                ) from None
    return ips[0] if ips else "127.0.0.1"


def launch(args: argparse.Namespace, argv: list[str], env: dict[str, str] | None = None) -> int:
    """Start this node's processes, each `python -m distil.launch <argv>` watching its rank's `python -m distil
    <argv>`; return the job's exit status. `env`: extra environment for them (a supervisor's)."""
    # on a restart the port may still be held by the killed job's sockets: not probed then
    master = _check(args, probe_port=crash.attempt(env or {}) == 0)
    # `python -m distil.crash`: the launcher dies with this process, and its ranks with it (no orphans)
    command = [
        sys.executable,
        "-m",
        "distil.crash",
        sys.executable,
        "-m",
        "oneflow.distributed.launch",
        "--nproc_per_node",
        str(args.nproc_per_node),
        "--nnodes",
        str(args.nnodes),
        "--node_rank",
        str(args.node_rank),
        "--master_addr",
        master,
        "--master_port",
        str(args.master_port),
        "-m",
        "distil.launch",
        *argv,
    ]
    launcher_env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    launcher_env.update(env or {})
    launcher_env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")  # (and prints no banner)
    # numpy's OpenBLAS, which runs OneFlow's matrix products (distil.blas): the node's cores shared among its processes
    launcher_env.setdefault("OPENBLAS_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc_per_node)))
    # its own session: when a rank fails, the launcher's killpg stops exactly its ranks; when this
    # process is stopped, it stops them too
    launcher = subprocess.Popen(command, env=launcher_env, start_new_session=True, stdout=subprocess.PIPE)

    def stop(signum, frame):
        os.killpg(launcher.pid, signal.SIGTERM)
        raise KeyboardInterrupt

    status = crash.wait_handling_signals(launcher, stop, lambda: _relay_stdout(launcher.stdout))
    if status:
        raise JobFailed(
            f"the {args.nproc_per_node * args.nnodes}-process job failed (exit status {status}); "
            "the failing rank's error is above, the other ranks were stopped"
        )
    return 0


_LAUNCHER_NOISE = re.compile(rb"Killing subprocess \d+\n")  # what OneFlow's launcher prints when a rank fails


def _relay_stdout(stream: IO[bytes]) -> None:
    """The ranks' standard output (rank 0's results, predictions) on ours, without the launcher's own lines."""
    for line in iter(stream.readline, b""):
        if not _LAUNCHER_NOISE.fullmatch(line):
            sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()
    stream.close()


class JobFailed(Exception):
    """A process of a multi-process job failed (its own message names its rank)."""


def finish_rank(status: int) -> None:
    """End of a launched rank's work: if it succeeded, wait for the other ranks; then silence fd 2.

    OneFlow 0.9 aborts a process whose peer closes its sockets first (`io_event_poller.cpp` "Check
    failed: !(cur_event->events & EPOLLERR)"), which happens when one rank exits while another is
    still alive, however briefly. The rank has reported its status to its watcher before this
    barrier (`crash.report_finished`), so a rank that dies after it has still finished its work;
    once any rank passes the barrier, every rank has. Its glog trace is then noise, so fd 2 is
    closed. A failed rank does not wait: the others may never come, and the launcher stops them.
    """
    if not launched():
        return
    if status == 0:
        from distil.train.placement import release_graphs

        release_graphs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)


MASTER_WAIT_SECONDS = 60.0


def _listening(port: int) -> bool:
    """Whether a TCP socket of this machine listens on `port` (read from /proc, without connecting to it)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                        return True
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    return False


def wait_for_local_master(timeout: float = MASTER_WAIT_SECONDS) -> None:
    """In a rank > 0 on the master's node, before its `python -m distil` starts: wait (at most `timeout` s) until
    the master's bootstrap server listens on MASTER_PORT.

    OneFlow 0.9 connects to that server as it is imported, and a rank that gets there before the master listens
    is refused and sleeps 10 s before it tries again (RpcClient::LoadServer). The launcher starts the ranks
    together, and rank 1 lost that race in 5 of 6 launches on a quiet 2-core machine (a 2-process eval: 14-16 s,
    5-7 s after the wait). Ranks on other nodes (RANK != LOCAL_RANK) cannot see the master's sockets: they keep
    OneFlow's own retry, as does a rank whose master never listens within `timeout`."""
    try:
        rank, local_rank, port = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "MASTER_PORT"))
    except (KeyError, ValueError):
        return
    if rank == 0 or rank != local_rank or not os.path.exists("/proc/net/tcp"):
        return
    deadline = time.monotonic() + timeout
    while not _listening(port) and time.monotonic() < deadline:
        time.sleep(0.01)


def watch_rank(command: list[str]) -> int:
    """One launched process: run this rank's `command` (`python -m distil ...`) watched (`crash.watch`), so that
    a rank that fails or is killed outright (out of memory, SIGKILL, SIGSEGV) is named; 0, or non-zero for the
    launcher. A rank on the master's node starts once the master listens (`wait_for_local_master`)."""
    wait_for_local_master()
    status = crash.watch(
        command, f"rank {os.environ.get('RANK')} of {os.environ.get('WORLD_SIZE')}", name_failures=True
    )
    return 1 if status < 0 else status


if __name__ == "__main__":
    crash.die_with_parent()  # the launcher's: when it is killed, this rank goes too
    sys.exit(watch_rank([sys.executable, "-m", "distil", *sys.argv[1:]]))
