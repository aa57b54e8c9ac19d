"""Data parallelism on OneFlow's own launcher: N CPU processes on this machine, started by
`python -m distil ... --nproc_per_node 2` (python -m oneflow.distributed.launch), on free ports."""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import conftest
from conftest import PYTHON, free_port
from distil import launch
from distil.data import ofrecord
from distil.fileio import file_sha256
from distil.launch import LAUNCHER_VARIABLES
from distil.runtime import import_oneflow
from glue_fixtures import write_tiny_teacher_workspace

flow = import_oneflow()
pytestmark = pytest.mark.slow


def run(cmd, timeout: float = 900):
    return conftest.run(cmd, timeout=timeout)


@pytest.fixture(scope="module")
def ws(tmp_path_factory, vocab_file) -> Path:
    """64 training and 19 dev examples (seq 32) and a tiny pretrained BERT without dropout (so runs can match)."""
    return write_tiny_teacher_workspace(tmp_path_factory.mktemp("distributed"), vocab_file)


def interleaved_copy(split: Path, dst: Path, ranks: int, per_rank: int) -> None:
    """The records in the order N ranks reading shards r, r+N, ... (per_rank rows each) put in one global batch."""
    meta = ofrecord.read_meta(split)
    bodies = [b for part in meta["parts"] for b in ofrecord.iter_frames(split / part["name"])]
    shards = [bodies[r::ranks] for r in range(ranks)]
    order = [
        row
        for t in range(len(shards[0]) // per_rank)
        for shard in shards
        for row in shard[t * per_rank : (t + 1) * per_rank]
    ]
    dst.mkdir(parents=True)
    with open(dst / ofrecord.part_name(0), "wb") as f:
        for body in order:
            f.write(ofrecord.frame(body))
    part = dst / ofrecord.part_name(0)
    meta.update(
        num_examples=len(order),
        parts=[{"name": part.name, "records": len(order), "bytes": part.stat().st_size, "sha256": file_sha256(part)}],
    )
    (dst / ofrecord.META_FILE).write_text(json.dumps(meta))


def train_command(ws: Path, data_root: Path, out: Path, batch: int, *extra: str) -> list[str]:
    """`python -m distil train` of the tiny teacher, one epoch in file order, logging every step."""
    return [
        PYTHON,
        "-m",
        "distil",
        "train",
        "--algorithm",
        "teacher",
        "--pretrained_model",
        str(ws / "pretrained"),
        "--data_root",
        str(data_root),
        "--model_save_dir",
        str(out),
        "--epochs",
        "1",
        "--batch_size",
        str(batch),
        "--eval_batch_size",
        "4",
        "--learning_rate",
        "1e-3",
        "--weight_decay",
        "0.01",
        "--shuffle",
        "false",
        "--log_every",
        "1",
        "--device",
        "cpu",
        *extra,
    ]


def train(ws: Path, data_root: Path, out: Path, batch: int, *extra: str):
    return run(train_command(ws, data_root, out, batch, *extra), timeout=900)


@pytest.fixture(scope="module")
def two_processes(ws, tmp_path_factory):
    """The teacher trained by 2 processes on one node, 8 examples each per step, as 2 micro-batches of 4."""
    out = tmp_path_factory.mktemp("two") / "model"
    two = train(
        ws, ws / "data", out, 8, "--nproc_per_node", "2", "--master_port", str(free_port()), "--micro_batch_size", "4"
    )
    assert two.returncode == 0, two.stderr[-3000:]
    return out, two


def max_relative_difference(a: dict, b: dict) -> float:
    # attention key biases have an exact gradient of 0: AdamW turns float noise into full-size steps there
    return max(
        float(np.abs(a[k].numpy() - b[k].numpy()).max() / (np.abs(a[k].numpy()).max() + 1e-12))
        for k in a
        if not k.endswith("attention.self.key.bias")
    )


def test_two_processes_train_the_same_weights_as_one_with_the_same_global_batch(ws, tmp_path):
    """At the full length (--length_buckets off: with buckets each rank regroups its own rows, which one
    process reading the same global batches does not)."""
    two_dir = tmp_path / "two"
    two = train(
        ws,
        ws / "data",
        two_dir,
        8,
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "--micro_batch_size",
        "4",
        "--length_buckets",
        "off",
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 processes, 8 examples per process and step: global batch 16" in two.stderr
    assert "a compiled step for batches of 32 positions: 2 micro-batch(es) of 4 rows per process" in two.stderr
    data_one = tmp_path / "data_one"
    shutil.copytree(ws / "data" / "SST-2" / "eval", data_one / "SST-2" / "eval", ignore=shutil.ignore_patterns(".*"))
    interleaved_copy(ws / "data" / "SST-2" / "train", data_one / "SST-2" / "train", 2, 8)
    one = train(ws, data_one, tmp_path / "one", 16, "--length_buckets", "off")
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = flow.load(str(tmp_path / "one" / "weights")), flow.load(str(two_dir / "weights"))
    assert set(a) == set(b)
    worst = max_relative_difference(a, b)
    assert worst <= 1e-4, worst
    moved = flow.load(str(ws / "pretrained" / "weights"))
    assert any(not np.array_equal(moved[k].numpy(), a[k].numpy()) for k in moved)  # training did something
    results_one, results_two = json.loads(one.stdout), json.loads(two.stdout)
    assert results_two["processes"] == 2 and results_two["num_examples"] == results_one["num_examples"] == 19
    assert results_two["accuracy"] == results_one["accuracy"]
    history = json.loads((two_dir / "train_history.json").read_text())
    assert [e["step"] for e in history["losses"]] == [1, 2, 3, 4]  # 64 examples / global batch 16


def test_two_processes_train_on_length_buckets_by_default(two_processes):
    """The fixture's run: both ranks cut their batches to the same bucket lengths, one graph per length."""
    two_dir, two = two_processes
    assert "2 processes, 8 examples per process and step: global batch 16" in two.stderr
    lengths = re.findall(
        r"a compiled step for batches of (\d+) positions: (\d+) micro-batch\(es\) of 4 rows", two.stderr
    )
    assert len(lengths) > 1 and all(parts == "2" for _, parts in lengths), two.stderr[-3000:]
    assert max(int(length) for length, _ in lengths) <= 32
    history = json.loads((two_dir / "train_history.json").read_text())
    assert [e["step"] for e in history["losses"]] == [1, 2, 3, 4]


def second_local_address() -> str:
    """An address of this machine other than 127.0.0.x (the one it would use to reach other hosts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.254", 9))  # no packet is sent
            address = probe.getsockname()[0]
        except OSError:
            address = "127.0.0.1"
    if address.startswith("127."):
        pytest.skip("this machine has no network address besides the loopback one")
    return address


def test_two_nodes_of_one_process_each_train_what_one_node_of_two_processes_trains(ws, tmp_path, two_processes):
    """NUM_NODES=2 simulated on this machine, each node started by itself. OneFlow tells nodes apart by the
    address they reach the master from, so node 1 reaches it through this machine's second address."""
    import os
    import subprocess

    port, out, other = free_port(), tmp_path / "two_nodes", second_local_address()
    node_ips = {0: f"127.0.0.1,{other}", 1: f"{other},127.0.0.1"}  # the master first, as each node reaches it
    # (without tests/startup: node 1 must get through OneFlow's own wait for a master that is not there yet)
    env = dict(os.environ, PYTHONPATH=str(conftest.ROOT / "src"))
    nodes = []
    for node in (1, 0):  # the master last: the other node must wait for it
        with open(tmp_path / f"node{node}.out", "w") as stdout, open(tmp_path / f"node{node}.err", "w") as stderr:
            nodes.append(
                subprocess.Popen(
                    train_command(
                        ws,
                        ws / "data",
                        out,
                        8,
                        "--micro_batch_size",
                        "4",
                        "--nproc_per_node",
                        "1",
                        "--nnodes",
                        "2",
                        "--node_rank",
                        str(node),
                        "--node_ips",
                        node_ips[node],
                        "--master_port",
                        str(port),
                    ),
                    stdout=stdout,
                    stderr=stderr,
                    env=env,
                )
            )
    try:
        codes = [node.wait(timeout=900) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.terminate()
                node.wait(timeout=60)
    errors = {n: (tmp_path / f"node{n}.err").read_text()[-2000:] for n in (0, 1)}
    assert codes == [0, 0], errors
    assert "2 processes, 8 examples per process and step: global batch 16" in errors[0]
    results = json.loads((tmp_path / "node0.out").read_text())
    assert results["processes"] == 2 and results["num_examples"] == 19
    assert (tmp_path / "node1.out").read_text() == ""  # only rank 0 reports and writes
    two_dir, two = two_processes
    assert results["accuracy"] == json.loads(two.stdout)["accuracy"]
    worst = max_relative_difference(flow.load(str(two_dir / "weights")), flow.load(str(out / "weights")))
    assert worst <= 1e-5, worst


def test_two_process_evaluation_equals_one_process_on_a_split_that_is_no_multiple_of_the_batch(
    ws, tmp_path, two_processes
):
    model_dir = two_processes[0]
    one = run(
        [
            PYTHON,
            "-m",
            "distil",
            "eval",
            str(model_dir),
            "--data_root",
            str(ws / "data"),
            "--eval_batch_size",
            "3",
            "--device",
            "cpu",
            "--result_dir",
            str(tmp_path / "r1"),
        ]
    )
    two = run(
        [
            PYTHON,
            "-m",
            "distil",
            "eval",
            str(model_dir),
            "--data_root",
            str(ws / "data"),
            "--eval_batch_size",
            "3",
            "--device",
            "cpu",
            "--result_dir",
            str(tmp_path / "r2"),
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
        ]
    )
    assert one.returncode == 0 and two.returncode == 0, (one.stderr[-2000:], two.stderr[-2000:])
    r1, r2 = json.loads(one.stdout), json.loads(two.stdout)
    assert r1["accuracy"] == r2["accuracy"] and r1["num_examples"] == r2["num_examples"] == 19
    assert json.loads((tmp_path / "r2" / "results_eval.json").read_text())["accuracy"] == r2["accuracy"]


EVALUATE_BOTH_WAYS = """
import sys
import numpy as np
from distil.runtime import import_oneflow
flow = import_oneflow()
from distil.models import io
from distil.train.graph import Evaluator
from distil.train.placement import Placement
placement = Placement("cpu")
model = io.load_model(sys.argv[1])
logits = {mode: Evaluator(model, sys.argv[2], ("accuracy",), 3, placement, mode).run()[1]["logits"]
          for mode in ("off", "auto")}
if placement.writer:
    np.savez(sys.argv[3], **logits)
"""


def test_evaluation_on_length_buckets_gives_the_full_length_logits_in_file_order_with_two_processes(
    ws, tmp_path, two_processes
):
    import os
    import subprocess

    (tmp_path / "evaluate.py").write_text(EVALUATE_BOTH_WAYS)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env.update(PYTHONPATH=f"{conftest.STARTUP}:{conftest.ROOT / 'src'}", OMP_NUM_THREADS="1")
    arguments = [str(tmp_path / "evaluate.py"), str(two_processes[0]), str(ws / "data" / "SST-2" / "eval")]
    for name, launcher in (
        ("one", []),
        ("two", ["-m", "oneflow.distributed.launch", "--nproc_per_node", "2", "--master_port", str(free_port())]),
    ):
        done = subprocess.run(
            [PYTHON, *launcher, *arguments, str(tmp_path / f"{name}.npz")],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert one["off"].shape == (19, 2)
    for logits in (one["auto"], two["off"], two["auto"]):
        np.testing.assert_allclose(logits, one["off"], atol=1e-5)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--nnodes", "2"], "--nnodes (NUM_NODES) 2 needs --node_ips (NODE_IPS)"),
        (
            ["--nnodes", "2", "--node_ips", "127.0.0.1,127.0.0.2", "--node_rank", "2"],
            "--node_rank (NODE_RANK) 2 is outside",
        ),
        (
            ["--nnodes", "2", "--node_ips", "127.0.0.1,127.0.0.1"],
            "--node_ips (NODE_IPS) lists 127.0.0.1 more than once",
        ),
        (["--nproc_per_node", "2", "--device", "cuda"], "--device cuda, but OneFlow sees no GPU"),
    ],
)
def test_bad_process_flags_are_one_line_usage_errors(ws, tmp_path, flags, message):
    result = run([PYTHON, "-m", "distil", "eval", str(tmp_path / "nothing"), "--nproc_per_node", "2", *flags])
    assert result.returncode == 2 and message in result.stderr, result.stderr[-1500:]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--export_onnx", "true"], "--export_onnx (EXPORT_ONNX) needs a one-process run"),
        (
            ["--teacher_cache", "onnxruntime"],
            "--teacher_cache onnxruntime (TEACHER_CACHE) runs the teacher's pass in one",
        ),
    ],
)
def test_one_process_options_of_a_multi_process_training_are_refused_before_it_starts(ws, tmp_path, flags, message):
    result = train(ws, ws / "data", tmp_path / "m", 8, "--nproc_per_node", "2", *flags)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "m").exists()


def test_a_busy_master_port_is_a_usage_error(ws, tmp_path):
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run(
            [PYTHON, "-m", "distil", "eval", str(tmp_path / "m"), "--nproc_per_node", "2", "--master_port", str(port)]
        )
    assert result.returncode == 2 and f"--master_port (MASTER_PORT) {port} is in use" in result.stderr


@pytest.mark.parametrize(
    ("rank", "local_rank", "waits"), [(1, 1, True), (0, 0, False), (3, 1, False)], ids=["local", "master", "remote"]
)
def test_a_rank_on_the_masters_node_starts_once_the_master_listens(monkeypatch, rank, local_rank, waits):
    """OneFlow 0.9 makes a rank that reaches the master before it listens sleep 10 s: a rank > 0 on the master's
    node waits for the listening port first; the master itself and ranks of other nodes do not wait."""
    with socket.socket() as master:
        master.bind(("127.0.0.1", 0))
        port = master.getsockname()[1]
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))
        monkeypatch.setenv("MASTER_PORT", str(port))
        listen = threading.Timer(1.0, master.listen)
        listen.start()
        start = time.monotonic()
        launch.wait_for_local_master(timeout=20)
        waited = time.monotonic() - start
        listen.cancel()  # (a rank that did not wait: the socket closes before the timer would fire)
        listen.join()
    assert (1.0 <= waited < 10) if waits else waited < 0.5, waited


def test_a_rank_whose_master_never_listens_stops_waiting_at_the_timeout(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    start = time.monotonic()
    launch.wait_for_local_master(timeout=0.3)
    assert 0.3 <= time.monotonic() - start < 2


def worker_pids(marker: str) -> dict:
    """The rank processes (`python -m distil ...` with RANK set) whose command line holds `marker`, by rank."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            env = dict(v.split(b"=", 1) for v in (proc / "environ").read_bytes().split(b"\0") if b"=" in v)
        except (OSError, ValueError):
            continue
        if (
            b"-m" in cmd
            and cmd[cmd.index(b"-m") + 1 :][:1] == [b"distil"]
            and marker.encode() in cmd
            and int(env.get(b"RANK", -1)) >= 0
        ):  # (importing OneFlow sets RANK=-1 in a plain process)
            found[int(env[b"RANK"])] = int(proc.name)
    return found


def test_a_rank_that_dies_restarts_the_job_which_ends_with_the_uninterrupted_weights(ws, tmp_path, two_processes):
    """Rank 1 dies from SIGSEGV at step 2 of 4 (tests/faults/sitecustomize.py): the job names it, stops every rank,
    starts again from the last saved state and trains what the uninterrupted 2-process run trained."""
    two_dir, _ = two_processes
    model_dir = tmp_path / "m"
    done = conftest.run(
        train_command(
            ws,
            ws / "data",
            model_dir,
            8,
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            "--micro_batch_size",
            "4",
            "--checkpoint_every",
            "1",
        ),
        env={
            "PYTHONPATH": f"{conftest.ROOT / 'tests' / 'faults'}:{conftest.ROOT / 'src'}",
            "DISTIL_TEST_FAULT": "SIGSEGV@step=2,rank=1",
        },
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "error: rank 1 of 2 died from SIGSEGV" in done.stderr, done.stderr[-3000:]
    assert "the 2-process job failed" in done.stderr
    # rank 0 may have saved step 2 before rank 1 died there
    resumed = re.search(
        r"restart 1 of 3: rank 1 of 2 died from SIGSEGV; the job starts again and resumes from step "
        r"([12])\n",
        done.stderr,
    )
    assert resumed, done.stderr[-3000:]
    assert f"resuming {model_dir} from step {resumed.group(1)} of 4" in done.stderr
    report = (model_dir / "crash.log").read_text()
    assert "rank 1 of 2 (pid" in report and "died from SIGSEGV (attempt 1)" in report and "in fit" in report
    assert worker_pids(str(model_dir)) == {}  # no rank left behind
    assert sorted(p.name for p in model_dir.iterdir() if p.name.startswith(".")) == []
    a, b = flow.load(str(two_dir / "weights")), flow.load(str(model_dir / "weights"))
    assert max(float(np.abs(a[k].numpy() - b[k].numpy()).max()) for k in a) <= 1e-5
    assert json.loads(done.stdout)["accuracy"] == json.loads((two_dir / "results_eval.json").read_text())["accuracy"]


DROPOUT_ON_TWO_RANKS = """
import sys
from distil.runtime import import_oneflow
flow = import_oneflow()
from distil.models.dropout import Dropout
ranks = flow.placement("cpu", ranks=[0, 1])
site = Dropout(0.5).train()
x = flow.ones(64, 32).to_global(placement=ranks, sbp=flow.sbp.split(0))  # 64 rows per rank: 128 in all
class Step(flow.nn.Graph):
    def __init__(self):
        super().__init__()
        self.site = site
    def build(self, x):
        return self.site(x).to_global(sbp=flow.sbp.broadcast)
for mode, y in (("eager", site(x).to_global(sbp=flow.sbp.broadcast)), ("graph", Step()(x))):
    a = y.to_local().numpy()
    if flow.env.get_rank() == 0:
        print(mode, bool((a[:64] == a[64:]).all()), float(a.mean()), sorted(set(a.ravel().tolist())), flush=True)
"""


def test_dropout_draws_other_masks_on_each_rank_in_eager_and_graph(tmp_path):
    """With the batch split over ranks, each rank's rows get their own mask (not a copy of rank 0's)."""
    import os

    (tmp_path / "dropout_ranks.py").write_text(DROPOUT_ON_TWO_RANKS)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env.update(PYTHONPATH=f"{conftest.STARTUP}:{conftest.ROOT / 'src'}", OMP_NUM_THREADS="1")
    import subprocess

    done = subprocess.run(
        [
            PYTHON,
            "-m",
            "oneflow.distributed.launch",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            str(tmp_path / "dropout_ranks.py"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = {
        line.split()[0]: line.split(maxsplit=3)[1:]
        for line in done.stdout.splitlines()
        if line.startswith(("eager", "graph"))
    }
    assert set(lines) == {"eager", "graph"}, done.stdout
    for mode, (same, mean, values) in lines.items():
        assert same == "False", mode  # rank 1's rows are not rank 0's mask again
        assert 0.8 < float(mean) < 1.2 and values == "[0.0, 2.0]", (mode, mean, values)  # keep 1/2, scaled by 2


RANK_THAT_DIES = """
import os, signal, sys
from distil import crash
if sys.argv[1] == "fails":
    sys.exit(3)
if sys.argv[1] == "report":
    crash.report_finished(0)
os.kill(os.getpid(), signal.SIGABRT)
"""


@pytest.mark.parametrize("how", ["report", "silent", "fails"])
def test_a_rank_that_dies_after_reporting_it_finished_keeps_its_status(how, monkeypatch, capfd):
    """OneFlow 0.9 aborts a rank whose peer exits first (an EPOLLERR check in its socket poller): after the
    rank's work is done, that abort must not fail the job; before, it must. A rank that fails is named too."""
    import sys

    from distil.launch import watch_rank

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    status = watch_rank([sys.executable, "-c", RANK_THAT_DIES, how])
    err = capfd.readouterr().err
    if how == "report":
        assert status == 0 and "error: rank" not in err
    elif how == "silent":
        assert status == 1 and "error: rank 1 of 2 died from SIGABRT" in err
    else:
        assert status == 3 and "error: rank 1 of 2 failed with exit status 3 (pid" in err
