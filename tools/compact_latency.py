"""Honest numbers for `onnxmbs compact`: parameters, MACs and onnxruntime CPU latency of the original
and of its compact model at several roundings (`--round-to 1`, `8`, `auto`), for zoo models.

For each model: export it (TorchScript exporter), measure its statistics once on N images of
synthetic noise (random-initialised nets, so the widths are illustrative, not the paper's), plan at
each rounding through the library's one sequence (`auto`: the rounding the library times fastest
for that plan), build each compact model with inherited weights, then time the original and every
compact model in one onnxruntime run (one warm-up each, the models taking turns, median) so a
noisy moment hits them all alike. Prints, per model and rounding, the speed-up over the original
and its ratio to the MACs ratio (1.0: latency fell as much as the MACs did).

    python tools/compact_latency.py                                   # the default set at native sizes
    python tools/compact_latency.py --models resnet20,mobilenet_v1 --size 160 --round-to 1,8,auto

``tv:NAME`` rows are torchvision models (random weights, BatchNorm statistics made trained-looking so
the exporter folds them; segmentation models give their ``out`` map), exported at ``--size`` (224 by
default) — torchvision installs only with the CUDA build of torch, so run those from a tools-only
virtualenv (``pip install torch torchvision`` there, then ``pip install --no-deps -e .``). For every
row the tool also checks that the PyTorch model's parameter count as the plan counts it
(``onnxmbs.adapters.folded_params``) equals the count of its ONNX export (``params ok``).

    python tools/compact_latency.py --models tv:convnext_tiny,tv:lraspp_mobilenet_v3_large,tv:fcn_resnet50
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from onnxmbs.compact.check import median_latencies
from onnxmbs.compact.writer import compact_model
from onnxmbs.errors import MBSError
from onnxmbs.stats.measure import CalibrationOptions
from onnxmbs.workflow import sequence
from onnxmbs.zoo import ZOO, export

DEFAULT = "resnet20,resnet18,mobilenet_v1,mobilenet_v2,shufflenet_v1_g3,densenet121"


def roundings(text: str) -> list[int | str]:
    return [r if r == "auto" else int(r) for r in (p.strip().lower() for p in text.split(",")) if r]


def torchvision_model(name: str):
    """A torchvision model with random weights and trained-looking BatchNorm statistics (outputs: a tensor)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    segmentation = set(torchvision.models.list_models(module=torchvision.models.segmentation))
    extra = {"weights_backbone": None} if name in segmentation else {}  # offline: no pretrained backbone
    net = torchvision.models.get_model(name, weights=None, **extra)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)

    class Out(torch.nn.Module):  # segmentation models return {"out": ..., "aux": ...}
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            y = self.inner(x)
            return y["out"] if isinstance(y, dict) else y

    return Out(net).eval()


def export_row(name: str, workdir: Path, size: int) -> tuple[Path, int | None]:
    """The exported model, and the PyTorch model's parameters as the plan counts them (folded_params)."""
    import torch

    from onnxmbs.adapters import folded_params
    from onnxmbs.zoo import build
    from onnxmbs.zoo.export import export_torch

    if name.startswith("tv:"):
        net = torchvision_model(name[3:])
        path = export_torch(net, (3, size, size), workdir / f"{name[3:]}.onnx", dynamo=False)
    else:
        net = build(name).eval() if ZOO[name].framework == "torch" else None
        path = export(name, workdir / f"{name}.onnx", input_size=size, dynamo=False)
    return path, None if net is None else folded_params(net, torch.zeros(1, 3, size, size))


def measure(name: str, workdir: Path, args: argparse.Namespace) -> list[dict]:
    size = args.size or (224 if name.startswith("tv:") else ZOO[name].input_size)
    start = time.perf_counter()
    model, torch_params = export_row(name, workdir, size)
    calibration = CalibrationOptions(synthetic=args.images, preprocess="raw", batch_size=args.images, progress=False)
    done = sequence.study(model, sequence.Request(calibration=calibration, ks=(args.k,)))
    plans = {r: replace(done, round_to=r).plan(args.k).document for r in args.round_to}
    onnx_params = next(iter(plans.values())).summary.params
    params_ok = torch_params is None or torch_params == onnx_params
    if not params_ok:
        print(f"{name}: folded_params {torch_params:,} != ONNX count {onnx_params:,}", file=sys.stderr)
    built = {r: compact_model(model, doc, force=True) for r, doc in plans.items()}
    loaded = done.analysis.loaded
    times = median_latencies([loaded.model.SerializeToString(), *(b.model.SerializeToString() for b in built.values())],
                             loaded.input, batch=1, repeats=args.repeats, threads=args.threads)
    original_ms, *compact_ms = times
    seconds = time.perf_counter() - start
    return [{"model": name, "size": size, "round_to": str(r), "chosen": plans[r].settings.round_to,
             "params": b.params, "params_compact": b.params_compact, "flops": b.flops, "flops_compact": b.flops_compact,
             "ms": original_ms, "ms_compact": ms, "speedup": original_ms / ms, "seconds": seconds,
             "params_ok": params_ok}
            for (r, b), ms in zip(built.items(), compact_ms)]


def table(rows: list[dict]) -> str:
    head = (f"{'model':<30} {'px':>4} {'round-to':>9} {'params':>11} {'compact':>11} {'MACs ratio':>10} "
            f"{'ms':>8} {'ms cmp':>8} {'speed-up':>8} {'vs MACs':>8} {'params':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        macs = r["flops_compact"] / r["flops"]
        rounding = r["round_to"] if r["round_to"] != "auto" else f"auto={r['chosen']}"
        lines.append(
            f"{r['model']:<30} {r['size']:>4} {rounding:>9} {r['params']:>11,} {r['params_compact']:>11,} "
            f"{macs:>10.3f} {r['ms']:>8.2f} {r['ms_compact']:>8.2f} {r['speedup']:>8.2f} {r['speedup'] * macs:>8.2f} "
            f"{'ok' if r['params_ok'] else 'DIFFER':>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT, help=f"comma-separated zoo names (default {DEFAULT})")
    parser.add_argument("--size", type=int, default=None, help="input size (default: each model's own)")
    parser.add_argument("--images", type=int, default=8, help="synthetic calibration images")
    parser.add_argument("--k", type=float, default=1.0, help="threshold z = k·L")
    parser.add_argument("--round-to", type=roundings, default=roundings("1,8,auto"),
                        help="roundings to compare, e.g. 1,8,auto (default)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per model (median)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="onnxmbs-latency-") as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            try:
                rows += measure(name, Path(tmp), args)
            except MBSError as exc:
                print(f"{name}: error: {exc}", file=sys.stderr)
                continue
            print(f"{name}: done in {rows[-1]['seconds']:.1f} s", file=sys.stderr)
    print(table(rows))
    print(f"\nonnxruntime CPU, batch 1, {args.threads} thread(s), median of {args.repeats}, original and every "
          f"compact model timed in one run; plans from {args.images} synthetic images, k={args.k}; "
          "'vs MACs': speed-up x MACs ratio (1.0 = latency fell as much as the MACs)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
