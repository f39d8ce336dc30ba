#!/usr/bin/env python3
"""Statistics at scale, measured in one run: --until-converged vs the full pass, and the Ray path's overhead.

The zoo ResNet-56 (random weights, 32x32 RGB) over N images (default 50,000) made
deterministically from scikit-learn's 1,797 digits: each image is one digit (cycled), scaled to
a random size of 14-30 px, put at a random place on a 32x32 canvas, tinted per channel and
noised. They are generated chunk by chunk into a uint8 .npy memory map in a temporary folder
(150 MB for 50k), never held in memory as floats. Then, on this machine, one after the other:

1. the full pass (single process) and its plan;
2. the pass with --until-converged (default tolerance 0.5 / C_max), and its plan: images used,
   wall-time ratio, and whether the compact widths are identical to the full pass's (they must be);
3. --workers 1 on a local Ray (started once; the start-up is timed apart) against the plain pass,
   over the first --ray-images images in --ray-rounds alternating rounds (median ratio): the overhead
   of the Ray path, with both runs exposed to the same drift of a shared machine's load.

Prints a Markdown table. Figures for more workers than this machine has cores are an ESTIMATE,
labelled as such, from the measured single-worker throughput and Ray efficiency.

    python tools/bench_scale.py                     # 50,000 images
    python tools/bench_scale.py --images 10000      # quicker
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxmbs.graph.analysis import analyze  # noqa: E402
from onnxmbs.planning.convergence import ConvergeOptions, default_tolerance  # noqa: E402
from onnxmbs.planning.pipeline import plan_from_statistics  # noqa: E402
from onnxmbs.stats.measure import CalibrationOptions, measure_source  # noqa: E402

CHUNK = 2000


def make_digits(path: Path, count: int, *, seed: int = 0) -> Path:
    """``count`` 32x32x3 uint8 images from the sklearn digits, written chunk by chunk to a .npy memmap."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = (load_digits().images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, 32, 32, 3))
    for start in range(0, count, CHUNK):
        rng = np.random.default_rng([seed, start])
        stop = min(start + CHUNK, count)
        block = np.zeros((stop - start, 32, 32, 3), np.float32)
        for j, i in enumerate(range(start, stop)):
            size = int(rng.integers(14, 31))
            img = np.asarray(Image.fromarray(digits[i % len(digits)]).resize((size, size), Image.BILINEAR), np.float32)
            top, left = rng.integers(0, 32 - size + 1, 2)
            block[j, top:top + size, left:left + size, :] = img[..., None] * rng.uniform(0.5, 1.0, 3)
        block += rng.normal(0, 12, block.shape)
        out[start:stop] = np.clip(block, 0, 255).astype(np.uint8)
    out.flush()
    del out
    return path


def export_model(path: Path) -> Path:
    """The zoo ResNet-56, seeded; the exporter's onnxruntime check (rtol 1e-3) can miss by a hair on a
    deep random-weight net, so try the next seed then (the model is random anyway)."""
    import torch

    from onnxmbs.errors import MBSError
    from onnxmbs.zoo import export

    for seed in range(5):
        torch.manual_seed(seed)
        try:
            return export("resnet56", path, input_size=32)
        except MBSError as exc:
            print(f"export with seed {seed} refused ({exc}); next seed", file=sys.stderr)
    raise SystemExit("could not export ResNet-56")


def widths(analysis, stats) -> list[int]:
    return [l.compact_out_channels for l in plan_from_statistics(analysis, stats).document.layers]


def timed(analysis, options, monitor=None):
    start = time.perf_counter()
    measured = measure_source(analysis, options, monitor=monitor)
    return measured, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--checkpoint", type=int, default=256)
    ap.add_argument("--skip-ray", action="store_true", help="Only compare the full pass with --until-converged.")
    ap.add_argument("--ray-rounds", type=int, default=4, help="alternating rounds of plain vs --workers 1")
    ap.add_argument("--ray-images", type=int, default=5000, help="images per run in those rounds")
    args = ap.parse_args()
    from onnxmbs.planning.convergence import monitor_for

    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        export_model(tmp / "r56.onnx")
        data = make_digits(tmp / "digits.npy", args.images)
        print(f"set-up (export + {args.images} images) {time.perf_counter() - t:.1f}s", file=sys.stderr)
        analysis = analyze(tmp / "r56.onnx")
        common = CalibrationOptions(data=str(data), preprocess="raw", batch_size=args.batch_size, progress=False)

        full, t_full = timed(analysis, common)
        print(f"full pass: {full.statistics.images} images in {t_full:.1f}s", file=sys.stderr)
        monitor = monitor_for(ConvergeOptions(checkpoint=args.checkpoint), analysis)
        conv, t_conv = timed(analysis, common, monitor)
        same = widths(analysis, full.statistics) == widths(analysis, conv.statistics)
        c = conv.convergence
        rows = [("full pass, 1 process", f"{full.statistics.images:,}", f"{t_full:.1f}",
                 f"{full.statistics.images / t_full:.0f}", "1.00x", ""),
                ("--until-converged, 1 process", f"{c.images:,} ({'converged' if c.converged else 'NOT converged'})",
                 f"{t_conv:.1f}", f"{c.images / t_conv:.0f}", f"{t_conv / t_full:.3f}x",
                 f"widths identical: {'yes' if same else 'NO'}")]
        if not args.skip_ray:
            rows += ray_rows(analysis, common, args.ray_rounds, min(args.ray_images, args.images))
    tol = c.tolerance
    print(f"\nResNet-56 (zoo, random weights) at 32x32, {args.images:,} digit-derived images, batch "
          f"{args.batch_size}, {os.cpu_count()} CPU cores; tolerance 0.5/C_max = {tol:.5f} (C_max = "
          f"{round(0.5 / default_tolerance(analysis))}), checkpoint every {args.checkpoint} images\n")
    print("| run | images | wall s | img/s | time vs full pass | note |\n|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def ray_rows(analysis, common, rounds: int, images: int) -> list[tuple]:
    """--workers 1 vs the plain pass over the first ``images`` images, in alternating rounds (a shared
    machine's load drifts over minutes; alternating exposes both runs to the same drift)."""
    import ray

    t = time.perf_counter()
    ray.init(num_cpus=max(os.cpu_count() or 1, 1), include_dashboard=False, logging_level="WARNING")
    t_start = time.perf_counter() - t
    plain_s, ray_s, exact = [], [], True
    part = replace(common, max_images=images)
    try:
        for _ in range(rounds):
            plain, t_plain = timed(analysis, part)
            one, t_one = timed(analysis, replace(part, workers=1))
            plain_s.append(t_plain)
            ray_s.append(t_one)
            exact &= all(np.array_equal(one.statistics.taps[n].nonzero, plain.statistics.taps[n].nonzero)
                         for n in plain.statistics.taps)
    finally:
        ray.shutdown()
    ratios = sorted(p / r for p, r in zip(plain_s, ray_s))
    rate = images / float(np.median(ray_s))
    cores = os.cpu_count() or 1
    rows = [(f"--workers 1 (local Ray) vs 1 process, {rounds} alternating rounds", f"{images:,} per run",
             f"{np.median(ray_s):.1f} vs {np.median(plain_s):.1f}", f"{rate:.0f}",
             f"{float(np.median(ratios)):.3f}x throughput (rounds {', '.join(f'{r:.3f}' for r in ratios)})",
             f"counts equal: {'yes' if exact else 'NO'}; Ray start {t_start:.1f}s not included")]
    for n in (4, 16):
        rows.append((f"ESTIMATE: --workers {n} on {n} machines like this", "50,000", f"~{50_000 / (rate * n):.0f}",
                     f"~{rate * n:.0f}", "", f"estimate, not measured ({cores} cores here): n x the 1-worker "
                                            "rate, ignoring the driver and data reads"))
    return rows


if __name__ == "__main__":
    main()
