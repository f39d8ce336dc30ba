"""Train the embedded default model: a CIFAR ResNet-20 on scikit-learn's digits.

Real, offline data: ``sklearn.datasets.load_digits`` (1,797 8x8 grey digits,
values 0..16).  Each image is scaled to [0, 1], upscaled to 32x32 (bilinear),
replicated to 3 channels and rounded to 8 bits (so the PNGs written for
calibration hold exactly the model's input).  Model input: raw [0, 1], NCHW.

A stratified ~80/20 split (seeded) gives the training and held-out sets.
Training: the library's trainer (``onnxmbs.train``): SGD momentum 0.9, weight decay 1e-4
(the paper's setting), cosine LR from 0.1, batch 64, random crop with zero padding 2.
Everything is seeded and runs on CPU in a few minutes.

Writes (under ``--out``, default ``models/``):
  resnet20_digits.onnx       the exported model (dynamic batch, 1x3x32x32)
  digits_calib/<label>/<index>.png   the held-out images, 32x32 RGB uint8
  digits_calib.npz           x (N,3,32,32 float32, = PNG/255) and y (N,)
  README.md                  the model card

Usage:  python tools/train_digits.py [--epochs 15] [--out models]
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from onnxmbs import evaluate  # noqa: E402
from onnxmbs.data.normalisation import preprocess_metadata  # noqa: E402
from onnxmbs.train import TrainConfig, TrainResult  # noqa: E402
from onnxmbs.train.torch_trainer import evaluate_torch, train_torch  # noqa: E402
from onnxmbs.zoo.export import export_torch  # noqa: E402
from onnxmbs.zoo.torch_resnet import count_params, resnet20_cifar  # noqa: E402

log = logging.getLogger("train_digits")
SEED = 0
SIZE = 32


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    test_index: np.ndarray


def load_split(*, seed: int = SEED, test_size: float = 0.2, size: int = SIZE) -> Split:
    """Digits as (N,3,size,size) float32 in [0,1] on the 8-bit grid, stratified split."""
    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = torch.round(x.clamp(0, 1) * 255) / 255
    x = x.repeat(1, 3, 1, 1).numpy()
    y = digits.target.astype(np.int64)
    index = np.arange(len(y))
    tr, te = train_test_split(index, test_size=test_size, stratify=y, random_state=seed)
    te = np.sort(te)
    return Split(x[tr], y[tr], x[te], y[te], te)


def train(model: torch.nn.Module, split: Split, *, epochs: int) -> TrainResult:
    """The library's trainer (``onnxmbs.train.torch_trainer.train_torch``): SGD momentum 0.9, weight
    decay 1e-4, per-step cosine decay from lr 0.1, batch 64, random crop with zero padding 2, no flip."""
    config = TrainConfig(epochs=epochs, batch_size=64, lr=0.1, schedule="cosine", flip=False, crop_pad=2, seed=SEED)
    return train_torch(model, (split.x_train, split.y_train), config=config, val=(split.x_test, split.y_test))


def onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    """Held-out top-1 of the exported file, measured by ``onnxmbs.evaluate`` (as ``onnxmbs evaluate`` does)."""
    return evaluate(path, (x, y)).top1


def write_calibration(split: Split, out: Path) -> None:
    """Held-out images as PNGs per label, plus the same arrays in an npz."""
    root = out / "digits_calib"
    if root.exists():
        shutil.rmtree(root)
    for img, label, index in zip(split.x_test, split.y_test, split.test_index):
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.round(img.transpose(1, 2, 0) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{int(index):04d}.png", optimize=True)
    np.savez_compressed(out / "digits_calib.npz", x=split.x_test.astype(np.float32), y=split.y_test)


CARD = """# Embedded models

## resnet20_digits.onnx — the default demo model

A CIFAR ResNet-20 (`onnxmbs.zoo.torch_resnet.resnet20_cifar`: 3x3 stem, three
stages of 3 basic blocks at widths 16/32/64, 1x1 conv+BN projection shortcuts
where the shape changes, global average pooling, linear classifier) trained on
scikit-learn's bundled **digits** data set (1,797 real 8x8 handwritten digits,
10 classes). It is small, offline and real, so `onnxmbs plan` has true ReLU
statistics to work with.

| | |
|---|---|
| parameters | {params:,} (the ONNX file stores BatchNorm folded into conv biases) |
| input | `input`, float32 NCHW `[batch, 3, 32, 32]`, batch dynamic |
| preprocessing | `raw`: pixel values / 255, i.e. in [0, 1]; no mean/std |
| output | `output`, `[batch, 10]` logits, class = digit |
| held-out accuracy | **{acc:.2%}** ({n_test} images; onnxruntime {onnx_acc:.2%}) |
| training accuracy | {train_acc:.2%} ({n_train} images) |
| opset | 18, exported by `onnxmbs.zoo.export.export_torch` (torch.export, dynamo) |

### How it was made

    python tools/train_digits.py --epochs {epochs} --out models

1. `sklearn.datasets.load_digits()`; values / 16 → [0, 1]; bilinear upscale
   8x8 → 32x32 (`align_corners=False`); grey replicated to 3 channels; rounded to
   the 8-bit grid (so the PNGs below are exactly the model input × 255).
2. Stratified split, `random_state=0`: {n_train} training, {n_test} held out.
3. `onnxmbs.train.torch_trainer.train_torch`: SGD, momentum 0.9, weight decay 1e-4,
   lr 0.1 with per-step cosine decay, batch 64, {epochs} epochs, random crop with zero
   padding 2, no flip; all seeds 0; CPU. Took {seconds:.0f} s on 2 CPU cores.
4. Exported with `onnxmbs.zoo.export.export_torch` (checked against PyTorch in
   onnxruntime, rtol 1e-3 / atol 1e-4), with `onnxmbs.preprocess = raw` in its metadata;
   held-out accuracy of the file measured with `onnxmbs.evaluate`.

### Calibration data

`digits_calib/<label>/<index>.png` — the {n_test} held-out images as 32x32 RGB
uint8 PNGs (`<index>` is the row in `load_digits()`); `digits_calib.npz` holds
the same images as `x` (N,3,32,32 float32 = PNG / 255) and labels `y`.

    onnxmbs plan models/resnet20_digits.onnx --data models/digits_calib
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("models"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    split = load_split()
    model = resnet20_cifar(num_classes=10)
    began = time.perf_counter()
    train(model, split, epochs=args.epochs)
    seconds = time.perf_counter() - began
    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = export_torch(model, (1, 3, SIZE, SIZE), args.out / "resnet20_digits.onnx",
                             metadata=preprocess_metadata("raw"))
    write_calibration(split, args.out)
    facts = dict(
        params=count_params(model), acc=evaluate_torch(model, split.x_test, split.y_test),
        onnx_acc=onnx_accuracy(onnx_path, split.x_test, split.y_test),
        train_acc=evaluate_torch(model, split.x_train, split.y_train),
        n_train=len(split.y_train), n_test=len(split.y_test), epochs=args.epochs, seconds=seconds,
    )
    (args.out / "README.md").write_text(CARD.format(**facts))
    print(f"held-out accuracy {facts['acc']:.4f} (onnxruntime {facts['onnx_acc']:.4f}), "
          f"{facts['params']:,} params, {seconds:.0f} s -> {onnx_path}")


if __name__ == "__main__":
    main()
