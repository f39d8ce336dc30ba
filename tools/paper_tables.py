"""Parameter counts of every configuration in the MBS paper (docs/algorithm.md §11) vs. the zoo.

Prints a Markdown table: paper params (M), ours (M, to 0.01), the difference,
and the reduction (paper vs ours).  All counts are for 1000 ImageNet classes
and come from the PyTorch builders (input size does not change them).

Counting conventions (each row says which):

* ``trainable`` — conv/linear weights and biases plus BatchNorm γ and β, no BN
  moving statistics: what ``sum(p.numel() for p in model.parameters())`` and
  torchvision report.  ResNets, MobileNetV1 (= Keras trainable count; Keras'
  own 4,253,864 adds the moving statistics, 4.25 M), DenseNet-121.
* ``trainable + conv biases`` — ShuffleNet: the paper's 1.88 M / 1.49 M are
  matched when every conv also has a bias (as in the popular jaxony/ShuffleNet
  PyTorch code); bias-free convs give 1.87 M / 1.48 M.
* ``no BN`` — MobileNetV2: the paper's 3.47 M is TF-slim's published figure, which
  equals the conv and classifier weights without any BatchNorm parameters
  (3,470,760); torchvision's trainable count is 3.50 M.

Readings of β: DenseNet-121 — β_b scales block b's growth rate (bottleneck 4×)
and the channels entering block b (stem / transition); MobileNetV2 — every
non-depthwise conv gets ceil(β_r·C) for its output resolution r, the 4 paper β
being for 56, 28, 14, 7 px (112 px at 1).  See the zoo builders' docstrings.

Usage:  python tools/paper_tables.py
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from onnxmbs.zoo import build  # noqa: E402
from onnxmbs.zoo.configuration import CONFIGS  # noqa: E402


@dataclass(frozen=True)
class PaperRow:
    model: str
    zoo: str
    configuration: tuple[float, ...]
    paper_m: float
    paper_reduction: float | None  # percent, for reduced rows
    convention: str = "trainable"
    conv_bias: bool = False  # ShuffleNet only: a bias on every conv


@dataclass(frozen=True)
class Result:
    row: PaperRow
    params: int
    original: int

    @property
    def ours_m(self) -> float:
        return round(self.params / 1e6, 2)

    @property
    def diff_m(self) -> float:
        return round(self.ours_m - self.row.paper_m, 2)

    @property
    def reduction(self) -> float:
        return 100.0 * (1 - self.params / self.original)


V1 = (32, 64, 128, 256, 512, 1024)
R = (64, 128, 256, 512)
ROWS: tuple[PaperRow, ...] = (
    PaperRow("ResNet-18", "resnet18", R, 11.69, None),
    PaperRow("ResNet-18 MBS (L)", "resnet18", (64, 128, 256, 453), 9.94, 14.97),
    PaperRow("ResNet-34", "resnet34", R, 21.80, None),
    PaperRow("ResNet-34 MBS (0.8L)", "resnet34", (64, 128, 192, 359), 12.10, 44.50),
    PaperRow("ResNet-101", "resnet101", R, 44.55, None),
    PaperRow("ResNet-101 MBS (L)", "resnet101", (64, 128, 174, 337), 21.53, 51.67),
    PaperRow("MobileNet 224 / 192", "mobilenet_v1", V1, 4.23, None),
    PaperRow("MobileNet 224 MBS (L)", "mobilenet_v1", (32, 64, 128, 256, 512, 958), 4.00, 5.43),
    PaperRow("MobileNet 224 MBS (0.8L)", "mobilenet_v1", (32, 64, 128, 256, 474, 879), 3.50, 17.26),
    PaperRow("MobileNet 192 MBS (L)", "mobilenet_v1", (32, 64, 128, 256, 512, 937), 3.93, 7.10),
    PaperRow("MobileNet 192 MBS (0.8L)", "mobilenet_v1", (32, 64, 128, 256, 441, 825), 3.14, 25.77),
    PaperRow("ShuffleNet g=3", "shufflenet_v1_g3", (24, 240, 480, 960), 1.88, None,
             "trainable + conv biases", conv_bias=True),
    PaperRow("ShuffleNet g=3 MBS (L)", "shufflenet_v1_g3", (24, 240, 444, 792), 1.49, 20.74,
             "trainable + conv biases", conv_bias=True),
    PaperRow("DenseNet-BC-121", "densenet121", (1, 1, 1, 1), 7.98, None),
    PaperRow("DenseNet-BC-121 MBS (L)", "densenet121", (1, 0.987, 0.832, 0.809), 6.04, 24.31),
    PaperRow("MobileNetV2 224", "mobilenet_v2", (1, 1, 1, 1), 3.47, None, "no BN"),
    PaperRow("MobileNetV2 224 MBS (1.2L)", "mobilenet_v2", (1, 1, 0.9447, 0.7978), 3.14, 25.03, "no BN"),
)

NOTES = """\
Notes
- Counts: 1000 classes; "trainable" = weights + biases + BN γ/β (no moving statistics).
- MobileNet 224 and 192 share one count (params do not depend on the input size).
- ShuffleNet matches the paper only with a bias on every conv (bias-free: {shuffle_plain}).
- DenseNet-121: β_b scales block b's growth rate (bottleneck 4×k) and the stem/transition
  feeding block b; per-conv-output-resolution scaling instead gives 6.20 M.
- MobileNetV2: the paper's 3.47 M (TF-slim's figure) is the weights without BN.  Its
  reduced size 3.14 M is not 25.03 % less than 3.47 M (that is 9.5 %).  Our reduced model
  is {v2_reduction:.2f} % smaller ({v2_plain}, {v2_plain_reduction:.2f} % counted with BN like
  torchvision): close to the paper's 25.03 %, so its 3.14 M looks like a slip (it is the
  MobileNet 192 row's figure).
"""


def count(model: Any, convention: str) -> int:
    """Parameters of a torch model under a counting convention (see the module docstring)."""
    from torch import nn

    total = sum(p.numel() for p in model.parameters())
    if convention == "no BN":
        total -= sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    return total


def evaluate(row: PaperRow) -> Result:
    """Count the row's configuration and the model's default configuration."""
    kind = CONFIGS[row.zoo].kind
    params = count(_build(row, {kind: list(row.configuration)}), row.convention)
    original = count(_build(row, {kind: None}), row.convention)
    return Result(row, params, original)


def _build(row: PaperRow, config: dict[str, Any]) -> Any:
    """Build on torch's meta device: shapes only, no memory or weight init (counting is all we do)."""
    import torch

    from onnxmbs.zoo.torch_shufflenet import shufflenet_v1

    with torch.device("meta"):
        if row.conv_bias:
            return shufflenet_v1(conv_bias=True, **config)
        return build(row.zoo, framework="torch", **config)


def markdown(results: list[Result]) -> str:
    lines = ["| model | configuration | paper (M) | ours (M) | diff (M) | reduction paper / ours | counting |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in results:
        config = "[" + ", ".join(f"{v:g}" for v in r.row.configuration) + "]"
        red = "" if r.row.paper_reduction is None else f"{r.row.paper_reduction:.2f} % / {r.reduction:.2f} %"
        lines.append(f"| {r.row.model} | {config} | {r.row.paper_m:.2f} | {r.ours_m:.2f} | "
                     f"{r.diff_m:+.2f} | {red} | {r.row.convention} |")
    return "\n".join(lines)


def notes(results: list[Result]) -> str:
    v2 = next(r for r in results if r.row.zoo == "mobilenet_v2" and r.row.paper_reduction)
    plain = PaperRow(v2.row.model, v2.row.zoo, v2.row.configuration, v2.row.paper_m, v2.row.paper_reduction)
    v2_plain = evaluate(plain)
    return NOTES.format(
        shuffle_plain=f"{evaluate(PaperRow('', 'shufflenet_v1_g3', (24, 240, 480, 960), 0, None)).params / 1e6:.2f} M",
        v2_reduction=v2.reduction,
        v2_plain=f"{v2_plain.original / 1e6:.2f} → {v2_plain.params / 1e6:.2f} M",
        v2_plain_reduction=v2_plain.reduction)


def main() -> None:
    results = [evaluate(row) for row in ROWS]
    print(markdown(results))
    print()
    print(notes(results))


if __name__ == "__main__":
    main()
