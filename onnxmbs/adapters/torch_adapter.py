"""Apply an MBS plan to the user's own PyTorch module: the compact model, ready to retrain.

``apply_plan_torch(module, plan, example_inputs)`` deep-copies the module, traces one
forward pass (:mod:`onnxmbs.adapters.torch_trace`) to learn which tensor every conv,
BatchNorm and Linear reads, matches the plan's ONNX conv nodes to the module's convs
(exporter names: the dynamo exporter's weight initializer ``<module path>.weight``, the
TorchScript exporter's ``/a/a.0/conv/Conv`` scopes; otherwise order + shape), then resizes
(:mod:`onnxmbs.adapters.torch_resize`) every conv to the plan's ``compact_out_channels`` and every consumer to match: BatchNorm,
depthwise convs (and their ``groups``), residual partners, concatenations and the
classifier's ``in_features``. The result is verified with a forward pass; the original
module is never touched.

``init="scratch"`` re-initialises every layer with its ``reset_parameters()`` (PyTorch's
defaults; the paper retrains from scratch). ``init="inherit"`` keeps the surviving channels'
weights: per coupled channel group the channels with the highest measured non-zero rate
(the plan's ``channel_p_nonzero``), else the largest L1 filter norm — the same channels in
every layer of a residual chain. ``init="onnx"`` with ``compact_onnx="c.onnx"`` takes the weights
of that compact ONNX file (:mod:`onnxmbs.adapters.torch_onnx_weights`), e.g. one re-fitted by
``compact --reconstruct``, and checks that the module computes what the file computes.
"""
from __future__ import annotations

import copy
import logging
import math
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from onnxmbs.adapters.planview import (
    Candidate, Layout, PlanView, Resolution, check_init, check_supported, group_layers, kept_channels, load_plan,
    match_layers, narrowed_fixed, onnx_weight_names, plan_groups, resolve_splits, scope_path, whole_key,
)
from onnxmbs.adapters.torch_resize import reinitialise, resize
from onnxmbs.adapters.torch_trace import Trace, run_model, trace_model
from onnxmbs.errors import MBSError
from onnxmbs.planning.document import LayerRecord

logger = logging.getLogger(__name__)


def apply_plan_torch(module: nn.Module, plan: Mapping[str, Any] | str | Path, example_inputs: Any, *,
                     init: str = "scratch", onnx_path: str | Path | None = None,
                     compact_onnx: str | Path | None = None, select: str = "nonzero") -> nn.Module:
    """A new module with the plan's compact widths (``module`` is left untouched).

    ``example_inputs``: a tensor (or tuple of tensors) the model accepts, e.g. ``torch.rand(1, 3, 32, 32)``.
    ``onnx_path``: the ONNX file the plan was made from, when the plan's ``model.path`` is not
    reachable from here (it only improves how layers are matched). ``compact_onnx``: with
    ``init="onnx"``, the compact ONNX file whose weights the module takes. ``select``: with
    ``init="inherit"``, the channel rule of ``onnxmbs compact --select`` to follow (nonzero or l1), so
    that module and compact ONNX keep the same channels.
    """
    if not isinstance(module, nn.Module):
        raise MBSError(f"apply_plan_torch needs a torch.nn.Module, got {type(module).__name__} — pass your model")
    check_init(init)
    if (init == "onnx") != (compact_onnx is not None):
        raise MBSError("init='onnx' takes the weights of compact_onnx='c.onnx' — give both, or neither")
    view = load_plan(plan)
    reference = run_model(module, example_inputs)
    compact = copy.deepcopy(module)
    trace = trace_model(compact, example_inputs)
    mapping = _match(view, trace, example_inputs, onnx_path)
    res = resolve(view, trace, mapping, select=select)
    check_supported(trace.unsupported, res)
    resize(trace, res, inherit=init == "inherit")
    if init == "scratch":
        reinitialise(compact)
    verify(compact, view, mapping, example_inputs, [tuple(t.shape) for t in reference])
    if init == "onnx":
        from onnxmbs.adapters.torch_onnx_weights import load_onnx_weights

        load_onnx_weights(compact, trace, mapping, compact_onnx, example_inputs)
    layer_of = _inverse(mapping)
    narrowed = sum(u.module.out_channels < view.layer(layer_of[u.name]).out_channels for u in trace.convs)
    logger.info("applied plan: %d of %d convs narrowed, params %d -> %d", narrowed, len(trace.convs),
                count_params(module), count_params(compact))
    return compact


# ---------------------------------------------------------------- matching
def _inverse(mapping: Mapping[str, str]) -> dict[str, str]:
    return {v: k for k, v in mapping.items()}


def layer_map(module: nn.Module, plan: Mapping[str, Any] | str | Path, example_inputs: Any, *,
              onnx_path: str | Path | None = None) -> dict[str, str]:
    """Plan layer (ONNX node) name -> the module path of the conv it was matched to."""
    view = load_plan(plan)
    return _match(view, trace_model(copy.deepcopy(module), example_inputs), example_inputs, onnx_path)


def _candidates(trace: Trace, example_inputs: Any, view: PlanView) -> list[Candidate]:
    first = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
    same_size = view.input_hw is not None and tuple(first.shape[-2:]) == view.input_hw
    out = []
    for use in trace.convs:
        m = use.module
        out.append(Candidate(use.name, m.in_channels, m.out_channels, m.groups, tuple(m.kernel_size),
                             tuple(m.stride), use.out_hw if same_size else None))
    return out


def _match(view: PlanView, trace: Trace, example_inputs: Any, onnx_path: str | Path | None) -> dict[str, str]:
    seen: set[str] = set()
    for use in trace.convs:
        if use.name in seen:
            raise MBSError(f"conv '{use.name}' is called more than once in forward — the adapter resizes a "
                           "module once; give each call its own nn.Conv module")
        seen.add(use.name)
    weights = onnx_weight_names(view, onnx_path)
    named = {}
    for spec in view.layers:
        guesses = [weights[spec.name].removesuffix(".weight")] if spec.name in weights else []
        guesses += [g for g in (scope_path(spec.name), spec.name) if g]
        named[spec.name] = guesses
    return match_layers(view, _candidates(trace, example_inputs, view), named)


# ---------------------------------------------------------------- widths and kept channels
def resolve(view: PlanView, trace: Trace, mapping: Mapping[str, str], *, select: str = "nonzero") -> Resolution:
    """Each traced channel key -> original width, compact width, surviving channel indices."""
    layer_of = {module: name for name, module in mapping.items()}
    sets = trace.sets.members()
    ctx = _Selecting(view, trace, mapping, select, _shuffle_inputs(trace, sets))
    channels, widths, keep = {}, {}, {}
    shuffled = {key for key, *_ in trace.shuffles}
    for root, keys in sets.items():
        if all(k in trace.sets.parts for k in keys):
            continue  # split into parts (a join with a concatenation): resolved from them below
        if shuffled & set(keys):
            if len(keys) > 1:
                raise MBSError(f"channels shuffled{trace.shuffles[0][3]} are joined with other channels "
                               f"({_names(keys)}) — the adapter cannot follow that; carry the compact ONNX model")
            continue  # resolved from the shuffle's input below
        specs = [view.layer(layer_of[k[1]]) for k in keys if isinstance(k, tuple) and k[0] == "conv"]
        parts = _plan_parts(keys, layer_of, view, trace)
        groups = plan_groups(specs, view, _names(keys)) | {g for _, g, _ in parts}
        original = trace.widths[root]
        compact = _set_width(view, groups, keys, original)
        kept = ctx.kept(keys, specs, parts, groups, original, compact) if compact != original else np.arange(original)
        for key in keys:
            channels[key], widths[key], keep[key] = original, compact, kept
    resolve_splits(trace.sets, channels, widths, keep)
    for key, source, groups, where in trace.shuffles:
        channels[key], widths[key], keep[key] = _shuffled(source, groups, where, channels, widths, keep)
    _check_chunks(trace, widths)
    return Resolution(channels=channels, widths=widths, keep=keep)


def _shuffle_inputs(trace: Trace, sets: Mapping[Hashable, list[Hashable]]) -> dict[Hashable, list[int]]:
    """Keys that are a channel shuffle's whole input (and those tied to them) -> the shuffle's groups."""
    found: dict[Hashable, list[int]] = {}
    for _, source, groups, _ in trace.shuffles:
        segs = trace.sets.expand(source.segs)
        if len(segs) == 1:
            for key in sets.get(trace.sets.find(segs[0]), [segs[0]]):
                found.setdefault(key, []).append(groups)
    return found


class _Selecting:
    """What choosing a group's kept channels by compact's rule needs: the plan, the trace, the rule."""

    def __init__(self, view: PlanView, trace: Trace, mapping: Mapping[str, str], select: str,
                 shuffles: Mapping[Hashable, list[int]]) -> None:
        self.view, self.mapping, self.select, self.shuffles = view, mapping, select, shuffles
        self.uses = {u.name: u for u in trace.convs}
        self.folded = {n.source: n.module for n in trace.norms if n.source and trace.readers.get(n.source) == 1}
        self.linears = {("linear", u.name): u.module for u in trace.linears}

    def l1(self, spec: LayerRecord) -> np.ndarray:
        module = self.mapping[spec.name]
        return _l1(self.uses[module].module, self.folded.get(module))

    def kept(self, keys: list[Hashable], specs: list[LayerRecord], parts: list, groups: set[int], original: int,
             compact: int) -> np.ndarray:
        view = self.view
        writers = [*specs, *(spec for spec, _, _ in parts if spec not in specs)]
        measured = [*(group_layers(view, groups) or specs), *(spec for spec, _, _ in parts)]
        return kept_channels(
            writers, original, compact, self.l1, measured=measured, select=self.select,
            offsets={spec.name: start for spec, _, start in parts},
            producers=[_l1(self.linears[k]) for k in keys if k in self.linears],  # Linear producers count too
            multiple_of=math.lcm(*(view.multiple_of.get(g, 1) for g in groups)) if groups else 1,
            shuffle=next((n for k in keys for n in self.shuffles.get(k, ())), 0))


def _shuffled(source: Layout, groups: int, where: str, channels: dict, widths: dict,
              keep: dict) -> tuple[int, int, np.ndarray]:
    """A channel shuffle's output: original width, compact width, and for each compact channel its position in
    the original shuffled tensor — the compact tensor is shuffled by the same code, so its order is permuted."""
    kept = source.channel_index(keep, channels)
    total, compact = sum(channels[k] for k in source.segs), len(kept)
    if compact % groups:
        raise MBSError(f"the channel shuffle{where} views {compact} kept channels as {groups} groups — plan with "
                       f"widths that are multiples of {groups} (--round-to {groups})")
    original_order = np.arange(total).reshape(groups, total // groups).T.reshape(-1)  # output j <- input order[j]
    compact_order = np.arange(compact).reshape(groups, compact // groups).T.reshape(-1)
    return total, compact, np.argsort(original_order)[kept[compact_order]]


def _plan_parts(keys: list[Hashable], layer_of: Mapping[str, str], view: PlanView,
                trace: Trace) -> list[tuple[LayerRecord, int, int]]:
    """(plan layer, plan group, first channel in the layer's output) of every key that is a part of a conv's
    output (a ``chunk``, or a join with a concatenation) which the plan splits into the same groups."""
    found = []
    for key in keys:
        if not (isinstance(key, tuple) and len(key) == 3 and key[0] == "part" and isinstance(key[1], tuple)
                and key[1][0] == "conv" and key[1][1] in layer_of):
            continue
        spec, siblings = view.layer(layer_of[key[1][1]]), trace.sets.parts.get(key[1], ())
        groups = spec.output_groups
        if len(groups) != len(siblings) or any(view.channels[g] != trace.widths[p] for g, p in zip(groups, siblings)):
            continue  # the plan does not split this output the same way: its other keys decide
        index = siblings.index(key)
        found.append((spec, groups[index], sum(trace.widths[p] for p in siblings[:index])))
    return found


def _check_chunks(trace: Trace, widths: Mapping[Hashable, int]) -> None:
    """``chunk`` divides whatever it gets into parts of ``ceil(total / n)``: the plan's parts must be those."""
    for where, parts in trace.chunks:
        compact = [sum(widths[k] for k in trace.sets.expand(p.segs)) for p in parts]
        size = -(-sum(compact) // len(compact))
        if compact != [min(size, sum(compact) - i * size) for i in range(len(compact))]:
            raise MBSError(f"'chunk'{where} divides its input into equal parts, but the plan gives them "
                           f"{'/'.join(map(str, compact))} channels — the PyTorch model would cut them elsewhere; "
                           "carry the compact ONNX model, or plan so that the parts keep equal widths")


def _set_width(view: PlanView, groups: set[int], keys: list[Hashable], original: int) -> int:
    if not groups:
        return original
    if sum(view.channels[g] for g in groups) == original and all(view.widths[g] == view.channels[g] for g in groups):
        return original  # one output split into parts (a channel-axis Split/Slice), none of them cut
    compacts = {view.widths[g] for g in groups}
    if len(compacts) > 1:
        raise MBSError(f"the model ties plan groups {sorted(groups)} together ({_names(keys)}) but the plan "
                       "gives them different widths — make the plan from an ONNX export of this very model")
    if any(view.channels[g] != original for g in groups):
        raise MBSError(f"plan group(s) {sorted(groups)} have {view.channels[min(groups)]} channels, the model's "
                       f"{_names(keys)} has {original} — the plan belongs to another model")
    fixed = [whole_key(k) for k in keys if whole_key(k)[0] == "fixed"]
    compact = compacts.pop()
    if fixed and compact != original:
        raise narrowed_fixed(_names(keys), str(fixed[0][1]))
    return compact


def _names(keys: list[Hashable]) -> str:
    return ", ".join(str(k[1]) for k in keys[:4]) + (" …" if len(keys) > 4 else "")


def _l1(module: nn.Module, norm: nn.Module | None = None) -> np.ndarray:
    """Per-output-channel L1 norm of a conv's filters (or a Linear's rows) as the exporter writes them: a
    BatchNorm folded into the conv scales each filter by |γ| / sqrt(var + ε)."""
    w = module.weight.detach().abs().double()
    norms = w.reshape(w.shape[0], -1).sum(1)
    if norm is not None:
        gamma = norm.weight.detach().double() if norm.weight is not None else torch.ones_like(norms)
        norms = norms * gamma.abs() / torch.sqrt(norm.running_var.double() + norm.eps)
    return norms.cpu().numpy()


# ---------------------------------------------------------------- verification and counting
def verify(model: nn.Module, view: PlanView, mapping: Mapping[str, str], example_inputs: Any,
           expected: list[tuple[int, ...]]) -> None:
    """Every mapped conv has the plan's width and the model still runs to the same output shapes."""
    modules = dict(model.named_modules())
    for layer, name in mapping.items():
        spec, conv = view.layer(layer), modules[name]
        if conv.out_channels != spec.compact_out_channels:
            raise MBSError(f"conv '{name}' (plan layer '{layer}') has {conv.out_channels} output channels after "
                           f"resizing, the plan says {spec.compact_out_channels} — the plan does not fit this model")
    try:
        got = [tuple(t.shape) for t in run_model(model, example_inputs)]
    except RuntimeError as exc:
        raise MBSError(f"the resized model does not run ({str(exc).splitlines()[0]}) — a layer the adapter "
                       "does not know reads resized channels; keep that group at full width") from exc
    if got != expected:
        raise MBSError(f"the resized model's outputs have shapes {got}, the original's {expected} — either the "
                       "module returns more than its ONNX export does (e.g. intermediate feature maps: wrap it to "
                       "return what you exported), or a layer the adapter does not know reads resized channels")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def folded_params(model: nn.Module, example_inputs: Any) -> int:
    """Parameters counted the way the plan counts the exported ONNX model.

    The ONNX exporters fold a BatchNorm that is the only reader of a conv's output into the
    conv (its ``2·C`` scale and shift become ``C`` bias values); every other BatchNorm stays a
    node and counts scale + shift. Conv and Linear weights and biases count as they are; other
    parameters count in full.
    """
    trace = trace_model(model, example_inputs)
    modules = dict(model.named_modules())
    total = count_params(model)
    folded = {n.name: n.source for n in trace.norms if n.source and trace.readers.get(n.source) == 1}
    for bn_name, conv_name in folded.items():
        bn, conv = modules[bn_name], modules[conv_name]
        total += (conv.out_channels if conv.bias is None else 0) - sum(p.numel() for p in bn.parameters(recurse=False))
    return total
