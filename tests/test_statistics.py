"""The statistics pass: exact per-channel non-zero counts, streamed, on onnxruntime."""
from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest

from graphs import GraphBuilder, classifier
from onnxmbs import MBSError, analyze
from onnxmbs.runtime.session import choose_provider, make_session
from onnxmbs.stats.counting import collect_statistics, instrument


def small_net(batch="N"):
    g = GraphBuilder((batch, 3, 12, 12))
    x = g.relu(g.conv(g.input.name, 3, 6, name="c1"), name="r1")
    y = g.conv(g.relu(g.conv(x, 6, 6, stride=2, name="c2"), name="r2"), 6, 6, name="c3")
    six = g.op("Clip", [y, g.const(np.array(0.0, np.float32)), g.const(np.array(6.0, np.float32))], name="r3")
    return g.build([classifier(g, six, 6)])


def truth(model, tensors, x):
    probe = copy.deepcopy(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors)
    outs = make_session(probe, "CPUExecutionProvider").run(None, {"input": x})
    return {t: (v != 0).sum(axis=(0, 2, 3)) for t, v in zip(tensors, outs)}


@pytest.mark.parametrize("method", ["nchwc", "naive"])
def test_counts_are_exact_and_streamed(method):
    model = small_net()
    a = analyze(model)
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((n, 3, 12, 12)).astype(np.float32) for n in (4, 3, 5)]
    stats = collect_statistics(a, iter(batches), provider="cpu", method=method, progress=False)
    taps = {t.tensor for t in a.taps.values() if t}
    assert stats.images == 12 and set(stats.taps) == taps
    expected = {t: sum(truth(model, sorted(taps), b)[t] for b in batches) for t in taps}
    for t in taps:
        assert stats.taps[t].nonzero.dtype == np.int64
        np.testing.assert_array_equal(stats.taps[t].nonzero, expected[t])
        hw = 12 * 12 if t == "r1_out" else 6 * 6
        assert stats.p_nonzero(t) == pytest.approx(expected[t].sum() / (12 * 6 * hw))


def test_tiny_positive_values_count_as_non_zero():
    g = GraphBuilder(("N", 2, 4, 4))
    w = g.const(np.eye(2, dtype=np.float32).reshape(2, 2, 1, 1))
    x = g.op("Conv", [g.input.name, w], name="ident", kernel_shape=[1, 1])
    model = g.build([g.relu(x, name="r")])
    a = analyze(model)
    data = np.zeros((1, 2, 4, 4), np.float32)
    data[0, 0, 0, :3] = [1e-30, 3e-38, 5.0]  # 3e-38 is just above the smallest normal float32
    data[0, 1, 1, 1] = -2.0
    stats = collect_statistics(a, [data], provider="cpu", progress=False)
    expected = truth(model, ["r_out"], data)["r_out"]
    np.testing.assert_array_equal(stats.taps["r_out"].nonzero, expected)
    assert expected[0] == 3 and expected[1] == 0


def test_only_counts_leave_the_runtime():
    a = analyze(small_net())
    counting = instrument(a)
    assert [o.name for o in counting.model.graph.output] == [counting.output]  # one small output
    (result,) = make_session(counting.model, "CPUExecutionProvider").run(None, {"input": np.ones((2, 3, 12, 12),
                                                                                                np.float32)})
    assert result.shape == (2, 6 + 6 + 6, 1, 1)  # per image, the channels of the three taps side by side
    assert [counting.slices[t] for t in ("r1_out", "r2_out", "r3_out")] == [slice(0, 6), slice(6, 12), slice(12, 18)]
    assert list(counting.per_image) == [144] * 6 + [36] * 12
    onnx.checker.check_model(counting.model)


def test_providers():
    assert choose_provider("auto") in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert choose_provider("cpu") == "CPUExecutionProvider"
    with pytest.raises(MBSError, match="provider"):
        choose_provider("NoSuchExecutionProvider")


def test_wrong_batch_shape_is_a_clear_error():
    a = analyze(small_net())
    with pytest.raises(MBSError, match="expects"):
        collect_statistics(a, [np.zeros((2, 3, 10, 10), np.float32)], provider="cpu", progress=False)
    fixed = analyze(small_net(batch=2))
    with pytest.raises(MBSError, match="batch size is fixed"):
        collect_statistics(fixed, [np.zeros((3, 3, 12, 12), np.float32)], provider="cpu", progress=False)


PEAK_SCRIPT = """
import resource, sys, numpy as np
sys.path.insert(0, {tests!r})
from test_statistics import small_net
from onnxmbs import analyze
from onnxmbs.stats.counting import collect_statistics
a = analyze(small_net())
def batches(n):
    rng = np.random.default_rng(0)
    for _ in range(n):
        yield rng.standard_normal((64, 3, 12, 12)).astype(np.float32)
stats = collect_statistics(a, batches(int(sys.argv[1])), provider="cpu", progress=False)
assert stats.images == 64 * int(sys.argv[1])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_peak_memory_does_not_grow_with_images():
    import subprocess
    import sys
    from pathlib import Path
    script = PEAK_SCRIPT.format(tests=str(Path(__file__).parent))
    peaks = [int(subprocess.run([sys.executable, "-c", script, str(n)], capture_output=True, text=True,
                                check=True).stdout.split()[-1]) for n in (10, 400)]
    # 400 batches stream 25,600 images (~44 MB of input) through; peak RSS stays within a few MB
    assert peaks[1] - peaks[0] < 8 * 1024, peaks


def test_a_listed_but_broken_cuda_warns_once_per_command(monkeypatch, caplog, recwarn):
    import onnxruntime as ort

    from onnxmbs.runtime import session

    session._cuda_works.cache_clear()
    session._warn_no_cuda.cache_clear()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    try:
        with caplog.at_level("WARNING", logger="onnxmbs"):
            assert [choose_provider("auto") for _ in range(3)] == ["CPUExecutionProvider"] * 3
        assert sum("CUDA provider is listed" in r.getMessage() for r in caplog.records) == 1
        assert not [w for w in recwarn if "CUDA" in str(w.message)]  # onnxruntime's own warning is swallowed
    finally:
        session._cuda_works.cache_clear()
        session._warn_no_cuda.cache_clear()
