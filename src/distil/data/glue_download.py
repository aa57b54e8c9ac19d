"""Download the GLUE data sets into a data folder, as the original ``download_glue_data.py`` does,
but with retries, resumable downloads, archive checks and atomic installation of every task.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path
from time import sleep
from typing import Iterable, Iterator, Mapping
from urllib.parse import unquote, urlsplit

import requests
from tqdm import tqdm

from distil.errors import UsageError
from distil.fileio import text_lines

logger = logging.getLogger(__name__)

TASKS: list[str] = ["CoLA", "SST", "MRPC", "QQP", "STS", "MNLI", "SNLI", "QNLI", "RTE", "WNLI", "diagnostic"]

_FIREBASE = "https://firebasestorage.googleapis.com/v0/b/mtl-sentence-representations.appspot.com/o/data%2F"
_SENTEVAL = "https://dl.fbaipublicfiles.com/senteval/senteval_data/"

URLS: dict[str, str] = {
    "CoLA": _FIREBASE + "CoLA.zip?alt=media&token=46d5e637-3411-4188-bc44-5809b5bfb5f4",
    "SST": _FIREBASE + "SST-2.zip?alt=media&token=aabc5f6b-e466-44a2-b9b4-cf6337f84ac8",
    "QQP": _FIREBASE + "QQP.zip?alt=media&token=700c6acf-160d-4d89-81d1-de4191d02cb5",
    "STS": _FIREBASE + "STS-B.zip?alt=media&token=bddb94a7-8706-4e0d-a694-1109e12273b5",
    "MNLI": _FIREBASE + "MNLI.zip?alt=media&token=50329ea1-e339-40e2-809c-10c40afff3ce",
    "SNLI": _FIREBASE + "SNLI.zip?alt=media&token=4afcfbb2-ff0c-4b2d-a09a-dbf07926f4df",
    "QNLI": _FIREBASE + "QNLIv2.zip?alt=media&token=6fdcf570-0fc5-4631-8456-9505272d1601",
    "RTE": _FIREBASE + "RTE.zip?alt=media&token=5efa7e85-a0bb-4f19-8ea2-9e1840f077fb",
    "WNLI": _FIREBASE + "WNLI.zip?alt=media&token=068ad0a0-ded7-4bd7-99a5-5e00222e0faf",
    "diagnostic": (
        "https://storage.googleapis.com/mtl-sentence-representations.appspot.com/tsvsWithoutLabels%2FAX.tsv"
        "?GoogleAccessId=firebase-adminsdk-0khhl@mtl-sentence-representations.iam.gserviceaccount.com"
        "&Expires=2498860800&Signature=DuQ2CSPt2Yfre0C%2BiISrVYrIFaZH1Lc7hBVZDD4ZyR7fZYOMNOUGpi8QxBmTNOrNPjR3z1cggo7"
        "WXFfrgECP6FBJSsURv8Ybrue8Ypt%2FTPxbuJ0Xc2FhDi%2BarnecCBFO77RSbfuz%2Bs95hRrYhTnByqu3U%2FYZPaj3tZt5QdfpH2IUR"
        "OY8LiBXoXS46LE%2FgOQc%2FKN%2BA9SoscRDYsnxHfG0IjXGwHN%2Bf88q6hOmAxeNPx6moDulUF6XMUAaXCSFU%2BnRO2RDL9CapWxj"
        "%2BDl7syNyHhB7987hZ80B%2FwFkQ3MEs8auvt5XW1%2Bd4aCU7ytgM69r8JDCwibfhZxpaa4gd50QXQ%3D%3D"
    ),
    "MRPC_DEV_IDS": _FIREBASE + "mrpc_dev_ids.tsv?alt=media&token=ec5c0836-31d5-48f4-b431-7480817f1adc",
    "MRPC_TRAIN": _SENTEVAL + "msr_paraphrase_train.txt",
    "MRPC_TEST": _SENTEVAL + "msr_paraphrase_test.txt",
}

# Folder each task occupies in data_dir (the top folder of its archive).
TASK_DIRS: dict[str, str] = {
    "CoLA": "CoLA", "SST": "SST-2", "MRPC": "MRPC", "QQP": "QQP", "STS": "STS-B", "MNLI": "MNLI",
    "SNLI": "SNLI", "QNLI": "QNLI", "RTE": "RTE", "WNLI": "WNLI", "diagnostic": "diagnostic",
}

DOWNLOADED = "downloaded"
SKIPPED = "skipped (already present)"

_DOWNLOADS = ".downloads"
_CHUNK = 64 * 1024
_RETRY_STATUS = {408, 429}
_MRPC_TEST_HEADER = "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
_DRIVE = re.compile(r"^[A-Za-z]:")


class _Retryable(Exception):
    """A failure worth another attempt (network error, 5xx, truncated body)."""


def _file_name(url: str) -> str:
    """The file a URL names: the last path segment, with ``%2F`` decoded (``data%2FCoLA.zip`` -> ``CoLA.zip``)."""
    return unquote(urlsplit(url).path).rsplit("/", 1)[-1]


def _local_name(key: str) -> str:
    """Name of the downloaded file in ``.downloads``: fixed per key, whatever mirror or override serves it."""
    return _file_name(URLS[key])


def parse_tasks(spec: str) -> list[str]:
    """Turn ``--tasks`` ("all" or a comma list) into task names, in TASKS order for "all"."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names:
        raise UsageError(f"no task given; use 'all' or a comma-separated list of: {', '.join(TASKS)}")
    if "all" in names:
        return list(TASKS)
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        raise UsageError(f"unknown task(s) {', '.join(unknown)}; valid tasks are: all, {', '.join(TASKS)}")
    return list(dict.fromkeys(names))


def _check_url_keys(keys: Iterable[str]) -> None:
    unknown = sorted(set(keys) - set(URLS))
    if unknown:
        raise UsageError(f"unknown URL key(s) {', '.join(unknown)}; valid keys are: {', '.join(URLS)}")


def _check_http(url: str, what: str) -> None:
    if urlsplit(url).scheme not in ("http", "https"):
        raise UsageError(f"{what} {url!r} is not an http:// or https:// URL")


def resolve_urls(mirror: str | None = None, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The URL table to use: a mirror serves every file under its original name; overrides win over both."""
    urls = dict(URLS)
    if mirror:
        _check_http(mirror, "mirror")
        base = mirror if mirror.endswith("/") else mirror + "/"
        urls = {key: base + _file_name(url) for key, url in URLS.items()}
    overrides = dict(overrides or {})
    _check_url_keys(overrides)
    for key, url in overrides.items():
        _check_http(url, f"URL override for {key}")
    urls.update(overrides)
    return urls


# --- HTTP download with retries and resumption -------------------------------------------------


def _content_range(response: requests.Response) -> tuple[int, int | None]:
    """(first byte, total size) of a 206 reply; total is None when the server sends ``*``."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", "").strip())
    if not match:
        raise _Retryable(f"206 reply without a usable Content-Range ({response.headers.get('Content-Range')!r})")
    total = match.group(2)
    return int(match.group(1)), None if total == "*" else int(total)


def _expected_size(response: requests.Response, offset: int, part: Path) -> tuple[int | None, str]:
    """Expected final size and file mode for a reply; a 206 that does not start at ``offset`` is retried."""
    length = response.headers.get("Content-Length")
    body = int(length) if length and length.isdigit() else None
    if response.status_code == 200:
        return body, "wb"
    start, total = _content_range(response)
    if start != offset:
        part.unlink(missing_ok=True)
        raise _Retryable(f"server resumed at byte {start} instead of {offset}")
    if total is None and body is not None:
        total = offset + body
    return total, "ab"


def _complete_after_416(response: requests.Response, offset: int, part: Path) -> bool:
    """A 416 means the .part is already whole (True) or does not belong to this file (deleted, retried)."""
    match = re.fullmatch(r"bytes \*/(\d+)", response.headers.get("Content-Range", "").strip())
    if match and int(match.group(1)) == offset:
        return True
    part.unlink(missing_ok=True)
    raise _Retryable(f"the server refused to resume at byte {offset}; starting over")


def _check_status(response: requests.Response, url: str) -> None:
    status = response.status_code
    if status >= 500 or status in _RETRY_STATUS:
        raise _Retryable(f"HTTP {status}")
    if status >= 400:
        raise UsageError(
            f"HTTP {status} for {url}: the file is not available there; "
            "check the URL, or point the download at a mirror or a URL override that has it"
        )
    if status not in (200, 206):
        raise UsageError(f"unexpected HTTP {status} for {url}; expected the file itself (200 or 206)")


def _attempt(session: requests.Session, url: str, part: Path, timeout: float) -> None:
    """One GET into ``part``, resuming from its size; raises _Retryable when it must be tried again."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with session.get(url, headers=headers, stream=True, timeout=timeout) as response:
        if response.status_code == 416 and offset and _complete_after_416(response, offset, part):
            return
        _check_status(response, url)
        total, mode = _expected_size(response, offset, part)
        # We judge truncation ourselves (below) so that the bytes that did arrive stay in the .part.
        response.raw.enforce_content_length = False
        start = offset if mode == "ab" else 0
        with open(part, mode) as out, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, desc=part.name[: -len(".part")]
        ) as bar:
            for chunk in response.iter_content(chunk_size=_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Retryable(f"truncated body ({size} of {total} bytes)")


def _fetch(
    session: requests.Session, url: str, dest: Path, retries: int, backoff: float, timeout: float
) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, retrying with exponential back-off."""
    part = dest.with_name(dest.name + ".part")
    attempts = max(1, retries)
    for attempt in range(attempts):
        try:
            _attempt(session, url, part, timeout)
        except (_Retryable, requests.RequestException) as exc:
            reason = str(exc)
        else:
            os.replace(part, dest)
            return dest
        if attempt + 1 < attempts:
            delay = backoff * 2**attempt
            logger.warning(
                "download of %s failed (%s); retry %d/%d in %.3g s", url, reason, attempt + 1, attempts - 1, delay
            )
            sleep(delay)
    kept = f"; the partial file {part} is kept and the next run resumes it" if part.exists() else ""
    raise UsageError(
        f"could not download {url} after {attempts} attempt(s): {reason}{kept}. "
        "Check the network, or use a mirror or a URL override, and run again"
    )


# --- archives ------------------------------------------------------------------------------------


def _is_macosx(name: str) -> bool:
    return name == "__MACOSX" or name.startswith("__MACOSX/")


def _is_unsafe(name: str) -> bool:
    """True for members that could land outside the extraction folder (zip-slip)."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or bool(_DRIVE.match(name)) or ".." in parts


def _bad_archive(archive: Path, url: str, problem: str) -> UsageError:
    archive.unlink(missing_ok=True)
    return UsageError(
        f"{archive.name} downloaded from {url} {problem}; it was deleted, so running again downloads it anew "
        "(if this repeats, the server or mirror is serving a bad file)"
    )


def _check_archive(archive: Path, url: str) -> None:
    """Refuse a non-zip, a zip failing its CRC check, or one with members escaping the target folder."""
    if not zipfile.is_zipfile(archive):
        raise _bad_archive(archive, url, "is not a zip archive")
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            names = zf.namelist()
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise _bad_archive(archive, url, f"is corrupt ({exc})") from exc
    if bad is not None:
        raise _bad_archive(archive, url, f"is corrupt (CRC check failed for member {bad!r})")
    unsafe = next((name for name in names if _is_unsafe(name)), None)
    if unsafe is not None:
        raise _bad_archive(archive, url, f"has member {unsafe!r} that would be written outside the target folder")


# --- atomic installation -------------------------------------------------------------------------


def _install(new: Path, dest: Path) -> None:
    """Rename ``new`` to ``dest``; an existing ``dest`` is moved aside first and removed only afterwards."""
    if not os.path.lexists(dest):
        os.rename(new, dest)
        return
    aside_dir = Path(tempfile.mkdtemp(prefix=f".old-{dest.name}-", dir=dest.parent))
    aside = aside_dir / dest.name
    os.rename(dest, aside)
    try:
        os.rename(new, dest)
    except OSError:
        os.rename(aside, dest)
        raise
    finally:
        shutil.rmtree(aside_dir, ignore_errors=True)


class _Staging:
    """A temporary folder inside data_dir; its top-level entries are installed on commit, and it always goes."""

    def __init__(self, data_dir: Path, task: str) -> None:
        self.data_dir = data_dir
        self.path = Path(tempfile.mkdtemp(prefix=f".tmp-{task}-", dir=data_dir))

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                for entry in sorted(self.path.iterdir()):
                    _install(entry, self.data_dir / entry.name)
        finally:
            shutil.rmtree(self.path, ignore_errors=True)


# --- tasks -----------------------------------------------------------------------------------------


class _Job:
    """What one download_glue call shares between tasks: folders, URLs, HTTP session and retry policy."""

    def __init__(self, data_dir: Path, urls: Mapping[str, str], retries: int, backoff: float, timeout: float) -> None:
        self.data_dir = data_dir
        self.downloads = data_dir / _DOWNLOADS
        self.urls = urls
        self.retries, self.backoff, self.timeout = retries, backoff, timeout
        self.session = requests.Session()

    def fetch(self, key: str) -> Path:
        self.downloads.mkdir(exist_ok=True)
        url = self.urls[key]
        logger.info("downloading %s", url)
        dest = self.downloads / _local_name(key)
        return _fetch(self.session, url, dest, self.retries, self.backoff, self.timeout)

    def close(self) -> None:
        self.session.close()
        if self.downloads.is_dir() and not any(self.downloads.iterdir()):
            self.downloads.rmdir()


def _zip_task(job: _Job, task: str) -> None:
    """Download a task's zip, check it, extract it beside data_dir's tasks and move it in; delete the zip."""
    url = job.urls[task]
    archive = job.fetch(task)
    try:
        _check_archive(archive, url)
        folder = TASK_DIRS[task]
        with _Staging(job.data_dir, task) as staging, zipfile.ZipFile(archive) as zf:
            zf.extractall(staging, [info for info in zf.infolist() if not _is_macosx(info.filename)])
            if not (staging / folder).is_dir():
                raise UsageError(
                    f"{archive.name} from {url} has no top-level folder {folder}/; "
                    f"check that the URL or mirror serves the GLUE archive for task {task}"
                )
    finally:
        archive.unlink(missing_ok=True)


def _diagnostic_task(job: _Job) -> None:
    """Save AX.tsv as diagnostic/diagnostic.tsv, as the original does."""
    downloaded = job.fetch("diagnostic")
    try:
        with _Staging(job.data_dir, "diagnostic") as staging:
            (staging / "diagnostic").mkdir()
            os.replace(downloaded, staging / "diagnostic" / "diagnostic.tsv")
    finally:
        downloaded.unlink(missing_ok=True)


def _mrpc_rows(path: Path) -> Iterator[list[str]]:
    """The 5 fields of each data row after the header, stripped and split as the original does."""
    for number, row in text_lines(path, keep_bom=True):
        if number == 1 or not row.strip():
            continue
        fields = row.strip().split("\t")
        if len(fields) != 5:
            raise UsageError(
                f"{path}:{number}: expected 5 tab-separated fields "
                f"(Quality, #1 ID, #2 ID, #1 String, #2 String), found {len(fields)}"
            )
        yield fields


def _read_header(path: Path) -> str:
    """The first line, kept verbatim (its BOM too, as the original keeps it), ending in a newline."""
    return next((line for _, line in text_lines(path, keep_bom=True)), "") + "\n"


def _write_mrpc(train_src: Path, test_src: Path, dev_ids_src: Path, out: Path) -> None:
    """Split msr_paraphrase_train.txt into train/dev by the dev-id list and rewrite the test file."""
    shutil.copyfile(dev_ids_src, out / "dev_ids.tsv")
    dev_ids = {tuple(row.strip().split("\t")) for _, row in text_lines(dev_ids_src)}
    header = _read_header(train_src)
    with open(out / "train.tsv", "w", encoding="utf-8", newline="") as train, open(
        out / "dev.tsv", "w", encoding="utf-8", newline=""
    ) as dev:
        train.write(header)
        dev.write(header)
        for label, id1, id2, s1, s2 in _mrpc_rows(train_src):
            target = dev if (id1, id2) in dev_ids else train
            target.write(f"{label}\t{id1}\t{id2}\t{s1}\t{s2}\n")
    with open(out / "test.tsv", "w", encoding="utf-8", newline="") as test:
        test.write(_MRPC_TEST_HEADER)
        for index, (_, id1, id2, s1, s2) in enumerate(_mrpc_rows(test_src)):
            test.write(f"{index}\t{id1}\t{id2}\t{s1}\t{s2}\n")


def _mrpc_sources(job: _Job, path_to_mrpc: str | os.PathLike[str] | None) -> tuple[Path, Path, list[Path]]:
    """The train and test files (local or downloaded) and the downloads to delete afterwards."""
    if path_to_mrpc:
        train, test = Path(path_to_mrpc, "msr_paraphrase_train.txt"), Path(path_to_mrpc, "msr_paraphrase_test.txt")
        missing = [str(path) for path in (train, test) if not path.is_file()]
        if missing:
            raise UsageError(
                f"MRPC data not found: {', '.join(missing)}; path_to_mrpc must hold msr_paraphrase_train.txt "
                "and msr_paraphrase_test.txt (or leave it empty to download them)"
            )
        return train, test, []
    train = job.fetch("MRPC_TRAIN")
    try:
        test = job.fetch("MRPC_TEST")
    except UsageError:
        train.unlink(missing_ok=True)
        raise
    return train, test, [train, test]


def _mrpc_task(job: _Job, path_to_mrpc: str | os.PathLike[str] | None) -> None:
    """Build MRPC/{train,dev,test,dev_ids}.tsv from the MSR paraphrase files and the GLUE dev-id list."""
    train, test, downloaded = _mrpc_sources(job, path_to_mrpc)
    try:
        downloaded.append(job.fetch("MRPC_DEV_IDS"))
        with _Staging(job.data_dir, "MRPC") as staging:
            (staging / "MRPC").mkdir()
            _write_mrpc(train, test, downloaded[-1], staging / "MRPC")
    finally:
        for path in downloaded:
            path.unlink(missing_ok=True)


def _run_task(job: _Job, task: str, path_to_mrpc: str | os.PathLike[str] | None) -> None:
    if task == "MRPC":
        _mrpc_task(job, path_to_mrpc)
    elif task == "diagnostic":
        _diagnostic_task(job)
    else:
        _zip_task(job, task)


def download_glue(
    data_dir: str | os.PathLike[str],
    tasks: Iterable[str],
    path_to_mrpc: str | os.PathLike[str] | None = None,
    urls: Mapping[str, str] | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    force: bool = False,
) -> dict[str, str]:
    """Download and install each task into data_dir; returns {task: "downloaded" | "skipped (already present)"}.

    ``retries`` is the number of attempts per file; between attempts we wait ``backoff * 2**attempt`` seconds.
    A task whose folder exists is skipped unless ``force``, which replaces it only once the new one is complete.
    """
    tasks = list(dict.fromkeys(tasks))
    unknown = [task for task in tasks if task not in TASKS]
    if unknown:
        raise UsageError(f"unknown task(s) {', '.join(unknown)}; valid tasks are: {', '.join(TASKS)}")
    table = dict(URLS)
    if urls is not None:
        _check_url_keys(urls)
        table.update(urls)
    root = Path(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    job = _Job(root, table, retries, backoff, timeout)
    status: dict[str, str] = {}
    try:
        for task in tasks:
            target = root / TASK_DIRS[task]
            if target.exists() and not force:
                logger.info("%s is already present in %s; skipping it (force replaces it)", task, target)
                status[task] = SKIPPED
                continue
            logger.info("downloading and extracting %s...", task)
            _run_task(job, task, path_to_mrpc)
            logger.info("%s completed", task)
            status[task] = DOWNLOADED
    finally:
        job.close()
    return status
