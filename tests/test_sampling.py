"""Sampled im2col rows against a loop over the definition of a 2-D convolution's input window."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxmbs.compact.sampling import conv_geometry, conv_rows, sample_positions


def window(x: np.ndarray, image: int, oy: int, ox: int, *, kernel, stride, dilation, pads) -> np.ndarray:
    """x's (C, kh, kw) window read by output (oy, ox): zero where a tap falls in the padding."""
    c, h, w = x.shape[1:]
    out = np.zeros((c, *kernel), x.dtype)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            y = oy * stride[0] + i * dilation[0] - pads[0]
            q = ox * stride[1] + j * dilation[1] - pads[1]
            if 0 <= y < h and 0 <= q < w:
                out[:, i, j] = x[image, :, y, q]
    return out


@pytest.mark.parametrize("kernel,stride,dilation,pads", [
    ((3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
    ((3, 3), (2, 2), (1, 1), (1, 1, 1, 1)),
    ((1, 1), (1, 1), (1, 1), (0, 0, 0, 0)),
    ((3, 5), (2, 1), (2, 1), (2, 0, 1, 3)),
    ((7, 7), (2, 2), (1, 1), (3, 3, 3, 3)),
])
def test_conv_rows_are_the_windows_each_output_reads(kernel, stride, dilation, pads):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 11, 9)).astype(np.float32)
    out_hw = tuple((x.shape[2 + d] + pads[d] + pads[d + 2] - dilation[d] * (kernel[d] - 1) - 1) // stride[d] + 1
                   for d in (0, 1))
    node = onnx.helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=list(kernel), strides=list(stride),
                                 dilations=list(dilation), pads=list(pads))
    geom = conv_geometry(node, x.shape[2:], out_hw, kernel)
    where = sample_positions(rng, 3, *out_hw, 7)
    got = conv_rows(x, geom, where)
    assert got.shape == (len(where), 4, *kernel)
    for r in range(len(where)):
        want = window(x, where.image[r], where.a[r], where.b[r], kernel=kernel, stride=stride, dilation=dilation,
                      pads=pads)
        np.testing.assert_array_equal(got[r], want)


def test_same_upper_pads_put_the_odd_pixel_at_the_end():
    """auto_pad SAME_UPPER, 4 -> 2 at stride 2 with a 3x3 kernel: total pad 1, all of it bottom/right."""
    node = onnx.helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")
    geom = conv_geometry(node, (4, 4), (2, 2), (3, 3))
    assert geom.pads == (0, 0, 1, 1)
