"""Comparison (b) of `bench/bench_serve.py`: an HF BertForSequenceClassification folder served by PyTorch +
transformers behind the same stack as `python -m distil serve` (uvicorn + Starlette), one forward pass per
request (no batching), answering the Open Inference Protocol's JSON infer request for input `text` with
`probabilities`. Run by the reference venv's python (torch, transformers, uvicorn, starlette).

Usage: /work/torchref/bin/python bench/torch_serve.py HF_FOLDER MODEL_ID PORT SEQ
"""

from __future__ import annotations

import asyncio
import sys

import torch
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from transformers import BertForSequenceClassification, BertTokenizerFast


def build_app(folder: str, model_id: str, seq: int) -> Starlette:
    """The infer and readiness routes; each request is tokenized and run alone, off the event loop."""
    torch.set_num_threads(2)
    model = BertForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = BertTokenizerFast.from_pretrained(folder)

    def probabilities(texts):
        inputs = tokenizer(texts, truncation=True, max_length=seq, padding=True, return_tensors="pt")
        with torch.no_grad():
            return torch.softmax(model(**inputs).logits, dim=-1).numpy()

    async def infer(request: Request) -> JSONResponse:
        body = await request.json()
        texts = next(i["data"] for i in body["inputs"] if i["name"] == "text")
        values = await asyncio.get_running_loop().run_in_executor(None, probabilities, texts)
        return JSONResponse(
            {
                "model_name": model_id,
                "id": body.get("id", ""),
                "outputs": [
                    {
                        "name": "probabilities",
                        "datatype": "FP32",
                        "shape": list(values.shape),
                        "data": values.reshape(-1).tolist(),
                    }
                ],
            }
        )

    async def ready(request: Request) -> JSONResponse:
        return JSONResponse({})

    return Starlette(
        routes=[Route(f"/v2/models/{model_id}/infer", infer, methods=["POST"]), Route("/v2/health/ready", ready)]
    )


if __name__ == "__main__":
    folder, model_id, port, seq = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    uvicorn.run(build_app(folder, model_id, seq), host="127.0.0.1", port=port, log_level="warning")
