"""Linear cross-entropy: ``cross_entropy(input @ linear_weight.T + linear_bias, target)``
and its three gradients, without ever holding the ``N x V`` logits.

The algorithm (rows in chunks of ``n_c``; ``V`` classes, ``D`` features):

1. Validate everything (shapes, dtypes, the options, every class index)
   before any work, and find the counted rows: rows whose class index is
   ``ignore_index`` are dropped *before* the GEMMs (a half-padded batch costs
   about half), and the ``"mean"`` denominator (the summed class weight of the
   counted rows, or their number) is computed once from the targets.
2. Per chunk: ``L = x_c @ W.T (+ b)`` into one reused ``(n_c, V)`` buffer
   (a BLAS GEMM); the fused cross-entropy kernel
   (:func:`csoftmax.cross_entropy_with_grad`, ``out=L``: in place) turns it
   into the gradient of the chunk's summed loss; then ``grad_x_c = s G @ W``
   straight into the returned ``grad_input`` (``s``: the "mean" factor, the
   GEMM's ``alpha``), ``grad_W += G.T @ x_c`` accumulated by the GEMM with
   ``beta = 1`` and ``grad_b += G.sum(0)`` by a GEMV.  Every product goes
   through SciPy's ``scipy.linalg.blas`` where SciPy is installed (see
   :class:`_Gemms`), else NumPy's ``matmul`` (``grad_W`` then through a
   ``(V, D)`` temporary and an add).
2'. The loss alone with class-index targets (every option) goes by
   **vocabulary slices** instead, where the logits exceed one chunk and the
   vocabulary holds two slices of :data:`MIN_SLICE` classes: blocks of rows
   x classes ``L = x_r @ W[v0:v1].T`` of the same size as a row chunk, each
   folded into every row's running maximum and exp-sum (an online
   logsumexp, in double; the kernel ``logsumexp_slice_fold``, which also
   adds the bias, applies the soft cap, picks the target's logit and sums
   label smoothing's term).  A row chunk's GEMM packs the whole weight
   again, a slice's only its part: 2048 x 2048 x 128256 took 5.09 s by row
   chunks, 3.83 s by slices, against 3.89 s for NumPy's bare GEMM of the
   whole logits (see :func:`_run_vocab_slices`).  Other loss-only calls run
   one GEMM and the loss-only kernel per row chunk.  Neither allocates any
   gradient.
3. ``"mean"`` scales the (small) weight and bias gradients once at the end by
   the global ``1 / denominator``: no extra pass over a chunk.

Chunk size: rows so that the chunk buffer holds about :data:`CHUNK_BYTES`
(64 MiB) of logits, but at least :data:`MIN_CHUNK_ROWS` (512) rows: the
GEMMs' efficiency grows with the rows of a chunk (on one thread at (1024,
1024, 32000), loss and gradients took 1.55x the three bare GEMMs' time in
chunks of 128 rows, 1.24x in 256, 1.10x in 512).  When the logits exceed
:data:`WHOLE_BYTES` (8 MiB), at most ``N / 5`` rows (but not under
:data:`FEWEST_ROWS`, 64), so that the buffer stays within a fifth of the
logits -- the last bound wins.  The chunks are then made equal (``N = 4096``
in chunks of 524 rows becomes 8 chunks of 512).  ``chunk_size`` (rows)
overrides it all.

Threads: ``num_threads`` (default :func:`csoftmax.get_num_threads`) is the
thread count of the BLAS, limited with ``threadpoolctl`` where it is
installed and where the BLAS runs another count; the chunks' cross-entropy
runs on one thread (a few per cent of the time: waking an OpenMP team
between two BLAS calls, whose threads still spin, cost more than it saved on
2 cores), so no more than ``num_threads`` threads ever run.  Small products
are left to the BLAS, which runs those under 2**18 multiply-adds on one
thread by itself (OpenBLAS): forcing one thread on (64, 256, 1000) made the
loss 1.6x slower on 2 idle cores (on a loaded machine 2 threads lose, as
every threaded call does; ``num_threads=1`` is then the choice).  GEMM
results may differ in the last bits between thread counts (OpenBLAS splits
the sums by thread); the cross-entropy part does not.

The loss alone of a common call whose logits fit one chunk of
:data:`WHOLE_BYTES` (no class weights, z-loss, soft cap or flags; float32 or
float64 arrays, native integer labels; the BLAS at the call's thread count)
takes the compiled kernels' C fast path (``src/fastlinear.pxi``): SciPy's
GEMM into a scratch buffer and the fast cross-entropy core, none of the
steps above in Python.  A one-row call took 74 us on the Python path (18 us
of it the GEMM), 23 us on the fast path.  Its rows with ``ignore_index`` go
through the GEMM (they are a small call's); its ``"mean"`` is rounded once
from the double sum (the chunked path's twice: 1 ulp apart at most; a
few ulp where rows are ignored, which the chunked path leaves out of its
product and OpenBLAS may then round differently).

A K-dimensional ``linear_weight`` ``(V, d1, ..., D)`` (logits
``(N, V, d1, ...)``, classes on axis 1, as PyTorch allows) takes a plain
path that holds the logits.
"""

from __future__ import annotations

import contextlib
import math
import sys
from typing import Any, NamedTuple

import numpy as np

from . import _half, _threads
from ._cross_entropy_api import CrossEntropyResult, _plain_options
from ._runner import MAX_THREADS
from ._validation import (
    _as_label_array,
    as_ndarray,
    check_count,
    check_flag,
    check_loss_options,
    check_num_threads,
    check_softcap,
    check_z_loss,
    contiguous,
    float_dtypes,
)


class LinearCrossEntropyGradResult(NamedTuple):
    """What :func:`linear_cross_entropy_with_grad` returns when a ``return_*``
    flag is set: the loss, the three gradients, then ``z_loss`` and
    ``token_accuracy`` as in :class:`csoftmax.CrossEntropyResult` (None
    unless asked for)."""

    loss: Any
    grad_input: Any
    grad_linear_weight: Any
    grad_linear_bias: Any
    z_loss: Any = None
    token_accuracy: Any = None

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

#: Bytes of logits in one chunk by default (see the module docstring).
CHUNK_BYTES = 64 << 20
#: The fewest rows of a default chunk, memory bound aside (the GEMMs' depth).
MIN_CHUNK_ROWS = 512
#: Logits up to this size may be one chunk; larger ones go in chunks of at
#: most N / 5 rows (at least FEWEST_ROWS), within a fifth of the logits.
WHOLE_BYTES = 8 << 20
FEWEST_ROWS = 64
#: The fewest classes of a vocabulary slice (see _run_vocab_slices).
MIN_SLICE = 2048
#: Threads of the slice fold (see _run_vocab_slices).
SLICE_FOLD_THREADS = 1

_controller = None
_blas_libs = ()
_gemm_given = {}  # id(kernels module) -> whether its fast path has the GEMM


def _load_scipy_blas():
    """scipy.linalg.blas, imported on first use (None without SciPy)."""
    global _scipy_blas
    if _scipy_blas is _MISSING:
        _scipy_blas = _optional("scipy_blas")
    return _scipy_blas


def _blas_limits(n):
    """A context manager limiting the BLAS libraries to ``n`` threads (a
    no-op without threadpoolctl, or where every BLAS already runs ``n``:
    setting and restoring a limit costs ~20 us, more than a one-row call's
    GEMM)."""
    if _blas_at(n):
        return contextlib.nullcontext()
    return _controller.limit(limits=n, user_api="blas")


def _blas_at(n):
    """True where the call's BLAS needs no limit: every BLAS library runs ``n``
    threads, or threadpoolctl (the means of a limit) is not installed.  The
    controller (the list of loaded libraries) is made once: building it costs
    about a millisecond."""
    global _controller, _blas_libs, _threadpoolctl
    if _threadpoolctl is _MISSING:
        _threadpoolctl = _optional("threadpoolctl")
    _load_scipy_blas()  # loaded first, so that the controller limits its BLAS too
    if _threadpoolctl is None:
        return True
    if _controller is None:
        _controller = _threadpoolctl.ThreadpoolController()
        _blas_libs = _controller.select(user_api="blas").lib_controllers
    return all(lib.get_num_threads() == n for lib in _blas_libs)


def _fast_loss(input, linear_weight, target, linear_bias, ignore_index, reduction,
               label_smoothing, num_threads):
    """The loss by the compiled kernels' C fast path (src/fastlinear.pxi) where
    it applies: logits within one default chunk (:data:`WHOLE_BYTES`), SciPy's
    GEMM, the BLAS at the call's thread count; None otherwise (the caller
    then takes the Python path, which validates and raises)."""
    frontend = _check_frontend(None)
    fast = frontend._fast_linear_cross_entropy
    if num_threads is None:
        n = _threads.get_num_threads()
    elif type(num_threads) is int:
        n = num_threads
    else:
        return None
    if not 1 <= n <= MAX_THREADS:  # the Python path's to check (or clip)
        return None
    kernels = frontend.kernels
    given = _gemm_given.get(id(kernels))
    if given is None:
        given = _give_gemm(kernels)
    if not given or not _blas_at(n):
        return None
    return fast(input, linear_weight, target, linear_bias, ignore_index, reduction,
                label_smoothing, n, WHOLE_BYTES)


def _give_gemm(kernels):
    """Hands SciPy's sgemm/dgemm (their cython_blas capsules) to ``kernels``'s
    fast path, once; False without SciPy or a fast path."""
    given = False
    if hasattr(kernels, "set_gemm") and _load_scipy_blas() is not None:
        from scipy.linalg import cython_blas

        capi = cython_blas.__pyx_capi__
        kernels.set_gemm(capi["sgemm"], capi["dgemm"])
        given = True
    _gemm_given[id(kernels)] = given
    return given


def default_chunk_rows(n_rows, n_classes, itemsize):
    """The rows of a default chunk (see the module docstring)."""
    if n_rows <= 1:
        return 1
    rows = max(CHUNK_BYTES // max(1, n_classes * itemsize), MIN_CHUNK_ROWS)
    if n_rows * n_classes * itemsize > WHOLE_BYTES:
        rows = min(rows, max(-(-n_rows // 5), FEWEST_ROWS))
    rows = max(1, min(rows, n_rows))
    chunks = -(-n_rows // rows)
    return -(-n_rows // chunks)  # equal chunks, none larger than ``rows``


class LinearArgs:
    """Validated arguments of a linear cross-entropy call (nothing runs
    before this has checked every input)."""

    def __init__(self, input, linear_weight, target, linear_bias=None, weight=None,
                 ignore_index=-100, reduction="mean", label_smoothing=0.0, num_threads=None,
                 chunk_size=None, z_loss=0.0, softcap=None, return_z_loss=False,
                 return_token_accuracy=False):
        reduction, eps, ignore_index = check_loss_options(reduction, label_smoothing,
                                                           ignore_index)
        self.num_threads = check_num_threads(num_threads)
        self.chunk_size = check_count(chunk_size, "chunk_size")
        self.z_loss = check_z_loss(z_loss)
        self.softcap = check_softcap(softcap)
        self.return_z_loss = check_flag(return_z_loss, "return_z_loss")
        self.return_token_accuracy = check_flag(return_token_accuracy, "return_token_accuracy")
        self.flags = self.return_z_loss or self.return_token_accuracy
        self.reduction, self.label_smoothing, self.ignore_index = reduction, eps, ignore_index

        x = as_ndarray(input, "input")
        w = as_ndarray(linear_weight, "linear_weight")
        b = None if linear_bias is None else as_ndarray(linear_bias, "linear_bias")
        dtypes = [float_dtypes(x.dtype, "input"), float_dtypes(w.dtype, "linear_weight")]
        if b is not None:
            dtypes.append(float_dtypes(b.dtype, "linear_bias"))
        if x.ndim not in (1, 2):
            raise ValueError(f"input must be (N, D) or (D,), got shape {x.shape}")
        if w.ndim < 2:
            raise ValueError(
                f"linear_weight must be (V, D) or (V, d1, ..., D), got shape {w.shape}")
        if x.shape[-1] != w.shape[-1]:
            raise ValueError(
                f"input of shape {x.shape} and linear_weight of shape {w.shape} differ in "
                f"their last dimension (the features)")
        if b is not None and b.shape != w.shape[:-1]:
            raise ValueError(
                f"linear_bias has shape {b.shape}, expected {w.shape[:-1]} for "
                f"linear_weight of shape {w.shape}")
        self.extra = w.shape[1:-1]  # K-dimensional loss: (d1, ..., dK)
        if self.extra and x.ndim == 1:
            raise ValueError(
                f"linear_weight of shape {w.shape} (a K-dimensional loss) needs (N, D) "
                f"input, got shape {x.shape}")
        # the logits' dtype: the inputs' promoted result dtype
        result = np.result_type(*(r for _, r in dtypes))
        self.compute, self.result = float_dtypes(result, "input")
        self.one_sample = x.ndim == 1
        self.n_rows = 1 if self.one_sample else x.shape[0]
        self.n_features = x.shape[-1]
        self.n_classes = w.shape[0]
        if self.n_classes == 0 and self.n_rows * math.prod(self.extra) > 0:
            raise ValueError(f"linear_weight of shape {w.shape} has no classes (V = 0)")
        self.x_shape, self.w_shape = x.shape, w.shape
        self.logits_shape = x.shape[:-1] + w.shape[:-1]
        positions = x.shape[:-1] + self.extra

        y = as_ndarray(target, "target")
        self.labels = self.probs = None
        if y.dtype.kind in "iu":
            if y.shape != positions:
                raise ValueError(
                    f"class-index target has shape {y.shape}, expected {positions} for "
                    f"input of shape {x.shape} and linear_weight of shape {w.shape}")
            self.labels_in = y.reshape(-1)
            self.labels = _as_label_array(self.labels_in, ignore_index)
        elif y.dtype.kind == "f":
            if self.return_token_accuracy:
                raise ValueError(
                    "return_token_accuracy needs class-index targets, not probabilities")
            if y.shape != self.logits_shape:
                raise ValueError(
                    f"probability target has shape {y.shape}, expected the logits' shape "
                    f"{self.logits_shape} (input {x.shape}, linear_weight {w.shape})")
            if ignore_index >= 0:
                raise ValueError(
                    f"ignore_index={ignore_index} is not supported with probability "
                    "targets (it must be negative)")
            self.probs = y
        else:
            raise TypeError(
                f"target has dtype {y.dtype}: expected integer class indices or floating "
                "class probabilities")
        self.weight = None
        if weight is not None:
            cw = as_ndarray(weight, "weight")
            float_dtypes(cw.dtype, "weight")
            if cw.shape != (self.n_classes,):
                raise ValueError(
                    f"weight has shape {cw.shape}, expected ({self.n_classes},) for "
                    f"linear_weight of shape {w.shape}")
            self.weight = contiguous(cw, self.compute)
        # False where no row is ignored (known from the labels' range), else
        # None: _run_chunked looks
        self.any_ignored = None if self.labels is not None else False
        if self.labels is not None and self.labels.size:
            labels = self.labels
            # two reductions settle the common case (every label a class; a
            # small call is made of such steps)
            low, high = labels.min(), labels.max()
            if 0 <= low and high < self.n_classes:
                if not low <= ignore_index <= high:
                    self.any_ignored = False
                bad = None
            else:
                bad = ((labels < 0) | (labels >= self.n_classes)) & (labels != ignore_index)
            if bad is not None and bad.any():
                row = int(np.argmax(bad))
                index = row
                if len(positions) > 1:
                    index = ", ".join(str(int(i)) for i in np.unravel_index(row, positions))
                raise ValueError(
                    f"target[{index}] = {self.labels_in[row]} is not a class index in "
                    f"[0, {self.n_classes}) nor ignore_index ({ignore_index})")
        # the arrays in the compute dtype, C-contiguous (copies only if needed)
        self.x = contiguous(x, self.compute).reshape(self.n_rows, self.n_features)
        self.w = contiguous(w, self.compute)
        self.b = None if b is None else contiguous(b, self.compute)
        if self.probs is not None:
            self.probs = contiguous(self.probs, self.compute)
            if not self.extra:
                self.probs = self.probs.reshape(self.n_rows, self.n_classes)

    def threads(self):
        n = self.num_threads
        return _threads.get_num_threads() if n is None else n


def _denominator(args, kept):
    """The "mean" reduction's divisor: the summed weight of the counted rows
    (their number without weights; N for probability targets).  ``kept``:
    the counted rows' indices, None for all."""
    if args.labels is None:
        return float(args.n_rows)
    if args.weight is None:
        return float(args.n_rows if kept is None else kept.size)
    labels = args.labels if kept is None else args.labels[kept]
    return float(np.sum(args.weight.astype(np.float64)[labels]))


class _Gemms:
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
        blas = _load_scipy_blas()
        self.rows, self.scratch = rows, None
        self.gemm = self.gemv = None
        if blas is not None:
            single = dtype == np.float32
            self.gemm = blas.sgemm if single else blas.dgemm
            self.gemv = blas.sgemv if single else blas.dgemv
        self.tmp = None

    def logits(self, x, w, out):
        """``out = x @ w.T`` (x (m, D), w (V, D), out (m, V))."""
        if self.gemm is None:
            np.matmul(x, w.T, out=out)
        else:  # out.T (V, m) = w (V, D) @ x.T (D, m)
            self.gemm(1.0, w.T, x.T, beta=0.0, c=out.T, trans_a=1, overwrite_c=1)

    def grad_input(self, g, w, out, alpha):
        """``out[...] = alpha * g @ w`` (g (m, V), w (V, D); ``out`` (m, D), or
        a ``(grad_input, rows)`` pair to scatter the rows into)."""
        m, d = g.shape[0], w.shape[1]
        scatter = isinstance(out, tuple)
        if self.gemm is None:
            res = np.matmul(g, w, out=None if scatter else out)
            if alpha != 1.0:
                np.multiply(res, alpha, out=res)
            if scatter:
                out[0][out[1]] = res
            return
        # into a Fortran-order (m, D) scratch, then copied: as (m, D) = g @ w the
        # GEMM splits its threads over m and D; written straight as out.T (D, m)
        # = w.T @ g.T it split the V-long sums and ran at half speed on 2 busy
        # cores (512 x 1024 x 32000: 1.04 s against 0.50 s)
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
        if self.gemm is None:
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


def run(frontend, args, with_grad, row_scale=None):
    """The loss (and gradients) of validated ``args`` over ``frontend``'s
    cross-entropy (the compiled kernels or the NumPy twin).  ``row_scale``
    (one factor per position, for ``reduction="none"``): the gradients of
    ``sum(row_scale * losses)`` (an upstream gradient, as autograd gives)."""
    n_threads = args.threads()
    if row_scale is not None:
        row_scale = np.asarray(row_scale, args.compute).reshape(-1)
    # NaN or inf in the inputs give NaN/inf logits, as the cross-entropy functions
    # give them: quietly (NumPy's matmul would warn)
    with _blas_limits(n_threads), np.errstate(invalid="ignore", over="ignore"):
        runner = _run_materialised if args.extra else _run_chunked
        r = runner(frontend, args, with_grad, n_threads, row_scale)
    if not args.flags:
        return r
    if not with_grad:
        return CrossEntropyResult(*r)
    (loss, z, acc), gx, gw, gb = r
    return LinearCrossEntropyGradResult(loss, gx, gw, gb, z, acc)


def _per_position(args, rows):
    """Per-row values as a "none" result: the result dtype, a scalar for (D,) input."""
    r = _as_result(rows, args.result)
    return r[0] if args.one_sample else r


def _finish_loss(args, total_loss, row_loss, denominator):
    if args.reduction == "none":
        return _per_position(args, row_loss)
    if args.reduction == "mean":
        total_loss = total_loss / denominator if denominator != 0.0 else float("nan")
    return _as_result(total_loss, args.result)


def _cast_grads(args, gx, gw, gb):
    r = args.result
    gx = gx.reshape(args.x_shape)
    if r != args.compute:
        gx, gw = _as_grad(gx, r), _as_grad(gw, r)
        gb = None if gb is None else _as_grad(gb, r)
    return gx, gw, gb


def _as_grad(g, result):
    """A gradient in the result dtype: to float16/bfloat16 by the kernels'
    rounding (NumPy's float32 -> float16 cast takes ~100 ns a subnormal value)."""
    if _half.half_kind(result) is not None:
        return _half.store(g, result)
    return g.astype(result)


def _divide(value, by):
    return value / by if by != 0.0 else float("nan")


class _Extras:
    """The z-loss, soft cap and ``return_*`` flags over the chunks: the
    options of each chunk's cross-entropy call, and their parts summed.

    Chunks are reduced with "sum" and the results scaled once by ``1 /
    denominator`` (the summed class weight of the counted rows), but the
    z-loss of a weighted "mean" is divided by the number of counted rows
    ``K`` instead: the chunks then run with ``z_loss * denominator / K``,
    which the common ``1 / denominator`` turns into ``z_loss / K`` (value and
    gradient alike, with no second pass)."""

    def __init__(self, args, n_rows, n_kept, denominator):
        self.args, self.n_kept = args, n_kept
        z = args.z_loss
        self.z_div = denominator  # what the summed z-loss part is divided by ("mean")
        split = (args.reduction == "mean" and args.weight is not None
                 and args.labels is not None and z != 0.0)
        if split:
            if denominator != 0.0 and n_kept:
                z = z * denominator / n_kept
            else:  # the loss is nan; the z-loss part is still its own mean
                self.z_div = float(n_kept)
        self.options = {}
        if z != 0.0:
            self.options["z_loss"] = z
        if args.softcap is not None:
            self.options["softcap"] = args.softcap
        self.want_z = args.return_z_loss and z != 0.0
        if self.want_z:
            self.options["return_z_loss"] = True
        if args.return_token_accuracy:
            self.options["return_token_accuracy"] = True
        self.flagged = self.want_z or args.return_token_accuracy
        none = args.reduction == "none"
        self.row_z = np.zeros(n_rows) if none and args.return_z_loss else None
        self.row_acc = np.zeros(n_rows) if none and args.return_token_accuracy else None
        self.z_sum = 0.0
        self.correct = 0.0

    def add(self, loss, rest, sel, m):
        """Takes the chunk's ``(z_loss, token_accuracy)`` parts ``rest`` (empty
        unless flagged; rows ``sel``, ``m`` of them); returns its ``loss``."""
        if not rest:
            return loss
        z, acc = rest
        if self.args.reduction == "none":
            if self.want_z:
                self.row_z[sel] = z
            if acc is not None:
                self.row_acc[sel] = acc
        else:
            if self.want_z:
                self.z_sum += float(z)
            if acc is not None:  # a fraction of the chunk's rows, all counted
                self.correct += round(float(acc) * m)
        return loss

    def finish(self, loss):
        """The loss, or with a flag the (loss, z_loss, token_accuracy) triple."""
        args = self.args
        if not args.flags:
            return loss
        z = acc = None
        if args.reduction == "none":
            if args.return_z_loss:
                z = _per_position(args, self.row_z)
            if args.return_token_accuracy:
                acc = _per_position(args, self.row_acc)
        else:
            if args.return_z_loss:
                z_sum = self.z_sum
                if args.reduction == "mean":
                    z_sum = _divide(z_sum, self.z_div)
                z = _as_result(z_sum, args.result)
            if args.return_token_accuracy:
                acc = _as_result(_divide(self.correct, float(self.n_kept)), args.result)
        return loss, z, acc


def _run_chunked(frontend, args, with_grad, n_threads, row_scale=None):
    x, w, b = args.x, args.w, args.b
    n, d = x.shape
    v = args.n_classes
    compute = args.compute
    if args.any_ignored is False:
        kept, all_kept = None, True
    else:
        kept = np.flatnonzero(args.labels != args.ignore_index)
        all_kept = kept.size == n
    n_kept = n if kept is None else kept.size
    denominator = _denominator(args, kept)
    extras = _Extras(args, n, n_kept, denominator)
    rows = args.chunk_size or default_chunk_rows(n_kept, v, compute.itemsize)
    rows = max(1, min(rows, n_kept))
    if not with_grad and _slices_apply(args, rows, n_kept):
        return _run_vocab_slices(frontend, args, None if all_kept else kept, n_kept,
                                 rows * v, denominator, extras)
    # the cross-entropy of a chunk on one thread: a few per cent of the time, and
    # an OpenMP team woken between two BLAS calls fights the BLAS's threads
    options = dict(weight=args.weight, ignore_index=args.ignore_index,
                   label_smoothing=args.label_smoothing, num_threads=1,
                   **extras.options)
    scale = 1.0
    if args.reduction == "mean":  # the gradients' factor, applied to the small results
        scale = compute.type(_divide(1.0, denominator))
    chunk_reduction = "none" if args.reduction == "none" else "sum"
    row_loss = np.zeros(n, compute) if args.reduction == "none" else None
    total_loss = 0.0
    buf = np.empty((rows, v), compute) if n_kept else None
    xbuf = None if all_kept or not n_kept else np.empty((rows, d), compute)
    if with_grad:
        grad_x = np.zeros((n, d), compute) if not all_kept else np.empty((n, d), compute)
        # written by the first chunk's product (see _Gemms.add_grad_weight)
        grad_w = np.empty((v, d), compute) if n_kept else np.zeros((v, d), compute)
        grad_b = None if b is None else np.zeros(v, np.float64)
        ones = None if b is None else np.ones(rows, compute)
    gemms = _Gemms(compute, rows)
    for start in range(0, n_kept, rows):
        stop = min(start + rows, n_kept)
        m = stop - start
        if all_kept:
            x_c = x[start:stop]
            sel = slice(start, stop)
        else:
            sel = kept[start:stop]
            # mode="clip": with out=, "raise" buffers a copy first (the rows are valid)
            x_c = np.take(x, sel, axis=0, out=xbuf[:m], mode="clip")
        logits = buf[:m]
        gemms.logits(x_c, w, logits)
        if b is not None:
            np.add(logits, b, out=logits)
        t_c = args.labels[sel] if args.labels is not None else args.probs[sel]
        if with_grad:
            r = frontend.cross_entropy_with_grad(
                logits, t_c, reduction=chunk_reduction, out=logits, **options)
            loss_c = extras.add(r[0], r[2:], sel, m)
            if row_scale is not None:
                np.multiply(logits, row_scale[sel][:, None], out=logits)
            gemms.grad_input(logits, w, grad_x[start:stop] if all_kept else (grad_x, sel),
                             scale)
            gemms.add_grad_weight(grad_w, logits, x_c, start == 0)
            if grad_b is not None:
                gemms.add_column_sums(grad_b, logits, ones[:m])
        else:
            r = frontend.cross_entropy(logits, t_c, reduction=chunk_reduction, **options)
            loss_c = extras.add(r[0], r[1:], sel, m) if extras.flagged else r
        if row_loss is not None:
            row_loss[sel] = loss_c
        else:
            total_loss += float(loss_c)
    loss = extras.finish(_finish_loss(args, total_loss, row_loss, denominator))
    if not with_grad:
        return loss
    if scale != 1.0 and n_kept:
        grad_w *= scale
        if grad_b is not None:
            grad_b *= scale
    if grad_b is not None:
        grad_b = grad_b.astype(compute)
    gx, gw, gb = _cast_grads(args, grad_x, grad_w, grad_b)
    return loss, gx, gw, gb


def _slices_apply(args, rows, n_kept):
    """Whether a loss-only call goes by vocabulary slices (see
    :func:`_run_vocab_slices`): class-index targets, more than one row
    chunk, and a vocabulary of at least two slices of :data:`MIN_SLICE`
    classes."""
    return args.labels is not None and n_kept > rows and args.n_classes >= 2 * MIN_SLICE


def _slice_shape(n_kept, n_classes, elements, gathered=0):
    """(rows, classes) of a block: as many rows as leave slices of
    :data:`MIN_SLICE` classes, then equal parts (a slice may then be
    narrower, down to about ``MIN_SLICE / 2``).  The block's logits, and
    with ``gathered`` (the input's features, where the kept rows are
    gathered into a buffer: rows are ignored) that buffer, stay within what a
    row chunk holds: ``elements`` logits and ``elements / n_classes``
    gathered rows."""
    budget = elements + elements // n_classes * gathered
    rows = max(1, min(n_kept, budget // (MIN_SLICE + gathered)))
    rows = -(-n_kept // -(-n_kept // rows))
    width = max(1, min(n_classes, (budget - rows * gathered) // rows))
    width = -(-n_classes // -(-n_classes // width))
    return rows, width


def _run_vocab_slices(frontend, args, kept, n_kept, elements, denominator, extras):
    """The loss of ``args`` by blocks of rows x a slice of the vocabulary: per
    block ``L = x_r @ W[v0:v1].T`` (one GEMM; the bias and the soft cap
    applied by the kernel), folded into each row's running max and exp-sum
    by the kernel ``logsumexp_slice_fold``, which also picks the target's
    logit and, with label smoothing, sums ``w_k x_k``.  Then per row, in
    double, the whole-row kernel's formula with ``lse = log(s)`` and the
    logits shifted by the row max ``m``::

        loss = alpha w_t (lse - (x_t - m)) [+ beta (W lse - (sum_k w_k x_k - m W))]
               [+ z (m + lse)^2]

    Why: a GEMM over a chunk of rows packs the whole weight again, one over
    a slice packs its part once (2048 x 2048 x 128256 in 5 parts: 4.19 s by
    rows, 3.87 s by slices, 3.70 s whole).  The block holds at most
    ``elements`` logits (what a row chunk would) and, where rows are
    ignored, the gathered kept rows of the input stay within a row chunk's
    share too (see :func:`_slice_shape`); beyond them, four float64 values
    per row.  The sums of a row stay in double across slices and the total
    is rounded once (the row chunks round each chunk's sum).  Known edge:
    float64 logits near the dtype's maximum with label smoothing give NaN
    where the row kernels give inf (the smoothing sum is formed unshifted,
    ``sum_k w_k x_k - m W``)."""
    x, w, b = args.x, args.w, args.b
    compute = args.compute
    n, d = x.shape
    v = args.n_classes
    labels = args.labels if kept is None else args.labels[kept]
    rows, width = _slice_shape(n_kept, v, elements, 0 if kept is None else d)
    row_max = np.full(n_kept, -np.inf)
    row_sum = np.zeros(n_kept)
    target_logit = np.zeros(n_kept)
    eps = args.label_smoothing
    smooth = np.zeros(n_kept) if eps else None
    softcap = args.softcap or 0.0
    buf = np.empty(rows * width, compute)
    xbuf = None if kept is None else np.empty((rows, d), compute)
    fold = frontend.kernels.logsumexp_slice_fold
    gemms = _Gemms(compute, rows)
    for r0 in range(0, n_kept, rows):
        r1 = min(r0 + rows, n_kept)
        m = r1 - r0
        if kept is None:
            x_r = x[r0:r1]
        else:
            x_r = np.take(x, kept[r0:r1], axis=0, out=xbuf[:m], mode="clip")
        for v0 in range(0, v, width):
            v1 = min(v0 + width, v)
            logits = buf[: m * (v1 - v0)].reshape(m, v1 - v0)
            gemms.logits(x_r, w[v0:v1], logits)
            fold(logits, None if b is None else b[v0:v1], labels[r0:r1], v0,
                 row_max[r0:r1], row_sum[r0:r1], target_logit[r0:r1], SLICE_FOLD_THREADS,
                 softcap, None if smooth is None or args.weight is None else args.weight[v0:v1],
                 None if smooth is None else smooth[r0:r1])
    # a row of -inf folded nothing (m = -inf, s = 0): its sum is NaN, as the
    # whole-row kernel's exp(-inf - -inf) (NaN loss, z-loss and accuracy 0)
    row_sum[row_max == -np.inf] = np.nan
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        lse = np.log(row_sum)
        x_t = target_logit - row_max
        w_t = 1.0 if args.weight is None else args.weight.astype(np.float64)[labels]
        loss = (1.0 - eps) * w_t * (lse - x_t)
        if eps:
            w_total = float(v) if args.weight is None else float(
                args.weight.sum(dtype=np.float64))
            loss += eps / v * (w_total * lse - (smooth - row_max * w_total))
        z = extras.options.get("z_loss", 0.0)
        z_rows = z * (row_max + lse) ** 2 if z else None
        if z_rows is not None:
            loss += z_rows
    correct = ((x_t == 0.0) & (row_sum == row_sum)).astype(np.float64) \
        if args.return_token_accuracy else None
    sel = slice(0, n) if kept is None else kept
    if args.reduction == "none":
        row_loss = np.zeros(n)
        row_loss[sel] = loss
        if extras.row_z is not None and z_rows is not None:
            extras.row_z[sel] = z_rows
        if correct is not None:
            extras.row_acc[sel] = correct
        return extras.finish(_finish_loss(args, 0.0, row_loss, denominator))
    if extras.want_z:
        extras.z_sum += float(np.sum(z_rows))
    if correct is not None:
        extras.correct += float(np.sum(correct))
    return extras.finish(_finish_loss(args, float(np.sum(loss)), None, denominator))


def _run_materialised(frontend, args, with_grad, n_threads, row_scale=None):
    """K-dimensional weights: the logits (N, V, d1, ...) in full."""
    x, w = args.x, args.w
    d = args.n_features
    w2 = w.reshape(-1, d)
    logits = np.matmul(x, w2.T)
    if args.b is not None:
        logits += args.b.reshape(-1)
    logits = logits.reshape(args.logits_shape)
    target = args.labels.reshape(args.logits_shape[:1] + args.extra) \
        if args.labels is not None else args.probs
    options = dict(axis=1, weight=args.weight, ignore_index=args.ignore_index,
                   reduction=args.reduction, label_smoothing=args.label_smoothing,
                   z_loss=args.z_loss, softcap=args.softcap,
                   return_z_loss=args.return_z_loss,
                   return_token_accuracy=args.return_token_accuracy,
                   num_threads=n_threads)
    if not with_grad:
        r = frontend.cross_entropy(logits, target, **options)
        return _as_results(r, args)
    r = frontend.cross_entropy_with_grad(logits, target, out=logits, **options)
    loss, g = r[0], r[1]
    if row_scale is not None:
        g *= row_scale.reshape((args.n_rows, 1) + args.extra)
    g2 = g.reshape(args.n_rows, -1)
    grad_x = g2 @ w2
    grad_w = (g2.T @ x).reshape(args.w_shape)
    grad_b = None if args.b is None else g2.sum(axis=0).reshape(args.w_shape[:-1])
    gx, gw, gb = _cast_grads(args, grad_x, grad_w, grad_b)
    return _as_results((loss,) + tuple(r[2:]) if args.flags else loss, args), gx, gw, gb


def _as_results(r, args):
    """The loss (a triple with the ``return_*`` flags) in the result dtype."""
    if not args.flags:
        return _as_result(r, args.result)
    return tuple(None if v is None else _as_result(v, args.result) for v in r)


def _as_result(loss, result):
    """Losses (double sums) in the result dtype, rounded once (also to bfloat16)."""
    if _half.half_kind(result) is not None:
        return _half.round_once(loss, result)
    if not isinstance(loss, np.ndarray):
        return result.type(loss)
    return loss.astype(result, copy=False)


# -- the public functions ----------------------------------------------------

_DOC_PARAMS = """
    Parameters
    ----------
    input : array_like, shape (N, D) or (D,)
        The features (hidden states) of N samples (one for (D,)).
    linear_weight : array_like, shape (V, D) or (V, d1, ..., dK, D)
        The projection to V classes (``torch.nn.Linear``'s weight layout).  A
        K-dimensional weight gives logits (N, V, d1, ..., dK) with the classes
        on axis 1, as PyTorch allows; that path holds the logits.
    target : array_like
        Class indices of shape (N,) (a scalar for (D,) input; (N, d1, ...,
        dK) for K-dimensional weights), any integer dtype; or class
        probabilities of the logits' shape (N, V), floating.
    linear_bias : array_like, shape ``linear_weight.shape[:-1]``, optional
        Added to the logits.
    weight, ignore_index, reduction, label_smoothing
        As for :func:`csoftmax.cross_entropy`.  Rows whose target is
        ``ignore_index`` are dropped before any arithmetic (but a loss-only
        call whose logits fit 8 MiB computes their logits too: one GEMM is
        cheaper than the steps that drop them) and get an all-zero
        ``grad_input`` row.
    z_loss, softcap, return_z_loss, return_token_accuracy
        As for :func:`csoftmax.cross_entropy`, on the logits
        ``input @ linear_weight.T + linear_bias``: the z-loss
        ``z_loss * lse**2`` per counted row (for "mean" divided by the number
        of counted rows, not by the summed class weight), the soft cap
        ``softcap * tanh(logits / softcap)`` applied before everything else
        (with no copy of the logits), the z-loss part and the token accuracy
        returned with a flag.
    num_threads : int, optional
        The threads of every part of the call: the cross-entropy kernels and
        the BLAS (limited with ``threadpoolctl`` where it is installed).
        Default: :func:`csoftmax.get_num_threads`.
    chunk_size : int, optional
        Rows per chunk.  By default about 64 MiB of logits per chunk, at least
        512 rows, at most N / 5 (when the logits exceed 8 MiB), the chunks
        made equal: memory beyond
        the inputs and the results is one chunk buffer (plus, for the
        gradients without SciPy, a ``linear_weight``-sized temporary).  A
        loss alone with class indices over more than one chunk and at least
        4096 classes goes by blocks of rows x vocabulary slices within the
        same memory instead (a chunk of rows multiplies by the whole weight
        again).
"""


def _check_frontend(frontend):
    if frontend is None:
        return sys.modules["csoftmax._dispatch"].ACTIVE  # imported by csoftmax
    return frontend


def linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None,
                         ignore_index=-100, reduction="mean", label_smoothing=0.0,
                         z_loss=0.0, softcap=None, return_z_loss=False,
                         return_token_accuracy=False, num_threads=None, chunk_size=None):
    if (weight is None and chunk_size is None
            and _plain_options(z_loss, softcap, return_z_loss, return_token_accuracy)):
        r = _fast_loss(input, linear_weight, target, linear_bias, ignore_index, reduction,
                       label_smoothing, num_threads)
        if r is not None:
            return r
    args = LinearArgs(input, linear_weight, target, linear_bias, weight, ignore_index,
                      reduction, label_smoothing, num_threads, chunk_size, z_loss, softcap,
                      return_z_loss, return_token_accuracy)
    return run(_check_frontend(None), args, False)


def linear_cross_entropy_with_grad(input, linear_weight, target, *, linear_bias=None,
                                   weight=None, ignore_index=-100, reduction="mean",
                                   label_smoothing=0.0, z_loss=0.0, softcap=None,
                                   return_z_loss=False, return_token_accuracy=False,
                                   num_threads=None, chunk_size=None):
    args = LinearArgs(input, linear_weight, target, linear_bias, weight, ignore_index,
                      reduction, label_smoothing, num_threads, chunk_size, z_loss, softcap,
                      return_z_loss, return_token_accuracy)
    return run(_check_frontend(None), args, True)


def call(frontend, input, linear_weight, target, with_grad=False, row_scale=None, **kwargs):
    """The public functions over a chosen frontend (tests compare them; the
    PyTorch adapter's backward passes ``row_scale``; csoftmax.dask's tasks
    call it)."""
    args = LinearArgs(input, linear_weight, target, **kwargs)
    return run(_check_frontend(frontend), args, with_grad, row_scale)


linear_cross_entropy.__doc__ = """Cross-entropy of ``input @ linear_weight.T + linear_bias``
    against ``target``, without holding the ``N x V`` logits.

    Exactly ``cross_entropy(input @ linear_weight.T + linear_bias, target, ...)``
    (and ``torch.nn.functional.linear_cross_entropy``), computed by chunks of
    rows: one GEMM into a reused chunk buffer and the loss-only cross-entropy
    kernel per chunk.
""" + _DOC_PARAMS + """
    Returns
    -------
    scalar or ndarray
        The loss, a NumPy scalar of the logits' dtype (the inputs' promoted
        floating dtype); ``"none"``: one loss per position.  With a
        ``return_*`` flag a :class:`csoftmax.CrossEntropyResult` ``(loss,
        z_loss, token_accuracy)``.

    Examples
    --------
    >>> import numpy as np, csoftmax
    >>> x = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> W = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    >>> float(csoftmax.linear_cross_entropy(x, W, np.array([0, 2])).round(4))
    1.0514
    >>> float(csoftmax.cross_entropy(x @ W.T, np.array([0, 2])).round(4))
    1.0514
"""

linear_cross_entropy_with_grad.__doc__ = """The linear cross-entropy and its gradients
    with respect to ``input``, ``linear_weight`` and ``linear_bias``.

    Per chunk of rows: the logits ``x_c @ W.T + b`` into one reused buffer, the
    fused cross-entropy kernel turns them into their gradient in place, then
    ``grad_input_c = G @ W`` and ``grad_linear_weight += G.T @ x_c`` (a BLAS
    GEMM accumulating with beta = 1 where SciPy is installed).  The
    gradients are those of PyTorch's ``loss.backward()`` with upstream
    gradient 1 (for ``"none"``: of the summed losses).
""" + _DOC_PARAMS + """
    Returns
    -------
    loss : scalar or ndarray
        As :func:`linear_cross_entropy` returns it.
    grad_input : ndarray
        ``d loss / d input``, input's shape.
    grad_linear_weight : ndarray
        ``d loss / d linear_weight``, linear_weight's shape.
    grad_linear_bias : ndarray or None
        ``d loss / d linear_bias``; None without a bias.
        The gradients have the logits' dtype. With a ``return_*`` flag the
        result is a :class:`LinearCrossEntropyGradResult` named tuple
        ``(loss, grad_input, grad_linear_weight, grad_linear_bias, z_loss,
        token_accuracy)``.

    Examples
    --------
    >>> import numpy as np, csoftmax
    >>> x = np.array([[1.0, 0.0]])
    >>> W = np.zeros((2, 2))
    >>> loss, gx, gW, gb = csoftmax.linear_cross_entropy_with_grad(
    ...     x, W, np.array([1]), linear_bias=np.zeros(2))
    >>> float(loss.round(4)), gx, gb
    (0.6931, array([[0., 0.]]), array([ 0.5, -0.5]))
    >>> gW
    array([[ 0.5,  0. ],
           [-0.5,  0. ]])
"""
