"""The per-position losses of a reduced cross-entropy live in scratch memory that each calling
thread keeps from call to call (src/scratch.hpp): a call that grows it, one above its size
limit, and calls from several Python threads at once must each sum exactly their own losses,
on the C fast path and the full path, float and 16-bit logits, rows and a middle class axis."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from arrays import HAVE_CYTHON, assert_bitwise_equal, make_rng

from csoftmax import _api
from csoftmax._dispatch import FRONTENDS

pytestmark = pytest.mark.skipif(not HAVE_CYTHON, reason="the scratch is the compiled kernels'")

try:
    import ml_dtypes
except ImportError:  # pragma: no cover - optional
    ml_dtypes = None

#: (shape, class axis, dtype): rows, short rows, a middle axis; the sizes differ so that the
#: calls below grow the thread's scratch, and shrink back, in every order
CASES = [
    ((300, 7), -1, np.float64),
    ((5000, 40), -1, np.float32),
    ((20000, 3), -1, np.float64),
    ((3, 5, 700), 1, np.float32),
    ((2, 21, 64, 96), 1, np.float64),
    ((600, 33), -1, np.float16),
    ((4, 6, 900), 1, np.float16),
]


def _frontends():
    fe = FRONTENDS["cython"]
    return {"fast": fe, "full": _api.Frontend(fe.kernels, "full", fast=False)}


def _problem(shape, axis, dtype):
    rng = make_rng(f"scratch {shape} {np.dtype(dtype).name}")
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    n_classes = shape[axis]
    positions = tuple(s for i, s in enumerate(shape) if i != axis % len(shape))
    t = rng.integers(0, n_classes, positions)
    t.flat[::7] = -100  # ignored positions: a "mean" divides by the others
    return x, t


def _call(fe, job):
    shape, axis, dtype, reduction, grad = job
    x, t = _problem(shape, axis, dtype)
    if grad:
        return fe.cross_entropy_with_grad(x, t, axis=axis, reduction=reduction, num_threads=2)
    return fe.cross_entropy(x, t, axis=axis, reduction=reduction, num_threads=2)


def _jobs():
    return [(shape, axis, dtype, reduction, grad)
            for shape, axis, dtype in CASES for reduction in ("mean", "sum")
            for grad in (False, True)]


@pytest.mark.parametrize("path", ["fast", "full"])
def test_reduced_losses_match_their_positions(path):
    """Each reduction equals the sum of the same call's per-position losses (float64 logits:
    those are the kernels' float64 values), whichever calls came before it: sizes growing
    and shrinking reuse one scratch."""
    fe = _frontends()[path]
    for shape, axis, dtype in CASES + CASES[::-1]:
        if dtype != np.float64:
            continue
        x, t = _problem(shape, axis, dtype)
        none = fe.cross_entropy(x, t, axis=axis, reduction="none")
        total = fe.cross_entropy(x, t, axis=axis, reduction="sum")
        np.testing.assert_allclose(total, np.add.reduce(none.reshape(-1)), rtol=1e-13)


def test_concurrent_reduced_calls_from_python_threads():
    """Calls from several Python threads at once, each growing and reusing its own thread's
    scratch: every result bitwise the one computed alone, on both paths."""
    frontends = _frontends()
    jobs = [(path, job) for path in frontends for job in _jobs()]
    expected = {job: _call(frontends[job[0]], job[1]) for job in jobs}

    def run(job):
        return job, _call(frontends[job[0]], job[1])

    with ThreadPoolExecutor(max_workers=6) as pool:
        for job, result in pool.map(run, jobs[::-1] + jobs):
            want = expected[job]
            if isinstance(want, tuple):  # (loss, grad)
                assert_bitwise_equal(result[1], want[1], f"{job} gradient from a thread")
                result, want = result[0], want[0]
            assert_bitwise_equal(result, want, f"{job} from a Python thread")


@pytest.mark.parametrize("path", ["fast", "full"])
def test_call_above_the_scratch_limit(path):
    """More positions than a thread keeps room for (ROW_SCRATCH_MAX = 2**21): that call's
    buffer is its own, and the calls around it still sum their own losses."""
    fe = _frontends()[path]
    small_x, small_t = _problem((3, 5, 700), 1, np.float64)
    before = fe.cross_entropy(small_x, small_t, axis=1, reduction="sum")
    rng = make_rng("scratch limit")
    x = rng.standard_normal((1, 2, 2**21 + 5)).astype(np.float32)
    t = rng.integers(0, 2, (1, 2**21 + 5))
    none = fe.cross_entropy(x, t, axis=1, reduction="none").astype(np.float64)
    total = fe.cross_entropy(x, t, axis=1, reduction="sum")
    np.testing.assert_allclose(total, np.add.reduce(none.reshape(-1)), rtol=1e-6)
    assert fe.cross_entropy(small_x, small_t, axis=1, reduction="sum") == before


@pytest.mark.skipif(ml_dtypes is None, reason="needs ml_dtypes")
def test_bfloat16_reductions_reuse_the_scratch():
    """16-bit logits: reductions after calls of other sizes equal the float32 logits' losses
    (bfloat16 values are exact in float32), fast and full path alike."""
    for path, fe in _frontends().items():
        for shape, axis in (((700, 9), -1), ((2, 7, 3000), 1), ((50, 9), -1)):
            x, t = _problem(shape, axis, np.float32)
            xb = x.astype(ml_dtypes.bfloat16)
            want = fe.cross_entropy(xb.astype(np.float32), t, axis=axis, reduction="sum")
            got = fe.cross_entropy(xb, t, axis=axis, reduction="sum")
            np.testing.assert_allclose(float(got), float(want), rtol=1e-2, err_msg=path)
