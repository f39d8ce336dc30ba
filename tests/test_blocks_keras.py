"""Block pruning handed back to Keras: the plan's blocks removed from the user's functional model."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")
pytest.importorskip("tf2onnx")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from keras import layers  # noqa: E402

from onnxmbs.adapters import folded_params  # noqa: E402
from onnxmbs.adapters.blocks import remove_blocks_from  # noqa: E402
from onnxmbs.blocks.apply import shallow_model  # noqa: E402
from onnxmbs.blocks.greedy import Stop, prune_blocks  # noqa: E402
from onnxmbs.errors import MBSError  # noqa: E402
from onnxmbs.graph.load import load_model  # noqa: E402
from onnxmbs.data.labelled import open_labelled  # noqa: E402
from onnxmbs.zoo import build  # noqa: E402
from onnxmbs.zoo.export import export_keras  # noqa: E402
from test_adapter_keras import _randomise as trained_like  # noqa: E402  (BN statistics, biases as after training)

X = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)


@pytest.fixture(scope="module")
def resnet20(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = trained_like(build("resnet20", framework="keras"))
    path = export_keras(model, tmp_path_factory.mktemp("k20") / "r20.onnx")
    loaded = load_model(path)
    rng = np.random.default_rng(0)
    data = open_labelled((rng.random((12, 32, 32, 3), dtype=np.float32), rng.integers(0, 10, 12)),
                         shape=loaded.input.shape, layout=loaded.input.layout)
    return model, path, prune_blocks(loaded, data, stop=Stop(remove=3)).plan


def test_zoo_resnet_blocks_removed_like_the_onnx(resnet20):
    model, path, plan = resnet20
    weights = [w.copy() for w in model.get_weights()]
    shallow = remove_blocks_from(model, plan, onnx_path=path)
    assert shallow is not model and all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))
    names = {layer.name for layer in shallow.layers}
    for block_id in plan.removed:  # the join 'resnet20_cifar_1/stage1_block1_add_1/Add' names the Keras block
        add = plan.block(block_id).join.split("/")[1].removesuffix("_1")
        assert add not in names and add.replace("_add", "_1_conv") not in names
        assert add.replace("_add", "_out") in names  # the activation after the join stays
    assert folded_params(shallow) == plan.summary.params_after < folded_params(model)
    sess = ort.InferenceSession(shallow_model(path, plan).SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(np.asarray(shallow(X, training=False)), sess.run(None, {"input": X})[0],
                               rtol=1e-3, atol=1e-4)


def test_a_plan_of_another_model_is_refused(resnet20):
    _, path, plan = resnet20
    inp = keras.Input((32, 32, 3), name="input")
    other = keras.Model(inp, layers.Dense(10)(layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3)(inp))))
    with pytest.raises(MBSError, match="matches no Add layer"):
        remove_blocks_from(other, plan, onnx_path=path)
