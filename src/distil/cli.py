"""The command line: `python -m distil <command> ...`. The only place that parses arguments."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

from distil.errors import UsageError

log = logging.getLogger("distil")


def str2bool(value: str) -> bool:
    """A real boolean flag value (original: `type=bool` made '--do_lower_case False' true)."""
    lowered = value.lower()
    if lowered in ("yes", "true", "t", "y", "1"):
        return True
    if lowered in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got '{value}'")


def _key_value(text: str) -> tuple:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=URL, got '{text}'")
    return key, value


def _add_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download-glue", help="download and unpack GLUE (original download_glue_data.py)")
    p.add_argument("--data_dir", type=Path, default=Path("data/glue_data"), help="where task folders go")
    p.add_argument("--tasks", default="all", help="'all' or a comma list of CoLA,SST,MRPC,QQP,STS,MNLI,"
                                                  "SNLI,QNLI,RTE,WNLI,diagnostic")
    p.add_argument("--path_to_mrpc", type=Path, default=None,
                   help="folder with msr_paraphrase_train.txt and msr_paraphrase_test.txt (else downloaded)")
    p.add_argument("--mirror", default=None, help="base URL that replaces every download URL's host and path")
    p.add_argument("--url", type=_key_value, action="append", default=[], metavar="KEY=URL",
                   help="override one URL of the table (repeatable)")
    p.add_argument("--retries", type=int, default=5, help="attempts per file")
    p.add_argument("--backoff", type=float, default=1.0, help="seconds before the first retry (doubles)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds without data before a retry")
    p.add_argument("--force", action="store_true", help="replace task folders that already exist")
    p.set_defaults(run=_run_download)


def _run_download(args: argparse.Namespace) -> Dict:
    from distil.data import glue_download

    tasks = glue_download.parse_tasks(args.tasks)
    urls = glue_download.resolve_urls(args.mirror, dict(args.url))
    return glue_download.download_glue(args.data_dir, tasks, path_to_mrpc=args.path_to_mrpc, urls=urls,
                                       retries=args.retries, backoff=args.backoff, timeout=args.timeout,
                                       force=args.force)


def _add_glue_process(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("glue-process", help="convert GLUE TSV files to OFRecords (original glue_process.py)")
    p.add_argument("task", nargs="?", default="SST-2", help="task name, or 'all' for every task present")
    p.add_argument("--glue_dir", type=Path, default=Path("data/glue_data"), help="GLUE TSV root")
    p.add_argument("--output_dir", type=Path, default=Path("data/glue_ofrecord"), help="OFRecord root")
    p.add_argument("--vocab_file", type=Path, default=None,
                   help="BERT WordPiece vocab (default: the bert-base-uncased vocab shipped with distil)")
    p.add_argument("--max_seq_length", type=int, default=128, help="BERT sequence length")
    p.add_argument("--do_lower_case", type=str2bool, default=True, help="lower-case and strip accents")
    p.add_argument("--lstm_seq_length", type=int, default=32,
                   help="Distilled-BiLSTM sequence length (0: do not write <TASK>_lstm_<N>)")
    p.add_argument("--lstm_vocab_size", type=int, default=10000, help="most frequent training words kept")
    p.add_argument("--records_per_part", type=int, default=16384, help="records per part-NNNNN file")
    p.add_argument("--workers", type=int, default=0, help="processes (0: one per CPU core)")
    p.set_defaults(run=_run_glue_process)


def _run_glue_process(args: argparse.Namespace) -> Dict:
    from distil.data.convert import DEFAULT_VOCAB, ConvertConfig, convert_task
    from distil.data.tasks import TASKS

    for flag in ("max_seq_length", "records_per_part"):
        if getattr(args, flag) < (3 if flag == "max_seq_length" else 1):
            raise UsageError(f"--{flag} {getattr(args, flag)} is too small")
    if args.lstm_seq_length < 0 or args.lstm_vocab_size < 1 or args.workers < 0:
        raise UsageError("--lstm_seq_length and --workers must be >= 0, --lstm_vocab_size >= 1")
    config = ConvertConfig(glue_dir=args.glue_dir, output_dir=args.output_dir, vocab_file=args.vocab_file or DEFAULT_VOCAB,
                           max_seq_length=args.max_seq_length, do_lower_case=args.do_lower_case,
                           lstm_seq_length=args.lstm_seq_length, lstm_vocab_size=args.lstm_vocab_size,
                           records_per_part=args.records_per_part, workers=args.workers)
    if args.task.lower() != "all":
        return convert_task(args.task, config)
    present = [t.name for t in TASKS.values() if (args.glue_dir / t.folder).is_dir()]
    if not present:
        raise UsageError(f"{args.glue_dir} holds no GLUE task folder (expected some of: "
                         f"{', '.join(t.folder for t in TASKS.values())})")
    summary: Dict = {}
    for name in present:
        summary.update(convert_task(name, config))
    return summary


COMMANDS: List[Callable[[argparse._SubParsersAction], None]] = [_add_download, _add_glue_process]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m distil", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run one command; print its result as JSON on stdout. Returns the process exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help or a usage error: argparse has printed why
        return e.code if isinstance(e.code, int) else 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        result = args.run(args)
    except (UsageError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        log.error("%s", e)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0
