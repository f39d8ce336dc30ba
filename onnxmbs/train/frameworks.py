"""One face for both frameworks: load the user's model, seed, train (applying a plan and counting
parameters the same way: :func:`onnxmbs.adapters.adapt`, :func:`onnxmbs.adapters.count_params`).

``retrain`` and the handbook call these instead of branching on PyTorch vs Keras themselves.
A model is ``.pt``/``.pth`` (a pickled ``nn.Module``), ``.keras``/``.h5``, or
``file.py:function`` returning a ``nn.Module`` or Keras model. Torch and Keras are imported
only when used.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxmbs.errors import MBSError
from onnxmbs.runtime.frameworks import import_keras, require_framework

if TYPE_CHECKING:
    import numpy as np
    from onnxmbs.train import TrainConfig, TrainResult

KERAS_SUFFIXES = (".keras", ".h5")
TORCH_SUFFIXES = (".pt", ".pth")


def _from_python(spec: str) -> Any:
    file, _, function = spec.rpartition(":")
    path = Path(file)
    if not path.is_file():
        raise MBSError(f"model file not found: {path} — pass FILE.py:FUNCTION, e.g. models.py:build")
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    factory = getattr(module, function, None)
    if not callable(factory):
        raise MBSError(f"{path} has no function {function!r} — pass FILE.py:FUNCTION returning your model")
    return factory()


def load_user_model(spec: str) -> Any:
    """A model from ``.pt``/``.pth`` (pickled module), ``.keras``/``.h5``, or ``file.py:function``."""
    path = Path(spec)
    if path.suffix.lower() in TORCH_SUFFIXES:
        require_framework("torch", f"loading {path}")
        import torch

        if not path.is_file():
            raise MBSError(f"model file not found: {path} — check the path")
        model = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(model, torch.nn.Module):
            raise MBSError(f"{path} holds a {type(model).__name__}, not a whole nn.Module — save it with "
                           "torch.save(model, path), or pass FILE.py:FUNCTION that builds it and loads the state dict")
        return model
    if path.suffix.lower() in KERAS_SUFFIXES:
        require_framework("keras", f"loading {path}")
        keras = import_keras()

        if not path.is_file():
            raise MBSError(f"model file not found: {path} — check the path")
        return keras.saving.load_model(path, compile=False)
    if ":" in spec and spec.rpartition(":")[0].endswith(".py"):
        return _from_python(spec)
    raise MBSError(f"cannot load a model from {spec!r} — pass a .pt/.pth (torch.save(model)), a .keras file, "
                   "or FILE.py:FUNCTION")


def seed_framework(framework: str, seed: int) -> None:
    """Seed the framework's RNG: a scratch model's initial weights depend on it."""
    if framework == "torch":
        import torch

        torch.manual_seed(seed)
    else:
        import_keras().utils.set_random_seed(seed)


def train_model(model: Any, framework: str, train: Any, val: Any, config: TrainConfig, *,
                progress: bool | None = None) -> TrainResult:
    """Train ``model`` in place with the framework's trainer; ``val`` accuracy after the last epoch."""
    if framework == "torch":
        from onnxmbs.train.torch_trainer import train_torch

        return train_torch(model, train, config=config, val=val, progress=progress)
    from onnxmbs.train.keras_trainer import train_keras

    return train_keras(model, train, config=config, val=val, progress=progress)


def predict(model: Any, framework: str, x: np.ndarray) -> list[np.ndarray]:
    """The trained model's outputs over ``x`` (the framework's layout), one array per output, batch first."""
    if framework == "torch":
        from onnxmbs.train.torch_trainer import predict_torch

        return predict_torch(model, x)
    from onnxmbs.train.keras_trainer import predict_keras

    return predict_keras(model, x)
