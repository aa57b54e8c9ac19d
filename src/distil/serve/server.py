"""The HTTP server: the protocol's routes on Starlette, run by uvicorn, stopping as Triton stops."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from distil import __version__
from distil.errors import UsageError
from distil.predict import Line
from distil.serve.batching import Batcher, BatchFailed, Metrics
from distil.serve.models import VERSION, Model, load_model
from distil.serve.protocol import (
    HEADER_LENGTH,
    RequestError,
    encode_response,
    read_inputs,
    requested_outputs,
    split_body,
)

log = logging.getLogger(__name__)

EXTENSIONS = ("binary_tensor_data",)


def _error(message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _http_error(_request: Request, error: HTTPException) -> JSONResponse:
    """Starlette's own refusals (no such path, wrong method) in the protocol's error form."""
    return _error(error.detail, error.status_code, error.headers)


class Server:
    """The served models, their batchers and metrics, and the protocol's HTTP routes."""

    def __init__(self, models: dict[str, Model], max_batch_size: int, max_queue_delay_us: int, max_body_bytes: int):
        self.models, self.max_body_bytes = models, max_body_bytes
        self.metrics = Metrics(list(models))
        self.batchers = {
            name: Batcher(m, max_batch_size, max_queue_delay_us, self.metrics) for name, m in models.items()
        }
        self.stopping = False
        self.accepted = self.answered = self.refused = 0  # inference requests, for the drain and the summary
        self.running_at_stop = 0  # accepted inference requests not yet answered when the stop signal came

    @property
    def in_flight(self) -> int:
        return self.accepted - self.answered

    def app(self) -> Starlette:
        model = "/v2/models/{model}"
        routes = [
            Route("/v2/health/live", self.live),
            Route("/v2/health/ready", self.ready),
            Route("/v2", self.server_metadata),
            Route("/metrics", self.prometheus),
        ]
        for path in (model, model + "/versions/{version}"):
            routes += [
                Route(path, self.model_metadata),
                Route(path + "/ready", self.model_ready),
                Route(path + "/infer", self.infer, methods=["POST"]),
            ]
        return Starlette(routes=routes, lifespan=self.lifespan, exception_handlers={HTTPException: _http_error})

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        for batcher in self.batchers.values():
            batcher.start()
        yield
        for batcher in self.batchers.values():
            await batcher.stop()

    def _model(self, request: Request) -> Model:
        name, version = request.path_params["model"], request.path_params.get("version", VERSION)
        if name not in self.models:
            raise RequestError(f"unknown model '{name}' (served: {', '.join(self.models)})", 404)
        if version != VERSION:
            raise RequestError(f"model '{name}' has no version '{version}' (it has version {VERSION})", 404)
        return self.models[name]

    async def live(self, _request: Request) -> Response:
        return Response(status_code=200)

    async def ready(self, _request: Request) -> Response:
        """400 when stopping, as Triton answers (the protocol: a 4xx status is false)."""
        return Response(status_code=400 if self.stopping else 200)

    async def server_metadata(self, _request: Request) -> Response:
        return JSONResponse({"name": "distil", "version": __version__, "extensions": list(EXTENSIONS)})

    async def model_metadata(self, request: Request) -> Response:
        try:
            return JSONResponse(self._model(request).metadata())
        except RequestError as e:
            return _error(str(e), e.status)

    async def model_ready(self, request: Request) -> Response:
        try:
            self._model(request)
        except RequestError as e:
            return _error(str(e), e.status)
        return Response(status_code=400 if self.stopping else 200)

    async def prometheus(self, _request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def infer(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            model = self._model(request)
        except RequestError as e:
            return _error(str(e), e.status)
        if self.stopping:
            self.refused += 1
            self.metrics.add(model.name, request_failure=1)
            return _error("the server is stopping and takes no new requests", 503)
        self.accepted += 1
        try:
            response, examples, queued, computed = await self._infer(model, request)
        except RequestError as e:
            response = _error(str(e), e.status)
        except BatchFailed as e:
            response = _error(str(e), 500)
        except Exception as e:  # (a bug here fails this request, not the server)
            log.exception("model %s: an inference request failed", model.name)
            response = _error(f"internal error: {type(e).__name__}: {e}", 500)
        else:
            self.metrics.add(
                model.name,
                request_success=1,
                count=examples,
                queue_duration_us=queued * 1e6,
                compute_infer_duration_us=computed * 1e6,
                request_duration_us=(time.perf_counter() - started) * 1e6,
            )
        finally:
            self.answered += 1
        if response.status_code != 200:
            self.metrics.add(model.name, request_failure=1)
        return response

    async def _body(self, request: Request) -> bytes:
        """The request body, refused (413) once it is over --max_body_bytes."""
        declared = request.headers.get("content-length", "")
        too_big = f"over the server's limit of {self.max_body_bytes} bytes (--max_body_bytes)"
        if declared.isdecimal() and int(declared) > self.max_body_bytes:
            raise RequestError(f"the request body has {declared} bytes, {too_big}", 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise RequestError(f"the request body is {too_big}", 413)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _infer(self, model: Model, request: Request) -> tuple[Response, int, float, float]:
        """The response to a good request, its example count, and its seconds queued and computed."""
        body, binary = split_body(await self._body(request), request.headers.get(HEADER_LENGTH))
        request_id = body.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise RequestError("the request 'id' must be a string")
        texts = read_inputs(body, binary, model)
        outputs = requested_outputs(body, model)
        pairs = zip(*texts) if len(texts) == 2 else ((text, None) for text in texts[0])
        lines = [Line("request", i + 1, a, b) for i, (a, b) in enumerate(pairs)]
        logits, queued, computed = await self.batchers[model.name].infer(model.featurize(lines))
        return encode_response(model, request_id, outputs, model.results(logits)), len(lines), queued, computed


class _Uvicorn(uvicorn.Server):
    """uvicorn, stopping on SIGTERM/SIGINT as Triton does: refuse new inference requests (503) while the accepted
    ones finish, then uvicorn's own graceful shutdown. A second signal starts that shutdown at once (it still lets
    the requests on open connections finish; one more Ctrl-C forces it, as uvicorn's does)."""

    def __init__(self, config: uvicorn.Config, server: Server):
        super().__init__(config)
        self.served, self.announced = server, False

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.served.stopping:
            super().handle_exit(sig, frame)
            return
        self.served.stopping = True  # (a signal handler: on_tick does the rest)
        self.served.running_at_stop = self.served.in_flight

    async def on_tick(self, counter: int) -> bool:
        if self.served.stopping and not self.should_exit:
            if counter % 10 == 0 or not self.announced:
                log.info(
                    "stopping: new inference requests get 503; %d accepted ones were running at the signal, "
                    "%d still are",
                    self.served.running_at_stop,
                    self.served.in_flight,
                )
                self.announced = True
            if self.served.in_flight == 0:
                log.info("stopping: every accepted inference request has been answered")
                self.should_exit = True
        return await super().on_tick(counter)


def serve(
    model_dirs: Sequence[Path],
    host: str,
    port: int,
    max_batch_size: int,
    max_queue_delay_us: int,
    engine: str,
    precision: str,
    max_body_bytes: int,
    device: str,
) -> dict[str, Any]:
    """Serve the model directories until SIGTERM/SIGINT; then a summary of the inference requests handled."""
    for flag, value, least in (
        ("--max_batch_size", max_batch_size, 1),
        ("--max_queue_delay_us", max_queue_delay_us, 0),
        ("--max_body_bytes", max_body_bytes, 1),
        ("--port", port, 0),
    ):
        if value < least:
            raise UsageError(f"{flag} must be at least {least}, got {value}")
    names = [Path(os.path.abspath(d)).name for d in model_dirs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(
            f"two model directories named {', '.join(repeated)}: a model is served under its "
            "directory's name, which must be unique"
        )
    models = {name: load_model(name, Path(d), engine, precision, device) for name, d in zip(names, model_dirs)}
    server = Server(models, max_batch_size, max_queue_delay_us, max_body_bytes)
    config = uvicorn.Config(
        server.app(),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=None,
        http="httptools",
        loop="uvloop",
    )
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    log.info(
        "serving %s at %s/v2/models/<model>/infer (metrics: %s/metrics)",
        ", ".join(f"{m.name} ({m.task.name}, {m.engine.name})" for m in models.values()),
        url,
        url,
    )
    _Uvicorn(config, server).run()
    return {
        "url": url,
        "models": list(models),
        "inference_requests": {
            "accepted": server.accepted,
            "answered": server.answered,
            "running_at_stop": server.running_at_stop,
            "refused_while_stopping": server.refused,
        },
    }
