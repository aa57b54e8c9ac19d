"""One place puts a run on its device: every module of a training step and of evaluation goes through it,
and a device that is not there is a usage error before anything runs."""

from __future__ import annotations

import pytest

from conftest import PYTHON, run
from distil.errors import UsageError
from distil.models import io
from distil.models.bert import BertConfig
from distil.runtime import import_oneflow
from distil.train import placement as placement_module
from distil.train.placement import Placement, resolve_device
from distil.train.settings import TrainSettings
from distil.train.step import DistillStep, hard_label, hidden_states, soft_labels
from distil.train.trainer import build_step_runner

flow = import_oneflow()
pytestmark = pytest.mark.skipif(flow.cuda.is_available(), reason="checks the behaviour without a GPU")


def test_cuda_without_a_gpu_is_a_usage_error_and_auto_is_the_cpu():
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    for name in ("cuda", "cuda:1"):
        with pytest.raises(UsageError, match=f"--device {name}, but OneFlow sees no GPU"):
            resolve_device(name)
    with pytest.raises(UsageError, match="expected auto, cpu, cuda or cuda:K"):
        resolve_device("gpu")


@pytest.mark.parametrize("command", [["eval", "nowhere"], ["report", "nowhere"],
                                     ["train", "--algorithm", "teacher", "--pretrained_model", "nowhere"]])
def test_the_cli_refuses_cuda_without_a_gpu_before_doing_anything(command, tmp_path):
    result = run([PYTHON, "-m", "distil", *command, "--device", "cuda"], cwd=tmp_path)
    assert result.returncode == 2 and "--device cuda, but OneFlow sees no GPU" in result.stderr, result.stderr[-800:]
    assert list(tmp_path.iterdir()) == []


def test_the_whole_step_module_is_placed_before_the_optimizer_is_built(monkeypatch, tmp_path):
    placed = []
    monkeypatch.setattr(placement_module.Placement, "module", lambda self, m: placed.append(m) or m)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=24).to_dict()
    student, teacher = io.build_model(config), io.build_model({**config, "hidden_size": 32})
    step = DistillStep(student, [hard_label(), soft_labels(1.0), hidden_states(1.0)], teacher, flow.nn.Linear(16, 32))
    build_step_runner(step, data=None, settings=TrainSettings(), total=10, placement=Placement("cpu"))
    assert placed == [step]
    inside = {id(m) for m in placed[0].modules()}
    assert {id(student), id(teacher), id(step.fit_dense)} <= inside
