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
# computed by one thread from start to end, so results are bitwise identical at
# every thread count.  Per-row losses are written to a float64 array and reduced
# afterwards, in a fixed order, by the caller.
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
from libc.math cimport log, INFINITY, NAN
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
    double row_dot[T](const T *a, const T *b, Py_ssize_t n) noexcept
    double row_sum[T](const T *a, Py_ssize_t n) noexcept
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


def default_threads():
    """OpenMP's current default team size (OMP_NUM_THREADS, threadpoolctl)."""
    return omp_max_threads()


# ---------------------------------------------------------------------------
# one row of each operation

cdef inline void _softmax_row(
    const floating *x, floating *out, Py_ssize_t n
) noexcept nogil:
    cdef floating m = row_max(x, n)
    cdef double s = row_exp_store_sum(x, out, n, m)
    row_scale(out, n, <floating>(1.0 / s))


cdef inline void _log_softmax_row(
    const floating *x, floating *out, Py_ssize_t n
) noexcept nogil:
    cdef floating m = row_max(x, n)
    cdef double lse = log(row_exp_sum(x, n, m))
    row_log_softmax_from(x, out, n, m, <floating>lse)


cdef inline double _logsumexp_row(const floating *x, Py_ssize_t n) noexcept nogil:
    cdef floating m = row_max(x, n)
    if m == INFINITY or m == -INFINITY:
        # all -inf (or empty) gives -inf, +inf gives +inf: unless a NaN is there
        return NAN if row_has_nan(x, n) else m
    return m + log(row_exp_sum(x, n, m))


cdef inline double _cross_entropy_index_row(
    const floating *x, Py_ssize_t n, Py_ssize_t t, const floating *w,
    double w_total, double alpha, double beta, floating *grad, double scale,
) noexcept nogil:
    """Loss of one row with class index t; writes the scaled gradient when
    grad is not NULL (grad may be x).  The target is
    y'_k = alpha w_t [k == t] + beta w_k, with alpha = 1 - eps, beta = eps / C."""
    cdef floating m = row_max(x, n)
    cdef double w_t = 1.0 if w == NULL else w[t]
    cdef double x_t = <double>x[t] - <double>m   # read before grad overwrites x
    cdef double smooth = 0.0
    cdef double s, lse, y_sum
    if beta != 0.0:
        smooth = row_weighted_shifted_sum(x, w, n, m)
    if grad == NULL:
        s = row_exp_sum(x, n, m)
    else:
        s = row_exp_store_sum(x, grad, n, m)
    lse = log(s)
    if grad != NULL:
        y_sum = alpha * w_t + beta * w_total
        if beta != 0.0:
            row_grad_affine(grad, w, n, <floating>(y_sum / s * scale),
                            <floating>(beta * scale))
        else:
            row_scale(grad, n, <floating>(y_sum / s * scale))
        grad[t] = grad[t] - <floating>(alpha * w_t * scale)
    return alpha * w_t * (lse - x_t) + beta * (w_total * lse - smooth)


cdef inline double _cross_entropy_prob_row(
    const floating *x, const floating *y, Py_ssize_t n, const floating *w,
    double alpha, double beta, floating *grad, double scale,
) noexcept nogil:
    """Loss of one row with probability target y; y'_k = w_k (alpha y_k + beta)."""
    cdef floating m = row_max(x, n)
    cdef double y_dot
    cdef double y_sum = row_soft_target_sums(x, y, w, n, m, alpha, beta, &y_dot)
    cdef double s
    if grad == NULL:
        s = row_exp_sum(x, n, m)
    else:
        s = row_exp_store_sum(x, grad, n, m)
        row_grad_soft(grad, y, w, n, <floating>(y_sum / s * scale),
                      <floating>(alpha * scale), <floating>(beta * scale))
    return y_sum * log(s) - y_dot


# ---------------------------------------------------------------------------
# row loops

def softmax_rows(const floating[:, ::1] x, floating[:, ::1] out, int n_threads):
    """out[i] = softmax(x[i]) for every row; out may be x."""
    cdef Py_ssize_t i, n_rows = x.shape[0], n = x.shape[1]
    if n_rows == 0 or n == 0:
        return
    cdef const floating *xp = &x[0, 0]
    cdef floating *op = &out[0, 0]
    for i in prange(n_rows, nogil=True, schedule="static", num_threads=n_threads):
        _softmax_row(xp + i * n, op + i * n, n)


def log_softmax_rows(const floating[:, ::1] x, floating[:, ::1] out, int n_threads):
    """out[i] = log_softmax(x[i]) for every row; out may be x."""
    cdef Py_ssize_t i, n_rows = x.shape[0], n = x.shape[1]
    if n_rows == 0 or n == 0:
        return
    cdef const floating *xp = &x[0, 0]
    cdef floating *op = &out[0, 0]
    for i in prange(n_rows, nogil=True, schedule="static", num_threads=n_threads):
        _log_softmax_row(xp + i * n, op + i * n, n)


def logsumexp_rows(const floating[:, ::1] x, floating[::1] out, int n_threads):
    """out[i] = log(sum(exp(x[i]))) for every row."""
    cdef Py_ssize_t i, n_rows = x.shape[0], n = x.shape[1]
    if n_rows == 0:
        return
    if n == 0:
        out[:] = -INFINITY
        return
    cdef const floating *xp = &x[0, 0]
    for i in prange(n_rows, nogil=True, schedule="static", num_threads=n_threads):
        out[i] = <floating>_logsumexp_row(xp + i * n, n)


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
    cdef Py_ssize_t r
    for i in prange(n_rows, nogil=True, schedule="static", num_threads=n_threads):
        r = i * n
        row_softmax_backward(gp + r, ap + r, op + r, n,
                             <floating>row_dot(gp + r, ap + r, n))


def log_softmax_backward_rows(const floating[:, ::1] grad_output,
                              const floating[:, ::1] output,
                              floating[:, ::1] out, int n_threads):
    """out[i] = g - exp(o) sum(g) with g = grad_output[i], o = output[i]."""
    cdef Py_ssize_t i, n_rows = output.shape[0], n = output.shape[1]
    if n_rows == 0 or n == 0:
        return
    cdef const floating *gp = &grad_output[0, 0]
    cdef const floating *op_ = &output[0, 0]
    cdef floating *op = &out[0, 0]
    cdef Py_ssize_t r
    for i in prange(n_rows, nogil=True, schedule="static", num_threads=n_threads):
        r = i * n
        row_log_softmax_backward(gp + r, op_ + r, op + r, n,
                                 <floating>row_sum(gp + r, n))


def label_summary(const label_t[::1] target, Py_ssize_t n_classes,
                  Py_ssize_t ignore_index, const double[::1] weight=None):
    """Check class indices and total the weight that a "mean" divides by.

    Returns ``(first_bad_row, total)``: the first row whose label is neither in
    ``[0, n_classes)`` nor ``ignore_index`` (-1 when all are valid), and the sum
    of ``weight[t]`` (of 1 when weight is None) over the non-ignored rows,
    added in row order.
    """
    cdef Py_ssize_t i, t, bad = -1, n_rows = target.shape[0]
    cdef double total = 0.0
    cdef bint weighted = weight is not None
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
    """Per-row cross-entropy with class indices; the gradient (times
    grad_scale) into grad when grad is not None.  Labels must have been
    checked with label_summary.  weight may be None; grad may be logits."""
    cdef Py_ssize_t i, t, n_rows = logits.shape[0], n = logits.shape[1]
    if n_rows == 0:
        return
    cdef const floating *xp = &logits[0, 0]
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
    for i in prange(n_rows, nogil=True, schedule="static", num_threads=n_threads):
        t = target[i]
        if t == ignore_index:
            # padding rows may hold anything: they count 0 and get a 0 gradient
            row_loss[i] = 0.0
            if gp != NULL:
                row_zero(gp + i * n, n)
        else:
            row_loss[i] = _cross_entropy_index_row(
                xp + i * n, n, t, wp, w_total, alpha, beta,
                gp if gp == NULL else gp + i * n, grad_scale)


def cross_entropy_prob_rows(const floating[:, ::1] logits,
                            const floating[:, ::1] target,
                            const floating[::1] weight,
                            double label_smoothing,
                            double grad_scale,
                            double[::1] row_loss,
                            floating[:, ::1] grad,
                            int n_threads):
    """Per-row cross-entropy with probability targets (they need not sum to
    one); the gradient (times grad_scale) into grad when grad is not None.
    weight may be None; grad may be logits but not target."""
    cdef Py_ssize_t i, n_rows = logits.shape[0], n = logits.shape[1]
    if n_rows == 0:
        return
    cdef const floating *xp = &logits[0, 0]
    cdef const floating *yp = &target[0, 0]
    cdef const floating *wp = NULL
    cdef floating *gp = NULL
    cdef double alpha = 1.0 - label_smoothing
    cdef double beta = label_smoothing / n
    if weight is not None:
        wp = &weight[0]
    if grad is not None:
        gp = &grad[0, 0]
    for i in prange(n_rows, nogil=True, schedule="static", num_threads=n_threads):
        row_loss[i] = _cross_entropy_prob_row(
            xp + i * n, yp + i * n, n, wp, alpha, beta,
            gp if gp == NULL else gp + i * n, grad_scale)
