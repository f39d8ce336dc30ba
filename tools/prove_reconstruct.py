"""Prove least-squares reconstruction on real data: accuracy before any retraining, and after a short fine-tune.

Data: scikit-learn's digits exactly as ``tools/train_digits.py`` makes them (8x8 -> 32x32, [0, 1],
``--preprocess raw``) with its stratified split: the 1,437 *training* images are used for the
statistics, the channel ranking and the reconstruction; the 360 held-out images (the embedded
model's ``models/digits_calib``) only for measuring.

Models: the embedded ResNet-20 (``models/resnet20_digits.onnx``) and a MobileNetV1-0.25 from the
zoo trained here on the same split. For each k: plan, then ``compact`` with every selection
(nonzero, l1, greedy), inherited and ``--reconstruct`` (run as the CLI, in a child process, for
its time and peak RSS), held-out accuracy of each; then the same short fine-tune (SGD, cosine,
``--epochs``, lr 0.002: the ONNX models have no BatchNorm left) of the original, the inherited and the reconstructed models (via
``tools/finetune_onnx.py``). The peer: Torch-Pruning 1.6 (``MagnitudePruner``, L1 magnitude,
uniform ratio bisected to the compact model's parameter count, classifier kept) on the same
PyTorch model, before and after the same fine-tune (exported to ONNX first, so the fine-tune is
literally the same code).

Usage:  python tools/prove_reconstruct.py [--ks 0.6 1.0 1.4] [--epochs 1] [--max-images 512]
                                          [--models resnet20 mobilenet] [--out artifacts/prove_reconstruct]
Prints Markdown tables; writes results.json under --out. Needs torch, scikit-learn, torch-pruning
(``pip install --no-deps torch-pruning==1.6.*``; a tools-only dependency).
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
from bench_reconstruct import child  # noqa: E402
from finetune_onnx import OnnxModule, resnet_from_folded  # noqa: E402
from train_digits import load_split  # noqa: E402

log = logging.getLogger("prove_reconstruct")
SELECTS = ("nonzero", "l1", "greedy")


def cli(args: list[str]) -> dict:
    """Run ``onnxmbs ARGS`` in a fresh interpreter; its wall time and peak RSS."""
    return child(args)


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    """Held-out top-1 by ``onnxmbs.evaluate`` (float arrays are the model input, used as they are)."""
    from onnxmbs import evaluate

    return evaluate(model, (x, y)).top1


def finetune(proto, split, epochs: int) -> float:
    """The same short fine-tune for every variant; held-out accuracy after it."""
    from onnxmbs.train import TrainConfig
    from onnxmbs.train.torch_trainer import train_torch

    module = OnnxModule(proto)
    config = TrainConfig(epochs=epochs, batch_size=32, lr=0.002, schedule="cosine", flip=False, crop_pad=2, seed=0)
    train_torch(module, (split.x_train, split.y_train), config=config)
    return accuracy(module.to_onnx(), split.x_test, split.y_test)


# ---------------------------------------------------------------- the models
def mobilenet(split, out: Path, epochs: int):
    """A zoo MobileNetV1-0.25 trained on the digits split, and its ONNX export."""
    import torch

    from onnxmbs.train import TrainConfig
    from onnxmbs.train.torch_trainer import train_torch
    from onnxmbs.zoo import build
    from onnxmbs.zoo.export import export_torch

    torch.manual_seed(0)
    model = build("mobilenet_v1", widths=[8, 16, 32, 64, 128, 256], num_classes=10, framework="torch")
    config = TrainConfig(epochs=epochs, batch_size=32, lr=0.1, schedule="cosine", flip=False, crop_pad=2, seed=0)
    train_torch(model, (split.x_train, split.y_train), config=config)
    model.eval()
    from onnxmbs.data.normalisation import preprocess_metadata

    return model, export_torch(model, (3, 32, 32), out / "mobilenet_digits.onnx", metadata=preprocess_metadata("raw"))


def resnet20(path: Path):
    import onnx

    from onnxmbs.zoo import build

    model = build("resnet20", num_classes=10, framework="torch")
    return resnet_from_folded(model, onnx.load(str(path))), path


def torch_pruning(model, target: int, split, out: Path, tag: str):
    """Torch-Pruning's magnitude pruner at the uniform ratio whose model has ``target`` (folded) parameters."""
    import torch
    import torch_pruning as tp

    from onnxmbs.adapters import folded_params
    from onnxmbs.zoo.export import export_torch

    example = torch.zeros(1, 3, 32, 32)

    def pruned(ratio: float):
        m = copy.deepcopy(model)
        tp.pruner.MagnitudePruner(m, example, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=[m.fc]).step()
        return m

    lo, hi = 0.0, 0.95
    for _ in range(14):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if folded_params(pruned(mid), example) > target else (lo, mid)
    best = min((lo, hi), key=lambda r: abs(folded_params(pruned(r), example) - target))
    m = pruned(best).eval()
    from onnxmbs.data.normalisation import preprocess_metadata

    path = export_torch(m, (3, 32, 32), out / f"tp_{tag}.onnx", metadata=preprocess_metadata("raw"))
    return path, folded_params(m, example), best


# ---------------------------------------------------------------- one model
def prove_model(name: str, torch_model, onnx_path: Path, split, args, out: Path) -> list[dict]:
    import onnx

    from onnxmbs.workflow.plan import plan_model

    train_npz = out / "train.npz"
    rows = [{"model": name, "variant": "original", "k": None, "select": None,
             "params": None, "accuracy": accuracy(onnx.load(str(onnx_path)), split.x_test, split.y_test),
             "finetuned": finetune(onnx.load(str(onnx_path)), split, args.epochs) if args.epochs else None}]
    log.info("%s", rows[-1])
    for k in args.ks:
        plan = plan_model(onnx_path, data=split.x_train, preprocess="raw", k=k).document.to_json()
        plan_path = out / f"{name}_plan_k{k}.json"
        plan_path.write_text(json.dumps(plan))
        for select in SELECTS:
            for rec in (False, True):
                rows.append(variant(name, onnx_path, plan_path, k, select, rec, split, args, out, train_npz))
                (out / f"{name}_rows.json").write_text(json.dumps(rows, indent=1))
        tp_path, tp_params, ratio = torch_pruning(torch_model, plan["summary"]["params_compact"], split, out,
                                                  f"{name}_k{k}")
        tp_model = onnx.load(str(tp_path))
        rows.append({"model": name, "variant": "Torch-Pruning", "k": k, "select": f"magnitude r={ratio:.3f}",
                     "params": tp_params, "accuracy": accuracy(tp_model, split.x_test, split.y_test),
                     "finetuned": finetune(tp_model, split, args.epochs) if args.epochs else None})
        log.info("%s", rows[-1])
    return rows


def variant(name, onnx_path, plan_path, k, select, rec, split, args, out, train_npz) -> dict:
    import onnx

    target = out / f"{name}_k{k}_{select}_{'rec' if rec else 'inh'}.onnx"
    cmd = ["compact", str(onnx_path), "--plan", str(plan_path), "-o", str(target), "--select", select,
           "--repeats", "0", "--preprocess", "raw", "--max-images", str(args.max_images),
           "--batch-size", "64", "--no-progress"]
    if rec or select == "greedy":
        cmd += ["--data", str(train_npz)]
    if rec:
        cmd += ["--reconstruct"]
    stats = cli(cmd)
    model = onnx.load(str(target))
    record = json.loads(Path(str(target) + ".json").read_text())
    row = {"model": name, "variant": "reconstructed" if rec else "inherited", "k": k, "select": select,
           "params": record["params_compact"], "accuracy": accuracy(model, split.x_test, split.y_test),
           "seconds": round(stats["seconds"], 1), "peak_mb": round(stats["peak_mb"], 1),
           "finetuned": finetune(model, split, args.epochs) if args.epochs and select in args.finetune else None}
    if rec:
        row["reconstruct_seconds"] = record["reconstruction"]["seconds"]
    log.info("%s", row)
    return row


def table(rows: list[dict]) -> str:
    def pct(v):
        return "" if v is None else f"{100 * v:.2f} %"

    lines = ["| model | k | variant | select | params | held-out | after fine-tune | time | peak RSS |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['k'] or ''} | {r['variant']} | {r['select'] or ''} | "
                     f"{'' if r['params'] is None else format(r['params'], ',')} | {pct(r['accuracy'])} | "
                     f"{pct(r['finetuned'])} | {r.get('seconds', '')}{' s' if 'seconds' in r else ''} | "
                     f"{r.get('peak_mb', '')}{' MB' if 'peak_mb' in r else ''} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=float, nargs="+", default=[0.6, 1.0, 1.4])
    parser.add_argument("--epochs", type=int, default=1, help="fine-tune epochs (0 skips the fine-tunes)")
    parser.add_argument("--mobilenet-epochs", type=int, default=20)
    parser.add_argument("--max-images", type=int, default=512, help="training images for the reconstruction")
    parser.add_argument("--finetune", nargs="+", default=["nonzero", "greedy"], help="selections to fine-tune")
    parser.add_argument("--models", nargs="+", default=["resnet20", "mobilenet"])
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "prove_reconstruct")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    split = load_split()
    np.savez(args.out / "train.npz", x=split.x_train, y=split.y_train)
    rows = []
    began = time.perf_counter()
    for name in args.models:
        if name == "resnet20":
            torch_model, path = resnet20(ROOT / "models" / "resnet20_digits.onnx")
        else:
            torch_model, path = mobilenet(split, args.out, args.mobilenet_epochs)
        rows += prove_model(name, torch_model, path, split, args, args.out)
        (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    print(table(rows))
    print(f"\n(total {time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
