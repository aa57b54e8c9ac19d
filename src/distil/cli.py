"""The command line: `distil <command> ...` (the console script pip installs) or `python -m distil <command> ...`.
The only place that parses arguments."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from distil import crash, launch
from distil.algorithms.options import OPTIONS, str2bool
from distil.errors import UsageError

log = logging.getLogger("distil")
DESCRIPTION = (
    "炼知 (distil): fine-tune a BERT teacher on a GLUE task and distil it into small students (KD, Distilled-BiLSTM, "
    "BERT-PKD, TinyBERT, BERT-of-Theseus, recipes, general distillation) on OneFlow. COMMAND -h lists a command's "
    "flags."
)

# Modules of the package's extras (pyproject.toml; requirements-<extra>.txt), imported only by the commands that need them
EXTRA_OF_MODULE = {
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxsim": "onnx",
    "oneflow_onnx": "onnx",
    "uvicorn": "serve",
    "starlette": "serve",
    "prometheus_client": "serve",
}


def _key_value(text: str) -> tuple:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=URL, got '{text}'")
    return key, value


def _add_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download-glue", help="download and unpack GLUE (original download_glue_data.py)")
    p.add_argument("--data_dir", type=Path, default=Path("data/glue_data"), help="where task folders go")
    p.add_argument(
        "--tasks",
        default="all",
        help="'all' or a comma list of CoLA,SST,MRPC,QQP,STS,MNLI,SNLI,QNLI,RTE,WNLI,diagnostic",
    )
    p.add_argument(
        "--path_to_mrpc",
        type=Path,
        default=None,
        help="folder with msr_paraphrase_train.txt and msr_paraphrase_test.txt (else downloaded)",
    )
    p.add_argument("--mirror", default=None, help="base URL that replaces every download URL's host and path")
    p.add_argument(
        "--url",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=URL",
        help="override one URL of the table (repeatable)",
    )
    p.add_argument("--retries", type=int, default=5, help="attempts per file")
    p.add_argument("--backoff", type=float, default=1.0, help="seconds before the first retry (doubles)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds without data before a retry")
    p.add_argument("--force", action="store_true", help="replace task folders that already exist")
    p.set_defaults(run=_run_download)


def _run_download(args: argparse.Namespace) -> dict:
    from distil.data import glue_download

    tasks = glue_download.parse_tasks(args.tasks)
    urls = glue_download.resolve_urls(args.mirror, dict(args.url))
    return glue_download.download_glue(
        args.data_dir,
        tasks,
        path_to_mrpc=args.path_to_mrpc,
        urls=urls,
        retries=args.retries,
        backoff=args.backoff,
        timeout=args.timeout,
        force=args.force,
    )


def _add_glue_process(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("glue-process", help="convert GLUE TSV files to OFRecords (original glue_process.py)")
    p.add_argument("task", nargs="?", default="SST-2", help="task name, or 'all' for every task present")
    p.add_argument("--glue_dir", type=Path, default=Path("data/glue_data"), help="GLUE TSV root")
    p.add_argument("--output_dir", type=Path, default=Path("data/glue_ofrecord"), help="OFRecord root")
    p.add_argument(
        "--vocab_file",
        type=Path,
        default=None,
        help="BERT WordPiece vocab (default: the bert-base-uncased vocab shipped with distil)",
    )
    p.add_argument("--max_seq_length", type=int, default=128, help="BERT sequence length")
    p.add_argument("--do_lower_case", type=str2bool, default=True, help="lower-case and strip accents")
    p.add_argument(
        "--lstm_seq_length",
        type=int,
        default=32,
        help="Distilled-BiLSTM sequence length (0: do not write <TASK>_lstm_<N>)",
    )
    p.add_argument("--lstm_vocab_size", type=int, default=10000, help="most frequent training words kept")
    p.add_argument("--records_per_part", type=int, default=16384, help="records per part-NNNNN file")
    p.add_argument("--workers", type=int, default=0, help="processes (0: one per CPU core)")
    p.add_argument(
        "--strict",
        action="store_true",
        help="a malformed training row (wrong column count, unknown label) is an error; by default "
        "it is skipped with a warning naming file:line and counted in meta.json",
    )
    p.add_argument(
        "--skip_bad_eval_rows",
        action="store_true",
        help="skip malformed dev/test rows too (by default they are an error: metrics would change)",
    )
    p.set_defaults(run=_run_glue_process)


def _run_glue_process(args: argparse.Namespace) -> dict:
    from distil.data.convert import DEFAULT_VOCAB, ConvertConfig, convert_task
    from distil.data.tasks import TASKS

    for flag in ("max_seq_length", "records_per_part"):
        if getattr(args, flag) < (3 if flag == "max_seq_length" else 1):
            raise UsageError(f"--{flag} {getattr(args, flag)} is too small")
    if args.lstm_seq_length < 0 or args.lstm_vocab_size < 1 or args.workers < 0:
        raise UsageError("--lstm_seq_length and --workers must be >= 0, --lstm_vocab_size >= 1")
    config = ConvertConfig(
        glue_dir=args.glue_dir,
        output_dir=args.output_dir,
        vocab_file=args.vocab_file or DEFAULT_VOCAB,
        max_seq_length=args.max_seq_length,
        do_lower_case=args.do_lower_case,
        lstm_seq_length=args.lstm_seq_length,
        lstm_vocab_size=args.lstm_vocab_size,
        records_per_part=args.records_per_part,
        workers=args.workers,
        strict=args.strict,
        skip_bad_eval_rows=args.skip_bad_eval_rows,
    )
    if args.task.lower() != "all":
        return convert_task(args.task, config)
    present = [t.name for t in TASKS.values() if (args.glue_dir / t.folder).is_dir()]
    if not present:
        raise UsageError(
            f"{args.glue_dir} holds no GLUE task folder (expected some of: "
            f"{', '.join(t.folder for t in TASKS.values())})"
        )
    summary: dict = {}
    for name in present:
        summary.update(convert_task(name, config))
    return summary


def _add_pregenerate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pregenerate",
        help="pack raw text into OFRecord train/dev splits for general distillation "
        "(original pregenerate_training_data.py)",
    )
    p.add_argument(
        "--corpus", type=Path, required=True, help="UTF-8 text: one sentence per line, a blank line between documents"
    )
    p.add_argument(
        "--vocab_file",
        type=Path,
        default=None,
        help="the teacher's WordPiece vocab (default: the bert-base-uncased vocab shipped with distil)",
    )
    p.add_argument("--output_dir", type=Path, default=Path("data/pretrain_ofrecord"), help="gets train/ and dev/")
    p.add_argument("--max_seq_length", type=int, default=128, help="positions per sequence, [CLS] and [SEP] included")
    p.add_argument("--do_lower_case", type=str2bool, default=True, help="lower-case and strip accents")
    p.add_argument(
        "--dev_fraction",
        type=float,
        default=0.01,
        help="share of the documents, the last ones, written to dev/ (at least one of two or more; 0: no dev split)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty --output_dir")
    p.set_defaults(run=_run_pregenerate)


def _run_pregenerate(args: argparse.Namespace) -> dict:
    from distil.data.convert import DEFAULT_VOCAB
    from distil.data.pregenerate import pregenerate

    return pregenerate(
        args.corpus,
        args.vocab_file or DEFAULT_VOCAB,
        args.output_dir,
        args.max_seq_length,
        args.do_lower_case,
        args.dev_fraction,
        overwrite=args.overwrite,
    )


def _add_settings(p: argparse.ArgumentParser) -> None:
    """One flag per TrainSettings field (typed from its default), plus the original's spellings."""
    from distil.train.settings import ALIASES, TrainSettings

    group = p.add_argument_group("training settings")
    for field in dataclasses.fields(TrainSettings):
        flags = [f"--{field.name}", *ALIASES.get(field.name, ())]
        if "_" in field.name:
            flags.append(f"--{field.name.replace('_', '-')}")
        from_table = field.name in TABLE_SETTINGS
        kind = str2bool if isinstance(field.default, bool) else type(field.default)
        group.add_argument(
            *flags,
            dest=field.name,
            type=kind,
            default=None if from_table else field.default,
            help="default: the algorithm's per-task table"
            if from_table
            else f"default {field.default}"
            if field.default != ""
            else "default: none",
        )


def _device(name: str, fp16: bool = False) -> str:
    """The run's device, checked before anything runs: `--device cuda` without a GPU, or `--use_fp16` on
    the CPU, is a usage error."""
    from distil.train.placement import resolve_device

    return resolve_device(name, fp16)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model with one algorithm (teacher fine-tuning, distillation)")
    p.add_argument("--algorithm", required=True, choices=tuple(OPTIONS), help="what to train")
    p.add_argument("--task", "--task_name", dest="task", default="SST-2", help="GLUE task")
    p.add_argument("--data_root", type=Path, default=Path("data/glue_ofrecord"), help="OFRecord root")
    p.add_argument(
        "--model_save_dir",
        type=Path,
        default=None,
        help="the model directory (default: <models_root>/finetuned_teacher/<id> for teachers, "
        "<models_root>/student_model/<TASK>/<id> for students)",
    )
    p.add_argument("--models_root", type=Path, default=Path("models"), help="root of the default model dirs")
    p.add_argument("--result_dir", default="", help="where results_eval.json goes ('' = the model dir)")
    p.add_argument(
        "--serve_for_online",
        type=str2bool,
        default=False,
        help="after training keep only what inference needs (drops train_state/)",
    )
    p.add_argument(
        "--export_onnx",
        type=str2bool,
        default=False,
        help="after training also write MODEL_DIR/model.onnx (python -m distil export-onnx)",
    )
    p.add_argument("--overwrite", action="store_true", help="delete an earlier run in --model_save_dir first")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when visible")
    p.add_argument(
        "--max_restarts",
        type=int,
        default=3,
        help="when a training process dies from a signal (SIGSEGV, SIGKILL, ...), start the job again "
        "from its last saved state, at most this many times (0: never; MAX_RESTARTS) [3]",
    )
    _add_algorithm_options(p)
    _add_settings(p)
    launch.add_flags(p)
    p.set_defaults(run=_run_train)


def algorithm_flags() -> dict[str, dataclasses.Field]:
    """Every algorithm's options by flag name (the first declaration of a shared name gives its type)."""
    flags: dict[str, dataclasses.Field] = {}
    for options in OPTIONS.values():
        for field in dataclasses.fields(options):
            flags.setdefault(field.name, field)
    return flags


def _add_algorithm_options(p: argparse.ArgumentParser) -> None:
    """One flag per field of the algorithms' options dataclasses; unset flags take the algorithm's default."""
    group = p.add_argument_group("algorithm options (defaults per algorithm)")
    for name, field in algorithm_flags().items():
        defaults = {
            algorithm: options.__dataclass_fields__[name].default
            for algorithm, options in OPTIONS.items()
            if name in options.__dataclass_fields__
        }
        shown = ", ".join(
            f"{algorithm} {'-' if default is None else default}" for algorithm, default in defaults.items()
        )
        group.add_argument(
            f"--{name}", type=field.metadata["parse"], default=None, help=f"{field.metadata['help']} [{shown}]"
        )


TABLE_SETTINGS = ("learning_rate", "epochs", "weight_decay")  # defaults come from the algorithm's task table


def _algorithm_options(algorithm, args: argparse.Namespace, task):
    """The algorithm's options dataclass from the flags given; flags of other algorithms are ignored loudly."""
    from distil.algorithms.teacher import default_teacher

    given = {name: getattr(args, name) for name in algorithm_flags() if getattr(args, name) is not None}
    fields = {f.name for f in dataclasses.fields(algorithm.options)}
    for name in sorted(set(given) - fields):
        log.warning("--%s is not an option of %s; ignored", name, algorithm.name)
    options = algorithm.options(**{k: v for k, v in given.items() if k in fields})
    if "teacher_model" in fields and options.teacher_model is None:
        options = dataclasses.replace(options, teacher_model=default_teacher(args.models_root, task))
    return options


def _run_train(args: argparse.Namespace) -> dict:
    from distil.algorithms import get_algorithm
    from distil.train.run import RunConfig, train_algorithm
    from distil.train.settings import TrainSettings

    algorithm = get_algorithm(args.algorithm)
    task = algorithm.task(args.task)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSettings)}
    if any(values[k] is None for k in TABLE_SETTINGS):
        values.update({k: v for k, v in zip(TABLE_SETTINGS, algorithm.defaults(task)) if values[k] is None})
    settings = TrainSettings(**values)
    options = _algorithm_options(algorithm, args, task)
    model_id = algorithm.model_id(task, settings, options)
    model_dir = args.model_save_dir or algorithm.default_dir(args.models_root, task, model_id)
    overwrite = args.overwrite and crash.attempt() == 0
    if args.overwrite and not overwrite:
        log.info("restarted after a crash: --overwrite applied to the first attempt only; resuming")
    run = RunConfig(
        task=task.name,
        data_root=args.data_root,
        model_save_dir=model_dir,
        settings=settings,
        options=options,
        result_dir=Path(args.result_dir) if args.result_dir else None,
        serve_for_online=args.serve_for_online,
        export_onnx=args.export_onnx,
        overwrite=overwrite,
        device=_device(args.device, settings.use_fp16),
    )
    results = train_algorithm(algorithm, run)
    log.info("model id: %s (in %s)", model_dir.name, model_dir)
    if args.model_save_dir is None:
        log.info("evaluate it with: bash scripts/%s 0 %s %s", algorithm.eval_script, task.name, model_dir.name)
    else:
        log.info("evaluate it with: python -m distil eval %s", model_dir)
    return results


def _add_pkd_student(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pkd-student", help="BERT-PKD: build a student model dir from chosen teacher layers")
    p.add_argument("--task", "--task_name", dest="task", default="SST-2")
    p.add_argument("--teacher_model", type=Path, default=None, help="default: the teacher table's model id")
    p.add_argument("--models_root", type=Path, default=Path("models"))
    p.add_argument("--student_model", type=Path, required=True, help="the model directory to create")
    p.add_argument(
        "--layer_list",
        default=OPTIONS["bert_pkd"].layer_list,
        help="0-based teacher layers, one per student layer (default: BERT-PKD's)",
    )
    p.set_defaults(run=_run_pkd_student)


def _run_pkd_student(args: argparse.Namespace) -> dict:
    from distil.algorithms.students import generate_student
    from distil.algorithms.teacher import default_teacher
    from distil.data.tasks import get_task

    teacher = args.teacher_model or default_teacher(args.models_root, get_task(args.task))
    return generate_student(teacher, args.student_model, args.layer_list)


def _add_augment(sub: argparse._SubParsersAction) -> None:
    from distil.data.augment import DEFAULT_M, DEFAULT_N, DEFAULT_P, FALLBACK_N, GLOVE_WORDS, MAX_SEQ_LENGTH

    p = sub.add_parser("augment", help="TinyBERT data augmentation: writes <glue_dir>/<TASK>/train_aug.tsv")
    p.add_argument(
        "--pretrained_model",
        type=Path,
        required=True,
        help="Hugging Face BERT folder with the masked-LM head (config.json, model.safetensors or "
        "pytorch_model.bin, vocab.txt), e.g. bert-base-uncased",
    )
    p.add_argument("--glove_embs", type=Path, required=True, help="GloVe text file (e.g. glove.840B.300d.txt)")
    p.add_argument("--glue_dir", type=Path, required=True, help="GLUE TSV root")
    p.add_argument("--task_name", required=True, help="task whose train.tsv is augmented (e.g. SST-2, RTE)")
    p.add_argument(
        "--N",
        type=int,
        default=None,
        help=f"draws per sentence (default per task as the original: {DEFAULT_N}; others {FALLBACK_N})",
    )
    p.add_argument("--M", type=int, default=DEFAULT_M, help="candidates per word (MLM top-M / GloVe neighbours)")
    p.add_argument("--p", type=float, default=DEFAULT_P, help="probability of replacing a candidate word")
    p.add_argument("--seed", type=int, default=42, help="random seed")
    p.add_argument("--output", type=Path, default=None, help="output file (default <glue_dir>/<TASK>/train_aug.tsv)")
    p.add_argument(
        "--max_seq_length",
        type=int,
        default=MAX_SEQ_LENGTH,
        help="MLM input length cap (also capped by the model's max_position_embeddings)",
    )
    p.add_argument(
        "--batch_size",
        type=int,
        default=64,
        help="masked sequences per MLM call (at most; fewer for sequences over 128 tokens)",
    )
    p.add_argument("--glove_words", type=int, default=GLOVE_WORDS, help="GloVe lines read")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when visible")
    p.set_defaults(run=_run_augment)


def _run_augment(args: argparse.Namespace) -> dict:
    from distil.data.augment import AugmentConfig, run

    fields = {f.name for f in dataclasses.fields(AugmentConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    return run(AugmentConfig(**{**values, "device": _device(args.device)}))


def _add_make_demo_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-demo-data", help="write the demo task (SST-2 format) and its vocab into a folder")
    p.add_argument("root", type=Path)
    p.add_argument("--train", type=int, default=3000)
    p.add_argument("--dev", type=int, default=600)
    p.add_argument("--seed", type=int, default=13)
    p.set_defaults(run=lambda args: _make_demo_data(args))


def _make_demo_data(args: argparse.Namespace) -> dict:
    from distil.data.demo import write_demo_task

    return write_demo_task(args.root, args.train, args.dev, args.seed)


def _add_length_buckets(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--length_buckets",
        default="auto",
        help="auto: batches of examples of similar length, cut to their length bucket (the same "
        "results, less work; one process); off: every batch at the data's max_seq_length",
    )


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="compare every model under the given folders with the teacher")
    p.add_argument("dirs", type=Path, nargs="+", help="model directories or folders holding them")
    p.add_argument("--data_root", type=Path, default=Path("data/glue_ofrecord"), help="OFRecord root")
    p.add_argument(
        "--output", type=Path, default=None, help="writes OUTPUT.md/.json/.png (default: <first dir>/report)"
    )
    p.add_argument("--eval_batch_size", type=int, default=32)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    _add_length_buckets(p)
    launch.add_flags(p)
    p.set_defaults(run=_run_report)


def _run_report(args: argparse.Namespace) -> str:
    from distil.report import build_report, find_model_dirs, to_markdown, write_report

    device = _device(args.device)
    rows = build_report(find_model_dirs(args.dirs), args.data_root, args.eval_batch_size, device, args.length_buckets)
    files = write_report(rows, args.output or args.dirs[0] / "report")
    return to_markdown(rows) + "\n" + "\n".join(f"{kind}: {path}" for kind, path in files.items())


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model directory on its task's dev split(s)")
    p.add_argument("model_dir", type=Path)
    p.add_argument("--task", "--task_name", dest="task", default=None, help="check the model is for this task")
    p.add_argument("--data_root", type=Path, default=Path("data/glue_ofrecord"), help="OFRecord root")
    p.add_argument("--result_dir", default="", help="where results_eval.json goes ('' = the model dir)")
    p.add_argument("--eval_batch_size", "--eval_batch_size_per_device", type=int, default=32)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--use_fp16", type=str2bool, default=False, help="mixed precision (CUDA only)")
    _add_length_buckets(p)
    launch.add_flags(p)
    p.set_defaults(run=_run_eval)


def _run_eval(args: argparse.Namespace) -> dict:
    from distil.train.run import evaluate_model_dir

    return evaluate_model_dir(
        args.model_dir,
        args.data_root,
        Path(args.result_dir) if args.result_dir else None,
        args.eval_batch_size,
        _device(args.device, args.use_fp16),
        args.task,
        args.use_fp16,
        args.length_buckets,
    )


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify new text with a trained model directory (JSON lines)")
    p.add_argument("model_dir", type=Path)
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="a GLUE TSV of the model's task, plain text (one example per line, a pair as two "
        "tab-separated fields) or - for stdin (default: stdin)",
    )
    p.add_argument("--output", type=Path, default=None, help="JSON lines file, written atomically (default: stdout)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="for the OneFlow engine")
    p.add_argument(
        "--engine",
        default="auto",
        help="auto (onnxruntime when MODEL_DIR/model.onnx is newer than the "
        "weights, else oneflow), oneflow or onnxruntime",
    )
    p.add_argument("--onnx", type=Path, default=None, help="the ONNX file (default: MODEL_DIR/model.onnx)")
    p.add_argument(
        "--precision",
        default="fp32",
        help="fp32, or int8: MODEL_DIR/model.int8.onnx on onnxruntime "
        "(python -m distil export-onnx MODEL_DIR --quantize int8)",
    )
    p.add_argument(
        "--length_buckets",
        default="auto",
        help="auto: batch examples of similar length and cut each batch to its longest (the same "
        "results, less work; onnxruntime only with an ONNX file of dynamic sequence length); "
        "off: every batch at the model's max_seq_length",
    )
    launch.add_flags(p)
    p.set_defaults(run=_run_predict)


def _run_predict(args: argparse.Namespace) -> dict | None:
    from distil.predict import predict

    summary = predict(
        args.model_dir,
        args.inputs,
        args.output,
        args.batch_size,
        _device(args.device),
        args.engine,
        args.onnx,
        args.length_buckets,
        args.precision,
    )
    return summary if args.output else None  # else stdout holds the predictions


def _add_export_onnx(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-onnx",
        help="export a model directory to ONNX (dynamic batch; BERT: dynamic sequence length), checked against OneFlow",
    )
    p.add_argument("model_dir", type=Path)
    p.add_argument("out", type=Path, nargs="?", default=None, help="the ONNX file (default: MODEL_DIR/model.onnx)")
    p.add_argument(
        "--quantize",
        default="",
        help="int8: also write MODEL_DIR/model.int8.onnx (onnxruntime's dynamic "
        "quantization), if its dev metric stays within --max_metric_drop",
    )
    p.add_argument(
        "--max_metric_drop",
        type=float,
        default=1.0,
        help="points of the task's main dev metric INT8 may lose against FP32 (default 1)",
    )
    p.add_argument("--data_root", type=Path, default=Path("data/glue_ofrecord"), help="OFRecord root (the dev split)")
    p.add_argument("--eval_batch_size", type=int, default=32)
    p.set_defaults(run=_export_onnx)


def _export_onnx(args: argparse.Namespace) -> dict:
    from distil.onnx_export import export_onnx

    return export_onnx(
        args.model_dir, args.out, args.quantize, args.data_root, args.max_metric_drop, args.eval_batch_size
    )


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve model directories over HTTP: the Open Inference Protocol (KServe v2 / "
        "Triton REST), dynamic batching, Prometheus metrics",
    )
    p.add_argument(
        "model_dirs",
        type=Path,
        nargs="+",
        metavar="MODEL_DIR",
        help="a fine-tuned model directory, served under its directory name",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on [127.0.0.1]")
    p.add_argument("--port", type=int, default=8000, help="[8000]")
    p.add_argument("--max_batch_size", type=int, default=32, help="examples computed together, at most [32]")
    p.add_argument(
        "--max_queue_delay_us",
        type=int,
        default=0,
        help="how long a batch waits for more requests after its first, in microseconds [0: as Triton, "
        "none; requests that arrive while a batch computes still form the next batch]",
    )
    p.add_argument(
        "--engine",
        default="auto",
        help="auto (onnxruntime when MODEL_DIR/model.onnx is newer than the "
        "weights, else oneflow), oneflow or onnxruntime",
    )
    p.add_argument("--precision", default="fp32", help="fp32, or int8: MODEL_DIR/model.int8.onnx on onnxruntime")
    p.add_argument("--max_body_bytes", type=int, default=16 * 2**20, help="larger request bodies get 413 [16 MiB]")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="for the OneFlow engine")
    p.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> dict:
    from distil.serve import serve

    return serve(
        args.model_dirs,
        args.host,
        args.port,
        args.max_batch_size,
        args.max_queue_delay_us,
        args.engine,
        args.precision,
        args.max_body_bytes,
        _device(args.device),
    )


def _add_serve_for_online(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve-for-online", help="SERVE_FOR_ONLINE: keep only what inference needs in a model dir")
    p.add_argument("model_dir", type=Path)
    p.set_defaults(run=lambda args: _serve_for_online(args.model_dir))


def _serve_for_online(model_dir: Path) -> dict:
    from distil.models.io import serve_for_online

    serve_for_online(model_dir)
    return {"model_dir": str(model_dir), "kept": sorted(p.name for p in model_dir.iterdir())}


def _add_convert_hf(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert-hf", help="import a Hugging Face BERT checkpoint folder as a model dir")
    p.add_argument("src", type=Path, help="folder with config.json, model.safetensors or pytorch_model.bin, vocab.txt")
    p.add_argument("dst", type=Path, help="model directory to create")
    p.set_defaults(run=lambda args: _convert_hf(args.src, args.dst))


def _convert_hf(src: Path, dst: Path) -> dict:
    from distil.models.io import convert_hf

    return convert_hf(src, dst)


def _add_init_bert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init-bert", help="create a randomly initialised BERT model dir (for tests and demos)")
    p.add_argument("dst", type=Path)
    p.add_argument("--vocab_file", type=Path, required=True)
    for name, default in (
        ("hidden_size", 768),
        ("num_hidden_layers", 12),
        ("num_attention_heads", 12),
        ("intermediate_size", 3072),
        ("max_position_embeddings", 512),
    ):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_run_init_bert)


def _run_init_bert(args: argparse.Namespace) -> dict:
    from distil.models.io import init_bert

    sizes = {
        k: getattr(args, k)
        for k in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
        )
    }
    return init_bert(args.dst, args.vocab_file, sizes, args.seed)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_download,
    _add_glue_process,
    _add_make_demo_data,
    _add_convert_hf,
    _add_init_bert,
    _add_train,
    _add_pkd_student,
    _add_eval,
    _add_predict,
    _add_export_onnx,
    _add_serve,
    _add_serve_for_online,
    _add_report,
    _add_augment,
    _add_pregenerate,
]


def build_parser() -> argparse.ArgumentParser:
    prog = "distil" if os.path.basename(sys.argv[0]) == "distil" else "python -m distil"
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def _train_supervised(args: argparse.Namespace, argv: list[str]) -> int:
    """`train` runs in child processes (one, or the launcher's N) that this process starts again from their
    last saved state when one of them dies from a signal (`distil.crash.supervise`)."""
    if args.max_restarts < 0:
        raise UsageError(f"--max_restarts (MAX_RESTARTS) must be >= 0, got {args.max_restarts}")

    def attempt(env: dict[str, str]) -> int:
        if not launch.wants_launch(args):
            status = crash.watch([sys.executable, "-m", "distil", *argv], "the training process", {**os.environ, **env})
            return 128 - status if status < 0 else status
        try:
            return launch.launch(args, argv, env)
        except launch.JobFailed as e:
            log.error("%s", e)
            return 1

    return crash.supervise(attempt, args.max_restarts)


def run_command(argv: list[str] | None = None) -> int:
    """Run one command; print its result (a table as text, anything else as JSON) on stdout; return the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help or a usage error: argparse has printed why
        return e.code if isinstance(e.code, int) else 2
    rank = launch.rank()
    level = logging.DEBUG if args.verbose else logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        datefmt="%H:%M:%S",
        format=f"%(asctime)s %(levelname)s{f' [rank {rank}]' if launch.launched() else ''} %(name)s: %(message)s",
    )
    argv = sys.argv[1:] if argv is None else argv
    try:
        if args.command == "train" and not launch.launched() and not crash.supervised():
            return _train_supervised(args, argv)
        if launch.wants_launch(args):
            return launch.launch(args, argv)
        result = args.run(args)
    except (UsageError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        log.error("%s", e)
        return 2
    except launch.JobFailed as e:
        log.error("%s", e)
        return 1
    except ModuleNotFoundError as e:
        extra = EXTRA_OF_MODULE.get((e.name or "").partition(".")[0])
        if extra is None:
            raise
        log.error("%s: this command needs the '%s' extra: pip install 'distil[%s]'", e, extra, extra)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    if rank == 0 and result is not None:
        print(result if isinstance(result, str) else json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def main() -> NoReturn:
    """The `distil` command and `python -m distil`: run the command line and leave with its status, never a teardown
    crash's. Fatal signals print every Python thread's stack from here on (OneFlow is not imported yet)."""
    crash.enable_fault_reports()
    from distil.runtime import exit_now

    try:
        status = run_command()
    except Exception:  # an unexpected error: its traceback, then out at once, because OneFlow's teardown in a
        traceback.print_exc()  # multi-process job waits for the other ranks, which may never come
        status = 1
    crash.report_finished(status)
    launch.finish_rank(status)
    exit_now(status)
