#!/usr/bin/env python3
"""Block-pruning scoring speed: seconds per round vs ``blocks x`` plain inference of the whole data.

One round of direct scoring must measure the accuracy of the model without each removable block.
Done naively that is one whole-model pass over the data per block. onnxmbs runs the shared prefix
once per batch and only each block's suffix (see onnxmbs/blocks/scoring.py). This script measures,
in the same run, on the zoo's CIFAR ResNet-56 (27 residual joins, 25 removable) and the same
in-memory data:

* plain   — one onnxruntime pass of the whole model over the data (session made beforehand);
* scoring — one round of :func:`onnxmbs.blocks.scoring.score_blocks` over every removable block,
  sub-model building and session creation included;
* round   — one whole greedy round as ``onnxmbs blocks`` runs it (discovery, scoring, removing the
  best block, reloading and evaluating the new model), as :func:`prune_blocks` times it.

Measurements alternate (plain, scoring, round) for --repeats times; medians are compared. Both
wall time and this process's CPU time are taken: on a shared machine other processes stretch wall
time unevenly, CPU time much less (with one onnxruntime thread, the default here, nothing spins).
Prints the ratios ``scoring / (blocks x plain)`` and ``round / (blocks x plain)``.

    python tools/bench_blocks.py                      # 1024 images, batch 128, 1 thread
    python tools/bench_blocks.py --images 1024 --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxmbs.blocks.discover import find_blocks  # noqa: E402
from onnxmbs.blocks.greedy import Stop, prune_blocks  # noqa: E402
from onnxmbs.blocks.scoring import score_blocks  # noqa: E402
from onnxmbs.graph.load import load_model  # noqa: E402
from onnxmbs.stats.accuracy import runnable  # noqa: E402
from onnxmbs.runtime.session import make_session  # noqa: E402
from onnxmbs.data.labelled import open_labelled  # noqa: E402


def model_path(name: str, cache: Path) -> Path:
    path = cache / f"{name}_torch_32.onnx"
    if not path.exists():
        from onnxmbs.zoo import export
        print(f"exporting {name} to {path} ...", file=sys.stderr)
        export(name, path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=ROOT / "artifacts" / "bench")
    args = ap.parse_args()
    path = model_path(args.model, args.cache)
    loaded = load_model(path)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.images, *loaded.input.shape[1:])).astype(np.float32)
    data = open_labelled((x, rng.integers(0, 10, args.images)), shape=loaded.input.shape, layout="NCHW")
    blocks = find_blocks(loaded)
    cands = [b for b in blocks if b.removable]
    model = runnable(loaded)
    plain = make_session(model, "CPUExecutionProvider", threads=args.threads)
    plain.run(None, {"input": x[:args.batch]})

    def timed(fn) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - wall, time.process_time() - cpu

    def plain_pass() -> None:
        for i in range(0, len(x), args.batch):
            plain.run(None, {"input": x[i:i + args.batch]})

    def scoring() -> None:
        score_blocks(model, "input", cands, data, batch_size=args.batch, threads=args.threads, progress=False)

    def greedy_round() -> tuple[float, float]:
        result = prune_blocks(loaded, data, stop=Stop(remove=1), batch_size=args.batch, threads=args.threads)
        return result.seconds_per_round[0], result.cpu_seconds_per_round[0]

    times: dict[str, list[tuple[float, float]]] = {"plain": [], "scoring": [], "round": []}
    for _ in range(args.repeats):
        for name, fn in (("plain", plain_pass), ("scoring", scoring), ("plain", plain_pass)):
            times[name].append(timed(fn))
        times["round"].append(greedy_round())
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}
    naive = (len(cands) * med["plain"][0], len(cands) * med["plain"][1])
    print(f"{args.model}: {len(blocks)} residual joins, {len(cands)} removable; {args.images} images, "
          f"batch {args.batch}, threads {args.threads}, median of {args.repeats}")
    print("| measure | wall s | CPU s | ratio (wall) | ratio (CPU) |")
    print("|---|---|---|---|---|")
    print(f"| plain inference of the data | {med['plain'][0]:.2f} | {med['plain'][1]:.2f} | — | — |")
    print(f"| {len(cands)} x plain (naive round) | {naive[0]:.1f} | {naive[1]:.1f} | 1.00 | 1.00 |")
    for key, label in (("scoring", "scoring round (prefix once + suffixes)"),
                       ("round", "whole greedy round (score, remove, re-evaluate)")):
        print(f"| {label} | {med[key][0]:.1f} | {med[key][1]:.1f} | {med[key][0] / naive[0]:.2f} | "
              f"{med[key][1] / naive[1]:.2f} |")

if __name__ == "__main__":
    main()
