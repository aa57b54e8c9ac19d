"""`python -m distil export-onnx MODEL_DIR [OUT]`: a model directory as an ONNX model (default
MODEL_DIR/model.onnx) with a dynamic batch axis, for onnxruntime and any other ONNX runtime.

The export goes through OneFlow's own exporter (`oneflow-onnx`, patched by `distil.onnx_compat`) from the
model's inference graph, traced at a batch size that no other dimension of the model has; the shapes
that hold that batch size are then freed. Before the file is written (atomically), onnx's checker runs
and onnxruntime must reproduce OneFlow's logits within 1e-4 on random inputs at three batch sizes; an
export that disagrees is an error, never a file.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

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


class InferenceGraph(flow.nn.Graph):
    """The model's logits as a static graph: what the exporter reads."""

    def __init__(self, model: flow.nn.Module):
        super().__init__()
        self.model = model

    def build(self, input_ids, segment_ids, input_mask):
        return self.model.logits(input_ids, segment_ids, input_mask)


def trace_batch(model_config: Dict[str, Any], seq_length: int) -> int:
    """The smallest prime from 5 that divides no dimension of the model, so that the traced shapes holding
    it, alone or merged with other axes, are the batch's; small, because tracing BERT-base in an nn.Graph
    holds about 0.4 GB per row."""
    sizes = [seq_length, *(v for v in model_config.values() if isinstance(v, int) and v >= 2)]
    return next(p for p in (5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59)
                if all(size % p for size in sizes))


def sample_inputs(batch: int, seq_length: int, vocab_size: int, rng: np.random.Generator) -> List[np.ndarray]:
    """Random token ids with padding and two segments, as int32 like the converted data."""
    lengths = rng.integers(2, seq_length + 1, batch)
    positions = np.arange(seq_length)[None, :]
    mask = (positions < lengths[:, None]).astype(np.int32)
    ids = (rng.integers(1, vocab_size, (batch, seq_length)) * mask).astype(np.int32)
    segments = ((positions >= lengths[:, None] // 2) * mask).astype(np.int32)
    return [ids, segments, mask]


def free_batch_axis(proto, batch: int) -> None:
    """Make the traced batch size dynamic: a Reshape target holding it (or, for an input that leads with it, a
    multiple of it) once reads -1 there (or 0 in first place, the input's first axis, when -1 is taken), a Slice ending at it ends at the axis' end, and the graph's
    inputs and outputs get a symbolic first axis. (The exporter shares equal constants between nodes, so
    each changed constant becomes the node's own.)"""
    import onnx
    from onnx import numpy_helper

    initializers = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    inferred = onnx.shape_inference.infer_shapes(proto).graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*inferred.value_info, *inferred.input, *inferred.output)}

    def replace(node, index: int, values: np.ndarray) -> None:
        name = f"{node.input[index]}.{node.name}"
        proto.graph.initializer.append(numpy_helper.from_array(values.astype(np.int64), name))
        node.input[index] = name

    for node in proto.graph.node:
        if node.op_type == "Slice" and len(node.input) > 3 and node.input[2] in initializers:
            ends, axes = initializers[node.input[2]].copy(), initializers.get(node.input[3])
            dims = shapes.get(node.input[0])
            batch_axes = [i for i, axis in enumerate(axes if axes is not None else [])
                          if dims and dims[axis] == batch and ends[i] == batch]
            if batch_axes:  # a slice over the whole batch axis: to its end, whatever its size
                ends[batch_axes] = np.iinfo(np.int64).max
                replace(node, 2, ends)
        elif node.op_type == "Reshape" and node.input[1] in initializers:
            shape = initializers[node.input[1]].copy()
            at = np.flatnonzero(shape == batch) if shape.ndim == 1 else []
            if not len(at) and (shapes.get(node.input[0]) or [0])[0] == batch:  # the batch merged with other axes
                at = np.flatnonzero(shape % batch == 0) if shape.ndim == 1 else []
            if len(at) == 1 and (-1 not in shape or at[0] == 0):
                shape[at[0]] = 0 if -1 in shape else -1  # 0: the input's first axis, which is the batch's
                replace(node, 1, shape)
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    del proto.graph.value_info[:]
    used = {name for node in proto.graph.node for name in node.input}
    kept = [t for t in proto.graph.initializer if t.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)


def module_subgraph(proto, scope: str) -> Tuple[List[int], str, str]:
    """The indices of the nodes a module's forward became, its one input and its one output; an error if they do
    not form such a block. Its ops' outputs carry the module's scope; nodes the exporter added between them
    (a Reshape-Gemm-Reshape for a matmul) carry none and belong to it when fed and read only by it."""
    nodes = list(proto.graph.node)
    constants = {t.name for t in proto.graph.initializer}
    scoped = {i for i, n in enumerate(nodes) if n.output and all(o.startswith(scope + "-") for o in n.output)}
    unscoped = {i for i, n in enumerate(nodes) if not any(o.startswith(scope.split(".")[0] + ".") for o in n.output)}
    readers: Dict[str, List[int]] = {}
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
        leaking = {i for i in group - scoped if any(o in graph_outputs or set(readers.get(o, ())) - group
                                                    for o in nodes[i].output)}
        if not leaking:
            break
        group -= leaking
    inputs = {name for i in group for name in nodes[i].input if name and name not in constants} - made(group)
    outputs = {o for i in group for o in nodes[i].output if o in graph_outputs or set(readers.get(o, ())) - group}
    if len(inputs) != 1 or len(outputs) != 1:
        raise RuntimeError(f"ONNX export: the ops of {scope} have inputs {sorted(inputs)} and outputs {sorted(outputs)}; "
                           f"expected one of each")
    return sorted(group), inputs.pop(), outputs.pop()


def layer_norm_nodes(x: str, y: str, prefix: str, eps: str, two: str, gamma: str, beta: str) -> List[Any]:
    """LayerNorm over the last axis as the op pattern onnxruntime fuses into one LayerNormalization kernel."""
    from onnx import helper

    def node(op: str, inputs: List[str], output: str, **attrs) -> Any:
        return helper.make_node(op, inputs, [output], name=output, **attrs)

    return [node("ReduceMean", [x], f"{prefix}/mean", axes=[-1], keepdims=1),
            node("Sub", [x, f"{prefix}/mean"], f"{prefix}/centered"),
            node("Pow", [f"{prefix}/centered", two], f"{prefix}/squared"),
            node("ReduceMean", [f"{prefix}/squared"], f"{prefix}/variance", axes=[-1], keepdims=1),
            node("Add", [f"{prefix}/variance", eps], f"{prefix}/variance_eps"),
            node("Sqrt", [f"{prefix}/variance_eps"], f"{prefix}/std"),
            node("Div", [f"{prefix}/centered", f"{prefix}/std"], f"{prefix}/normalized"),
            node("Mul", [f"{prefix}/normalized", gamma], f"{prefix}/scaled"),
            node("Add", [f"{prefix}/scaled", beta], y)]


def gelu_nodes(x: str, y: str, prefix: str, sqrt2: str, one: str, half: str) -> List[Any]:
    """The erf GELU as the op pattern onnxruntime fuses into one Gelu kernel."""
    from onnx import helper

    return [helper.make_node("Div", [x, sqrt2], [f"{prefix}/scaled"], name=f"{prefix}/scaled"),
            helper.make_node("Erf", [f"{prefix}/scaled"], [f"{prefix}/erf"], name=f"{prefix}/erf"),
            helper.make_node("Add", [f"{prefix}/erf", one], [f"{prefix}/erf_1"], name=f"{prefix}/erf_1"),
            helper.make_node("Mul", [x, f"{prefix}/erf_1"], [f"{prefix}/x_erf_1"], name=f"{prefix}/x_erf_1"),
            helper.make_node("Mul", [f"{prefix}/x_erf_1", half], [y], name=y)]


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
        proto.graph.node.extend([n for i, n in enumerate(nodes[:group[-1]]) if i not in group] + new +
                                [n for i, n in enumerate(nodes) if i > group[-1] and i not in group])
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


def max_difference(session, model: flow.nn.Module, inputs: List[np.ndarray]) -> float:
    with flow.no_grad():
        expected = model(*(flow.tensor(x) for x in inputs))["logits"].numpy()
    got = session.run([OUTPUT], dict(zip(INPUTS, inputs)))[0]
    if got.shape != expected.shape:
        return float("inf")
    return float(np.abs(got - expected).max())


def export_onnx(model_dir: Path, out: Optional[Path] = None) -> Dict[str, Any]:
    """Write `out` (default MODEL_DIR/model.onnx) and return what was checked."""
    config = io.read_config(model_dir)
    io.weights_mtime(model_dir)  # (an error without weights)
    seq_length = (config.get("data") or {}).get("seq_length")
    if not seq_length:
        raise UsageError(f"{model_dir / io.CONFIG_FILE}: no data.seq_length (export a model trained on converted data)")
    out = Path(out) if out else model_dir / io.ONNX_FILE
    if out.is_dir():
        raise UsageError(f"{out} is a directory; give the ONNX file's path")
    summary = export_model(io.load_model(model_dir).eval(), seq_length, out, str(model_dir))
    return {"model_dir": str(model_dir), **summary}


def export_model(model: flow.nn.Module, seq_length: int, out: Path, what: str) -> Dict[str, Any]:
    """Write the logits of `model` (local, on the CPU, in eval mode) at `seq_length` to `out` once onnxruntime
    reproduces them; `what` names the model in messages."""
    import onnx
    import onnxruntime

    vocab_size = model.config.vocab_size
    rng = np.random.default_rng(0)
    batch = trace_batch(model.config.to_dict(), seq_length)
    traced_inputs = sample_inputs(batch, seq_length, vocab_size, rng)
    graph = InferenceGraph(model)
    graph(*(flow.tensor(x) for x in traced_inputs))
    with tempfile.TemporaryDirectory(prefix=".onnx-export-", dir=out.parent) as tmp:
        state = graph.state_dict()
        # the exporter reads every constant from this file, non-persistent buffers included
        state["model"] = {**dict(model.named_buffers()), **state["model"]}
        flow.save(state, os.path.join(tmp, "weights"))
        proto = onnx_compat.export_proto(graph, os.path.join(tmp, "weights"))
        fusable_forms(proto, model)
        free_batch_axis(proto, batch)
        rename_io(proto)
        onnx.checker.check_model(proto)
        staged = Path(tmp) / io.ONNX_FILE
        onnx.save(proto, str(staged))
        session = onnxruntime.InferenceSession(str(staged), providers=["CPUExecutionProvider"])
        differences = {b: max_difference(session, model, traced_inputs if b == batch else
                                         sample_inputs(b, seq_length, vocab_size, rng))
                       for b in (batch, *CHECK_BATCHES)}
        worst = max(differences.values())
        if not worst <= TOLERANCE:
            raise UsageError(f"{what}: the ONNX export disagrees with OneFlow (max |logit difference| per batch "
                             f"size: {differences}); not written")
        os.replace(staged, out)
    summary = {"onnx": str(out), "opset": onnx_compat.OPSET, "inputs": list(INPUTS),
               "dynamic_axes": {name: {0: "batch"} for name in (*INPUTS, OUTPUT)}, "nodes": len(proto.graph.node),
               "max_abs_logit_difference": worst, "checked_batch_sizes": sorted(differences)}
    log.info("exported %s to %s (%d nodes; onnxruntime matches OneFlow within %.1e)", what, out,
             len(proto.graph.node), worst)
    return summary
