"""Test helper: a local HTTP server with scripted failures, and builders of small archives shaped like GLUE's."""

from __future__ import annotations

import io
import re
import threading
import zipfile
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# --- server ----------------------------------------------------------------------------------------

# Failure modes a path's script may hold, consumed one per request; an empty script means "ok".
#   "ok"        serve the file (206 + Content-Range when the request carries Range: bytes=N-)
#   "truncate"  send the right headers but only half of the body, then close the connection
#   "ignore-range"  serve the whole file with 200 even when the request asks for a range
#   "<code>"    reply with that HTTP status and no body (e.g. "500", "503", "404", "429")
MODES = ("ok", "truncate", "ignore-range")


class GlueServer:
    """An in-memory file server on 127.0.0.1 (port chosen by the OS) that records every request."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.scripts: dict[str, list[str]] = {}
        self.requests: dict[str, list[dict[str, str]]] = {}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> GlueServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> GlueServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def add(self, path: str, data: bytes, script: list[str] | None = None) -> str:
        """Serve ``data`` at ``path`` (after the failures in ``script``); returns its URL."""
        with self._lock:
            self.files[path] = data
            self.scripts[path] = list(script or [])
        return self.url(path)

    def add_all(self, prefix: str, files: Mapping[str, bytes]) -> None:
        for name, data in files.items():
            self.add(prefix + name, data)

    def script(self, path: str, modes: list[str]) -> None:
        with self._lock:
            self.scripts[path] = list(modes)

    def count(self, path: str) -> int:
        with self._lock:
            return len(self.requests.get(path, []))

    def headers(self, path: str) -> list[dict[str, str]]:
        """Headers of each request made for ``path``, oldest first."""
        with self._lock:
            return [dict(h) for h in self.requests.get(path, [])]

    def _next(self, path: str, headers: dict[str, str]) -> tuple[str, bytes | None]:
        with self._lock:
            self.requests.setdefault(path, []).append(headers)
            script = self.scripts.get(path, [])
            mode = script.pop(0) if script else "ok"
            return mode, self.files.get(path)


def _handler_for(server: GlueServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            mode, data = server._next(path, {k: v for k, v in self.headers.items()})
            if mode not in MODES:
                self._empty(int(mode))
            elif data is None:
                self._empty(404)
            else:
                self._serve(data, truncate=mode == "truncate", ranges=mode != "ignore-range")

        def _empty(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _serve(self, data: bytes, truncate: bool, ranges: bool) -> None:
            match = ranges and re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if match:
                start = int(match.group(1))
                end = int(match.group(2)) if match.group(2) else len(data) - 1
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = data[start : end + 1]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
            else:
                body = data
                self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if truncate else body)
            self.close_connection = True

    return Handler


# --- archive builders --------------------------------------------------------------------------------

BOM = "\ufeff"


def make_zip(members: Mapping[str, bytes | str], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip holding ``members`` (name -> content) in order; names are kept verbatim, even unsafe ones."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, content in members.items():
            info = zipfile.ZipInfo(name, date_time=(2019, 4, 1, 0, 0, 0))
            zf.writestr(info, content, compress_type=compression)
    return buffer.getvalue()


def cola_files() -> dict[str, str]:
    """CoLA/ as in CoLA.zip: headerless train/dev (source, label, original label, sentence), test with a header."""
    return {
        "CoLA/train.tsv": (
            "gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.\n"
            "gj04\t1\t\tOne more pseudo generalization and I'm giving up.\n"
            "gj04\t0\t*\tThey drank the pub.\n"
        ),
        "CoLA/dev.tsv": (
            "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n"
            "gj04\t0\t*\tThe more we study verbs, the crazier they get.\n"
        ),
        "CoLA/test.tsv": (
            "index\tsentence\n0\tBill whistled past the house.\n1\tThe car honked its way down the road.\n"
        ),
    }


def sst2_files() -> dict[str, str]:
    """SST-2/ as in SST-2.zip: train/dev with header ``sentence\\tlabel``, test with ``index\\tsentence``."""
    return {
        "SST-2/train.tsv": (
            "sentence\tlabel\n"
            "hide new secretions from the parental units \t0\n"
            "contains no wit , only labored gags \t0\n"
        ),
        "SST-2/dev.tsv": "sentence\tlabel\nit 's a charming and often affecting journey . \t1\n",
        "SST-2/test.tsv": "index\tsentence\n0\tuneasy mishmash of styles and genres .\n",
    }


def rte_files() -> dict[str, str]:
    """RTE/ as in RTE.zip: ``index\\tsentence1\\tsentence2\\tlabel``."""
    header = "index\tsentence1\tsentence2\tlabel\n"
    row = (
        "0\tNo Weapons of Mass Destruction Found in Iraq Yet.\t"
        "Weapons of Mass Destruction Found in Iraq.\tnot_entailment\n"
    )
    return {"RTE/train.tsv": header + row, "RTE/dev.tsv": header + row, "RTE/test.tsv": "index\tsentence1\tsentence2\n"}


def task_zip(files: Mapping[str, str], macosx: bool = False) -> bytes:
    """A GLUE-style archive of ``files``; ``macosx`` adds the ``__MACOSX/`` junk some archives carry."""
    members: dict[str, bytes | str] = dict(files)
    if macosx:
        top = next(iter(files)).split("/")[0]
        members[f"__MACOSX/{top}/._train.tsv"] = b"\x00\x05\x16\x07junk"
    return make_zip(members)


def cola_zip() -> bytes:
    return task_zip(cola_files(), macosx=True)


def sst2_zip() -> bytes:
    return task_zip(sst2_files())


def rte_zip() -> bytes:
    return task_zip(rte_files())


def bad_crc_zip(files: Mapping[str, str]) -> bytes:
    """A stored (uncompressed) zip whose first member has one data byte flipped: a valid directory, a bad CRC."""
    data = bytearray(make_zip(files, compression=zipfile.ZIP_STORED))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.infolist()[0]
    name_len = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    first_byte = info.header_offset + 30 + name_len + extra_len
    data[first_byte] ^= 0xFF
    return bytes(data)


def ax_tsv() -> bytes:
    """AX.tsv, the diagnostic set: ``index\\tsentence1\\tsentence2`` without labels."""
    return (
        b"index\tsentence1\tsentence2\n"
        b"0\tThe cat sat on the mat.\tThe cat did not sit on the mat.\n"
        b"1\tThe cat did not sit on the mat.\tThe cat sat on the mat.\n"
        b"2\tWhen you've got no snow, it's really hard to learn a snow sport.\tWhen you've got snow, it's hard.\n"
    )


MRPC_HEADER = BOM + "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"

MRPC_TRAIN_ROWS = [
    (
        "1",
        "702876",
        "702977",
        'Amrozi accused his brother , whom he called " the witness " , of deliberately distorting his evidence .',
        'Referring to him as only " the witness " , Amrozi accused his brother of distorting his evidence .',
    ),
    (
        "0",
        "2108705",
        "2108831",
        "Yucaipa owned Dominick 's before selling the chain to Safeway in 1998 for $ 2.5 billion .",
        "Yucaipa bought Dominick 's in 1995 for $ 693 million and sold it to Safeway for $ 1.8 billion in 1998 .",
    ),
    (
        "1",
        "1330381",
        "1330521",
        "They had published an advertisement on the Internet on June 10 , offering the cargo for sale , he added .",
        "On June 10 , the ship 's owners had published an advertisement on the Internet , offering the explosives .",
    ),
    (
        "0",
        "3344667",
        "3344648",
        "Around 0335 GMT , Tab shares were up 19 cents , or 4.4 % , at A $ 4.56 , having earlier set a record .",
        "Tab shares jumped 20 cents , or 4.6 % , to set a record closing high at A $ 4.57 .",
    ),
]

MRPC_TEST_ROWS = [
    (
        "1",
        "1089874",
        "1089925",
        "PCCW 's chief operating officer , Mike Butcher , and Alex Arena , the chief financial officer , will report .",
        "Current Chief Operating Officer Mike Butcher and Group Chief Financial Officer Alex Arena will report to So .",
    ),
    (
        "1",
        "3019446",
        "3019327",
        "The world 's two largest automakers said their U.S. sales declined more than predicted last month .",
        "Domestic sales at both GM and No. 2 Ford Motor Co. declined more than predicted .",
    ),
]

# Dev ids pick the 2nd and 4th train rows; the first line is an id pair that is in no file.
MRPC_DEV_IDS = [("1000000", "1000001"), ("2108705", "2108831"), ("3344667", "3344648")]


def msr_paraphrase(rows: list[tuple[str, ...]], newline: str = "\r\n") -> bytes:
    """An msr_paraphrase_*.txt file: BOM'd header, 5 tab-separated columns, CRLF (or ``newline``) line ends."""
    lines = [MRPC_HEADER] + ["\t".join(row) for row in rows]
    return (newline.join(lines) + newline).encode("utf-8")


def msr_paraphrase_train() -> bytes:
    return msr_paraphrase(MRPC_TRAIN_ROWS)


def msr_paraphrase_test() -> bytes:
    return msr_paraphrase(MRPC_TEST_ROWS)


def mrpc_dev_ids() -> bytes:
    """mrpc_dev_ids.tsv: one ``id1\\tid2`` pair per line, no header."""
    return "".join(f"{a}\t{b}\n" for a, b in MRPC_DEV_IDS).encode("utf-8")


def glue_mirror_files() -> dict[str, bytes]:
    """Every file a mirror needs for CoLA, SST, RTE, MRPC and diagnostic, keyed by its original file name."""
    return {
        "CoLA.zip": cola_zip(),
        "SST-2.zip": sst2_zip(),
        "RTE.zip": rte_zip(),
        "AX.tsv": ax_tsv(),
        "mrpc_dev_ids.tsv": mrpc_dev_ids(),
        "msr_paraphrase_train.txt": msr_paraphrase_train(),
        "msr_paraphrase_test.txt": msr_paraphrase_test(),
    }
