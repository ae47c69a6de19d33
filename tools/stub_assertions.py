"""Exact types the stubs (csoftmax/__init__.pyi) promise, checked by ``mypy --strict``
(tools/check_wheel.sh runs it against the installed wheel).  Not meant to be run."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from typing_extensions import assert_type

import csoftmax

f16: NDArray[np.float16] = np.zeros((2, 3), np.float16)
f32: NDArray[np.float32] = np.zeros((2, 3), np.float32)
f64: NDArray[np.float64] = np.zeros((2, 3))
i64: NDArray[np.int64] = np.zeros((2, 3), np.int64)
labels: NDArray[np.int64] = np.zeros(2, np.int64)

assert_type(csoftmax.softmax(f32), NDArray[np.float32])
assert_type(csoftmax.softmax(f16, axis=(0, 1)), NDArray[np.float16])
assert_type(csoftmax.log_softmax(f64, None, num_threads=2), NDArray[np.float64])
assert_type(csoftmax.softmax(i64), NDArray[np.float64])
assert_type(csoftmax.softmax([[1.0, 2.0]]), NDArray[np.floating[Any]])
assert_type(csoftmax.softmax(f32, out=f32), NDArray[np.float32])

assert_type(csoftmax.logsumexp(f32, axis=None), np.float32)
assert_type(csoftmax.logsumexp(f32), NDArray[np.float32] | np.float32)
assert_type(csoftmax.logsumexp(i64, None), np.floating[Any])
assert_type(csoftmax.logsumexp(f64, keepdims=True), NDArray[np.float64] | np.float64)
assert_type(csoftmax.logsumexp(f64, b=f32), NDArray[np.floating[Any]] | np.floating[Any])
assert_type(csoftmax.logsumexp(f32, return_sign=True),
            tuple[NDArray[np.float32] | np.float32, NDArray[np.float32] | np.float32])

assert_type(csoftmax.softmax_backward(f32, f32), NDArray[np.float32])
assert_type(csoftmax.log_softmax_backward(f64, f64, out=f64), NDArray[np.float64])

assert_type(csoftmax.cross_entropy(f32, labels), np.float32)
assert_type(csoftmax.cross_entropy(f64, labels, reduction="sum"), np.float64)
assert_type(csoftmax.cross_entropy(f32, labels, reduction="none"),
            NDArray[np.float32] | np.float32)
assert_type(csoftmax.cross_entropy_with_grad(f32, labels, weight=[1.0, 2.0, 3.0]),
            tuple[np.float32, NDArray[np.float32]])
assert_type(csoftmax.cross_entropy_with_grad([[0.0, 1.0]], [1]),
            tuple[np.floating[Any], NDArray[np.floating[Any]]])

assert_type(csoftmax.get_num_threads(), int)
assert_type(csoftmax.set_num_threads(None), None)
assert_type(csoftmax.config(), dict[str, Any])
assert_type(csoftmax.BACKEND, Literal["cython", "numpy"])
assert_type(csoftmax.__version__, str)
