"""oneflow-onnx 0.6.2 made to export this project's OneFlow 0.9 models correctly: every known incompatibility,
in one place (tests/test_onnx.py checks each through a real export).

1. `import oneflow_onnx` uses `np.bool`, which numpy >= 1.24 removed.
2. OneFlow's `flip` (the BiLSTM's backward direction) has no handler: ONNX `Slice` with step -1.
3. OneFlow's `stack` has no handler: `Unsqueeze` of each input, then `Concat`.
4. The exporter's stock `reduce_sum` handler keeps `axes` as an attribute, which opset 13 dropped, so ONNX
   sums over every axis (silently wrong); at opset 13 `axes` is passed as an input.
5. `Export` ends by rewriting its file with onnxsim when that is installed: a third of an export's time
   (9 of 23 s for MiniLM), for constant folding that onnxruntime does itself when it loads the model.
   `export_proto` builds the model as `Export` does, without that step, and returns it instead of a file.
6. `Export`'s graph optimisation deep-copies the whole graph, weights included, before each optimiser, so that
   one that fails can be skipped: for BERT-base 45 s and 4.8 GB. `export_proto` runs the same optimisers in
   the same order on the graph itself; one that fails fails the export.
Two more are avoided in the models themselves: position ids are a buffer (OneFlow's `arange` carries an
empty `nd_sbp` attribute that onnx rejects), and attention's K^T is one permute (the exporter's
transpose optimiser drops a permute followed by a transpose).
"""

from __future__ import annotations

import numpy as np

OPSET = 13
_patched = False


def _unique(name: str) -> str:
    import oneflow

    return oneflow._oneflow_internal.UniqueStr(name)


def _const_input(ctx, node, name: str, values) -> None:
    const = ctx.MakeConst(_unique(name), np.array(values, dtype=np.int64))
    node.input_tensor_names.append(const.output_tensor_names[0])


def patch() -> None:
    """Make `oneflow_onnx` importable and register the missing or wrong handlers (once per process)."""
    global _patched
    if _patched:
        return
    if "bool" not in np.__dict__:
        np.bool = bool  # type: ignore[attr-defined]
    from oneflow_onnx.oneflow2onnx.handler import flow_op

    @flow_op("flip", onnx_op="Slice")
    class Flip:  # registered by the decorator (as the two below)
        @classmethod
        def Version_10(cls, ctx, node, **kwargs):
            rank = len(ctx.get_shape(node.input_tensor_names[0]))
            dims = [d + rank if d < 0 else d for d in node.attrs.pop("dims")]
            _const_input(ctx, node, "flip_starts", [-1] * len(dims))
            _const_input(ctx, node, "flip_ends", [np.iinfo(np.int64).min] * len(dims))
            _const_input(ctx, node, "flip_axes", dims)
            _const_input(ctx, node, "flip_steps", [-1] * len(dims))

    @flow_op("stack", onnx_op="Concat")
    class Stack:
        @classmethod
        def Version_13(cls, ctx, node, **kwargs):
            rank = len(ctx.get_shape(node.input_tensor_names[0])) + 1
            axis = node.attrs.pop("axis")
            axis = axis + rank if axis < 0 else axis
            node.attrs.pop("max_dim_size", None)
            for index, name in enumerate(list(node.input_tensor_names)):
                axes = ctx.MakeConst(_unique("stack_axes"), np.array([axis], dtype=np.int64))
                unsqueezed = ctx.MakeNode(
                    "Unsqueeze", [name, axes.output_tensor_names[0]], name=_unique("stack_unsqueeze")
                )
                node.input_tensor_names[index] = unsqueezed.output_tensor_names[0]
            node.attrs["axis"] = axis

    @flow_op("reduce_sum", onnx_op="ReduceSum")
    class ReduceSum13:
        @classmethod
        def Version_13(cls, ctx, node, **kwargs):
            rank = len(ctx.get_shape(node.input_tensor_names[0]))
            axes = [a + rank if a < 0 else a for a in (node.attrs.pop("axis", None) or [])]
            if axes:
                _const_input(ctx, node, "reduce_sum_axes", axes)

    _patched = True


def export_proto(graph, weights_dir: str):
    """The ONNX model (a ModelProto) of `graph`, an nn.Graph that has run, whose constants `flow.save` wrote to
    `weights_dir`: oneflow-onnx's conversion and graph optimisation, as its `Export` runs them (item 5)."""
    patch()
    from oneflow_onnx.oneflow2onnx import flow2onnx, optimizer

    converted = flow2onnx.ProcessFlowGraph(graph._full_graph_proto, weights_dir, opset=OPSET)
    return _optimized(converted, optimizer._get_optimizers()).MakeModel("tmp", "model.onnx")


def _optimized(graph, optimizers):
    """oneflow-onnx's optimisers applied in its order until none changes the graph, in place (item 6)."""
    changed = True
    while changed:
        changed = False
        for factory in optimizers.values():
            optimizer = factory()
            graph = optimizer.Optimize(graph) or graph
            changed = changed or optimizer.graph_been_opt
    graph.TopologicalSort(graph.get_nodes())
    return graph
