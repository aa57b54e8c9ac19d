"""The teacher-output cache: cached training equals uncached training, and a cache is never read when it could
be wrong (another teacher, other data, another sequence length, damaged or half-written files)."""

from __future__ import annotations

import io as io_module
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from distil.algorithms import get_algorithm
from distil.data import ofrecord
from distil.data.convert import ConvertConfig, convert_task
from distil.data.dataset import OFRecordDataset
from distil.data.tasks import get_task
from distil.models import io
from distil.runtime import import_oneflow
from distil.train import teacher_cache
from distil.train.graph import MODEL_INPUTS
from distil.train.placement import Placement
from distil.train.run import RunConfig, data_dirs, train_algorithm
from distil.train.settings import TrainSettings
from glue_fixtures import write_learnable_sst2
from test_recipes import SMALL as STUDENT, write_teacher

flow = import_oneflow()
TASK = get_task("SST-2")
SETTINGS = TrainSettings(epochs=2, learning_rate=2e-3, batch_size=16, eval_batch_size=24, log_every=1)


@pytest.fixture(scope="module")
def ws(tmp_path_factory, vocab_file) -> Path:
    """SST-2-shaped data (BERT and BiLSTM views) at seq 32 and at seq 24, and a random teacher with varied logits."""
    root = tmp_path_factory.mktemp("cache")
    write_learnable_sst2(root / "glue", 100, 30)
    for seq in (32, 24):
        convert_task(
            "SST-2",
            ConvertConfig(
                root / "glue", root / f"data{seq}", vocab_file, max_seq_length=seq, lstm_seq_length=12, workers=1
            ),
        )
    write_teacher(root / "teacher", vocab_file)
    return root


def run_config(ws: Path, name: str, model_dir: Path, data: str = "data32", **options) -> RunConfig:
    algorithm = get_algorithm(name)
    options = {"teacher_model": ws / "teacher", **options}
    return RunConfig(
        task="SST-2",
        data_root=ws / data,
        model_save_dir=model_dir,
        settings=SETTINGS,
        options=algorithm.options(**options),
    )


def trained(ws: Path, name: str, model_dir: Path, cache: str, **options):
    """(losses per step, final weights) of a whole run with --teacher_cache `cache`."""
    run = run_config(ws, name, model_dir, **options)
    run = RunConfig(**{**run.__dict__, "settings": TrainSettings(**{**SETTINGS.__dict__, "teacher_cache": cache})})
    train_algorithm(get_algorithm(name), run)
    history = json.loads((model_dir / "train_history.json").read_text())
    weights = flow.load(str(model_dir / io.WEIGHTS_DIR))
    return history["losses"], {k: v.numpy() for k, v in weights.items()}


CACHED = {
    "kd": {**STUDENT},  # the student's and the BiLSTM's teacher view
    "distilled_lstm": {"lstm_seq_length": 12, "lstm_embedding_size": 16, "lstm_hidden_size": 16, "lstm_fc_size": 16},
}


@pytest.fixture(scope="module")
def from_the_cache(ws, tmp_path_factory):
    """name -> a whole run of that algorithm with --teacher_cache auto, trained once for the module (the KD run
    serves the equality test and the part-file test): its model directory, losses, weights, what
    distil.train.teacher_cache logged, and how often each file was hashed (distil.data.dataset.file_sha256)."""
    from collections import Counter

    from distil.data import dataset

    runs = {}

    def run(name: str) -> SimpleNamespace:
        if name not in runs:
            hashed: Counter = Counter()
            real_sha256 = dataset.file_sha256

            def counting_sha256(path):
                hashed[Path(path)] += 1
                return real_sha256(path)

            model_dir = tmp_path_factory.mktemp(f"cached_{name}") / "m"
            log, logger = io_module.StringIO(), logging.getLogger("distil.train.teacher_cache")
            handler, level = logging.StreamHandler(log), logger.level
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            try:
                with pytest.MonkeyPatch.context() as patch:
                    patch.setattr(dataset, "file_sha256", counting_sha256)
                    losses, weights = trained(ws, name, model_dir, "auto", **CACHED[name])
            finally:
                logger.removeHandler(handler)
                logger.setLevel(level)
            runs[name] = SimpleNamespace(
                dir=model_dir, losses=losses, weights=weights, log=log.getvalue(), hashed=hashed
            )
        return runs[name]

    return run


@pytest.mark.parametrize("name", sorted(CACHED))
def test_training_from_the_cache_equals_training_with_the_teacher(ws, tmp_path, name, from_the_cache):
    plain_losses, plain_weights = trained(ws, name, tmp_path / "plain", "off", **CACHED[name])
    assert not (tmp_path / "plain" / teacher_cache.CACHE_DIR).exists()
    cached = from_the_cache(name)
    cached_losses, cached_weights = cached.losses, cached.weights
    assert (cached.dir / teacher_cache.CACHE_DIR / teacher_cache.FINGERPRINT_FILE).is_file()
    assert "teacher cache: 100 examples x logits" in cached.log
    assert len(cached_losses) == len(plain_losses) == 14  # (the final stage's)
    for plain, cached in zip(plain_losses, cached_losses):
        assert set(plain) == set(cached)
        for key in plain:
            assert cached[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-6), (plain["step"], key)
    assert set(cached_weights) == set(plain_weights)
    for key, value in plain_weights.items():
        np.testing.assert_allclose(cached_weights[key], value, rtol=1e-4, atol=1e-5, err_msg=key)


def test_a_run_checks_each_part_file_of_its_splits_once(ws, from_the_cache):
    """The train and dev splits are opened (meta.json against parts, checksums) once and passed down to the
    teacher's pass, the training reader and every evaluation; the cache it writes is checked as it is written.
    (The module's KD run from the cache, which the equality test above compares with the teacher's.)"""
    from collections import Counter

    run = from_the_cache("kd")
    assert (run.dir / teacher_cache.CACHE_DIR / teacher_cache.FINGERPRINT_FILE).is_file()
    parts = {
        ws / "data32" / "SST-2" / split / part["name"]
        for split in ("train", "eval")
        for part in ofrecord.read_meta(ws / "data32" / "SST-2" / split)["parts"]
    }
    assert run.hashed == Counter(parts)


def test_tinybert_caches_only_its_prediction_stage(ws, tmp_path):
    algorithm = get_algorithm("tinybert")
    run = run_config(ws, "tinybert", tmp_path / "m", **STUDENT, tinybert_mode="two_stage")
    train_dir, _ = data_dirs(run.data_root, TASK)
    intermediate, prediction = algorithm.stages(run)
    first = algorithm.build(run, intermediate, TASK, ofrecord.read_meta(train_dir))
    io.write_new_model_dir(prediction.init, first.model, first.model_config, first.vocab_file, {"name": "stage 1"})
    second = algorithm.build(run, prediction, TASK, ofrecord.read_meta(train_dir))
    assert (first.step_module.cacheable_outputs(), second.step_module.cacheable_outputs()) == ((), ("logits",))


@pytest.mark.parametrize(
    "name,options",
    [
        ("tinybert", {}),
        ("bert_pkd", {"layer_list": "1,3"}),
        ("bert_pkd", {"layer_list": "1,3", "pkd_loss": "patient"}),
        ("teacher", {}),
    ],
)
def test_recipes_reading_per_token_teacher_states_or_no_teacher_are_not_cached(ws, tmp_path, name, options):
    algorithm = get_algorithm(name)
    run = (
        run_config(ws, name, tmp_path / "m", **({**STUDENT, **options} if name == "tinybert" else options))
        if name != "teacher"
        else RunConfig(
            task="SST-2",
            data_root=ws / "data32",
            model_save_dir=tmp_path / "m",
            settings=SETTINGS,
            options=algorithm.options(pretrained_model=ws / "teacher"),
        )
    )
    stage = algorithm.stages(run)[0]
    train_dir, _ = data_dirs(run.data_root, TASK)
    built = algorithm.build(run, stage, TASK, ofrecord.read_meta(train_dir))
    assert built.step_module.cacheable_outputs() == ()
    assert teacher_cache.prepare(built.step_module, train_dir, tmp_path / "m", Placement(), "auto", 24).dir == train_dir
    assert not (tmp_path / "m" / teacher_cache.CACHE_DIR).exists()


def kd_step(ws: Path, data: str = "data32"):
    algorithm = get_algorithm("kd")
    run = run_config(ws, "kd", ws / "unused", data, **STUDENT)
    train_dir, _ = data_dirs(run.data_root, TASK)
    built = algorithm.build(run, algorithm.stages(run)[0], TASK, ofrecord.read_meta(train_dir))
    return built.step_module, train_dir


def cached_logits(cache: Path) -> np.ndarray:
    data = OFRecordDataset(cache, 100, features=("cached_logits",))
    return data()["cached_logits"].numpy()


def teacher_logits(step, train_dir: Path) -> np.ndarray:
    batch = OFRecordDataset(train_dir, 100)()
    with flow.no_grad():
        return step.teacher(batch["input_ids"], batch["segment_ids"], batch["input_mask"])["logits"].numpy()


def test_a_cache_is_reused_only_for_the_same_teacher_data_and_sequence_length(ws, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="distil.train.teacher_cache")
    step, train_dir = kd_step(ws)
    cache = teacher_cache.prepare(step, train_dir, tmp_path, Placement(), "auto", 24).dir
    assert cache == tmp_path / teacher_cache.CACHE_DIR and step.cached == ("logits",)
    np.testing.assert_allclose(cached_logits(cache), teacher_logits(step, train_dir), rtol=1e-5, atol=1e-6)
    made = (cache / teacher_cache.FINGERPRINT_FILE).stat().st_mtime_ns

    step, train_dir = kd_step(ws)  # same teacher, same data: reused as it is
    teacher_cache.prepare(step, train_dir, tmp_path, Placement(), "auto", 24)
    assert "reusing" in caplog.text and (cache / teacher_cache.FINGERPRINT_FILE).stat().st_mtime_ns == made

    step, train_dir = kd_step(ws)  # another teacher
    with flow.no_grad():
        step.teacher.classifier.bias.add_(1.0)
    teacher_cache.prepare(step, train_dir, tmp_path, Placement(), "auto", 24)
    np.testing.assert_allclose(cached_logits(cache), teacher_logits(step, train_dir), rtol=1e-5, atol=1e-6)

    step, train_dir = kd_step(ws, "data24")  # another sequence length
    teacher_cache.prepare(step, train_dir, tmp_path, Placement(), "auto", 24)
    assert ofrecord.read_meta(cache)["features"]["input_ids"]["shape"] == [24]
    np.testing.assert_allclose(cached_logits(cache), teacher_logits(step, train_dir), rtol=1e-5, atol=1e-6)


def test_other_data_of_the_same_shape_gets_its_own_cache(ws, tmp_path, vocab_file):
    write_learnable_sst2(tmp_path / "glue", 100, 30, seed=7)
    convert_task("SST-2", ConvertConfig(tmp_path / "glue", tmp_path / "data", vocab_file, max_seq_length=32, workers=1))
    step, train_dir = kd_step(ws)
    teacher_cache.prepare(step, train_dir, tmp_path / "m", Placement(), "auto", 24)
    other = tmp_path / "data" / "SST-2" / "train"
    step, _ = kd_step(ws)
    cache = teacher_cache.prepare(step, other, tmp_path / "m", Placement(), "auto", 24).dir
    np.testing.assert_allclose(cached_logits(cache), teacher_logits(step, other), rtol=1e-5, atol=1e-6)
    assert json.loads((cache / ofrecord.META_FILE).read_text())["teacher_cache_of"] == str(other)


def test_a_damaged_or_half_written_cache_is_never_read(ws, tmp_path, monkeypatch):
    step, train_dir = kd_step(ws)
    written = []
    original = ofrecord.frame

    def dies_midway(record: bytes) -> bytes:
        written.append(record)
        if len(written) == 40:
            raise KeyboardInterrupt("killed while writing the cache")
        return original(record)

    monkeypatch.setattr(ofrecord, "frame", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        teacher_cache.prepare(step, train_dir, tmp_path, Placement(), "auto", 24)
    monkeypatch.setattr(ofrecord, "frame", original)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither a cache nor its temporary folder

    (tmp_path / f".{teacher_cache.CACHE_DIR}.tmp-999").mkdir()  # what a SIGKILLed writer leaves
    step, train_dir = kd_step(ws)
    cache = teacher_cache.prepare(step, train_dir, tmp_path, Placement(), "auto", 24).dir
    assert sorted(p.name for p in tmp_path.iterdir()) == [teacher_cache.CACHE_DIR]

    part = cache / ofrecord.part_name(0)
    part.write_bytes(part.read_bytes()[:-5])  # damaged after it was written
    step, train_dir = kd_step(ws)
    teacher_cache.prepare(step, train_dir, tmp_path, Placement(), "auto", 24)
    np.testing.assert_allclose(cached_logits(cache), teacher_logits(step, train_dir), rtol=1e-5, atol=1e-6)


def test_the_onnxruntime_pass_caches_oneflows_logits_and_leaves_no_onnx_file(ws, tmp_path, caplog):
    """--teacher_cache onnxruntime: the teacher exported and run by onnxruntime; the cache holds OneFlow's logits
    within the export's tolerance, serves a later auto run as it is, and the temporary ONNX file is gone."""
    caplog.set_level(logging.INFO, logger="distil.train.teacher_cache")
    step, train_dir = kd_step(ws)
    cache = teacher_cache.prepare(step, train_dir, tmp_path, Placement(), "onnxruntime", 24).dir
    assert "the teacher's pass runs on onnxruntime" in caplog.text and step.cached == ("logits",)
    np.testing.assert_allclose(cached_logits(cache), teacher_logits(step, train_dir), rtol=0, atol=1e-4)
    assert np.abs(cached_logits(cache)).max() > 0.1
    assert sorted(p.name for p in tmp_path.iterdir()) == [teacher_cache.CACHE_DIR]
    teacher_cache.prepare(kd_step(ws)[0], train_dir, tmp_path, Placement(), "auto", 24)
    assert "reusing" in caplog.text


def test_the_onnxruntime_pass_cuts_batches_to_their_length_and_gives_the_uncut_logits_in_file_order(
    ws, tmp_path, monkeypatch
):
    """--teacher_cache onnxruntime sorts by length and cuts batches as the OneFlow pass does: the uncut logits."""
    from distil.predict import OnnxEngine

    step, train_dir = kd_step(ws)
    names = tuple(f"{step.teacher_view}{name}" for name in MODEL_INPUTS)
    widths, run_onnx = [], OnnxEngine.__call__

    def recorded(engine: OnnxEngine, batch):
        widths.append(batch["input_ids"].shape[1])
        return run_onnx(engine, batch)

    monkeypatch.setattr(OnnxEngine, "__call__", recorded)

    def logits() -> np.ndarray:
        data = OFRecordDataset(train_dir, 8, features=names)
        return teacher_cache.onnxruntime_pass(
            step.teacher, data, step.teacher_view, tmp_path, Placement(), lambda: None
        )["logits"]

    cut = logits()
    assert len(widths) == 13 and widths == sorted(widths) and max(widths) < 32  # 100 examples by 8, sorted by length
    widths.clear()
    monkeypatch.setattr(OnnxEngine, "cuts", False)
    full = logits()
    assert widths == [32] * 13
    np.testing.assert_allclose(cut, full, rtol=0, atol=1e-5)
    assert np.abs(full[1:] - full[:-1]).max() > 100 * 1e-5  # neighbouring rows differ: a mix-up would show
    np.testing.assert_allclose(full, teacher_logits(step, train_dir), rtol=0, atol=1e-4)


def test_teacher_cache_flag_is_checked():
    from distil.errors import UsageError

    with pytest.raises(UsageError, match="--teacher_cache must be one of auto, onnxruntime, off, got 'on'"):
        TrainSettings(teacher_cache="on")
