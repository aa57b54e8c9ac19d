"""OneFlow 0.9's queue of running graphs, replaced by distil/lazy_job_queue.cpp (distil.native): OneFlow calls it,
and a run that ends before it was recorded as running no longer pops an empty queue."""

from __future__ import annotations

import json

from conftest import PYTHON, run

GRAPH_RUNS = """
import json
import time
from distil import native
from distil.runtime import import_oneflow
flow = import_oneflow()
fix = native.fix_lazy_job_queue()
class Double(flow.nn.Graph):
    def build(self, x):
        return x * 2
graph, before = Double(), fix.distil_lazy_job_pops() if fix else None
for _ in range(20):
    graph(flow.ones(3)).numpy()
# a run's output is ready before its actors report it finished (the pop): wait for the last ones, boundedly
deadline = time.monotonic() + 30
while fix and fix.distil_lazy_job_pops() - before < 20 and time.monotonic() < deadline:
    time.sleep(0.01)
print(json.dumps({"loaded": fix is not None, "pops": fix.distil_lazy_job_pops() - before if fix else None,
                  "selftest": fix.distil_lazy_job_queue_selftest() if fix else None}))
"""


def graph_runs(env: dict) -> dict:
    result = run([PYTHON, "-c", GRAPH_RUNS], env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_oneflow_ends_every_graph_run_through_the_fixed_queue():
    fixed = graph_runs({})
    assert fixed == {"loaded": True, "pops": 20, "selftest": 0}  # 20 runs, each ended through our DequeueNNGraph
    assert graph_runs({"DISTIL_LAZY_JOB_FIX": "off"})["loaded"] is False


def test_without_a_compiler_oneflow_keeps_its_own_queue(tmp_path):
    script = "from distil import native; print(native.fix_lazy_job_queue() is None)"
    result = run(
        [PYTHON, "-c", f"import sys; sys.prefix = {str(tmp_path)!r}; {script}"],
        env={"CXX": "false", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stderr[-2000:]
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
