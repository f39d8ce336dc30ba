"""The op registry: every op implements or declines every stage, and the stages keep no op tables."""
from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphs import GraphBuilder
from onnxmbs import analyze
from onnxmbs.graph.proto import attr, external_locations, node_names
from onnxmbs.ops.registry import OPS, FAMILY, kind, lookup, ops_with, param_inputs
from onnxmbs.ops.rules import STAGES, Declined, OpRules, Params

# stage field -> (module that implements it, the name of its kinds)
STAGE_KINDS = {
    "rf": ("onnxmbs.graph.shapes", "RF_KINDS"),
    "channels": ("onnxmbs.graph.channels", "CHANNEL_KINDS"),
    "macs": ("onnxmbs.graph.costs", "MAC_KINDS"),
    "tap": ("onnxmbs.graph.activations", "TAP_KINDS"),
    "tap_gate": ("onnxmbs.graph.activations", "GATE_KINDS"),
    "tap_walk": ("onnxmbs.graph.activations", "WALK_KINDS"),
    "spec": ("onnxmbs.planning.scaling", "SPEC_KINDS"),
    "surgery": ("onnxmbs.compact.surgery", "SURGERY_KINDS"),
    "fit": ("onnxmbs.compact.fits", "FIT_KINDS"),
    "index": ("onnxmbs.compact.index", "INDEX_KINDS"),
}
STAGE_MODULES = sorted({module for module, _ in STAGE_KINDS.values()})
ONNX_OPS = {s.name for s in onnx.defs.get_all_schemas()}


def _kinds(stage):
    module, name = STAGE_KINDS[stage]
    return getattr(importlib.import_module(module), name)


def test_every_stage_field_has_a_checked_place():
    assert set(STAGES) == set(STAGE_KINDS) | {"params"}
    assert set(STAGES) == {f for f in OpRules.__dataclass_fields__ if f != "op"}


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_op_implements_or_declines_every_stage(op):
    rules = OPS[op]
    assert rules.op == op
    for stage in STAGE_KINDS:
        value = getattr(rules, stage)
        if isinstance(value, Declined):
            assert value.reason.strip(), f"{op}: {stage} declined without a reason"
        else:
            assert value in _kinds(stage), f"{op}: {stage} kind {value!r} is not implemented by the stage"
    if isinstance(rules.params, Params):
        assert rules.params.inputs and all(isinstance(i, int) and i >= 0 for i in rules.params.inputs)
    else:
        assert isinstance(rules.params, Declined) and rules.params.reason.strip()


def test_every_kind_a_stage_implements_is_used():
    for stage in STAGE_KINDS:
        used = {getattr(r, stage) for r in OPS.values() if isinstance(getattr(r, stage), str)}
        assert used == set(_kinds(stage)), f"{stage}: kinds without an op {set(_kinds(stage)) - used}"


def test_declined_needs_a_reason_and_records_are_frozen():
    with pytest.raises(ValueError):
        Declined("  ")
    with pytest.raises(AttributeError):
        OPS["Conv"].rf = "pass"  # type: ignore[misc]


def test_registered_ops_are_onnx_ops_or_known_contrib_ops():
    contrib = {"FastGelu", "QuickGelu", "BiasGelu", "Swish"}  # onnxruntime's com.microsoft domain, and Swish
    assert set(OPS) - ONNX_OPS <= contrib


def test_each_op_belongs_to_one_family_module():
    for op, family in FAMILY.items():
        module = importlib.import_module(f"onnxmbs.ops.{family}")
        assert sum(r.op == op for r in module.RULES) == 1


def test_lookup_and_kind_for_registered_declined_and_unknown_ops():
    assert lookup("Hardmax") is None and kind("Hardmax", "rf") is None
    assert kind("Conv", "rf") == "conv" and kind("Resize", "rf") == "resize"
    assert isinstance(OPS["Celu"].channels, Declined) and kind("Celu", "channels") is None
    assert param_inputs("Mul") == Params((0, 1), vectors_only=True) and param_inputs("Relu") is None
    assert ops_with("surgery", "conv") == {"Conv"}
    assert {"Gemm", "MatMul"} <= ops_with("index", "produce")


def _module_level_values(module):
    for name, value in vars(module).items():
        if name.startswith("__") or inspect.ismodule(value) or inspect.isfunction(value) or inspect.isclass(value):
            continue
        if isinstance(value, dict):
            yield name, [*value.keys(), *value.values()]
        elif isinstance(value, (set, frozenset, tuple, list)):
            yield name, list(value)


@pytest.mark.parametrize("module_name", STAGE_MODULES)
def test_stage_modules_keep_no_op_table(module_name):
    module = importlib.import_module(module_name)
    for name, items in _module_level_values(module):
        ops = [i for i in items if isinstance(i, str) and (i in ONNX_OPS or i in OPS)]
        assert not ops, f"{module_name}.{name} names op types {ops}: register them in onnxmbs/ops instead"


@pytest.mark.parametrize("module_name", STAGE_MODULES)
def test_every_op_type_a_stage_names_is_registered(module_name):
    """The op types a stage still compares against inside a function are all in the registry."""
    source = Path(importlib.import_module(module_name).__file__).read_text()
    named = {n.value for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert {s for s in named if s in ONNX_OPS} <= set(OPS)


def test_registry_imports_no_stage():
    """Plain data: the package imports nothing of onnxmbs outside itself (no import cycles)."""
    folder = Path(importlib.import_module("onnxmbs.ops").__file__).parent
    for path in folder.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert all(not m.startswith("onnxmbs") or m.startswith("onnxmbs.ops") for m in imported), path.name


# ---------------------------------------------------------------- the declines behave as the stages say
def test_op_declining_rf_and_channels_is_counted_and_freezes():
    g = GraphBuilder((1, 3, 8, 8))
    x = g.conv(g.input.name, 3, 4, name="c")
    x = g.op("LRN", [x], size=3)
    x = g.op("Celu", [x])
    out = g.relu(g.conv(x, 4, 4, name="d"))
    a = analyze(g.build([out]))
    assert isinstance(OPS["Celu"].rf, Declined) and OPS["LRN"].rf == "pass"
    assert a.shapes.unknown_ops == {"Celu": 1}
    c = {layer.name: layer for layer in a.layers}
    assert c["d"].rf == 1 + 2 + 2  # the declined ops pass the 3x3 field of "c" on
    reasons = a.channels.groups[a.channels.conv_group["c"]].frozen
    assert "LRN" in reasons and "cannot resize" in reasons


def test_unknown_op_freezes_and_costs_nothing():
    g = GraphBuilder((1, 3, 8, 8))
    x = g.conv(g.input.name, 3, 4, 1, name="c")
    x = g.op("Hardmax", [x], axis=1)
    out = g.relu(g.conv(x, 4, 2, 1, name="d"))
    a = analyze(g.build([out]))
    assert a.shapes.unknown_ops == {"Hardmax": 1}
    assert "Hardmax" in a.channels.groups[a.channels.conv_group["c"]].frozen
    macs = 3 * 4 * 8 * 8 + 4 * 2 * 8 * 8  # the two 1x1 convs only
    assert a.shapes.flops == macs


# ---------------------------------------------------------------- proto helpers
def test_attr_reads_a_value_or_the_default():
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2], group=3)
    assert attr(node, "strides") == [2, 2] and attr(node, "group") == 3
    assert attr(node, "dilations", (1, 1)) == (1, 1) and attr(node, "pads") is None


def test_node_names_fill_in_unnamed_and_repeated_nodes():
    nodes = [helper.make_node("Relu", ["a"], ["b"]), helper.make_node("Relu", ["b"], ["c"], name="r"),
             helper.make_node("Relu", ["c"], ["d"], name="r"), helper.make_node("Relu", ["d"], ["e"])]
    graph = helper.make_graph(nodes, "g", [], [])
    assert node_names(graph) == ["Relu_0", "r", "r__1", "Relu_3"]


def _external(name, location):
    tensor = numpy_helper.from_array(np.zeros(2, np.float32), name)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    return tensor


def test_external_locations_cover_initializers_constants_and_subgraphs():
    sub = helper.make_graph([helper.make_node("Constant", [], ["k"], value=_external("k", "sub.bin"))], "sub", [],
                            [helper.make_tensor_value_info("k", TensorProto.FLOAT, [2])])
    nodes = [helper.make_node("Constant", [], ["c"], value=_external("c", "b.bin")),
             helper.make_node("If", ["cond"], ["o"], then_branch=sub, else_branch=sub)]
    inline = numpy_helper.from_array(np.zeros(2, np.float32), "inline")
    graph = helper.make_graph(nodes, "g", [], [], [_external("w", "a.bin"), _external("v", "a.bin"), inline])
    assert external_locations(graph) == ["a.bin", "b.bin", "sub.bin"]


def test_proto_helpers_are_defined_once():
    root = Path(importlib.import_module("onnxmbs").__file__).parent
    defined = []
    for path in root.rglob("*.py"):
        for n in ast.walk(ast.parse(path.read_text())):
            if isinstance(n, ast.FunctionDef) and n.name.lstrip("_") in ("attr", "node_names", "external_locations"):
                defined.append((path.relative_to(root).as_posix(), n.name))
    assert sorted(defined) == [("graph/proto.py", "attr"), ("graph/proto.py", "external_locations"),
                               ("graph/proto.py", "node_names")]
