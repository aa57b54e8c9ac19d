"""Bad input through the commands a user runs: each must fail with status 2 and one error line naming the
culprit (no traceback), leave no partial output behind and leave every existing good output byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PYTHON, ROOT, run
from distil.algorithms.options import TeacherOptions
from distil.algorithms.teacher import Teacher
from distil.data import ofrecord
from distil.data.convert import ConvertConfig, convert_task
from distil.fileio import file_sha256
from distil.models import io
from distil.runtime import import_oneflow
from distil.train.run import RunConfig, train_algorithm
from distil.train.settings import TrainSettings
from glue_fixtures import FILLER, LAYOUTS, write_learnable_sst2

SCRIPTS = ROOT / "scripts"
# 3 layers, so that 2-layer students (TinyBERT) and two teacher layers (BERT-PKD) cannot be mapped uniformly
TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "intermediate_size": 48,
    "max_position_embeddings": 64,
}
N_TRAIN, N_DEV, BATCH = 64, 24, 8
STEPS_PER_EPOCH = N_TRAIN // BATCH
TEACHER_ID = "SST-2_epoch-1_lr-1e-3_wd-0.01"  # the fixture's fine-tuned teacher
TRAINED_ID = "SST-2_epoch-1_lr-1e-3_wd-0.0001"  # what run_train_teacher.sh would save with train_env()


@pytest.fixture(scope="module")
def ws(tmp_path_factory, vocab_file):
    """Learnable SST-2 (seq 32, no LSTM data), a random 3-layer "pretrained" BERT and a teacher fine-tuned from it."""
    root = tmp_path_factory.mktemp("bad_input")
    write_learnable_sst2(root / "glue", N_TRAIN, N_DEV)
    convert_task(
        "SST-2",
        ConvertConfig(root / "glue", root / "data", vocab_file, max_seq_length=32, lstm_seq_length=0, workers=1),
    )
    io.init_bert(root / "pretrained", vocab_file, TINY, seed=0)
    settings = TrainSettings(epochs=1, learning_rate=1e-3, weight_decay=0.01, batch_size=16, eval_batch_size=16)
    train_algorithm(
        Teacher(),
        RunConfig(
            task="SST-2",
            data_root=root / "data",
            settings=settings,
            model_save_dir=root / "models" / "finetuned_teacher" / TEACHER_ID,
            options=TeacherOptions(pretrained_model=root / "pretrained"),
        ),
    )
    return root


# ---------------------------------------------------------------- helpers


def teacher_dir(ws: Path) -> Path:
    return ws / "models" / "finetuned_teacher" / TEACHER_ID


def snapshot(path: Path) -> dict[str, str | None] | None:
    """The SHA-256 of every file's bytes and every folder (hidden ones included) under `path`; None if absent."""
    if not path.exists():
        return None
    if path.is_file():
        return {"": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        for p in sorted(path.rglob("*"))
    }


def failed_cleanly(result: subprocess.CompletedProcess, *names) -> str:
    """Status 2, nothing on stdout, no traceback, exactly one ERROR line, naming every one of `names`."""
    everything = result.stdout + result.stderr
    assert result.returncode == 2, everything[-3000:]
    assert "Traceback" not in everything, everything[-3000:]
    assert result.stdout.strip() == "", result.stdout[-2000:]
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr[-3000:]
    for name in names:
        assert str(name) in errors[0], (str(name), errors[0])
    return errors[0]


def script(name: str, *args: str, env: dict) -> subprocess.CompletedProcess:
    return run(["bash", str(SCRIPTS / name), *args], env=env)


def glue_env(glue: Path, data: Path, **extra) -> dict:
    return {"GLUE_DIR": str(glue), "DATA_ROOT": str(data), "MAX_SEQ_LENGTH": "32", "LSTM_SEQ_LENGTH": "0", **extra}


def train_env(ws: Path, data: Path, models: Path, **extra) -> dict:
    return {
        "PRETRAINED_MODEL": str(ws / "pretrained"),
        "DATA_ROOT": str(data),
        "MODELS_ROOT": str(models),
        "EPOCH": "1",
        "LEARNING_RATE": "1e-3",
        "BATCH_SIZE": str(BATCH),
        **extra,
    }


def write_small_stsb(root: Path, sizes: dict[str, int]) -> Path:
    """An STS-B folder with GLUE's header lines (scores 0-5; no test.tsv unless sized)."""
    folder = root / "STS-B"
    folder.mkdir(parents=True)
    for file, n in sizes.items():
        header = LAYOUTS["STS-B"][file][0]
        rows = []
        for i in range(n):
            fields = [f"x{i}"] * len(header)
            fields[header.index("sentence1")] = " ".join(FILLER[i % 7 : i % 7 + 5])
            fields[header.index("sentence2")] = " ".join(FILLER[i % 5 + 3 : i % 5 + 9])
            if "score" in header:
                fields[header.index("score")] = f"{(i * 0.37) % 5:.3f}"
            rows.append("\t".join(fields))
        (folder / file).write_text("\n".join(["\t".join(header), *rows]) + "\n", encoding="utf-8")
    return folder


def copy_glue(ws: Path, target: Path) -> Path:
    shutil.copytree(ws / "glue", target)
    return target / "SST-2"


def good_data(ws: Path, target: Path) -> Path:
    """An earlier, good conversion in `target` (the output a failed re-run must leave alone)."""
    shutil.copytree(ws / "data", target)
    return target


def edit_line(path: Path, number: int, change) -> str:
    """Replace 1-based line `number` of a TSV by `change(line)`; returns the old line."""
    lines = path.read_text(encoding="utf-8").split("\n")
    old = lines[number - 1]
    lines[number - 1] = change(old)
    path.write_text("\n".join(lines), encoding="utf-8")
    return old


def truncate_mid_record(part: Path, record: int = 2) -> int:
    """Cut a part file in the middle of record `record` (0-based), as an interrupted copy would; returns its offset."""
    offset = 0
    for index, body in enumerate(ofrecord.iter_frames(part)):
        if index == record:
            break
        offset += 8 + len(body)
    with open(part, "r+b") as f:
        f.truncate(offset + 8 + 10)
    return offset


# ---------------------------------------------------------------- 1. unknown task


def test_unknown_task_is_named_with_the_valid_tasks_and_nothing_is_written(ws, tmp_path):
    data_before = snapshot(ws / "data")
    converted = script("glue_process.sh", "SST-3", env=glue_env(ws / "glue", tmp_path / "ofrecord"))
    failed_cleanly(converted, "unknown task 'SST-3'", "valid tasks: CoLA, SST-2, MRPC")
    assert not (tmp_path / "ofrecord").exists()
    trained = script("run_train_teacher.sh", "SST-3", env=train_env(ws, ws / "data", tmp_path / "models"))
    failed_cleanly(trained, "unknown task 'SST-3'", "SST-2")
    assert not (tmp_path / "models").exists()
    assert snapshot(ws / "data") == data_before


# ---------------------------------------------------------------- 2-5. bad GLUE files and vocabularies


def test_missing_dev_split_names_the_file_and_keeps_the_earlier_conversion(ws, tmp_path):
    folder = copy_glue(ws, tmp_path / "glue")
    (folder / "dev.tsv").unlink()
    data = good_data(ws, tmp_path / "ofrecord")
    before = snapshot(data)
    result = script("glue_process.sh", "SST-2", env=glue_env(tmp_path / "glue", data))
    failed_cleanly(result, "missing eval split", folder / "dev.tsv")
    assert snapshot(data) == before


@pytest.mark.parametrize("file, line", [("train.tsv", 7), ("dev.tsv", 3)])
def test_a_line_that_is_not_utf8_is_named_and_the_earlier_conversion_kept(ws, tmp_path, file, line):
    folder = copy_glue(ws, tmp_path / "glue")
    lines = (folder / file).read_bytes().split(b"\n")
    lines[line - 1] = lines[line - 1][:4] + b"\xe9t\xe9" + lines[line - 1][4:]  # Latin-1 bytes in a UTF-8 file
    (folder / file).write_bytes(b"\n".join(lines))
    data = good_data(ws, tmp_path / "ofrecord")
    before = snapshot(data)
    result = script("glue_process.sh", "SST-2", env=glue_env(tmp_path / "glue", data))
    failed_cleanly(result, f"{folder / file}:{line}: not UTF-8 text (byte 0xe9 at byte 5 of the line)")
    assert snapshot(data) == before and sorted(p.name for p in data.iterdir()) == ["SST-2"]


def test_missing_split_message_lists_only_the_files_that_are_required(ws, tmp_path):
    folder = copy_glue(ws, tmp_path / "glue")
    (folder / "dev.tsv").unlink()
    error = failed_cleanly(
        script("glue_process.sh", "SST-2", env=glue_env(tmp_path / "glue", tmp_path / "out")), folder / "dev.tsv"
    )
    assert "train_aug.tsv" not in error, error


def test_malformed_training_row_is_skipped_with_file_line_and_counted(ws, tmp_path):
    folder = copy_glue(ws, tmp_path / "glue")
    sentence = edit_line(folder / "train.tsv", 5, lambda line: line + "\textra").split("\t")[0]
    rows = len((folder / "train.tsv").read_text().splitlines()) - 1
    data = tmp_path / "ofrecord"
    result = script("glue_process.sh", "SST-2", env=glue_env(tmp_path / "glue", data))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (
        f"skipped a malformed row: {folder / 'train.tsv'}:5: expected 2 tab-separated columns, found 3" in result.stderr
        and sentence in result.stderr
    )
    summary = json.loads(result.stdout)
    assert summary["SST-2_skipped_rows"] == {"train": 1} and summary["SST-2"]["train"] == rows - 1
    meta = json.loads((data / "SST-2" / "train" / "meta.json").read_text())
    assert meta["skipped_rows"] == 1 and meta["skipped_row_locations"] == [f"{folder / 'train.tsv'}:5"]
    assert meta["num_examples"] == rows - 1
    assert json.loads((data / "SST-2" / "eval" / "meta.json").read_text())["skipped_rows"] == 0


def test_row_with_a_wrong_column_count_is_an_error_with_strict(ws, tmp_path):
    folder = copy_glue(ws, tmp_path / "glue")
    sentence = edit_line(folder / "train.tsv", 5, lambda line: line + "\textra").split("\t")[0]
    data = good_data(ws, tmp_path / "ofrecord")
    before = snapshot(data)
    result = script("glue_process.sh", "SST-2", "--strict", env=glue_env(tmp_path / "glue", data))
    error = failed_cleanly(
        result, f"{folder / 'train.tsv'}:5:", "expected 2 tab-separated columns, found 3", sentence, "extra"
    )
    assert error.count(":5:") == 1
    assert snapshot(data) == before


def test_label_outside_the_tasks_list_gives_file_line_label_and_text(ws, tmp_path):
    folder = copy_glue(ws, tmp_path / "glue")
    sentence = edit_line(folder / "dev.tsv", 7, lambda line: line.rsplit("\t", 1)[0] + "\t2").split("\t")[0]
    data = good_data(ws, tmp_path / "ofrecord")
    before = snapshot(data)
    result = script("glue_process.sh", "SST-2", env=glue_env(tmp_path / "glue", data))
    failed_cleanly(result, f"{folder / 'dev.tsv'}:7:", "unknown label '2' for SST-2", "valid: 0, 1", sentence)
    assert snapshot(data) == before
    skipping = script("glue_process.sh", "SST-2", "--skip_bad_eval_rows", env=glue_env(tmp_path / "glue", data))
    assert skipping.returncode == 0 and json.loads(skipping.stdout)["SST-2_skipped_rows"] == {"eval": 1}


@pytest.mark.parametrize("score", ["nan", "inf"])
def test_regression_label_that_is_not_a_finite_number_is_refused(tmp_path, score):
    dev = write_small_stsb(tmp_path / "glue", {"train.tsv": 12, "dev.tsv": 6, "test.tsv": 3}) / "dev.tsv"
    edit_line(dev, 3, lambda line: line.rsplit("\t", 1)[0] + f"\t{score}")
    result = script("glue_process.sh", "STS-B", env=glue_env(tmp_path / "glue", tmp_path / "ofrecord"))
    failed_cleanly(result, f"{dev}:3:", f"'{score}'")
    assert not (tmp_path / "ofrecord" / "STS-B").exists()


def test_missing_and_empty_vocab_files_are_named(ws, tmp_path):
    data = good_data(ws, tmp_path / "ofrecord")
    before = snapshot(data)
    missing = tmp_path / "no_vocab.txt"
    result = script("glue_process.sh", "SST-2", env=glue_env(ws / "glue", data, VOCAB_FILE=str(missing)))
    failed_cleanly(result, f"cannot read vocab file {missing}", "No such file")
    empty = tmp_path / "empty_vocab.txt"
    empty.write_text("")
    result = script("glue_process.sh", "SST-2", env=glue_env(ws / "glue", data, VOCAB_FILE=str(empty)))
    failed_cleanly(result, f"vocab file {empty} is empty")
    assert snapshot(data) == before


# ---------------------------------------------------------------- 6-7. damaged OFRecords for training and eval


@pytest.fixture(scope="module")
def damaged_data_runs(ws, tmp_path_factory):
    """A training run and an eval on damaged data: part files truncated mid-record ("truncated"; and
    "rehashed", whose meta.json was then updated to the truncated files' sizes and checksums, so only the
    record framing shows the damage), or a meta.json whose num_examples was edited ("meta").

    Each kind damages both train/ and eval/. Training goes to a models root that already holds a good model;
    eval targets the fixture's teacher. Snapshots are taken before the commands run.
    """
    base = tmp_path_factory.mktemp("damaged")
    runs = {}
    for kind in ("truncated", "rehashed", "meta"):
        data = good_data(ws, base / kind / "data")
        split = {name: data / "SST-2" / name for name in ("train", "eval")}
        cut_at = {}
        if kind in ("truncated", "rehashed"):
            for name, path in split.items():
                cut_at[name] = truncate_mid_record(path / "part-00000")
                if kind == "rehashed":
                    meta = json.loads((path / "meta.json").read_text())
                    part = path / "part-00000"
                    meta["parts"][0].update(bytes=part.stat().st_size, sha256=file_sha256(part))
                    (path / "meta.json").write_text(json.dumps(meta, indent=2))
        else:
            for path, delta in ((split["train"], 1), (split["eval"], -1)):
                meta = json.loads((path / "meta.json").read_text())
                meta["num_examples"] += delta
                (path / "meta.json").write_text(json.dumps(meta, indent=2))
        models = base / kind / "models"
        shutil.copytree(teacher_dir(ws), models / "finetuned_teacher" / TEACHER_ID)
        before = {"data": snapshot(data), "models": snapshot(models), "teacher": snapshot(teacher_dir(ws))}
        trained = script("run_train_teacher.sh", "SST-2", env=train_env(ws, data, models))
        evaluated = script(
            "run_eval_teacher.sh",
            "0",
            "SST-2",
            TEACHER_ID,
            env={"DATA_ROOT": str(data), "MODELS_ROOT": str(ws / "models")},
        )
        runs[kind] = {
            "data": data,
            "models": models,
            "split": split,
            "before": before,
            "train": trained,
            "eval": evaluated,
            "cut_at": cut_at,
        }
    return runs


def test_truncated_part_file_stops_training_and_eval_naming_the_file(damaged_data_runs, ws):
    case = damaged_data_runs["truncated"]
    train_part, eval_part = (case["split"][s] / "part-00000" for s in ("train", "eval"))
    failed_cleanly(case["train"], train_part, "truncated")
    failed_cleanly(case["eval"], eval_part, "truncated")
    assert snapshot(case["data"]) == case["before"]["data"]
    assert snapshot(teacher_dir(ws)) == case["before"]["teacher"]  # no results_eval.json rewritten
    assert snapshot(case["models"] / "finetuned_teacher" / TEACHER_ID) == {
        k[len(f"finetuned_teacher/{TEACHER_ID}/") :]: v
        for k, v in case["before"]["models"].items()
        if k.startswith(f"finetuned_teacher/{TEACHER_ID}/")
    }


def test_truncation_is_found_by_the_record_framing_when_meta_json_agrees(damaged_data_runs, ws):
    case = damaged_data_runs["rehashed"]
    for name in ("train", "eval"):
        failed_cleanly(
            case[name],
            case["split"][name] / "part-00000",
            f"truncated or corrupt record at byte {case['cut_at'][name]}",
        )
    assert case["cut_at"]["train"] > 0 and case["cut_at"]["eval"] > 0
    assert snapshot(case["data"]) == case["before"]["data"]
    assert snapshot(teacher_dir(ws)) == case["before"]["teacher"]


def test_meta_json_disagreeing_with_the_records_stops_training_and_eval(damaged_data_runs, ws):
    case = damaged_data_runs["meta"]
    failed_cleanly(
        case["train"], case["split"]["train"] / "meta.json", f"num_examples {N_TRAIN + 1}", f"({N_TRAIN} records)"
    )
    failed_cleanly(case["eval"], case["split"]["eval"] / "meta.json", f"num_examples {N_DEV - 1}", f"({N_DEV} records)")
    assert snapshot(case["data"]) == case["before"]["data"]
    assert snapshot(teacher_dir(ws)) == case["before"]["teacher"]


@pytest.mark.parametrize("kind", ["truncated", "rehashed", "meta"])
def test_training_on_damaged_data_leaves_no_model_dir(damaged_data_runs, kind):
    case = damaged_data_runs[kind]
    assert case["train"].returncode == 2
    assert not (case["models"] / "finetuned_teacher" / TRAINED_ID).exists(), sorted(
        p.name for p in (case["models"] / "finetuned_teacher" / TRAINED_ID).iterdir()
    )
    assert snapshot(case["models"]) == case["before"]["models"]


def test_overwrite_with_damaged_data_keeps_the_earlier_model(damaged_data_runs, ws, tmp_path):
    case = damaged_data_runs["truncated"]
    model = tmp_path / "models" / "finetuned_teacher" / TRAINED_ID
    shutil.copytree(teacher_dir(ws), model)
    before = snapshot(model)
    result = script(
        "run_train_teacher.sh", "SST-2", "--overwrite", env=train_env(ws, case["data"], tmp_path / "models")
    )
    failed_cleanly(result, case["split"]["train"] / "part-00000")
    assert snapshot(model) == before


# ---------------------------------------------------------------- 8-9. broken model directories


def test_model_dir_without_config_json_is_named_by_script_and_cli(ws, tmp_path):
    model = tmp_path / "no_config"
    shutil.copytree(teacher_dir(ws), model)
    (model / "config.json").unlink()
    before = snapshot(model)
    by_script = script(
        "run_eval_teacher.sh", "0", "SST-2", "ignored", env={"MODEL_DIR": str(model), "DATA_ROOT": str(ws / "data")}
    )
    failed_cleanly(by_script, f"{model} is not a model directory", "config.json")
    by_cli = run([PYTHON, "-m", "distil", "eval", str(model), "--data_root", str(ws / "data")])
    failed_cleanly(by_cli, f"{model} is not a model directory", "config.json")
    assert snapshot(model) == before


def test_checkpoint_with_a_mismatched_tensor_shape_names_tensor_and_shapes(ws, tmp_path):
    models = tmp_path / "models"
    model = models / "finetuned_teacher" / TEACHER_ID
    shutil.copytree(teacher_dir(ws), model)
    config = json.loads((model / "config.json").read_text())
    config["model"]["intermediate_size"] = 50
    (model / "config.json").write_text(json.dumps(config, indent=2))
    before = snapshot(model)
    result = script(
        "run_eval_teacher.sh", "0", "SST-2", TEACHER_ID, env={"MODELS_ROOT": str(models), "DATA_ROOT": str(ws / "data")}
    )
    failed_cleanly(
        result,
        model / "weights",
        "tensor 'bert.encoder.layer.0.intermediate.dense.weight'",
        "shape (48, 32) in the checkpoint but (50, 32) in the model",
    )
    assert snapshot(model) == before  # results_eval.json untouched


# ---------------------------------------------------------------- 10. indivisible layer counts


@pytest.fixture(scope="module")
def indivisible_runs(ws, tmp_path_factory):
    """TinyBERT with a 2-layer student and BERT-PKD from teacher layers 0,2, both against the 3-layer teacher."""
    base = tmp_path_factory.mktemp("indivisible")
    env = {
        "FT_BERT_BASE_DIR": str(teacher_dir(ws)),
        "DATA_ROOT": str(ws / "data"),
        "MODELS_ROOT": str(base / "models"),
        "EPOCH": "1",
        "LEARNING_RATE": "1e-3",
        "BATCH_SIZE": str(BATCH),
    }
    teacher_before = snapshot(teacher_dir(ws))
    tinybert = script(
        "run_train_student_tinybert.sh",
        "SST-2",
        "--student_num_hidden_layers",
        "2",
        "--student_hidden_size",
        "16",
        "--student_num_attention_heads",
        "4",
        "--student_intermediate_size",
        "24",
        env=env,
    )
    pkd = script("run_train_student_bert_pkd.sh", "SST-2", env={**env, "LAYER_LIST": "0,2"})
    return {"tinybert": tinybert, "bert_pkd": pkd, "models": base / "models", "teacher_before": teacher_before}


def test_indivisible_layer_counts_fail_before_writing_anything(indivisible_runs, ws):
    for algorithm in ("tinybert", "bert_pkd"):
        failed_cleanly(indivisible_runs[algorithm], "teacher has 3 layers, student 2", "3 is not divisible by 2")
    assert not indivisible_runs["models"].exists()
    assert snapshot(teacher_dir(ws)) == indivisible_runs["teacher_before"]


def test_indivisible_layer_counts_name_the_flag_to_change(indivisible_runs):
    for algorithm, flag in (("tinybert", "--student_num_hidden_layers"), ("bert_pkd", "--layer_list")):
        error = failed_cleanly(indivisible_runs[algorithm])
        assert flag in error or flag.lstrip("-").upper() in error, error
        assert "explicit mapping" not in error, error


# ---------------------------------------------------------------- 11. eval of a model id that does not exist


@pytest.fixture(scope="module")
def unknown_id_runs(ws, tmp_path_factory):
    """A models root with SST-2 and MNLI teachers and SST-2 and MRPC students; both eval scripts asked for 'nope'."""
    models = tmp_path_factory.mktemp("unknown_id") / "models"
    mnli = models / "finetuned_teacher" / "MNLI_epoch-1_lr-1e-3_wd-0.01"
    for target in (
        models / "finetuned_teacher" / TEACHER_ID,
        mnli,
        models / "student_model" / "SST-2" / "bert-kd-distl_sst",
        models / "student_model" / "MRPC" / "bert-kd-distl_mrpc",
    ):
        shutil.copytree(teacher_dir(ws), target)
    config = json.loads((mnli / "config.json").read_text())
    config["task"] = {**config["task"], "name": "MNLI"}
    (mnli / "config.json").write_text(json.dumps(config, indent=2))
    before = snapshot(models)
    env = {"MODELS_ROOT": str(models), "DATA_ROOT": str(ws / "data")}
    return {
        "teacher": script("run_eval_teacher.sh", "0", "SST-2", "nope", env=env),
        "student": script("run_eval_student_kd.sh", "0", "SST-2", "nope", env=env),
        "models": models,
        "before": before,
    }


def test_unknown_model_id_lists_the_ids_that_exist(unknown_id_runs):
    models = unknown_id_runs["models"]
    failed_cleanly(unknown_id_runs["teacher"], f"no model nope in {models / 'finetuned_teacher'}", TEACHER_ID)
    error = failed_cleanly(
        unknown_id_runs["student"],
        f"no model nope in {models / 'student_model' / 'SST-2'}",
        "models there: bert-kd-distl_sst",
    )
    assert "bert-kd-distl_mrpc" not in error
    assert snapshot(models) == unknown_id_runs["before"]


def test_unknown_teacher_id_lists_only_that_tasks_teachers(unknown_id_runs):
    error = failed_cleanly(unknown_id_runs["teacher"], TEACHER_ID)
    assert "MNLI_epoch-1_lr-1e-3_wd-0.01" not in error, error


# ---------------------------------------------------------------- 12. killed mid-epoch, then restarted


def _stop(pid: int) -> None:
    """SIGSTOP `pid` and wait until it really is stopped."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("T", "t", "Z"):
                    return
        except FileNotFoundError:
            return
        time.sleep(0.0005)


def _children(pid: int) -> list:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _hidden(model_dir: Path) -> list:
    return sorted(p.name for p in model_dir.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def killed_run(ws, tmp_path_factory):
    """run_train_teacher.sh (3 epochs, checkpoint every 2 steps) SIGKILLed mid-epoch once epoch 1 is saved,
    preferably while it writes a checkpoint; then restarted with the same command."""
    base = tmp_path_factory.mktemp("killed")
    model_dir = base / "teacher"
    env = train_env(ws, ws / "data", base / "models", EPOCH="3", MODEL_SAVE_DIR=str(model_dir))
    command = ["bash", str(SCRIPTS / "run_train_teacher.sh"), "SST-2", "--checkpoint_every", "2"]
    state_file = model_dir / "train_state" / "state.json"
    with open(base / "killed.stderr", "w") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=stderr, env=dict(os.environ, PYTHONPATH=str(ROOT / "src"), **env)
        )
    killed_at, mid_save, deadline = None, False, time.time() + 240
    while process.poll() is None and time.time() < deadline:
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            time.sleep(0.002)
            continue
        step = state["step"]
        # after epoch 1, and the next checkpoint is a mid-epoch one (not the epoch-end save of weights)
        if step > STEPS_PER_EPOCH and step % STEPS_PER_EPOCH and (step + 2) % STEPS_PER_EPOCH and not state["finished"]:
            trainer = _children(process.pid)  # the training process under the script's supervisor
            if len(trainer) != 1:
                continue
            _stop(trainer[0])
            mid_save = any(name.startswith(".train_state") for name in _hidden(model_dir))
            if mid_save or step > 2 * STEPS_PER_EPOCH:
                killed_at, trainer_pid = step, trainer[0]
                process.kill()  # the whole job, as a power cut would: the supervisor, and with it the trainer
                break
            os.kill(trainer[0], signal.SIGCONT)
        time.sleep(0.001)
    if process.poll() is None:
        process.kill()
    process.wait()
    assert killed_at is not None, (
        "the run ended before it could be killed mid-epoch: " + (base / "killed.stderr").read_text()[-2000:]
    )
    gone = time.time() + 10
    while _alive(trainer_pid) and time.time() < gone:  # the trainer dies with its supervisor (no orphan)
        time.sleep(0.01)
    assert not _alive(trainer_pid)
    killed_state = json.loads(state_file.read_text())
    weights = snapshot(model_dir / "weights")
    hidden_after_kill = _hidden(model_dir)
    # what the weights on disk score on dev, right after the kill (before anything else touches them)
    from distil.train.trainer import evaluate

    scored = evaluate(
        io.load_model(model_dir), {"eval": ws / "data" / "SST-2" / "eval"}, ("accuracy",), 32, "cpu", model_dir
    )["accuracy"]
    resumed = run(command, env=env)
    return {
        "model_dir": model_dir,
        "killed_state": killed_state,
        "weights": weights,
        "scored": scored,
        "mid_save": mid_save,
        "hidden_after_kill": hidden_after_kill,
        "resumed": resumed,
        "final_state": json.loads(state_file.read_text()),
        "final_weights": snapshot(model_dir / "weights"),
        "hidden_after_restart": _hidden(model_dir),
    }


def test_killed_run_resumes_finishes_and_keeps_the_best_weights(killed_run):
    killed, final, total = killed_run["killed_state"], killed_run["final_state"], 3 * STEPS_PER_EPOCH
    assert STEPS_PER_EPOCH < killed["step"] < total and killed["step"] % STEPS_PER_EPOCH and not killed["finished"]
    assert killed["best_epoch"] >= 1 and killed_run["weights"], killed
    best_before = killed["history"][killed["best_epoch"] - 1]
    assert best_before["epoch"] == killed["best_epoch"] and best_before["saved"]
    # the weights on disk at the restart are the saved best epoch's: they score what that epoch scored
    assert killed_run["scored"] == best_before["metrics"]["accuracy"] == killed["best_value"]

    resumed = killed_run["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {killed_run['model_dir']} from step {killed['step']} of {total}" in resumed.stderr
    assert final["finished"] and final["step"] == total and [h["epoch"] for h in final["history"]] == [1, 2, 3]
    assert final["history"][: len(killed["history"])] == killed["history"]
    results = json.loads(resumed.stdout)
    assert results["best_epoch"] == final["best_epoch"] and results["accuracy"] == final["best_value"]
    graph_state = import_oneflow().load(str(killed_run["model_dir"] / "train_state" / "graph"))
    steps = [v for k, v in graph_state.items() if k.endswith("TrainStep")]
    assert [int(s.numpy()[0]) for s in steps] == [total]  # the LR schedule's counter continued, not restarted
    later_saves = [h for h in final["history"] if h["epoch"] > killed["best_epoch"] and h["saved"]]
    if not later_saves:
        assert final["best_epoch"] == killed["best_epoch"]
        assert killed_run["final_weights"] == killed_run["weights"]
    else:  # replaced only by a later epoch that scored >= the best so far
        running = killed["best_value"]
        for entry in later_saves:
            assert entry["metrics"]["accuracy"] >= running
            running = entry["metrics"]["accuracy"]
        assert final["best_epoch"] == later_saves[-1]["epoch"]


def test_restart_removes_what_the_killed_run_was_writing(killed_run):
    if not killed_run["mid_save"]:
        pytest.skip("the kill did not land while a checkpoint was being written")
    assert killed_run["hidden_after_kill"], "precondition: the kill interrupted a checkpoint write"
    assert killed_run["resumed"].returncode == 0
    assert killed_run["hidden_after_restart"] == []


# ---------------------------------------------------------------- 13. output folders that cannot be created


def test_output_dir_that_cannot_be_created_is_named(ws, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    converted = script("glue_process.sh", "SST-2", env=glue_env(ws / "glue", blocker / "ofrecord"))
    failed_cleanly(converted, blocker / "ofrecord")
    target = blocker / "models" / "teacher"
    trained = script(
        "run_train_teacher.sh", "SST-2", env=train_env(ws, ws / "data", tmp_path / "models", MODEL_SAVE_DIR=str(target))
    )
    failed_cleanly(trained, target)
    under_models_root = script("run_train_teacher.sh", "SST-2", env=train_env(ws, ws / "data", blocker / "models"))
    failed_cleanly(under_models_root, blocker / "models" / "finetuned_teacher")
    assert blocker.read_text() == "not a folder\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_result_dir_that_cannot_be_created_fails_before_training(ws, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    model = tmp_path / "teacher"
    result = script(
        "run_train_teacher.sh",
        "SST-2",
        "--max_steps",
        "2",
        env=train_env(
            ws, ws / "data", tmp_path / "models", MODEL_SAVE_DIR=str(model), RESULT_DIR=str(blocker / "results")
        ),
    )
    failed_cleanly(result, blocker / "results")
    assert "epoch 1" not in result.stderr  # it did not train first
    assert not model.exists()


# ---------------------------------------------------------------- a non-finite loss


def test_non_finite_loss_is_one_error_line(ws, tmp_path, vocab_file, record_pb2):
    write_small_stsb(tmp_path / "glue", {"train.tsv": 16, "dev.tsv": 6})
    convert_task(
        "STS-B",
        ConvertConfig(
            tmp_path / "glue", tmp_path / "data", vocab_file, max_seq_length=32, lstm_seq_length=0, workers=1
        ),
    )
    split = tmp_path / "data" / "STS-B" / "train"  # give the first record a NaN score, keeping meta.json true
    meta = json.loads((split / "meta.json").read_text())
    part = split / meta["parts"][0]["name"]
    body = next(ofrecord.iter_frames(part))
    record = record_pb2.OFRecord()
    record.ParseFromString(body)
    record.feature["label_ids"].float_list.value[0] = float("nan")
    part.write_bytes(ofrecord.frame(record.SerializeToString()) + part.read_bytes()[8 + len(body) :])
    meta["parts"][0].update(bytes=part.stat().st_size, sha256=file_sha256(part))
    (split / "meta.json").write_text(json.dumps(meta, indent=2))
    result = script(
        "run_train_teacher.sh",
        "STS-B",
        "--log_every",
        "1",
        env=train_env(ws, tmp_path / "data", tmp_path / "models", BATCH_SIZE="16"),
    )
    failed_cleanly(result, "non-finite loss")
