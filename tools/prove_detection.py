"""The whole flow on a detector: ultralytics YOLOv8n (random weights, trained-looking BatchNorm
statistics; built from its yaml, nothing downloaded), exported at 320 px with the library's exporter,
then the CLI as a user runs it — analyze, plan (--round-to auto), compact (inherited; and
--reconstruct --quantize int8), apply_plan on the module against both compact files, evaluate --reference,
blocks --metric fidelity --reconstruct (and remove_blocks_from against the shallow ONNX), report
--deployment --blocks — on deterministic noise images (no labels). Prints each command and the tail
of its output; writes everything under --out.

ultralytics needs torchvision, which installs only with the CUDA build of torch: run this from a
tools-only virtualenv (``pip install torch torchvision ultralytics onnx onnxruntime onnxscript``,
then ``pip install --no-deps -e .``), never the project's.

``--raw`` exports the head's three raw maps (box distributions and class logits per scale, before the
decoding that adds the anchor grid), flattened and concatenated to (N, 144, 2100), as the output
instead of the decoded detections.

Usage:  python tools/prove_detection.py [--size 320] [--raw] [--out artifacts/prove_detection]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_yolo(*, raw: bool = False, config: str = "yolov8n.yaml"):
    """The detector as a module returning one tensor (random weights, trained-looking BatchNorm statistics)."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel(config, nc=80, verbose=False).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)

    class Outputs(torch.nn.Module):  # inference mode returns (decoded boxes + scores, the three raw maps)
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            y = self.inner(x)
            return torch.cat([y[1]["boxes"], y[1]["scores"]], 1) if raw else y[0]

    return Outputs(model).eval()


def export_yolo(path: Path, size: int, *, raw: bool = False) -> Path:
    from onnxmbs.zoo.export import export_torch

    return export_torch(build_yolo(raw=raw), (3, size, size), path, dynamo=False, opset=17)


def adapter_check(out: Path, size: int, *, raw: bool) -> None:
    """apply_plan on the ultralytics module against the compact ONNX files made from the same plan."""
    import torch

    from onnxmbs import apply_plan
    from onnxmbs.adapters import folded_params
    from onnxmbs.errors import MBSError
    from onnxmbs.runtime.session import open_session

    net, example = build_yolo(raw=raw), torch.zeros(1, 3, size, size)
    x = np.load(out / "held.npy")[:4]
    for init, onnx_file in (("inherit", "c_inherit.onnx"), ("onnx", "c.onnx")):
        sess = open_session(str(out / onnx_file))
        want = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        extra = {"compact_onnx": out / onnx_file} if init == "onnx" else {}
        try:
            small = apply_plan(net, out / "plan.json", example, init=init, **extra)
        except MBSError as exc:
            print(f"apply_plan(init={init!r}): refused — {exc}\n")
            continue
        with torch.no_grad():
            got = small(torch.from_numpy(x)).numpy()
        print(f"apply_plan(DetectionModel, plan.json, init={init!r}) vs {onnx_file}: max relative output error "
              f"{np.abs(got - want).max() / np.abs(want).max():.2e}; folded_params {folded_params(small, example):,}\n")


def onnxmbs(out: Path, *args: object, tail: int = 12) -> None:
    cmd = ["onnxmbs", *map(str, args)]
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "onnxmbs", *map(str, args)], cwd=out, capture_output=True, text=True)
    print(f"$ {' '.join(cmd)}    # {time.perf_counter() - began:.1f} s, exit {proc.returncode}")
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if not ln.startswith("normalisation of")]
    print("\n".join(lines[-tail:]) + "\n")
    if proc.returncode:
        raise SystemExit(f"onnxmbs {' '.join(map(str, args))} failed")


def blocks_check(out: Path, size: int, *, raw: bool) -> None:
    """remove_blocks_from on the ultralytics module against the shallow ONNX from the same blocks plan."""
    import torch

    from onnxmbs import remove_blocks_from
    from onnxmbs.runtime.session import open_session

    x = np.load(out / "held.npy")[:4]
    shallow = remove_blocks_from(build_yolo(raw=raw), out / "blocks.json", torch.zeros(1, 3, size, size),
                                 onnx_path=out / "yolov8n.onnx")
    sess = open_session(str(out / "shallow.onnx"))
    want = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        got = shallow(torch.from_numpy(x)).numpy()
    print(f"remove_blocks_from(DetectionModel, blocks.json) vs shallow.onnx: max relative output error "
          f"{np.abs(got - want).max() / np.abs(want).max():.2e}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--raw", action="store_true",
                        help="export the head's raw maps (before box decoding) as the output")
    parser.add_argument("--out", type=Path, default=None, help="default artifacts/prove_detection[_raw]")
    args = parser.parse_args()
    out = (args.out or ROOT / "artifacts" / ("prove_detection_raw" if args.raw else "prove_detection")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    export_yolo(out / "yolov8n.onnx", args.size, raw=args.raw)
    rng = np.random.default_rng(0)
    np.save(out / "fit.npy", rng.random((32, 3, args.size, args.size), dtype=np.float32))
    np.save(out / "held.npy", rng.random((16, 3, args.size, args.size), dtype=np.float32))
    raw = ("--preprocess", "raw")
    onnxmbs(out, "analyze", "yolov8n.onnx", tail=3)
    onnxmbs(out, "plan", "yolov8n.onnx", "--data", "fit.npy", *raw, "--k", 1, "--round-to", "auto", "-o", "plan.json")
    onnxmbs(out, "compact", "yolov8n.onnx", "--plan", "plan.json", "-o", "c_inherit.onnx", "--eval-data", "held.npy",
            *raw, "--repeats", 10, tail=7)
    onnxmbs(out, "compact", "yolov8n.onnx", "--plan", "plan.json", "-o", "c.onnx", "--reconstruct", "--data", "fit.npy",
            "--eval-data", "held.npy", *raw, "--quantize", "int8", "--repeats", 10, tail=9)
    adapter_check(out, args.size, raw=args.raw)
    onnxmbs(out, "evaluate", "c.onnx", "--data", "held.npy", "--reference", "yolov8n.onnx", *raw, tail=3)
    onnxmbs(out, "blocks", "yolov8n.onnx", "--data", "held.npy", *raw, "--remove", 2, "--reconstruct",
            "--no-progress", "-o", "blocks.json", "--output-model", "shallow.onnx", tail=8)
    blocks_check(out, args.size, raw=args.raw)
    onnxmbs(out, "report", "yolov8n.onnx", "--data", "fit.npy", *raw, "--round-to", "auto", "--deployment", "c.onnx",
            "--blocks", "blocks.json", "-o", "report.md", "-o", "report.html", tail=6)


if __name__ == "__main__":
    main()
