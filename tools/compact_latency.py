"""Honest numbers for `onnxmbs compact`: parameters, file size and onnxruntime CPU latency,
original vs compact, for a few zoo models.

For each model: export it (TorchScript exporter, dynamic batch), plan it on N images of
synthetic noise (random-initialised nets, so the widths are illustrative, not the paper's),
write the compact model with inherited weights, and time both in onnxruntime's CPU provider
(same batch, one warm-up run, then alternating runs, median).

    python tools/compact_latency.py                       # the default set at native sizes
    python tools/compact_latency.py --models resnet20,mobilenet_v1 --size 160 --round-to 8
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from onnxmbs.compact.writer import write_compact
from onnxmbs.errors import MBSError
from onnxmbs.workflow.plan import plan_model
from onnxmbs.zoo import ZOO, export

DEFAULT = "resnet20,resnet18,mobilenet_v1,mobilenet_v2,shufflenet_v1_g3,densenet121"


def measure(name: str, workdir: Path, args: argparse.Namespace) -> dict:
    size = args.size or ZOO[name].input_size
    start = time.perf_counter()
    model = export(name, workdir / f"{name}.onnx", input_size=size, dynamo=False)
    plan = plan_model(model, synthetic=args.images, preprocess="raw", k=args.k, round_to=args.round_to,
                      batch_size=args.images, progress=False).document.to_json()
    result = write_compact(model, plan, workdir / f"{name}.compact.onnx", latency_repeats=args.repeats,
                           threads=args.threads)
    lat = result.latency
    return {
        "model": name, "size": size, "params": result.params, "params_predicted": result.params_predicted,
        "params_compact": result.params_compact, "flops": result.flops, "flops_compact": result.flops_compact,
        "bytes": result.bytes_original, "bytes_compact": result.bytes_compact,
        "ms": lat.original_ms, "ms_compact": lat.compact_ms, "speedup": lat.speedup,
        "inexact": len(result.inexact), "seconds": time.perf_counter() - start,
    }


def table(rows: list[dict]) -> str:
    head = (f"{'model':<17} {'px':>4} {'params':>11} {'compact':>11} {'ratio':>6} {'MACs ratio':>10} "
            f"{'MB':>7} {'MB cmp':>7} {'ms':>8} {'ms cmp':>8} {'speedup':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['model']:<17} {r['size']:>4} {r['params']:>11,} {r['params_compact']:>11,} "
            f"{r['params_compact'] / r['params']:>6.3f} {r['flops_compact'] / r['flops']:>10.3f} "
            f"{r['bytes'] / 1e6:>7.2f} {r['bytes_compact'] / 1e6:>7.2f} {r['ms']:>8.2f} {r['ms_compact']:>8.2f} "
            f"{r['speedup']:>7.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT, help=f"comma-separated zoo names (default {DEFAULT})")
    parser.add_argument("--size", type=int, default=None, help="input size (default: each model's own)")
    parser.add_argument("--images", type=int, default=8, help="synthetic calibration images")
    parser.add_argument("--k", type=float, default=1.0, help="threshold z = k·L")
    parser.add_argument("--round-to", type=int, default=1, help="round compact widths to a multiple of N")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per model (median)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxmbs-latency-") as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            try:
                rows.append(measure(name, Path(tmp), args))
            except MBSError as exc:
                print(f"{name}: error: {exc}", file=sys.stderr)
                continue
            print(f"{name}: done in {rows[-1]['seconds']:.1f} s", file=sys.stderr)
    print(table(rows))
    print(f"\nonnxruntime CPU, batch 1, {args.threads} thread(s), median of {args.repeats}; "
          f"plans from {args.images} synthetic images, k={args.k}, round-to {args.round_to}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
