"""Apply an MBS plan to the user's own Keras model (functional or Sequential).

The model is rebuilt from its config (``model.get_config()``) with each conv's ``filters``
set to the plan's ``compact_out_channels``; Keras infers everything downstream (BatchNorm,
depthwise convs, ``Add``/``Concatenate``, ``Dense`` inputs). A walk over the config's graph
records which channel groups every layer reads, so ``init="inherit"`` can slice the old
weights consistently and layers the adapter has no rule for are caught before they would
give a wrong model. Plan layers are matched by the Keras layer names tf2onnx keeps in node
and weight names (``model_1/stem_conv_1/convolution``), else by order and shape.
"""
from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxmbs.adapters.planview import (
    Candidate, ChannelBook, Layout, PlanView, Resolution, check_init, check_supported, group_layers, kept_channels, load_plan, match_layers,
    narrowed_fixed, onnx_weight_names, plan_groups, resolve_splits, whole_key,
)
from onnxmbs.errors import MBSError

logger = logging.getLogger(__name__)

PASS = set("""Activation ReLU LeakyReLU ELU Softmax Dropout SpatialDropout1D SpatialDropout2D SpatialDropout3D
GaussianNoise GaussianDropout AlphaDropout MaxPooling1D MaxPooling2D MaxPooling3D AveragePooling1D AveragePooling2D
AveragePooling3D GlobalAveragePooling1D GlobalAveragePooling2D GlobalAveragePooling3D GlobalMaxPooling1D
GlobalMaxPooling2D GlobalMaxPooling3D ZeroPadding1D ZeroPadding2D ZeroPadding3D Cropping1D Cropping2D Cropping3D
UpSampling1D UpSampling2D UpSampling3D Identity ActivityRegularization""".split())
JOIN = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"}
CONV = {"Conv1D", "Conv2D", "Conv3D"}
DEPTHWISE = {"DepthwiseConv1D", "DepthwiseConv2D"}


@dataclass(frozen=True)
class Use:
    """A layer that reads channels: a conv, depthwise conv, BatchNorm or Dense."""

    name: str
    kind: str  # conv | depthwise | norm | dense
    in_layout: Layout | None
    out_layout: Layout | None
    source: str | None = None  # norm: the (non-depthwise) conv it directly follows; tf2onnx folds it into it


@dataclass
class Walk(ChannelBook):
    uses: list[Use] = field(default_factory=list)


def _keras():
    from onnxmbs.runtime.frameworks import import_keras

    return import_keras()


def _history(obj: Any) -> list[str]:
    """Names of the layers whose outputs an inbound-node structure refers to, in order."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            return [obj["config"]["keras_history"][0]]
        return [n for v in obj.values() for n in _history(v)]
    if isinstance(obj, (list, tuple)):
        return [n for v in obj for n in _history(v)]
    return []


def _kind(model: Any) -> str:
    names = {c.__name__ for c in type(model).__mro__}
    if "Sequential" in names:
        return "sequential"
    if "Functional" in names:
        return "functional"
    raise MBSError(f"{getattr(model, 'name', type(model).__name__)} is a subclassed Keras model — the adapter "
                   "rebuilds functional and Sequential models from their config; build yours with "
                   "keras.Model(inputs, outputs) or keras.Sequential")


def _graph(model: Any, cfg: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], list[str]]]:
    """(layer config, names of the layers it reads) in topological order."""
    if _kind(model) == "sequential":
        out, prev = [], []
        for layer in cfg["layers"]:
            out.append((layer, prev))
            prev = [layer["config"]["name"]]
        return out
    out = []
    for layer in cfg["layers"]:
        nodes = layer.get("inbound_nodes") or []
        if len(nodes) > 1:
            raise MBSError(f"Keras layer '{layer['name']}' is shared ({len(nodes)} calls) — the adapter resizes "
                           "each layer once; give each call its own layer")
        out.append((layer, _history(nodes[0]) if nodes else []))
    return out


def _shape(model: Any, name: str) -> tuple[int | None, ...]:
    return tuple(model.get_layer(name).output.shape)


def walk(model: Any, cfg: Mapping[str, Any]) -> Walk:
    """Propagate channel layouts (channels last) through the config graph."""
    w, tags = Walk(), {}
    for layer, inbound in _graph(model, cfg):
        cls, conf = layer["class_name"], layer["config"]
        name = conf["name"]
        ins = [tags.get(n) for n in inbound]
        tags[name] = _rule(w, model, cls, conf, name, ins, inbound)
    return w


def _rule(w: Walk, model: Any, cls: str, conf: Mapping[str, Any], name: str, ins: list,
          inbound: list[str]) -> Layout | None:
    """The layout of layer ``name``'s output; records the layers that read channels."""
    first = ins[0] if ins else None
    if cls == "InputLayer":
        shape = conf.get("batch_shape") or model.inputs[0].shape
        return w.fresh(("fixed", name), shape[-1])
    if conf.get("data_format") == "channels_first":
        w.mark(first, f"Keras layer '{name}' uses channels_first")
        return None
    if cls in CONV:
        out = w.fresh(("conv", name), conf["filters"])
        w.uses.append(Use(name, "conv", first, out))
        return out
    if cls in DEPTHWISE and conf.get("depth_multiplier", 1) == 1 and first is not None:
        w.uses.append(Use(name, "depthwise", first, first))
        return first
    if cls == "BatchNormalization" and _last_axis(conf.get("axis"), len(_shape(model, name))) and first:
        src = inbound[0] if any(u.name == inbound[0] and u.kind == "conv" for u in w.uses) else None
        w.uses.append(Use(name, "norm", first, first, source=src))
        return first
    if cls == "Dense" and first is not None:
        w.uses.append(Use(name, "dense", first, None))
        return w.fresh(("fixed", f"dense:{name}"), conf["units"])
    if cls in PASS:
        return first
    if cls == "Flatten" and first is not None:
        shape = _shape(model, inbound[0])
        return Layout(first.segs, first.inner, first.outer * math.prod(shape[1:-1]))
    if cls in JOIN or (cls == "Concatenate" and conf.get("axis", -1) not in (-1, len(_shape(model, name)) - 1)):
        return _join(w, name, ins)
    if cls == "Concatenate" and all(t is not None and t.inner == t.outer == 1 for t in ins):
        return Layout(tuple(s for t in ins for s in t.segs))
    for t in ins:
        w.mark(t, f"Keras layer '{name}' ({cls})")
    return None


def _last_axis(axis: Any, rank: int) -> bool:
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return len(axes) == 1 and isinstance(axes[0], int) and axes[0] % rank == rank - 1


def _join(w: Walk, name: str, ins: list) -> Layout | None:
    known = [t for t in ins if t is not None]
    if not known:
        return None
    for t in known[1:]:
        if not w.sets.tie(known[0], t, w.widths):
            w.mark(t, f"Keras layer '{name}' joins differently laid-out channels")
            w.mark(known[0], f"Keras layer '{name}' joins differently laid-out channels")
    return known[0]


# ---------------------------------------------------------------- plan matching and widths
def _candidates(model: Any, w: Walk, view: PlanView) -> list[Candidate]:
    shape = tuple(model.inputs[0].shape[1:-1])
    same = view.input_hw is not None and shape == view.input_hw
    out = []
    for use in (u for u in w.uses if u.kind in ("conv", "depthwise")):
        layer = model.get_layer(use.name)
        c_in, c_out = int(layer.input.shape[-1]), int(layer.output.shape[-1])
        groups = c_in if use.kind == "depthwise" else int(getattr(layer, "groups", 1))
        hw = tuple(int(v) for v in layer.output.shape[1:-1])
        out.append(Candidate(use.name, c_in, c_out, groups, tuple(layer.kernel_size), tuple(layer.strides),
                             hw if same else None))
    return out


def _match(model: Any, w: Walk, view: PlanView, onnx_path: str | Path | None) -> dict[str, str]:
    weights = onnx_weight_names(view, onnx_path)
    names = {u.name for u in w.uses}
    named = {}
    for spec in view.layers:
        guesses = _guesses(weights.get(spec.name, ""), model.name) + _guesses(spec.name, model.name)
        named[spec.name] = [g for g in dict.fromkeys(guesses) if g in names]
    return match_layers(view, _candidates(model, w, view), named)


def _strip(seg: str) -> str:
    head, _, tail = seg.rpartition("_")
    return head if head and tail.isdigit() else seg


def _guesses(text: str, model_name: str) -> list[str]:
    """Layer names in an exporter name. tf2onnx suffixes every scope with ``_<n>``
    (``model_1/conv_1/convolution``); when the model's own scope shows it, stripped names go first."""
    segs = [s.split(":")[0] for s in text.split("/") if s]
    suffixed = bool(segs) and segs[0] != model_name and _strip(segs[0]) == model_name
    return [g for seg in segs for g in ((_strip(seg), seg) if suffixed else (seg, _strip(seg)))]


def resolve(model: Any, view: PlanView, w: Walk, mapping: Mapping[str, str], *, select: str = "nonzero") -> Resolution:
    layer_of = {v: k for k, v in mapping.items()}
    norms = {u.source: u.name for u in w.uses if u.kind == "norm" and u.source}  # conv -> BatchNorm after it
    channels, widths, keep = {}, {}, {}
    for root, keys in w.sets.members().items():
        if all(k in w.sets.parts for k in keys):
            continue  # split into parts: resolved from them below
        specs = [view.layer(layer_of[k[1]]) for k in keys if k[0] == "conv"]
        groups = plan_groups(specs, view, str(keys[0][1]))
        original = w.widths[root]
        compact = {view.widths[g] for g in groups} or {original}
        if len(compact) > 1 or any(view.channels[g] != original for g in groups):
            raise MBSError(f"the plan's channel groups {sorted(groups)} do not fit the model's layers "
                           f"{', '.join(str(k[1]) for k in keys[:4])} — make the plan from this model's ONNX export")
        width = compact.pop()
        fixed = [whole_key(k)[1] for k in keys if whole_key(k)[0] == "fixed"]
        if width != original and fixed:
            raise narrowed_fixed(", ".join(str(k[1]) for k in keys[:4]), str(fixed[0]))
        l1 = lambda s: _l1(model, mapping[s.name], norms.get(mapping[s.name]))  # noqa: E731
        kept = (kept_channels(specs, original, width, l1, measured=group_layers(view, groups) or specs,
                              select=select) if width != original else np.arange(original))
        for key in keys:
            channels[key], widths[key], keep[key] = original, width, kept
    resolve_splits(w.sets, channels, widths, keep)
    return Resolution(channels=channels, widths=widths, keep=keep)


def _l1(model: Any, name: str, norm: str | None = None) -> np.ndarray:
    """Per-filter L1 norm as tf2onnx writes the conv: a BatchNorm right after it folded in (|γ| / sqrt(var + ε))."""
    kernel = np.abs(np.asarray(model.get_layer(name).get_weights()[0], np.float64))
    norms = kernel.reshape(-1, kernel.shape[-1]).sum(0)
    if norm is not None:
        bn = model.get_layer(norm)
        gamma = np.asarray(bn.gamma, np.float64) if getattr(bn, "gamma", None) is not None else 1.0
        norms = norms * np.abs(gamma) / np.sqrt(np.asarray(bn.moving_variance, np.float64) + bn.epsilon)
    return norms


# ---------------------------------------------------------------- rebuild, weights, checks
def _rebuild(model: Any, cfg: dict[str, Any], filters: Mapping[str, int], custom_objects: Mapping | None) -> Any:
    keras = _keras()
    cfg = copy.deepcopy(cfg)
    for layer in cfg["layers"]:
        layer.pop("build_config", None)
        layer.pop("compile_config", None)
        name = layer["config"]["name"]
        if name in filters:
            layer["config"]["filters"] = int(filters[name])
    cls = keras.Sequential if _kind(model) == "sequential" else keras.Model
    with keras.saving.custom_object_scope(dict(custom_objects or {})):
        new = cls.from_config(cfg)
    if not new.built:
        new.build((None, *model.inputs[0].shape[1:]))
    return new


def _index(layout: Layout | None, res: Resolution, size: int) -> np.ndarray:
    return np.arange(size) if layout is None else layout.channel_index(res.keep, res.channels)


def _sliced(use: Use, weights: list[np.ndarray], res: Resolution) -> list[np.ndarray]:
    if use.kind == "conv":
        kernel = weights[0]
        idx_in, idx_out = _index(use.in_layout, res, kernel.shape[-2]), _index(use.out_layout, res, kernel.shape[-1])
        return [kernel[..., idx_in, :][..., idx_out], *(b[idx_out] for b in weights[1:])]
    if use.kind == "depthwise":
        idx = _index(use.in_layout, res, weights[0].shape[-2])
        return [weights[0][..., idx, :], *(b[idx] for b in weights[1:])]
    if use.kind == "norm":
        idx = _index(use.in_layout, res, weights[0].shape[0])
        return [v[idx] for v in weights]
    feats = use.in_layout.feature_index(res.keep, res.channels)
    return [weights[0][feats], *weights[1:]]


def _inherit(model: Any, new: Any, w: Walk, res: Resolution) -> None:
    """Copy every layer's weights into the rebuilt model, sliced to the surviving channels."""
    uses = {u.name: u for u in w.uses}
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        use = uses.get(layer.name)
        if use is not None and use.kind == "conv" and getattr(layer, "groups", 1) > 1:
            if any(res.changed(k) for lay in (use.in_layout, use.out_layout) if lay for k in lay.segs):
                raise MBSError(f"grouped conv '{layer.name}' (groups={layer.groups}) cannot inherit weights when "
                               "its width changes — use init='scratch'")
        elif use is not None:
            weights = _sliced(use, weights, res)
        new.get_layer(layer.name).set_weights(weights)


def verify(new: Any, view: PlanView, mapping: Mapping[str, str], expected: tuple) -> None:
    for layer, name in mapping.items():
        spec, got = view.layer(layer), int(new.get_layer(name).output.shape[-1])
        if got != spec.compact_out_channels:
            raise MBSError(f"Keras layer '{name}' (plan layer '{layer}') has {got} channels after rebuilding, the "
                           f"plan says {spec.compact_out_channels} — the plan does not fit this model")
    x = np.zeros((1, *new.inputs[0].shape[1:]), np.float32)
    out = new(x, training=False)
    got = tuple(out.shape[1:])
    if got != tuple(expected[1:]):
        raise MBSError(f"the rebuilt model's output has shape {got}, the original's {tuple(expected[1:])} — "
                       "a layer the adapter does not know reads resized channels")


def apply_plan_keras(model: Any, plan: Mapping[str, Any] | str | Path, *, init: str = "scratch",
                     onnx_path: str | Path | None = None, custom_objects: Mapping[str, Any] | None = None,
                     select: str = "nonzero", compact_onnx: str | Path | None = None) -> Any:
    """A new Keras model with the plan's compact widths (``model`` is left untouched).

    ``init="scratch"``: fresh weights from each layer's own initializers. ``init="inherit"``:
    the surviving channels' weights, chosen by the rule of ``onnxmbs compact --select`` (``select``:
    nonzero or l1). ``init="onnx"`` with ``compact_onnx``: the weights of that compact ONNX file
    (:mod:`onnxmbs.adapters.keras_onnx_weights`). ``custom_objects``: your custom layers, as for
    ``keras.models.load_model``.
    """
    check_init(init)
    if (init == "onnx") != (compact_onnx is not None):
        raise MBSError("init='onnx' takes the weights of compact_onnx='c.onnx' — give both, or neither")
    view = load_plan(plan)
    _kind(model)
    cfg = model.get_config()
    w = walk(model, cfg)
    mapping = _match(model, w, view, onnx_path)
    res = resolve(model, view, w, mapping, select=select)
    check_supported(w.unsupported, res)
    filters = {u.name: res.widths[u.out_layout.segs[0]] for u in w.uses if u.kind == "conv"}
    try:
        new = _rebuild(model, cfg, filters, custom_objects)
    except (ValueError, TypeError) as exc:
        raise MBSError(f"Keras could not rebuild {model.name} with the compact widths "
                       f"({str(exc).splitlines()[0]}) — a layer cannot take the new channel counts") from exc
    if init == "inherit":
        _inherit(model, new, w, res)
    verify(new, view, mapping, tuple(model.outputs[0].shape))
    if init == "onnx":
        from onnxmbs.adapters.keras_onnx_weights import load_onnx_weights_keras

        load_onnx_weights_keras(new, w.uses, mapping, compact_onnx)
    logger.info("applied plan to %s: params %d -> %d", model.name, model.count_params(), new.count_params())
    return new


def folded_params(model: Any) -> int:
    """Parameters counted as the plan counts the tf2onnx export.

    tf2onnx 1.16 folds a BatchNorm into the bias-free Conv2D or DepthwiseConv2D right before it
    (γ, β become C bias values); a BatchNorm after a conv with a bias stays as Mul + Add (γ, β
    count). Moving statistics never count. (A freshly initialised model's all-zero Dense and conv
    biases are dropped by tf2onnx, so count a model with trained or randomised biases.)
    """
    w = walk(model, model.get_config())
    total = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    for use in (u for u in w.uses if u.kind == "norm" and u.source):
        bn, conv = model.get_layer(use.name), model.get_layer(use.source)
        if not getattr(conv, "use_bias", False):
            total += int(bn.output.shape[-1]) - sum(int(np.prod(v.shape)) for v in bn.trainable_weights)
    return total
