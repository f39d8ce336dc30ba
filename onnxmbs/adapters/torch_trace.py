"""Which channels each conv, BatchNorm and Linear of a PyTorch module reads: a dependency trace.

One eager forward pass under a :class:`~torch.overrides.TorchFunctionMode` sees every torch
function and tensor method the model calls (``F.conv2d``, ``F.batch_norm``, ``+``,
``torch.cat``, ``flatten`` …) — data-dependent control flow included, which ``torch.fx``
cannot trace. Each tensor gets a :class:`~onnxmbs.adapters.planview.Layout` (the channel
groups along its channel axis); parameters are mapped back to their modules by identity.
Element-wise ops tie the groups of their inputs (residuals, gates), ``cat`` lays groups side
by side, depthwise convs pass their input's groups on, ``chunk`` cuts them into parts, a channel
shuffle (``view`` → ``transpose`` → ``view``) permutes them, channels-last Linears, LayerNorms and
per-channel parameters follow them. An op that moves channels in a way this trace has no rule for
(``split`` with sizes in the code, per-channel tensors it cannot resize) marks the groups it touched
as *unsupported*; resizing such a group is refused later. The records it fills are in
:mod:`onnxmbs.adapters.torch_uses`.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Hashable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from onnxmbs.adapters.planview import Layout
from onnxmbs.adapters.torch_moves import MOVES, RESHAPES, SPLITS, ChannelMoves
from onnxmbs.adapters.torch_moves import flat as _flat
from onnxmbs.adapters.torch_moves import moved as _moved
from onnxmbs.adapters.torch_uses import (ConvUse, LayerNormUse, LinearUse, NormUse, ScaleUse, Tag,  # noqa: F401
                                        Trace)

logger = logging.getLogger(__name__)

CONVS = {"conv1d", "conv2d", "conv3d"}
NORMS = {"batch_norm"}
CATS = {"cat", "concat", "concatenate"}
SCALES = {"mul", "__mul__", "__rmul__", "mul_", "add", "__add__", "__radd__", "add_", "__iadd__", "__imul__"}


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


class _Recorder(ChannelMoves):
    def __init__(self, model: nn.Module) -> None:
        self.trace = Trace()
        self.tags: dict[int, Tag] = {}
        self.alive: list[torch.Tensor] = []  # keeps ids unique while tracing
        self.conv_out: dict[int, str] = {}
        self.scope: list[str] = []
        self.owner: dict[int, tuple[str, nn.Module]] = {}
        for name, module in model.named_modules():
            for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
                self.owner.setdefault(id(t), (name, module))

    # ---------------------------------------------------------------- helpers
    def enter(self, name: str) -> None:
        self.scope.append(name)

    def leave(self) -> None:
        self.scope.pop()

    def where(self) -> str:
        return f" in module '{self.scope[-1]}'" if self.scope and self.scope[-1] else ""

    def tag(self, t: Any) -> Tag | None:
        return self.tags.get(id(t)) if isinstance(t, torch.Tensor) else None

    def put(self, t: torch.Tensor, tag: Tag) -> None:
        self.tags[id(t)] = tag
        self.alive.append(t)

    def fresh(self, key: Hashable, width: int) -> Layout:
        return self.trace.fresh(key, width)

    def tag_input(self, t: torch.Tensor, index: int) -> None:
        if t.dim() >= 2:
            self.put(t, Tag(self.fresh(("fixed", f"input{index}"), t.shape[1]), 1))

    def owned(self, t: Any, kind: type | tuple[type, ...]) -> tuple[str, nn.Module] | None:
        hit = self.owner.get(id(t)) if isinstance(t, torch.Tensor) else None
        return hit if hit is not None and isinstance(hit[1], kind) else None

    # ---------------------------------------------------------------- rules
    def record(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        name = getattr(func, "__name__", "")
        if not any(isinstance(o, torch.Tensor) for o in _flat(out)):
            return  # dim(), size(), shape: metadata only
        for t in {id(t): t for t in _flat((args, kwargs)) if isinstance(t, torch.Tensor)}.values():
            conv = self.conv_out.get(id(t))
            if conv is not None:
                self.trace.readers[conv] = self.trace.readers.get(conv, 0) + 1
        tag = self.tag(args[0]) if args else None
        if tag is not None and (tag.split or name in RESHAPES) and self.shuffle(name, args, out, tag):
            return
        if name in CONVS:
            self.conv(args, kwargs, out)
        elif name in NORMS:
            self.norm(args, kwargs, out)
        elif name == "linear":
            self.linear(args, kwargs, out)
        elif name == "layer_norm" and self.layer_norm(args, kwargs, out):
            return
        elif name in CATS:
            self.cat(name, args, kwargs, out)
        elif name in SPLITS and self.split(name, args, out):
            return
        else:
            self.generic(name, args, kwargs, out)

    def conv(self, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        x, weight, groups = args[0], _arg(args, kwargs, 1, "weight"), int(_arg(args, kwargs, 6, "groups", 1))
        tag, owner = self.tag(x), self.owned(weight, nn.modules.conv._ConvNd)
        layout = (tag.layout if tag is not None and tag.axis == 1 and tag.layout.inner == tag.layout.outer == 1
                  and not tag.split else None)
        if tag is not None and layout is None:
            self.trace.mark(tag.layout, f"a conv reads these channels from another axis{self.where()}")
        if owner is None:
            self.trace.mark(layout, f"a functional conv whose weight is no nn.Conv module's{self.where()}")
            self.put(out, Tag(self.fresh(("fixed", f"conv@{len(self.alive)}"), out.shape[1]), 1))
            return
        c_in, c_out = x.shape[1], out.shape[1]
        depthwise = groups > 1 and groups == c_in == c_out and layout is not None
        if groups > 1 and groups == c_in and c_out != c_in:
            self.trace.mark(layout, f"depthwise conv '{owner[0]}' has a channel multiplier")
        out_layout = layout if depthwise else self.fresh(("conv", owner[0]), c_out)
        self.trace.convs.append(ConvUse(owner[0], owner[1], layout, out_layout, groups, depthwise,
                                        tuple(int(v) for v in out.shape[2:])))
        self.put(out, Tag(out_layout, 1))
        self.conv_out[id(out)] = owner[0]

    def norm(self, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        x = args[0]
        tag = self.tag(x)
        stats = [_arg(args, kwargs, i, n) for i, n in ((3, "weight"), (1, "running_mean"))]
        owner = next((o for o in (self.owned(t, nn.modules.batchnorm._NormBase) for t in stats) if o), None)
        if tag is None:
            return
        if owner is None or tag.axis != 1 or tag.split:
            self.trace.mark(tag.layout, f"batch_norm without an nn.BatchNorm module{self.where()}")
        else:
            self.trace.norms.append(NormUse(owner[0], owner[1], tag.layout, self.conv_out.get(id(x))))
        self.put(out, tag)

    def linear(self, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        x, weight = args[0], _arg(args, kwargs, 1, "weight")
        tag, owner = self.tag(x), self.owned(weight, nn.Linear)
        if tag is not None and (owner is None or tag.axis != x.dim() - 1):
            self.trace.mark(tag.layout, f"a linear map reads these channels{self.where()}")
        elif tag is not None:
            produced = self.fresh(("linear", owner[0]), out.shape[-1])
            self.trace.linears.append(LinearUse(owner[0], owner[1], tag.layout, produced))
            self.put(out, Tag(produced, out.dim() - 1))
            return
        key = ("fixed", f"linear:{owner[0] if owner else len(self.alive)}")
        self.put(out, Tag(self.fresh(key, out.shape[-1]), out.dim() - 1))

    def layer_norm(self, args: tuple, kwargs: dict, out: torch.Tensor) -> bool:
        """LayerNorm over the channel axis alone keeps the channels and is cut with them (False: another form)."""
        x, shape = args[0], tuple(_arg(args, kwargs, 1, "normalized_shape", ()))
        tag, owner = self.tag(x), self.owned(_arg(args, kwargs, 2, "weight"), nn.LayerNorm)
        if tag is None or owner is None or tag.split or tag.axis != x.dim() - 1 or len(shape) != 1:
            return False
        if tag.layout.inner != 1 or tag.layout.outer != 1:
            return False
        self.trace.layer_norms.append(LayerNormUse(owner[0], owner[1], tag.layout))
        self.put(out, tag)
        return True

    def scale(self, t: torch.Tensor, ref: torch.Tensor, tag: Tag) -> bool:
        """Record a module's per-channel parameter ``t`` used element-wise with ``ref``; False if it is not one."""
        hit = self.owner.get(id(t))
        dim = tag.axis - (ref.dim() - t.dim())
        if hit is None or not isinstance(t, nn.Parameter) or dim < 0 or tag.split or tag.layout.inner != 1:
            return False
        if any(d != 1 for i, d in enumerate(t.shape) if i != dim) or t.shape[dim] != ref.shape[tag.axis]:
            return False
        name = next((n for n, p in hit[1].named_parameters(recurse=False) if p is t), None)
        if name is None:
            return False
        self.trace.scales.append(ScaleUse(hit[0], hit[1], name, tag.layout, dim))
        return True

    def cat(self, name: str, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        parts = list(_arg(args, kwargs, 0, "tensors", ()))
        tags = [self.tag(t) for t in parts]
        known = [t for t in tags if t is not None]
        if not known:
            return
        dim = int(_arg(args, kwargs, 1, "dim", 0)) % out.dim()
        plain = all(t is not None and t.axis == known[0].axis and t.layout.inner == t.layout.outer == 1 for t in tags)
        if plain and dim == known[0].axis:
            self.put(out, Tag(Layout(tuple(s for t in known for s in t.layout.segs)), dim))
        elif plain:
            self.generic(name, tuple(parts), {}, out)
        else:
            for t in known:
                self.trace.mark(t.layout, f"torch.{name} mixes tracked and untracked channels{self.where()}")

    def generic(self, name: str, args: tuple, kwargs: dict, out: Any) -> None:
        flat = [t for t in _flat((args, kwargs)) if isinstance(t, torch.Tensor)]
        tagged = [(t, self.tag(t)) for t in flat if self.tag(t) is not None]
        if not tagged:
            return
        ref, tag = max(tagged, key=lambda p: p[0].dim())
        why = f"'{name}'{self.where()}"
        self.join(tagged, why)
        width = ref.shape[tag.axis]
        for t in flat:
            if self.tag(t) is None and t.numel() > 1 and width > 1 and width in tuple(t.shape):
                if name in SCALES and self.scale(t, ref, tag):
                    continue
                self.trace.mark(tag.layout, f"{why} uses a per-channel tensor of shape {tuple(t.shape)}")
        for o in (o for o in _flat(out) if isinstance(o, torch.Tensor)):
            new = self.derive(name, args, kwargs, ref, tag, o)
            if new is None:
                self.trace.mark(tag.layout, f"{why} changes the channel axis {tuple(ref.shape)} -> {tuple(o.shape)}")
            else:
                self.put(o, new)

    def join(self, tagged: list, why: str) -> None:
        first = tagged[0][1]
        for _, other in tagged[1:]:
            if not self.trace.sets.tie(first.layout, other.layout, self.trace.widths):
                self.trace.mark(first.layout, f"{why} joins differently laid-out channels")
                self.trace.mark(other.layout, f"{why} joins differently laid-out channels")

    @staticmethod
    def derive(name: str, args: tuple, kwargs: dict, ref: torch.Tensor, tag: Tag, o: torch.Tensor) -> Tag | None:
        axis, c = tag.axis, ref.shape[tag.axis]
        if tag.split and o.shape != ref.shape:  # shuffled channels: only ops that keep the whole shape follow them
            return None
        if name in MOVES:
            return _moved(name, args, ref, o, tag)
        if o.dim() == ref.dim() and o.shape[:axis] == ref.shape[:axis] and o.shape[axis] == c:
            return tag
        if o.dim() == axis + 1 and o.shape[:axis] == ref.shape[:axis] and o.dim() < ref.dim():
            rest = math.prod(ref.shape[axis + 1:])
            if o.shape[axis] == c:
                return tag
            if o.shape[axis] == c * rest:
                lay = tag.layout
                return Tag(Layout(lay.segs, lay.inner * rest, lay.outer), axis)
        return None


class _Mode(TorchFunctionMode):
    def __init__(self, recorder: _Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.recorder.record(func, args, kwargs, out)
        return out


def _inputs(example_inputs: Any) -> tuple:
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def trace_model(model: nn.Module, example_inputs: Any) -> Trace:
    """Run ``model`` once (eval mode, no grad) and record its channel dependencies.

    ``model`` is left as it was (its training flag is restored)."""
    recorder = _Recorder(model)
    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: recorder.enter(n)))
        handles.append(module.register_forward_hook(lambda m, a, o: recorder.leave()))
    was_training = model.training
    inputs = _inputs(example_inputs)
    try:
        model.eval()
        with torch.no_grad():
            inputs = tuple(t.detach().clone() if isinstance(t, torch.Tensor) else t for t in inputs)
            for i, t in enumerate(x for x in inputs if isinstance(x, torch.Tensor)):
                recorder.tag_input(t, i)
            with _Mode(recorder):
                out = model(*inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    recorder.trace.outputs = [tuple(o.shape) for o in _flat(out) if isinstance(o, torch.Tensor)]
    logger.debug("traced %d convs, %d norms, %d linears", len(recorder.trace.convs), len(recorder.trace.norms),
                 len(recorder.trace.linears))
    return recorder.trace


def run_model(model: nn.Module, example_inputs: Any) -> list[torch.Tensor]:
    """The model's outputs (flattened) in eval mode without grad; the training flag is restored."""
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model(*_inputs(example_inputs))
    finally:
        model.train(was_training)
    return [o for o in _flat(out) if isinstance(o, torch.Tensor)]
