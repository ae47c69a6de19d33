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
   :class:`csoftmax._linear_blas.Gemms`), else NumPy's ``matmul`` (``grad_W`` then through a
   ``(V, D)`` temporary and an add).
2'. The loss alone with class-index targets (every option) goes by
   **vocabulary slices** instead, where the logits exceed one chunk and the
   vocabulary holds two slices of ``MIN_SLICE`` classes: blocks of rows
   x classes ``L = x_r @ W[v0:v1].T`` of the same size as a row chunk, each
   folded into every row's running maximum and exp-sum (an online
   logsumexp, in double; the kernel ``logsumexp_slice_fold``, which also
   adds the bias, applies the soft cap, picks the target's logit and sums
   label smoothing's term).  A row chunk's GEMM packs the whole weight
   again, a slice's only its part: 2048 x 2048 x 128256 took 5.09 s by row
   chunks, 3.83 s by slices, against 3.89 s for NumPy's bare GEMM of the
   whole logits (see :func:`csoftmax._linear_chunks.run_vocab_slices`).  Other loss-only calls run
   one GEMM and the loss-only kernel per row chunk.  Neither allocates any
   gradient.
3. ``"mean"`` scales the (small) weight and bias gradients once at the end by
   the global ``1 / denominator``: no extra pass over a chunk.

Chunk size: rows so that the chunk buffer holds about ``CHUNK_BYTES``
(64 MiB) of logits, but at least ``MIN_CHUNK_ROWS`` (512) rows: the
GEMMs' efficiency grows with the rows of a chunk (on one thread at (1024,
1024, 32000), loss and gradients took 1.55x the three bare GEMMs' time in
chunks of 128 rows, 1.24x in 256, 1.10x in 512).  When the logits exceed
``WHOLE_BYTES`` (8 MiB), at most ``N / 5`` rows (but not under
``FEWEST_ROWS``, 64), so that the buffer stays within a fifth of the
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
``WHOLE_BYTES`` (no class weights; z-loss, soft cap and flags as Python
numbers and ``True``/``False``; float32 or float64 arrays, native integer
labels; the BLAS at the call's thread count)
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

Where each part lives: this module holds the public functions and the C fast
path's gate; ``_linear_args`` validates (:class:`LinearArgs`),
``_linear_chunks`` runs the row chunks, the vocabulary slices and the
K-dimensional path (and holds the chunk sizes: ``CHUNK_BYTES``,
``MIN_CHUNK_ROWS``, ``WHOLE_BYTES``, ``FEWEST_ROWS``, ``MIN_SLICE``),
``_linear_blas`` the matrix products and the BLAS's threads, and
``_linear_results`` the "mean" denominator, the ``return_*`` parts and the
result dtypes.
"""

from __future__ import annotations

import sys

import numpy as np

from . import _linear_blas, _linear_chunks, _threads
from ._cross_entropy_api import CrossEntropyResult
from ._linear_args import LinearArgs
from ._linear_chunks import run_chunked, run_materialised
from ._linear_results import LinearCrossEntropyGradResult
from ._runner import MAX_THREADS

__all__ = ["LinearCrossEntropyGradResult", "linear_cross_entropy",
           "linear_cross_entropy_with_grad"]


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
    with _linear_blas.blas_limits(n_threads), np.errstate(invalid="ignore", over="ignore"):
        runner = run_materialised if args.extra else run_chunked
        r = runner(frontend, args, with_grad, n_threads, row_scale)
    if not args.flags:
        return r
    if not with_grad:
        return CrossEntropyResult(*r)
    (loss, z, acc), gx, gw, gb = r
    return LinearCrossEntropyGradResult(loss, gx, gw, gb, z, acc)


def _fast_loss(input, linear_weight, target, linear_bias, ignore_index, reduction,
               label_smoothing, num_threads, z_loss=0.0, softcap=None, return_z_loss=False,
               return_token_accuracy=False):
    """The loss by the compiled kernels' C fast path (src/fastlinear.pxi) where
    it applies: logits within one default chunk (``WHOLE_BYTES``), SciPy's
    GEMM, the BLAS at the call's thread count, the options as Python numbers
    and ``True``/``False``; None otherwise (the caller then takes the Python
    path, which validates and raises)."""
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
    if not _linear_blas.gemm_given(kernels) or not _linear_blas.blas_at(n):
        return None
    r = fast(input, linear_weight, target, linear_bias, ignore_index, reduction,
             label_smoothing, n, _linear_chunks.WHOLE_BYTES, z_loss, softcap, return_z_loss,
             return_token_accuracy)
    # the flags are True or False here: the fast path declines anything else
    if r is not None and (return_z_loss or return_token_accuracy):
        return CrossEntropyResult(*r)
    return r


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
    if weight is None and chunk_size is None:
        r = _fast_loss(input, linear_weight, target, linear_bias, ignore_index, reduction,
                       label_smoothing, num_threads, z_loss, softcap, return_z_loss,
                       return_token_accuracy)
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
