"""The short-row tiles: each row's results, to the bit, wherever the row sits in a tile.

Rows shorter than 256 bytes go a tile of rows at a time into transposed blocks, rows as the
vector lanes.  On AVX2 and AVX-512 the tile's rows go in and out of the blocks by 4x4
transposes, a group of 8 (float32) or 4 (float64) rows four columns at a time, the last
four columns overlapping the ones before where the width is not a multiple of 4; on the
way in the transposes' registers give each row's maximum and target logit, on the way out
softmax's products, log_softmax's shifts and the cross-entropy gradient.  The rows after
the last group go element by element, and the baseline build walks the blocks.  So a row
alone (no group at all), the same row in a group, and the array shifted by one row (other
groups) must give the same bits.
"""

from __future__ import annotations

import numpy as np
import pytest
from arrays import FLOAT_DTYPES, FLOAT_IDS, assert_bitwise_equal, make_rng, normal

float_dtypes = pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)

CE_OPTIONS = dict(reduction="none", z_loss=1e-3, return_z_loss=True, return_token_accuracy=True)


def tile_inputs(c, dtype, rng):
    """37 rows (groups of 8 and 4 and a part of one) with the special rows the tile's
    statistics must get right: NaN, +inf, a row of -inf, a tie for the maximum at the
    target, signed zeros, and labels in the last, overlapping columns and ignored."""
    n = 37
    x = normal((n, c), rng) * 3
    t = rng.integers(0, c, n)
    t[2::5] = c - 1                          # the columns a second transpose goes over again
    t[3::7] = max(c - 3, 0)
    t[[4, 20]] = -100
    x[6, c // 2] = np.nan
    x[9, c - 1] = np.inf
    x[13] = -np.inf
    x[17, [0, c - 1]] = 5.0 + x[17].max()   # a tie for the maximum, the target at the second
    t[17] = c - 1
    x[25] = 0.0
    x[25, 1::2] = -0.0                       # signed zeros: which one is the maximum
    x = x.astype(dtype)
    return x, t


def row_by_row(fn, x, *rest):
    """fn of each row alone, the rows' results concatenated."""
    return [fn(x[i:i + 1], *(r[i:i + 1] for r in rest)) for i in range(len(x))]


@pytest.mark.parametrize("c", [4, 5, 6, 7, 8, 10, 13, 31, 47, 63])
@float_dtypes
def test_short_row_tiles_give_each_row_its_own_bits(kernel_frontend, c, dtype):
    x, t = tile_inputs(c, dtype, make_rng("short-row-tiles", c, dtype))
    fe = kernel_frontend
    for name in ("softmax", "log_softmax"):
        fn = getattr(fe, name)
        want = np.concatenate(row_by_row(fn, x))
        for threads in (1, 2):
            assert_bitwise_equal(fn(x, num_threads=threads), want, what=f"{name} ({threads})")
        assert_bitwise_equal(fn(x[1:]), want[1:], what=f"{name}, shifted by a row")
        in_place = x.copy()
        fn(in_place, out=in_place)
        assert_bitwise_equal(in_place, want, what=f"{name} in place")
    want = np.concatenate(row_by_row(lambda r: fe.logsumexp(r, axis=-1), x))
    assert_bitwise_equal(fe.logsumexp(x, axis=-1), want, what="logsumexp")
    assert_bitwise_equal(fe.logsumexp(x[1:], axis=-1), want[1:], what="logsumexp, shifted")

    alone = row_by_row(lambda r, s: fe.cross_entropy_with_grad(r, s, **CE_OPTIONS), x, t)
    for threads in (1, 2):
        got = fe.cross_entropy_with_grad(x, t, num_threads=threads, **CE_OPTIONS)
        loss_only = fe.cross_entropy(x, t, num_threads=threads, **CE_OPTIONS)
        for field in ("loss", "z_loss", "token_accuracy", "grad"):
            want = np.concatenate([getattr(a, field) for a in alone])
            assert_bitwise_equal(getattr(got, field), want, what=f"{field} ({threads})")
            if field != "grad":
                assert_bitwise_equal(getattr(loss_only, field), want, what=f"{field}, loss only")
    shifted = fe.cross_entropy_with_grad(x[1:], t[1:], **CE_OPTIONS)
    assert_bitwise_equal(shifted.grad, np.concatenate([a.grad for a in alone[1:]]),
                         what="gradient, shifted by a row")
    in_place = x.copy()
    fe.cross_entropy_with_grad(in_place, t, out=in_place, reduction="sum")
    plain = np.concatenate(row_by_row(
        lambda r, s: fe.cross_entropy_with_grad(r, s, reduction="sum")[1], x, t))
    assert_bitwise_equal(in_place, plain, what="gradient in place")
    # the values themselves: the tie and the signed zeros
    assert alone[17].token_accuracy[0] == 1.0 and np.isnan(alone[6].loss[0])
    assert np.all(alone[4].grad == 0) and alone[4].loss[0] == 0
