"""One place puts a run on its device: every module of a training step and of evaluation goes through it,
and a device that is not there is a usage error before anything runs."""

from __future__ import annotations

import pytest

from conftest import PYTHON, ROOT, run
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


@pytest.mark.parametrize(
    "command",
    [["eval", "nowhere"], ["report", "nowhere"], ["train", "--algorithm", "teacher", "--pretrained_model", "nowhere"]],
)
def test_the_cli_refuses_cuda_without_a_gpu_before_doing_anything(command, tmp_path):
    result = run([PYTHON, "-m", "distil", *command, "--device", "cuda"], cwd=tmp_path)
    assert result.returncode == 2 and "--device cuda, but OneFlow sees no GPU" in result.stderr, result.stderr[-800:]
    assert list(tmp_path.iterdir()) == []


def test_the_whole_step_module_is_placed_before_the_optimizer_is_built(monkeypatch, tmp_path):
    placed = []
    monkeypatch.setattr(placement_module.Placement, "module", lambda self, m: placed.append(m) or m)
    config = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24
    ).to_dict()
    student, teacher = io.build_model(config), io.build_model({**config, "hidden_size": 32})
    step = DistillStep(student, [hard_label(), soft_labels(1.0), hidden_states(1.0)], teacher, flow.nn.Linear(16, 32))
    build_step_runner(step, features=(), settings=TrainSettings(), total=10, placement=Placement("cpu"))
    assert placed == [step]
    inside = {id(m) for m in placed[0].modules()}
    assert {id(student), id(teacher), id(step.fit_dense)} <= inside


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "nowhere", "--use_fp16", "true"],
        ["train", "--algorithm", "teacher", "--pretrained_model", "nowhere", "--use_fp16", "true"],
        ["train", "--algorithm", "kd", "--use_fp16", "True", "--nproc_per_node", "2"],
    ],
)
def test_fp16_on_the_cpu_is_refused_before_doing_anything(command, tmp_path):
    result = run([PYTHON, "-m", "distil", *command, "--device", "cpu"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-800:]
    assert "--use_fp16 (USE_FP16) needs a GPU: OneFlow 0.9 has no float16 kernels on the CPU" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_scripts_pass_use_fp16_on(tmp_path):
    env = {"USE_FP16": "True", "MODEL_DIR": str(tmp_path / "m"), "MODEL_SAVE_DIR": str(tmp_path / "m")}
    for script in ("run_train_teacher.sh", "run_eval_teacher.sh"):
        args = ["SST-2"] if "train" in script else ["0", "SST-2", "m"]
        result = run(["bash", f"scripts/{script}", *args], env=env, cwd=ROOT)
        assert result.returncode == 2 and "--use_fp16 (USE_FP16) needs a GPU" in result.stderr, result.stderr[-800:]


def test_fp16_turns_on_graph_amp_with_dynamic_loss_scaling(tmp_path):
    """The graphs a CUDA run with --use_fp16 builds (checked by construction: no GPU here to run them)."""
    from distil.train.graph import TrainGraph
    from distil.train.optim import build_optimizer

    mixed = Placement("cpu")
    mixed.fp16 = True  # as Placement("cuda", fp16=True) sets it
    model = io.build_model(
        BertConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24
        ).to_dict()
    )
    optimizer, schedule = build_optimizer(model.named_parameters(), 1e-3, 0.01, 10, 0.1, 1.0, graph=True)
    train = TrainGraph(model, (), optimizer, schedule, mixed)
    assert train.config.proto.enable_auto_mixed_precision
    evaluation = mixed.autocast()  # evaluations and the teacher cache run eagerly under OneFlow's autocast
    assert isinstance(evaluation, flow.autocast) and evaluation.fast_dtype == flow.float16
    assert evaluation.device == "cuda" and not isinstance(Placement("cpu").autocast(), flow.autocast)
    assert isinstance(train._grad_scaler, flow.amp.GradScaler) and train._grad_scaler._init_scale == 2.0**16
    plain = TrainGraph(model, (), optimizer, schedule, Placement("cpu"))
    assert not plain.config.proto.enable_auto_mixed_precision and getattr(plain, "_grad_scaler", None) is None
    with pytest.raises(UsageError, match="trains eagerly"):
        build_step_runner(model, (), TrainSettings(), 10, mixed, eager=True)
