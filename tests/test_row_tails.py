"""The last, partial vector of a row (``src/rowtail.hpp``): rows whose length is not a
multiple of 16 end in a tail of 1-15 elements, read and written with masked loads and stores
on AVX2 and AVX-512 and element by element elsewhere.

The tail must give the bits of the element-wise code (AVX2 and AVX-512 agree bit for bit on
every forward function and the fused loss; the baseline build differs only by its unfused
multiply-adds), and must touch nothing past the end of the row: a row that ends at the end of
a readable page, followed by an unreadable one, is computed without a fault.
"""

from __future__ import annotations

import ctypes
import mmap
import sys

import numpy as np
import pytest
from arrays import FLOAT_DTYPES, FLOAT_IDS, KERNEL_FRONTENDS, assert_bitwise_equal, make_rng

float_dtypes = pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)

#: every tail length, on a short row (one block), a long one (several) and one of two chunks
WIDTHS = [64 + r for r in range(1, 16)] + [1000, 4099, 16384 + 37]


def _calls(x, t, g):
    """name -> callable(frontend): the calls whose rows go through the tail code."""
    return {
        "softmax": lambda fe: fe.softmax(x),
        "log_softmax": lambda fe: fe.log_softmax(x),
        "logsumexp": lambda fe: fe.logsumexp(x),
        "cross_entropy": lambda fe: fe.cross_entropy(x, t, reduction="none"),
        "cross_entropy_with_grad": lambda fe: fe.cross_entropy_with_grad(x, t, reduction="none"),
        "label_smoothing": lambda fe: fe.cross_entropy_with_grad(x, t, label_smoothing=0.2),
        "log_softmax_backward": lambda fe: fe.log_softmax_backward(g, fe.log_softmax(x)),
    }


def _bits(result):
    return tuple(np.asarray(r) for r in result) if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("n", WIDTHS)
@float_dtypes
def test_row_tails_same_bits_on_avx2_and_avx512(n, dtype):
    """The masked tails of AVX2 (maskload, blend) and AVX-512 (mask registers) give the
    same bits, and so those of the element-wise code they replaced (the same lanes)."""
    names = [name for name in ("cython-avx2", "cython-avx512") if name in KERNEL_FRONTENDS]
    if len(names) < 2:
        pytest.skip("AVX2 and AVX-512 kernels do not both run on this CPU")
    rng = make_rng("row-tails", n)
    rows = 7
    x = (rng.standard_normal((rows, n)) * 6).astype(dtype)
    x[1, -1] = -np.inf  # the tail's last element: exp 0, as the padding lanes
    x[2, -1] = 80.0     # the row maximum in the tail
    t = rng.integers(0, n, rows)
    t[2] = n - 1        # a target in the tail
    g = rng.standard_normal((rows, n)).astype(dtype)
    for what, call in _calls(x, t, g).items():
        got = [_bits(call(KERNEL_FRONTENDS[name])) for name in names]
        for a, b in zip(got[0], got[1]):
            assert_bitwise_equal(b, a, what=f"{what}, {n} columns")


def _guarded(nbytes):
    """A writable uint8 array of nbytes that ends where an unreadable page begins (Linux).
    The array holds the mapping: it is unmapped when the array goes."""
    page = mmap.PAGESIZE
    body = -(-nbytes // page) * page
    m = mmap.mmap(-1, body + page, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if libc.mprotect(ctypes.c_void_p(base + body), page, 0) != 0:  # PROT_NONE
        pytest.skip(f"mprotect failed: errno {ctypes.get_errno()}")
    return np.frombuffer(m, dtype=np.uint8, count=nbytes, offset=body - nbytes)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mprotect guard page (Linux)")
@pytest.mark.parametrize("name", [n for n in KERNEL_FRONTENDS if n.startswith("cython-")])
@pytest.mark.parametrize("n", [65, 71, 79, 1000])
@float_dtypes
def test_row_tail_touches_nothing_past_the_row(name, n, dtype):
    """Logits and outputs that end at an unreadable page: the tail's masked loads and stores
    leave the page alone (a fault would end the test run), and the results are those of
    the same values elsewhere in memory."""
    fe = KERNEL_FRONTENDS[name]
    rng = make_rng("row-tail-guard", n)
    rows, item = 3, np.dtype(dtype).itemsize
    values = (rng.standard_normal((rows, n)) * 4).astype(dtype)
    t = rng.integers(0, n, rows)
    x = _guarded(rows * n * item).view(dtype).reshape(rows, n)
    out = _guarded(rows * n * item).view(dtype).reshape(rows, n)
    for what, call, want in [
        ("softmax", lambda: fe.softmax(x, out=out), fe.softmax(values)),
        ("log_softmax", lambda: fe.log_softmax(x, out=out), fe.log_softmax(values)),
        ("logsumexp", lambda: fe.logsumexp(x), fe.logsumexp(values)),
        ("cross_entropy", lambda: fe.cross_entropy(x, t, reduction="none"),
         fe.cross_entropy(values, t, reduction="none")),
        ("gradient", lambda: fe.cross_entropy_with_grad(x, t, out=out)[1],
         fe.cross_entropy_with_grad(values, t)[1]),
        ("gradient in place", lambda: fe.cross_entropy_with_grad(x, t, out=x)[1],
         fe.cross_entropy_with_grad(values, t)[1]),
    ]:
        x[...] = values
        got = np.array(call(), copy=True)
        assert_bitwise_equal(got, want, what=f"{what} ({name}, {n} columns)")
