"""Each algorithm's loss recipe, term by term, against the papers' / the original's formulas written
out in NumPy on the same forward outputs; the frozen teacher inside a real training loop.

A recipe with α and β swapped, a term dropped or zeroed, the wrong teacher view, the wrong layer map
or the wrong soft-label mode fails here.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from distil.algorithms import get_algorithm
from distil.data import ofrecord
from distil.data.convert import ConvertConfig, convert_task
from distil.data.dataset import OFRecordDataset
from distil.data.tasks import get_task
from distil.data.tokenization import load_vocab
from distil.models import io
from distil.models.bert import BertConfig
from distil.runtime import import_oneflow
from distil.train.run import RunConfig, data_dirs
from distil.train.settings import TrainSettings
from distil.train.trainer import Trainer, build_step_runner
from glue_fixtures import write_learnable_sst2

flow = import_oneflow()
TASK = get_task("SST-2")
TEACHER = {
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 48,
    "max_position_embeddings": 64,
}
SMALL = {
    "student_num_hidden_layers": 2,
    "student_hidden_size": 16,
    "student_num_attention_heads": 4,
    "student_intermediate_size": 24,
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory, vocab_file) -> Path:
    """SST-2-shaped data (BERT and BiLSTM views, seq 32) and a random 4-layer teacher with an opinionated head."""
    root = tmp_path_factory.mktemp("recipes")
    write_learnable_sst2(root / "glue", 96, 32)
    convert_task("SST-2", ConvertConfig(root / "glue", root / "data", vocab_file, max_seq_length=32, workers=1))
    write_teacher(root / "teacher", vocab_file)
    return root


def write_teacher(dst: Path, vocab_file: Path, layers: int = 4, seed: int = 0) -> None:
    """A random SST-2 teacher model dir (4 layers by default) whose logits differ from example to example."""
    flow.manual_seed(seed)
    config = BertConfig(vocab_size=len(load_vocab(vocab_file)), **{**TEACHER, "num_hidden_layers": layers}).to_dict()
    teacher = io.build_model(config)
    with flow.no_grad():
        teacher.classifier.weight.mul_(50.0)
    io.write_new_model_dir(
        dst,
        teacher,
        config,
        vocab_file,
        {"name": "teacher"},
        task={"name": "SST-2", "labels": ["0", "1"], "num_labels": 2, "metrics": ["accuracy"]},
        data={"format": "bert", "folder": "SST-2", "seq_length": 32, "do_lower_case": True},
    )


def build(ws: Path, name: str, stage_index: int = 0, **options):
    """(built, stage, train split) of one algorithm's stage, as `train_stage` builds it."""
    algorithm = get_algorithm(name)
    if name != "teacher":
        options = {"teacher_model": ws / "teacher", **options}
    run = RunConfig(
        task="SST-2",
        data_root=ws / "data",
        model_save_dir=ws / "models" / name,
        settings=TrainSettings(epochs=1, learning_rate=1e-2, batch_size=16, log_every=1),
        options=algorithm.options(**options),
    )
    stage = algorithm.stages(run)[stage_index]
    train_dir, _ = data_dirs(ws / "data", TASK, algorithm.data_suffix(run.options))
    return algorithm.build(run, stage, TASK, ofrecord.read_meta(train_dir)), stage, train_dir


def train_briefly(built, stage, train_dir: Path, model_dir: Path, **settings):
    """The one Trainer on `built`, as `train_stage` runs it, for a few steps."""
    evals = {"eval": train_dir.parent / "eval"}
    trainer = Trainer(
        built.model,
        built.step_module,
        dataclasses.replace(stage.settings, **settings),
        train_dir,
        evals,
        TASK.metrics,
        model_dir,
        "cpu",
        built.step_inputs,
        {},
        built.eager,
    )
    return trainer.fit()


def first_batch(train_dir: Path):
    return OFRecordDataset(train_dir, 16)()


def inputs(batch, prefix: str = ""):
    return batch[f"{prefix}input_ids"], batch[f"{prefix}segment_ids"], batch[f"{prefix}input_mask"]


def numpy_outputs(model, batch, prefix: str = ""):
    out = model(*inputs(batch, prefix))
    return {k: [t.numpy() for t in v] if isinstance(v, (list, tuple)) else v.numpy() for k, v in out.items()}


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def cross_entropy(logits, labels):
    return -log_softmax(logits)[np.arange(len(labels)), labels.reshape(-1)].mean()


def soft_ce(s, t, temperature):
    return (-np.exp(log_softmax(t / temperature)) * log_softmax(s / temperature)).mean()


def kl(s, t, temperature):
    log_p, log_q = log_softmax(t / temperature), log_softmax(s / temperature)
    return (np.exp(log_p) * (log_p - log_q)).sum(-1).mean() * temperature**2


def mse(a, b):
    return float(((a - b) ** 2).mean())


def token_mse(a, b, mask):
    """mean((a - b)²) over the real tokens' rows of (B, S, H) hidden states."""
    kept = mask[:, :, None]
    return float(((a - b) ** 2 * kept).sum() / (kept.sum() * a.shape[-1]))


def pair_mse(a, b, mask):
    """mean((a - b)²) over the (real query, real key) entries of (B, heads, S, S) scores."""
    kept = mask[:, None, :, None] * mask[:, None, None, :]
    return float(((a - b) ** 2 * kept).sum() / (kept.sum() * a.shape[1]))


def project(step, hidden):
    if step.fit_dense is None:
        return hidden
    return hidden @ step.fit_dense.weight.numpy().T + step.fit_dense.bias.numpy()


def evaluated(built, train_dir, teacher_view: str = ""):
    """(the step's outputs as floats, student outputs, teacher outputs on `teacher_view`, labels) on one batch,
    dropout off."""
    step = built.step_module.eval()
    batch = first_batch(train_dir)
    got = {k: float(v.numpy()) for k, v in step(batch).items()}
    teacher = numpy_outputs(step.teacher, batch, teacher_view) if step.teacher is not None else None
    return got, numpy_outputs(built.model, batch), teacher, batch["label_ids"].numpy()


def check(got, expected):
    assert set(got) == set(expected), (sorted(got), sorted(expected))
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-3, abs=1e-5), name  # float32 vs float64


def test_teacher_recipe_is_cross_entropy(ws):
    got, s, _, labels = evaluated(build(ws, "teacher", pretrained_model=ws / "teacher")[0], ws / "data/SST-2/train")
    check(got, {"hard_label_loss": cross_entropy(s["logits"], labels)})


@pytest.mark.parametrize("mode, temperature", [("soft_ce", 2.0), ("kl", 2.0), ("mse", 3.0)])
def test_kd_recipe_weights_gold_by_alpha_and_soft_labels_by_one_minus_alpha(ws, mode, temperature):
    built, _, train_dir = build(ws, "kd", kd_alpha=0.3, temperature=temperature, pred_distill_mode=mode, **SMALL)
    assert built.step_module.logits_only  # its models compute their logits alone: the same values (checked here)
    got, s, t, labels = evaluated(built, train_dir)
    soft = {"soft_ce": soft_ce, "kl": kl, "mse": lambda a, b, _: mse(a, b)}[mode](s["logits"], t["logits"], temperature)
    check(got, {"hard_label_loss": 0.3 * cross_entropy(s["logits"], labels), "pred_loss": 0.7 * soft})


def test_distilled_lstm_recipe_weights_soft_labels_by_alpha_and_reads_the_teachers_view(ws):
    built, _, train_dir = build(
        ws, "distilled_lstm", kd_alpha=0.3, lstm_embedding_size=8, lstm_hidden_size=8, lstm_fc_size=8
    )
    assert train_dir.parent.name == "SST-2_lstm_32"
    got, s, t, labels = evaluated(built, train_dir, teacher_view="teacher_")
    check(
        got,
        {
            "hard_label_loss": 0.7 * cross_entropy(s["logits"], labels),
            "pred_loss": 0.3 * soft_ce(s["logits"], t["logits"], 1.0),
        },
    )


@pytest.mark.parametrize(
    "pkd_loss, layer_map, pairs",
    [
        ("layer_mse", "uniform", [(0, 0), (1, 2), (2, 4)]),
        ("layer_mse", "0,1,4", [(0, 0), (1, 1), (2, 4)]),
        ("patient", "uniform", [(1, 2)]),
        ("patient", "last", [(1, 3)]),
    ],
)
def test_bert_pkd_recipe(ws, pkd_loss, layer_map, pairs):
    built, _, train_dir = build(
        ws, "bert_pkd", kd_alpha=0.3, kd_beta=5.0, layer_list="1,3", pkd_loss=pkd_loss, pkd_layer_map=layer_map
    )
    got, s, t, labels = evaluated(built, train_dir)
    assert built.step_module.fit_dense is None  # 32 -> 32: no projection
    hs, ht = s["hidden_states"], t["hidden_states"]
    if pkd_loss == "patient":

        def cls(h):
            return h[:, 0] / np.linalg.norm(h[:, 0], axis=-1, keepdims=True)

        hidden = np.mean([((cls(hs[i]) - cls(ht[j])) ** 2).mean() for i, j in pairs])  # official: mean over all
    else:
        mask = first_batch(train_dir)["input_mask"].numpy()
        hidden = sum(token_mse(hs[i], ht[j], mask) for i, j in pairs)
    check(
        got,
        {
            "hard_label_loss": 0.7 * cross_entropy(s["logits"], labels),
            "pred_loss": 0.3 * soft_ce(s["logits"], t["logits"], 1.0),
            "hidden_loss": 5.0 * hidden,
        },
    )


def masked(scores):
    return np.where(scores <= -100, 0.0, scores)


def test_tinybert_one_stage_recipe_is_attention_plus_projected_hidden_plus_soft_labels(ws):
    built, stage, train_dir = build(ws, "tinybert", temperature=2.0, **SMALL)
    assert stage.name == "one_stage"
    got, s, t, _ = evaluated(built, train_dir)
    step = built.step_module
    assert step.fit_dense.weight.shape == (32, 16)
    mask = first_batch(train_dir)["input_mask"].numpy()
    assert 0 < mask.mean() < 1  # some padding, which the terms leave out
    att = sum(
        pair_mse(masked(s["attention_scores"][i]), masked(t["attention_scores"][2 * i + 1]), mask) for i in range(2)
    )
    hidden = sum(token_mse(project(step, s["hidden_states"][i]), t["hidden_states"][2 * i], mask) for i in range(3))
    check(got, {"att_loss": att, "hidden_loss": hidden, "pred_loss": soft_ce(s["logits"], t["logits"], 2.0)})


def test_tinybert_two_stage_splits_the_terms_and_takes_its_own_intermediate_settings(ws):
    intermediate, stage, _ = build(ws, "tinybert", tinybert_mode="two_stage", **SMALL)
    assert stage.name == "intermediate" and not stage.final and stage.model_dir.name == "intermediate_stage"
    assert (stage.settings.epochs, stage.settings.learning_rate, stage.settings.select_best) == (20, 5e-5, False)
    assert [t.name for t in intermediate.step_module.terms] == ["att_loss", "hidden_loss"]
    _, stage, _ = build(
        ws, "tinybert", 0, tinybert_mode="two_stage", intermediate_epochs=3, intermediate_learning_rate=1e-4, **SMALL
    )
    assert (stage.settings.epochs, stage.settings.learning_rate) == (3, 1e-4)
    io.write_new_model_dir(
        ws / "models" / "tinybert" / "intermediate_stage",
        intermediate.model,
        intermediate.model_config,
        ws / "teacher" / io.VOCAB_FILE,
        {"name": "tinybert"},
        task={"name": "SST-2"},
        data={"format": "bert"},
    )
    prediction, stage, train_dir = build(ws, "tinybert", 1, tinybert_mode="two_stage", **SMALL)
    assert stage.name == "prediction" and stage.final and stage.init.name == "intermediate_stage"
    assert stage.settings.learning_rate == 1e-2 and prediction.step_module.fit_dense is None
    got, s, t, _ = evaluated(prediction, train_dir)
    check(got, {"pred_loss": soft_ce(s["logits"], t["logits"], 1.0)})
    for name, value in intermediate.model.state_dict().items():  # the prediction stage starts from stage 1
        assert np.array_equal(prediction.model.state_dict()[name].numpy(), value.numpy()), name


def test_tinybert_loads_a_general_tinyberts_own_fit_dense(ws, tmp_path):
    """B3: an HF General TinyBERT's fit_dense initialises the projection instead of a random one."""
    from distil.models.hf_format import write_safetensors

    built, _, _ = build(ws, "tinybert", **SMALL)
    state = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        if k.startswith("bert.embeddings")
        else k: v.numpy()
        for k, v in built.model.state_dict().items()
    }
    state = {k[len("bert.") :] if k.startswith("bert.") else k: v for k, v in state.items() if "classifier" not in k}
    rng = np.random.default_rng(0)
    state["fit_dense.weight"] = rng.normal(size=(32, 16)).astype(np.float32)
    state["fit_dense.bias"] = rng.normal(size=(32,)).astype(np.float32)
    general = tmp_path / "general_tinybert"
    general.mkdir()
    write_safetensors(general / "model.safetensors", state)
    config = {
        **{k: v for k, v in built.model_config.items() if k != "num_labels"},
        "model_type": "bert",
        "architectures": ["TinyBertForPreTraining"],
    }
    (general / "config.json").write_text(json.dumps(config))
    (general / "vocab.txt").write_bytes((ws / "teacher" / io.VOCAB_FILE).read_bytes())
    loaded, _, _ = build(ws, "tinybert", student_model=general)
    assert np.array_equal(loaded.step_module.fit_dense.weight.numpy(), state["fit_dense.weight"])
    assert np.array_equal(loaded.step_module.fit_dense.bias.numpy(), state["fit_dense.bias"])
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    write_safetensors(wrong / "model.safetensors", {**state, "fit_dense.weight": state["fit_dense.weight"][:8]})
    for name in ("config.json", "vocab.txt"):
        (wrong / name).write_bytes((general / name).read_bytes())
    with pytest.raises(Exception, match="fit_dense has shapes"):
        build(ws, "tinybert", student_model=wrong)


def test_theseus_recipe_at_rate_one_is_the_successors_cross_entropy(ws):
    built, stage, train_dir = build(ws, "theseus", successor_layers=2)
    assert stage.name == "replacement" and built.eager
    step = built.step_module.eval()  # eval: every block runs its successor, no dropout
    batch = first_batch(train_dir)
    got = {k: float(v.numpy()) for k, v in step(batch, 1.0).items()}
    s = numpy_outputs(built.model, batch)
    check(got, {"hard_label_loss": cross_entropy(s["logits"], batch["label_ids"].numpy())})


def teacher_of(built):
    step = built.step_module
    return step.encoder.predecessors if hasattr(step, "encoder") else step.teacher


SOFT = {"hard_label_loss", "pred_loss"}


@pytest.mark.parametrize(
    "name, options, terms",
    [
        ("kd", SMALL, SOFT),
        ("distilled_lstm", {"lstm_embedding_size": 8, "lstm_hidden_size": 8, "lstm_fc_size": 8}, SOFT),
        ("bert_pkd", {"layer_list": "1,3"}, SOFT | {"hidden_loss"}),
        ("tinybert", SMALL, {"att_loss", "hidden_loss", "pred_loss"}),
        ("theseus", {"successor_layers": 2}, {"hard_label_loss"}),
    ],
)
def test_the_teacher_stays_frozen_inside_the_step_while_the_student_learns(ws, tmp_path, name, options, terms):
    built, stage, train_dir = build(ws, name, **options)
    teacher = teacher_of(built)
    before = {k: v.numpy().copy() for k, v in teacher.state_dict().items()}
    student_before = {k: v.numpy().copy() for k, v in built.model.state_dict().items()}
    state = train_briefly(built, stage, train_dir, tmp_path, max_steps=4, log_every=2)
    logged = state.losses[-1]  # every term by name, and their sum
    assert state.step == 4 and set(logged) == {"step", "loss", *terms}
    assert logged["loss"] == pytest.approx(sum(logged[t] for t in terms), rel=1e-4, abs=1e-6)
    assert all(not p.requires_grad for p in teacher.parameters())
    if name != "theseus":  # Theseus's predecessors run in training mode (the paper's code)
        assert not teacher.training and all(not m.training for m in teacher.modules())
    for key, value in teacher.state_dict().items():
        assert np.array_equal(value.numpy(), before[key]), f"teacher weight {key} changed"
    moved = [k for k, v in built.model.state_dict().items() if not np.array_equal(v.numpy(), student_before[k])]
    assert moved, "the student did not learn"


def test_kd_with_only_the_soft_term_moves_the_student_toward_the_teacher(ws, tmp_path):
    built, stage, train_dir = build(ws, "kd", kd_alpha=0.0, pred_distill_mode="kl", **SMALL)
    batch = first_batch(train_dir)

    def divergence():
        built.model.eval()
        s, t = numpy_outputs(built.model, batch), numpy_outputs(built.step_module.teacher, batch)
        return kl(s["logits"], t["logits"], 1.0)

    start = divergence()
    train_briefly(built, stage, train_dir, tmp_path, epochs=4, warmup_proportion=0.0)
    assert divergence() < 0.5 * start, (start, divergence())


@pytest.mark.parametrize("name, options", [("kd", SMALL), ("theseus", {"successor_layers": 2})])
def test_train_state_keeps_no_frozen_teacher_and_a_resume_restores_the_rest(ws, tmp_path, name, options):
    built, stage, train_dir = build(ws, name, **options)
    train_briefly(built, stage, train_dir, tmp_path, max_steps=4)
    saved = flow.load(str(tmp_path / "train_state" / "graph"))["step_module"]
    frozen = {k for k, p in built.step_module.named_parameters() if not p.requires_grad}
    assert frozen and not frozen & set(saved)
    assert set(saved) == set(built.step_module.state_dict()) - frozen
    trained = {k: v.numpy().copy() for k, v in built.step_module.state_dict().items()}
    state_file = tmp_path / "train_state" / "state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "step": 3, "finished": False}))  # as if killed after step 3
    resumed, stage, _ = build(ws, name, **options)
    runner = build_step_runner(
        resumed.step_module, OFRecordDataset(train_dir, 16).names, stage.settings, 4, eager=resumed.eager
    )
    Trainer(
        resumed.model,
        resumed.step_module,
        stage.settings,
        train_dir,
        {},
        TASK.metrics,
        tmp_path,
        "cpu",
        eager=resumed.eager,
    )._load_train_state(runner)
    for key, value in resumed.step_module.state_dict().items():  # trained weights back, the teacher from its dir
        assert np.array_equal(value.numpy(), trained[key]), key
    again, stage, _ = build(ws, name, **options)
    assert train_briefly(again, stage, train_dir, tmp_path, max_steps=4).step == 4  # the run resumes and ends


def padding_zeroed_pair_mse(s, t, mask):
    """The attention term as first written (before bench/bench_tinybert.py): padding keys' scores set to 0 by
    masked_fill, then squared differences weighted by a (B, 1, S, S) mask of real pairs."""
    real = flow.cast(mask, flow.float32)
    kept = real.unsqueeze(1).unsqueeze(-1) * real.unsqueeze(1).unsqueeze(2)
    s, t = s.masked_fill(s <= -100, 0.0), t.masked_fill(t <= -100, 0.0)
    return (flow.square(s - t) * kept).sum() / (kept.sum() * s.shape[1])


def broadcast_token_mse(s, t, mask):
    """The hidden-state term as first written: squared differences weighted by a (B, S, 1) mask."""
    kept = flow.cast(mask, flow.float32).unsqueeze(-1)
    return (flow.square(s - t) * kept).sum() / (kept.sum() * s.shape[-1])


def first_written_terms(step, batch):
    """TinyBERT's terms on the step's own outputs through the first-written formulas."""
    s = step.student(*inputs(batch))
    t = step.teacher(*inputs(batch))
    mask = batch["input_mask"]
    values = {}
    for term in step.terms:
        if term.operator == "att_distill":
            values[term.name] = sum(
                padding_zeroed_pair_mse(s["attention_scores"][i], t["attention_scores"][2 * i + 1].detach(), mask)
                for i in range(2)
            )
        elif term.operator == "layer_distill":
            values[term.name] = sum(
                broadcast_token_mse(step.fit_dense(s["hidden_states"][i]), t["hidden_states"][2 * i].detach(), mask)
                for i in range(3)
            )
        else:
            values[term.name] = step.term_value(term, s, t, batch)
    return values


def term_gradients(step, values):
    """{term: (value, {parameter: gradient})}, each term back-propagated on its own."""
    trained = [(name, p) for name, p in step.named_parameters() if p.requires_grad]
    out = {}
    for name, value in values.items():
        for _, p in trained:
            p.grad = None
        value.backward(retain_graph=True)
        out[name] = (float(value.numpy()), {n: p.grad.numpy().copy() for n, p in trained if p.grad is not None})
    return out


@pytest.mark.parametrize("mode", ["one_stage", "intermediate"])
def test_tinybert_terms_and_gradients_equal_the_first_written_formulas(ws, mode):
    """The attention and hidden-state terms as computed for speed (sums before masks, no masked_fill) give the
    losses and gradients of the plain masked formulas on a fixed batch with padding, term by term."""
    built, stage, train_dir = build(
        ws, "tinybert", tinybert_mode="two_stage" if mode == "intermediate" else mode, **SMALL
    )
    assert stage.name == mode
    step = built.step_module.eval()
    batch = first_batch(train_dir)
    assert 0 < batch["input_mask"].numpy().mean() < 1
    fast = term_gradients(step, step(batch))
    plain = term_gradients(step, first_written_terms(step, batch))
    assert sorted(fast) == sorted(plain) == sorted(t.name for t in step.terms)
    for name, (value, grads) in plain.items():
        assert fast[name][0] == pytest.approx(value, rel=1e-6, abs=1e-6), name
        assert sorted(fast[name][1]) == sorted(grads) and grads, name
        for parameter, grad in grads.items():
            np.testing.assert_allclose(
                fast[name][1][parameter], grad, rtol=1e-5, atol=1e-6, err_msg=f"{name}: {parameter}"
            )
