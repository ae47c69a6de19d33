# The body of the compiled kernels, included by _kernels.pyx (baseline ISA),
# _kernels_avx2.pyx and _kernels_avx512.pyx: one source, built three times.

# Compiled kernels of csoftmax.
#
# Design
# ------
# Every kernel works on C-contiguous 2-D arrays of float32 or float64 (the fused
# type ``floating``), one row at a time: the Python layer has already validated
# the inputs, moved the reduced axis last and made the arrays contiguous.  Rows
# are spread over OpenMP threads with ``prange(schedule="guided")``: the first
# thread to arrive takes 1/threads of the units, each later claim 1/threads of
# what is left, so a thread that starts late (a pool thread waking from its
# futex sleep: 50 us to 2 ms on a cloud VM, where a 65536x10 loss's share is
# 0.3 ms) takes less, where "static" made the call wait for its fixed half.
# AVX2, 2 threads, paired medians against "static" over six calls (losses,
# gradients and softmax of 256x1000 to 8192x1000): after 5 ms asleep or busy
# 0.91-1.03x the time, after a PyTorch loss + gradient 0.85-1.08x, back to
# back (threads awake) 0.92-1.03x.
# A unit's values do not depend on the thread that computes it (per-thread
# scratch only within a unit), so the schedule changes no bit.  "static"
# stays where the units are few: a few long rows' column chunks (rowsplit.pxi:
# guided's extra claims took a 1x262144 loss + gradient 1.045x the time) and
# the floors below (exp_floor, copy_floor: one equal part per thread is what
# they measure).  Each row is
# computed by one thread from start to end, except when rows are fewer than two
# per thread: then each row's columns are split into fixed chunks spread over
# the team (see rowsplit.pxi).  A row's sums are the same chunk
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
from cython.parallel cimport prange, threadid
cimport numpy as cnp
from libc.math cimport fabs, isfinite, log, INFINITY, NAN
from libc.stdlib cimport calloc, free, malloc
from libc.stdint cimport int32_t, int64_t, uint16_t

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
    # with and without next, the row to prefetch (chunk_exp_lanes): of x's
    # type, or the 16-bit storage of a converted row
    double row_exp_sum[T](const T *x, Py_ssize_t n, T shift) noexcept
    double row_exp_sum[T](const T *x, Py_ssize_t n, T shift, const T *next) noexcept
    double row_exp_sum[T](const T *x, Py_ssize_t n, T shift, const uint16_t *next) noexcept
    double row_exp_store_sum[T](const T *x, T *e, Py_ssize_t n, T shift) noexcept
    double row_exp_store_sum[T](const T *x, T *e, Py_ssize_t n, T shift,
                                const T *next) noexcept
    double row_exp_store_sum[T](const T *x, T *e, Py_ssize_t n, T shift,
                                const uint16_t *next) noexcept
    double row_exp_store_sum_smooth[T](
        const T *x, T *e, const T *w, Py_ssize_t n, T shift, double *smooth) noexcept
    double row_exp_store_sum_smooth[T](
        const T *x, T *e, const T *w, Py_ssize_t n, T shift, double *smooth,
        const T *next) noexcept
    double row_exp_store_sum_soft[T](
        const T *x, const T *y, const T *w, T *e, Py_ssize_t n, T shift, double alpha,
        double beta, double *y_sum, double *y_dot) noexcept
    double row_exp_store_sum_soft[T](
        const T *x, const T *y, const T *w, T *e, Py_ssize_t n, T shift, double alpha,
        double beta, double *y_sum, double *y_dot, const T *next, const T *ynext) noexcept
    double row_dot[T](const T *a, const T *b, Py_ssize_t n) noexcept
    double row_sum[T](const T *a, Py_ssize_t n) noexcept
    double pairwise_sum[T](const T *a, Py_ssize_t n) noexcept
    double row_weighted_shifted_sum[T](
        const T *x, const T *w, Py_ssize_t n, T m) noexcept
    double row_soft_target_sums[T](
        const T *x, const T *y, const T *w, Py_ssize_t n, T m,
        double alpha, double beta, double *ydot) noexcept
    double row_soft_target_sums[T](
        const T *x, const T *y, const T *w, Py_ssize_t n, T m,
        double alpha, double beta, double *ydot, const T *ynext) noexcept
    void row_scale[T](T *e, Py_ssize_t n, T c) noexcept
    void row_log_softmax_from[T](
        const T *x, T *out, Py_ssize_t n, T m, T lse) noexcept
    void row_softmax_backward[T](
        const T *g, const T *a, T *out, Py_ssize_t n, T dot, const T *gnext,
        const T *anext) noexcept
    void row_log_softmax_backward[T](
        const T *g, const T *o, T *out, Py_ssize_t n, T gsum, const T *gnext,
        const T *onext) noexcept
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
    ctypedef struct CrossEntropyExtra:
        double z, zscale
        double *zrow
        double *acc
    double z_loss_terms(double z, double zscale, double y_sum, double scale, double m,
                        double s, double *c1) noexcept
    double token_correct(double x_t_shifted, double s) noexcept
    void row_softcap[T](const T *x, T *out, Py_ssize_t n, T cap) noexcept
    T row_softcap_max[T](const T *x, T *out, Py_ssize_t n, T cap) noexcept
    void row_softcap_grad[T](T *g, const T *c, Py_ssize_t n, T cap) noexcept
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
    double tile_cross_entropy_index[T, L](
        const T *x, const L *target, Py_ssize_t rows, Py_ssize_t n, Py_ssize_t ignore_index,
        const T *w, double w_total, double alpha, double beta, double *loss, T *grad,
        double scale, const CrossEntropyExtra *ex, Py_ssize_t *kept) noexcept
    # elements of a tile of short rows (its scratch lives on each thread's stack)
    enum: TILE
    # rows of fewer bytes are computed a tile of rows at a time (_short_row)
    enum: SHORT_ROW_BYTES
    # rows of a tile of short rows of n columns
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
# rows of fewer bytes (of the computing dtype) run in the short-row tiles
# (tests pick widths by it)
SHORT_ROW_LIMIT_BYTES = SHORT_ROW_BYTES


def default_threads():
    """OpenMP's current default team size (OMP_NUM_THREADS, threadpoolctl)."""
    return omp_max_threads()


# ---------------------------------------------------------------------------
# sizes

cdef enum:
    # Rows of at least this many bytes prefetch the next row (_next_row).
    PREFETCH_ROW_BYTES = 1024
    # The backward functions' rows prefetch the next row up to this size
    # (_backward_next).
    BACKWARD_PREFETCH_MAX_BYTES = 65536
    # Long rows up to this size go ROW_GROUP rows a unit in logsumexp and the
    # loss alone, below GROUP_WRITE_ROW_BYTES in softmax, log_softmax and the
    # loss + gradient (_row_grouped).
    GROUP_ROW_BYTES = 4096
    GROUP_WRITE_ROW_BYTES = 1024
    ROW_GROUP = 4


cdef inline bint _short_row(Py_ssize_t n, Py_ssize_t itemsize) noexcept nogil:
    """Whether rows of n columns of a dtype of itemsize bytes (that the
    kernel computes in) run in tiles of short rows (float32: n <= 63, float64:
    n <= 31): by the width and the dtype only, so every row of a given width
    always takes the same arithmetic path."""
    return n * itemsize < SHORT_ROW_BYTES


cdef inline Py_ssize_t _tile_rows(Py_ssize_t n) noexcept nogil:
    return tile_rows(n)


cdef inline Py_ssize_t _n_tiles(Py_ssize_t n_rows, Py_ssize_t n) noexcept nogil:
    return (n_rows + _tile_rows(n) - 1) // _tile_rows(n)


# ---------------------------------------------------------------------------
# softmax, log_softmax, logsumexp: one row, or one tile of short rows

cdef inline const floating *_next_row(
    const floating *x, Py_ssize_t n_rows, Py_ssize_t n, Py_ssize_t i
) noexcept nogil:
    """Row i + 1 of x (n columns): what the exp pass of row i prefetches
    (chunk_exp_lanes, rowops.hpp); NULL after the last row, and for rows under
    PREFETCH_ROW_BYTES, which share their pages and whose stream the hardware
    prefetchers keep up with (measured, AMD Zen 3: 128 float32 columns 1.0-1.06x
    the time with the prefetch, 256 columns 0.85-0.93x, 1000 columns 0.62-0.78x)."""
    if i + 1 >= n_rows or n * <Py_ssize_t>sizeof(floating) < PREFETCH_ROW_BYTES:
        return NULL
    return x + (i + 1) * n


cdef inline void _softmax_row(
    const floating *x, floating *out, Py_ssize_t n, const floating *nxt=NULL
) noexcept nogil:
    cdef floating m = row_max(x, n)
    cdef double s = row_exp_store_sum(x, out, n, m, nxt)
    row_scale(out, n, <floating>(1.0 / s))


cdef inline void _softmax_tile(
    const floating *x, floating *out, Py_ssize_t rows, Py_ssize_t n
) noexcept nogil:
    tile_softmax(x, out, rows, n)


cdef inline void _log_softmax_row(
    const floating *x, floating *out, Py_ssize_t n, const floating *nxt=NULL
) noexcept nogil:
    cdef floating m = row_max(x, n)
    cdef double lse = log(row_exp_sum(x, n, m, nxt))
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
    double alpha, double beta, double c1, double scale,
) noexcept nogil:
    """Turns the exponentials in grad (n columns, w their weights or NULL) into
    the gradient times scale; c1 is their coefficient, sum(y') / s * scale
    (plus the z-loss term, see z_loss_terms).  t is the label's column counted
    from grad: a chunk of a split row holds it only if 0 <= t < n."""
    if beta != 0.0:
        row_grad_affine(grad, w, n, <floating>c1, <floating>(beta * scale))
    else:
        row_scale(grad, n, <floating>c1)
    if 0 <= t < n:
        grad[t] = grad[t] - <floating>(alpha * w_t * scale)


cdef inline void _extra_row(
    const CrossEntropyExtra *ex, Py_ssize_t i, double x_t, double m, double s, double y_sum,
    double scale, double *c1,
) noexcept nogil:
    """The z-loss (its part into ex.zrow[i], its gradient coefficient added
    into c1) and the token accuracy (ex.acc[i]) of computed row i."""
    cdef double zl
    if ex.z != 0.0:
        zl = z_loss_terms(ex.z, ex.zscale, y_sum, scale, m, s, c1)
        if ex.zrow != NULL:
            ex.zrow[i] = zl
    if ex.acc != NULL:
        ex.acc[i] = token_correct(x_t, s)


cdef inline void _extra_skipped(
    const CrossEntropyExtra *ex, Py_ssize_t i, bint ignored
) noexcept nogil:
    """The per-row extras of a row that _skipped_row handles."""
    if ex == NULL:
        return
    if ex.zrow != NULL:
        ex.zrow[i] = 0.0 if ignored else NAN
    if ex.acc != NULL:
        ex.acc[i] = 0.0 if ignored else NAN


cdef inline double _cross_entropy_index_from_max(
    const floating *x, Py_ssize_t n, Py_ssize_t t, floating m, const floating *w,
    double w_total, double alpha, double beta, floating *grad, double scale,
    const CrossEntropyExtra *ex, Py_ssize_t i, double *c1, double *w_t,
    const floating *nxt=NULL, const uint16_t *nxt16=NULL,
) noexcept nogil:
    """The loss of row i (x, class t, maximum m); unless grad is NULL its
    exponentials into grad, and into c1 and w_t their coefficient and the
    target's weight (see _cross_entropy_index_grad); with ex (or NULL) its
    z-loss and accuracy.  nxt (or NULL): the next row, prefetched by the exp
    pass (_next_row); nxt16 instead, for x converted from 16 bits: the next
    row's 16-bit storage."""
    cdef double x_t = <double>x[t] - <double>m
    cdef double smooth
    cdef double s = _cross_entropy_index_sums(x, n, m, w, beta, grad, &smooth, nxt, nxt16)
    w_t[0] = 1.0 if w == NULL else w[t]
    return _cross_entropy_index_finish(x_t, m, w_t[0], w_total, alpha, beta, smooth, s, scale,
                                       ex, i, c1)


cdef inline double _cross_entropy_index_sums(
    const floating *x, Py_ssize_t n, floating m, const floating *w, double beta,
    floating *grad, double *smooth, const floating *nxt=NULL, const uint16_t *nxt16=NULL,
) noexcept nogil:
    """The exp-sum of a row (maximum m), its exponentials into grad unless
    NULL, and into smooth the smoothing sum (0 without smoothing); nxt, nxt16:
    see _cross_entropy_index_from_max."""
    smooth[0] = 0.0
    if grad == NULL:
        if beta != 0.0:
            smooth[0] = row_weighted_shifted_sum(x, w, n, m)
        return row_exp_sum(x, n, m, nxt16) if nxt16 != NULL else row_exp_sum(x, n, m, nxt)
    if beta != 0.0:
        return row_exp_store_sum_smooth(x, grad, w, n, m, smooth, nxt)
    if nxt16 != NULL:
        return row_exp_store_sum(x, grad, n, m, nxt16)
    return row_exp_store_sum(x, grad, n, m, nxt)


cdef inline double _cross_entropy_index_finish(
    double x_t, double m, double w_t, double w_total, double alpha, double beta,
    double smooth, double s, double scale, const CrossEntropyExtra *ex, Py_ssize_t i,
    double *c1,
) noexcept nogil:
    """The loss of computed row i from its sums (x_t: the target's logit less
    the maximum m, w_t its weight; smooth, s: see
    _cross_entropy_index_from_max), the gradient's coefficient into c1; with
    ex (or NULL) its z-loss and accuracy."""
    cdef double y_sum
    cdef double loss = cross_entropy_index_loss(w_t, w_total, alpha, beta, x_t, smooth, s,
                                                &y_sum)
    c1[0] = y_sum / s * scale
    if ex != NULL:
        _extra_row(ex, i, x_t, m, s, y_sum, scale, c1)
    return loss


cdef inline double _cross_entropy_index_row(
    const floating *x, Py_ssize_t n, Py_ssize_t t, const floating *w,
    double w_total, double alpha, double beta, floating *grad, double scale,
    const CrossEntropyExtra *ex, Py_ssize_t i, floating *capped, floating cap,
    const floating *nxt=NULL,
) noexcept nogil:
    """The loss of row i (x, class t), its gradient into grad unless NULL,
    and with ex (or NULL) its z-loss and accuracy.  capped (or NULL): room
    for the row soft-capped at cap, which the row is then computed from; the
    gradient goes back through the cap.  nxt: see _cross_entropy_index_from_max."""
    cdef floating m
    if capped != NULL:
        m = row_softcap_max(x, capped, n, cap)
        x = capped
    else:
        m = row_max(x, n)
    cdef double c1, w_t
    cdef double loss = _cross_entropy_index_from_max(x, n, t, m, w, w_total, alpha, beta, grad,
                                                     scale, ex, i, &c1, &w_t, nxt)
    if grad != NULL and capped != NULL:
        _cross_entropy_index_grad_capped(grad, capped, n, t, w, w_t, alpha, beta, c1, scale,
                                         cap)
    elif grad != NULL:
        _cross_entropy_index_grad(grad, n, t, w, w_t, alpha, beta, c1, scale)
    return loss


cdef inline double _cross_entropy_prob_finish(
    floating *grad, const floating *y, Py_ssize_t n, const floating *w,
    double alpha, double beta, double y_sum, double y_dot, double s, double scale,
    double m, const CrossEntropyExtra *ex, Py_ssize_t i,
) noexcept nogil:
    """The loss of a row with probability targets from its sums, the gradient
    into grad unless NULL; with ex (or NULL) the z-loss in the gradient, and
    its part into ex.zrow[i] unless i < 0."""
    cdef double c1 = y_sum / s * scale
    cdef double zl
    if ex != NULL and ex.z != 0.0:
        zl = z_loss_terms(ex.z, ex.zscale, y_sum, scale, m, s, &c1)
        if i >= 0 and ex.zrow != NULL:
            ex.zrow[i] = zl
    if grad != NULL:
        row_grad_soft(grad, y, w, n, <floating>c1,
                      <floating>(alpha * scale), <floating>(beta * scale))
    return cross_entropy_prob_loss(y_sum, y_dot, s)


cdef inline double _cross_entropy_prob_row(
    const floating *x, const floating *y, Py_ssize_t n, const floating *w,
    double alpha, double beta, floating *grad, double scale,
    const CrossEntropyExtra *ex, Py_ssize_t i, const floating *nxt=NULL,
) noexcept nogil:
    """nxt: the next row of x, prefetched by the exp pass (_next_row); the
    next row of y then too, by the targets' pass."""
    return _cross_entropy_prob_from_max(x, y, n, w, alpha, beta, grad, scale, ex, i,
                                        row_max(x, n), nxt)


cdef inline double _cross_entropy_prob_from_max(
    const floating *x, const floating *y, Py_ssize_t n, const floating *w,
    double alpha, double beta, floating *grad, double scale,
    const CrossEntropyExtra *ex, Py_ssize_t i, floating m, const floating *nxt=NULL,
) noexcept nogil:
    """_cross_entropy_prob_row of a row whose maximum m is known (16-bit rows
    find it as they are converted)."""
    cdef double y_dot, y_sum, s
    cdef const floating *ynxt = NULL
    if nxt != NULL:
        ynxt = y + n
    if grad == NULL:
        y_sum = row_soft_target_sums(x, y, w, n, m, alpha, beta, &y_dot, ynxt)
        s = row_exp_sum(x, n, m, nxt)
    else:
        s = row_exp_store_sum_soft(x, y, w, grad, n, m, alpha, beta, &y_sum, &y_dot, nxt,
                                   ynxt)
    return _cross_entropy_prob_finish(grad, y, n, w, alpha, beta, y_sum, y_dot, s, scale,
                                      m, ex, i)


cdef inline void _cross_entropy_prob_tile(
    const floating *x, const floating *y, Py_ssize_t rows, Py_ssize_t n,
    const floating *w, double alpha, double beta, double *loss, floating *grad,
    double scale, const CrossEntropyExtra *ex, Py_ssize_t r0,
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
            y_sum[r], y_dot[r], s[r], scale, m[r], ex, r0 + r)


# ---------------------------------------------------------------------------
# the kernels: loops over rows (or tiles of short rows) spread over threads

# ---------------------------------------------------------------------------
# work units.  A unit is one row, or one tile of short rows.  Each kernel runs
# its units in a plain loop when n_threads == 1 (an OpenMP region costs about
# 1 us, as much as a whole 1x1000 softmax) and over a static prange otherwise;
# a unit's arithmetic is the same either way.

cdef inline Py_ssize_t _n_units(
    Py_ssize_t n_rows, Py_ssize_t n, Py_ssize_t itemsize
) noexcept nogil:
    return _n_tiles(n_rows, n) if _short_row(n, itemsize) else n_rows


cdef inline void _softmax_unit(
    const floating *x, floating *out, Py_ssize_t n_rows, Py_ssize_t n, Py_ssize_t i
) noexcept nogil:
    cdef Py_ssize_t r0 = i * _tile_rows(n)
    if _short_row(n, sizeof(floating)):
        _softmax_tile(x + r0 * n, out + r0 * n, min(_tile_rows(n), n_rows - r0), n)
    else:
        _softmax_row(x + i * n, out + i * n, n, _next_row(x, n_rows, n, i))


cdef inline void _log_softmax_unit(
    const floating *x, floating *out, Py_ssize_t n_rows, Py_ssize_t n, Py_ssize_t i
) noexcept nogil:
    cdef Py_ssize_t r0 = i * _tile_rows(n)
    if _short_row(n, sizeof(floating)):
        _log_softmax_tile(x + r0 * n, out + r0 * n, min(_tile_rows(n), n_rows - r0), n)
    else:
        _log_softmax_row(x + i * n, out + i * n, n, _next_row(x, n_rows, n, i))


cdef inline void _logsumexp_unit(
    const floating *x, floating *out, Py_ssize_t n_rows, Py_ssize_t n, Py_ssize_t i
) noexcept nogil:
    cdef Py_ssize_t r0 = i * _tile_rows(n)
    cdef floating m
    if _short_row(n, sizeof(floating)):
        _logsumexp_tile(x + r0 * n, out + r0, min(_tile_rows(n), n_rows - r0), n)
    else:
        m = row_max(x + i * n, n)
        out[i] = <floating>_logsumexp_finish(x + i * n, n, m,
                                             row_exp_sum(x + i * n, n, m,
                                                         _next_row(x, n_rows, n, i)))


cdef inline bint _backward_next(
    const floating *g, Py_ssize_t n_rows, Py_ssize_t n, Py_ssize_t i
) noexcept nogil:
    """Whether row i of a backward function prefetches row i + 1 of its
    inputs (row_softmax_backward, rowops.hpp; the masked functions' rows that
    keep all or a prefix of their entries too): rows of PREFETCH_ROW_BYTES up
    to BACKWARD_PREFETCH_MAX_BYTES that have a next row.  Measured (AMD Zen 3,
    AVX2, float32, interleaved A/B, one and two threads): 512 to 16384
    columns 0.83-0.99x the time; at 32000 columns softmax_backward took 1.05x
    (the next rows of both inputs, 256 KB, pushed the current ones out of L2
    before their second pass), log_softmax_backward 0.90-0.98x: one rule
    serves both."""
    cdef Py_ssize_t row_bytes = n * <Py_ssize_t>sizeof(floating)
    return (i + 1 < n_rows and row_bytes >= PREFETCH_ROW_BYTES
            and row_bytes <= BACKWARD_PREFETCH_MAX_BYTES)


cdef inline void _softmax_backward_unit(
    const floating *g, const floating *a, floating *out, Py_ssize_t n, Py_ssize_t i,
    bint nxt=False,
) noexcept nogil:
    """nxt: prefetch the next rows of g and a (_backward_next)."""
    cdef Py_ssize_t r = i * n
    cdef const floating *gn = NULL
    cdef const floating *an = NULL
    if nxt:
        gn, an = g + r + n, a + r + n
    row_softmax_backward(g + r, a + r, out + r, n, <floating>row_dot(g + r, a + r, n), gn, an)


cdef inline void _log_softmax_backward_unit(
    const floating *g, const floating *o, floating *out, Py_ssize_t n, Py_ssize_t i,
    bint nxt=False,
) noexcept nogil:
    """nxt: prefetch the next rows of g and o (_backward_next)."""
    cdef Py_ssize_t r = i * n
    cdef const floating *gn = NULL
    cdef const floating *on = NULL
    if nxt:
        gn, on = g + r + n, o + r + n
    row_log_softmax_backward(g + r, o + r, out + r, n, <floating>row_sum(g + r, n), gn, on)


cdef inline void _cross_entropy_index_unit(
    const floating *x, const label_t *target, Py_ssize_t n_rows, Py_ssize_t n,
    Py_ssize_t ignore_index, const floating *w, double w_total, double alpha,
    double beta, double *loss, double *tile_loss, floating *grad, double scale,
    const CrossEntropyExtra *ex, floating *capped, floating cap, Py_ssize_t i,
    Py_ssize_t *kept=NULL,
) noexcept nogil:
    """Unit i (a tile of short rows or a row) of _cross_entropy_index_core;
    kept (or NULL): the unit's labels that are not ignore_index, counted, or
    -1 where one is out of range (the tile's from its classified labels)."""
    cdef Py_ssize_t r0 = i * _tile_rows(n)
    cdef Py_ssize_t rows = min(_tile_rows(n), n_rows - r0)
    cdef Py_ssize_t t
    cdef CrossEntropyExtra tile_ex
    if _short_row(n, sizeof(floating)):
        if ex != NULL:
            tile_ex = ex[0]
            if tile_ex.zrow != NULL:
                tile_ex.zrow = tile_ex.zrow + r0
            if tile_ex.acc != NULL:
                tile_ex.acc = tile_ex.acc + r0
        # the tile's loss sum; its row losses too unless loss is NULL
        if cap != 0:  # soft-capped into a tile on the stack (softcap.hpp)
            tile_loss[i] = tile_cross_entropy_index_capped(
                x + r0 * n, target + r0, rows, n, ignore_index, w, w_total, alpha, beta,
                loss if loss == NULL else loss + r0, grad if grad == NULL else grad + r0 * n,
                scale, <const CrossEntropyExtra *>NULL if ex == NULL else &tile_ex, cap, kept)
        else:
            tile_loss[i] = tile_cross_entropy_index(
                x + r0 * n, target + r0, rows, n, ignore_index, w, w_total, alpha, beta,
                loss if loss == NULL else loss + r0, grad if grad == NULL else grad + r0 * n,
                scale, <const CrossEntropyExtra *>NULL if ex == NULL else &tile_ex, kept)
        return
    t = target[i]
    if kept != NULL:
        kept[0] = 0 if t == ignore_index else (1 if 0 <= t < n else -1)
    if t == ignore_index or not 0 <= t < n:
        row_prefetch(x + i * n, n)
        loss[i] = _skipped_row(grad if grad == NULL else grad + i * n, n,
                               t == ignore_index)
        _extra_skipped(ex, i, t == ignore_index)
    else:
        loss[i] = _cross_entropy_index_row(
            x + i * n, n, t, w, w_total, alpha, beta,
            grad if grad == NULL else grad + i * n, scale, ex, i, capped, cap,
            _next_row(x, n_rows, n, i))


cdef inline void _cross_entropy_prob_unit(
    const floating *x, const floating *y, Py_ssize_t n_rows, Py_ssize_t n,
    const floating *w, double alpha, double beta, double *loss, double *tile_loss,
    floating *grad, double scale, const CrossEntropyExtra *ex, floating *capped,
    floating cap, Py_ssize_t i,
) noexcept nogil:
    """capped, cap: as for _cross_entropy_index_unit (short rows need no
    capped: their tile is capped on the stack)."""
    cdef Py_ssize_t r0 = i * _tile_rows(n)
    cdef Py_ssize_t rows = min(_tile_rows(n), n_rows - r0)
    if _short_row(n, sizeof(floating)) and cap != 0:
        _cross_entropy_prob_tile_capped(
            x + r0 * n, y + r0 * n, rows, n, w, alpha, beta, loss + r0,
            grad if grad == NULL else grad + r0 * n, scale, ex, r0, cap)
        tile_loss[i] = row_sum(loss + r0, rows)
    elif _short_row(n, sizeof(floating)):
        _cross_entropy_prob_tile(
            x + r0 * n, y + r0 * n, rows, n, w, alpha, beta, loss + r0,
            grad if grad == NULL else grad + r0 * n, scale, ex, r0)
        tile_loss[i] = row_sum(loss + r0, rows)
    elif capped != NULL:
        loss[i] = _cross_entropy_prob_row_capped(
            x + i * n, y + i * n, n, w, alpha, beta,
            grad if grad == NULL else grad + i * n, scale, ex, i, capped, cap)
    else:
        loss[i] = _cross_entropy_prob_row(
            x + i * n, y + i * n, n, w, alpha, beta,
            grad if grad == NULL else grad + i * n, scale, ex, i, _next_row(x, n_rows, n, i))


# ---------------------------------------------------------------------------
# the sum of the row losses (for reduction="mean"/"sum"), in an order fixed by
# the shape: the rows' losses pairwise, or for short rows each tile's sum
# (computed by the thread that computed the tile, while it is in cache) and
# then the tiles' pairwise.
# It replaces a pass over the row losses after the kernel (at 262144x2 that
# pass cost as much as a tenth of the kernel).

cdef double *_tile_loss_alloc(
    Py_ssize_t n_rows, Py_ssize_t n, Py_ssize_t itemsize
) except? NULL:
    """Room for one loss sum per tile of short rows (NULL for long rows)."""
    if not _short_row(n, itemsize):
        return NULL
    cdef double *p = <double *>malloc(_n_tiles(n_rows, n) * sizeof(double))
    if p == NULL:
        raise MemoryError()
    return p


cdef inline double _loss_total(
    const double *loss, const double *tile_loss, Py_ssize_t n_rows, Py_ssize_t n
) noexcept nogil:
    """tile_loss: the tiles' sums of short rows (_tile_loss_alloc), NULL for
    long rows."""
    if tile_loss != NULL:
        return pairwise_sum(tile_loss, _n_tiles(n_rows, n))
    return pairwise_sum(loss, n_rows)


include "rowsplit.pxi"


include "calls.pxi"


include "strided.pxi"
include "masked.pxi"
include "scaled.pxi"
include "half.pxi"
include "halfstrided.pxi"
include "softcap.pxi"


# ---- the exp floor (bench) ----------------------------------------------

cdef enum:
    FLOOR_BLOCK = 4096    # elements: 16 KiB of float32, read twice from L1

cdef double _exp_floor_part(const floating *p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t k0 = 0, m
    cdef double s = 0.0
    while k0 < n:
        m = min(<Py_ssize_t>FLOOR_BLOCK, n - k0)
        # the next block prefetched by the exp pass, as the rows' kernels do
        s += row_exp_sum(p + k0, m, row_max(p + k0, m),
                         p + k0 + m if k0 + 2 * m <= n else <const floating *>NULL)
        k0 += m
    return s


def exp_floor(const floating[:, ::1] x, int n_threads):
    """The sum over blocks of 4096 elements of x of sum(exp(x - max(block))),
    in n_threads equal parts.

    The least work of a loss-only pass with these kernels' max and exp: a max
    and an exp-sum over the data, without the per-row costs (no row ends, no
    log, no target, nothing stored).  The bench times it to bound what a loss
    can reach on the logits, whatever their shape.
    """
    cdef Py_ssize_t n = x.shape[0] * x.shape[1]
    cdef Py_ssize_t part, i, start
    cdef double total = 0.0
    if n == 0:
        return 0.0
    cdef const floating *p = &x[0, 0]
    n_threads = max(1, n_threads)
    part = (n + n_threads - 1) // n_threads
    with nogil:
        for i in prange(n_threads, schedule="static", num_threads=n_threads):
            start = i * part
            if start < n:
                total += _exp_floor_part(p + start, min(part, n - start))
    return total


def copy_floor(const floating[:, ::1] x, floating[:, ::1] out, int n_threads):
    """out[...] = x, in n_threads equal parts (one memcpy each).

    The memory floor of a pass that reads the logits once and writes an array
    of their size, at a thread count (np.copyto runs on one thread): the bench
    scales it by the arrays a call moves to bound what the call can reach.
    """
    cdef Py_ssize_t n = x.shape[0] * x.shape[1]
    cdef Py_ssize_t part, i, start
    if n == 0:
        return
    cdef const floating *p = &x[0, 0]
    cdef floating *q = &out[0, 0]
    n_threads = max(1, n_threads)
    part = (n + n_threads - 1) // n_threads
    with nogil:
        for i in prange(n_threads, schedule="static", num_threads=n_threads):
            start = i * part
            if start < n:
                memcpy(q + start, p + start, min(part, n - start) * sizeof(floating))
