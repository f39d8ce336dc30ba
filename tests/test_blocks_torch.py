"""Block pruning handed back to PyTorch: the plan's blocks removed from the user's module."""
from __future__ import annotations

import copy
import warnings

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from torch import nn  # noqa: E402

from onnxmbs.adapters import folded_params  # noqa: E402
from onnxmbs.adapters.blocks import remove_blocks_from  # noqa: E402
from onnxmbs.adapters.planview import scope_path  # noqa: E402
from onnxmbs.adapters.torch_blocks import RemovedBlock  # noqa: E402
from onnxmbs.blocks.apply import shallow_model  # noqa: E402
from onnxmbs.blocks.greedy import Stop, prune_blocks  # noqa: E402
from onnxmbs.errors import MBSError  # noqa: E402
from onnxmbs.graph.load import load_model  # noqa: E402
from onnxmbs.data.labelled import open_labelled  # noqa: E402
from onnxmbs.zoo import build  # noqa: E402

X = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def trained_like(model: nn.Module) -> nn.Module:
    """Random BatchNorm statistics and affine values, as after training (exports keep every bias)."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            for t, lo, hi in ((m.weight, .5, 1.5), (m.bias, -.2, .2), (m.running_mean, -.1, .1), (m.running_var, .5, 1.5)):
                t.data = lo + (hi - lo) * torch.rand(t.shape, generator=gen)
    return model.eval()


def export(model, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (X[:1],), str(path), dynamo=False, input_names=["input"],
                          dynamic_axes={"input": {0: "b"}})
    return path


def blocks_plan(path, remove):
    loaded = load_model(path)
    rng = np.random.default_rng(0)
    x = rng.random((12, 3, 32, 32), dtype=np.float32)
    data = open_labelled((x, rng.integers(0, 10, 12)), shape=loaded.input.shape, layout="NCHW")
    return prune_blocks(loaded, data, stop=Stop(remove=remove)).plan


@pytest.fixture(scope="module")
def resnet20(tmp_path_factory):
    torch.manual_seed(0)
    model = trained_like(build("resnet20"))
    path = export(model, tmp_path_factory.mktemp("r20") / "r20.onnx")
    return model, path, blocks_plan(path, 3)


def test_zoo_resnet_blocks_removed_like_the_onnx(resnet20):
    model, path, plan = resnet20
    before = copy.deepcopy(model.state_dict())
    shallow = remove_blocks_from(model, plan, X[:1], onnx_path=path)
    assert shallow is not model and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    expected = {f"{scope_path(plan.block(b).join)}.body" for b in plan.removed}  # /stages/.../stages.0.1/Add
    assert {n for n, m in shallow.named_modules() if isinstance(m, RemovedBlock)} == expected
    assert folded_params(shallow, X[:1]) == plan.summary.params_after < folded_params(model, X[:1])
    sess = ort.InferenceSession(shallow_model(path, plan).SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        got = shallow(X).numpy()
    np.testing.assert_allclose(got, sess.run(None, {"input": X.numpy()})[0], rtol=1e-3, atol=1e-4)


class Unwrapped(nn.Module):
    """A residual block whose branch is no module of its own: cannot be cut out safely."""

    def __init__(self, c):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(c, c, 3, 1, 1), nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        return torch.relu(self.c2(torch.relu(self.c1(x))) + x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.blocks = nn.Sequential(Unwrapped(8), Unwrapped(8))
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.blocks(torch.relu(self.stem(x))).mean((2, 3)))


def test_unmatchable_block_is_an_error(tmp_path):
    torch.manual_seed(0)
    model = Net().eval()
    path = export(model, tmp_path / "net.onnx")
    plan = blocks_plan(path, 1)
    with pytest.raises(MBSError, match="cannot remove it safely"):
        remove_blocks_from(model, plan, X[:1], onnx_path=path)


class Bottleneck(nn.Module):
    """ultralytics' form: the block is one module returning ``x + branch(x)`` (its convs are its own)."""

    def __init__(self, c):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(c, c, 3, 1, 1), nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        return x + torch.relu(self.c2(torch.relu(self.c1(x))))


def test_a_block_that_is_one_module_returning_x_plus_its_branch_is_replaced_by_its_input(tmp_path):
    from onnxmbs.adapters.torch_blocks import Shortcut

    torch.manual_seed(0)
    model = Net().eval()
    model.blocks = nn.Sequential(Bottleneck(8), Bottleneck(8), Unwrapped(8))
    path = export(model, tmp_path / "net.onnx")
    plan = blocks_plan(path, 1)
    removed = {scope_path(plan.block(b).join) for b in plan.removed}
    shallow = remove_blocks_from(model, plan, X[:1], onnx_path=path)
    assert {n for n, m in shallow.named_modules() if isinstance(m, Shortcut)} == removed <= {"blocks.0", "blocks.1"}
    sess = ort.InferenceSession(shallow_model(path, plan).SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(shallow(X).numpy(), sess.run(None, {"input": X.numpy()})[0], rtol=1e-4, atol=1e-5)


def test_retrain_with_blocks(resnet20, tmp_path):
    from click.testing import CliRunner

    from onnxmbs.cli import main
    from onnxmbs.files import write_json

    model, path, plan = resnet20
    torch.save(model, tmp_path / "m.pt")
    write_json(tmp_path / "b.json", plan)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", x=rng.random((24, 3, 32, 32), dtype=np.float32), y=np.arange(24) % 10)
    res = CliRunner().invoke(main, ["retrain", "--model", str(tmp_path / "m.pt"), "--blocks", str(tmp_path / "b.json"),
                                    "--data", str(tmp_path / "train.npz"), "--epochs", "1", "--batch-size", "8",
                                    "--lr", "0.01", "--save", str(tmp_path / "shallow.pt")])
    assert res.exit_code == 0, res.output
    assert f"shallow model: {folded_params(model, X[:1]):,} -> {plan.summary.params_after:,} parameters" in res.output
    saved = torch.load(tmp_path / "shallow.pt", weights_only=False)
    assert sum(isinstance(m, RemovedBlock) for m in saved.modules()) == len(plan.removed)


def test_blocks_then_mbs_widths_planned_on_the_shallow_model(resnet20, tmp_path):
    import onnx

    from onnxmbs.adapters import apply_plan
    from onnxmbs.workflow.plan import plan_model

    model, path, plan = resnet20
    onnx.save(shallow_model(path, plan), tmp_path / "shallow.onnx")
    widths = plan_model(tmp_path / "shallow.onnx", synthetic=4, preprocess="raw").document
    compact = apply_plan(remove_blocks_from(model, plan, X[:1], onnx_path=path), widths, X[:1])
    assert folded_params(compact, X[:1]) == widths.summary.params_compact < plan.summary.params_after
