"""The model matrix's detection and segmentation rows: the CLI on detectors, segmenters and a U-Net, unlabelled.

Rows: ultralytics YOLOv8n and YOLO11n (320 px), torchvision DeepLabV3-MobileNetV3, LR-ASPP-MobileNetV3 and
FCN-ResNet50 (224 px; their ``out`` map), and a small U-Net written here (128 px; skip connections by Concat,
bilinear upsampling). Random weights with trained-looking BatchNorm statistics, nothing downloaded;
deterministic noise images in [0, 1] (32 to fit on, 8 held out). Per row, as a user runs it:

    onnxmbs plan M --data fit.npy --preprocess raw --k 1 --round-to auto -o plan.json
    onnxmbs compact M --plan plan.json -o inherit.onnx --eval-data held.npy --preprocess raw
    onnxmbs compact M --plan plan.json -o rebuilt.onnx --reconstruct --data fit.npy --eval-data held.npy ...
    onnxmbs blocks M --data held.npy --preprocess raw --max-fidelity-loss 0.05 -o blocks.json

and ``apply_plan(module, plan, init="inherit")`` against ``inherit.onnx``. The table: params and MACs before
and after, the compact speed-up (onnxruntime CPU, batch 1, 1 thread, median of 10, both timed in one run),
fidelity of the inherited and the reconstructed compact model to the original on the held-out images
(relative L2 error over all output elements), blocks removable within 0.05 relative L2 error, and the
adapter's agreement with the compact ONNX. **Random weights: the fidelity figures show the mechanics, not
the quality a trained model keeps.**

ultralytics and torchvision need the CUDA build of torch: run from a tools-only virtualenv
(``pip install torch==2.14.1 torchvision==0.29.1 ultralytics onnx onnxruntime onnxscript`` then
``pip install -e .``). ``--only unet`` needs plain torch only.

    python tools/detection_matrix.py [--only yolov8n,unet] [--out artifacts/detection_matrix] [--json rows.json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

ROWS = {"yolov8n": 320, "yolo11n": 320, "deeplabv3_mobilenet_v3_large": 224, "lraspp_mobilenet_v3_large": 224,
        "fcn_resnet50": 224, "unet": 128}


def unet():
    """A small U-Net: four 2x downsamplings (conv-BN-ReLU ×2, max-pool), four bilinear upsamplings with
    skip connections concatenated, a 1×1 head to 4 classes."""
    import torch
    from torch import nn

    def double(cin, cout):
        return nn.Sequential(*(m for a, b in ((cin, cout), (cout, cout))
                               for m in (nn.Conv2d(a, b, 3, 1, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU())))

    class UNet(nn.Module):
        def __init__(self, widths=(16, 32, 64, 128, 256), classes=4):
            super().__init__()
            self.down = nn.ModuleList(double(a, b) for a, b in zip((3, *widths[:-1]), widths))
            self.up = nn.ModuleList(double(widths[i] + widths[i + 1], widths[i]) for i in range(len(widths) - 2, -1, -1))
            self.head = nn.Conv2d(widths[0], classes, 1)

        def forward(self, x):
            skips = []
            for i, block in enumerate(self.down):
                x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))
                skips.append(x)
            for block, skip in zip(self.up, reversed(skips[:-1])):
                x = nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
                x = block(torch.cat([skip, x], 1))
            return self.head(x)

    torch.manual_seed(0)
    return _trained_looking(UNet()).eval()


def _trained_looking(model):
    import torch

    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model


def build(name: str):
    if name == "unet":
        return unet()
    if name.startswith("yolo"):
        from prove_detection import build_yolo

        return build_yolo(config=f"{name}.yaml")
    from compact_latency import torchvision_model

    return torchvision_model(name)


def cli(work: Path, *args: object) -> str:
    proc = subprocess.run([sys.executable, "-m", "onnxmbs", *map(str, args)], cwd=work, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"onnxmbs {' '.join(map(str, args))}: {(proc.stdout + proc.stderr).strip().splitlines()[-1]}")
    return proc.stdout + proc.stderr


def adapter_error(net, work: Path, size: int) -> str:
    import torch

    from onnxmbs import apply_plan
    from onnxmbs.errors import MBSError
    from onnxmbs.runtime.session import open_session

    x = np.load(work / "held.npy")[:2]
    try:
        small = apply_plan(net, work / "plan.json", torch.zeros(1, 3, size, size), init="inherit")
    except MBSError as exc:
        return f"refused: {str(exc)[:120]}"
    sess = open_session(str(work / "inherit.onnx"))
    want = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        got = small(torch.from_numpy(x)).numpy()
    return f"{np.abs(got - want).max() / np.abs(want).max():.1e}"


def measure(name: str, work: Path) -> dict:
    from onnxmbs.zoo.export import export_torch

    size, began = ROWS[name], time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    net = build(name)
    export_torch(net, (3, size, size), work / "model.onnx", dynamo=False, opset=17)
    rng = np.random.default_rng(0)
    np.save(work / "fit.npy", rng.random((32, 3, size, size), dtype=np.float32))
    np.save(work / "held.npy", rng.random((8, 3, size, size), dtype=np.float32))
    raw = ("--preprocess", "raw")
    cli(work, "plan", "model.onnx", "--data", "fit.npy", *raw, "--k", 1, "--round-to", "auto", "-o", "plan.json")
    cli(work, "compact", "model.onnx", "--plan", "plan.json", "-o", "inherit.onnx", "--eval-data", "held.npy", *raw,
        "--repeats", 10)
    cli(work, "compact", "model.onnx", "--plan", "plan.json", "-o", "rebuilt.onnx", "--reconstruct", "--data",
        "fit.npy", "--eval-data", "held.npy", *raw, "--repeats", 0)
    cli(work, "blocks", "model.onnx", "--data", "held.npy", *raw, "--max-fidelity-loss", 0.05, "--no-progress",
        "-o", "blocks.json")
    inherit, rebuilt = (json.loads((work / f).read_text()) for f in ("inherit.onnx.json", "rebuilt.onnx.json"))
    blocks = json.loads((work / "blocks.json").read_text())
    fidelity = lambda rec: max(o["relative_l2"] for o in rec["fidelity"]["outputs"])  # noqa: E731
    return {"model": name, "size": size, "params": inherit["params"], "params_compact": inherit["params_compact"],
            "macs": inherit["flops"], "macs_compact": inherit["flops_compact"],
            "speedup": inherit["latency"]["speedup"], "fidelity_inherited": fidelity(inherit),
            "fidelity_reconstructed": fidelity(rebuilt), "reconstruct_seconds": rebuilt["reconstruction"]["seconds"],
            "blocks": len(blocks["blocks"]), "blocks_removed": len(blocks["removed"]),
            "adapter": adapter_error(net, work, size), "seconds": round(time.perf_counter() - began, 1)}


def table(rows: list[dict]) -> str:
    out = ["| model | px | params | MACs | compact speed-up | rel. L2 inherited | rel. L2 reconstructed "
           "| blocks removable (≤ 0.05) | apply_plan vs compact |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['size']} | {r['params']:,} → {r['params_compact']:,} "
                   f"({1 - r['params_compact'] / r['params']:.1%} fewer) | {r['macs'] / 1e9:.2f}G → "
                   f"{r['macs_compact'] / 1e9:.2f}G | ×{r['speedup']:.2f} | {r['fidelity_inherited']:.3g} | "
                   f"{r['fidelity_reconstructed']:.3g} ({r['reconstruct_seconds']:.0f} s) | "
                   f"{r['blocks_removed']} of {r['blocks']} | {r['adapter']} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(ROWS), help=f"comma-separated rows (default {','.join(ROWS)})")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "detection_matrix")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = []
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        if name not in ROWS:
            parser.error(f"unknown row {name!r}: choose from {', '.join(ROWS)}")
        try:
            rows.append(measure(name, args.out / name))
        except (RuntimeError, ImportError) as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            continue
        print(f"{name}: done in {rows[-1]['seconds']} s", file=sys.stderr)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
