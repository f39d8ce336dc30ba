"""The handbook on a user's Keras model (a .keras file): trained params equal the plans' predictions."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")

from onnxmbs.handbook.engine import HandbookJob, run_handbook  # noqa: E402
from onnxmbs.handbook.store import RunStore  # noqa: E402
from onnxmbs.handbook.training import ModelSource, Trainer  # noqa: E402
from onnxmbs.stats.measure import CalibrationOptions  # noqa: E402
from onnxmbs.train import TrainConfig  # noqa: E402
from onnxmbs.data.training import Dataset  # noqa: E402


@pytest.mark.slow
def test_keras_handbook_params_equal_predictions(tmp_path):
    from onnxmbs.zoo import keras_models
    from onnxmbs.zoo.export import export_keras

    keras.utils.set_random_seed(0)
    model = keras_models.mobilenet_v1(widths=[8, 8, 16, 16, 32, 32], num_classes=3, input_size=32)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # trained-looking statistics and biases (tf2onnx drops all-zero biases)
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([g, b, rng.uniform(-.1, .1, m.shape), rng.uniform(.5, 1.5, v.shape)])
        elif isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)) and layer.use_bias:
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.uniform(-.1, .1, bias.shape)])
    model.save(tmp_path / "m.keras")
    export_keras(model, tmp_path / "m.onnx")
    x, y = rng.random((32, 32, 32, 3), dtype=np.float32), rng.integers(0, 3, 32)
    np.save(tmp_path / "calib.npy", x[:8])
    source = ModelSource.user(str(tmp_path / "m.keras"), chw=(3, 32, 32), num_classes=3)
    trainer = Trainer(source=source, train=Dataset(x, y, "NHWC"), val=Dataset(x[:16], y[:16], "NHWC"),
                      config=TrainConfig(epochs=1, batch_size=16, flip=False, crop_pad=0), threads=1)
    job = HandbookJob(onnx=str(tmp_path / "m.onnx"), trainer=trainer, ks=(0.6, 1.4), uniform=True, original=False,
                      calibration=CalibrationOptions(data=str(tmp_path / "calib.npy"), preprocess="raw"))
    book = run_handbook(job, RunStore(tmp_path / "runs"))
    assert source.framework == "keras" and len(book.runs) == 4
    by_key = {r.key: r for r in book.runs}
    for p in book.points:
        assert by_key[f"mbs_k{p.k:g}_s0"].params == p.params
        assert by_key[f"uniform_k{p.k:g}_s0"].params == p.uniform_params
        assert abs(p.uniform_params - p.params) <= p.uniform_step
