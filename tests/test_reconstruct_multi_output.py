"""A two-head graph (a low-resolution head, and a high-resolution head fed by a nearest Resize of the deep
features concatenated with shallow ones: the FPN pattern): compact cuts through the Resize and the
cross-scale Concat, keeps both outputs' shapes, and ``--reconstruct`` brings *every* output closer to
the original's on held-out images (fidelity measured by ``onnxmbs.compare``)."""
from __future__ import annotations

import numpy as np
import onnx
from click.testing import CliRunner

from graphs import GraphBuilder
from onnxmbs.cli import main
from onnxmbs.runtime.session import open_session
from onnxmbs.stats.fidelity import compare


def two_heads() -> onnx.ModelProto:
    g = GraphBuilder((1, 3, 16, 16))
    c1 = g.relu(g.conv("input", 3, 24, name="c1"))
    c2 = g.relu(g.conv(c1, 24, 32, stride=2, name="c2"))
    c3 = g.relu(g.conv(c2, 32, 32, name="c3"))
    a = g.conv(c3, 32, 6, k=1, name="head_a")
    up = g.op("Resize", [c3, "", g.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    cat = g.op("Concat", [up, c1], axis=1)
    b = g.conv(g.relu(g.conv(cat, 56, 16, name="c4")), 16, 3, k=1, name="head_b")
    return g.build([a, b])


def test_every_output_gets_closer_after_reconstruction(tmp_path):
    onnx.save(two_heads(), str(tmp_path / "m.onnx"))
    rng = np.random.default_rng(0)
    np.save(tmp_path / "fit.npy", rng.random((64, 3, 16, 16), dtype=np.float32))
    held = rng.random((32, 3, 16, 16), dtype=np.float32)
    np.save(tmp_path / "held.npy", held)

    def run(*args):
        res = CliRunner().invoke(main, [str(a) for a in args])
        assert res.exit_code == 0, res.output
        return res

    raw = ("--preprocess", "raw")
    run("plan", tmp_path / "m.onnx", "--data", tmp_path / "fit.npy", *raw, "--k", "0.3", "-o", tmp_path / "p.json")
    run("compact", tmp_path / "m.onnx", "--plan", tmp_path / "p.json", "-o", tmp_path / "c.onnx", "--repeats", 0)
    run("compact", tmp_path / "m.onnx", "--plan", tmp_path / "p.json", "-o", tmp_path / "r.onnx", "--reconstruct",
        "--data", tmp_path / "fit.npy", *raw, "--repeats", 0)
    sess = open_session(str(tmp_path / "c.onnx"))
    shapes = [o.shape for o in sess.run(None, {"input": held[:1]})]
    assert shapes == [(1, 6, 8, 8), (1, 3, 16, 16)]  # both heads, their shapes kept
    inherited = compare(tmp_path / "c.onnx", tmp_path / "m.onnx", tmp_path / "held.npy", preprocess="raw")
    rebuilt = compare(tmp_path / "r.onnx", tmp_path / "m.onnx", tmp_path / "held.npy", preprocess="raw")
    assert [o.name for o in rebuilt.outputs] == ["head_a_out", "head_b_out"]
    for before, after in zip(inherited.outputs, rebuilt.outputs):
        assert 0 < after.relative_l2 < before.relative_l2, (before, after)
