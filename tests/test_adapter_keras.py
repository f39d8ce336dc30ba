"""The Keras adapter: a plan applied to a functional or Sequential Keras model.

Parameter convention (``folded_params``): the plan counts the tf2onnx export, where a
BatchNorm right after a bias-free Conv2D or DepthwiseConv2D is folded into it (γ, β become the
conv's C bias values), a BatchNorm after a conv with a bias stays as Mul + Add (2·C),
and BatchNorm moving statistics never count. BatchNorm statistics and Dense biases are randomised before export, as in a
trained model (tf2onnx drops the all-zero conv/Dense biases of a freshly initialised one).
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")
pytest.importorskip("tf2onnx")

from keras import layers  # noqa: E402

import onnxmbs  # noqa: E402
from onnxmbs.adapters import apply_plan, folded_params  # noqa: E402
from onnxmbs.errors import MBSError  # noqa: E402
from onnxmbs.planning.pipeline import plan_from_statistics  # noqa: E402
from onnxmbs.workflow.plan import plan_model  # noqa: E402
from onnxmbs.zoo import keras_models  # noqa: E402
from onnxmbs.zoo.export import export_keras  # noqa: E402

X = np.random.default_rng(0).random((1, 32, 32, 3), dtype=np.float32)


def _randomise(model: keras.Model) -> keras.Model:
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(.5, 1.5, gamma.shape), rng.uniform(-.2, .2, beta.shape),
                               rng.uniform(-.1, .1, mean.shape), rng.uniform(.5, 1.5, var.shape)])
        elif isinstance(layer, (layers.Dense, layers.Conv2D)) and layer.use_bias:
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.uniform(-.1, .1, bias.shape)])
    return model


def _sequential() -> keras.Model:
    """Plain convs, a per-channel PReLU on the second, global max pooling by hand, Flatten -> Dense."""
    return keras.Sequential([
        keras.Input((32, 32, 3)), layers.Conv2D(8, 3, padding="same", activation="relu", name="c1"),
        layers.Conv2D(8, 3, padding="same", name="c2"), layers.PReLU(shared_axes=[1, 2], name="prelu"),
        layers.Conv2D(8, 3, padding="same", activation="relu", name="c3"),
        layers.Conv2D(16, 3, 2, padding="same", activation="relu", name="c4"),
        layers.Conv2D(16, 3, 2, padding="same", name="c5"), layers.BatchNormalization(name="bn5"),
        layers.ReLU(name="r5"), layers.MaxPooling2D(8, name="pool"), layers.Flatten(name="flat"),
        layers.Dense(10, name="logits")], name="plain")


MODELS = {
    "resnet20": lambda: keras_models.cifar_resnet(20, widths=[4, 8, 16]),
    "mobilenet_v1": lambda: keras_models.mobilenet_v1(widths=[8, 8, 16, 16, 32, 32], num_classes=10, input_size=32),
    "sequential": _sequential,
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = {}
    for name, build in MODELS.items():
        keras.utils.set_random_seed(0)
        model = _randomise(build())
        functional = keras.Model(model.inputs, model.outputs, name=model.name)  # tf2onnx fails on Sequential
        out[name] = (model, export_keras(functional, tmp_path_factory.mktemp(name) / "model.onnx"))
    return out


@pytest.mark.parametrize("name, k", [("resnet20", 0.5), ("mobilenet_v1", 0.5), ("sequential", 0.25)])
def test_widths_and_params_follow_the_plan(exported, name, k):
    model, path = exported[name]
    plan = plan_model(path, synthetic=8, preprocess="raw", k=k).document
    assert plan.summary.params_compact < plan.summary.params
    before = [w.copy() for w in model.get_weights()]
    compact = apply_plan(model, plan)
    assert folded_params(model) == plan.summary.params
    assert folded_params(compact) == plan.summary.params_compact
    convs = [layer for layer in compact.layers if type(layer).__name__ in ("Conv2D", "DepthwiseConv2D")]
    widths = sorted(int(layer.output.shape[-1]) for layer in convs)
    assert widths == sorted(e.compact_out_channels for e in plan.layers)
    assert compact(X, training=False).shape == (1, 10)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # the user's model is untouched
    assert type(compact) is type(model) and compact is not model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_inherit_with_full_widths_reproduces_outputs(exported, name):
    model, path = exported[name]
    full = plan_from_statistics(onnxmbs.analyze(path), None, k=100.0).document
    same = apply_plan(model, full, init="inherit")
    np.testing.assert_array_equal(np.asarray(same(X, training=False)), np.asarray(model(X, training=False)))


def test_inherit_slices_the_flattened_classifier(exported):
    model, path = exported["sequential"]
    plan = plan_model(path, synthetic=8, preprocess="raw", k=0.25).document
    compact = apply_plan(model, plan, init="inherit")
    c5 = compact.get_layer("c5").get_weights()[0]
    old = model.get_layer("c5").get_weights()[0]
    kept = [int(np.nonzero(np.all(old == c5[..., [j]], axis=(0, 1, 2)))[0][0]) for j in range(c5.shape[-1])]
    dense, dense_old = compact.get_layer("logits").get_weights()[0], model.get_layer("logits").get_weights()[0]
    assert len(kept) < old.shape[-1]
    np.testing.assert_array_equal(dense, dense_old[kept])  # 1x1 after pooling: features are channels


def test_unsupported_layer_gives_a_clear_error(exported):
    model, path = exported["sequential"]
    plan = plan_model(path, synthetic=8, preprocess="raw", k=0.1).document
    with pytest.raises(MBSError, match=r"channels of 'c2' .*Keras layer 'prelu' \(PReLU\) has no resize rule — "):
        apply_plan(model, plan)


def test_subclassed_model_is_refused(exported):
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = layers.Conv2D(4, 3)

        def call(self, x):
            return self.conv(x)

    net = Net()
    net(X)
    _, path = exported["resnet20"]
    with pytest.raises(MBSError, match="subclassed Keras model"):
        apply_plan(net, plan_from_statistics(onnxmbs.analyze(path), None).document)


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v1"])
@pytest.mark.parametrize("select", ["nonzero", "l1"])
def test_inherit_keeps_the_channels_compact_keeps(exported, name, select, tmp_path):
    """One channel-selection rule: with trained-looking BatchNorm and depthwise convs, the Keras model from
    apply_plan(init="inherit") computes what the compact ONNX of the same plan computes."""
    from onnxmbs.compact.writer import compact_model
    from onnxmbs.runtime.session import open_session

    model, path = exported[name]
    plan = plan_model(path, data=np.random.default_rng(2).random((16, 32, 32, 3), dtype=np.float32), k=0.5).document
    assert plan.summary.params_compact < plan.summary.params
    sess = open_session(compact_model(path, plan, select=select).model)
    x = np.random.default_rng(3).random((4, 32, 32, 3), dtype=np.float32)
    want = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    got = np.asarray(apply_plan(model, plan, init="inherit", select=select)(x, training=False))
    assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want))


@pytest.mark.parametrize("name, k", [("resnet20", 0.5), ("mobilenet_v1", 0.1)])
def test_init_onnx_carries_the_reconstructed_weights(exported, name, k, tmp_path):
    """``init="onnx"``: the Keras model takes a reconstructed compact ONNX's weights and computes what it
    computes (onnxruntime, images the reconstruction did not see), unlike ``init="inherit"``."""
    from onnxmbs.compact.writer import CalibrationOptions, ReconstructOptions, write_compact
    from onnxmbs.errors import MBSError
    from onnxmbs.runtime.session import open_session

    model, path = exported[name]
    fit = np.random.default_rng(2).random((16, 32, 32, 3), dtype=np.float32)
    plan = plan_model(path, data=fit, k=k).document
    out = tmp_path / "c.onnx"
    write_compact(path, plan, out, reconstruct=ReconstructOptions(data=CalibrationOptions(data=fit, progress=False)))
    x = np.random.default_rng(3).random((4, 32, 32, 3), dtype=np.float32)
    sess = open_session(str(out))
    want = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    ours = apply_plan(model, plan, init="onnx", compact_onnx=out)
    got = np.asarray(ours(x, training=False))
    assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want))
    plain = tmp_path / "plain.onnx"  # the same plan without reconstruction: other weights
    write_compact(path, plan, plain)
    other = apply_plan(model, plan, init="onnx", compact_onnx=plain)
    convs = [layer.name for layer in ours.layers if type(layer).__name__ in ("Conv2D", "DepthwiseConv2D")]
    moved = [n for n in convs if not np.allclose(ours.get_layer(n).get_weights()[0],
                                                 other.get_layer(n).get_weights()[0], atol=1e-6)]
    assert moved  # the re-fitted kernels of c.onnx, not the inherited ones of plain.onnx
    with pytest.raises(MBSError, match="give both"):
        apply_plan(model, plan, init="onnx")
