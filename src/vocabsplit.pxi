# The loss-only linear cross-entropy by vocabulary slices (included by
# calls.pxi; csoftmax/_linear_chunks.py, run_vocab_slices): the logits of all
# rows over classes [class0, class0 + k) come from one GEMM, and each row's
# running maximum and exp-sum take them in, as an online logsumexp.
#
# Why slices of the vocabulary rather than of the rows: a GEMM of a row chunk
# packs the whole weight (V, D) again, once per chunk; a slice packs its part
# of the weight once and the (smaller) input again.  At (2048, 2048, 128256)
# in 5 chunks, SciPy's sgemm took 4.19 s by rows, 3.87 s by slices, 3.70 s
# whole.
#
# The merge keeps a row's sums as the whole-row kernel forms them: the
# exponentials of a slice shifted by the slice's maximum (csoftmax's exp, in
# the logits' dtype) summed in double, and earlier slices' sum rescaled by
# exp(old max - new max) in double.  A slice holding a NaN or +inf makes the
# row's sum NaN (the whole row's loss is NaN then, as PyTorch's); a slice
# of -inf only adds nothing.

from libc.math cimport exp


cdef inline void _fold_slice_row(
    floating *x, const floating *b, Py_ssize_t k, Py_ssize_t t, floating cap,
    const floating *w, double *row_max_, double *row_sum_, double *target_logit,
    double *smooth,
) noexcept nogil:
    """Row x (k classes of a slice, class t of it the target if 0 <= t < k):
    the bias b (or NULL) added and the soft cap (cap > 0) applied in place,
    then folded into the running max and exp-sum; with smooth (or NULL) the
    sum of w_j x_j (w NULL: of x_j) added to it, label smoothing's term."""
    cdef Py_ssize_t j
    if b != NULL:
        for j in range(k):
            x[j] = x[j] + b[j]
    if cap > 0:
        row_softcap(x, x, k, cap)
    if 0 <= t < k:
        target_logit[0] = x[t]
    if smooth != NULL:
        smooth[0] += row_sum(x, k) if w == NULL else row_dot(x, w, k)
    cdef floating m = row_max(x, k)
    if m == INFINITY or (m == -INFINITY and row_has_nan(x, k)):
        row_sum_[0] = NAN
        return
    if m == -INFINITY:
        return
    cdef double s = row_exp_sum(x, k, m)
    if m > row_max_[0]:
        row_sum_[0] = row_sum_[0] * exp(row_max_[0] - <double>m) + s
        row_max_[0] = m
    else:
        row_sum_[0] = row_sum_[0] + s * exp(<double>m - row_max_[0])


cdef inline double *_entry(double *a, Py_ssize_t i) noexcept nogil:
    """&a[i], or NULL for a NULL array."""
    return <double *>NULL if a == NULL else a + i


def logsumexp_slice_fold(floating[:, ::1] logits, const floating[::1] bias,
                         const label_t[::1] target, Py_ssize_t class0,
                         double[::1] row_max_, double[::1] row_sum_,
                         double[::1] target_logit, int n_threads, double softcap=0.0,
                         const floating[::1] weight=None, double[::1] smooth=None):
    """Folds logits (m, k), the classes [class0, class0 + k) of m rows, into
    each row's running maximum and exp-sum (start: -inf and 0), and copies
    the logit of each row's target class where it lies in the slice.  bias
    (k,) or None is added to logits in place first, then softcap > 0 caps
    them (softcap tanh(x / softcap)), in place too.  smooth (m,) or None:
    each row's sum of weight_j x_j (weight (k,) or None: of x_j) added to
    it.  The row's loss is then log(row_sum_) - (target_logit - row_max_)
    (NaN where row_sum_ is)."""
    cdef Py_ssize_t n_rows = logits.shape[0]
    cdef Py_ssize_t k = logits.shape[1]
    if n_rows == 0 or k == 0:
        return
    cdef const floating *b = NULL
    cdef const floating *w = NULL
    cdef double *sm = NULL
    if bias is not None:
        b = &bias[0]
    if weight is not None:
        w = &weight[0]
    if smooth is not None:
        sm = &smooth[0]
    cdef floating cap = <floating>softcap
    cdef floating *x = &logits[0, 0]
    cdef const label_t *t = &target[0]
    cdef Py_ssize_t i
    with nogil:
        if n_threads <= 1:
            for i in range(n_rows):
                _fold_slice_row(x + i * k, b, k, t[i] - class0, cap, w, &row_max_[i],
                                &row_sum_[i], &target_logit[i], _entry(sm, i))
        else:
            for i in prange(n_rows, num_threads=n_threads, schedule="guided"):
                _fold_slice_row(x + i * k, b, k, t[i] - class0, cap, w, &row_max_[i],
                                &row_sum_[i], &target_logit[i], _entry(sm, i))
