"""`python -m distil export-onnx MODEL_DIR [OUT]`: a model directory as an ONNX model (default
MODEL_DIR/model.onnx) with a dynamic batch axis and, for BERT, a dynamic sequence axis, for onnxruntime
and any other ONNX runtime.

The export goes through OneFlow's own exporter (`oneflow-onnx`, patched by `distil.onnx_compat`) from the
model's inference graph, traced at a batch size and (BERT) a sequence length that no other dimension of
the model has; the shapes that hold them are then freed, so that `predict` and the teacher cache's pass can
cut batches to their longest member on onnxruntime as they do on OneFlow. The BiLSTM keeps the trained
sequence length: the exporter unrolls its time loop into one group of ops per step (ONNX would need a
Loop or Scan op, which it does not write), so the step count is the graph's structure, not a constant.
Before the file is written (atomically), onnx's checker runs and onnxruntime must reproduce OneFlow's
logits within 1e-4 on random right-padded inputs at several batch sizes and, with a dynamic sequence axis,
several lengths; an export that disagrees is an error, never a file.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from distil import onnx_compat
from distil.errors import UsageError
from distil.models import io
from distil.models.bert import Gelu, LayerNorm
from distil.runtime import import_oneflow
from distil.train.graph import MODEL_INPUTS

flow = import_oneflow()
log = logging.getLogger(__name__)

INPUTS = MODEL_INPUTS  # the ONNX graph's input names, in the models' argument order
OUTPUT = "logits"
TOLERANCE = 1e-4
CHECK_BATCHES = (1, 3)
DYNAMIC_SEQUENCE = ("bert",)  # the model types whose sequence axis is freed (see the module docstring)
PRIMES = (5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59)


class InferenceGraph(flow.nn.Graph):
    """The model's logits as a static graph: what the exporter reads."""

    def __init__(self, model: flow.nn.Module):
        super().__init__()
        self.model = model

    def build(self, input_ids, segment_ids, input_mask):
        return self.model.logits(input_ids, segment_ids, input_mask)


def _model_sizes(model_config: dict[str, Any]) -> list[int]:
    """The model's dimensions (its config's integers), which a traced size must not share."""
    return [v for v in model_config.values() if isinstance(v, int) and v >= 2]


def trace_batch(model_config: dict[str, Any], seq_length: int) -> int:
    """The smallest prime from 5 that divides no dimension of the model nor the traced `seq_length`, so that
    the traced shapes holding it, alone or merged with other axes, are the batch's; small, because an nn.Graph
    holds all its buffers (BERT-base: about 0.4 GB per row of 128 tokens)."""
    sizes = [seq_length, *_model_sizes(model_config)]
    return next(p for p in PRIMES if all(size % p for size in sizes))


def trace_length(model_config: dict[str, Any]) -> int:
    """The sequence length to trace a model with a dynamic sequence axis at: the smallest prime from 5 that
    divides no dimension of the model, so that a traced shape holding it is the sequence's."""
    return next(p for p in PRIMES if all(size % p for size in _model_sizes(model_config)))


def check_lengths(seq_length: int, dynamic: bool) -> list[int]:
    """The sequence lengths the self-check runs at: the full one and, when the axis is dynamic, about half of it
    and two tokens."""
    return sorted({seq_length, max(2, seq_length // 2), 2}) if dynamic else [seq_length]


def sample_inputs(batch: int, seq_length: int, vocab_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Random token ids with padding and two segments, as int32 like the converted data."""
    lengths = rng.integers(2, seq_length + 1, batch)
    positions = np.arange(seq_length)[None, :]
    mask = (positions < lengths[:, None]).astype(np.int32)
    ids = (rng.integers(1, vocab_size, (batch, seq_length)) * mask).astype(np.int32)
    segments = ((positions >= lengths[:, None] // 2) * mask).astype(np.int32)
    return [ids, segments, mask]


def _constants_and_shapes(proto) -> tuple[dict[str, np.ndarray], dict[str, list[int]]]:
    """The graph's constants, and the shape of every value, constant or inferred (0 for a symbolic axis)."""
    import onnx
    from onnx import numpy_helper

    inferred = onnx.shape_inference.infer_shapes(proto).graph
    constants = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in (*inferred.value_info, *inferred.input, *inferred.output)
    }
    return constants, {**{name: list(value.shape) for name, value in constants.items()}, **shapes}


def _own_constant(proto, node, index: int, values: np.ndarray) -> None:
    """Give `node` its own constant for input `index` (the exporter shares equal constants between nodes)."""
    from onnx import numpy_helper

    name = f"{node.input[index]}.{node.name}"
    proto.graph.initializer.append(numpy_helper.from_array(values.astype(np.int64), name))
    node.input[index] = name


def free_batch_axis(proto, batch: int) -> None:
    """Make the traced batch size dynamic: a Reshape target holding it (or, for an input that leads with it, a
    multiple of it) once reads -1 there (or 0 in first place, the input's first axis, when -1 is taken), a
    Slice ending at it ends at the axis' end, and the graph's inputs and outputs get a symbolic first axis."""
    initializers, shapes = _constants_and_shapes(proto)
    for node in proto.graph.node:
        if node.op_type == "Slice" and len(node.input) > 3 and node.input[2] in initializers:
            ends, axes = initializers[node.input[2]].copy(), initializers.get(node.input[3])
            dims = shapes.get(node.input[0])
            batch_axes = [
                i
                for i, axis in enumerate(axes if axes is not None else [])
                if dims and dims[axis] == batch and ends[i] == batch
            ]
            if batch_axes:  # a slice over the whole batch axis: to its end, whatever its size
                ends[batch_axes] = np.iinfo(np.int64).max
                _own_constant(proto, node, 2, ends)
        elif node.op_type == "Reshape" and node.input[1] in initializers:
            shape = initializers[node.input[1]].copy()
            at = np.flatnonzero(shape == batch) if shape.ndim == 1 else []
            if not len(at) and (shapes.get(node.input[0]) or [0])[0] == batch:  # the batch merged with other axes
                at = np.flatnonzero(shape % batch == 0) if shape.ndim == 1 else []
            if len(at) == 1 and (-1 not in shape or at[0] == 0):
                shape[at[0]] = 0 if -1 in shape else -1  # 0: the input's first axis, which is the batch's
                _own_constant(proto, node, 1, shape)
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"


def free_sequence_axis(proto, length: int) -> None:
    """Make the traced sequence length dynamic where the BERT graph holds it: a Reshape target that keeps its
    input's sequence axis in place (the attention heads' split and merge) reads 0 there (copy that axis), and a
    Slice taking the first `length` entries of a longer axis (the position ids of the position-id buffer) ends
    at the inputs' sequence length, read from the first input's shape when the graph runs. The graph's inputs
    get a symbolic second axis."""
    from onnx import helper, numpy_helper

    initializers, shapes = _constants_and_shapes(proto)
    measured = "sequence/length"  # (1,) int64: the inputs' sequence length
    proto.graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "sequence/axis"))
    nodes = [
        helper.make_node("Shape", [proto.graph.input[0].name], ["sequence/shape"], name="sequence/shape"),
        helper.make_node("Gather", ["sequence/shape", "sequence/axis"], [measured], name=measured, axis=0),
    ]
    for node in proto.graph.node:
        dims = (shapes.get(node.input[0]) or []) if node.input else []
        if node.op_type == "Slice" and len(node.input) > 3 and {node.input[2], node.input[3]} <= set(initializers):
            ends, axes = initializers[node.input[2]], initializers[node.input[3]]
            prefix = [
                i
                for i, axis in enumerate(axes)
                if ends[i] == length and -len(dims) <= axis < len(dims) and dims[axis] > length
            ]
            if prefix:  # the ends as a Concat of constants and the measured length
                parts = []
                for i, end in enumerate(ends):
                    parts.append(measured if i in prefix else f"{node.name}/end{i}")
                    if i not in prefix:
                        proto.graph.initializer.append(numpy_helper.from_array(np.array([end], np.int64), parts[-1]))
                nodes.append(helper.make_node("Concat", parts, [f"{node.name}/ends"], name=f"{node.name}/ends", axis=0))
                node.input[2] = f"{node.name}/ends"
        elif node.op_type == "Reshape" and node.input[1] in initializers:
            shape = initializers[node.input[1]].copy()
            at = [i for i, size in enumerate(shape) if size == length and i < len(dims) and dims[i] == length]
            if at:
                shape[at] = 0
                _own_constant(proto, node, 1, shape)
        nodes.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    for value in proto.graph.input:
        value.type.tensor_type.shape.dim[1].dim_param = "sequence"


def drop_stale_shapes_and_constants(proto) -> None:
    """Forget the inferred shapes (the traced ones) and the constants no node reads any more."""
    del proto.graph.value_info[:]
    used = {name for node in proto.graph.node for name in node.input}
    kept = [t for t in proto.graph.initializer if t.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)


def module_subgraph(proto, scope: str) -> tuple[list[int], str, str]:
    """The indices of the nodes a module's forward became, its one input and its one output; an error if they do
    not form such a block. Its ops' outputs carry the module's scope; nodes the exporter added between them
    (a Reshape-Gemm-Reshape for a matmul) carry none and belong to it when fed and read only by it."""
    nodes = list(proto.graph.node)
    constants = {t.name for t in proto.graph.initializer}
    scoped = {i for i, n in enumerate(nodes) if n.output and all(o.startswith(scope + "-") for o in n.output)}
    unscoped = {i for i, n in enumerate(nodes) if not any(o.startswith(scope.split(".")[0] + ".") for o in n.output)}
    readers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for name in n.input:
            readers.setdefault(name, []).append(i)
    graph_outputs = {o.name for o in proto.graph.output}

    def made(group) -> set:
        return {o for i in group for o in nodes[i].output}

    group = set(scoped)
    while True:  # unscoped nodes fed only by the group
        fed = {i for i in unscoped - group if set(nodes[i].input) - constants <= made(group)}
        if not fed:
            break
        group |= fed
    while True:  # ... and read only by it
        leaking = {
            i
            for i in group - scoped
            if any(o in graph_outputs or set(readers.get(o, ())) - group for o in nodes[i].output)
        }
        if not leaking:
            break
        group -= leaking
    inputs = {name for i in group for name in nodes[i].input if name and name not in constants} - made(group)
    outputs = {o for i in group for o in nodes[i].output if o in graph_outputs or set(readers.get(o, ())) - group}
    if len(inputs) != 1 or len(outputs) != 1:
        raise RuntimeError(
            f"ONNX export: the ops of {scope} have inputs {sorted(inputs)} and outputs {sorted(outputs)}; "
            f"expected one of each"
        )
    return sorted(group), inputs.pop(), outputs.pop()


def layer_norm_nodes(x: str, y: str, prefix: str, eps: str, two: str, gamma: str, beta: str) -> list[Any]:
    """LayerNorm over the last axis as the op pattern onnxruntime fuses into one LayerNormalization kernel."""
    from onnx import helper

    def node(op: str, inputs: list[str], output: str, **attrs) -> Any:
        return helper.make_node(op, inputs, [output], name=output, **attrs)

    return [
        node("ReduceMean", [x], f"{prefix}/mean", axes=[-1], keepdims=1),
        node("Sub", [x, f"{prefix}/mean"], f"{prefix}/centered"),
        node("Pow", [f"{prefix}/centered", two], f"{prefix}/squared"),
        node("ReduceMean", [f"{prefix}/squared"], f"{prefix}/variance", axes=[-1], keepdims=1),
        node("Add", [f"{prefix}/variance", eps], f"{prefix}/variance_eps"),
        node("Sqrt", [f"{prefix}/variance_eps"], f"{prefix}/std"),
        node("Div", [f"{prefix}/centered", f"{prefix}/std"], f"{prefix}/normalized"),
        node("Mul", [f"{prefix}/normalized", gamma], f"{prefix}/scaled"),
        node("Add", [f"{prefix}/scaled", beta], y),
    ]


def gelu_nodes(x: str, y: str, prefix: str, sqrt2: str, one: str, half: str) -> list[Any]:
    """The erf GELU as the op pattern onnxruntime fuses into one Gelu kernel."""
    from onnx import helper

    return [
        helper.make_node("Div", [x, sqrt2], [f"{prefix}/scaled"], name=f"{prefix}/scaled"),
        helper.make_node("Erf", [f"{prefix}/scaled"], [f"{prefix}/erf"], name=f"{prefix}/erf"),
        helper.make_node("Add", [f"{prefix}/erf", one], [f"{prefix}/erf_1"], name=f"{prefix}/erf_1"),
        helper.make_node("Mul", [x, f"{prefix}/erf_1"], [f"{prefix}/x_erf_1"], name=f"{prefix}/x_erf_1"),
        helper.make_node("Mul", [f"{prefix}/x_erf_1", half], [y], name=y),
    ]


def fusable_forms(proto, model: flow.nn.Module) -> int:
    """Rewrite each LayerNorm and GELU of the traced graph, whose forms are chosen to be fast in OneFlow (matmul
    means, a written-out erf), as the standard op patterns onnxruntime fuses into one kernel each. Returns the
    number of modules rewritten."""
    from onnx import numpy_helper

    def constant(name: str, value: np.ndarray) -> str:
        proto.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    two, one, half = constant("fusable/two", 2.0), constant("fusable/one", 1.0), constant("fusable/half", 0.5)
    sqrt2 = constant("fusable/sqrt2", np.sqrt(2.0))
    rewritten = 0
    for name, module in model.named_modules():
        if not isinstance(module, (LayerNorm, Gelu)):
            continue
        scope = f"model.{name}"
        group, x, y = module_subgraph(proto, scope)
        if isinstance(module, LayerNorm):
            gamma = constant(f"{scope}.weight", module.weight.numpy())
            beta = constant(f"{scope}.bias", module.bias.numpy())
            eps = constant(f"{scope}.eps", module.eps)
            new = layer_norm_nodes(x, y, scope, eps, two, gamma, beta)
        else:
            new = gelu_nodes(x, y, scope, sqrt2, one, half)
        nodes = list(proto.graph.node)
        del proto.graph.node[:]  # the new nodes where the module's last node was: after x, before y's readers
        proto.graph.node.extend(
            [n for i, n in enumerate(nodes[: group[-1]]) if i not in group]
            + new
            + [n for i, n in enumerate(nodes) if i > group[-1] and i not in group]
        )
        rewritten += 1
    return rewritten


def rename_io(proto) -> None:
    """The graph's inputs as input_ids / segment_ids / input_mask and its output as logits."""
    renames = {old.name: new for old, new in zip(proto.graph.input, INPUTS)}
    renames[proto.graph.output[0].name] = OUTPUT
    for value in (*proto.graph.input, *proto.graph.output):
        value.name = renames[value.name]
    for node in proto.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]


def max_difference(session, model: flow.nn.Module, inputs: list[np.ndarray]) -> float:
    """The largest |logit difference| between onnxruntime and OneFlow on `inputs`; infinite when onnxruntime
    returns another shape or cannot run them (a size the export left baked in)."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

    with flow.no_grad():
        expected = model(*(flow.tensor(x) for x in inputs))["logits"].numpy()
    try:
        got = session.run([OUTPUT], dict(zip(INPUTS, inputs)))[0]
    except (Fail, InvalidArgument, RuntimeException) as e:
        log.error("ONNX export: onnxruntime fails on inputs of shape %s: %s", inputs[0].shape, e)
        return float("inf")
    if got.shape != expected.shape:
        return float("inf")
    return float(np.abs(got - expected).max())


def export_onnx(
    model_dir: Path,
    out: Path | None = None,
    quantize: str = "",
    data_root: Path = Path(),
    max_metric_drop: float = 1.0,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Write `out` (default MODEL_DIR/model.onnx) and return what was checked; with `quantize` int8 also its INT8
    version beside it (model.int8.onnx), once that file's dev metric is within `max_metric_drop` points of FP32's."""
    if quantize not in QUANTIZE:
        raise UsageError(f"--quantize must be int8 (or not given), got '{quantize}'")
    if quantize and not (max_metric_drop >= 0 and batch_size >= 1):
        raise UsageError(
            f"--max_metric_drop must be >= 0 and --eval_batch_size >= 1, got {max_metric_drop} and {batch_size}"
        )
    config = io.read_config(model_dir)
    io.weights_mtime(model_dir)  # (an error without weights)
    seq_length = (config.get("data") or {}).get("seq_length")
    if not seq_length:
        raise UsageError(f"{model_dir / io.CONFIG_FILE}: no data.seq_length (export a model trained on converted data)")
    out = Path(out) if out else model_dir / io.ONNX_FILE
    if out.is_dir():
        raise UsageError(f"{out} is a directory; give the ONNX file's path")
    model = io.load_model(model_dir).eval()
    if quantize:  # the dev split is needed: fail on a missing one before the export's work
        eval_split = open_dev_split(model_dir, config, data_root)
    summary = {"model_dir": str(model_dir), **export_model(model, seq_length, out, str(model_dir))}
    if quantize:
        summary["int8"] = quantize_int8(model_dir, out, model, eval_split, config, max_metric_drop, batch_size)
    return summary


QUANTIZE = ("", "int8")
INT8_OPERATORS = ("MatMul", "Gemm", "Gather")  # the dense layers and the embedding tables


def cpu_has_vnni() -> bool:
    """Whether this x86 CPU has VNNI (AVX512-VNNI or AVX-VNNI): /proc/cpuinfo's flags (False when unknown)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace").split()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def open_dev_split(model_dir: Path, config: dict[str, Any], data_root: Path):
    """The model's dev split under `data_root` (as `eval` reads it), checked against the model's vocabulary."""
    from distil.train.run import open_eval_splits

    if not config.get("task"):
        raise UsageError(f"{model_dir} has no task (a pretrained model): --quantize int8 needs its dev metric")
    return open_eval_splits(model_dir, config, data_root)["eval"]  # (an error naming missing data)


def onnx_dev_metrics(path: Path, model: flow.nn.Module, split, metrics: list[str], batch_size: int) -> dict[str, float]:
    """The task's metrics of an ONNX file on the dev split, batches cut to their length as `eval` cuts them."""
    from distil.data.dataset import OFRecordDataset
    from distil.predict import OnnxEngine
    from distil.train.graph import SplitPass
    from distil.train.metrics import compute_metrics
    from distil.train.placement import Placement

    engine, placement = OnnxEngine(path), Placement("cpu")
    data = OFRecordDataset(split, batch_size, features=(*MODEL_INPUTS, "label_ids"), placement=placement)

    def compute(_: flow.nn.Module, batch: dict[str, flow.Tensor]) -> dict[str, flow.Tensor]:
        logits = engine({name: batch[name].numpy() for name in MODEL_INPUTS})
        return {"logits": flow.tensor(logits), "labels": batch["label_ids"]}

    values = SplitPass(compute, model, data, placement, cut=engine.cuts).run()
    return compute_metrics(metrics, values["logits"], values["labels"])


def quantize_int8(
    model_dir: Path,
    fp32: Path,
    model: flow.nn.Module,
    split,
    config: dict[str, Any],
    max_metric_drop: float,
    batch_size: int,
) -> dict[str, Any]:
    """Write the INT8 file beside `fp32` (MODEL_DIR/model.int8.onnx): onnxruntime's dynamic quantization of `fp32`
    (weights int8, activations uint8 quantized per batch: no calibration data), refused when the dev metric drops
    more than `max_metric_drop` points.

    The operators are those holding the weights: MatMul/Gemm (the dense layers, the work) and Gather (the
    embedding tables, most of a small student's bytes). Weights are int8 (U8S8: onnxruntime's fast path on
    x86-64). reduce_range (7-bit weights) only without VNNI: onnxruntime's guidance is that on AVX2/AVX512
    CPUs without VNNI the U8S8 products can saturate, and that VNNI CPUs do not need it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    metrics = list(config["task"]["metrics"])
    main = metrics[0]
    out = fp32.with_name(fp32.name.removesuffix(".onnx") + ".int8.onnx")  # MODEL_DIR/model.int8.onnx by default
    reduce_range = not cpu_has_vnni()
    with tempfile.TemporaryDirectory(prefix=".onnx-int8-", dir=out.parent) as tmp:
        staged = Path(tmp) / out.name
        quantize_dynamic(
            str(fp32),
            str(staged),
            op_types_to_quantize=list(INT8_OPERATORS),
            weight_type=QuantType.QInt8,
            reduce_range=reduce_range,
        )
        before = onnx_dev_metrics(fp32, model, split, metrics, batch_size)
        after = onnx_dev_metrics(staged, model, split, metrics, batch_size)
        drop = 100.0 * (before[main] - after[main])
        report = {
            "onnx": str(out),
            "operators": list(INT8_OPERATORS),
            "weight_type": "int8",
            "reduce_range": reduce_range,
            "dev_fp32": before,
            "dev_int8": after,
            f"{main}_drop_points": round(drop, 3),
            "max_metric_drop": max_metric_drop,
            "size_mb_fp32": round(fp32.stat().st_size / 2**20, 2),
            "size_mb_int8": round(staged.stat().st_size / 2**20, 2),
        }
        if not drop <= max_metric_drop:
            raise UsageError(
                f"{model_dir}: INT8 dev {main} {after[main]:.4f} is {drop:.2f} points below FP32's "
                f"{before[main]:.4f} (--max_metric_drop {max_metric_drop}); {out.name} not written"
            )
        os.replace(staged, out)
    log.info(
        "INT8: %s (%.1f MB, FP32 %.1f MB); dev %s %.4f vs FP32 %.4f",
        out,
        report["size_mb_int8"],
        report["size_mb_fp32"],
        main,
        after[main],
        before[main],
    )
    return report


def export_model(model: flow.nn.Module, seq_length: int, out: Path, what: str) -> dict[str, Any]:
    """Write the logits of `model` (local, on the CPU, in eval mode) for `seq_length` tokens (or, for a model type
    in DYNAMIC_SEQUENCE, any number up to it) to `out` once onnxruntime reproduces them; `what` names the model in
    messages."""
    import onnx
    import onnxruntime

    vocab_size, sizes = model.config.vocab_size, model.config.to_dict()
    dynamic = model.config.model_type in DYNAMIC_SEQUENCE
    rng = np.random.default_rng(0)
    length = trace_length(sizes) if dynamic else seq_length
    batch = trace_batch(sizes, length)
    traced_inputs = sample_inputs(batch, length, vocab_size, rng)
    graph = InferenceGraph(model)
    graph(*(flow.tensor(x) for x in traced_inputs))
    with tempfile.TemporaryDirectory(prefix=".onnx-export-", dir=out.parent) as tmp:
        state = graph.state_dict()
        # the exporter reads every constant from this file, non-persistent buffers included
        state["model"] = {**dict(model.named_buffers()), **state["model"]}
        flow.save(state, os.path.join(tmp, "weights"))
        proto = onnx_compat.export_proto(graph, os.path.join(tmp, "weights"))
        fusable_forms(proto, model)
        if dynamic:
            free_sequence_axis(proto, length)
        free_batch_axis(proto, batch)
        drop_stale_shapes_and_constants(proto)
        rename_io(proto)
        onnx.checker.check_model(proto)
        staged = Path(tmp) / io.ONNX_FILE
        onnx.save(proto, str(staged))
        session = onnxruntime.InferenceSession(str(staged), providers=["CPUExecutionProvider"])
        shapes = [(batch, length), *((b, n) for n in check_lengths(seq_length, dynamic) for b in CHECK_BATCHES)]
        differences = {
            (b, n): max_difference(
                session, model, traced_inputs if (b, n) == (batch, length) else sample_inputs(b, n, vocab_size, rng)
            )
            for b, n in shapes
        }
        worst = max(differences.values())
        if not worst <= TOLERANCE:
            listed = ", ".join(f"{b}x{n}: {d:.2g}" for (b, n), d in differences.items())
            raise UsageError(
                f"{what}: the ONNX export disagrees with OneFlow (max |logit difference| per batch size x "
                f"sequence length: {listed}); not written"
            )
        os.replace(staged, out)
    axes = {0: "batch", 1: "sequence"} if dynamic else {0: "batch"}
    summary = {
        "onnx": str(out),
        "opset": onnx_compat.OPSET,
        "inputs": list(INPUTS),
        "dynamic_axes": {**{name: axes for name in INPUTS}, OUTPUT: {0: "batch"}},
        "nodes": len(proto.graph.node),
        "max_abs_logit_difference": worst,
        "checked_shapes": sorted([b, n] for b, n in differences),
    }
    log.info(
        "exported %s to %s (%d nodes, %s; onnxruntime matches OneFlow within %.1e)",
        what,
        out,
        len(proto.graph.node),
        "dynamic batch and sequence axes" if dynamic else "dynamic batch axis",
        worst,
    )
    return summary
