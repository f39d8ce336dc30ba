"""Benchmark: how long `onnxmbs --help` takes, against Python + click alone, measured in one run.

    python tools/bench_startup.py [--runs 10]

Runs both commands interleaved in fresh interpreters and prints the medians and their ratio, and
which heavy modules `--help` imported (it should import none).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("numpy", "onnx", "onnxruntime", "PIL", "torch", "tensorflow")
COMMANDS = {"onnxmbs --help": [sys.executable, "-m", "onnxmbs", "--help"],
            "python + click": [sys.executable, "-c", "import click"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.runs):
        for name, cmd in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) * 1000 for name, values in times.items()}
    for name, ms in medians.items():
        print(f"{name:16s} median {ms:6.0f} ms over {args.runs} runs")
    print(f"ratio onnxmbs --help / python + click: x{medians['onnxmbs --help'] / medians['python + click']:.2f}")
    probe = ("import sys; sys.argv = ['onnxmbs', '--help']\nfrom onnxmbs.cli import main\ntry:\n    main()\n"
             f"except SystemExit:\n    pass\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    heavy = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    print(f"heavy modules imported by --help: {heavy.stdout.strip().splitlines()[-1]}")


if __name__ == "__main__":
    main()
