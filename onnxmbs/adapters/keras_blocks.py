"""Remove a blocks plan's blocks from the user's own functional Keras model.

Each removed block's join is matched to a Keras ``Add`` layer through the layer names tf2onnx
keeps in node names (``model_1/stage1_block0_add_1/Add``). Of the Add's two inputs, the one the
other depends on is the shortcut; the branch is the layers between them. The branch's conv
layers must be exactly the convs the ONNX block names, and be read only inside the branch.
The model is rebuilt from its config without the branch and the Add — every reader of the
Add reads the shortcut — and the surviving layers keep their weights. The result is checked
with a forward pass (against the shallow ONNX model when the planned ONNX file is at hand).
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from onnxmbs.adapters.keras_adapter import CONV, DEPTHWISE, _graph, _guesses, _kind
from onnxmbs.adapters.shallow import onnx_weights, verify_shallow
from onnxmbs.blocks.document import BlockRecord, BlocksPlan
from onnxmbs.errors import MBSError

logger = logging.getLogger(__name__)


def _ancestors(name: str, inbound: Mapping[str, list[str]]) -> set[str]:
    seen, stack = set(), [name]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(inbound.get(n, ()))
    return seen


def _join_layer(block: BlockRecord, model: Any, classes: Mapping[str, str]) -> str:
    for guess in _guesses(block.join, model.name):
        if classes.get(guess) == "Add":
            return guess
    raise MBSError(f"block {block.id}: its join {block.join} matches no Add layer of {model.name} — make the blocks "
                   "plan from a tf2onnx export of this very model")


def _branch(block: BlockRecord, add: str, inbound: Mapping[str, list[str]], classes: Mapping[str, str],
            onnx_convs: set[str]) -> tuple[str, set[str]]:
    """(shortcut layer, branch layers) of the Add ``add``, checked against the ONNX block's convs."""
    ins = inbound[add]
    if len(ins) != 2:
        raise MBSError(f"block {block.id}: Add layer '{add}' has {len(ins)} inputs, not 2 — cannot remove it safely")
    a, b = ins
    shortcut, end = (a, b) if a in _ancestors(b, inbound) else (b, a) if b in _ancestors(a, inbound) else (None, None)
    if shortcut is None:
        raise MBSError(f"block {block.id}: neither input of Add layer '{add}' is the other's shortcut — "
                       "cannot remove it safely")
    branch = _ancestors(end, inbound) - _ancestors(shortcut, inbound)
    convs = {n for n in branch if classes[n] in CONV | DEPTHWISE | {"Dense"}}
    if not onnx_convs or convs != onnx_convs:
        raise MBSError(f"block {block.id}: the branch of Add layer '{add}' holds convs {sorted(convs)}, the ONNX block "
                       f"{sorted(onnx_convs)} — make the blocks plan from a tf2onnx export of this very model")
    return shortcut, branch


def _onnx_convs(block: BlockRecord, model: Any, weights: Mapping[str, str], classes: Mapping[str, str]) -> set[str]:
    found = set()
    for node in block.nodes:
        for guess in _guesses(weights.get(node, ""), model.name) + _guesses(node, model.name):
            if classes.get(guess) in CONV | DEPTHWISE | {"Dense"}:
                found.add(guess)
                break
    return found


def _redirect(obj: Any, old: str, history: list) -> Any:
    """Every Keras-tensor reference to layer ``old`` in a config structure now points at ``history``."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__" and obj["config"]["keras_history"][0] == old:
            obj = copy.deepcopy(obj)
            obj["config"]["keras_history"] = list(history)
            return obj
        return {k: _redirect(v, old, history) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        if len(obj) == 3 and obj[0] == old and isinstance(obj[1], int):  # output_layers entries
            return list(history)
        return type(obj)(_redirect(v, old, history) for v in obj)
    return obj


def _history_of(add_cfg: Mapping[str, Any], shortcut: str) -> list:
    stack = [add_cfg.get("inbound_nodes")]
    while stack:
        obj = stack.pop()
        if isinstance(obj, dict):
            if obj.get("class_name") == "__keras_tensor__" and obj["config"]["keras_history"][0] == shortcut:
                return list(obj["config"]["keras_history"])
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
    return [shortcut, 0, 0]


def remove_blocks_keras(model: Any, plan: BlocksPlan, *, onnx_path: str | Path | None = None,
                        custom_objects: Mapping | None = None) -> Any:
    """A new Keras model without the plan's removed blocks (``model`` is left untouched)."""
    import keras

    if _kind(model) != "functional":
        raise MBSError(f"{model.name} is a Sequential model: it has no residual blocks to remove")
    cfg = copy.deepcopy(model.get_config())
    graph = _graph(model, cfg)
    inbound = {layer["config"]["name"]: ins for layer, ins in graph}
    classes = {layer["config"]["name"]: layer["class_name"] for layer, _ in graph}
    weights = onnx_weights(plan, onnx_path)
    for block_id in plan.removed:
        block = plan.block(block_id)
        add = _join_layer(block, model, classes)
        shortcut, branch = _branch(block, add, inbound, classes, _onnx_convs(block, model, weights, classes))
        readers = {n for n, ins in inbound.items() if set(ins) & branch and n not in branch and n != add}
        if readers:
            raise MBSError(f"block {block.id}: layer(s) {sorted(readers)} outside the branch read it — cannot remove "
                           "it safely")
        history = _history_of(next(l for l in cfg["layers"] if l["config"]["name"] == add), shortcut)
        cfg["layers"] = [l for l in cfg["layers"] if l["config"]["name"] not in branch | {add}]
        cfg = _redirect(cfg, add, history)
        inbound = {n: [shortcut if i == add else i for i in ins] for n, ins in inbound.items()
                   if n not in branch | {add}}
    for layer in cfg["layers"]:
        layer.pop("build_config", None)
    with keras.saving.custom_object_scope(dict(custom_objects or {})):
        new = keras.Model.from_config(cfg)
    for layer in new.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    example = np.random.default_rng(0).random((1, *model.inputs[0].shape[1:]), dtype=np.float32)
    verify_shallow(plan, onnx_path, _runner(model, example), _runner(new, example), example)
    logger.info("removed %d blocks from %s: params %d -> %d", len(plan.removed), model.name, model.count_params(),
                new.count_params())
    return new


def _runner(model: Any, example: np.ndarray):
    def run(x: np.ndarray | None = None) -> np.ndarray:
        return np.asarray(model(example if x is None else x, training=False))
    return run
