"""What onnxmbs does with common CNN architectures and layer patterns: analyze → plan → compact → apply_plan.

Exports a set of models — the project's own zoo (PyTorch and Keras) and small nets built here from
the layer patterns real models use (Ghost modules, squeeze-and-excitation, SiLU / GELU / HardSwish /
LeakyReLU / PReLU activations, LayerNorm + pointwise Linear blocks, an external-data file, a model
with a dynamic input size) — and runs every stage on each, with random weights and noise or random
calibration arrays. Each stage is "ok", "refused" (a clean MBSError: what and why) or "CRASH" (a
bug). Prints a Markdown table.

    PYTHONPATH=. python tools/model_matrix.py                # everything (a few minutes on 2 cores)
    PYTHONPATH=. python tools/model_matrix.py --only ghost,se_silu --json matrix.json
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxmbs.errors import MBSError

K = 0.1  # a low threshold, so that most macroblocks are narrowed and every resize rule is exercised


# ---------------------------------------------------------------- layer patterns (PyTorch)
def _nets():
    import torch
    from torch import nn

    def conv_bn(cin, cout, k=1, stride=1, groups=1, act=nn.ReLU):
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                             *([act()] if act else []))

    class Ghost(nn.Module):  # timm GhostModule, ratio 2
        def __init__(self, cin, cout, act=nn.ReLU):
            super().__init__()
            self.out = cout
            self.primary = conv_bn(cin, cout // 2, act=act)
            self.cheap = conv_bn(cout // 2, cout // 2, 3, groups=cout // 2, act=act)

        def forward(self, x):
            x1 = self.primary(x)
            return torch.cat([x1, self.cheap(x1)], 1)[:, :self.out]

    class GhostBlock(nn.Module):
        def __init__(self, c, mid):
            super().__init__()
            self.g1, self.g2 = Ghost(c, mid), Ghost(mid, c, act=None)

        def forward(self, x):
            return self.g2(self.g1(x)) + x

    class SE(nn.Module):
        def __init__(self, c, r=4, gate=nn.Sigmoid, act=nn.ReLU):
            super().__init__()
            self.reduce, self.act = nn.Conv2d(c, c // r, 1), act()
            self.expand, self.gate = nn.Conv2d(c // r, c, 1), gate()

        def forward(self, x):
            s = nn.functional.adaptive_avg_pool2d(x, 1)
            return x * self.gate(self.expand(self.act(self.reduce(s))))

    class MBConv(nn.Module):  # EfficientNet / MobileNetV3 inverted residual with SE
        def __init__(self, c, expand, act, gate):
            super().__init__()
            self.body = nn.Sequential(conv_bn(c, c * expand, act=act), conv_bn(c * expand, c * expand, 3,
                                      groups=c * expand, act=act), SE(c * expand, gate=gate, act=act),
                                      conv_bn(c * expand, c, act=None))

        def forward(self, x):
            return x + self.body(x)

    class ConvNeXtBlock(nn.Module):  # depthwise 7x7, LayerNorm and pointwise Linear layers channels-last, GELU
        def __init__(self, c):
            super().__init__()
            self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
            self.norm, self.pw1, self.act, self.pw2 = nn.LayerNorm(c), nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c)

        def forward(self, x):
            y = self.dw(x).permute(0, 2, 3, 1)
            return x + self.pw2(self.act(self.pw1(self.norm(y)))).permute(0, 3, 1, 2)

    def head(c, classes=10):
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes))

    def ghostnet():
        return nn.Sequential(conv_bn(3, 16, 3, 2), GhostBlock(16, 32), GhostBlock(16, 48), conv_bn(16, 32, 3, 2),
                             GhostBlock(32, 64), head(32))

    def mbconv_net(act, gate):
        return nn.Sequential(conv_bn(3, 16, 3, 2, act=act), MBConv(16, 4, act, gate), conv_bn(16, 24, 3, 2, act=act),
                             MBConv(24, 4, act, gate), conv_bn(24, 48, 1, act=act), head(48))

    def plain(act):
        return nn.Sequential(conv_bn(3, 16, 3, act=act), conv_bn(16, 32, 3, 2, act=act),
                             conv_bn(32, 32, 3, act=act), conv_bn(32, 64, 3, 2, act=act), head(64))

    def convnext():
        return nn.Sequential(nn.Conv2d(3, 32, 4, 4), ConvNeXtBlock(32), ConvNeXtBlock(32), nn.Conv2d(32, 64, 2, 2),
                             ConvNeXtBlock(64), head(64))

    return {
        "ghost": (ghostnet, "Ghost modules (8+8 concat meets a 16-ch residual), ReLU"),
        "se_silu": (lambda: mbconv_net(nn.SiLU, nn.Sigmoid), "MBConv + squeeze-excitation, SiLU (EfficientNet-like)"),
        "se_hardswish": (lambda: mbconv_net(nn.Hardswish, nn.Hardsigmoid),
                         "MBConv + SE, HardSwish / HardSigmoid (MobileNetV3-like)"),
        "gelu": (lambda: plain(nn.GELU), "conv-BN-GELU stack (torch's Erf form)"),
        "leaky_prelu": (lambda: nn.Sequential(plain(nn.LeakyReLU)[:2], conv_bn(32, 64, 3, 2, act=nn.PReLU), head(64)),
                        "LeakyReLU and PReLU"),
        "convnext": (convnext, "ConvNeXt blocks: dw 7x7, LayerNorm + Linear channels-last, GELU"),
    }


# ---------------------------------------------------------------- the stages
@dataclass
class Row:
    name: str
    what: str
    stages: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _stage(row: Row, stage: str, fn: Callable[[], Any]) -> Any:
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # exporters' chatter
            warnings.simplefilter("ignore")
            value = fn()
        row.stages[stage] = "ok"
        return value
    except MBSError as exc:
        row.stages[stage] = "refused"
        row.notes.append(f"{stage}: {exc}")
    except Exception as exc:  # noqa: BLE001 - a crash is what this tool exists to find
        row.stages[stage] = "CRASH"
        row.notes.append(f"{stage}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
    return None


def _torch_export(model, path: Path, size: int, **how) -> Path:
    """The library's verified exporter (onnxmbs.zoo.export.export_torch), TorchScript unless ``dynamo``."""
    from onnxmbs.zoo.export import export_torch

    return export_torch(model, (3, size, size), path, dynamo=how.pop("dynamo", False), **how)


def run_one(row: Row, model: Any, path: Path, *, size: int, framework: str, data: Any = None,
            input_shape: tuple[int, ...] | None = None) -> None:
    from onnxmbs import analyze, apply_plan
    from onnxmbs.compact.writer import write_compact
    from onnxmbs.workflow.plan import plan_model

    analysis = _stage(row, "analyze", lambda: analyze(str(path), input_shape=input_shape or _shape(path, data)))
    if analysis is not None:
        taps = [t for t in analysis.taps.values() if t is not None]
        row.notes.append(f"{len(analysis.layers)} convs: {len(taps) - sum(t.statistic == 'positive' for t in taps)} "
                         f"count non-zeros, {sum(t.statistic == 'positive' for t in taps)} count > 0, "
                         f"{len(analysis.layers) - len(taps)} not measured")
    source = {"data": data} if data is not None else {"synthetic": 4}
    plan = _stage(row, "plan", lambda: plan_model(str(path), input_shape=input_shape, k=K, progress=False,
                                                  **source).document)
    if plan is None:
        return
    s = plan.summary
    row.notes.append(f"params {s.params:,} -> {s.params_compact:,}")
    compact = _stage(row, "compact", lambda: write_compact(str(path), plan, path.with_suffix(".compact.onnx"),
                                                           latency_repeats=0))
    if compact is not None and compact.params_compact != s.params_compact:
        row.notes.append(f"compact file holds {compact.params_compact:,} parameters, the plan said "
                         f"{s.params_compact:,}")
    if model is None:
        row.stages["apply_plan"] = "-"
        return
    if framework == "torch":
        import torch

        example = torch.rand(1, 3, size, size)
        _stage(row, "apply_plan", lambda: apply_plan(model, plan, example, onnx_path=path))
    else:
        _stage(row, "apply_plan", lambda: apply_plan(model, plan, onnx_path=path))


def _shape(path: Path, data: Any) -> tuple[int, ...] | None:
    from onnxmbs.stats.measure import input_shape_for

    return input_shape_for(str(path), None, data)


def zoo_rows(work: Path, only: set[str] | None) -> list[tuple[str, str, Callable[[Row], None]]]:
    from onnxmbs.zoo import build, export

    def zoo_case(name: str, framework: str, size: int):
        def run(row: Row) -> None:
            path = _stage(row, "export", lambda: export(name, work / f"{name}_{framework}.onnx", input_size=size,
                                                        framework=framework, dynamo=False))
            if path is not None:
                model = build(name, input_size=size, framework=framework)  # same architecture, matched by name
                run_one(row, model, path, size=size, framework=framework)
        return run

    cases = [("resnet20", "torch", 32), ("resnet50", "torch", 64), ("mobilenet_v2", "torch", 64),
             ("shufflenet_v1_g3", "torch", 64), ("densenet121", "torch", 64), ("mobilenet_v1", "keras", 64),
             ("mobilenet_v2", "keras", 64), ("resnet20", "keras", 32)]
    return [(f"zoo {n} ({fw})", f"the zoo's {n}, {fw} export at {s} px", zoo_case(n, fw, s))
            for n, fw, s in cases if only is None or n in only]


def pattern_rows(work: Path, only: set[str] | None) -> list[tuple[str, str, Callable[[Row], None]]]:
    import torch

    rows = []
    for name, (make, what) in _nets().items():
        if only is not None and name not in only:
            continue

        def run(row: Row, make=make, name=name) -> None:
            torch.manual_seed(0)
            model = make().eval()
            path = _stage(row, "export", lambda: _torch_export(model, work / f"{name}.onnx", 64))
            if path is not None:
                run_one(row, model, path, size=64, framework="torch")
        rows.append((name, what, run))

    def external(row: Row) -> None:
        from onnxmbs.zoo import build

        model = build("resnet20")
        path = _stage(row, "export", lambda: _torch_export(model, work / "external.onnx", 32, dynamo=True,
                                                           external_data=True))
        if path is not None:
            row.notes.append(f"{sum(p.stat().st_size for p in work.glob('external.onnx*')):,} bytes in "
                             f"{len(list(work.glob('external.onnx*')))} files")
            run_one(row, model, path, size=32, framework="torch")

    def dynamic(row: Row) -> None:
        from onnxmbs.zoo import build

        model = build("resnet20")
        path = _stage(row, "export", lambda: _torch_export(model, work / "dynamic.onnx", 32, dynamic_hw=True))
        data = work / "calib.npy"
        np.save(data, np.random.default_rng(0).integers(0, 256, (8, 40, 40, 3), dtype=np.uint8))
        if path is not None:
            run_one(row, model, path, size=40, framework="torch", data=str(data))

    for name, what, fn in (("external_data", "resnet20, dynamo export with model.onnx + model.onnx.data", external),
                           ("dynamic_hw", "resnet20 with dynamic H/W, size from 40x40 calibration arrays", dynamic)):
        if only is None or name in only:
            rows.append((name, what, fn))
    return rows


def table(rows: list[Row]) -> str:
    stages = ("export", "analyze", "plan", "compact", "apply_plan")
    out = ["| model | pattern | " + " | ".join(stages) + " | notes |", "|---|---|" + "---|" * len(stages) + "---|"]
    for r in rows:
        cells = [r.stages.get(s, "-") for s in stages]
        notes = "; ".join(n.replace("|", "/") for n in r.notes)
        out.append(f"| {r.name} | {r.what} | " + " | ".join(cells) + f" | {notes} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="comma-separated case names (zoo names or pattern names)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    only = set(args.only.split(",")) if args.only else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, what, run in pattern_rows(work, only) + zoo_rows(work, only):
            row = Row(name, what)
            start = time.perf_counter()
            run(row)
            row.seconds = time.perf_counter() - start
            print(f"{name}: {row.stages} ({row.seconds:.0f} s)", file=sys.stderr, flush=True)
            rows.append(row)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    return 1 if any("CRASH" in r.stages.values() for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
