"""Recipe files (`--algorithm recipe --recipe FILE.toml`): the shipped ones train exactly what their built-in
algorithms train; several teachers; weight and temperature schedules inside the compiled graph; TensorBoard
event files; bad files exit 2 naming file, line and key."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distil.algorithms.recipe import read_recipe
from distil.data.convert import ConvertConfig, convert_task
from distil.errors import UsageError
from distil.runtime import import_oneflow
from glue_fixtures import write_learnable_sst2
from test_recipes import build, log_softmax, train_briefly, write_teacher

flow = import_oneflow()
ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
SMALL = {
    "student_num_hidden_layers": 2,
    "student_hidden_size": 16,
    "student_num_attention_heads": 4,
    "student_intermediate_size": 24,
}
STEPS = 20


@pytest.fixture(scope="module")
def ws(tmp_path_factory, vocab_file) -> Path:
    """SST-2-shaped data at seq 32 (BERT and BiLSTM views) and a random 12-layer, 32-wide teacher (BERT-PKD's recipe
    picks layers 2, 6, 10)."""
    root = tmp_path_factory.mktemp("recipe_files")
    write_learnable_sst2(root / "glue", 20 * 16, 32)  # 20 steps of 16 in one epoch: one evaluation
    convert_task("SST-2", ConvertConfig(root / "glue", root / "data", vocab_file, max_seq_length=32, workers=1))
    write_teacher(root / "teacher", vocab_file, layers=12)
    return root


def trained_losses(ws: Path, model_dir: Path, name: str, steps: int = STEPS, **options):
    flow.manual_seed(42)  # as train_stage seeds new weights
    built, stage_, train_dir = build(ws, name, **options)
    state = train_briefly(
        built, stage_, train_dir, model_dir, epochs=1, max_steps=steps, log_every=1, length_buckets="off"
    )  # one compiled graph (the same code either way)
    return state.losses, built


@pytest.mark.parametrize(
    "recipe, algorithm, options",
    [
        ("kd.toml", "kd", {}),
        ("bert_pkd.toml", "bert_pkd", {}),
        ("tinybert.toml", "tinybert", {}),
        ("tinybert_two_stage.toml", "tinybert", {"tinybert_mode": "two_stage"}),  # its first stage
        ("distilled_lstm.toml", "distilled_lstm", {}),
        ("theseus.toml", "theseus", {}),  # its replacement stage (eager: each step samples its network)
    ],
)
def test_each_shipped_recipe_trains_its_algorithms_first_steps(ws, tmp_path, recipe, algorithm, options):
    sizes = SMALL if algorithm in ("kd", "tinybert") else {}  # (the others' students: teacher layers, a BiLSTM)
    text = (RECIPES / recipe).read_text()
    if algorithm == "distilled_lstm":  # the file's terms as shipped, its 300-wide BiLSTM 8 wide (as fast as the rest)
        text = re.sub(r"(embedding_size|hidden_size|fc_size) = \d+", r"\1 = 8", text)
        options = {"lstm_embedding_size": 8, "lstm_hidden_size": 8, "lstm_fc_size": 8}
    (tmp_path / recipe).write_text(text)
    ours, built = trained_losses(ws, tmp_path / "recipe", "recipe", recipe=tmp_path / recipe, **sizes)
    theirs, builtin = trained_losses(ws, tmp_path / "builtin", algorithm, **sizes, **options)
    assert len(ours) == len(theirs) == STEPS
    for a, b in zip(ours, theirs):  # (logged rounded to 6 decimals)
        assert set(a) == set(b)
        for name in b:
            assert a[name] == pytest.approx(b[name], rel=0, abs=1e-6), (a["step"], name)
    trained, want = built.model.state_dict(), builtin.model.state_dict()
    assert list(trained) == list(want)
    for name, value in want.items():
        np.testing.assert_allclose(trained[name].numpy(), value.numpy(), rtol=0, atol=1e-6, err_msg=name)


def test_the_two_stage_recipe_declares_the_papers_stages(ws):
    from distil.algorithms import get_algorithm
    from distil.train.run import RunConfig
    from distil.train.settings import TrainSettings

    algorithm = get_algorithm("recipe")
    run = RunConfig(
        "SST-2",
        ws / "data",
        ws / "m",
        TrainSettings(epochs=3, learning_rate=2e-5),
        algorithm.options(recipe=RECIPES / "tinybert_two_stage.toml", teacher_model=ws / "teacher"),
    )
    first, last = algorithm.stages(run)
    assert (first.name, first.settings.epochs, first.settings.learning_rate, first.settings.select_best) == (
        "intermediate",
        20,
        5e-5,
        False,
    )
    assert first.model_dir == ws / "m" / "intermediate_stage" and not first.final
    assert (last.settings.epochs, last.settings.select_best, last.init, last.final) == (3, True, first.model_dir, True)


def test_two_identical_teachers_give_single_teacher_kd(ws, tmp_path):
    one, single = trained_losses(ws, tmp_path / "one", "kd", steps=5, teacher_model=ws / "teacher", **SMALL)
    two, double = trained_losses(
        ws, tmp_path / "two", "kd", steps=5, teacher_model=Path(f"{ws / 'teacher'},{ws / 'teacher'}"), **SMALL
    )
    assert type(double.step_module.teacher).__name__ == "TeacherEnsemble"
    for a, b in zip(one, two):
        for name in a:
            assert a[name] == pytest.approx(b[name], rel=0, abs=1e-6), name
    for (name, a), (_, b) in zip(single.model.state_dict().items(), double.model.state_dict().items()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-6, err_msg=name)


def test_teacher_weights_average_the_logits_and_only_logit_terms_take_several_teachers(ws, tmp_path, vocab_file):
    write_teacher(tmp_path / "other", vocab_file, layers=12, seed=5)
    recipe = tmp_path / "two.toml"
    recipe.write_text(
        f'[[teacher]]\npath = "{ws / "teacher"}"\nweight = 3\n'
        f'[[teacher]]\npath = "{tmp_path / "other"}"\n'
        '[[stage]]\nname = "s"\n[[stage.term]]\noperator = "pred_distill"\n'
    )
    built, _, train_dir = build(ws, "recipe", recipe=recipe, **SMALL)
    ensemble = built.step_module.teacher
    from test_recipes import first_batch, inputs

    batch = first_batch(train_dir)
    a, b = (m.logits(*inputs(batch)).numpy() for m in ensemble.members)
    np.testing.assert_allclose(ensemble.logits(*inputs(batch)).numpy(), 0.75 * a + 0.25 * b, rtol=0, atol=1e-6)
    recipe.write_text(recipe.read_text() + '[[stage.term]]\noperator = "layer_distill"\nproject = true\n')
    with pytest.raises(UsageError, match=r"two.toml:\d+: stage\[0\]\.term: several teachers average their logits"):
        build(ws, "recipe", recipe=recipe, **SMALL)
    with pytest.raises(UsageError, match="names 2 teachers"):
        build(ws, "tinybert", teacher_model=Path(f"{ws / 'teacher'},{tmp_path / 'other'}"), **SMALL)


def test_scheduled_weights_and_temperatures_change_inside_the_compiled_graph(ws, tmp_path):
    recipe = tmp_path / "scheduled.toml"
    recipe.write_text(
        '[[stage]]\nname = "s"\n'
        '[[stage.term]]\nname = "a_loss"\noperator = "pred_distill"\n'
        'temperature = {value = 2.0, schedule = "flsw", beta = 1.5, gamma = 2.0}\n'
        '[[stage.term]]\nname = "b_loss"\noperator = "pred_distill"\n'
        'weight = {value = 2.0, schedule = "linear_decay"}\n'
        'temperature = {value = 2.0, schedule = "flsw", beta = 1.5, gamma = 2.0}\n'
    )
    losses, built = trained_losses(ws, tmp_path / "m", "recipe", steps=4, recipe=recipe, **SMALL)
    for k, logged in enumerate(losses):  # b = 2 x (1 - k/4) x a, a and b being the same term
        assert logged["weight_b"] == pytest.approx(1 - k / 4, abs=1e-12)
        assert logged["b_loss"] == pytest.approx(2 * (1 - k / 4) * logged["a_loss"], abs=3e-6)  # (logged: 6 decimals)
    low, high = [logged["temperature_a_min"] for logged in losses], [logged["temperature_a_max"] for logged in losses]
    assert len(set(low)) == len(set(high)) == 4 and max(low) < 2.0 < min(high)  # new per example at every step
    # the per-example temperatures and the term on one batch, against the formula in numpy
    from test_recipes import first_batch, inputs

    step = built.step_module.eval()
    step.read_teacher_from_batch(())  # (training read the teacher's logits from its cache)
    batch = first_batch(ws / "data" / "SST-2" / "train")
    batch["schedule_b_loss"] = flow.ones(16)
    got = step(batch)
    s, t = (m.logits(*inputs(batch)).numpy().astype(np.float64) for m in (built.model, step.teacher))
    cos = (s * t).sum(-1) / ((np.linalg.norm(s, axis=-1) + 1e-4) * (np.linalg.norm(t, axis=-1) + 1e-4))
    w = (1 - cos) ** 2
    tau = (2.0 + 1.5 * (w.mean() - w))[:, None]
    want = (-np.exp(log_softmax(t / tau)) * log_softmax(s / tau)).mean()
    assert float(got["a_loss"].numpy()) == pytest.approx(want, rel=1e-5)


def test_tensorboard_event_files_hold_every_term_the_lr_and_dev_metrics(ws, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = tmp_path / "r.toml"
    recipe.write_text(
        '[[stage]]\nname = "s"\n[[stage.term]]\noperator = "hard_label"\n'
        'weight = {value = 1.0, schedule = "linear_growth"}\n'
        '[[stage.term]]\noperator = "pred_distill"\n'
        'temperature = {value = 1.0, schedule = "cwsm", beta = 1}\n'
    )
    built, stage, train_dir = build(ws, "recipe", recipe=recipe, **SMALL)
    train_briefly(
        built,
        stage,
        train_dir,
        tmp_path / "model",
        epochs=1,
        max_steps=6,
        log_every=2,
        tensorboard=str(tmp_path / "tb"),
    )
    events = EventAccumulator(str(tmp_path / "tb" / "model"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "train/loss",
        "train/hard_label_loss",
        "train/pred_loss",
        "train/learning_rate",
        "train/weight_hard_label",
        "train/temperature_pred_min",
        "train/temperature_pred_max",
        "dev/accuracy",
    } <= tags, tags
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6]
    assert [e.step for e in events.Scalars("dev/accuracy")] == [6]


def recipe_train_argv(ws: Path, recipe: Path, out: Path) -> list[str]:
    """`train --algorithm recipe` on the module's data and teacher, on the CPU (the command line after `distil`)."""
    return [
        "train",
        "--algorithm",
        "recipe",
        "--recipe",
        str(recipe),
        "--task",
        "SST-2",
        "--data_root",
        str(ws / "data"),
        "--teacher_model",
        str(ws / "teacher"),
        "--model_save_dir",
        str(out),
        "--device",
        "cpu",
    ]


@pytest.mark.parametrize(
    "text, where, flags",
    [
        (
            '[[stage]]\nname = "s"\n[[stage.term]]\noperator = "mystery"\n',
            r"bad.toml:4: stage\[0\]\.term\[0\]\.operator: "
            r"unknown operator 'mystery'",
            [],
        ),
        (
            '[student]\nhidden_size = 16\nwidth = 3\n[[stage]]\nname = "s"\n[[stage.term]]\noperator = "hard_label"\n',
            r"bad.toml:3: student\.width: unknown key",
            [],
        ),
        (
            '[[stage]]\nname = "s"\n[[stage.term]]\noperator = "layer_distill"\nlayer_map = [0, 1, 99]\n',
            r"bad.toml:5: stage\[0\]\.term\[0\]\.layer_map: ",
            [],
        ),
        (
            '[[stage]]\nname = "s"\n[[stage.term]]\noperator = "pred_distill"\n'
            'temperature = {value = 2.0, schedule = "flsw", beta = 1.0}\n',
            r"bad.toml:5: stage\[0\]\.term\[0\]\.temperature: schedule 'flsw' takes value, beta, gamma; missing gamma",
            [],
        ),
        ('[[stage]]\nname = "s"\n[[stage.term]\noperator = "hard_label"\n', r"bad.toml:3: TOML syntax error", []),
        (
            '[[stage]]\nname = "s"\n[[stage.term]]\noperator = "att_distill"\n',
            r"bad.toml:3: stage\[0\]\.term\[0\]\.layer_map: TinyBERT compares attention head by head: the student "
            r"has 2 heads, the teacher 4",
            ["--student_num_attention_heads", "2"],  # (after SMALL's 4, the teacher's count: the last one counts)
        ),
    ],
)
def test_a_bad_recipe_is_an_error_naming_file_line_and_key(ws, tmp_path, text, where, flags):
    from distil.cli import build_parser

    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    small = sum(([f"--{k}", str(v)] for k, v in SMALL.items()), [])
    args = build_parser().parse_args([*recipe_train_argv(ws, bad, tmp_path / "out"), *small, *flags])
    with pytest.raises(UsageError, match=where):
        args.run(args)
    assert not (tmp_path / "out" / "weights").exists()


def test_the_train_command_exits_2_on_a_bad_recipe(ws, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[stage]]\nname = "s"\n[[stage.term]]\noperator = "hard_label"\ncolour = "red"\n')
    done = subprocess.run(
        [sys.executable, "-m", "distil", *recipe_train_argv(ws, bad, tmp_path / "out")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"{bad}:5: stage[0].term[0].colour: unknown key" in done.stderr
    assert not (tmp_path / "out").exists()


def test_every_shipped_recipe_parses():
    names = {path.name: read_recipe(path) for path in RECIPES.glob("*.toml")}
    assert {
        "kd.toml",
        "bert_pkd.toml",
        "tinybert.toml",
        "tinybert_two_stage.toml",
        "distilled_lstm.toml",
        "theseus.toml",
        "kd_schedules_zoo.toml",
    } <= set(names)


def test_the_loss_zoo_in_a_recipe_trains_in_the_graph_and_gives_each_operators_value(ws, tmp_path):
    from distil.ops import zoo
    from test_recipes import first_batch

    recipe = tmp_path / "zoo.toml"
    recipe.write_text(
        '[[stage]]\nname = "s"\n'
        '[[stage.term]]\noperator = "hidden_cos"\nproject = true\nlayer_map = [0, 4, 8]\n'
        '[[stage.term]]\noperator = "att_ce"\nlayer_map = "last"\n'
        '[[stage.term]]\noperator = "nst"\nweight = 0.5\n'
        '[[stage.term]]\noperator = "gram"\nproject = true\n'
        '[[stage.term]]\noperator = "fsp"\nproject = true\n'
        "pairs = [[[0, 2], [0, 12]], [[1, 2], [6, 12]]]\n"
    )
    flow.manual_seed(42)
    built, stage, train_dir = build(ws, "recipe", recipe=recipe, **{**SMALL, "student_num_attention_heads": 4})
    state = train_briefly(built, stage, train_dir, tmp_path / "m", max_steps=2, log_every=1, length_buckets="off")
    assert set(state.losses[-1]) == {
        "step",
        "loss",
        "hidden_cos_loss",
        "att_ce_loss",
        "nst_loss",
        "gram_loss",
        "fsp_loss",
    }
    step = built.step_module.eval()
    batch = first_batch(train_dir)
    got = {k: float(v.numpy()) for k, v in step(batch).items()}
    s, t = (
        step.student(*(batch[k] for k in ("input_ids", "segment_ids", "input_mask"))),
        step.teacher(*(batch[k] for k in ("input_ids", "segment_ids", "input_mask"))),
    )
    mask = batch["input_mask"]
    projected = [step.fit_dense(h) for h in s["hidden_states"]]
    want = {
        "hidden_cos_loss": zoo.hidden_cos(projected, t["hidden_states"], [0, 4, 8], mask),
        "att_ce_loss": zoo.att_ce(s["attention_scores"], t["attention_scores"], "last", mask),
        "nst_loss": 0.5 * zoo.nst(s["hidden_states"], t["hidden_states"], "uniform", mask),
        "gram_loss": zoo.gram(projected, t["hidden_states"], "uniform", mask),
        "fsp_loss": zoo.fsp(projected, t["hidden_states"], (((0, 2), (0, 12)), ((1, 2), (6, 12))), mask),
    }
    for name, value in want.items():
        assert got[name] == pytest.approx(float(value.numpy()), rel=1e-6, abs=1e-7), name


def test_several_teachers_refuse_the_onnxruntime_cache_with_a_clear_error(ws, tmp_path):
    built, stage, train_dir = build(ws, "kd", teacher_model=Path(f"{ws / 'teacher'},{ws / 'teacher'}"), **SMALL)
    with pytest.raises(UsageError, match="exports one teacher; with several teachers use --teacher_cache auto"):
        train_briefly(built, stage, train_dir, tmp_path / "m", max_steps=1, teacher_cache="onnxruntime")
    assert not (tmp_path / "m" / "weights").exists()


def test_each_schedules_values():
    from distil.ops.distill import dynamic_temperature
    from distil.train.schedules import weight_factor

    assert [weight_factor("linear_decay", k, 4) for k in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert [weight_factor("linear_growth", k, 4) for k in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [weight_factor("constant", k, 4) for k in range(5)] == [1.0] * 5
    with pytest.raises(ValueError, match="unknown weight schedule 'cosine'"):
        weight_factor("cosine", 0, 4)
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32)
    assert dynamic_temperature("constant", flow.tensor(s), flow.tensor(t), 3.0) == 3.0
    cos = (s * t).sum(-1) / ((np.linalg.norm(s, axis=-1) + 1e-4) * (np.linalg.norm(t, axis=-1) + 1e-4))
    w = (1 - cos) ** 0.5
    np.testing.assert_allclose(
        dynamic_temperature("flsw", flow.tensor(s), flow.tensor(t), 3.0, 2.0, 0.5).numpy(),
        (3.0 + 2.0 * (w.mean() - w))[:, None],
        rtol=1e-5,
        atol=1e-6,
    )
    p = np.exp(s - s.max(-1, keepdims=True))
    w = 1 / ((p / p.sum(-1, keepdims=True)).max(-1) + 1e-3)
    np.testing.assert_allclose(
        dynamic_temperature("cwsm", flow.tensor(s), flow.tensor(t), 3.0, 0.5).numpy(),
        (3.0 + 0.5 * (w.mean() - w))[:, None],
        rtol=1e-5,
        atol=1e-6,
    )
