"""General distillation (`--algorithm general_tinybert | general_minilm` on pregenerated text): the loss falls,
each epoch scores the held-out dev loss, and the output starts KD and TinyBERT as a General TinyBERT does."""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import free_port
from distil.algorithms import get_algorithm
from distil.data import ofrecord
from distil.data.convert import ConvertConfig, convert_task
from distil.data.pregenerate import pregenerate
from distil.errors import UsageError
from distil.models import io
from distil.runtime import import_oneflow
from distil.train.run import HISTORY_FILE, RESULTS_FILE, RunConfig, data_dirs, train_algorithm
from distil.train.settings import TrainSettings
from glue_fixtures import write_learnable_sst2
from test_recipes import write_teacher

flow = import_oneflow()
ROOT = Path(__file__).resolve().parents[1]
TEACHER = {
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 48,
    "max_position_embeddings": 64,
}
STUDENT = {
    "student_num_hidden_layers": 2,
    "student_hidden_size": 16,
    "student_num_attention_heads": 4,
    "student_intermediate_size": 24,
}
WORDS = "the a film story actor plot scene music camera light dark good bad long short old new city night day".split()


@pytest.fixture(scope="module")
def ws(tmp_path_factory, vocab_file) -> Path:
    """Pregenerated text (seq 32), a random 4-layer "pretrained" teacher, SST-2 data and a fine-tuned SST-2 teacher."""
    root = tmp_path_factory.mktemp("general")
    rng = random.Random(0)
    documents = [
        "\n".join(
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + " ." for _ in range(rng.randint(3, 8))
        )
        for _ in range(60)
    ]
    (root / "corpus.txt").write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    pregenerate(root / "corpus.txt", vocab_file, root / "corpus", max_seq_length=32, dev_fraction=0.1)
    io.init_bert(root / "pretrained", vocab_file, TEACHER)
    write_learnable_sst2(root / "glue", 64, 16)
    convert_task("SST-2", ConvertConfig(root / "glue", root / "data", vocab_file, max_seq_length=32, workers=1))
    write_teacher(root / "finetuned", vocab_file)
    return root


def general(ws: Path, name: str, out: Path, epochs: int = 3, **options):
    algorithm = get_algorithm(name)
    run = RunConfig(
        "pretraining",
        ws / "corpus",
        out,
        TrainSettings(epochs=epochs, learning_rate=3e-3, batch_size=8, warmup_proportion=0.0, log_every=2),
        algorithm.options(teacher_model=ws / "pretrained", **{**STUDENT, **options}),
    )
    return train_algorithm(algorithm, run), io.read_config(out)


@pytest.mark.parametrize(
    "name, terms",
    [
        ("general_tinybert", {"att_loss", "hidden_loss"}),
        ("general_minilm", {"attention_transfer_loss", "value_relation_loss"}),
    ],
)
def test_general_distillation_lowers_the_loss_and_keeps_the_last_epoch(ws, tmp_path, name, terms):
    results, config = general(ws, name, tmp_path / name)
    history = json.loads((tmp_path / name / HISTORY_FILE).read_text())
    dev = [epoch["metrics"]["dev_loss"] for epoch in history["epochs"]]
    assert len(dev) == 3 and dev[-1] < 0.8 * dev[0], dev
    assert all(epoch["saved"] for epoch in history["epochs"])  # no metric to select on: the last epoch is kept
    assert json.loads((tmp_path / name / RESULTS_FILE).read_text())["dev_loss"] == pytest.approx(dev[-1], rel=1e-5)
    assert config["task"]["name"] == "pretraining" and config["algorithm"]["name"] == name
    losses = history["losses"]
    assert set(losses[-1]) == {"step", "loss", *terms} and losses[-1]["loss"] < losses[0]["loss"]


def test_a_general_tinybert_starts_kd_and_tinybert_with_its_weights_and_its_fit_dense(ws, tmp_path):
    general(ws, "general_tinybert", tmp_path / "student", epochs=1)
    saved = io.read_pretrained(tmp_path / "student")
    assert sorted(saved.projection) == ["bias", "weight"] and saved.projection["weight"].shape == (32, 16)
    train_dir, _ = data_dirs(ws / "data", get_algorithm("kd").task("SST-2"))
    meta = ofrecord.read_meta(train_dir)
    for name in ("kd", "tinybert"):
        algorithm = get_algorithm(name)
        run = RunConfig(
            "SST-2",
            ws / "data",
            tmp_path / name,
            TrainSettings(),
            algorithm.options(teacher_model=ws / "finetuned", student_model=tmp_path / "student"),
        )
        built = algorithm.build(run, algorithm.stages(run)[0], algorithm.task("SST-2"), meta)
        own = built.model.state_dict()
        for key, value in saved.state.items():
            if not key.startswith("classifier."):  # (another task's head is left out)
                np.testing.assert_array_equal(own[key].numpy(), np.asarray(value.numpy()), err_msg=key)
        if name == "tinybert":
            np.testing.assert_array_equal(
                built.step_module.fit_dense.weight.numpy(), saved.projection["weight"].numpy()
            )


def test_general_distillation_refuses_task_data_a_fine_tuned_layout_and_unmatched_heads(ws, tmp_path):
    algorithm = get_algorithm("general_tinybert")
    run = RunConfig(
        "pretraining", ws / "data", tmp_path / "x", TrainSettings(), algorithm.options(teacher_model=ws / "pretrained")
    )
    with pytest.raises(UsageError, match="no pregenerated data at .*train"):
        train_algorithm(algorithm, run)
    with pytest.raises(UsageError, match="TinyBERT compares attention head by head: the student has 2 heads"):
        general(ws, "general_tinybert", tmp_path / "y", epochs=1, student_num_attention_heads=2)
    with pytest.raises(UsageError, match="--layer_map"):
        general(ws, "general_tinybert", tmp_path / "z", epochs=1, student_num_hidden_layers=3)
    assert not (tmp_path / "x").exists()


def test_the_script_runs_general_distillation_from_its_variables_in_two_processes(ws, tmp_path):
    env = {
        **os.environ,
        "CORPUS_DIR": str(ws / "corpus"),
        "TEACHER_MODEL": str(ws / "pretrained"),
        "GENERAL_METHOD": "minilm",
        "STUDENT_DIR": str(tmp_path / "student"),
        "BATCH_SIZE": "8",
        "GPU": "",
        "GPU_NUM_PER_NODE": "2",
        "MASTER_PORT": str(free_port()),
    }
    done = subprocess.run(
        [
            "bash",
            str(ROOT / "scripts" / "run_general_distill.sh"),
            "--max_steps",
            "2",
            *sum(([f"--{k}", str(v)] for k, v in STUDENT.items()), []),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    config = io.read_config(tmp_path / "student")
    assert config["algorithm"]["name"] == "general_minilm" and config["model"]["hidden_size"] == 16
    assert json.loads((tmp_path / "student" / RESULTS_FILE).read_text())["dev_loss"] > 0
    assert "2 processes, 8 examples per process and step: global batch 16" in done.stderr
