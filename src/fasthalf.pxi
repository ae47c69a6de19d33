# The C fast path of the 16-bit calls (included by fastpath.pxi): the common
# call of each function on a float16 or bfloat16 (ml_dtypes) ndarray, over its
# last axis -- the 16-bit kernels of half.pxi, checked and allocated here, as
# fastpath.pxi does for float32/float64.  None for anything else, before
# anything is written: the full path (csoftmax/_api.py) then runs the same
# kernels and raises its own errors.

cdef extern from "half.hpp" namespace "csoftmax" nogil:
    uint16_t f64_to_half(int kind, double v) noexcept

# NumPy's type number of ml_dtypes.bfloat16 (a user-defined type: its number
# is known once seen), -1 until then
cdef int _bf16_typenum = -1


cdef int _half_kind(object v, bint writeable=False):
    """HALF_F16 or HALF_BF16 for a 16-bit float ndarray that _float_array
    would take were it float32 (C-contiguous, aligned, native, not empty, at
    least one dimension, writeable if asked); -1 for anything else."""
    global _bf16_typenum
    if type(v) is not cnp.ndarray:
        return -1
    cdef cnp.ndarray a = <cnp.ndarray>v
    cdef int typenum = cnp.PyArray_TYPE(a)
    cdef int kind
    if typenum == cnp.NPY_FLOAT16:
        kind = 0
    elif typenum == _bf16_typenum:
        kind = 1
    elif (_bf16_typenum < 0 and cnp.PyTypeNum_ISUSERDEF(typenum) and cnp.PyArray_ITEMSIZE(a) == 2
          and a.dtype.name == "bfloat16"):
        _bf16_typenum = typenum
        kind = 1
    else:
        return -1
    if (cnp.PyArray_NDIM(a) == 0 or cnp.PyArray_SIZE(a) == 0
            or not cnp.PyArray_ISCARRAY_RO(a) or not cnp.PyArray_ISNOTSWAPPED(a)
            or (writeable and not cnp.PyArray_ISWRITEABLE(a))):
        return -1
    return kind


cdef bint _half_like(object v, cnp.ndarray x, bint writeable):
    """v is a 16-bit array that _half_kind accepts, of x's shape and dtype."""
    return (_half_kind(v, writeable) >= 0
            and cnp.PyArray_TYPE(<cnp.ndarray>v) == cnp.PyArray_TYPE(x)
            and _same_shape(<cnp.ndarray>v, x))


cdef bint _half_valid_out(object out, cnp.ndarray x):
    return out is None or (_half_like(out, x, True) and _apart_or_same(out, x))


cdef cnp.ndarray _half_empty(int nd, cnp.npy_intp *dims, cnp.ndarray like):
    return cnp.PyArray_EMPTY(nd, dims, cnp.PyArray_TYPE(like), 0)


cdef _Half _half_init(int op, int kind, cnp.ndarray x):
    cdef _Half h
    memset(&h, 0, sizeof(_Half))
    h.op = op
    h.kind = kind
    h.n = cnp.PyArray_DIMS(x)[cnp.PyArray_NDIM(x) - 1]
    h.n_rows = _rows_of(x)
    h.x = <const uint16_t *>cnp.PyArray_DATA(x)
    return h


cdef int _half_axis(cnp.ndarray a, object axis, _Middle *d) noexcept:
    """1 for the last axis, 0 for a middle one that the 16-bit strided kernels
    read in place (d filled: positions after it, at most HALF_STRIDED_MAX_C
    classes, as the full path's _half_middle takes it), -1 for anything else
    (the full path: rows of a moved copy, or an error)."""
    cdef int nd = cnp.PyArray_NDIM(a)
    cdef int ax = _one_axis(axis, nd)
    if ax < 0:
        return -1
    if ax == nd - 1:
        return 1
    d[0] = _middle_of(a, ax)
    return 0 if d.inner > 1 and d.C <= HALF_STRIDED_MAX_C else -1


cdef object _fast_half_rows(int op, object x, object axis, object out, object num_threads):
    """fast_rows for 16-bit x."""
    cdef int kind = _half_kind(x)
    if kind < 0:
        return None
    cdef cnp.ndarray a = <cnp.ndarray>x
    cdef _Middle d
    cdef int last = _half_axis(a, axis, &d)
    cdef Py_ssize_t requested = _requested_threads(num_threads)
    if last < 0 or requested < 0 or not _half_valid_out(out, a):
        return None
    cdef cnp.ndarray r = (_half_empty(cnp.PyArray_NDIM(a), cnp.PyArray_DIMS(a), a)
                          if out is None else <cnp.ndarray>out)
    if not last:                       # over a middle axis, read in place
        _half_strided_core(op, kind, NULL, <const uint16_t *>cnp.PyArray_DATA(a),
                           <uint16_t *>cnp.PyArray_DATA(r), <float *>NULL, d.outer, d.C,
                           d.inner, _middle_threads(&d, 2, requested))
        return r
    cdef _Half h = _half_init(op, kind, a)
    cdef int threads = _call_threads(h.n_rows, h.n, requested, True)
    h.out = <uint16_t *>cnp.PyArray_DATA(r)
    _half_run(&h, <const int32_t *>NULL, threads)
    return r


cdef object _fast_half_logsumexp(object x, object axis, object num_threads):
    """fast_logsumexp for 16-bit x: float32 per row, rounded once to x's dtype."""
    cdef int kind = _half_kind(x)
    if kind < 0:
        return None
    cdef cnp.ndarray a = <cnp.ndarray>x
    cdef _Middle d
    cdef int last = _half_axis(a, axis, &d)
    cdef Py_ssize_t requested = _requested_threads(num_threads)
    if last < 0 or requested < 0:
        return None
    cdef int i, nd = cnp.PyArray_NDIM(a), ax = _one_axis(axis, nd)
    cdef cnp.npy_intp kept[cnp.NPY_MAXDIMS]
    for i in range(nd - 1):
        kept[i] = cnp.PyArray_DIMS(a)[i if i < ax else i + 1]
    cdef cnp.ndarray r = _half_empty(nd - 1, kept, a)
    cdef Py_ssize_t n_out = cnp.PyArray_SIZE(r)
    cdef float *f = <float *>malloc(n_out * sizeof(float))
    if f == NULL:
        raise MemoryError()
    cdef _Half h
    try:
        if last:
            h = _half_init(OP_LOGSUMEXP, kind, a)
            h.out32 = f
            _half_run(&h, <const int32_t *>NULL, _call_threads(h.n_rows, h.n, requested, True))
        else:                          # over a middle axis, read in place
            _half_strided_core(OP_LOGSUMEXP, kind, NULL, <const uint16_t *>cnp.PyArray_DATA(a),
                               <uint16_t *>NULL, f, d.outer, d.C, d.inner,
                               _middle_threads(&d, 2, requested))
        half_store(kind, f, <uint16_t *>cnp.PyArray_DATA(r), n_out)
    finally:
        free(f)
    return r[()] if nd == 1 else r


cdef object _fast_half_backward(int op, object grad_output, object output, object axis,
                                object out, object num_threads):
    """fast_backward for 16-bit arrays of one dtype."""
    cdef int kind = _half_kind(output)
    if kind < 0:
        return None
    cdef cnp.ndarray a = <cnp.ndarray>output
    cdef _Middle d
    cdef int last = _half_axis(a, axis, &d)
    if last < 0 or not _half_like(grad_output, a, False):
        return None
    cdef cnp.ndarray g = <cnp.ndarray>grad_output
    cdef Py_ssize_t requested = _requested_threads(num_threads)
    if requested < 0 or not (_half_valid_out(out, a) and _half_valid_out(out, g)):
        return None
    cdef cnp.ndarray r = (_half_empty(cnp.PyArray_NDIM(a), cnp.PyArray_DIMS(a), a)
                          if out is None else <cnp.ndarray>out)
    if not last:                       # over a middle axis, read in place
        _half_strided_core(op, kind, <const uint16_t *>cnp.PyArray_DATA(g),
                           <const uint16_t *>cnp.PyArray_DATA(a),
                           <uint16_t *>cnp.PyArray_DATA(r), <float *>NULL, d.outer, d.C,
                           d.inner, _middle_threads(&d, 2, requested))
        return r
    cdef _Half h = _half_init(OP_SOFTMAX_BACKWARD if op == OP_SOFTMAX
                              else OP_LOG_SOFTMAX_BACKWARD, kind, g)
    h.y16 = <const uint16_t *>cnp.PyArray_DATA(a)
    cdef int threads = _call_threads(h.n_rows, h.n, requested, False)
    h.out = <uint16_t *>cnp.PyArray_DATA(r)
    _half_run(&h, <const int32_t *>NULL, threads)
    return r


cdef object _half_scalar(double value, int kind, cnp.ndarray like):
    """value rounded once to like's 16-bit dtype, as a NumPy scalar (of
    ml_dtypes' bfloat16 too: PyArray_Scalar, see _scalar)."""
    cdef uint16_t bits = f64_to_half(kind, value)
    return PyArray_Scalar(&bits, like.dtype, None)


cdef object _fast_half_cross_entropy(
    _FastCall *c, cnp.ndarray x, const label_t *t, cnp.ndarray y, cnp.ndarray grad,
):
    """The loss of a checked 16-bit call (see _fast_cross_entropy_run)."""
    cdef Py_ssize_t kept = c.n_rows
    if t != NULL and _labels_count_bad(t, c.n_rows, c.n, c.ignore_index, &kept,
                                       c.threads) != 0:
        return None  # the full path names the first bad label
    cdef double count = <double>kept
    cdef double scale = 1.0
    if c.reduction == REDUCTION_MEAN:
        scale = 1.0 / count if count != 0.0 else NAN
    row_z = _extra_rows(c, c.z_loss != 0.0)
    row_acc = _extra_rows(c, c.want_acc)
    # the row losses: for "none" a buffer of their own (_loss_result reads
    # them after the kernel), else the thread's scratch (scratch.hpp)
    cdef bint own = c.reduction == REDUCTION_NONE
    cdef double *loss = <double *>malloc(c.n_rows * sizeof(double)) if own else _loss_rows(
        None, c.n_rows)
    if loss == NULL:
        raise MemoryError()
    cdef CrossEntropyExtra ex
    cdef _CrossEntropyArgs ce
    cdef _Half h = _half_init(OP_CROSS_ENTROPY_INDEX if y is None else OP_CROSS_ENTROPY_PROB,
                              c.kind, x)
    cdef double total
    ce.ex = _fast_extras(c, &ex, count, row_z, row_acc)
    ce.ignore_index = c.ignore_index
    ce.alpha = 1.0 - c.label_smoothing
    ce.beta = c.label_smoothing / c.n
    ce.scale = scale
    ce.loss = loss
    ce.w_total = <double>c.n
    h.ce = &ce
    h.loss = loss
    h.cap = <float>c.cap
    h.smoothing = c.label_smoothing
    if y is not None:
        h.y16 = <const uint16_t *>cnp.PyArray_DATA(y)
    if grad is not None:
        h.out = <uint16_t *>cnp.PyArray_DATA(grad)
    try:
        total = _half_run(&h, t, c.threads)
        return _loss_result(c, x, loss, total, count, count, None, row_z, row_acc)
    finally:
        if own:
            free(loss)
        else:
            row_scratch_done()
