"""Remove a blocks plan's blocks from the user's own PyTorch module.

Each removed block's branch convs are matched to modules through the exporter's names (the
dynamo exporter's weight initializer ``<module path>.weight``, the TorchScript exporter's
``/a/a.0/conv/Conv`` scopes). The **branch container** is the smallest module holding exactly
those convs whose output, in one traced forward pass, goes straight into an addition with the
container's own input — ``body(x) + x`` — so that replacing it by a module returning zeros turns
the addition into the shortcut, exactly as the ONNX removal rewires the join's readers to the
shortcut (a following activation stays). A module whose own output *is* that addition (ultralytics'
``Bottleneck``: ``return x + self.cv2(self.cv1(x))``) is the whole block: it is replaced by one
returning its input. A copy of the module gets the replacement; the
result is checked with a forward pass (against the shallow ONNX model when the planned ONNX
file is at hand). Anything that cannot be matched this way is an error, never a wrong model.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from onnxmbs.adapters.planview import scope_path
from onnxmbs.adapters.shallow import onnx_weights, verify_shallow
from onnxmbs.blocks.document import BlockRecord, BlocksPlan
from onnxmbs.errors import MBSError

logger = logging.getLogger(__name__)

ADDS = {"add", "__add__", "__radd__", "__iadd__", "add_"}
PARAMETRISED = (nn.modules.conv._ConvNd, nn.Linear)


class RemovedBlock(nn.Module):
    """Stands in for a removed residual branch: zeros, so ``branch(x) + x`` is ``x``."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.zeros_like(x)


class Shortcut(nn.Module):
    """Stands in for a removed whole residual block (``return x + branch(x)`` inside one module): ``x``."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x


def _branch_modules(block: BlockRecord, weights: dict[str, str], modules: dict[str, nn.Module]) -> set[str]:
    found = set()
    for node in block.nodes:
        guesses = [weights[node].removesuffix(".weight")] if node in weights else []
        guesses.append(scope_path(node) or "")
        for guess in guesses:
            if isinstance(modules.get(guess), PARAMETRISED):
                found.add(guess)
                break
    return found


def _convs_under(path: str, modules: dict[str, nn.Module]) -> set[str]:
    prefix = f"{path}." if path else ""
    return {n for n, m in modules.items() if (n == path or n.startswith(prefix)) and isinstance(m, PARAMETRISED)}


def _ancestors(paths: set[str]) -> list[str]:
    """The deepest common module path of ``paths`` and every module above it, deepest first."""
    parts = [p.split(".") for p in paths]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return [".".join(common[:i]) for i in range(len(common), 0, -1)]


class _AddSpy(TorchFunctionMode):
    """Records which tensors each addition reads (kept alive so that ids stay unique)."""

    def __init__(self) -> None:
        super().__init__()
        self.adds: list[tuple[torch.Tensor, ...]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", "") in ADDS:
            self.adds.append((*(a for a in args if isinstance(a, torch.Tensor)), out))
        return out


def _residual_containers(model: nn.Module, paths: Sequence[str], example: Any) -> dict[str, type[nn.Module]]:
    """Of ``paths``, the modules called once whose output is added to their own input (a branch: replaced by
    zeros), or whose output *is* their input plus something (a whole block, ultralytics' ``Bottleneck``:
    replaced by its input) — with the module that stands in for each."""
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {p: [] for p in paths}
    modules = dict(model.named_modules())
    handles = [modules[p].register_forward_hook(
        lambda m, a, o, p=p: seen[p].append((a[0] if a else None, o))) for p in paths]
    spy = _AddSpy()
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), spy:
            model(*(example if isinstance(example, tuple) else (example,)))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    good: dict[str, type[nn.Module]] = {}
    for p, calls in seen.items():
        if len(calls) != 1 or not isinstance(calls[0][1], torch.Tensor):
            continue
        x, out = calls[0]
        if any(len(a) == 3 and {id(a[0]), id(a[1])} == {id(x), id(out)} for a in spy.adds):
            good[p] = RemovedBlock
        elif any(len(a) == 3 and id(a[2]) == id(out) and id(x) in (id(a[0]), id(a[1])) and a[0] is not a[1]
                 for a in spy.adds):
            good[p] = Shortcut
    return good


def _set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, new)


def remove_blocks_torch(module: nn.Module, plan: BlocksPlan, example_inputs: Any, *,
                        onnx_path: str | Path | None = None) -> nn.Module:
    """A copy of ``module`` without the plan's removed blocks (``module`` is left untouched)."""
    if not isinstance(module, nn.Module):
        raise MBSError(f"remove_blocks_torch needs a torch.nn.Module, got {type(module).__name__}")
    shallow = copy.deepcopy(module)
    modules = dict(shallow.named_modules())
    weights = onnx_weights(plan, onnx_path)
    chosen = {}
    for block_id in plan.removed:
        block = plan.block(block_id)
        convs = _branch_modules(block, weights, modules)
        if not convs:
            raise MBSError(f"block {block.id} (join {block.join}): none of its nodes matches a conv of the module — "
                           "make the blocks plan from an ONNX export of this very model")
        fitting = [p for p in _ancestors(convs) if _convs_under(p, modules) == convs]
        residual = _residual_containers(shallow, fitting, example_inputs)
        path = next((p for p in fitting if p in residual), None)
        if path is None:
            raise MBSError(f"block {block.id} (join {block.join}): no module of the model holds exactly its convs "
                           f"({', '.join(sorted(convs))}) and is added to its own input — the branch must be one "
                           "module, e.g. `self.body(x) + x`; cannot remove it safely")
        chosen[block.id] = (path, residual[path])
    for path, stand_in in chosen.values():
        _set_module(shallow, path, stand_in())
    logger.info("removed %d blocks: %s", len(chosen), ", ".join(f"{k}={v[0]}" for k, v in chosen.items()))
    verify_shallow(plan, onnx_path, _runner(module, example_inputs), _runner(shallow, example_inputs),
                   _numpy(example_inputs))
    return shallow


def _numpy(example: Any) -> np.ndarray:
    first = example[0] if isinstance(example, tuple) else example
    return first.detach().cpu().numpy().astype(np.float32)


def _runner(model: nn.Module, example: Any):
    def run(x: np.ndarray | None = None) -> np.ndarray:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                args = (torch.from_numpy(x),) if x is not None else (example if isinstance(example, tuple) else (example,))
                out = model(*args)
        finally:
            model.train(was_training)
        return (out[0] if isinstance(out, (tuple, list)) else out).detach().cpu().numpy()
    return run
