"""The GLUE downloader against a local server: retries, resumption, archive checks, atomic installs, MRPC split."""

from __future__ import annotations

import io
import logging
import os
import zipfile
from pathlib import Path

import pytest

import glue_server as gs
from distil.data import glue_download
from distil.data.glue_download import (
    DOWNLOADED,
    SKIPPED,
    TASKS,
    URLS,
    download_glue,
    parse_tasks,
    resolve_urls,
)
from distil.errors import UsageError

BACKOFF = 0.01
MRPC_OUT_HEADER = gs.MRPC_HEADER + "\n"


@pytest.fixture
def server():
    with gs.GlueServer() as srv:
        srv.add_all("/glue/", gs.glue_mirror_files())
        yield srv


@pytest.fixture
def sleeps(monkeypatch):
    """Record back-off sleeps instead of sleeping."""
    calls: list[float] = []
    monkeypatch.setattr(glue_download, "sleep", calls.append)
    return calls


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "glue"


def fetch(server, data_dir, tasks, **kwargs):
    options = {"urls": resolve_urls(mirror=server.url("/glue/")), "retries": 3, "backoff": BACKOFF, "timeout": 5.0}
    options.update(kwargs)
    return download_glue(data_dir, tasks, **options)


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def read_tree(folder: Path) -> dict[str, str]:
    """{path relative to folder's parent: text} for every file under folder."""
    return {
        path.relative_to(folder.parent).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def mrpc_line(*fields: str) -> str:
    return "\t".join(fields) + "\n"


# --- 1. success --------------------------------------------------------------------------------------


def test_downloads_tasks_through_mirror(server, data_dir, sleeps):
    result = fetch(server, data_dir, ["CoLA", "SST", "MRPC", "diagnostic"])

    assert result == {"CoLA": DOWNLOADED, "SST": DOWNLOADED, "MRPC": DOWNLOADED, "diagnostic": DOWNLOADED}
    # Only the task folders: no .downloads (zips deleted), no temp folder, no __MACOSX junk.
    assert listing(data_dir) == ["CoLA", "MRPC", "SST-2", "diagnostic"]
    assert read_tree(data_dir / "CoLA") == gs.cola_files()
    assert read_tree(data_dir / "SST-2") == gs.sst2_files()
    assert (data_dir / "diagnostic" / "diagnostic.tsv").read_bytes() == gs.ax_tsv()
    assert listing(data_dir / "diagnostic") == ["diagnostic.tsv"]

    assert listing(data_dir / "MRPC") == ["dev.tsv", "dev_ids.tsv", "test.tsv", "train.tsv"]
    assert (data_dir / "MRPC" / "dev_ids.tsv").read_bytes() == gs.mrpc_dev_ids()
    t1, t2, t3, t4 = gs.MRPC_TRAIN_ROWS
    # The original keeps the header as read (BOM included, CRLF read as LF); dev ids pick rows 2 and 4.
    assert (data_dir / "MRPC" / "train.tsv").read_bytes().decode("utf-8") == (
        MRPC_OUT_HEADER + mrpc_line(*t1) + mrpc_line(*t3)
    )
    assert (data_dir / "MRPC" / "dev.tsv").read_bytes().decode("utf-8") == (
        MRPC_OUT_HEADER + mrpc_line(*t2) + mrpc_line(*t4)
    )
    (_, a1, a2, as1, as2), (_, b1, b2, bs1, bs2) = gs.MRPC_TEST_ROWS
    assert (data_dir / "MRPC" / "test.tsv").read_bytes().decode("utf-8") == (
        "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        + mrpc_line("0", a1, a2, as1, as2)
        + mrpc_line("1", b1, b2, bs1, bs2)
    )
    for name in ("CoLA.zip", "SST-2.zip", "AX.tsv", "mrpc_dev_ids.tsv", "msr_paraphrase_train.txt"):
        assert server.count("/glue/" + name) == 1
    assert server.count("/glue/RTE.zip") == 0
    assert sleeps == []


def test_mrpc_from_local_files_strips_rows_like_the_original(server, data_dir, tmp_path):
    local = tmp_path / "msr"
    local.mkdir()
    rows = [("1", "702876", "702977", "first one .", "second one . "), ("0", "2108705", "2108831", " a", "b\t")]
    (local / "msr_paraphrase_train.txt").write_bytes(gs.msr_paraphrase(rows, newline="\n") + b"\n")
    (local / "msr_paraphrase_test.txt").write_bytes(gs.msr_paraphrase(rows[:1], newline="\n"))
    before = {p.name: p.read_bytes() for p in local.iterdir()}

    assert fetch(server, data_dir, ["MRPC"], path_to_mrpc=str(local)) == {"MRPC": DOWNLOADED}

    # row.strip() drops the trailing space/tab of the last column; the blank last line is ignored.
    mrpc = data_dir / "MRPC"
    assert (mrpc / "train.tsv").read_text(encoding="utf-8") == MRPC_OUT_HEADER + mrpc_line(
        "1", "702876", "702977", "first one .", "second one ."
    )
    assert (mrpc / "dev.tsv").read_text(encoding="utf-8") == MRPC_OUT_HEADER + mrpc_line(
        "0", "2108705", "2108831", " a", "b"
    )
    assert (mrpc / "test.tsv").read_text(encoding="utf-8") == (
        "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        + mrpc_line("0", "702876", "702977", "first one .", "second one .")
    )
    assert server.count("/glue/msr_paraphrase_train.txt") == 0
    assert server.count("/glue/msr_paraphrase_test.txt") == 0
    assert server.count("/glue/mrpc_dev_ids.tsv") == 1
    assert {p.name: p.read_bytes() for p in local.iterdir()} == before
    assert listing(data_dir) == ["MRPC"]


def test_mrpc_local_files_missing(server, data_dir, tmp_path):
    with pytest.raises(UsageError, match="msr_paraphrase_train.txt") as excinfo:
        fetch(server, data_dir, ["MRPC"], path_to_mrpc=str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(excinfo.value)
    assert listing(data_dir) == []
    assert server.count("/glue/mrpc_dev_ids.tsv") == 0


def test_mrpc_malformed_row_names_file_and_line(server, data_dir):
    bad = gs.msr_paraphrase(gs.MRPC_TRAIN_ROWS[:1]) + b"1\t42\tonly three fields\r\n"
    server.add("/glue/msr_paraphrase_train.txt", bad)

    with pytest.raises(UsageError, match=r"msr_paraphrase_train\.txt:3: expected 5 tab-separated fields"):
        fetch(server, data_dir, ["MRPC"])
    assert listing(data_dir) == []


# --- 2. retry after a server error -------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["500", "503", "429", "408"])
def test_server_error_is_retried(server, data_dir, sleeps, failure):
    server.script("/glue/CoLA.zip", [failure, "ok"])

    assert fetch(server, data_dir, ["CoLA"]) == {"CoLA": DOWNLOADED}
    assert server.count("/glue/CoLA.zip") == 2
    assert sleeps == [BACKOFF]
    assert read_tree(data_dir / "CoLA") == gs.cola_files()
    assert listing(data_dir) == ["CoLA"]


# --- 3. truncated download, then resumed -------------------------------------------------------------


def test_truncated_download_resumes_with_range(server, data_dir, sleeps):
    ax = gs.ax_tsv()
    server.script("/glue/AX.tsv", ["truncate", "ok"])

    assert fetch(server, data_dir, ["diagnostic"]) == {"diagnostic": DOWNLOADED}
    first, second = server.headers("/glue/AX.tsv")
    assert "Range" not in first
    assert second["Range"] == f"bytes={len(ax) // 2}-"
    assert (data_dir / "diagnostic" / "diagnostic.tsv").read_bytes() == ax
    assert sleeps == [BACKOFF]
    assert listing(data_dir) == ["diagnostic"]


def test_truncated_zip_resumes_and_extracts(server, data_dir, sleeps):
    size = len(gs.glue_mirror_files()["CoLA.zip"])
    server.script("/glue/CoLA.zip", ["truncate", "truncate", "ok"])

    assert fetch(server, data_dir, ["CoLA"]) == {"CoLA": DOWNLOADED}
    ranges = [h.get("Range") for h in server.headers("/glue/CoLA.zip")]
    assert ranges == [None, f"bytes={size // 2}-", f"bytes={size // 2 + (size - size // 2) // 2}-"]
    assert read_tree(data_dir / "CoLA") == gs.cola_files()
    assert sleeps == [BACKOFF, 2 * BACKOFF]
    assert listing(data_dir) == ["CoLA"]


def test_server_ignoring_range_starts_over(server, data_dir):
    downloads = data_dir / ".downloads"
    downloads.mkdir(parents=True)
    stale = b"stale bytes from elsewhere"
    (downloads / "AX.tsv.part").write_bytes(stale)
    server.script("/glue/AX.tsv", ["ignore-range"])

    assert fetch(server, data_dir, ["diagnostic"]) == {"diagnostic": DOWNLOADED}
    assert [h.get("Range") for h in server.headers("/glue/AX.tsv")] == [f"bytes={len(stale)}-"]
    assert (data_dir / "diagnostic" / "diagnostic.tsv").read_bytes() == gs.ax_tsv()
    assert listing(data_dir) == ["diagnostic"]


def test_complete_part_file_is_used_after_416(server, data_dir):
    downloads = data_dir / ".downloads"
    downloads.mkdir(parents=True)
    (downloads / "AX.tsv.part").write_bytes(gs.ax_tsv())

    assert fetch(server, data_dir, ["diagnostic"]) == {"diagnostic": DOWNLOADED}
    assert server.count("/glue/AX.tsv") == 1
    assert (data_dir / "diagnostic" / "diagnostic.tsv").read_bytes() == gs.ax_tsv()
    assert listing(data_dir) == ["diagnostic"]


def test_oversized_part_file_is_discarded(server, data_dir, sleeps):
    downloads = data_dir / ".downloads"
    downloads.mkdir(parents=True)
    oversized = gs.ax_tsv() + b"more than the file"
    (downloads / "AX.tsv.part").write_bytes(oversized)

    assert fetch(server, data_dir, ["diagnostic"]) == {"diagnostic": DOWNLOADED}
    assert [h.get("Range") for h in server.headers("/glue/AX.tsv")] == [f"bytes={len(oversized)}-", None]
    assert (data_dir / "diagnostic" / "diagnostic.tsv").read_bytes() == gs.ax_tsv()
    assert listing(data_dir) == ["diagnostic"]


# --- 4. truncated every time -------------------------------------------------------------------------


def test_always_truncated_fails_after_retries_and_keeps_part(server, data_dir, sleeps):
    url = server.url("/glue/CoLA.zip")
    size = len(gs.glue_mirror_files()["CoLA.zip"])
    server.script("/glue/CoLA.zip", ["truncate"] * 3)

    with pytest.raises(UsageError, match="after 3 attempt") as excinfo:
        fetch(server, data_dir, ["CoLA"], retries=3)
    assert url in str(excinfo.value)
    assert "truncated" in str(excinfo.value)
    assert server.count("/glue/CoLA.zip") == 3
    assert sleeps == [BACKOFF, 2 * BACKOFF]
    # No task folder and no temp folder: only the partial download, kept for the next run.
    assert listing(data_dir) == [".downloads"]
    assert listing(data_dir / ".downloads") == ["CoLA.zip.part"]
    part_size = (data_dir / ".downloads" / "CoLA.zip.part").stat().st_size
    assert 0 < part_size < size

    # The next run (server healthy again) resumes from the partial file.
    assert fetch(server, data_dir, ["CoLA"]) == {"CoLA": DOWNLOADED}
    assert server.headers("/glue/CoLA.zip")[3]["Range"] == f"bytes={part_size}-"
    assert read_tree(data_dir / "CoLA") == gs.cola_files()
    assert listing(data_dir) == ["CoLA"]


# --- 5. corrupt archives -----------------------------------------------------------------------------


def test_bad_crc_fixture_looks_like_a_zip():
    data = gs.bad_crc_zip(gs.cola_files())
    path_like = io.BytesIO(data)
    assert zipfile.is_zipfile(path_like)
    with zipfile.ZipFile(path_like) as zf:
        assert zf.testzip() == "CoLA/train.tsv"


@pytest.mark.parametrize(
    "payload, problem",
    [(gs.bad_crc_zip(gs.cola_files()), "CRC check failed"), (b"<html>Quota exceeded</html>", "not a zip archive")],
    ids=["bad-crc", "not-zip"],
)
def test_corrupt_zip_is_refused_and_deleted(server, data_dir, payload, problem):
    server.add("/glue/CoLA.zip", payload)

    with pytest.raises(UsageError, match=problem) as excinfo:
        fetch(server, data_dir, ["CoLA"])
    assert "CoLA.zip" in str(excinfo.value)
    assert server.url("/glue/CoLA.zip") in str(excinfo.value)
    assert listing(data_dir) == []  # no CoLA, no temp folder, and the bad download is gone

    server.add("/glue/CoLA.zip", gs.cola_zip())
    assert fetch(server, data_dir, ["CoLA"]) == {"CoLA": DOWNLOADED}
    assert server.count("/glue/CoLA.zip") == 2
    assert read_tree(data_dir / "CoLA") == gs.cola_files()


# --- 6. zip-slip -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "member",
    ["../evil.txt", "CoLA/../../evil.txt", "ABSOLUTE", "C:/evil.txt", "..\\evil.txt"],
)
def test_zip_slip_member_is_refused(server, data_dir, tmp_path, member):
    if member == "ABSOLUTE":
        member = str(tmp_path / "absolute-evil.txt")
    server.add("/glue/CoLA.zip", gs.make_zip({**gs.cola_files(), member: "pwned\n"}))

    with pytest.raises(UsageError) as excinfo:
        fetch(server, data_dir, ["CoLA"])
    assert repr(member) in str(excinfo.value)
    assert "CoLA.zip" in str(excinfo.value)
    assert listing(data_dir) == []
    assert listing(tmp_path) == ["glue"]


# --- 7. 404 ------------------------------------------------------------------------------------------


def test_404_fails_at_once(server, data_dir, sleeps):
    url = server.url("/elsewhere/CoLA.zip")

    with pytest.raises(UsageError, match=f"HTTP 404 for {url}"):
        fetch(server, data_dir, ["CoLA"], urls={"CoLA": url}, retries=5, backoff=10.0)
    assert server.count("/elsewhere/CoLA.zip") == 1
    assert sleeps == []
    assert listing(data_dir) == []


def test_failure_of_a_later_task_keeps_earlier_ones(server, data_dir):
    server.script("/glue/SST-2.zip", ["404"])

    with pytest.raises(UsageError, match="HTTP 404"):
        fetch(server, data_dir, ["CoLA", "SST"])
    assert listing(data_dir) == ["CoLA"]
    assert read_tree(data_dir / "CoLA") == gs.cola_files()


# --- 8. existing folders -----------------------------------------------------------------------------


def test_existing_folder_is_skipped_and_force_replaces_it(server, data_dir, caplog):
    (data_dir / "CoLA").mkdir(parents=True)
    (data_dir / "CoLA" / "mine.txt").write_text("keep me\n")

    with caplog.at_level(logging.INFO, logger=glue_download.__name__):
        assert fetch(server, data_dir, ["CoLA"]) == {"CoLA": SKIPPED}
    assert "already present" in caplog.text
    assert server.count("/glue/CoLA.zip") == 0
    assert read_tree(data_dir / "CoLA") == {"CoLA/mine.txt": "keep me\n"}

    assert fetch(server, data_dir, ["CoLA"], force=True) == {"CoLA": DOWNLOADED}
    assert read_tree(data_dir / "CoLA") == gs.cola_files()
    assert listing(data_dir) == ["CoLA"]  # the old folder moved aside is gone too


def test_force_keeps_old_folder_when_the_download_fails(server, data_dir):
    (data_dir / "diagnostic").mkdir(parents=True)
    (data_dir / "diagnostic" / "diagnostic.tsv").write_text("old\n")
    server.script("/glue/AX.tsv", ["404"])

    with pytest.raises(UsageError, match="HTTP 404"):
        fetch(server, data_dir, ["diagnostic"], force=True)
    assert read_tree(data_dir / "diagnostic") == {"diagnostic/diagnostic.tsv": "old\n"}
    assert listing(data_dir) == ["diagnostic"]


def test_force_replaces_mrpc_and_diagnostic(server, data_dir):
    for folder in ("MRPC", "diagnostic"):
        (data_dir / folder).mkdir(parents=True)
        (data_dir / folder / "stale.tsv").write_text("stale\n")

    assert fetch(server, data_dir, ["MRPC", "diagnostic"], force=True) == {"MRPC": DOWNLOADED, "diagnostic": DOWNLOADED}
    assert listing(data_dir / "MRPC") == ["dev.tsv", "dev_ids.tsv", "test.tsv", "train.tsv"]
    assert listing(data_dir / "diagnostic") == ["diagnostic.tsv"]
    assert listing(data_dir) == ["MRPC", "diagnostic"]


# --- 9. task and URL parsing -------------------------------------------------------------------------


def test_tasks_and_url_table():
    assert TASKS == ["CoLA", "SST", "MRPC", "QQP", "STS", "MNLI", "SNLI", "QNLI", "RTE", "WNLI", "diagnostic"]
    assert list(URLS) == [
        "CoLA",
        "SST",
        "QQP",
        "STS",
        "MNLI",
        "SNLI",
        "QNLI",
        "RTE",
        "WNLI",
        "diagnostic",
        "MRPC_DEV_IDS",
        "MRPC_TRAIN",
        "MRPC_TEST",
    ]
    assert URLS["CoLA"] == (
        "https://firebasestorage.googleapis.com/v0/b/mtl-sentence-representations.appspot.com/o/"
        "data%2FCoLA.zip?alt=media&token=46d5e637-3411-4188-bc44-5809b5bfb5f4"
    )
    assert URLS["MRPC_TRAIN"] == "https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_train.txt"
    assert URLS["diagnostic"].startswith(
        "https://storage.googleapis.com/mtl-sentence-representations.appspot.com/tsvsWithoutLabels%2FAX.tsv?"
    )


def test_parse_tasks():
    assert parse_tasks("all") == TASKS
    assert parse_tasks("CoLA,all") == TASKS
    assert parse_tasks("MRPC,CoLA") == ["MRPC", "CoLA"]
    assert parse_tasks(" SST , diagnostic,SST ") == ["SST", "diagnostic"]


@pytest.mark.parametrize("spec", ["CoLA,sst", "", " , "])
def test_parse_tasks_rejects_bad_names(spec):
    with pytest.raises(UsageError) as excinfo:
        parse_tasks(spec)
    message = str(excinfo.value)
    assert all(task in message for task in TASKS)
    if spec == "CoLA,sst":
        assert "unknown task(s) sst" in message


def test_resolve_urls_defaults_mirror_and_overrides():
    defaults = resolve_urls()
    assert defaults["MRPC_TRAIN"] == "https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_train.txt"
    defaults["CoLA"] = "http://changed/"  # a copy: the table itself is not changed
    assert resolve_urls()["CoLA"].startswith("https://firebasestorage.googleapis.com/")

    mirrored = resolve_urls(mirror="http://127.0.0.1:8000/glue/")
    assert mirrored == {
        "CoLA": "http://127.0.0.1:8000/glue/CoLA.zip",
        "SST": "http://127.0.0.1:8000/glue/SST-2.zip",
        "QQP": "http://127.0.0.1:8000/glue/QQP.zip",
        "STS": "http://127.0.0.1:8000/glue/STS-B.zip",
        "MNLI": "http://127.0.0.1:8000/glue/MNLI.zip",
        "SNLI": "http://127.0.0.1:8000/glue/SNLI.zip",
        "QNLI": "http://127.0.0.1:8000/glue/QNLIv2.zip",
        "RTE": "http://127.0.0.1:8000/glue/RTE.zip",
        "WNLI": "http://127.0.0.1:8000/glue/WNLI.zip",
        "diagnostic": "http://127.0.0.1:8000/glue/AX.tsv",
        "MRPC_DEV_IDS": "http://127.0.0.1:8000/glue/mrpc_dev_ids.tsv",
        "MRPC_TRAIN": "http://127.0.0.1:8000/glue/msr_paraphrase_train.txt",
        "MRPC_TEST": "http://127.0.0.1:8000/glue/msr_paraphrase_test.txt",
    }
    assert resolve_urls(mirror="http://m.example/glue") == {
        key: url.replace("127.0.0.1:8000", "m.example") for key, url in mirrored.items()
    }

    overridden = resolve_urls(mirror="http://m.example/", overrides={"CoLA": "https://x.example/cola.zip"})
    assert overridden["CoLA"] == "https://x.example/cola.zip"
    assert overridden["SST"] == "http://m.example/SST-2.zip"
    assert resolve_urls(overrides={"MRPC_TEST": "http://x/t.txt"})["MRPC_TEST"] == "http://x/t.txt"
    assert resolve_urls(overrides={"MRPC_TEST": "http://x/t.txt"})["MRPC_TRAIN"] == URLS["MRPC_TRAIN"]


def test_resolve_urls_rejects_unknown_key_and_non_http():
    with pytest.raises(UsageError, match="unknown URL key\\(s\\) MRPC; valid keys are: CoLA, SST") as excinfo:
        resolve_urls(overrides={"MRPC": "http://x/y"})
    assert "MRPC_DEV_IDS" in str(excinfo.value)
    with pytest.raises(UsageError, match="mirror '/srv/glue' is not an http"):
        resolve_urls(mirror="/srv/glue")
    with pytest.raises(UsageError, match="override for CoLA"):
        resolve_urls(overrides={"CoLA": "ftp://x/CoLA.zip"})


def test_download_glue_rejects_unknown_task(data_dir):
    with pytest.raises(UsageError, match="unknown task\\(s\\) BoolQ; valid tasks are: CoLA"):
        download_glue(data_dir, ["BoolQ"])
    assert not data_dir.exists()
