#!/usr/bin/env python3
"""Statistics-pass throughput as a ratio to plain onnxruntime inference, measured in one run.

For each model (ResNet-50-sized and MobileNetV2-sized at 224x224 by default, exported from the
zoo once into artifacts/bench/), three sessions on the same provider and batch:

* plain   — the model as exported, all outputs;
* naive   — the first tap we tried: Greater -> Cast -> ReduceSum per activation;
* onnxmbs — the counting subgraph onnxmbs uses (see onnxmbs/statistics.py).

Rounds are interleaved (plain, naive, onnxmbs, plain, ...) and the median per batch is used, so
load from other processes hits all three alike. Each instrumented step includes turning the
runtime's output into integer counts, as the real pass does. Prints a Markdown table.

    python tools/bench_statistics.py                 # both models, batch 1 and 8
    python tools/bench_statistics.py --batch 4 --rounds 20 --models resnet50
"""
from __future__ import annotations

import argparse
import copy
import statistics as pystats
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxmbs import analyze  # noqa: E402
from onnxmbs.statistics import _to_counts, choose_provider, instrument, make_session  # noqa: E402


def model_path(name: str, framework: str, cache: Path) -> Path:
    path = cache / f"{name}_{framework}_224.onnx"
    if not path.exists():
        from onnxmbs.zoo import export
        print(f"exporting {name} ({framework}) to {path} ...", file=sys.stderr)
        export(name, path, framework=framework, input_size=224)
    return path


def sessions(analysis, provider: str, threads: int | None) -> dict:
    plain = copy.deepcopy(analysis.loaded.model)
    if analysis.loaded.batch_dynamic:
        plain.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    runs = {"plain": (make_session(plain, provider, threads=threads), None, None)}
    for method, label in (("naive", "naive"), ("nchwc", "onnxmbs")):
        model, outputs = instrument(analysis, method=method)
        flush = method == "nchwc"
        per_image = {t: int(np.prod(analysis.loaded.shapes[t])) // (
            analysis.loaded.shapes[t][0] * analysis.loaded.shapes[t][tap.channel_axis])
            for tap in analysis.taps.values() if tap for t in [tap.tensor]}
        runs[label] = (make_session(model, provider, threads=threads, flush_denormals=flush), outputs,
                       (method, per_image))
    return runs


def step(run, name: str, x: np.ndarray) -> float:
    sess, outputs, extra = run
    start = time.perf_counter()
    if outputs is None:
        sess.run(None, {name: x})
    else:
        method, per_image = extra
        results = sess.run(list(outputs.values()), {name: x})
        for tensor, res in zip(outputs, results):
            _to_counts(res, per_image[tensor], method)
    return time.perf_counter() - start


def bench(path: Path, batch: int, rounds: int, provider: str, threads: int | None) -> dict[str, float]:
    analysis = analyze(path)
    name = analysis.loaded.input.name
    x = np.random.default_rng(0).standard_normal((batch, *analysis.loaded.input.shape[1:])).astype(np.float32)
    runs = sessions(analysis, provider, threads)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for k in runs:  # warm-up
        step(runs[k], name, x)
    for _ in range(rounds):
        for k in runs:
            times[k].append(step(runs[k], name, x))
    return {k: pystats.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50,mobilenet_v2")
    ap.add_argument("--framework", default="torch", choices=["torch", "keras"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--provider", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads for every session (default: all)")
    ap.add_argument("--cache", type=Path, default=ROOT / "artifacts" / "bench")
    args = ap.parse_args()
    provider = choose_provider(args.provider)
    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"provider {provider}, {args.threads or 'default'} threads; median of {args.rounds} interleaved rounds\n")
    print("| model | batch | plain img/s | naive tap ratio | onnxmbs tap ratio |")
    print("|---|---|---|---|---|")
    for model in args.models.split(","):
        path = model_path(model, args.framework, args.cache)
        for batch in args.batch:
            t = bench(path, batch, args.rounds, provider, args.threads)
            print(f"| {model} ({args.framework}) | {batch} | {batch / t['plain']:.1f} | "
                  f"{t['plain'] / t['naive']:.2f}x | {t['plain'] / t['onnxmbs']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
