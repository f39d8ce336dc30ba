"""Prove the whole MBS loop on real data: train, plan, apply, retrain from scratch, compare.

Data: scikit-learn's bundled digits (1,797 real 8x8 handwritten digits), preprocessed
exactly as ``tools/train_digits.py`` (bilinear 8x8 -> 32x32, 3 channels, [0, 1]) with its
stratified 80/20 split (1,437 train / 360 held out).

1. PyTorch ResNet-20 (``onnxmbs.zoo``) and a Keras MobileNetV1 (width 0.25, 32x32 input):
   train the full model, export to ONNX, plan at several k (statistics on the *training*
   images, as in the paper), apply each plan with ``onnxmbs.adapters.apply_plan`` (init
   "scratch"), retrain with the same recipe, evaluate on the held-out split.
2. The paper's Figure 5: uniform α-scaling (every scalable channel group × α, α chosen so the
   parameter count is closest to MBS's) vs MBS at the same budget, mean ± std over seeds.

Recipe (both frameworks): SGD momentum 0.9, weight decay 1e-4, lr 0.1 ÷ 10 at 50 %/75 %,
batch 32, random crop (pad 2); no horizontal flip (a mirrored digit is not the same digit).
Keras BatchNorm momentum is set to 0.9 (PyTorch's default): Keras' 0.99 moving averages need
far more steps than a few epochs on 1,437 images give.
Parameters are counted as the plan counts the ONNX export (BatchNorm folded into the conv
before it; see ``onnxmbs.adapters.folded_params``). Prints Markdown tables; writes
``results.json`` under ``--out``.

Usage:  python tools/prove_digits.py [--epochs 6] [--keras-epochs 12] [--seeds 3] [--threads 1] [--out artifacts/prove]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
import onnxmbs  # noqa: E402
from onnxmbs.files import write_json  # noqa: E402
from onnxmbs.workflow.plan import plan_model  # noqa: E402
from onnxmbs.planning.sweep import make_sweeper  # noqa: E402
from onnxmbs.planning.uniform import match_alpha, uniform_document  # noqa: E402
from onnxmbs.train import TrainConfig  # noqa: E402
from onnxmbs.adapters import adapt, count_params  # noqa: E402
from onnxmbs.train.frameworks import seed_framework, train_model  # noqa: E402
from train_digits import load_split  # noqa: E402

log = logging.getLogger("prove_digits")


@dataclass(frozen=True)
class Run:
    model: str
    variant: str  # "original" | "MBS" | "uniform"
    k: float | None
    alpha: float | None
    seed: int
    params: int
    accuracy: float
    widths: str
    seconds: float


# ---------------------------------------------------------------- framework glue
@dataclass(frozen=True)
class Framework:
    name: str
    layout: str

    def seed(self, seed: int) -> None:
        seed_framework(self.name, seed)

    def params(self, model: Any) -> int:
        return count_params(model, self.name, (3, 32, 32))

    def apply(self, model: Any, plan: Any) -> Any:
        return adapt(model, self.name, plan, (3, 32, 32), "scratch")

    def train(self, model: Any, data, val, config: TrainConfig) -> float:
        return train_model(model, self.name, data, val, config).val_accuracy

    def export(self, model: Any, path: Path) -> Path:
        from onnxmbs.zoo.export import export_keras, export_torch

        return export_torch(model, (3, 32, 32), path) if self.name == "torch" else export_keras(model, path)

    def widths(self, model: Any) -> str:
        """Output widths of the convs, run-length encoded (e.g. ``16x7 32x7 64x7``)."""
        if self.name == "torch":
            import torch

            ws = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        else:
            ws = [int(l.output.shape[-1]) for l in model.layers if type(l).__name__ == "Conv2D"]
        runs: list[list[int]] = []
        for w in ws:
            if runs and runs[-1][0] == w:
                runs[-1][1] += 1
            else:
                runs.append([w, 1])
        return " ".join(f"{w}x{n}" for w, n in runs)


def build(framework: Framework) -> Any:
    from onnxmbs.zoo import build as zoo_build

    if framework.name == "torch":
        return zoo_build("resnet20", num_classes=10, framework="torch")
    import keras

    model = zoo_build("mobilenet_v1", widths=[8, 16, 32, 64, 128, 256], num_classes=10, input_size=32,
                      framework="keras")
    config = model.get_config()  # BatchNorm momentum 0.9 (PyTorch's 0.1): 0.99 needs far more steps than we run
    for layer in config["layers"]:
        if layer["class_name"] == "BatchNormalization":
            layer["config"]["momentum"] = 0.9
    return keras.Model.from_config(config)


# ---------------------------------------------------------------- experiments
def run_one(fw: Framework, make: Any, data, val, config: TrainConfig, **meta: Any) -> tuple[Run, Any]:
    """Seed, build (``make()``), train and evaluate one model."""
    began = time.perf_counter()
    fw.seed(config.seed)
    model = make()
    acc = fw.train(model, data, val, config)
    run = Run(params=fw.params(model), accuracy=acc, widths=fw.widths(model), seed=config.seed,
              seconds=time.perf_counter() - began, **meta)
    log.info("%s", run)
    return run, model


def prove(fw: Framework, split, args: argparse.Namespace, out: Path) -> list[Run]:
    x_tr, x_te = (split.x_train, split.x_test) if fw.layout == "NCHW" else (
        split.x_train.transpose(0, 2, 3, 1).copy(), split.x_test.transpose(0, 2, 3, 1).copy())
    train, val = (x_tr, split.y_train), (x_te, split.y_test)
    epochs = args.epochs if fw.name == "torch" else args.keras_epochs
    recipe = dict(epochs=epochs, batch_size=args.batch_size, lr=0.1, schedule="step", flip=False, crop_pad=2)
    name = "ResNet-20 (PyTorch)" if fw.name == "torch" else "MobileNetV1-0.25 (Keras)"
    first, original = run_one(fw, lambda: build(fw), train, val, TrainConfig(seed=0, **recipe), model=name,
                              variant="original", k=None, alpha=None)
    runs = [first]
    path = fw.export(original, out / f"{fw.name}_original.onnx")
    sweeper = make_sweeper(onnxmbs.analyze(path), None)  # uniform scaling needs no statistics
    for k in args.ks:
        plan = plan_model(path, data=x_tr, preprocess="raw", k=k).document
        write_json(out / f"{fw.name}_plan_k{k}.json", plan)
        seeds = range(args.seeds) if k == args.fig5_k else range(1)
        for seed in seeds:
            runs.append(run_one(fw, lambda: fw.apply(original, plan), train, val, TrainConfig(seed=seed, **recipe),
                                model=name, variant="MBS", k=k, alpha=None)[0])
        if k != args.fig5_k:
            continue
        uniform = match_alpha(sweeper.groups, sweeper.layers, sweeper.specs, plan.summary.params_compact)
        for seed in range(args.seeds):
            runs.append(run_one(fw, lambda: fw.apply(original, uniform_document(plan, uniform)), train, val,
                                TrainConfig(seed=seed, **recipe), model=name, variant="uniform", k=k,
                                alpha=uniform.alpha)[0])
    return runs


# ---------------------------------------------------------------- report
def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2%}"
    return f"{statistics.mean(values):.2%} ± {statistics.stdev(values):.2%}"


def tables(runs: list[Run], fig5_k: float) -> str:
    lines = ["| model | variant | k | α | conv widths | params | Δ params | held-out acc. (seeds) |",
             "|---|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r.model, r.variant, r.k, r.alpha) for r in runs))
    base = {r.model: r.params for r in runs if r.variant == "original"}
    for model, variant, k, alpha in keys:
        group = [r for r in runs if (r.model, r.variant, r.k, r.alpha) == (model, variant, k, alpha)]
        delta = group[0].params / base[model] - 1
        lines.append(f"| {model} | {variant} | {'' if k is None else k} | {'' if alpha is None else f'{alpha:.4f}'} "
                     f"| {group[0].widths} | {group[0].params:,} | {delta:+.1%} | "
                     f"{_mean_std([r.accuracy for r in group])} ({len(group)}) |")
    fig5 = [f"\nFigure 5 at k = {fig5_k} (same parameter budget, retrained from scratch):\n",
            "| model | MBS params | MBS acc. | uniform α | uniform params | uniform acc. |",
            "|---|---|---|---|---|---|"]
    for model in dict.fromkeys(r.model for r in runs):
        mbs = [r for r in runs if r.model == model and r.variant == "MBS" and r.k == fig5_k]
        uni = [r for r in runs if r.model == model and r.variant == "uniform"]
        if mbs and uni:
            fig5.append(f"| {model} | {mbs[0].params:,} | {_mean_std([r.accuracy for r in mbs])} | {uni[0].alpha:.4f} "
                        f"| {uni[0].params:,} | {_mean_std([r.accuracy for r in uni])} |")
    return "\n".join(lines + fig5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="epochs per PyTorch run")
    parser.add_argument("--keras-epochs", type=int, default=12, help="epochs per Keras run")
    parser.add_argument("--seeds", type=int, default=3, help="seeds for the Figure 5 comparison")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ks", type=lambda s: [float(v) for v in s.split(",")], default=[0.6, 1.0, 1.4])
    parser.add_argument("--fig5-k", type=float, default=1.0)
    parser.add_argument("--frameworks", default="torch,keras")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=Path("artifacts/prove"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in ("onnxmbs.train", "onnxmbs.train.torch_trainer", "onnxmbs.train.keras_trainer"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    split = load_split()
    began, runs = time.perf_counter(), []
    for fw in (Framework(n, "NCHW" if n == "torch" else "NHWC") for n in args.frameworks.split(",")):
        runs += prove(fw, split, args, args.out)
        (args.out / "results.json").write_text(json.dumps([r.__dict__ for r in runs], indent=1))
    print(tables(runs, args.fig5_k))
    print(f"\n{len(runs)} training runs, {time.perf_counter() - began:.0f} s; train {len(split.y_train)} / "
          f"held-out {len(split.y_test)} digits images; {args.epochs} (torch) / {args.keras_epochs} (Keras) "
          "epochs each.")


if __name__ == "__main__":
    main()
