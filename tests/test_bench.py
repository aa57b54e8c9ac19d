"""Smoke test of the benchmark suite at its tiniest sizes (`bash scripts/run_bench.sh --quick`).

It checks that the command runs, prints its table and writes valid JSON with the expected keys;
speed is never asserted (figures on a shared CPU say nothing about correctness).
"""

from __future__ import annotations

import json
import math

from conftest import ROOT, run

FIGURES = {
    "convert_examples_per_s",
    "reader_eager_examples_per_s",
    "reader_graph_examples_per_s",
    "train_consumption_examples_per_s",
    "reader_headroom",
    "train_teacher_eager_step_s",
    "train_teacher_graph_step_s",
    "train_student_eager_step_s",
    "train_student_graph_step_s",
    "infer_teacher_examples_per_s",
    "infer_kd_tinybert_examples_per_s",
    "infer_pkd_theseus_examples_per_s",
    "infer_bilstm_examples_per_s",
    "speedup_kd_tinybert",
    "speedup_pkd_theseus",
    "speedup_bilstm",
    "peak_rss_data_mb",
    "peak_rss_student_train_mb",
    "peak_rss_teacher_train_mb",
    "peak_rss_teacher_inference_mb",
    "peak_rss_student_inference_mb",
    "peak_rss_mb",
}
SCRIPT = str(ROOT / "scripts" / "run_bench.sh")


def test_quick_run_writes_results_json_and_prints_a_row_per_figure(tmp_path):
    output = tmp_path / "out" / "results.json"
    result = run(["bash", SCRIPT, "--quick", "--output", str(output)], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [p.name for p in output.parent.iterdir()] == ["results.json"]  # no temporary file left behind
    data = json.loads(output.read_text(encoding="utf-8"))
    assert data["quick"] is True and "QUICK" in data["sizes"] and "QUICK" in result.stdout
    assert {"cpu_count", "cpu_model", "thread_env", "OPENBLAS_CORETYPE"} <= set(data["machine"])
    assert set(data["versions"]) == {"python", "oneflow", "numpy"}
    assert data["flags"]["quick"] is True and data["flags"]["batch"] == 4 and data["flags"]["output"] == str(output)
    assert set(data["figures"]) == FIGURES
    for key, figure in data["figures"].items():
        assert isinstance(figure["value"], (int, float)) and math.isfinite(figure["value"]), key
        assert figure["unit"] in {"examples/s", "s", "x", "MB"}, key
        assert figure["label"] in result.stdout, key
    timed = [f for f in data["figures"].values() if f["unit"] in {"examples/s", "s"} and f["runs_s"]]
    assert all(len(f["runs_s"]) == 1 for f in timed)  # --quick: one timed run each
    assert data["figures"]["train_student_graph_step_s"]["details"]["compile_s"] > 0
    assert data["figures"]["peak_rss_data_mb"]["details"]["process_threads"] > 0


def test_explicit_flags_win_over_quick_and_bad_sizes_are_usage_errors(tmp_path):
    output = tmp_path / "results.json"
    result = run(["bash", SCRIPT, "--quick", "--batch", "0", "--output", str(output)], cwd=tmp_path)
    assert result.returncode == 2 and "batch" in result.stderr and not output.exists()


def test_quick_processes_run_compares_one_and_two_processes(tmp_path):
    output = tmp_path / "processes.json"
    result = run(["bash", SCRIPT, "processes", "--quick", "--output", str(output)], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    data = json.loads(output.read_text(encoding="utf-8"))
    one, two = data["figures"]["1 process"], data["figures"]["2 processes"]
    assert data["quick"] is True and data["figures"]["PyTorch"] is None
    assert (one["processes"], one["global_batch"], two["processes"], two["global_batch"]) == (1, 8, 2, 16)
    for figure in (one, two):  # 12 steps logged every 4: the first interval (compilation) is left out
        assert len(figure["intervals"]) == 2 and figure["examples_per_s"] > 0
    assert "2 processes / 1 process" in result.stdout and "QUICK" in result.stdout


def test_quick_kd_run_times_every_epoch_and_shows_the_cache_at_work(tmp_path):
    output = tmp_path / "kd.json"
    result = run(["bash", SCRIPT, "kd", "--quick", "--output", str(output)], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    data = json.loads(output.read_text(encoding="utf-8"))
    assert set(data["figures"]) == {"ours-1p-cache", "ours-1p-nocache"} and "oneflow" in data["versions"]
    for figure in data["figures"].values():
        assert len(figure["epoch_seconds"]) == 3 and figure["peak_rss_gb"] > 0 and figure["wall_seconds"] > 0
    assert "1st/later" in result.stdout and "QUICK" in result.stdout
    assert data["teacher_evaluation"]["num_examples"] == 16 and data["teacher_evaluation"]["peak_rss_gb"] > 0


def test_quick_inference_run_measures_oneflow_and_onnxruntime(tmp_path):
    output = tmp_path / "inference.json"
    result = run(
        ["bash", SCRIPT, "inference", "--quick", "--models", "student", "--output", str(output)],
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    figures = json.loads(output.read_text(encoding="utf-8"))["figures"]
    assert set(figures) == {"student"}
    for engines in figures.values():
        assert engines["pytorch"] is None  # --quick: no PyTorch side
        for engine in ("oneflow nn.Graph", "onnxruntime"):
            assert engines[engine]["examples_per_s"] > 0 and engines[engine]["p95_ms"] >= engines[engine]["p50_ms"]
