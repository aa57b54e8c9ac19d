"""The Open Inference Protocol's inference request and response (KServe v2 / Triton HTTP/REST), JSON tensors
and the binary tensor data extension: what is read from a request, checked, and written back."""

from __future__ import annotations

import json
import struct
from typing import Any

from starlette.responses import Response

from distil.serve.models import VERSION, Model

HEADER_LENGTH = "Inference-Header-Content-Length"


class RequestError(Exception):
    """A request refused: the HTTP status and the message of its `{"error": ...}` body."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _count(value: Any) -> bool:
    """Whether a JSON value is a whole number >= 0."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The request's JSON object and the binary tensor data after it (binary tensor data extension)."""
    binary = b""
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            size = -1
        if not 0 <= size <= len(body):
            raise RequestError(
                f"{HEADER_LENGTH} is '{header_length}', not a byte count within the body's {len(body)} bytes"
            )
        body, binary = body[:size], body[size:]
    try:
        request = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise RequestError(f"the request's JSON is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise RequestError(f"malformed JSON in the request: {e}") from None
    if not isinstance(request, dict):
        raise RequestError("the request must be a JSON object with 'inputs'")
    return request, binary


def _bytes_elements(data: bytes, name: str) -> list[str]:
    """The texts of a BYTES tensor in binary form: each a 4-byte little-endian length, then its UTF-8 bytes."""
    texts: list[str] = []
    at = 0
    while at < len(data):
        if at + 4 > len(data):
            raise RequestError(f"input '{name}': its binary data ends inside the 4-byte length of element {len(texts)}")
        (size,) = struct.unpack_from("<I", data, at)
        if at + 4 + size > len(data):
            raise RequestError(
                f"input '{name}': element {len(texts)} claims {size} bytes, past the end of the "
                f"input's binary_data_size"
            )
        try:
            texts.append(data[at + 4 : at + 4 + size].decode("utf-8"))
        except UnicodeDecodeError as e:
            raise RequestError(
                f"input '{name}': element {len(texts)} is not UTF-8 text ({e.reason} at byte {e.start})"
            ) from None
        at += 4 + size
    return texts


def read_inputs(request: dict[str, Any], binary: bytes, model: Model) -> list[list[str]]:
    """The texts of each of the model's inputs, checked against the protocol and the model's metadata."""
    inputs = request.get("inputs")
    if not isinstance(inputs, list):
        raise RequestError("the request has no 'inputs' list")
    texts: dict[str, list[str]] = {}
    used = 0
    for tensor in inputs:
        name = tensor.get("name") if isinstance(tensor, dict) else None
        if name not in model.inputs:
            raise RequestError(
                f"unexpected input {json.dumps(name)}: model '{model.name}' takes {', '.join(model.inputs)}"
            )
        if name in texts:
            raise RequestError(f"input '{name}' appears twice")
        if tensor.get("datatype") != "BYTES":
            raise RequestError(
                f"input '{name}' has datatype {json.dumps(tensor.get('datatype'))}; expected BYTES "
                "(one UTF-8 text per example)"
            )
        shape = tensor.get("shape")
        if not (isinstance(shape, list) and len(shape) == 1 and _count(shape[0])):
            raise RequestError(f"input '{name}' has shape {json.dumps(shape)}; expected [N], one text per example")
        parameters = tensor.get("parameters") or {}
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is not None:
            if not _count(size) or used + size > len(binary):
                raise RequestError(
                    f"input '{name}': binary_data_size {size} does not add up: the inputs' binary "
                    f"data so far run past the {len(binary)} bytes after the JSON header"
                )
            elements = _bytes_elements(binary[used : used + size], name)
            used += size
        else:
            elements = tensor.get("data")
            if not isinstance(elements, list) or not all(isinstance(e, str) for e in elements):
                raise RequestError(f"input '{name}' needs 'data', a list of strings (or binary_data_size)")
        if len(elements) != shape[0]:
            raise RequestError(f"input '{name}' has shape {shape} but {len(elements)} elements")
        texts[name] = elements
    if used != len(binary):
        raise RequestError(
            f"the inputs' binary_data_size add up to {used} bytes, but {len(binary)} bytes follow the JSON header"
        )
    missing = [name for name in model.inputs if name not in texts]
    if missing:
        raise RequestError(f"missing input '{missing[0]}': model '{model.name}' takes {', '.join(model.inputs)}")
    counts = sorted({len(texts[name]) for name in model.inputs})
    if len(counts) > 1:
        raise RequestError(f"inputs {' and '.join(model.inputs)} differ in shape; give one text of each per example")
    if counts == [0]:
        raise RequestError("empty batch: the inputs hold no texts")
    return [texts[name] for name in model.inputs]


def requested_outputs(request: dict[str, Any], model: Model) -> list[tuple[str, bool]]:
    """(name, binary) of each output to return: the requested ones in order, or all of them."""
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise RequestError("the request's 'parameters' must be an object")
    binary = parameters.get("binary_data_output", False) is True
    outputs = request.get("outputs") or [{"name": name} for name in model.outputs]
    if not isinstance(outputs, list):
        raise RequestError("the request's 'outputs' must be a list")
    wanted = []
    for output in outputs:
        name = output.get("name") if isinstance(output, dict) else None
        if name not in model.outputs:
            raise RequestError(
                f"unknown output {json.dumps(name)}: model '{model.name}' has {', '.join(model.outputs)}"
            )
        own = output.get("parameters") or {}
        wanted.append((name, own.get("binary_data", binary) is True if isinstance(own, dict) else binary))
    return wanted


def encode_response(
    model: Model, request_id: str | None, outputs: list[tuple[str, bool]], results: dict[str, Any]
) -> Response:
    """The response: JSON, or JSON then binary tensor data when any output is asked for in binary."""
    tensors, chunks = [], []
    for name, binary in outputs:
        datatype, value = model.outputs[name][0], results[name]
        shape = [len(value)] if datatype == "BYTES" else list(value.shape)
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            raw = (
                b"".join(struct.pack("<I", len(b)) + b for b in (t.encode() for t in value))
                if datatype == "BYTES"
                else value.astype("<f4").tobytes()
            )
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = list(value) if datatype == "BYTES" else value.ravel().tolist()
        tensors.append(tensor)
    answer = {"model_name": model.name, "model_version": VERSION, "outputs": tensors}
    if request_id is not None:
        answer["id"] = request_id
    header = json.dumps(answer, separators=(",", ":")).encode()
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(
        header + b"".join(chunks), media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(header))}
    )
