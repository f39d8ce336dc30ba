"""Ray's token-authentication warning and Keras' inputs-structure UserWarning never reach the user's stderr."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "resnet20_digits.onnx"
NPZ = ROOT / "models" / "digits_calib.npz"

KERAS_CALL = """
import numpy as np
{setup}
inp = keras.Input((4, 4, 3), name="input")
out = keras.layers.Conv2D(2, 1)(inp)
model = keras.Model([inp], out)          # inputs as a list, as keras.Model(m.inputs, m.outputs) builds it
print(np.asarray(model(np.zeros((1, 4, 4, 3), np.float32))).shape)
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)


def test_profile_with_workers_shows_no_ray_warning(tmp_path):
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray is running in this process")
    out = tmp_path / "s.json"
    res = _run("-m", "onnxmbs", "profile", str(MODEL), "--data", str(NPZ), "--preprocess", "raw",
               "--max-images", "64", "--workers", "2", "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert out.exists() and "64 images" in res.stdout
    noisy = [line for line in res.stderr.splitlines()
             if "Token authentication" in line or "WARNING" in line or "gcs_client" in line]
    assert noisy == []


def test_keras_imported_by_onnxmbs_shows_no_inputs_structure_warning():
    pytest.importorskip("keras")
    plain = _run("-c", KERAS_CALL.format(setup="import keras"))
    assert plain.returncode == 0, plain.stderr
    if "doesn't match the expected structure" not in plain.stderr:
        pytest.skip("this Keras does not warn about the inputs structure")
    quiet = _run("-c", KERAS_CALL.format(setup="from onnxmbs.runtime.frameworks import import_keras\n"
                                                "keras = import_keras()"))
    assert quiet.returncode == 0, quiet.stderr
    assert "(1, 4, 4, 2)" in quiet.stdout
    assert "UserWarning" not in quiet.stderr and "expected structure" not in quiet.stderr
