"""Arrays past the 32-bit limits (issue 6): opt-in, ``python -m pytest -m huge tests/test_huge.py``
(or ``CSOFTMAX_HUGE=1``); skipped by default and where memory is short.

* ``(2**16 + 1) x 2**15`` float32: 2**31 + 2**15 elements (8 GiB), so the last row starts at
  element 2**31 -- a 32-bit element offset anywhere would wrap there.  Every function runs
  in place (``out=x``: no second 8 GiB array); rows at the start, the middle, around 2**31 and
  at the end are checked against a float64 reference, and every row is checked for sanity
  (softmax rows sum to 1, logsumexp and the loss against a chunked float64 reference).
* One row of more than 2**31 bytes (float32 and float64), and one row of more than 2**31
  elements (float32, 8 GiB): a 32-bit byte or element count inside a row would break there.

Values are a deterministic function of the row index (``fill``), so the reference is
recomputed from the row number after the input was overwritten in place.
"""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest
from arrays import make_rng

import csoftmax

pytestmark = pytest.mark.huge

GiB = 1 << 30
ROWS, COLS = 2**16 + 1, 2**15
CHECK_ROWS = (0, 1, 2**15, 2**16 - 1, 2**16)  # 2**16 * 2**15 = 2**31: the last row's offset
CHUNK = 1024  # rows per chunk of the float64 reference (256 MiB)


def _available():
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 0


@pytest.fixture(autouse=True)
def _opt_in(request):
    markexpr = request.config.getoption("-m", default="") or ""
    if "huge" not in markexpr and os.environ.get("CSOFTMAX_HUGE") != "1":
        pytest.skip("opt-in: -m huge or CSOFTMAX_HUGE=1 (needs > 8 GiB of memory)")


def need(nbytes):
    have = _available()
    if have < nbytes * 1.15 + GiB:
        pytest.skip(f"needs {nbytes / GiB:.1f} GiB free, {have / GiB:.1f} GiB available")


# ---------------------------------------------------------------------------------------------
# the 8 GiB matrix

_BASE = []


def fill_rows(r0, r1, dtype=np.float32):
    """Rows r0:r1 of the matrix: row i is base[i % 127] * (1 + (i % 61) / 61), so rows differ
    (rows 0 and 2**16, for instance) and the pattern does not repeat for 7747 rows."""
    if not _BASE:
        _BASE.append((make_rng("huge").standard_normal((127, COLS)) * 3).astype(np.float32))
    i = np.arange(r0, r1)
    scale = (1 + (i % 61) / 61).astype(np.float32)[:, None]
    return (_BASE[0][i % 127] * scale).astype(dtype)


def labels_for(n_rows, n_classes):
    i = np.arange(n_rows)
    labels = (i * 7919) % n_classes
    labels[::97] = -100  # ignored rows too
    return labels


@pytest.fixture
def matrix():
    need(ROWS * COLS * 4)
    x = np.empty((ROWS, COLS), np.float32)
    for r0 in range(0, ROWS, CHUNK):
        x[r0: r0 + CHUNK] = fill_rows(r0, min(ROWS, r0 + CHUNK))
    assert x.size > 2**31
    yield x
    del x
    gc.collect()


def ref_softmax(x64):
    e = np.exp(x64 - x64.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def ref_log_softmax(x64):
    s = x64 - x64.max(axis=-1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=-1, keepdims=True))


def ref_logsumexp(x64):
    m = x64.max(axis=-1)
    return m + np.log(np.exp(x64 - m[..., None]).sum(axis=-1))


def assert_rows(got, want, what, atol=2e-6, rtol=2e-5):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol,
                               err_msg=what)


def test_softmax_in_place(matrix):
    r = csoftmax.softmax(matrix, out=matrix)
    assert r is matrix
    for i in CHECK_ROWS:
        assert_rows(matrix[i], ref_softmax(fill_rows(i, i + 1, np.float64))[0], f"row {i}")
    for r0 in range(0, ROWS, CHUNK):  # every row: a distribution
        s = matrix[r0: r0 + CHUNK].sum(axis=1, dtype=np.float64)
        assert np.all(np.abs(s - 1) < 1e-4), f"rows {r0}..: sums {s.min()} .. {s.max()}"


def test_log_softmax_in_place(matrix):
    csoftmax.log_softmax(matrix, out=matrix)
    for i in CHECK_ROWS:
        assert_rows(matrix[i], ref_log_softmax(fill_rows(i, i + 1, np.float64))[0],
                    f"row {i}", atol=2e-5)
    for r0 in range(0, ROWS, CHUNK):
        lse = np.log(np.exp(matrix[r0: r0 + CHUNK].astype(np.float64)).sum(axis=1))
        assert np.all(np.abs(lse) < 1e-4), f"rows {r0}..: not normalised"


def test_logsumexp_every_row(matrix):
    r = csoftmax.logsumexp(matrix)
    assert r.shape == (ROWS,) and r.dtype == np.float32
    for r0 in range(0, ROWS, CHUNK):
        want = ref_logsumexp(fill_rows(r0, min(ROWS, r0 + CHUNK), np.float64))
        assert_rows(r[r0: r0 + CHUNK], want, f"rows {r0}..", atol=1e-5)


def test_softmax_backward_in_place(matrix):
    """grad_output = output = out: one 8 GiB array for the three operands."""
    csoftmax.softmax_backward(matrix, matrix, out=matrix)
    for i in CHECK_ROWS:
        a = fill_rows(i, i + 1, np.float64)[0]
        want = a * (a - (a * a).sum())
        assert_rows(matrix[i], want, f"row {i}", atol=1e-3 * np.abs(a).max(), rtol=1e-4)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cross_entropy_with_grad_in_place(matrix, reduction):
    labels = labels_for(ROWS, COLS)
    loss, grad = csoftmax.cross_entropy_with_grad(matrix, labels, out=matrix,
                                                  label_smoothing=0.1, reduction=reduction)
    assert grad is matrix
    counted = labels != -100
    eps, c = 0.1, COLS
    divisor = counted.sum() if reduction == "mean" else 1.0
    row_losses = np.zeros(ROWS)
    for r0 in range(0, ROWS, CHUNK):
        r1 = min(ROWS, r0 + CHUNK)
        logp = ref_log_softmax(fill_rows(r0, r1, np.float64))
        t = np.maximum(labels[r0:r1], 0)
        nll = -logp[np.arange(r1 - r0), t]
        smooth = -logp.mean(axis=1)
        row_losses[r0:r1] = np.where(counted[r0:r1], (1 - eps) * nll + eps * smooth, 0.0)
    if reduction == "mean":
        np.testing.assert_allclose(float(loss), row_losses.sum() / divisor, rtol=1e-5)
    else:
        assert_rows(loss, row_losses, "row losses", atol=1e-4)
    for i in CHECK_ROWS + (97 * 300,):
        x64 = fill_rows(i, i + 1, np.float64)[0]
        y = np.full(c, eps / c)
        if counted[i]:
            y[labels[i]] += 1 - eps
            want = (ref_softmax(x64) * y.sum() - y) / divisor
        else:
            want = np.zeros(c)
        assert_rows(grad[i], want, f"grad row {i}", atol=1e-6 / divisor)


def test_cross_entropy_every_row(matrix):
    labels = labels_for(ROWS, COLS)
    loss = csoftmax.cross_entropy(matrix, labels, reduction="none")
    for r0 in range(0, ROWS, CHUNK):
        r1 = min(ROWS, r0 + CHUNK)
        logp = ref_log_softmax(fill_rows(r0, r1, np.float64))
        t = labels[r0:r1]
        want = np.where(t == -100, 0.0, -logp[np.arange(r1 - r0), np.maximum(t, 0)])
        assert_rows(loss[r0:r1], want, f"rows {r0}..", atol=1e-4)


# ---------------------------------------------------------------------------------------------
# one very long row


def long_row(n, dtype):
    """A row of n values: a smooth pattern plus one large value near the end."""
    x = np.empty((1, n), dtype)
    step = 1 << 24
    for k0 in range(0, n, step):
        k = np.arange(k0, min(n, k0 + step))
        x[0, k0: k0 + len(k)] = np.sin(k * 1e-3) * 4
    x[0, n - 5] = 30.0  # the max, past every 32-bit boundary
    return x


def long_row_reference(n, dtype):
    """(max, sum of exp(x - max)) of the row, in float64, chunk by chunk."""
    step = 1 << 24
    m = 30.0
    s = 0.0
    for k0 in range(0, n, step):
        k = np.arange(k0, min(n, k0 + step))
        v = (np.sin(k * 1e-3) * 4).astype(dtype).astype(np.float64)
        if k0 <= n - 5 < k0 + step:
            v[n - 5 - k0] = 30.0
        s += np.exp(v - m).sum()
    return m, s


@pytest.mark.parametrize(("n", "dtype"), [
    (2**29 + 2**20 + 3, np.float32),  # 2 GiB + 4 MiB + 12 bytes
    (2**28 + 5, np.float64),  # 2 GiB + 40 bytes
    (2**31 + 7, np.float32),  # 2**31 + 7 elements, 8 GiB
], ids=["f32-over-2GiB", "f64-over-2GiB", "f32-over-2**31-elements"])
def test_one_long_row(n, dtype):
    need(n * np.dtype(dtype).itemsize)
    x = long_row(n, dtype)
    assert x.nbytes > 2**31
    m, s = long_row_reference(n, dtype)
    lse = m + np.log(s)
    rtol = 1e-5 if dtype == np.float32 else 1e-9
    assert abs(float(csoftmax.logsumexp(x)[0]) - lse) <= rtol * abs(lse)
    loss = csoftmax.cross_entropy(x, np.array([n - 5]))
    np.testing.assert_allclose(float(loss), lse - 30.0, rtol=1e-3, atol=rtol * abs(lse))
    csoftmax.softmax(x, out=x)
    probe = np.array([0, 1, 2**20, 2**28 - 1, 2**28, n // 2, n - 6, n - 5, n - 1])
    probe = probe[probe < n]
    k = probe.astype(np.float64)
    v = (np.sin(k * 1e-3) * 4).astype(dtype).astype(np.float64)
    v[probe == n - 5] = 30.0
    np.testing.assert_allclose(x[0, probe].astype(np.float64), np.exp(v - m) / s, rtol=rtol * 10,
                               atol=1e-12)
    total = sum(float(x[0, k0: k0 + (1 << 24)].sum(dtype=np.float64))
                for k0 in range(0, n, 1 << 24))
    assert abs(total - 1.0) < 1e-4
    del x
    gc.collect()
