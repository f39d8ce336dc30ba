"""The model zoo: the paper's architectures with their width configurations, as ONNX.

``ZOO`` maps a name to a :class:`ZooEntry`; :func:`build` makes the framework
model, :func:`export` writes a verified ONNX file, :func:`list_models` lists the
names.  Builders are imported lazily, so importing this package pulls in
neither torch nor TensorFlow.

Names: CIFAR ResNets ``resnet20`` … ``resnet1202`` (32 px, 10 classes), ImageNet
ResNets ``resnet18`` … ``resnet152``, ``mobilenet_v1``, ``mobilenet_v2``,
``shufflenet_v1_g3``, ``densenet121`` (224 px, 1000 classes).
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxmbs.errors import MBSError
from onnxmbs.runtime.frameworks import require_framework
from onnxmbs.zoo import export as _export_module  # noqa: F401  (see below)
from onnxmbs.zoo.configuration import CONFIGS, ConfigSpec, configuration_from_plan

# The submodule ``onnxmbs.zoo.export`` is loaded here, *before* the function ``export``
# below is defined: Python binds a submodule to its package's attribute when the
# submodule is first imported, so a later first import would replace the function
# with the module.  Use ``from onnxmbs.zoo.export import export_torch`` for the module.

__all__ = ["ZOO", "ZooEntry", "build", "configuration_from_plan", "export", "list_models", "lookup"]


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    builders: tuple[tuple[str, str], ...]  # (framework, "module:function"), the first is the default
    config: ConfigSpec
    num_classes: int
    input_size: int
    fixed: tuple[tuple[str, Any], ...] = ()  # extra keyword arguments of the Keras builder

    @property
    def frameworks(self) -> tuple[str, ...]:
        return tuple(fw for fw, _ in self.builders)

    @property
    def framework(self) -> str:
        return self.builders[0][0]

    @property
    def default_configuration(self) -> list[int] | list[float]:
        if self.config.kind == "betas":
            return [float(b) for b in self.config.default]
        return [int(w) for w in self.config.default]


_T = "onnxmbs.zoo.torch_"
_K = "onnxmbs.zoo.keras_models:"


def _entries() -> dict[str, ZooEntry]:
    zoo = {}
    for d in (20, 32, 44, 56, 110, 1202):
        zoo[f"resnet{d}"] = ZooEntry(
            f"resnet{d}", f"CIFAR ResNet-{d}: 6n+2 basic blocks, 1x1 projection shortcuts",
            (("torch", f"{_T}resnet:resnet{d}_cifar"), ("keras", f"{_K}cifar_resnet")), CONFIGS[f"resnet{d}"],
            10, 32, (("depth", d),))
    for d, kind in ((18, "basic"), (34, "basic"), (50, "bottleneck"), (101, "bottleneck"), (152, "bottleneck")):
        zoo[f"resnet{d}"] = ZooEntry(
            f"resnet{d}", f"ImageNet ResNet-{d}: torchvision layout, {kind} blocks (widths are inner widths)",
            (("torch", f"{_T}resnet:resnet{d}"),), CONFIGS[f"resnet{d}"], 1000, 224)
    zoo["mobilenet_v1"] = ZooEntry(
        "mobilenet_v1", "MobileNetV1: widths [stem, pointwise at 112, 56, 28, 14, 7 px]",
        (("torch", f"{_T}mobilenet:mobilenet_v1"), ("keras", f"{_K}mobilenet_v1")), CONFIGS["mobilenet_v1"], 1000, 224)
    zoo["mobilenet_v2"] = ZooEntry(
        "mobilenet_v2", "MobileNetV2: β per resolution 112, 56, 28, 14, 7 px (or 4 values: 56..7 px)",
        (("torch", f"{_T}mobilenet:mobilenet_v2"), ("keras", f"{_K}mobilenet_v2")), CONFIGS["mobilenet_v2"], 1000, 224)
    zoo["shufflenet_v1_g3"] = ZooEntry(
        "shufflenet_v1_g3", "ShuffleNetV1 g=3: widths [stem, stage2, stage3, stage4]",
        (("torch", f"{_T}shufflenet:shufflenet_v1"),), CONFIGS["shufflenet_v1_g3"], 1000, 224)
    zoo["densenet121"] = ZooEntry(
        "densenet121", "DenseNet-BC-121: torchvision layout, β per dense block (56, 28, 14, 7 px)",
        (("torch", f"{_T}densenet:densenet121"),), CONFIGS["densenet121"], 1000, 224)
    return zoo


ZOO: dict[str, ZooEntry] = _entries()


def list_models() -> list[str]:
    """The zoo's model names, sorted."""
    return sorted(ZOO)


def lookup(name: str) -> ZooEntry:
    """The zoo entry ``name`` (``resnet20_cifar`` is ``resnet20``), or a clean error listing the names."""
    if name not in ZOO and name.endswith("_cifar") and name.removesuffix("_cifar") in ZOO:
        name = name.removesuffix("_cifar")
    return _entry(name)


def _entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise MBSError(f"unknown zoo model {name!r} — choose one of {', '.join(list_models())}")
    return ZOO[name]


def _builder(entry: ZooEntry, framework: str | None) -> tuple[str, Any]:
    fw = framework or entry.framework
    location = dict(entry.builders).get(fw)
    if location is None:
        raise MBSError(f"{entry.name} has no {fw} build — use --framework {' or '.join(entry.frameworks)}")
    require_framework(fw, f"the {fw} build of {entry.name}")
    module, function = location.split(":")
    return fw, getattr(importlib.import_module(module), function)


def _configuration(entry: ZooEntry, widths: Sequence[int] | None, betas: Sequence[float] | None) -> dict[str, Any]:
    if entry.config.kind == "widths":
        if betas is not None:
            raise MBSError(f"{entry.name} takes stage widths, not β — pass --widths "
                           f"{','.join(str(w) for w in entry.default_configuration)}")
        return {"widths": widths}
    if widths is not None:
        raise MBSError(f"{entry.name} takes per-resolution β, not widths — pass --betas "
                       f"{','.join('1' for _ in entry.default_configuration)}")
    return {"betas": betas}


def _input_size(entry: ZooEntry, input_size: int | None) -> int:
    size = entry.input_size if input_size is None else int(input_size)
    smallest = 2 ** max(entry.config.levels)
    if size < max(smallest, 8):
        raise MBSError(f"input size {size} is too small for {entry.name} (total stride {smallest}) — "
                       f"use at least {max(smallest, 8)}, e.g. {entry.input_size}")
    return size


def build(name: str, *, widths: Sequence[int] | None = None, betas: Sequence[float] | None = None,
          num_classes: int | None = None, input_size: int | None = None, framework: str | None = None) -> Any:
    """Build the zoo model ``name`` as a torch ``nn.Module`` or a Keras model.

    ``input_size`` only matters for Keras (its input shape is fixed at build
    time); torch models take any size.
    """
    entry = _entry(name)
    fw, builder = _builder(entry, framework)
    kwargs = _configuration(entry, widths, betas)
    kwargs["num_classes"] = entry.num_classes if num_classes is None else int(num_classes)
    if kwargs["num_classes"] < 1:
        raise MBSError(f"num_classes must be at least 1, got {num_classes} — pass e.g. {entry.num_classes}")
    size = _input_size(entry, input_size)
    if fw == "keras":
        kwargs.update(entry.fixed, input_size=size)
    return builder(**kwargs)


def export(name: str, path: str | os.PathLike[str], *, widths: Sequence[int] | None = None,
           betas: Sequence[float] | None = None, num_classes: int | None = None, input_size: int | None = None,
           framework: str | None = None, dynamo: bool = True, preprocess: str | None = None,
           mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> Path:
    """Build ``name`` and write it as a verified ONNX file (dynamic batch) at ``path``.

    ``dynamo`` picks the torch exporter (see :func:`onnxmbs.zoo.export.export_torch`). The preprocessing
    the model is meant for (``preprocess`` preset, optional ``mean``/``std``) is recorded in the file's
    metadata, so ``onnxmbs plan`` uses it without ``--preprocess``; left open, it is decided by the
    one rule (:func:`~onnxmbs.data.normalisation.resolve_normalisation`: ``imagenet``).
    """
    from onnxmbs.data.normalisation import resolve_normalisation
    from onnxmbs.zoo.export import export_keras, export_torch

    metadata = resolve_normalisation({}, preprocess, mean=mean, std=std, announce=False).metadata()

    entry = _entry(name)
    fw = framework or entry.framework
    require_framework(fw, f"exporting the {fw} build of {entry.name}", export=True)
    size = _input_size(entry, input_size)
    model = build(name, widths=widths, betas=betas, num_classes=num_classes, input_size=size, framework=fw)
    if fw == "keras":
        return export_keras(model, path, metadata=metadata)
    return export_torch(model, (3, size, size), path, dynamo=dynamo, metadata=metadata)
