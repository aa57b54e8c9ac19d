"""`python -m distil serve MODEL_DIR [MODEL_DIR ...]`: trained models behind HTTP, speaking the Open Inference
Protocol (KServe v2, Triton's HTTP/REST API) with its binary tensor data extension, so that `tritonclient`,
KServe tooling and plain HTTP can all call them.

Each model is served under its directory's name. It takes the BYTES input `text` (and `text_pair` for a pair
task), one UTF-8 text per example, and answers `probabilities` (FP32 [N, labels]) and `label` (BYTES [N]), or
`score` (FP32 [N]) for STS-B. Texts become features exactly as `predict` makes them (`Featurizer`: the model's
vocabulary, casing and sequence length, longer texts truncated), and probabilities are its softmax in float64,
so the answers are `predict`'s.

Requests for a model wait in its queue and run together, as Triton's dynamic batcher runs them: a batch takes
queued requests until it holds --max_batch_size examples or --max_queue_delay_us have passed since its first
request was queued; it is cut to its longest text and computed on the model's own worker thread while the
event loop goes on serving (a request of more examples than that runs alone, in batches of that size). The
delay is 0 by default, as Triton's: an idle model computes a request at once, and the requests that arrive while
it computes form the next batch, so batches grow with the load without making a lone request wait. An error
in a batch fails its own requests only (500). The engine is chosen as `predict` chooses it: onnxruntime when the
directory holds a current model.onnx, else OneFlow. Request bodies over --max_body_bytes get 413.

GET /metrics has Triton's per-model counters (label `model`) in Prometheus text format. Their names are
Triton's, which lack the `_total` that prometheus-client gives every counter, so they are exposed untyped. As in
Triton, each request in a batch is charged the batch's whole compute time.
SIGTERM or SIGINT stops the server as Triton stops: new inference requests get 503 and readiness turns false,
every accepted request is finished, then the process exits 0.
"""

from distil.serve.server import serve  # noqa: F401  (the CLI's entry point)
