"""The matrix products of :mod:`csoftmax._linear` and the BLAS behind them:
SciPy's ``scipy.linalg.blas`` where it is installed (imported on first use),
else NumPy's ``matmul``; the BLAS's threads limited with ``threadpoolctl``;
SciPy's GEMM handed to the compiled kernels' fast path."""

from __future__ import annotations

import contextlib

import numpy as np

# Optional dependencies, imported on first use, never by ``import csoftmax``:
# SciPy's BLAS (the weight gradient's GEMM with beta = 1) costs 0.17 s to import
# and loads a second OpenBLAS whose thread pool then competes for the cores with
# every csoftmax call; threadpoolctl limits the BLAS's threads.
_MISSING = object()
_scipy_blas = _MISSING
_threadpoolctl = _MISSING


def _optional(name):
    """The module ``name`` (imported once), or None where it is not installed."""
    try:
        if name == "scipy_blas":
            from scipy.linalg import blas as module
        else:
            import threadpoolctl as module
    except ImportError:  # pragma: no cover - exercised where it is absent
        return None
    return module


#: Logits (and grad_input) of this many rows or fewer are a GEMV per row, not
#: one GEMM: SciPy's OpenBLAS (0.3.30, Zen 4) took 108 us for the GEMM of one
#: row of 256 features by 1000 classes against 17 us for the GEMV (1x1024x32000:
#: 8.1 against 2.8 ms; two rows 2-4x faster too; at four the GEMM won as often)
GEMV_ROWS = 2

#: Logits of more rows, up to this many, are the GEMM with the rows first:
#: (m, V) = x @ w.T into a column-major scratch, then copied into the logits.
#: Written as out.T (V, m) = w @ x.T (the larger calls' form) the same OpenBLAS
#: took 1.5-2.2x the time for 3-16 rows of 256-1024 features by 1000-4096
#: classes (4x256x1000: 91 against 45 us with the copy; 8x1024x4096: 1.40
#: against 0.89 ms), the same at 32000 classes (within 5%), and at 32 rows
#: 1.1-1.2x; at 64 the larger form was faster.
FEW_ROWS = 32

_controller = None
_blas_libs = ()
_gemm_given = {}  # id(kernels module) -> whether its fast path has the GEMM


def load_scipy_blas():
    """scipy.linalg.blas, imported on first use (None without SciPy)."""
    global _scipy_blas
    if _scipy_blas is _MISSING:
        _scipy_blas = _optional("scipy_blas")
    return _scipy_blas


def blas_limits(n):
    """A context manager limiting the BLAS libraries to ``n`` threads (a
    no-op without threadpoolctl, or where every BLAS already runs ``n``:
    setting and restoring a limit costs ~20 us, more than a one-row call's
    GEMM)."""
    if blas_at(n):
        return contextlib.nullcontext()
    return _controller.limit(limits=n, user_api="blas")


def blas_at(n):
    """True where the call's BLAS needs no limit: every BLAS library runs ``n``
    threads, or threadpoolctl (the means of a limit) is not installed.  The
    controller (the list of loaded libraries) is made once: building it costs
    about a millisecond."""
    global _controller, _blas_libs, _threadpoolctl
    if _threadpoolctl is _MISSING:
        _threadpoolctl = _optional("threadpoolctl")
    load_scipy_blas()  # loaded first, so that the controller limits its BLAS too
    if _threadpoolctl is None:
        return True
    if _controller is None:
        _controller = _threadpoolctl.ThreadpoolController()
        _blas_libs = _controller.select(user_api="blas").lib_controllers
    return all(lib.get_num_threads() == n for lib in _blas_libs)


def _give_gemm(kernels):
    """Hands SciPy's sgemm/dgemm (their cython_blas capsules) to ``kernels``'s
    fast path, once; False without SciPy or a fast path."""
    given = False
    if hasattr(kernels, "set_gemm") and load_scipy_blas() is not None:
        from scipy.linalg import cython_blas

        capi = cython_blas.__pyx_capi__
        kernels.set_gemm(capi["sgemm"], capi["dgemm"], capi["sgemv"], capi["dgemv"], GEMV_ROWS,
                         FEW_ROWS)
        given = True
    _gemm_given[id(kernels)] = given
    return given


def gemm_given(kernels):
    """Whether ``kernels``'s fast path has SciPy's GEMM (handed to it on the
    first call, see :func:`_give_gemm`)."""
    given = _gemm_given.get(id(kernels))
    return _give_gemm(kernels) if given is None else given


class Gemms:
    """The chunk loop's matrix products, all through one BLAS library.

    With SciPy, every product is a call of ``scipy.linalg.blas``'s
    ``?gemm``/``?gemv`` on Fortran-order views of the C-contiguous arrays (no
    copy): the logits (``beta = 0``), ``grad_input`` with the "mean" factor as
    ``alpha`` (no pass to scale it), ``grad_linear_weight`` accumulated with
    ``beta = 1`` and the bias gradient as a GEMV.  One library means one BLAS
    thread pool: NumPy's ``matmul`` runs on another OpenBLAS (NumPy's own),
    whose spinning threads, alternating with SciPy's, took half the time on 2
    cores.  Without SciPy: NumPy's ``matmul`` for all, the weight gradient
    through a ``(V, D)`` temporary and an add.
    """

    def __init__(self, dtype, rows=1):
        blas = load_scipy_blas()
        self.rows, self.scratch, self.few = rows, None, None
        self.gemm = self.gemv = None
        if blas is not None:
            single = dtype == np.float32
            self.gemm = blas.sgemm if single else blas.dgemm
            self.gemv = blas.sgemv if single else blas.dgemv
        self.tmp = None

    def logits(self, x, w, out):
        """``out = x @ w.T`` (x (m, D), w (V, D), out (m, V)), as the C fast
        path's ``_logits_gemm``: a GEMV per row up to ``GEMV_ROWS`` rows, the
        GEMM with the rows first up to ``FEW_ROWS``, else one GEMM as
        ``out.T = w @ x.T``."""
        m, v = out.shape
        if self.gemm is None:
            np.matmul(x, w.T, out=out)
        elif x.shape[1] == 0 or v == 0:
            out[...] = 0  # SciPy's GEMM refuses an empty operand
        elif m <= GEMV_ROWS:
            for i in range(m):  # out[i] (V,) = w (V, D) @ x[i] (D,)
                self.gemv(1.0, w.T, x[i], beta=0.0, y=out[i], trans=1, overwrite_y=1)
        elif m <= FEW_ROWS:  # f (m, V) column-major = x (m, D) @ w.T (D, V)
            if self.few is None or self.few.size < m * v:
                self.few = np.empty(m * v, out.dtype)
            f = self.few[: m * v].reshape((m, v), order="F")
            self.gemm(1.0, x.T, w.T, beta=0.0, c=f, trans_a=1, overwrite_c=1)
            np.copyto(out, f)
        else:  # out.T (V, m) = w (V, D) @ x.T (D, m)
            self.gemm(1.0, w.T, x.T, beta=0.0, c=out.T, trans_a=1, overwrite_c=1)

    def grad_input(self, g, w, out, alpha):
        """``out[...] = alpha * g @ w`` (g (m, V), w (V, D); ``out`` (m, D), or
        a ``(grad_input, rows)`` pair to scatter the rows into)."""
        m, d = g.shape[0], w.shape[1]
        scatter = isinstance(out, tuple)
        if self.gemm is None or d == 0:  # no features: SciPy's GEMM refuses an empty C
            res = np.matmul(g, w, out=None if scatter else out)
            if alpha != 1.0:
                np.multiply(res, alpha, out=res)
            if scatter:
                out[0][out[1]] = res
            return
        if m <= GEMV_ROWS and w.shape[0] > 0:
            # a GEMV per row, as for the logits: (1, 256) @ (256, 1000) 84 us
            # by SciPy's GEMM, 16 us by its GEMV
            f = np.empty((m, d), g.dtype)
            for i in range(m):  # f[i] (D,) = w.T (D, V) @ g[i] (V,)
                self.gemv(alpha, w.T, g[i], beta=0.0, y=f[i], overwrite_y=1)
        else:
            # into a Fortran-order (m, D) scratch, then copied: as (m, D) = g @ w
            # the GEMM splits its threads over m and D; written straight as
            # out.T (D, m) = w.T @ g.T it split the V-long sums and ran at half
            # speed on 2 busy cores (512 x 1024 x 32000: 1.04 s against 0.50 s)
            if self.scratch is None or self.scratch.size < m * d:
                self.scratch = np.empty(max(m, self.rows) * d, g.dtype)
            f = self.scratch[: m * d].reshape((m, d), order="F")
            self.gemm(alpha, g.T, w.T, beta=0.0, c=f, trans_a=1, trans_b=1, overwrite_c=1)
        if scatter:
            out[0][out[1]] = f
        else:
            np.copyto(out, f)

    def add_grad_weight(self, grad_w, g, x, first):
        """``grad_w += g.T @ x`` (grad_w (V, D)); the ``first`` chunk's product
        is written, not added: ``grad_w`` is then unwritten memory.

        Why not ``np.zeros`` and an add: an add reads the zeroed pages before
        it writes them, and each such page then faults twice (mapped to the
        shared zero page, then copied on write), the second time flushing the
        other cores' TLBs (an interprocessor interrupt, costly in a VM): a
        (64, 256, 1000) call took 5.7 ms without SciPy (0.76 ms with this)."""
        if self.gemm is None or grad_w.size == 0:
            if first:
                np.matmul(g.T, x, out=grad_w)
                return
            if self.tmp is None:
                self.tmp = np.empty_like(grad_w)
            np.matmul(g.T, x, out=self.tmp)
            np.add(grad_w, self.tmp, out=grad_w)
        else:  # grad_w.T (D, V) (+)= x.T (D, m) @ g (m, V)
            self.gemm(1.0, x.T, g.T, beta=0.0 if first else 1.0, c=grad_w.T, trans_b=1,
                      overwrite_c=1)

    def add_column_sums(self, acc, g, ones):
        """``acc += g.sum(axis=0)`` (acc float64; ones: m ones of g's dtype)."""
        if self.gemv is None:
            acc += g.sum(axis=0, dtype=np.float64)
        else:
            acc += self.gemv(1.0, g.T, ones)

