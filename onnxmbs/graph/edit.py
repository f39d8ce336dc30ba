"""Graph edits, done with onnx-graphsurgeon: import, edit tensors and nodes, clean up, export.

Every edit returns a new ``ModelProto``; the model passed in is never modified. These are
the edits the stages share: exposing inner tensors as outputs (shape probes, the
statistics of a sub-model, least-squares reconstruction), cutting out the sub-model
between tensors (block scoring runs only the suffix after a block), rewiring readers
of one tensor to another while dropping nodes (block removal), and gathering tensors at
positions fed with each run (the reconstruction's targets, without exposing whole tensors).
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import onnx

from onnxmbs.errors import MBSError


def _export(graph, like: onnx.ModelProto) -> onnx.ModelProto:
    import onnx_graphsurgeon as gs

    out = gs.export_onnx(graph.cleanup().toposort(), do_type_check=False)
    out.ir_version = like.ir_version
    del out.opset_import[:]
    out.opset_import.extend(like.opset_import)
    del out.metadata_props[:]
    out.metadata_props.extend(like.metadata_props)
    out.producer_name, out.producer_version = like.producer_name, like.producer_version
    return out


def _import(model: onnx.ModelProto):
    """The graphsurgeon graph, with inferred types where onnx can infer them (exposed tensors need one)."""
    import onnx_graphsurgeon as gs

    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - custom ops etc.: edit without the inferred types
        pass
    return gs.import_onnx(model)


def _typed(tensors: list) -> list:
    import numpy as np

    for tensor in tensors:
        if getattr(tensor, "dtype", None) is None:
            tensor.dtype = np.float32
    return tensors


def _tensors(graph, names: Sequence[str], what: str) -> list:
    tensors = graph.tensors()
    missing = [n for n in names if n not in tensors]
    if missing:
        raise MBSError(f"tensor(s) {', '.join(missing[:3])} are not in the model — {what}")
    return [tensors[n] for n in names]


def expose(model: onnx.ModelProto, names: Sequence[str], *, keep_outputs: bool = True) -> onnx.ModelProto:
    """The model with inner tensors ``names`` as extra graph outputs (after its own, unless ``keep_outputs=False``)."""
    graph = _import(model)
    extra = _typed(_tensors(graph, names, "expose only tensors the model computes"))
    outputs = list(graph.outputs) if keep_outputs else []
    graph.outputs = outputs + [t for t in extra if t not in outputs]
    return _export(graph, model)


def gather_at(model: onnx.ModelProto, taps: Sequence[tuple[str, int | None]]) -> onnx.ModelProto:
    """The model whose outputs are inner tensors at positions given with each run, one per tap.

    A tap ``(tensor, None)`` reads an NCHW tensor at the rows of its index input ``at_<i>``
    ``(rows, 3)`` = (image, y, x) and gives ``(rows, C)``; ``(tensor, K)`` reads a ``(N, ..., K)``
    tensor as ``(N, M, K)`` at ``(rows, 2)`` = (image, m) and gives ``(rows, K)``. Output ``i`` is
    tap ``i``'s; only the nodes the taps need are kept, so a run holds one batch's activations
    inside onnxruntime and hands back only the sampled rows.
    """
    import numpy as np
    import onnx_graphsurgeon as gs

    graph = _import(model)
    tensors = graph.tensors()
    _tensors(graph, [t for t, _ in taps], "gather only tensors the model computes")
    moved: dict[tuple[str, int | None], object] = {}
    outputs, inputs = [], [t for t in graph.inputs]
    for i, (name, features) in enumerate(taps):
        source = tensors[name]
        if (name, features) not in moved:
            view = gs.Variable(f"onnxmbs_view_{i}", dtype=source.dtype)
            if features is None:
                graph.nodes.append(gs.Node("Transpose", name=f"onnxmbs_nhwc_{i}", attrs={"perm": [0, 2, 3, 1]},
                                           inputs=[source], outputs=[view]))
            else:
                shape = gs.Constant(f"onnxmbs_rows_shape_{i}", np.array([0, -1, features], np.int64))
                graph.nodes.append(gs.Node("Reshape", name=f"onnxmbs_rows_{i}", inputs=[source, shape],
                                           outputs=[view]))
            moved[(name, features)] = view
        at = gs.Variable(f"at_{i}", dtype=np.int64, shape=["rows", 3 if features is None else 2])
        out = gs.Variable(f"sampled_{i}", dtype=source.dtype or np.float32)
        graph.nodes.append(gs.Node("GatherND", name=f"onnxmbs_gather_{i}", inputs=[moved[(name, features)], at],
                                   outputs=[out]))
        inputs.append(at)
        outputs.append(out)
    graph.inputs, graph.outputs = inputs, outputs
    return _export(graph, model)


def extract(model: onnx.ModelProto, inputs: Sequence[str], outputs: Sequence[str]) -> onnx.ModelProto:
    """The sub-model computing ``outputs`` from ``inputs`` (and the constants it needs)."""
    graph = _import(model)
    graph.inputs = _typed(_tensors(graph, inputs, "cut the model at tensors it has"))
    graph.outputs = _typed(_tensors(graph, outputs, "cut the model at tensors it has"))
    return _export(graph, model)


def rewire(model: onnx.ModelProto, rename: Mapping[str, str], *, drop: Collection[str] = ()) -> onnx.ModelProto:
    """Readers of tensor ``a`` read ``rename[a]`` instead; the nodes named in ``drop`` go.

    A renamed tensor that is a graph output keeps its name through an Identity of its
    replacement. Whatever no output needs any more (nodes, constants) is removed.
    """
    import onnx_graphsurgeon as gs

    graph = _import(model)
    tensors = graph.tensors()
    targets = {old: tensors[new] for old, new in rename.items() if old in tensors and new in tensors}
    if len(targets) != len(rename):
        raise MBSError("a rewired tensor is not in the model — rewire only tensors of this model")
    graph.nodes = [n for n in graph.nodes if n.name not in drop]
    for node in graph.nodes:
        node.inputs = [targets.get(t.name, t) for t in node.inputs]
    for i, out in enumerate(graph.outputs):
        if out.name in targets:
            bridge = gs.Variable(out.name, dtype=out.dtype, shape=out.shape)
            out.name = f"{out.name}__replaced"
            graph.nodes.append(gs.Node("Identity", name=f"{bridge.name}_bypass", inputs=[targets[bridge.name]],
                                       outputs=[bridge]))
            graph.outputs[i] = bridge
    return _export(graph, model)
