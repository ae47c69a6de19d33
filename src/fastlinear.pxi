# The C fast path of linear_cross_entropy (included by calls.pxi after
# fastpath.pxi): the loss of a call whose logits fit one chunk of the Python
# layer (csoftmax/_linear.py), computed without its Python steps -- the
# logits by SciPy's BLAS GEMM (a GEMV per row for one or two rows) into a
# scratch buffer (the rows first for a few rows), then the fast cross-entropy
# core (_fast_cross_entropy_run)
# on them.  A one-row call (scoring one token) took 74 us on the Python path,
# 18 us of it the GEMM (SciPy 1.17's OpenBLAS: 108 us, its GEMV 14 us).
#
# The GEMM is SciPy's ?gemm (and ?gemv) from scipy.linalg.cython_blas, their
# addresses taken from the module's capsules by set_gemm (no build-time
# SciPy).  The product,
# its arguments and the bias added after it are those of the Python path's
# Gemms.logits (csoftmax/_linear_blas.py) and np.add, so the logits have the
# same bits; the loss is the fast core's (the "mean" of the double row sums,
# rounded once).  As every
# fast_* function, it declines (None) anything else before it writes
# anything; the BLAS's thread count is the caller's to check.

from cpython.pycapsule cimport PyCapsule_GetName, PyCapsule_GetPointer

ctypedef void (*_sgemm_t)(char *transa, char *transb, int *m, int *n, int *k,
                          float *alpha, float *a, int *lda, float *b, int *ldb,
                          float *beta, float *c, int *ldc) noexcept nogil
ctypedef void (*_dgemm_t)(char *transa, char *transb, int *m, int *n, int *k,
                          double *alpha, double *a, int *lda, double *b, int *ldb,
                          double *beta, double *c, int *ldc) noexcept nogil

ctypedef void (*_sgemv_t)(char *trans, int *m, int *n, float *alpha, float *a, int *lda,
                          float *x, int *incx, float *beta, float *y,
                          int *incy) noexcept nogil
ctypedef void (*_dgemv_t)(char *trans, int *m, int *n, double *alpha, double *a, int *lda,
                          double *x, int *incx, double *beta, double *y,
                          int *incy) noexcept nogil

cdef _sgemm_t _sgemm = NULL
cdef _dgemm_t _dgemm = NULL
cdef _sgemv_t _sgemv = NULL
cdef _dgemv_t _dgemv = NULL
cdef Py_ssize_t _gemv_rows = 0
cdef Py_ssize_t _few_rows = 0


cdef void *_capsule(object c) except NULL:
    return PyCapsule_GetPointer(c, PyCapsule_GetName(c))


def set_gemm(object sgemm, object dgemm, object sgemv, object dgemv, Py_ssize_t gemv_rows,
             Py_ssize_t few_rows):
    """Takes SciPy's sgemm, dgemm, sgemv and dgemv
    (scipy.linalg.cython_blas.__pyx_capi__ capsules) for
    fast_linear_cross_entropy, and the Python path's rules: logits of at most
    gemv_rows rows by a GEMV per row, of at most few_rows rows by the GEMM of
    the rows first (csoftmax._linear_blas.GEMV_ROWS, FEW_ROWS)."""
    global _sgemm, _dgemm, _sgemv, _dgemv, _gemv_rows, _few_rows
    _sgemm = <_sgemm_t>_capsule(sgemm)
    _dgemm = <_dgemm_t>_capsule(dgemm)
    _sgemv = <_sgemv_t>_capsule(sgemv)
    _dgemv = <_dgemv_t>_capsule(dgemv)
    _gemv_rows = gemv_rows
    _few_rows = few_rows


def has_gemm():
    return _sgemm != NULL and _dgemm != NULL


cdef void _logits_gemm(const floating *x, const floating *w, floating *out, floating *f,
                       int m, int v, int d) noexcept nogil:
    """out (m, v) = x (m, d) @ w (v, d).T, all C-contiguous, as the Python
    path's Gemms.logits: up to _gemv_rows rows a GEMV per row, out[i] (v) =
    w.T' (v, d) @ x[i] (d); up to _few_rows rows the GEMM with the rows first,
    f (m, v) column-major = x.T' (m, d) @ w.T (d, v), then copied into out (f:
    m * v of scratch); else in the BLAS's column-major terms out.T (v, m) =
    w.T' (v, d) @ x.T (d, m).  d and v are positive here."""
    cdef char tt = b"T"
    cdef char tn = b"N"
    cdef floating one = 1.0
    cdef floating zero = 0.0
    cdef int i, inc = 1
    cdef Py_ssize_t r, k
    if m <= _gemv_rows:
        for i in range(m):
            if floating is float:
                _sgemv(&tt, &d, &v, &one, <float *>w, &d, <float *>x + <Py_ssize_t>i * d, &inc,
                       &zero, out + <Py_ssize_t>i * v, &inc)
            else:
                _dgemv(&tt, &d, &v, &one, <double *>w, &d, <double *>x + <Py_ssize_t>i * d,
                       &inc, &zero, out + <Py_ssize_t>i * v, &inc)
    elif m <= _few_rows:
        if floating is float:
            _sgemm(&tt, &tn, &m, &v, &d, &one, <float *>x, &d, <float *>w, &d, &zero, f, &m)
        else:
            _dgemm(&tt, &tn, &m, &v, &d, &one, <double *>x, &d, <double *>w, &d, &zero, f, &m)
        for r in range(m):
            for k in range(v):
                out[r * v + k] = f[k * m + r]
    elif floating is float:
        _sgemm(&tt, &tn, &v, &m, &d, &one, <float *>w, &d, <float *>x, &d, &zero, out, &v)
    else:
        _dgemm(&tt, &tn, &v, &m, &d, &one, <double *>w, &d, <double *>x, &d, &zero, out, &v)


cdef object _fast_linear_run(_FastCall *c, const floating *x, const floating *w,
                             const floating *b, const label_t *t, int d):
    """The loss of a checked call: labels t checked first (None when one is not
    a class nor ignore_index), then the logits into a scratch buffer."""
    cdef Py_ssize_t kept, i, k
    if _labels_count_bad(t, c.n_rows, c.n, c.ignore_index, &kept, c.threads) != 0:
        return None  # the full path names the first bad label
    # the logits, and behind them the column-major product of a few rows
    cdef Py_ssize_t size = c.n_rows * c.n
    cdef bint few = _gemv_rows < c.n_rows <= _few_rows
    cdef floating *logits = <floating *>malloc(size * (2 if few else 1) * sizeof(floating))
    if logits == NULL:
        raise MemoryError()
    try:
        # as the Python path: the GIL released around the product where the
        # BLAS may run threads (it keeps one below 2**18 multiply-adds)
        if size * <Py_ssize_t>d < GIL_WORK * 16:
            _logits_gemm(x, w, logits, logits + size, <int>c.n_rows, <int>c.n, d)
        else:
            with nogil:
                _logits_gemm(x, w, logits, logits + size, <int>c.n_rows, <int>c.n, d)
        if b != NULL:
            for i in range(c.n_rows):
                for k in range(c.n):
                    logits[i * c.n + k] = logits[i * c.n + k] + b[k]
        return _fast_cross_entropy_run(c, <cnp.ndarray>None, <const floating *>logits, t,
                                       <const floating *>NULL, <floating *>NULL,
                                       <const floating *>NULL)
    finally:
        free(logits)


def fast_linear_cross_entropy(object input, object linear_weight, object target,
                              object linear_bias, object ignore_index, object reduction,
                              object label_smoothing, Py_ssize_t threads,
                              Py_ssize_t max_bytes, object z_loss=0.0, object softcap=None,
                              object return_z_loss=False, object return_token_accuracy=False):
    """linear_cross_entropy without class weights, loss only: input (N, D) or
    (D,), linear_weight (V, D) and linear_bias (V,) or None of one float
    dtype, native int32/int64 labels (N,) (a Python int for (D,) input),
    logits of at most max_bytes; threads: the call's (the BLAS's own count,
    checked by the caller); z_loss, softcap and the return_* flags as
    fast_cross_entropy takes them (the tuple (loss, z_loss, token_accuracy)
    with a flag).  None when declined."""
    if _sgemm == NULL or threads < 1:
        return None
    cdef int typenum = _float_array(input)
    if typenum < 0 or _float_array(linear_weight) != typenum:
        return None
    cdef cnp.ndarray x = <cnp.ndarray>input
    cdef cnp.ndarray w = <cnp.ndarray>linear_weight
    cdef int nd = cnp.PyArray_NDIM(x)
    if nd > 2 or cnp.PyArray_NDIM(w) != 2:
        return None
    cdef Py_ssize_t d = cnp.PyArray_DIMS(x)[nd - 1]
    cdef Py_ssize_t v = cnp.PyArray_DIMS(w)[0]
    cdef Py_ssize_t n_rows = 1 if nd == 1 else cnp.PyArray_DIMS(x)[0]
    cdef Py_ssize_t itemsize = cnp.PyArray_ITEMSIZE(x)
    if (cnp.PyArray_DIMS(w)[1] != d or d > (1 << 30) or v > (1 << 30)
            or n_rows > max_bytes // (v * itemsize)):
        return None
    cdef const void *bp = NULL
    if linear_bias is not None:
        if (_float_array(linear_bias) != typenum
                or cnp.PyArray_NDIM(<cnp.ndarray>linear_bias) != 1
                or cnp.PyArray_DIMS(<cnp.ndarray>linear_bias)[0] != v):
            return None
        bp = cnp.PyArray_DATA(<cnp.ndarray>linear_bias)
    cdef _FastCall c
    c.kind = -1
    if not (_loss_options(&c, reduction, ignore_index, label_smoothing)
            and _extra_options(&c, z_loss, softcap, return_z_loss, return_token_accuracy)):
        return None
    # the targets: a Python int for (D,) input, else labels of shape (N,)
    cdef int64_t one_label
    cdef int label_size
    cdef const void *tp
    if nd == 1:
        if not _python_label(target, &one_label):
            return None
        tp = &one_label
        label_size = 8
    else:
        label_size = _label_size(target, 1, cnp.PyArray_DIMS(x))  # (N,) from x's (N, D)
        if label_size < 0:
            return None
        tp = cnp.PyArray_DATA(<cnp.ndarray>target)
    # the logits as the fast cross-entropy sees them: (N, V), or (V,)
    cdef cnp.npy_intp dims[2]
    dims[0] = n_rows
    dims[1] = v
    c.n_rows = n_rows
    c.n = v
    c.typenum = typenum
    c.nd = nd
    c.dims = &dims[0] if nd == 2 else &dims[1]    # the positions: (N,) or ()
    c.inner = 1
    # the cross-entropy after the BLAS on one thread, as the Python path runs
    # its chunks (an OpenMP team woken between BLAS calls fights its threads)
    c.threads = 1
    cdef const void *xp = cnp.PyArray_DATA(x)
    cdef const void *wp = cnp.PyArray_DATA(w)
    if typenum == cnp.NPY_FLOAT32:
        if label_size == 4:
            return _fast_linear_run(&c, <const float *>xp, <const float *>wp,
                                    <const float *>bp, <const int32_t *>tp, <int>d)
        return _fast_linear_run(&c, <const float *>xp, <const float *>wp,
                                <const float *>bp, <const int64_t *>tp, <int>d)
    if label_size == 4:
        return _fast_linear_run(&c, <const double *>xp, <const double *>wp,
                                <const double *>bp, <const int32_t *>tp, <int>d)
    return _fast_linear_run(&c, <const double *>xp, <const double *>wp,
                            <const double *>bp, <const int64_t *>tp, <int>d)
