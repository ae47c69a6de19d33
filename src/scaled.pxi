# logsumexp with factors b (SciPy's logsumexp(x, b=b)) over the rows of x:
# scaled.hpp's row kernel, a row per thread at a time (included by
# kernels.pxi).

cdef extern from "scaled.hpp" namespace "csoftmax" nogil:
    void row_logsumexp_scaled[T](const T *x, const T *b, Py_ssize_t n, double *r,
                                 double *sign) noexcept


cdef inline void _logsumexp_scaled_row(
    const floating *x, const char *b, Py_ssize_t b_row, Py_ssize_t n, floating *out,
    floating *sign, Py_ssize_t i,
) noexcept nogil:
    cdef double r, s
    row_logsumexp_scaled(x + i * n, <const floating *>(b + i * b_row), n, &r, &s)
    out[i] = <floating>r
    sign[i] = <floating>s


def logsumexp_scaled_rows(const floating[:, ::1] x, const floating[:, :] b,
                          floating[::1] out, floating[::1] sign, int n_threads):
    """out[i] = log|sum_k b[i, k] exp(x[i, k])| and sign[i] the sum's sign
    (see scaled.hpp), b's rows contiguous, any distance apart (0: one row of
    factors for every row)."""
    cdef Py_ssize_t i, n_rows = x.shape[0], n = x.shape[1]
    if n_rows == 0:
        return
    if n == 0:
        out[:] = -INFINITY
        sign[:] = 0
        return
    if b.shape[0] != n_rows or b.shape[1] != n or b.strides[1] != sizeof(floating):
        raise ValueError("b must be x's shape, its rows contiguous")
    cdef const char *bp = <const char *>&b[0, 0]
    cdef Py_ssize_t b_row = b.strides[0]
    if n_threads > 1 and n_rows > 1:
        for i in prange(n_rows, nogil=True, schedule="guided", num_threads=n_threads):
            _logsumexp_scaled_row(&x[0, 0], bp, b_row, n, &out[0], &sign[0], i)
    elif n_rows * n < GIL_WORK:
        for i in range(n_rows):
            _logsumexp_scaled_row(&x[0, 0], bp, b_row, n, &out[0], &sign[0], i)
    else:
        with nogil:
            for i in range(n_rows):
                _logsumexp_scaled_row(&x[0, 0], bp, b_row, n, &out[0], &sign[0], i)
