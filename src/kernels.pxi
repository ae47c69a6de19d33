# The body of the compiled kernels, included by _kernels.pyx (baseline ISA),
# _kernels_avx2.pyx and _kernels_avx512.pyx: one source, built three times.

# Compiled kernels of csoftmax.
#
# Design
# ------
# Every kernel works on C-contiguous 2-D arrays of float32 or float64 (the fused
# type ``floating``), one row at a time: the Python layer has already validated
# the inputs, moved the reduced axis last and made the arrays contiguous.  Rows
# are spread over OpenMP threads with ``prange(schedule="static")``; each row is
# computed by one thread from start to end, except when rows are fewer than two
# per thread: then each row's columns are split into fixed chunks spread over
# the team (see "rows split over threads").  A row's sums are the same chunk
# sums added in the same order either way, so results are bitwise identical at
# every thread count.  Per-row losses are written to a float64 array, and the
# cross-entropy kernels return their sum, added in an order fixed by the shape.
#
# The arithmetic of a row lives in small helpers of ``rowops.hpp`` (vectorised
# max, exp-and-sum, dot, scale, ...); this file composes them.  Memory passes per
# row, for a row that stays in cache between passes (L2 holds ~1 MiB):
#
# * softmax:           max (reads x), exp+sum (writes e to out), scale (in cache)
# * log_softmax:       max, exp-sum (no store), out = (x - max) - lse
# * logsumexp:         max, exp-sum
# * cross-entropy:     max, [smoothing/soft-target sums], exp+sum into grad,
#                      grad = e * sum(y') / sum(e) - y'  (in place, in cache)
#
# so the logits are read from memory once and the gradient written once.  The
# GIL is released in every kernel.

from cython cimport floating
from cython.parallel cimport prange
cimport numpy as cnp
from libc.math cimport log, INFINITY, NAN
from libc.stdlib cimport calloc, free, malloc
from libc.stdint cimport int32_t, int64_t

ctypedef fused label_t:
    int32_t
    int64_t

cdef extern from "rowops.hpp" namespace "csoftmax" nogil:
    int have_openmp() noexcept
    int omp_max_threads() noexcept
    const char *simd_level() noexcept
    int cpu_has_avx2() noexcept
    int cpu_has_avx512() noexcept
    T exp_poly[T](T x) noexcept
    T row_max[T](const T *x, Py_ssize_t n) noexcept
    int row_has_nan[T](const T *x, Py_ssize_t n) noexcept
    double row_exp_sum[T](const T *x, Py_ssize_t n, T shift) noexcept
    double row_exp_store_sum[T](const T *x, T *e, Py_ssize_t n, T shift) noexcept
    double row_exp_store_sum_smooth[T](
        const T *x, T *e, const T *w, Py_ssize_t n, T shift, double *smooth) noexcept
    double row_exp_store_sum_soft[T](
        const T *x, const T *y, const T *w, T *e, Py_ssize_t n, T shift, double alpha,
        double beta, double *y_sum, double *y_dot) noexcept
    double row_dot[T](const T *a, const T *b, Py_ssize_t n) noexcept
    double row_sum[T](const T *a, Py_ssize_t n) noexcept
    double pairwise_sum[T](const T *a, Py_ssize_t n) noexcept
    double row_weighted_shifted_sum[T](
        const T *x, const T *w, Py_ssize_t n, T m) noexcept
    double row_soft_target_sums[T](
        const T *x, const T *y, const T *w, Py_ssize_t n, T m,
        double alpha, double beta, double *ydot) noexcept
    void row_scale[T](T *e, Py_ssize_t n, T c) noexcept
    void row_log_softmax_from[T](
        const T *x, T *out, Py_ssize_t n, T m, T lse) noexcept
    void row_softmax_backward[T](
        const T *g, const T *a, T *out, Py_ssize_t n, T dot) noexcept
    void row_log_softmax_backward[T](
        const T *g, const T *o, T *out, Py_ssize_t n, T gsum) noexcept
    void row_grad_affine[T](T *e, const T *w, Py_ssize_t n, T c1, T c2) noexcept
    void row_grad_soft[T](
        T *e, const T *y, const T *w, Py_ssize_t n, T c1, T a2, T b2) noexcept
    void row_zero[T](T *out, Py_ssize_t n) noexcept
    void row_fill[T](T *out, Py_ssize_t n, T value) noexcept
    void row_prefetch[T](const T *x, Py_ssize_t n) noexcept
    double cross_entropy_index_loss(
        double w_t, double w_total, double alpha, double beta, double x_t, double smooth,
        double s, double *y_sum) noexcept
    double cross_entropy_prob_loss(double y_sum, double y_dot, double s) noexcept
    double add_chunk(double s, double p, Py_ssize_t c0) noexcept
    Py_ssize_t labels_count_bad[L](
        const L *t, Py_ssize_t n, Py_ssize_t n_classes, Py_ssize_t ignore_index,
        Py_ssize_t *kept) noexcept
    # columns of a chunk of a long row (the unit of a row split over threads)
    enum: CHUNK

cdef extern from "tiles.hpp" namespace "csoftmax" nogil:
    void tile_max[T](const T *x, Py_ssize_t rows, Py_ssize_t n, T *m) noexcept
    void tile_exp_shifted[T](
        const T *x, T *e, Py_ssize_t rows, Py_ssize_t n, const T *m, double *s) noexcept
    void tile_cross_entropy_index[T, L](
        const T *x, const L *target, Py_ssize_t rows, Py_ssize_t n, Py_ssize_t ignore_index,
        const T *w, double w_total, double alpha, double beta, double *loss, T *grad,
        double scale) noexcept
    # elements of a tile of short rows (its scratch lives on each thread's stack)
    enum: TILE
    # rows of a tile of rows of n < 32 columns
    Py_ssize_t tile_rows(Py_ssize_t n) noexcept
    void tile_softmax[T](const T *x, T *out, Py_ssize_t rows, Py_ssize_t n) noexcept
    void tile_log_softmax[T](const T *x, T *out, Py_ssize_t rows, Py_ssize_t n) noexcept
    void tile_logsumexp[T](const T *x, T *out, Py_ssize_t rows, Py_ssize_t n) noexcept


cnp.import_array()


# ---------------------------------------------------------------------------
# build facts

def build_info():
    """Facts fixed when the extension was compiled."""
    return {
        "openmp": bool(have_openmp()),
        "simd": simd_level().decode("ascii"),
    }


def cpu_features():
    """Instruction sets of the running CPU that csoftmax has kernels for."""
    return {"avx2": bool(cpu_has_avx2()), "avx512": bool(cpu_has_avx512())}


# columns per chunk of a row split over threads (the Python layer sizes a
# call's team with it)
COLUMN_CHUNK = CHUNK


def default_threads():
    """OpenMP's current default team size (OMP_NUM_THREADS, threadpoolctl)."""
    return omp_max_threads()


# ---------------------------------------------------------------------------
# sizes

cdef enum:
    # Rows narrower than this are computed a tile of rows at a time (see
    # tile_exp_shifted in tiles.hpp); the choice depends on the width only,
    # so every row of a given width always takes the same arithmetic path.
    SHORT_ROW = 32


cdef inline Py_ssize_t _tile_rows(Py_ssize_t n) noexcept nogil:
    return tile_rows(n)


cdef inline Py_ssize_t _n_tiles(Py_ssize_t n_rows, Py_ssize_t n) noexcept nogil:
    return (n_rows + _tile_rows(n) - 1) // _tile_rows(n)


# ---------------------------------------------------------------------------
# softmax, log_softmax, logsumexp: one row, or one tile of short rows

cdef inline void _softmax_row(
    const floating *x, floating *out, Py_ssize_t n
) noexcept nogil:
    cdef floating m = row_max(x, n)
    cdef double s = row_exp_store_sum(x, out, n, m)
    row_scale(out, n, <floating>(1.0 / s))


cdef inline void _softmax_tile(
    const floating *x, floating *out, Py_ssize_t rows, Py_ssize_t n
) noexcept nogil:
    tile_softmax(x, out, rows, n)


cdef inline void _log_softmax_row(
    const floating *x, floating *out, Py_ssize_t n
) noexcept nogil:
    cdef floating m = row_max(x, n)
    cdef double lse = log(row_exp_sum(x, n, m))
    row_log_softmax_from(x, out, n, m, <floating>lse)


cdef inline void _log_softmax_tile(
    const floating *x, floating *out, Py_ssize_t rows, Py_ssize_t n
) noexcept nogil:
    tile_log_softmax(x, out, rows, n)


cdef inline double _logsumexp_finish(
    const floating *x, Py_ssize_t n, floating m, double s
) noexcept nogil:
    if m == INFINITY or m == -INFINITY:
        # all -inf (or empty) gives -inf, +inf gives +inf: unless a NaN is there
        return NAN if row_has_nan(x, n) else m
    return m + log(s)


cdef inline void _logsumexp_tile(
    const floating *x, floating *out, Py_ssize_t rows, Py_ssize_t n
) noexcept nogil:
    tile_logsumexp(x, out, rows, n)


# ---------------------------------------------------------------------------
# cross-entropy.  The target of a row is y' (weighted and smoothed):
#   class index t:  y'_k = alpha w_t [k == t] + beta w_k
#   probabilities:  y'_k = w_k (alpha y_k + beta)
# with alpha = 1 - eps, beta = eps / C and w = 1 without weights.  With
# e_k = exp(x_k - m), s = sum(e), lse = log(s):
#   loss = sum(y') lse - sum(y'_k (x_k - m)),  grad = e sum(y') / s - y'.
# A row's statistics (m, x_t - m, smoothing sums) are read from x before the
# exponentials are written, so grad may be x (in place).

cdef inline double _skipped_row(floating *grad, Py_ssize_t n, bint ignored) noexcept nogil:
    """An ignored row (padding rows may hold anything: it counts 0 and gets a 0
    gradient) or, defensively, a label out of range.  Labels are validated
    before the kernel runs, and each is read once here, but a caller thread
    rewriting them meanwhile must not make the kernel index out of bounds:
    such a row gets a NaN loss and gradient instead."""
    if grad != NULL:
        if ignored:
            row_zero(grad, n)
        else:
            row_fill(grad, n, <floating>NAN)
    return 0.0 if ignored else NAN


cdef inline void _cross_entropy_index_grad(
    floating *grad, Py_ssize_t n, Py_ssize_t t, const floating *w, double w_t,
    double alpha, double beta, double y_sum, double s, double scale,
) noexcept nogil:
    """Turns the exponentials in grad (n columns, w their weights or NULL) into
    the gradient times scale.  t is the label's column counted from grad: a
    chunk of a split row holds it only if 0 <= t < n."""
    if beta != 0.0:
        row_grad_affine(grad, w, n, <floating>(y_sum / s * scale), <floating>(beta * scale))
    else:
        row_scale(grad, n, <floating>(y_sum / s * scale))
    if 0 <= t < n:
        grad[t] = grad[t] - <floating>(alpha * w_t * scale)


cdef inline double _cross_entropy_index_row(
    const floating *x, Py_ssize_t n, Py_ssize_t t, const floating *w,
    double w_total, double alpha, double beta, floating *grad, double scale,
) noexcept nogil:
    cdef floating m = row_max(x, n)
    cdef double x_t = <double>x[t] - <double>m
    cdef double smooth = 0.0
    cdef double s
    if grad == NULL:
        if beta != 0.0:
            smooth = row_weighted_shifted_sum(x, w, n, m)
        s = row_exp_sum(x, n, m)
    elif beta != 0.0:
        s = row_exp_store_sum_smooth(x, grad, w, n, m, &smooth)
    else:
        s = row_exp_store_sum(x, grad, n, m)
    cdef double w_t = 1.0 if w == NULL else w[t]
    cdef double y_sum
    cdef double loss = cross_entropy_index_loss(
        w_t, w_total, alpha, beta, x_t, smooth, s, &y_sum)
    if grad != NULL:
        _cross_entropy_index_grad(grad, n, t, w, w_t, alpha, beta, y_sum, s, scale)
    return loss


cdef inline double _cross_entropy_prob_finish(
    floating *grad, const floating *y, Py_ssize_t n, const floating *w,
    double alpha, double beta, double y_sum, double y_dot, double s, double scale,
) noexcept nogil:
    if grad != NULL:
        row_grad_soft(grad, y, w, n, <floating>(y_sum / s * scale),
                      <floating>(alpha * scale), <floating>(beta * scale))
    return cross_entropy_prob_loss(y_sum, y_dot, s)


cdef inline double _cross_entropy_prob_row(
    const floating *x, const floating *y, Py_ssize_t n, const floating *w,
    double alpha, double beta, floating *grad, double scale,
) noexcept nogil:
    cdef floating m = row_max(x, n)
    cdef double y_dot, y_sum, s
    if grad == NULL:
        y_sum = row_soft_target_sums(x, y, w, n, m, alpha, beta, &y_dot)
        s = row_exp_sum(x, n, m)
    else:
        s = row_exp_store_sum_soft(x, y, w, grad, n, m, alpha, beta, &y_sum, &y_dot)
    return _cross_entropy_prob_finish(grad, y, n, w, alpha, beta, y_sum, y_dot, s, scale)


cdef inline void _cross_entropy_prob_tile(
    const floating *x, const floating *y, Py_ssize_t rows, Py_ssize_t n,
    const floating *w, double alpha, double beta, double *loss, floating *grad,
    double scale,
) noexcept nogil:
    cdef floating m[TILE]
    cdef floating scratch[TILE]
    cdef double s[TILE]
    cdef double y_sum[TILE]
    cdef double y_dot[TILE]
    cdef Py_ssize_t r
    cdef floating *e = grad
    if e == NULL:
        e = &scratch[0]
    tile_max(x, rows, n, m)
    for r in range(rows):
        y_sum[r] = row_soft_target_sums(
            x + r * n, y + r * n, w, n, m[r], alpha, beta, &y_dot[r])
    tile_exp_shifted(x, e, rows, n, m, s)
    for r in range(rows):
        loss[r] = _cross_entropy_prob_finish(
            grad if grad == NULL else grad + r * n, y + r * n, n, w, alpha, beta,
            y_sum[r], y_dot[r], s[r], scale)


# ---------------------------------------------------------------------------
# the kernels: loops over rows (or tiles of short rows) spread over threads

# ---------------------------------------------------------------------------
# work units.  A unit is one row, or one tile of short rows.  Each kernel runs
# its units in a plain loop when n_threads == 1 (an OpenMP region costs about
# 1 us, as much as a whole 1x1000 softmax) and over a static prange otherwise;
# a unit's arithmetic is the same either way.

cdef inline Py_ssize_t _n_units(Py_ssize_t n_rows, Py_ssize_t n) noexcept nogil:
    return _n_tiles(n_rows, n) if n < SHORT_ROW else n_rows


cdef inline void _softmax_unit(
    const floating *x, floating *out, Py_ssize_t n_rows, Py_ssize_t n, Py_ssize_t i
) noexcept nogil:
    cdef Py_ssize_t r0 = i * _tile_rows(n)
    if n < SHORT_ROW:
        _softmax_tile(x + r0 * n, out + r0 * n, min(_tile_rows(n), n_rows - r0), n)
    else:
        _softmax_row(x + i * n, out + i * n, n)


cdef inline void _log_softmax_unit(
    const floating *x, floating *out, Py_ssize_t n_rows, Py_ssize_t n, Py_ssize_t i
) noexcept nogil:
    cdef Py_ssize_t r0 = i * _tile_rows(n)
    if n < SHORT_ROW:
        _log_softmax_tile(x + r0 * n, out + r0 * n, min(_tile_rows(n), n_rows - r0), n)
    else:
        _log_softmax_row(x + i * n, out + i * n, n)


cdef inline void _logsumexp_unit(
    const floating *x, floating *out, Py_ssize_t n_rows, Py_ssize_t n, Py_ssize_t i
) noexcept nogil:
    cdef Py_ssize_t r0 = i * _tile_rows(n)
    cdef floating m
    if n < SHORT_ROW:
        _logsumexp_tile(x + r0 * n, out + r0, min(_tile_rows(n), n_rows - r0), n)
    else:
        m = row_max(x + i * n, n)
        out[i] = <floating>_logsumexp_finish(x + i * n, n, m, row_exp_sum(x + i * n, n, m))


cdef inline void _softmax_backward_unit(
    const floating *g, const floating *a, floating *out, Py_ssize_t n, Py_ssize_t i
) noexcept nogil:
    cdef Py_ssize_t r = i * n
    row_softmax_backward(g + r, a + r, out + r, n, <floating>row_dot(g + r, a + r, n))


cdef inline void _log_softmax_backward_unit(
    const floating *g, const floating *o, floating *out, Py_ssize_t n, Py_ssize_t i
) noexcept nogil:
    cdef Py_ssize_t r = i * n
    row_log_softmax_backward(g + r, o + r, out + r, n, <floating>row_sum(g + r, n))


cdef inline void _cross_entropy_index_unit(
    const floating *x, const label_t *target, Py_ssize_t n_rows, Py_ssize_t n,
    Py_ssize_t ignore_index, const floating *w, double w_total, double alpha,
    double beta, double *loss, double *tile_loss, floating *grad, double scale,
    Py_ssize_t i,
) noexcept nogil:
    cdef Py_ssize_t r0 = i * _tile_rows(n)
    cdef Py_ssize_t rows = min(_tile_rows(n), n_rows - r0)
    cdef Py_ssize_t t
    if n < SHORT_ROW:
        tile_cross_entropy_index(
            x + r0 * n, target + r0, rows, n, ignore_index, w, w_total, alpha, beta,
            loss + r0, grad if grad == NULL else grad + r0 * n, scale)
        tile_loss[i] = row_sum(loss + r0, rows)
        return
    t = target[i]
    if t == ignore_index or not 0 <= t < n:
        row_prefetch(x + i * n, n)
        loss[i] = _skipped_row(grad if grad == NULL else grad + i * n, n,
                               t == ignore_index)
    else:
        loss[i] = _cross_entropy_index_row(
            x + i * n, n, t, w, w_total, alpha, beta,
            grad if grad == NULL else grad + i * n, scale)


cdef inline void _cross_entropy_prob_unit(
    const floating *x, const floating *y, Py_ssize_t n_rows, Py_ssize_t n,
    const floating *w, double alpha, double beta, double *loss, double *tile_loss,
    floating *grad, double scale, Py_ssize_t i,
) noexcept nogil:
    cdef Py_ssize_t r0 = i * _tile_rows(n)
    cdef Py_ssize_t rows = min(_tile_rows(n), n_rows - r0)
    if n < SHORT_ROW:
        _cross_entropy_prob_tile(
            x + r0 * n, y + r0 * n, rows, n, w, alpha, beta, loss + r0,
            grad if grad == NULL else grad + r0 * n, scale)
        tile_loss[i] = row_sum(loss + r0, rows)
    else:
        loss[i] = _cross_entropy_prob_row(
            x + i * n, y + i * n, n, w, alpha, beta,
            grad if grad == NULL else grad + i * n, scale)


# ---------------------------------------------------------------------------
# the sum of the row losses (for reduction="mean"/"sum"), in an order fixed by
# the shape: the rows' losses pairwise, or for short rows each tile's sum
# (computed by the thread that computed the tile, while it is in cache) and
# then the tiles' pairwise.
# It replaces a pass over the row losses after the kernel (at 262144x2 that
# pass cost as much as a tenth of the kernel).

cdef double *_tile_loss_alloc(Py_ssize_t n_rows, Py_ssize_t n) except? NULL:
    """Room for one loss sum per tile of short rows (NULL for long rows)."""
    if n >= SHORT_ROW:
        return NULL
    cdef double *p = <double *>malloc(_n_tiles(n_rows, n) * sizeof(double))
    if p == NULL:
        raise MemoryError()
    return p


cdef inline double _loss_total(
    const double *loss, const double *tile_loss, Py_ssize_t n_rows, Py_ssize_t n
) noexcept nogil:
    if n < SHORT_ROW:
        return pairwise_sum(tile_loss, _n_tiles(n_rows, n))
    return pairwise_sum(loss, n_rows)


# ---------------------------------------------------------------------------
# rows split over threads.  With fewer rows than two per thread (16x131072 on
# 16 threads, one wide row on two) whole rows leave threads idle, so each row's
# columns are cut into chunks of CHUNK and the chunks spread over the team, in
# up to three parallel passes with a serial step between them:
#   1. the maximum of each chunk;           then each row's maximum (and label)
#   2. each chunk's sums (exp, smoothing,   then each row's sums, in chunk
#      targets), exponentials stored;            order, and its loss
#   3. each chunk scaled into its output.
# rowops.hpp reduces every long row by the same chunks, added in the same
# order, whether or not the row is split: a row's result is the same bits at
# every thread count (tested).  The chunks of a pass are dealt out statically
# in the same order in every pass, so a thread finds its chunks in its own
# cache in passes 2 and 3.

cdef struct _ChunkSums:
    double s        # sum of exponentials (pass 1: the chunk's maximum)
    double a        # smoothing sum (indices) or sum of targets (probabilities)
    double b        # sum of targets times shifted logits (probabilities)

cdef struct _RowSums:
    double m        # maximum
    double s, a, b  # as _ChunkSums, over the row
    double x_t      # indices: x_t - m
    double w_t      # indices: the label's weight
    double y_sum    # indices: sum of the row's target
    Py_ssize_t t    # indices: the label
    int state       # indices: 0 computed, 1 ignored, 2 label out of range

cdef struct _Split:
    Py_ssize_t n_rows, n, nc   # rows, columns, chunks per row
    _RowSums *row
    _ChunkSums *chunk          # n_rows * nc, chunk c of row r at r * nc + c

cdef struct _CrossEntropyArgs:
    Py_ssize_t ignore_index
    double w_total, alpha, beta, scale
    double *loss


cdef inline bint _split_rows(Py_ssize_t n_rows, Py_ssize_t n, int n_threads) noexcept nogil:
    return n_threads > 1 and n > CHUNK and n_rows < 2 * n_threads


cdef int _split_alloc(_Split *sp, Py_ssize_t n_rows, Py_ssize_t n) except -1:
    sp.n_rows = n_rows
    sp.n = n
    sp.nc = (n + CHUNK - 1) // CHUNK
    sp.row = <_RowSums *>calloc(n_rows, sizeof(_RowSums))
    sp.chunk = <_ChunkSums *>calloc(n_rows * sp.nc, sizeof(_ChunkSums))
    if sp.row == NULL or sp.chunk == NULL:
        free(sp.row)
        free(sp.chunk)
        raise MemoryError()
    return 0


cdef inline void _split_chunk(
    int op, int step, const floating *x, const floating *y, const floating *w,
    floating *out, const _CrossEntropyArgs *ce, _Split *sp, Py_ssize_t u,
) noexcept nogil:
    """Pass `step` (0, 1, 2) of op over chunk u."""
    cdef Py_ssize_t r = u // sp.nc
    cdef Py_ssize_t c0 = (u - r * sp.nc) * CHUNK
    cdef Py_ssize_t k = min(<Py_ssize_t>CHUNK, sp.n - c0)
    cdef Py_ssize_t o = r * sp.n + c0
    cdef const floating *wc = w if w == NULL else w + c0
    cdef _RowSums *row = &sp.row[r]
    cdef _ChunkSums *part = &sp.chunk[u]
    cdef floating m = <floating>row.m
    if step == 0:
        part.s = row_max(x + o, k)
    elif op == OP_SOFTMAX:
        if step == 1:
            part.s = row_exp_store_sum(x + o, out + o, k, m)
        else:
            row_scale(out + o, k, <floating>(1.0 / row.s))
    elif op == OP_LOG_SOFTMAX or op == OP_LOGSUMEXP:
        if step == 1:
            part.s = row_exp_sum(x + o, k, m)
        elif op == OP_LOG_SOFTMAX:  # (logsumexp has no pass 2: out holds one value per row)
            row_log_softmax_from(x + o, out + o, k, m, <floating>log(row.s))
    elif op == OP_CROSS_ENTROPY_INDEX:
        if row.state != 0:
            if step == 2:
                _skipped_row(out + o, k, row.state == 1)
        elif step == 2:
            _cross_entropy_index_grad(out + o, k, row.t - c0, wc, row.w_t, ce.alpha,
                                      ce.beta, row.y_sum, row.s, ce.scale)
        elif out == NULL:
            if ce.beta != 0.0:
                part.a = row_weighted_shifted_sum(x + o, wc, k, m)
            part.s = row_exp_sum(x + o, k, m)
        elif ce.beta != 0.0:
            part.s = row_exp_store_sum_smooth(x + o, out + o, wc, k, m, &part.a)
        else:
            part.s = row_exp_store_sum(x + o, out + o, k, m)
    elif step == 1:  # OP_CROSS_ENTROPY_PROB
        if out == NULL:
            part.a = row_soft_target_sums(x + o, y + o, wc, k, m, ce.alpha, ce.beta, &part.b)
            part.s = row_exp_sum(x + o, k, m)
        else:
            part.s = row_exp_store_sum_soft(x + o, y + o, wc, out + o, k, m, ce.alpha,
                                            ce.beta, &part.a, &part.b)
    else:
        _cross_entropy_prob_finish(out + o, y + o, k, wc, ce.alpha, ce.beta, row.a, row.b,
                                   row.s, ce.scale)


cdef inline void _split_rows_step(
    int op, int step, const floating *x, const label_t *target, const floating *w,
    floating *out, const _CrossEntropyArgs *ce, _Split *sp,
) noexcept nogil:
    """The serial step after pass `step` (0 or 1): the rows' maximum (the
    largest chunk maximum: the same value as row_max; max(-0, +0) cannot
    depend on the order as row_max returns +0 for either) and labels, or the
    rows' sums (chunk sums added in chunk order, as rowops.hpp does) and what
    follows from them."""
    cdef Py_ssize_t r, c, t, nc = sp.nc, n = sp.n
    cdef _RowSums *row
    cdef const _ChunkSums *part
    cdef double v
    for r in range(sp.n_rows):
        row = &sp.row[r]
        part = &sp.chunk[r * nc]
        if step == 0:
            row.m = part[0].s
            for c in range(1, nc):
                v = part[c].s
                row.m = v if v > row.m else row.m
            if op == OP_CROSS_ENTROPY_INDEX:
                # the label and x_t are read before pass 2 (out may be x)
                t = target[r]
                row.state = 1 if t == ce.ignore_index else (0 if 0 <= t < n else 2)
                if row.state == 0:
                    row.t = t
                    row.x_t = <double>x[r * n + t] - <double><floating>row.m
                    row.w_t = 1.0 if w == NULL else w[t]
            continue
        for c in range(nc):
            row.s = add_chunk(row.s, part[c].s, c * CHUNK)
            row.a = add_chunk(row.a, part[c].a, c * CHUNK)
            row.b = add_chunk(row.b, part[c].b, c * CHUNK)
        if op == OP_LOGSUMEXP:
            out[r] = <floating>_logsumexp_finish(x + r * n, n, <floating>row.m, row.s)
        elif op == OP_CROSS_ENTROPY_INDEX:
            if row.state != 0:
                ce.loss[r] = _skipped_row(<floating *>NULL, 0, row.state == 1)
            else:
                ce.loss[r] = cross_entropy_index_loss(
                    row.w_t, ce.w_total, ce.alpha, ce.beta, row.x_t, row.a, row.s, &row.y_sum)
        elif op == OP_CROSS_ENTROPY_PROB:
            ce.loss[r] = _cross_entropy_prob_finish(
                <floating *>NULL, <const floating *>NULL, n, w, ce.alpha, ce.beta, row.a,
                row.b, row.s, ce.scale)


cdef int _split_columns(
    int op, const floating *x, const floating *y, const label_t *target, const floating *w,
    floating *out, const _CrossEntropyArgs *ce, Py_ssize_t n_rows, Py_ssize_t n,
    int n_threads,
) except -1:
    """op over rows split into chunks (see above).  out: the result (softmax,
    log_softmax, logsumexp) or the gradient (cross-entropy; NULL for the loss
    alone, which ce.loss receives); y: probability targets; target: labels."""
    cdef _Split sp
    _split_alloc(&sp, n_rows, n)
    cdef Py_ssize_t u, n_units = n_rows * sp.nc
    cdef int step
    cdef int n_steps = 2 if op == OP_LOGSUMEXP or out == NULL else 3
    with nogil:
        for step in range(n_steps):
            for u in prange(n_units, schedule="static", num_threads=n_threads):
                _split_chunk(op, step, x, y, w, out, ce, &sp, u)
            if step < 2:
                _split_rows_step(op, step, x, target, w, out, ce, &sp)
    free(sp.row)
    free(sp.chunk)
    return 0


# ---------------------------------------------------------------------------
# the kernels

cdef enum:
    # op codes of small_rows (the Python layer passes them) and _split_columns
    OP_SOFTMAX = 0
    OP_LOG_SOFTMAX = 1
    OP_LOGSUMEXP = 2
    OP_CROSS_ENTROPY_INDEX = 3
    OP_CROSS_ENTROPY_PROB = 4


cdef inline void _small_rows_serial(
    int op, const floating *x, floating *out, Py_ssize_t n_rows, Py_ssize_t n
) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(_n_units(n_rows, n)):
        if op == OP_SOFTMAX:
            _softmax_unit(x, out, n_rows, n, i)
        else:
            _log_softmax_unit(x, out, n_rows, n, i)


cdef inline bint _small_array(object v, int nd, cnp.npy_intp *dims, int typenum,
                              bint writeable) noexcept:
    """v is an ndarray (not a subclass) of this shape and float type, C-contiguous,
    aligned, native byte order (and writeable if asked)."""
    if type(v) is not cnp.ndarray:
        return False
    cdef cnp.ndarray a = <cnp.ndarray>v
    cdef int i
    if (cnp.PyArray_NDIM(a) != nd or cnp.PyArray_TYPE(a) != typenum
            or not cnp.PyArray_ISCARRAY_RO(a) or not cnp.PyArray_ISNOTSWAPPED(a)
            or (writeable and not cnp.PyArray_ISWRITEABLE(a))):
        return False
    for i in range(nd):
        if cnp.PyArray_DIMS(a)[i] != dims[i]:
            return False
    return True


def small_rows(int op, object x, object out, Py_ssize_t small_work):
    """softmax (op 0) or log_softmax (op 1) over the last axis of x, on one
    thread, into out (or a new array when out is None), when x is a
    C-contiguous, aligned, native-order float32/float64 ndarray of 1 to
    small_work - 1 elements and out such an array of x's shape and dtype,
    writeable, either x itself or not overlapping it.  Returns the result, or
    None for anything else (the caller takes the general path, which also
    raises the errors).  It exists for the overhead of small calls: the checks
    are a few C reads, there is at most one allocation and no memoryview
    (acquiring two costs ~0.6 us, as much as a 1x1000 softmax)."""
    if type(x) is not cnp.ndarray:
        return None
    cdef cnp.ndarray a = <cnp.ndarray>x
    cdef int nd = cnp.PyArray_NDIM(a)
    cdef int typenum = cnp.PyArray_TYPE(a)
    cdef Py_ssize_t size = cnp.PyArray_SIZE(a)
    if (nd == 0 or size == 0 or size >= small_work
            or (typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64)
            or not _small_array(a, nd, cnp.PyArray_DIMS(a), typenum, False)):
        return None
    cdef cnp.ndarray r
    cdef char *xb
    cdef char *rb
    cdef Py_ssize_t nbytes = size * cnp.PyArray_ITEMSIZE(a)
    if out is None:
        r = cnp.PyArray_EMPTY(nd, cnp.PyArray_DIMS(a), typenum, 0)
    else:
        if not _small_array(out, nd, cnp.PyArray_DIMS(a), typenum, True):
            return None
        r = <cnp.ndarray>out
        xb = <char *>cnp.PyArray_DATA(a)
        rb = <char *>cnp.PyArray_DATA(r)
        if rb != xb and rb < xb + nbytes and xb < rb + nbytes:
            return None  # a partial overlap: the general path refuses it
    cdef Py_ssize_t n = cnp.PyArray_DIMS(a)[nd - 1]
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _small_rows_serial(op, <const float *>cnp.PyArray_DATA(a),
                               <float *>cnp.PyArray_DATA(r), size // n, n)
        else:
            _small_rows_serial(op, <const double *>cnp.PyArray_DATA(a),
                               <double *>cnp.PyArray_DATA(r), size // n, n)
    return r


def softmax_rows(const floating[:, ::1] x, floating[:, ::1] out, int n_threads):
    """out[i] = softmax(x[i]) for every row; out may be x."""
    cdef Py_ssize_t i, n_rows = x.shape[0], n = x.shape[1]
    if n_rows == 0 or n == 0:
        return
    cdef const floating *xp = &x[0, 0]
    cdef floating *op = &out[0, 0]
    if _split_rows(n_rows, n, n_threads):
        _split_columns(OP_SOFTMAX, xp, <const floating *>NULL, <const int32_t *>NULL,
                       <const floating *>NULL, op, NULL, n_rows, n, n_threads)
        return
    if n_threads == 1:
        with nogil:
            for i in range(_n_units(n_rows, n)):
                _softmax_unit(xp, op, n_rows, n, i)
    else:
        for i in prange(_n_units(n_rows, n), nogil=True, schedule="static",
                        num_threads=n_threads):
            _softmax_unit(xp, op, n_rows, n, i)


def log_softmax_rows(const floating[:, ::1] x, floating[:, ::1] out, int n_threads):
    """out[i] = log_softmax(x[i]) for every row; out may be x."""
    cdef Py_ssize_t i, n_rows = x.shape[0], n = x.shape[1]
    if n_rows == 0 or n == 0:
        return
    cdef const floating *xp = &x[0, 0]
    cdef floating *op = &out[0, 0]
    if _split_rows(n_rows, n, n_threads):
        _split_columns(OP_LOG_SOFTMAX, xp, <const floating *>NULL, <const int32_t *>NULL,
                       <const floating *>NULL, op, NULL, n_rows, n, n_threads)
        return
    if n_threads == 1:
        with nogil:
            for i in range(_n_units(n_rows, n)):
                _log_softmax_unit(xp, op, n_rows, n, i)
    else:
        for i in prange(_n_units(n_rows, n), nogil=True, schedule="static",
                        num_threads=n_threads):
            _log_softmax_unit(xp, op, n_rows, n, i)


def logsumexp_rows(const floating[:, ::1] x, floating[::1] out, int n_threads):
    """out[i] = log(sum(exp(x[i]))) for every row (-inf for empty rows)."""
    cdef Py_ssize_t i, n_rows = x.shape[0], n = x.shape[1]
    if n_rows == 0:
        return
    if n == 0:
        out[:] = -INFINITY
        return
    cdef const floating *xp = &x[0, 0]
    cdef floating *op = &out[0]
    if _split_rows(n_rows, n, n_threads):
        _split_columns(OP_LOGSUMEXP, xp, <const floating *>NULL, <const int32_t *>NULL,
                       <const floating *>NULL, op, NULL, n_rows, n, n_threads)
        return
    if n_threads == 1:
        with nogil:
            for i in range(_n_units(n_rows, n)):
                _logsumexp_unit(xp, op, n_rows, n, i)
    else:
        for i in prange(_n_units(n_rows, n), nogil=True, schedule="static",
                        num_threads=n_threads):
            _logsumexp_unit(xp, op, n_rows, n, i)


def softmax_backward_rows(const floating[:, ::1] grad_output,
                          const floating[:, ::1] output,
                          floating[:, ::1] out, int n_threads):
    """out[i] = a (g - <g, a>) with g = grad_output[i], a = output[i]."""
    cdef Py_ssize_t i, n_rows = output.shape[0], n = output.shape[1]
    if n_rows == 0 or n == 0:
        return
    cdef const floating *gp = &grad_output[0, 0]
    cdef const floating *ap = &output[0, 0]
    cdef floating *op = &out[0, 0]
    if n_threads == 1:
        with nogil:
            for i in range(n_rows):
                _softmax_backward_unit(gp, ap, op, n, i)
    else:
        for i in prange(n_rows, nogil=True, schedule="static", num_threads=n_threads):
            _softmax_backward_unit(gp, ap, op, n, i)


def log_softmax_backward_rows(const floating[:, ::1] grad_output,
                              const floating[:, ::1] output,
                              floating[:, ::1] out, int n_threads):
    """out[i] = g - exp(o) sum(g) with g = grad_output[i], o = output[i]."""
    cdef Py_ssize_t i, n_rows = output.shape[0], n = output.shape[1]
    if n_rows == 0 or n == 0:
        return
    cdef const floating *gp = &grad_output[0, 0]
    cdef const floating *lp = &output[0, 0]
    cdef floating *op = &out[0, 0]
    if n_threads == 1:
        with nogil:
            for i in range(n_rows):
                _log_softmax_backward_unit(gp, lp, op, n, i)
    else:
        for i in prange(n_rows, nogil=True, schedule="static", num_threads=n_threads):
            _log_softmax_backward_unit(gp, lp, op, n, i)


cdef enum:
    LABEL_CHUNK = 65536  # labels per unit of the label check over threads


cdef inline Py_ssize_t _labels_chunk_bad(
    const label_t *t, Py_ssize_t n_rows, Py_ssize_t n_classes, Py_ssize_t ignore_index,
    Py_ssize_t c, Py_ssize_t *kept,
) noexcept nogil:
    cdef Py_ssize_t k0 = c * LABEL_CHUNK
    return labels_count_bad(t + k0, min(<Py_ssize_t>LABEL_CHUNK, n_rows - k0), n_classes,
                            ignore_index, &kept[c])


cdef Py_ssize_t _labels_count_bad(
    const label_t *t, Py_ssize_t n_rows, Py_ssize_t n_classes, Py_ssize_t ignore_index,
    Py_ssize_t *kept, int n_threads,
) except -1:
    """labels_count_bad, by chunks over the threads for many labels (counts:
    exact in any order)."""
    if n_threads == 1 or n_rows <= LABEL_CHUNK:
        with nogil:
            return labels_count_bad(t, n_rows, n_classes, ignore_index, kept)
    cdef Py_ssize_t c, bad = 0, n_chunks = (n_rows + LABEL_CHUNK - 1) // LABEL_CHUNK
    cdef Py_ssize_t *chunk_kept = <Py_ssize_t *>malloc(n_chunks * sizeof(Py_ssize_t))
    if chunk_kept == NULL:
        raise MemoryError()
    for c in prange(n_chunks, nogil=True, schedule="static", num_threads=n_threads):
        bad += _labels_chunk_bad(t, n_rows, n_classes, ignore_index, c, chunk_kept)
    kept[0] = 0
    for c in range(n_chunks):
        kept[0] += chunk_kept[c]
    free(chunk_kept)
    return bad


def label_summary(const label_t[::1] target, Py_ssize_t n_classes,
                  Py_ssize_t ignore_index, const double[::1] weight=None, int n_threads=1):
    """Check class indices and total the weight that a "mean" divides by.

    Returns ``(first_bad_row, total)``: the first row whose label is neither in
    ``[0, n_classes)`` nor ``ignore_index`` (-1 when all are valid), and the sum
    of ``weight[t]`` (of 1 when weight is None) over the non-ignored rows,
    added in row order.
    """
    cdef Py_ssize_t i, t, bad = -1, n_rows = target.shape[0], kept
    cdef double total = 0.0
    cdef bint weighted = weight is not None
    if n_rows > 0 and not weighted:
        # the common case as one vector pass; the scalar loop below finds the
        # first bad row only when there is one
        bad = _labels_count_bad(&target[0], n_rows, n_classes, ignore_index, &kept, n_threads)
        if bad == 0:
            return -1, <double>kept
        bad = -1
    with nogil:
        for i in range(n_rows):
            t = target[i]
            if t == ignore_index:
                continue
            if t < 0 or t >= n_classes:
                bad = i
                break
            total += weight[t] if weighted else 1.0
    return bad, total


def cross_entropy_index_rows(const floating[:, ::1] logits,
                             const label_t[::1] target,
                             const floating[::1] weight,
                             Py_ssize_t ignore_index,
                             double label_smoothing,
                             double grad_scale,
                             double[::1] row_loss,
                             floating[:, ::1] grad,
                             int n_threads):
    """Per-row cross-entropy with class indices into row_loss, and returns
    their sum (see _loss_total); the gradient (times grad_scale) into grad
    when grad is not None.  Labels must have been checked with label_summary.
    weight may be None; grad may be logits."""
    cdef Py_ssize_t i, n_rows = logits.shape[0], n = logits.shape[1]
    if n_rows == 0:
        return 0.0
    cdef const floating *xp = &logits[0, 0]
    cdef const label_t *tp = &target[0]
    cdef double *lp = &row_loss[0]
    cdef const floating *wp = NULL
    cdef floating *gp = NULL
    cdef double w_total = <double>n
    cdef double alpha = 1.0 - label_smoothing
    cdef double beta = label_smoothing / n
    if weight is not None:
        wp = &weight[0]
        w_total = row_sum(wp, n)
    if grad is not None:
        gp = &grad[0, 0]
    cdef _CrossEntropyArgs ce = _CrossEntropyArgs(
        ignore_index, w_total, alpha, beta, grad_scale, lp)
    if _split_rows(n_rows, n, n_threads):
        _split_columns(OP_CROSS_ENTROPY_INDEX, xp, <const floating *>NULL, tp, wp, gp, &ce,
                       n_rows, n, n_threads)
        return _loss_total(lp, NULL, n_rows, n)
    cdef double *tl = _tile_loss_alloc(n_rows, n)
    if n_threads == 1:
        with nogil:
            for i in range(_n_units(n_rows, n)):
                _cross_entropy_index_unit(xp, tp, n_rows, n, ignore_index, wp, w_total,
                                          alpha, beta, lp, tl, gp, grad_scale, i)
    else:
        for i in prange(_n_units(n_rows, n), nogil=True, schedule="static",
                        num_threads=n_threads):
            _cross_entropy_index_unit(xp, tp, n_rows, n, ignore_index, wp, w_total,
                                      alpha, beta, lp, tl, gp, grad_scale, i)
    cdef double total = _loss_total(lp, tl, n_rows, n)
    free(tl)
    return total


def cross_entropy_prob_rows(const floating[:, ::1] logits,
                            const floating[:, ::1] target,
                            const floating[::1] weight,
                            double label_smoothing,
                            double grad_scale,
                            double[::1] row_loss,
                            floating[:, ::1] grad,
                            int n_threads):
    """Per-row cross-entropy with probability targets (they need not sum to
    one) into row_loss, and returns their sum (see _loss_total); the gradient
    (times grad_scale) into grad when grad is not None.  weight may be None;
    grad may be logits but not target."""
    cdef Py_ssize_t i, n_rows = logits.shape[0], n = logits.shape[1]
    if n_rows == 0:
        return 0.0
    cdef const floating *xp = &logits[0, 0]
    cdef const floating *yp = &target[0, 0]
    cdef double *lp = &row_loss[0]
    cdef const floating *wp = NULL
    cdef floating *gp = NULL
    cdef double alpha = 1.0 - label_smoothing
    cdef double beta = label_smoothing / n
    if weight is not None:
        wp = &weight[0]
    if grad is not None:
        gp = &grad[0, 0]
    cdef _CrossEntropyArgs ce = _CrossEntropyArgs(0, 0.0, alpha, beta, grad_scale, lp)
    if _split_rows(n_rows, n, n_threads):
        _split_columns(OP_CROSS_ENTROPY_PROB, xp, yp, <const int32_t *>NULL, wp, gp, &ce,
                       n_rows, n, n_threads)
        return _loss_total(lp, NULL, n_rows, n)
    cdef double *tl = _tile_loss_alloc(n_rows, n)
    if n_threads == 1:
        with nogil:
            for i in range(_n_units(n_rows, n)):
                _cross_entropy_prob_unit(xp, yp, n_rows, n, wp, alpha, beta, lp, tl, gp,
                                         grad_scale, i)
    else:
        for i in prange(_n_units(n_rows, n), nogil=True, schedule="static",
                        num_threads=n_threads):
            _cross_entropy_prob_unit(xp, yp, n_rows, n, wp, alpha, beta, lp, tl, gp,
                                     grad_scale, i)
    cdef double total = _loss_total(lp, tl, n_rows, n)
    free(tl)
    return total
