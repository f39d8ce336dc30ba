#!/usr/bin/env python3
"""Statistics-pass throughput as a ratio to plain onnxruntime inference, measured in one run.

For each model (ResNet-50-sized and MobileNetV2-sized at 224x224 by default, exported from the
zoo once into artifacts/bench/), three sessions on the same provider, batch and threads:

* plain   — the model as exported, all outputs;
* naive   — the first tap we tried: Greater -> Cast -> ReduceSum per activation;
* onnxmbs — the counting graph onnxmbs uses (see onnxmbs/stats/counting.py);
* read-only (with --bound) — GlobalAveragePool straight on each tapped tensor: not a count, but the
  cheapest pass any tap made of graph ops can be, so the ceiling for the ratio.

Throughput is measured in steady state, as the statistics pass runs: each session does
consecutive runs for --seconds (after one untimed run), and sessions take turns block by block for
--rounds rounds, with a short pause between blocks; the median block is used. (Timing single runs
interleaved across sessions is wrong on a small machine: onnxruntime's worker threads spin for
a while after a run and slow down whichever session runs next.) Each instrumented run includes
turning the runtime's output into integer counts, as the real pass does. Prints a Markdown table.

    python tools/bench_statistics.py                 # both models, batch 1 and 8
    python tools/bench_statistics.py --batch 4 --rounds 9 --models resnet50
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics as pystats
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxmbs import MBSError, analyze  # noqa: E402
from onnxmbs.runtime.session import choose_provider, make_session  # noqa: E402
from onnxmbs.stats.counting import instrument  # noqa: E402


def model_path(name: str, framework: str, cache: Path) -> Path:
    path = cache / f"{name}_{framework}_224.onnx"
    if not path.exists():
        from onnxmbs.zoo import export
        print(f"exporting {name} ({framework}) to {path} ...", file=sys.stderr)
        export(name, path, framework=framework, input_size=224)
    return path


def read_only(counting):
    """The counting graph without its indicator: GlobalAveragePool straight on each tapped tensor.

    Not a count (it averages the values), but it reads every tapped tensor exactly once, in place:
    the cheapest thing any tap built from graph ops can do, i.e. an upper bound for the ratio."""
    model = copy.deepcopy(counting.model)
    source = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "HardSigmoid"}
    kept = [n for n in model.graph.node if n.output[0] not in source]
    for node in kept:
        node.input[:] = [source.get(i, i) for i in node.input]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return dataclasses.replace(counting, model=model)


def sessions(analysis, provider: str, threads: int | None, *, bound: bool = False) -> dict:
    plain = copy.deepcopy(analysis.loaded.model)
    if analysis.loaded.batch_dynamic:
        plain.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    runs = {"plain": (make_session(plain, provider, threads=threads), None)}
    for method, label in (("naive", "naive"), ("nchwc", "onnxmbs")):
        counting = instrument(analysis, method=method)
        runs[label] = (make_session(counting.model, provider, threads=threads, flush_denormals=True), counting)
    if bound:
        bare = read_only(counting)
        runs["read-only"] = (make_session(bare.model, provider, threads=threads, flush_denormals=True), bare)
    return runs


def step(run, name: str, x: np.ndarray) -> None:
    sess, counting = run
    if counting is None:
        sess.run(None, {name: x})
    else:
        (result,) = sess.run([counting.output], {name: x})
        counting.counts(result)


def block(run, name: str, x: np.ndarray, seconds: float) -> float:
    """Seconds per run over consecutive runs lasting at least ``seconds``, after a pause and one untimed run."""
    time.sleep(0.2)
    step(run, name, x)
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or runs < 2:
        step(run, name, x)
        runs += 1
    return elapsed / runs


def bench(path: Path, batch: int, args: argparse.Namespace, provider: str) -> dict[str, float]:
    analysis = analyze(path)
    name = analysis.loaded.input.name
    x = np.random.default_rng(0).standard_normal((batch, *analysis.loaded.input.shape[1:])).astype(np.float32)
    runs = sessions(analysis, provider, args.threads, bound=args.bound)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.rounds):
        for k in runs:
            times[k].append(block(runs[k], name, x, args.seconds))
    return {k: pystats.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50,mobilenet_v2")
    ap.add_argument("--framework", default="torch", choices=["torch", "keras"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=7, help="blocks per session (median is used)")
    ap.add_argument("--seconds", type=float, default=1.0, help="length of a block of consecutive runs")
    ap.add_argument("--provider", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads for every session (default: all)")
    ap.add_argument("--cache", type=Path, default=ROOT / "artifacts" / "bench")
    ap.add_argument("--bound", action="store_true",
                    help="also time a read-only pass (GlobalAveragePool on each tapped tensor, no indicator): "
                         "the best ratio any graph-level tap can reach")
    args = ap.parse_args()
    provider = choose_provider(args.provider)
    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"provider {provider}, {args.threads or 'default'} threads; median of {args.rounds} blocks "
          f"of >= {args.seconds:g} s of consecutive runs per session\n")
    extra = " read-only bound |" if args.bound else ""
    print("| model | batch | plain img/s | naive tap ratio | onnxmbs tap ratio |" + extra)
    print("|---|---|---|---|---|" + ("---|" if args.bound else ""))
    for model in args.models.split(","):
        path = model_path(model, args.framework, args.cache)
        for batch in args.batch:
            t = bench(path, batch, args, provider)
            ratios = [f"{t['plain'] / t[k]:.2f}x" for k in t if k != "plain"]
            print(f"| {model} ({args.framework}) | {batch} | {batch / t['plain']:.1f} | {' | '.join(ratios)} |",
                  flush=True)


if __name__ == "__main__":
    try:
        main()
    except MBSError as exc:
        sys.exit(f"error: {exc}")
