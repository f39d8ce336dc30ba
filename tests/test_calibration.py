"""Tests of onnxmbs.data.calibration: sources, presets, layouts, streaming and error messages."""
from __future__ import annotations

import logging
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from onnxmbs.data.calibration import (PRESETS, Calibration, CalibrationInfo, Preprocess,
                                 make_preprocess, open_calibration)
from onnxmbs.errors import MBSError

NCHW = (1, 3, 8, 8)
NHWC = (1, 8, 8, 3)
PIXEL = (200, 100, 50)  # a known RGB pixel


def _solid(path, size=(8, 8), color=PIXEL, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def _all(cal: Calibration) -> np.ndarray:
    return np.concatenate(list(cal.batches()))


def _error(match: str, *args, **kwargs) -> str:
    with pytest.raises(MBSError, match=match) as exc:
        cal = open_calibration(*args, **kwargs)
        list(cal.batches())
    message = str(exc.value)
    assert "\n" not in message and (" — " in message or ": pass" in message)
    return message


# ---------------------------------------------------------------- preprocess


@pytest.mark.parametrize("preset, expected", [
    ("imagenet", [(200 / 255 - .485) / .229, (100 / 255 - .456) / .224, (50 / 255 - .406) / .225]),
    ("tf", [200 / 127.5 - 1, 100 / 127.5 - 1, 50 / 127.5 - 1]),
    ("caffe", [50 - 103.939, 100 - 116.779, 200 - 123.68]),  # BGR order
    ("raw", [200 / 255, 100 / 255, 50 / 255]),
])
def test_presets_numerically(tmp_path, preset, expected):
    _solid(tmp_path / "a.png")
    cal = open_calibration(tmp_path, shape=NCHW, layout="NCHW", preprocess=make_preprocess(preset))
    x = _all(cal)
    assert x.dtype == np.float32 and x.shape == (1, 3, 8, 8)
    np.testing.assert_allclose(x[0, :, 3, 4], expected, rtol=1e-5, atol=1e-5)
    assert PRESETS[preset].name == preset


def test_explicit_mean_std_override_preset(tmp_path):
    _solid(tmp_path / "a.png")
    pre = make_preprocess("caffe", mean=[0.5, 0.5, 0.5], std=[0.25, 0.5, 1.0])
    assert pre.name == "caffe with the given mean/std" and pre.bgr  # channel order of the preset is kept
    x = _all(open_calibration(tmp_path, shape=NCHW, layout="NCHW", preprocess=pre))
    np.testing.assert_allclose(x[0, :, 0, 0], [(50 / 255 - .5) / .25, (100 / 255 - .5) / .5,
                                               (200 / 255 - .5) / 1.0], rtol=1e-5)
    only_mean = make_preprocess("imagenet", mean=[0.5])
    assert only_mean.std == PRESETS["imagenet"].std and only_mean.scale == 255.0
    tf_std = make_preprocess("tf", mean=[0.0])  # tf std 1 in 127.5-units is 0.5 in [0,1] units
    assert tf_std.std == (0.5,)


def test_preset_errors():
    with pytest.raises(MBSError, match="imagenet, tf, caffe, raw"):
        make_preprocess("torchvision")
    with pytest.raises(MBSError, match=r"\[0,1\]"):
        make_preprocess("imagenet", mean=[123.68, 116.78, 103.94])
    with pytest.raises(MBSError, match="positive"):
        Preprocess((0.5,), (0.0,), 255.0)
    with pytest.raises(MBSError, match="no preprocess preset given"):  # no default here: resolve_normalisation decides
        make_preprocess(None)
    assert make_preprocess("ImageNet") == PRESETS["imagenet"]


def test_grayscale_model_averages_rgb_statistics(tmp_path):
    _solid(tmp_path / "g.png", color=128, mode="L")
    x = _all(open_calibration(tmp_path, shape=(1, 1, 8, 8), layout="NCHW"))
    expected = (128 / 255 - np.mean([.485, .456, .406])) / np.mean([.229, .224, .225])
    assert x.shape == (1, 1, 8, 8)
    np.testing.assert_allclose(x[0, 0, 0, 0], expected, rtol=1e-5)


def test_mean_count_mismatch_errors():
    pre = Preprocess((0.1, 0.2), (1.0,), 255.0, name="two")
    with pytest.raises(MBSError, match="2 mean values but the model has 3 channels"):
        open_calibration(None, synthetic=1, shape=NCHW, layout="NCHW", preprocess=pre)


# ---------------------------------------------------------------- image folders


def test_folder_recursion_sorting_and_extensions(tmp_path):
    for i, name in enumerate(["b/z.PNG", "a.jpg", "b/a.bmp", "c/d/e.JpEg", "m.webp"]):
        _solid(tmp_path / name, color=(i * 40, 0, 0))
    (tmp_path / "notes.txt").write_text("not an image")
    _solid(tmp_path / ".hidden" / "h.png")
    _solid(tmp_path / "._a.png")
    cal = open_calibration(tmp_path, shape=NCHW, layout="NCHW", preprocess=PRESETS["raw"],
                           batch_size=2)
    assert len(cal) == 5 and cal.total == 5
    batches = list(cal.batches())
    assert [len(b) for b in batches] == [2, 2, 1]
    reds = np.round(np.concatenate(batches)[:, 0, 0, 0] * 255).astype(int).tolist()
    # sorted: a.jpg, b/a.bmp, b/z.PNG, c/d/e.JpEg, m.webp  (jpeg is lossy: allow slack)
    assert np.allclose(reds, [40, 80, 0, 120, 160], atol=3)
    info = cal.info
    assert isinstance(info, CalibrationInfo)
    assert info.images == 5 and info.skipped == 0 and not info.synthetic
    assert "image folder" in info.source and "(5 images)" in info.source


def test_resize_and_centre_crop_non_square(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high
    img[:, :6] = img[:, -6:] = 255  # white side bands: cropped away
    img[:, 18:22] = (255, 0, 0)  # red centre band: kept, in the middle
    Image.fromarray(img).save(tmp_path / "wide.png")
    x = _all(open_calibration(tmp_path / "wide.png", shape=(1, 3, 10, 12), layout="NCHW",
                              preprocess=PRESETS["raw"]))
    assert x.shape == (1, 3, 10, 12)  # 20x40 -> 12x24 -> centre 10x12
    assert x[0, 1:].max() < 0.02  # no white left in green/blue
    red = x[0, 0].mean(axis=0)
    assert red[5:7].min() > 0.5 and red[:3].max() < 0.02 and red[-3:].max() < 0.02


def test_nhwc_and_nchw_targets_from_same_folder(tmp_path):
    _solid(tmp_path / "a.png", size=(16, 12))
    _solid(tmp_path / "b.png", size=(9, 9), color=(1, 2, 3))
    nchw = _all(open_calibration(tmp_path, shape=("N", 3, 8, 8), layout="NCHW"))
    nhwc = _all(open_calibration(tmp_path, shape=(None, 8, 8, 3), layout="nhwc"))
    assert nchw.shape == (2, 3, 8, 8) and nhwc.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(nchw.transpose(0, 2, 3, 1), nhwc)


def test_unreadable_files_are_skipped_and_counted(tmp_path, caplog):
    _solid(tmp_path / "good.png")
    (tmp_path / "bad1.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "bad2.png").write_bytes(b"")
    cal = open_calibration(tmp_path, shape=NCHW, layout="NCHW")
    with caplog.at_level(logging.WARNING, logger="onnxmbs.data.calibration"):
        assert _all(cal).shape == (1, 3, 8, 8)
    assert cal.info.images == 1 and cal.info.skipped == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 2" in warnings[0].getMessage()


def test_all_unreadable_folder_errors(tmp_path):
    (tmp_path / "bad1.jpg").write_bytes(b"junk")
    (tmp_path / "bad2.png").write_bytes(b"junk")
    msg = _error("could be read", tmp_path, shape=NCHW, layout="NCHW")
    assert "2 image files" in msg and "bad1.jpg" in msg


def test_max_images_caps_total(tmp_path):
    for i in range(7):
        _solid(tmp_path / f"{i}.png")
    cal = open_calibration(tmp_path, shape=NCHW, layout="NCHW", max_images=5, batch_size=2)
    assert len(cal) == 5
    assert [len(b) for b in cal.batches()] == [2, 2, 1]
    assert cal.info.images == 5


# ---------------------------------------------------------------- arrays


def test_npy_nchw_transposed_to_nhwc(tmp_path):
    arr = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", arr)
    cal = open_calibration(tmp_path / "x.npy", shape=NHWC, layout="NHWC", batch_size=4)
    x = _all(cal)
    np.testing.assert_array_equal(x, arr.transpose(0, 2, 3, 1))
    assert "NCHW" in cal.info.source and cal.info.images == 5


def test_uint8_arrays_get_preprocess_float_arrays_do_not(tmp_path):
    pixels = np.empty((2, 8, 8, 3), np.uint8)
    pixels[:] = PIXEL
    u8 = _all(open_calibration(pixels, shape=NCHW, layout="NCHW", preprocess=PRESETS["raw"]))
    np.testing.assert_allclose(u8[0, :, 0, 0], np.array(PIXEL) / 255, rtol=1e-6)
    floats = pixels.astype(np.float64) / 255
    fl = _all(open_calibration(floats, shape=NCHW, layout="NCHW"))  # imagenet, but skipped
    assert fl.dtype == np.float32
    np.testing.assert_allclose(fl, floats.transpose(0, 3, 1, 2), rtol=1e-6)


def test_float_arrays_that_look_like_raw_pixels_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="onnxmbs.data.calibration"):
        _all(open_calibration(np.full((2, 3, 8, 8), 200.0), shape=NCHW, layout="NCHW"))
    assert "raw 0..255 pixels" in caplog.text


def test_single_image_arrays_and_grayscale_batches(tmp_path):
    chw = np.ones((3, 8, 8), np.float32)
    np.save(tmp_path / "one.npy", chw)
    assert _all(open_calibration(tmp_path / "one.npy", shape=NHWC, layout="NHWC")).shape == (1, 8, 8, 3)
    nhw = np.zeros((4, 8, 8), np.float32)  # MNIST-style batch for a 1-channel model
    assert _all(open_calibration(nhw, shape=(1, 1, 8, 8), layout="NCHW")).shape == (4, 1, 8, 8)


def test_npz_key_selection(tmp_path):
    x = np.full((3, 3, 8, 8), 0.5, np.float32)
    np.savez(tmp_path / "a.npz", labels=np.arange(3), x=x)
    np.savez(tmp_path / "b.npz", y=np.arange(3), images=x + 1)
    np.savez_compressed(tmp_path / "c.npz", whatever=x + 2)
    np.savez(tmp_path / "d.npz", a=x, b=x)
    np.savez(tmp_path / "f.npz", x=np.asfortranarray(x + 3))  # not row-readable: loaded whole
    for name, value in (("a", 0.5), ("b", 1.5), ("c", 2.5), ("f", 3.5)):
        cal = open_calibration(tmp_path / f"{name}.npz", shape=NCHW, layout="NCHW", batch_size=2)
        out = _all(cal)
        assert out.shape == (3, 3, 8, 8) and np.all(out == value)
        assert cal.info.source.startswith("npz file")
    msg = _error("images/x/data/x_train", tmp_path / "d.npz", shape=NCHW, layout="NCHW")
    assert "['a', 'b']" in msg


def test_npz_uint8_nhwc_streams_to_nchw(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    np.savez_compressed(tmp_path / "p.npz", x=pixels)
    out = _all(open_calibration(tmp_path / "p.npz", shape=NCHW, layout="NCHW", batch_size=2))
    expected = PRESETS["imagenet"].apply(pixels).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


# ---------------------------------------------------------------- iterables


def test_iterable_of_single_images_rebatched():
    images = [np.full((8, 8, 3), i, np.float32) for i in range(5)]
    cal = open_calibration(images, shape=NCHW, layout="NCHW", batch_size=2)
    batches = list(cal.batches())
    assert [b.shape for b in batches] == [(2, 3, 8, 8), (2, 3, 8, 8), (1, 3, 8, 8)]
    assert np.concatenate(batches)[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4]
    assert cal.info.source == "python iterable" and cal.info.images == 5
    with pytest.raises(TypeError):
        len(cal)
    assert cal.total is None


def test_generator_of_batches_rebatched_and_pairs():
    def gen():
        for n in (3, 5, 1):
            yield np.zeros((n, 3, 8, 8), np.float32), np.zeros(n)  # (images, labels) pairs
    cal = open_calibration(gen(), shape=NHWC, layout="NHWC", batch_size=4, max_images=8)
    assert [b.shape for b in cal.batches()] == [(4, 8, 8, 3), (4, 8, 8, 3)]
    assert cal.info.images == 8
    cal = open_calibration(gen(), shape=NHWC, layout="NHWC", batch_size=4)
    assert [len(b) for b in cal.batches()] == [4, 4, 1]
    with pytest.raises(MBSError, match="fresh generator"):
        list(cal.batches())  # the generator is spent


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_flagged():
    a = open_calibration(None, synthetic=5, shape=NCHW, layout="NCHW", seed=3, batch_size=2)
    b = open_calibration(None, synthetic=5, shape=NCHW, layout="NCHW", seed=3, batch_size=4)
    c = open_calibration(None, synthetic=5, shape=NCHW, layout="NCHW", seed=4)
    xa, xb, xc = _all(a), _all(b), _all(c)
    np.testing.assert_array_equal(xa, xb)  # independent of batch size too
    assert not np.array_equal(xa, xc)
    assert xa.shape == (5, 3, 8, 8) and xa.dtype == np.float32
    lo, hi = (0 - .485) / .229, (1 - .406) / .225
    assert lo - 1e-5 <= xa.min() and xa.max() <= hi + 1e-5
    assert a.info.synthetic and a.info.images == 5 and len(a) == 5
    assert a.info.source == "synthetic noise (5 images, seed 3)"


# ---------------------------------------------------------------- streaming


def test_npy_streams_with_mmap(tmp_path, monkeypatch):
    arr = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.uint8,
                                    shape=(2000, 3, 32, 32))
    arr[:] = 7
    arr.flush()
    del arr
    calls = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    tracemalloc.start()
    cal = open_calibration(tmp_path / "big.npy", shape=(1, 3, 32, 32), layout="NCHW", batch_size=16)
    assert calls == [{"mmap_mode": "r"}] and len(cal) == 2000
    count = sum(1 for _ in cal.batches())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == 125 and cal.info.images == 2000
    assert peak < 2_000_000  # the file is 6 MB of uint8, 24 MB as float32


def test_npz_streams_row_chunks(tmp_path):
    np.savez_compressed(tmp_path / "big.npz", x=np.zeros((2000, 3, 32, 32), np.uint8))
    cal = open_calibration(tmp_path / "big.npz", shape=(1, 3, 32, 32), layout="NCHW", batch_size=16)
    tracemalloc.start()
    count = sum(1 for _ in cal.batches())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == 125 and peak < 2_000_000


# ---------------------------------------------------------------- errors


def test_error_messages(tmp_path):
    _error("not found", tmp_path / "missing", shape=NCHW, layout="NCHW")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.txt").write_text("")
    msg = _error("no image files", tmp_path / "empty", shape=NCHW, layout="NCHW")
    assert ".jpg" in msg and ".png" in msg and "recursively" in msg
    _error("choose one", tmp_path, synthetic=3, shape=NCHW, layout="NCHW")
    _error("no calibration data.*--synthetic", None, shape=NCHW, layout="NCHW")
    _error("max_images", None, synthetic=3, max_images=0, shape=NCHW, layout="NCHW")
    _error("batch_size", None, synthetic=3, batch_size=0, shape=NCHW, layout="NCHW")
    _error("layout", None, synthetic=3, shape=NCHW, layout="CHW")
    _error("dynamic", None, synthetic=3, shape=(1, 3, "h", "w"), layout="NCHW")
    (tmp_path / "notes.txt").write_text("")
    _error("unsupported", tmp_path / "notes.txt", shape=NCHW, layout="NCHW")


def test_array_shape_errors(tmp_path):
    msg = _error("model expects", np.zeros((10, 3, 28, 28), np.float32),
                 shape=(1, 3, 32, 32), layout="NCHW")
    assert "model expects (3, 32, 32) NCHW, got" in msg and "(10, 3, 28, 28)" in msg
    np.save(tmp_path / "c.npy", np.zeros((10, 4, 8, 8), np.uint8))
    msg = _error("model expects", tmp_path / "c.npy", shape=NHWC, layout="NHWC")
    assert "(8, 8, 3) NHWC" in msg and "(10, 4, 8, 8)" in msg
    msg = _error("rank 2", [np.zeros((8, 8), np.float32)], shape=NCHW, layout="NCHW")
    assert "CHW" in msg
    _error("rank 5", np.zeros((1, 1, 3, 8, 8)), shape=NCHW, layout="NCHW")
    _error("dtype int64", [np.zeros((3, 8, 8), np.int64)], shape=NCHW, layout="NCHW")
    _error("no images", [], shape=NCHW, layout="NCHW")
    _error("1- or 3-channel", tmp_path, shape=(1, 4, 8, 8), layout="NCHW",
           preprocess=PRESETS["raw"])
