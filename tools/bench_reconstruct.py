"""Benchmark: least-squares reconstruction of a zoo ResNet-50 at 224x224 — seconds and peak RSS,
and whether memory grows with the number of images.

Exports ResNet-50 from the zoo once (random weights; into ``artifacts/bench/``), plans it at k = 1
on 8 noise images, writes ``--images`` noise images as PNG files (read one at a time, like any
image folder), then runs ``onnxmbs compact --reconstruct`` on the first 64 and on all of them, each
in a fresh interpreter, plus one plain ``compact`` (no reconstruction) as the memory baseline and,
for each count, plain onnxruntime inference of the original over the same images (same batch size) as
the time baseline. Peak RSS is the child's ``VmHWM``. Prints the figures, the ratios against those
baselines and peak(256) / peak(64), all measured in this run.

Usage:  python tools/bench_reconstruct.py [--images 64 256] [--positions 32] [--batch-size 16]
        python tools/bench_reconstruct.py --model models/resnet20_digits.onnx --data train.npz --preprocess raw
               --images 64 1024     (any model: planned at k = 1 on --data, reconstructed on --data)
        python tools/bench_reconstruct.py --zoo mobilenet_v2 --images 64    (another zoo model at 224, depthwise)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = """
import json, sys, time
from onnxmbs.cli import main
began = time.perf_counter()
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code or 0
else:
    code = 0
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
print(json.dumps({"seconds": time.perf_counter() - began, "peak_mb": peak, "code": code}), file=sys.stderr)
"""


INFER = """
import json, sys, time
from onnxmbs.compact.activations import open_batches
from onnxmbs.graph.load import load_model
from onnxmbs.runtime.session import choose_provider, make_session
from onnxmbs.stats.measure import CalibrationOptions
model, data, n, batch, preprocess = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
loaded = load_model(model)
batches = open_batches(loaded, CalibrationOptions(data=data, preprocess=preprocess, max_images=n, batch_size=batch))
session = make_session(open(model, "rb").read(), choose_provider("auto"))
began = time.perf_counter()
for x in batches():
    session.run(None, {loaded.input.name: x})
print(json.dumps({"seconds": time.perf_counter() - began, "peak_mb": 0, "code": 0}), file=sys.stderr)
"""


def infer(model: Path, data: Path, n: int, batch: int, preprocess: str) -> float:
    """Plain onnxruntime inference of ``model`` over the first ``n`` images (reading them included)."""
    proc = subprocess.run([sys.executable, "-c", INFER, str(model), str(data), str(n), str(batch), preprocess],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"plain inference failed:\n{proc.stderr}")
    return json.loads(proc.stderr.strip().splitlines()[-1])["seconds"]


def child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=ROOT, capture_output=True, text=True)
    stats = json.loads(proc.stderr.strip().splitlines()[-1])
    if stats["code"]:
        raise SystemExit(f"onnxmbs {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    stats["output"] = proc.stdout
    return stats


def noise_folder(folder: Path, count: int) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"{i:04d}.png"
        if not path.exists():
            pixels = np.random.default_rng([7, i]).integers(0, 256, (224, 224, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--positions", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cache", type=Path, default=ROOT / "artifacts" / "bench")
    parser.add_argument("--model", type=Path, default=None, help="another model instead of the zoo ResNet-50")
    parser.add_argument("--data", type=Path, default=None, help="its images (default: noise PNGs at 224)")
    parser.add_argument("--preprocess", default="imagenet")
    parser.add_argument("--zoo", default="resnet50", help="zoo model exported at 224 when no --model is given")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    model = args.model or args.cache / f"{args.zoo}_torch_224.onnx"
    if not model.exists():
        from onnxmbs.zoo import export

        export(args.zoo, model, framework="torch", input_size=224)
    plan = args.cache / f"{model.stem}_plan_k1.json"
    if not plan.exists():
        source = ["--data", str(args.data), "--preprocess", args.preprocess] if args.data else ["--synthetic", "8"]
        child(["plan", str(model), *source, "-o", str(plan)])
    data = args.data or noise_folder(args.cache / "noise224", max(args.images))
    base = child(["compact", str(model), "--plan", str(plan), "-o", str(args.cache / f"{model.stem}_inherited.onnx"),
                  "--repeats", "0"])
    print(f"compact without reconstruction: {base['seconds']:.1f} s, peak RSS {base['peak_mb']:.0f} MB")
    runs = {}
    for n in args.images:
        out = args.cache / f"{model.stem}_rec_{n}.onnx"
        runs[n] = child(["compact", str(model), "--plan", str(plan), "-o", str(out), "--repeats", "0",
                         "--reconstruct", "--data", str(data), "--max-images", str(n), "--no-progress",
                         "--preprocess", args.preprocess,
                         "--positions", str(args.positions), "--batch-size", str(args.batch_size)])
        rec = json.loads(Path(str(out) + ".json").read_text())["reconstruction"]
        plain = infer(model, data, n, args.batch_size, args.preprocess)
        print(f"reconstruct on {n} images: {runs[n]['seconds']:.1f} s (reconstruction {rec['seconds']:.1f} s, "
              f"{len(rec['layers'])} layers in {rec['waves']} waves), peak RSS {runs[n]['peak_mb']:.0f} MB; "
              f"plain inference {plain:.1f} s: reconstruction x{rec['seconds'] / plain:.2f} of inference, "
              f"peak RSS x{runs[n]['peak_mb'] / base['peak_mb']:.2f} of plain compact")
        print("  seconds per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in rec.get("stage_seconds", {}).items()))
    lo, hi = min(args.images), max(args.images)
    print(f"peak RSS {hi} / {lo} images: x{runs[hi]['peak_mb'] / runs[lo]['peak_mb']:.3f}; "
          f"time x{runs[hi]['seconds'] / runs[lo]['seconds']:.2f}")


if __name__ == "__main__":
    main()
