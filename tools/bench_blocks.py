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
  best block, reloading and evaluating the new model).

Measurements alternate (plain, scoring, round) for --repeats times; medians are compared.
Prints the ratios ``scoring / (blocks x plain)`` and ``round / (blocks x plain)``.

    python tools/bench_blocks.py                      # 256 images, batch 64
    python tools/bench_blocks.py --images 512 --threads 2
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
from onnxmbs.stats.counting import make_session  # noqa: E402
from onnxmbs.stats.labelled import open_labelled  # noqa: E402


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
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
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

    def plain_pass() -> float:
        start = time.perf_counter()
        for i in range(0, len(x), args.batch):
            plain.run(None, {"input": x[i:i + args.batch]})
        return time.perf_counter() - start

    def scoring() -> float:
        start = time.perf_counter()
        score_blocks(model, "input", cands, data, batch_size=args.batch, threads=args.threads, progress=False)
        return time.perf_counter() - start

    def greedy_round() -> float:
        start = time.perf_counter()
        prune_blocks(loaded, data, stop=Stop(remove=1), batch_size=args.batch, threads=args.threads)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"plain": [], "scoring": [], "round": []}
    for _ in range(args.repeats):
        times["plain"].append(plain_pass())
        times["scoring"].append(scoring())
        times["round"].append(greedy_round())
    med = {k: statistics.median(v) for k, v in times.items()}
    naive = len(cands) * med["plain"]
    print(f"{args.model}: {len(blocks)} residual joins, {len(cands)} removable; {args.images} images, "
          f"batch {args.batch}, threads {args.threads or 'all'}, median of {args.repeats}")
    print("| measure | seconds | ratio to blocks x plain |")
    print("|---|---|---|")
    print(f"| plain inference of the data | {med['plain']:.3f} | — |")
    print(f"| {len(cands)} x plain (naive round) | {naive:.2f} | 1.00 |")
    print(f"| scoring round (prefix once + suffixes) | {med['scoring']:.2f} | {med['scoring'] / naive:.2f} |")
    print(f"| whole greedy round (score, remove, re-evaluate) | {med['round']:.2f} | {med['round'] / naive:.2f} |")


if __name__ == "__main__":
    main()
