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


def measure(name: str, workdir: Path, args: argparse.Namespace) -> list[dict]:
    size = args.size or ZOO[name].input_size
    start = time.perf_counter()
    model = export(name, workdir / f"{name}.onnx", input_size=size, dynamo=False)
    calibration = CalibrationOptions(synthetic=args.images, preprocess="raw", batch_size=args.images, progress=False)
    done = sequence.study(model, sequence.Request(calibration=calibration, ks=(args.k,)))
    plans = {r: replace(done, round_to=r).plan(args.k).document for r in args.round_to}
    built = {r: compact_model(model, doc, force=True) for r, doc in plans.items()}
    loaded = done.analysis.loaded
    times = median_latencies([loaded.model.SerializeToString(), *(b.model.SerializeToString() for b in built.values())],
                             loaded.input, batch=1, repeats=args.repeats, threads=args.threads)
    original_ms, *compact_ms = times
    seconds = time.perf_counter() - start
    return [{"model": name, "size": size, "round_to": str(r), "chosen": plans[r].settings.round_to,
             "params": b.params, "params_compact": b.params_compact, "flops": b.flops, "flops_compact": b.flops_compact,
             "ms": original_ms, "ms_compact": ms, "speedup": original_ms / ms, "seconds": seconds}
            for (r, b), ms in zip(built.items(), compact_ms)]


def table(rows: list[dict]) -> str:
    head = (f"{'model':<17} {'px':>4} {'round-to':>9} {'params':>11} {'compact':>11} {'MACs ratio':>10} "
            f"{'ms':>8} {'ms cmp':>8} {'speed-up':>8} {'vs MACs':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        macs = r["flops_compact"] / r["flops"]
        rounding = r["round_to"] if r["round_to"] != "auto" else f"auto={r['chosen']}"
        lines.append(
            f"{r['model']:<17} {r['size']:>4} {rounding:>9} {r['params']:>11,} {r['params_compact']:>11,} "
            f"{macs:>10.3f} {r['ms']:>8.2f} {r['ms_compact']:>8.2f} {r['speedup']:>8.2f} {r['speedup'] * macs:>8.2f}")
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
