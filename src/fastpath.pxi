# The C fast path of every public function (included by calls.pxi; see its
# header).  A fast_* function takes the public function's arguments as they
# came, accepts only the common call, and returns None for anything else --
# before it allocates or writes anything -- so that the caller takes the full
# path (csoftmax/_api.py), which validates, raises and computes the same
# results through the same cores.

import numpy as np

# Set by the Python layer (configure): the work below which a call runs on one
# thread, the cap on a team's size, and the library's default thread count.
cdef Py_ssize_t _small_work = 1 << 14
cdef Py_ssize_t _max_threads = 64
cdef Py_ssize_t _strided_unit_bytes = 64
cdef object _default_threads = None

cdef enum:
    REDUCTION_NONE = 0
    REDUCTION_MEAN = 1
    REDUCTION_SUM = 2
    # row losses of a call with a reduction kept on the stack up to this many rows
    STACK_ROWS = 256
    # labels of other integer dtypes converted to int64 up to this many (256 KiB):
    # a fresh array of 4 MiB (uint8 labels of 8x256x256) took 13 ms more than
    # the 4.3 ms call here (its pages faulted in, this VM), so larger label
    # arrays take the full path, which converts them as it did
    CONVERTED_LABELS = 1 << 15


def configure(Py_ssize_t small_work, Py_ssize_t max_threads, default_threads,
              Py_ssize_t strided_unit_bytes=64):
    """The thread policy of the Python layer (csoftmax._api), for the fast
    path: one thread below small_work elements, at most max_threads,
    default_threads() when num_threads is None, and over a middle axis at most
    a thread per strided_unit_bytes of each outer index's positions."""
    global _small_work, _max_threads, _default_threads, _strided_unit_bytes
    _small_work = small_work
    _max_threads = max_threads
    _default_threads = default_threads
    _strided_unit_bytes = strided_unit_bytes


# ---------------------------------------------------------------------------
# arguments

cdef int _float_array(object v, bint writeable=False) noexcept:
    """The type number of a float32/float64 ndarray (not a subclass) of at
    least one dimension and one element, C-contiguous, aligned, native byte
    order (writeable if asked); -1 for anything else."""
    if type(v) is not cnp.ndarray:
        return -1
    cdef cnp.ndarray a = <cnp.ndarray>v
    cdef int typenum = cnp.PyArray_TYPE(a)
    if ((typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64)
            or cnp.PyArray_NDIM(a) == 0 or cnp.PyArray_SIZE(a) == 0
            or not cnp.PyArray_ISCARRAY_RO(a) or not cnp.PyArray_ISNOTSWAPPED(a)
            or (writeable and not cnp.PyArray_ISWRITEABLE(a))):
        return -1
    return typenum


cdef bint _same_shape(cnp.ndarray a, cnp.ndarray b) noexcept:
    cdef int i, nd = cnp.PyArray_NDIM(a)
    if cnp.PyArray_NDIM(b) != nd:
        return False
    for i in range(nd):
        if cnp.PyArray_DIMS(a)[i] != cnp.PyArray_DIMS(b)[i]:
            return False
    return True


cdef bint _like(object v, cnp.ndarray x, int typenum, bint writeable) noexcept:
    """v is an array that _float_array accepts, of x's shape and type typenum."""
    return _float_array(v, writeable) == typenum and _same_shape(<cnp.ndarray>v, x)


cdef bint _apart(cnp.ndarray a, cnp.ndarray b) noexcept:
    """a and b (both C-contiguous) share no byte."""
    cdef char *pa = <char *>cnp.PyArray_DATA(a)
    cdef char *pb = <char *>cnp.PyArray_DATA(b)
    return pa >= pb + cnp.PyArray_NBYTES(b) or pb >= pa + cnp.PyArray_NBYTES(a)


cdef bint _apart_or_same(cnp.ndarray out, cnp.ndarray x) noexcept:
    """out (of x's shape and dtype, both C-contiguous) is x itself (in place)
    or does not overlap it: anything in between the full path sorts out."""
    return cnp.PyArray_DATA(out) == cnp.PyArray_DATA(x) or _apart(out, x)


cdef bint _valid_out(object out, cnp.ndarray x, int typenum) noexcept:
    return out is None or (_like(out, x, typenum, True) and _apart_or_same(out, x))


cdef Py_ssize_t _requested_threads(object num_threads) noexcept:
    """0 for None (the default), n for an int n >= 1, -1 for anything else."""
    if num_threads is None:
        return 0
    if type(num_threads) is not int or num_threads < 1:
        return -1
    return <Py_ssize_t>min(num_threads, _max_threads)


cdef int _call_threads(Py_ssize_t n_rows, Py_ssize_t n, Py_ssize_t requested,
                       bint split) except -1:
    """The team of one call, as csoftmax._api._threads_for chooses it."""
    if n_rows * n < _small_work:
        return 1
    cdef Py_ssize_t threads = requested if requested > 0 else _default_threads()
    cdef Py_ssize_t units = n_rows * ((n + CHUNK - 1) // CHUNK) if split else n_rows
    return <int>max(1, min(threads, units, _max_threads))


cdef int _last_axis(object axis, int nd) noexcept:
    """axis is the int -1 or nd - 1."""
    return type(axis) is int and (axis == -1 or axis == nd - 1)


cdef int _one_axis(object axis, int nd) noexcept:
    """axis, a Python int in [-nd, nd), as an index in [0, nd); -1 for
    anything else (the full path normalises or refuses it)."""
    if type(axis) is not int or not -nd <= axis < nd:
        return -1
    return <int>(axis + nd if axis < 0 else axis)


cdef struct _Middle:
    Py_ssize_t outer, C, inner     # x viewed as (outer, C, inner), C the axis


cdef _Middle _middle_of(cnp.ndarray x, int axis) noexcept:
    cdef _Middle d
    cdef int i
    d.outer = d.inner = 1
    d.C = cnp.PyArray_DIMS(x)[axis]
    for i in range(axis):
        d.outer *= cnp.PyArray_DIMS(x)[i]
    for i in range(axis + 1, cnp.PyArray_NDIM(x)):
        d.inner *= cnp.PyArray_DIMS(x)[i]
    return d


cdef int _middle_threads(_Middle *d, Py_ssize_t itemsize, Py_ssize_t requested) except -1:
    """The team of a call over a middle axis, as csoftmax._runner._threads_strided
    chooses it."""
    if d.outer * d.C * d.inner < _small_work:
        return 1
    cdef Py_ssize_t threads = requested if requested > 0 else _default_threads()
    cdef Py_ssize_t units = d.outer * ((d.inner * itemsize + _strided_unit_bytes - 1)
                                       // _strided_unit_bytes)
    return <int>max(1, min(threads, units, _max_threads))


cdef int _middle_typed(int op, const floating *x, floating *r, _Middle *d,
                       int threads) except -1:
    """op (softmax, log_softmax: r like x; logsumexp: r (outer, inner)) over the
    middle axis of x as (outer, C, inner), by the strided kernels as the full
    path runs them (_run_strided: rows of C where inner is 1)."""
    if d.inner == 1:
        return _rows_core(op, x, r, d.outer, d.C, threads)
    return _strided_core(op, x, r, d.outer, d.C, d.inner, threads)


cdef int _middle_core(int op, cnp.ndarray x, cnp.ndarray r, int typenum, _Middle *d,
                      int threads) except -1:
    """_middle_typed on float32 or float64 arrays."""
    if typenum == cnp.NPY_FLOAT32:
        return _middle_typed(op, <const float *>cnp.PyArray_DATA(x),
                             <float *>cnp.PyArray_DATA(r), d, threads)
    return _middle_typed(op, <const double *>cnp.PyArray_DATA(x),
                         <double *>cnp.PyArray_DATA(r), d, threads)


cdef int _middle_backward_typed(int op, const floating *g, const floating *a, floating *r,
                                _Middle *d, int threads) except -1:
    """The gradient through op (softmax, log_softmax) over the middle axis of
    the non-empty (outer, C, inner) arrays g and a into r, as the full path
    runs it (_run_strided: rows of C where inner is 1)."""
    if d.inner == 1:
        return _backward_core(op, g, a, r, d.outer, d.C, threads)
    return _strided_backward_core(op, g, a, r, d.outer, d.C, d.inner, threads)


cdef int _middle_backward_core(int op, cnp.ndarray g, cnp.ndarray a, cnp.ndarray r,
                               int typenum, _Middle *d, int threads) except -1:
    """_middle_backward_typed on float32 or float64 arrays."""
    if typenum == cnp.NPY_FLOAT32:
        return _middle_backward_typed(op, <const float *>cnp.PyArray_DATA(g),
                                      <const float *>cnp.PyArray_DATA(a),
                                      <float *>cnp.PyArray_DATA(r), d, threads)
    return _middle_backward_typed(op, <const double *>cnp.PyArray_DATA(g),
                                  <const double *>cnp.PyArray_DATA(a),
                                  <double *>cnp.PyArray_DATA(r), d, threads)


cdef Py_ssize_t _rows_of(cnp.ndarray x) noexcept:
    cdef int nd = cnp.PyArray_NDIM(x)
    return cnp.PyArray_SIZE(x) // cnp.PyArray_DIMS(x)[nd - 1]


cdef extern from "numpy/arrayobject.h":
    # (not in NumPy's Cython declarations)
    object PyArray_Scalar(void *data, cnp.dtype descr, object base)


cdef object _scalar(double value, int typenum):
    """A NumPy scalar of the result dtype, value rounded once to it, as the
    full path makes it.  By PyArray_Scalar: np.float32(value) parsed a Python
    float through a 0-d array, a tenth of a 1x10 loss's time."""
    cdef float single = <float>value
    cdef cnp.dtype descr = cnp.PyArray_DescrFromType(typenum)
    if typenum == cnp.NPY_FLOAT32:
        return PyArray_Scalar(&single, descr, None)
    return PyArray_Scalar(&value, descr, None)


# ---------------------------------------------------------------------------
# softmax, log_softmax, logsumexp, the backward functions

def fast_rows(int op, object x, object axis, object out, object num_threads):
    """softmax (op 0) or log_softmax (op 1) of x over one axis, into out or a
    new array; None when declined."""
    cdef int typenum = _float_array(x)
    if typenum < 0:
        return _fast_half_rows(op, x, axis, out, num_threads)
    cdef cnp.ndarray a = <cnp.ndarray>x
    cdef int nd = cnp.PyArray_NDIM(a)
    cdef int ax = _one_axis(axis, nd)
    if ax < 0:
        return None
    cdef Py_ssize_t requested = _requested_threads(num_threads)
    if requested < 0 or not _valid_out(out, a, typenum):
        return None
    cdef cnp.ndarray r
    if out is None:
        r = cnp.PyArray_EMPTY(nd, cnp.PyArray_DIMS(a), typenum, 0)
    else:
        r = <cnp.ndarray>out
    cdef _Middle d
    if ax != nd - 1:                   # over a middle axis, read in place
        d = _middle_of(a, ax)
        _middle_core(op, a, r, typenum, &d, _middle_threads(&d, cnp.PyArray_ITEMSIZE(a),
                                                            requested))
        return r
    cdef Py_ssize_t n = cnp.PyArray_DIMS(a)[nd - 1], n_rows = _rows_of(a)
    cdef int threads = _call_threads(n_rows, n, requested, True)
    if typenum == cnp.NPY_FLOAT32:
        _rows_core(op, <const float *>cnp.PyArray_DATA(a), <float *>cnp.PyArray_DATA(r),
                   n_rows, n, threads)
    else:
        _rows_core(op, <const double *>cnp.PyArray_DATA(a), <double *>cnp.PyArray_DATA(r),
                   n_rows, n, threads)
    return r


def fast_logsumexp(object x, object axis, object num_threads):
    """logsumexp of x over one axis (a NumPy scalar for 1-D x); None when
    declined."""
    cdef int typenum = _float_array(x)
    if typenum < 0:
        return _fast_half_logsumexp(x, axis, num_threads)
    cdef cnp.ndarray a = <cnp.ndarray>x
    cdef int nd = cnp.PyArray_NDIM(a)
    cdef int ax = _one_axis(axis, nd)
    if ax < 0:
        return None
    cdef Py_ssize_t requested = _requested_threads(num_threads)
    if requested < 0:
        return None
    cdef _Middle d
    cdef cnp.npy_intp kept[cnp.NPY_MAXDIMS]
    cdef int i
    if ax != nd - 1:                   # over a middle axis: the other axes kept
        for i in range(nd - 1):
            kept[i] = cnp.PyArray_DIMS(a)[i if i < ax else i + 1]
        d = _middle_of(a, ax)
        rm = cnp.PyArray_EMPTY(nd - 1, kept, typenum, 0)
        _middle_core(OP_LOGSUMEXP, a, <cnp.ndarray>rm, typenum, &d,
                     _middle_threads(&d, cnp.PyArray_ITEMSIZE(a), requested)
                     if d.inner > 1 else _call_threads(d.outer, d.C, requested, True))
        return rm
    cdef Py_ssize_t n = cnp.PyArray_DIMS(a)[nd - 1], n_rows = _rows_of(a)
    cdef int threads = _call_threads(n_rows, n, requested, True)
    cdef cnp.ndarray r = cnp.PyArray_EMPTY(nd - 1, cnp.PyArray_DIMS(a), typenum, 0)
    if typenum == cnp.NPY_FLOAT32:
        _rows_core(OP_LOGSUMEXP, <const float *>cnp.PyArray_DATA(a),
                   <float *>cnp.PyArray_DATA(r), n_rows, n, threads)
    else:
        _rows_core(OP_LOGSUMEXP, <const double *>cnp.PyArray_DATA(a),
                   <double *>cnp.PyArray_DATA(r), n_rows, n, threads)
    return r[()] if nd == 1 else r


def fast_backward(int op, object grad_output, object output, object axis, object out,
                  object num_threads):
    """The gradient through softmax (op 0) or log_softmax (op 1) over one axis,
    into out or a new array; None when declined."""
    cdef int typenum = _float_array(output)
    if typenum < 0:
        return _fast_half_backward(op, grad_output, output, axis, out, num_threads)
    cdef cnp.ndarray a = <cnp.ndarray>output
    cdef int nd = cnp.PyArray_NDIM(a)
    cdef int ax = _one_axis(axis, nd)
    if ax < 0:
        return None
    if not _like(grad_output, a, typenum, False):
        return None
    cdef cnp.ndarray g = <cnp.ndarray>grad_output
    cdef Py_ssize_t requested = _requested_threads(num_threads)
    if requested < 0 or not (_valid_out(out, a, typenum) and _valid_out(out, g, typenum)):
        return None
    cdef cnp.ndarray r
    if out is None:
        r = cnp.PyArray_EMPTY(nd, cnp.PyArray_DIMS(a), typenum, 0)
    else:
        r = <cnp.ndarray>out
    cdef _Middle d
    if ax != nd - 1:                   # over a middle axis, read in place
        d = _middle_of(a, ax)
        _middle_backward_core(op, g, a, r, typenum, &d,
                              _middle_threads(&d, cnp.PyArray_ITEMSIZE(a), requested))
        return r
    cdef Py_ssize_t n = cnp.PyArray_DIMS(a)[nd - 1], n_rows = _rows_of(a)
    cdef int threads = _call_threads(n_rows, n, requested, False)
    if typenum == cnp.NPY_FLOAT32:
        _backward_core(op, <const float *>cnp.PyArray_DATA(g),
                       <const float *>cnp.PyArray_DATA(a), <float *>cnp.PyArray_DATA(r),
                       n_rows, n, threads)
    else:
        _backward_core(op, <const double *>cnp.PyArray_DATA(g),
                       <const double *>cnp.PyArray_DATA(a), <double *>cnp.PyArray_DATA(r),
                       n_rows, n, threads)
    return r


# ---------------------------------------------------------------------------
# cross-entropy

cdef struct _FastCall:
    Py_ssize_t n_rows, n
    int typenum                # of the logits (and of the results)
    int kind                   # 16-bit logits: their kind (fasthalf.pxi); -1 otherwise
    int reduction
    int threads
    int nd                     # of the logits
    cnp.npy_intp *dims         # of the positions (the logits' without the class axis)
    Py_ssize_t inner           # positions after the class axis (1: the classes are rows)
    Py_ssize_t ignore_index
    double label_smoothing
    double z_loss              # the z-loss coefficient (0: none)
    double cap                 # the logit soft cap (0: none)
    bint want_z, want_acc      # return_z_loss, return_token_accuracy


cdef object _value(_FastCall *c, cnp.ndarray x, double value):
    """value rounded once to the result dtype (the logits'), a NumPy scalar."""
    return _half_scalar(value, c.kind, x) if c.kind >= 0 else _scalar(value, c.typenum)


cdef object _positions(_FastCall *c, cnp.ndarray x, const double *rows, object rows64):
    """Per-position float64 values as a "none" result: rounded once to the
    result dtype, the positions' shape (a scalar for (C,) logits).  rows64, a
    float64 array of that shape holding rows (or None), is the float64
    result itself."""
    if c.nd == 1:
        return _value(c, x, rows[0])
    if c.typenum == cnp.NPY_FLOAT64 and c.kind < 0 and rows64 is not None:
        return rows64
    cdef cnp.ndarray r = cnp.PyArray_EMPTY(c.nd - 1, c.dims, c.typenum, 0)
    cdef Py_ssize_t i
    cdef void *p = cnp.PyArray_DATA(r)
    if c.kind >= 0:
        for i in range(c.n_rows):
            (<uint16_t *>p)[i] = f64_to_half(c.kind, rows[i])
    elif c.typenum == cnp.NPY_FLOAT32:
        for i in range(c.n_rows):
            (<float *>p)[i] = <float>rows[i]
    else:
        for i in range(c.n_rows):
            (<double *>p)[i] = rows[i]
    return r


cdef bint _finite_number(object v) noexcept:
    """v is a finite Python float or a Python int (not a bool) of a moderate
    size: what the full path's option checks take as it is."""
    if type(v) is float:
        return isfinite(<double>v)
    return type(v) is int and -(1 << 62) < v < (1 << 62)


cdef bint _extra_options(_FastCall *c, object z_loss, object softcap, object return_z_loss,
                         object return_token_accuracy) noexcept:
    """z_loss (finite, >= 0), softcap (None, or finite and > 0) and the two
    return_* flags (True or False) into c; False for anything else (the full
    path converts or refuses it)."""
    if not (_finite_number(z_loss) and z_loss >= 0):
        return False
    if softcap is None:
        c.cap = 0.0
    elif _finite_number(softcap) and softcap > 0:
        c.cap = softcap
    else:
        return False
    if ((return_z_loss is not True and return_z_loss is not False)
            or (return_token_accuracy is not True and return_token_accuracy is not False)):
        return False
    c.z_loss = z_loss
    c.want_z = return_z_loss
    c.want_acc = return_token_accuracy
    return True


cdef bint _has_extras(_FastCall *c) noexcept:
    """The call runs the kernels' extras (z-loss rows, accuracy rows), as the
    full path's _extra_args decides."""
    return c.z_loss != 0.0 or c.want_acc


cdef Py_ssize_t _labels_kept(const label_t *t, Py_ssize_t n_rows,
                             Py_ssize_t ignore_index) noexcept nogil:
    """The labels that are not ignore_index (what the z-loss and the accuracy
    count, whatever the class weights)."""
    cdef Py_ssize_t i, kept = 0
    for i in range(n_rows):
        kept += t[i] != ignore_index
    return kept


cdef double *_rows_data(object rows) noexcept:
    """The data of a float64 array of _extra_rows, NULL for None."""
    return <double *>NULL if rows is None else <double *>cnp.PyArray_DATA(<cnp.ndarray>rows)


cdef const CrossEntropyExtra *_fast_extras(
    _FastCall *c, CrossEntropyExtra *ex, double kept, object row_z, object row_acc,
) noexcept:
    """ex for the kernels (NULL for a call without extras), as the full path
    fills it: the z-loss gradient scaled by 1 / kept for "mean"."""
    if not _has_extras(c):
        return NULL
    ex.z = c.z_loss
    ex.zscale = 1.0
    if c.reduction == REDUCTION_MEAN:
        ex.zscale = 1.0 / kept if kept != 0.0 else NAN
    ex.zrow = _rows_data(row_z)
    ex.acc = _rows_data(row_acc)
    return ex


cdef object _extra_rows(_FastCall *c, bint wanted):
    """float64 room for one value per position, in the positions' shape (None
    when not wanted)."""
    if not wanted:
        return None
    cdef cnp.npy_intp one = 1
    if c.nd == 1:
        return cnp.PyArray_EMPTY(1, &one, cnp.NPY_FLOAT64, 0)
    return cnp.PyArray_EMPTY(c.nd - 1, c.dims, cnp.NPY_FLOAT64, 0)


cdef object _loss_result(_FastCall *c, cnp.ndarray x, double *row_loss, double total,
                         double count, double kept, object none_result, object row_z,
                         object row_acc):
    """The loss as the full path returns it: the reduction of the row losses
    (count: what "mean" divides by; total their sum by the kernels), or for
    "none" the row losses (none_result: float64 ones, or None); with a
    return_* flag the tuple (loss, z_loss, token_accuracy), the z-loss rows
    row_z added as the full path adds them (its pairwise sum for a reduction)
    and the accuracy rows row_acc over the kept positions."""
    cdef Py_ssize_t i
    cdef double *z = _rows_data(row_z)
    cdef double *acc = _rows_data(row_acc)
    cdef double z_part = 0.0, correct = 0.0
    if c.reduction == REDUCTION_NONE:
        if z != NULL:
            for i in range(c.n_rows):
                row_loss[i] += z[i]
        loss = _positions(c, x, row_loss, none_result)
        if not (c.want_z or c.want_acc):
            return loss
        z_loss = None
        if c.want_z and z != NULL:
            z_loss = _positions(c, x, z, row_z)
        elif c.want_z:
            z_loss = (_value(c, x, 0.0) if c.nd == 1
                      else cnp.PyArray_ZEROS(c.nd - 1, c.dims, c.typenum, 0))
        return loss, z_loss, None if acc == NULL else _positions(c, x, acc, row_acc)
    if c.reduction == REDUCTION_MEAN:
        total = total / count if count != 0.0 else NAN
    if z != NULL:
        # the full path's np.add.reduce (pairwise): one row is its value
        z_part = z[0] if c.n_rows == 1 else <double>np.add.reduce(row_z.reshape(-1))
        if c.reduction == REDUCTION_MEAN:
            z_part = z_part / kept if kept != 0.0 else NAN
        total = total + z_part
    loss = _value(c, x, total)
    if not (c.want_z or c.want_acc):
        return loss
    accuracy = None
    if acc != NULL:
        for i in range(c.n_rows):
            correct += acc[i]          # ones and zeros: exact in any order
        accuracy = _value(c, x, correct / kept if kept != 0.0 else NAN)
    return loss, _value(c, x, z_part) if c.want_z else None, accuracy


cdef object _fast_cross_entropy_run(
    _FastCall *c, cnp.ndarray logits, const floating *x, const label_t *t, const floating *y,
    floating *grad, const floating *w,
):
    """The loss of a checked call with labels t (checked here: None when one is
    out of range) or probability targets y, class weights w (or NULL); the
    gradient into grad unless NULL.  A "mean" divides by the rows' number, or
    with labels and weights by their labels' summed weight (label_summary's
    total); the z-loss and the accuracy by the kept rows' number."""
    cdef Py_ssize_t kept = c.n_rows
    cdef double count
    # the loss alone of unweighted labels over the last axis, without extras:
    # its labels are checked by the kernel as it reads them, which writes
    # nothing the caller sees before the check.  A separate pass before the
    # kernel ran on the calling thread alone (the AVX2 loss on 2 threads took
    # 1.02-1.11x the time with it at 65536x10, 1.08-1.12x at 262144x2)
    cdef bint check_in_kernel = (t != NULL and w == NULL and grad == NULL and c.inner == 1
                                 and not _has_extras(c))
    if t != NULL and w != NULL:
        if _labels_weight_total(t, c.n_rows, c.n, c.ignore_index, w, &count) >= 0:
            return None  # the full path names the first bad label
        if _has_extras(c):
            kept = _labels_kept(t, c.n_rows, c.ignore_index)
    else:
        if t != NULL and not check_in_kernel and _labels_count_bad(
                t, c.n_rows, c.n, c.ignore_index, &kept, c.threads) != 0:
            return None
        count = <double>kept
    cdef double scale = 1.0
    if c.reduction == REDUCTION_MEAN:
        scale = 1.0 / count if count != 0.0 else NAN
    row_z = _extra_rows(c, c.z_loss != 0.0)
    row_acc = _extra_rows(c, c.want_acc)
    cdef CrossEntropyExtra ex_args
    cdef const CrossEntropyExtra *ex = _fast_extras(c, &ex_args, <double>kept, row_z, row_acc)
    cdef double stack_loss[STACK_ROWS]
    cdef double *loss = stack_loss
    cdef object none_result = None
    if c.reduction == REDUCTION_NONE:
        none_result = cnp.PyArray_EMPTY(c.nd - 1, c.dims, cnp.NPY_FLOAT64, 0)
        loss = <double *>cnp.PyArray_DATA(<cnp.ndarray>none_result)
    elif t != NULL and c.inner == 1 and ex == NULL and _short_row(c.n, sizeof(floating)):
        loss = NULL  # the tiles' sums alone (no 8 bytes stored per row)
    elif c.n_rows > STACK_ROWS:
        loss = _loss_rows(None, c.n_rows)   # the thread's scratch (scratch.hpp)
    cdef double total
    try:
        if t != NULL and c.inner > 1:    # the classes over a middle axis (strided.pxi)
            total = _cross_entropy_index_strided_core(
                x, t, c.n_rows // c.inner, c.n, c.inner, w, c.ignore_index, c.label_smoothing,
                scale, loss, grad, c.threads, ex, c.cap)
        elif check_in_kernel:
            total = _cross_entropy_index_core(x, t, c.n_rows, c.n, w, c.ignore_index,
                                              c.label_smoothing, scale, loss, grad, c.threads,
                                              ex, c.cap, &kept)
            if kept < 0:
                return None  # the full path names the first bad label
            count = <double>kept   # (scale, from the rows' number, scales no gradient)
        elif t != NULL:
            total = _cross_entropy_index_core(x, t, c.n_rows, c.n, w, c.ignore_index,
                                              c.label_smoothing, scale, loss, grad, c.threads,
                                              ex, c.cap)
        else:
            total = _cross_entropy_prob_core(x, y, c.n_rows, c.n, w, c.label_smoothing, scale,
                                             loss, grad, c.threads, ex, c.cap)
        return _loss_result(c, logits, loss, total, count, <double>kept, none_result, row_z,
                            row_acc)
    finally:
        if loss != stack_loss and none_result is None:
            row_scratch_done()


cdef int _label_size(object v, int nd, const cnp.npy_intp *dims) noexcept:
    """The item size of native int32/int64 labels of shape dims (nd of them),
    C-contiguous and aligned; -1 for anything else."""
    if type(v) is not cnp.ndarray:
        return -1
    cdef cnp.ndarray a = <cnp.ndarray>v
    cdef int i, size = cnp.PyArray_ITEMSIZE(a)
    if (cnp.PyArray_NDIM(a) != nd
            or not cnp.PyArray_ISSIGNED(a) or (size != 4 and size != 8)
            or not cnp.PyArray_ISCARRAY_RO(a) or not cnp.PyArray_ISNOTSWAPPED(a)):
        return -1
    for i in range(nd):
        if cnp.PyArray_DIMS(a)[i] != dims[i]:
            return -1
    return size


cdef object _labels_as_int64(object v, int nd, const cnp.npy_intp *dims):
    """C-contiguous, aligned, native-order labels of shape dims (nd of them)
    of another integer dtype of up to 4 bytes (uint8 segmentation masks,
    int16, uint32) as a new int64 array, the full path's conversion
    (_as_label_array), up to CONVERTED_LABELS of them; None for anything else
    (uint64 among it: the full path maps its values past int64 apart)."""
    if type(v) is not cnp.ndarray:
        return None
    cdef cnp.ndarray a = <cnp.ndarray>v
    cdef int i
    if (not cnp.PyArray_ISINTEGER(a) or cnp.PyArray_ITEMSIZE(a) > 4
            or cnp.PyArray_SIZE(a) > CONVERTED_LABELS
            or cnp.PyArray_NDIM(a) != nd or not cnp.PyArray_ISCARRAY_RO(a)):
        return None
    for i in range(nd):
        if cnp.PyArray_DIMS(a)[i] != dims[i]:
            return None
    return cnp.PyArray_Cast(a, cnp.NPY_INT64)


cdef bint _loss_options(_FastCall *c, object reduction, object ignore_index,
                        object label_smoothing) noexcept:
    """The reduction, ignore_index and label_smoothing of a loss call into c
    when they are what the fast path takes (a reduction's name, Python ints
    and numbers in range); False for anything else."""
    if type(reduction) is not str:
        return False
    if reduction == "mean":
        c.reduction = REDUCTION_MEAN
    elif reduction == "sum":
        c.reduction = REDUCTION_SUM
    elif reduction == "none":
        c.reduction = REDUCTION_NONE
    else:
        return False
    if (type(ignore_index) is not int or not -(1 << 62) < ignore_index < (1 << 62)
            or type(label_smoothing) not in (float, int)
            or not 0.0 <= label_smoothing <= 1.0):
        return False
    c.ignore_index = ignore_index
    c.label_smoothing = label_smoothing
    return True


cdef bint _python_label(object target, int64_t *label) noexcept:
    """A Python int class index of one sample into label (False if it is not
    one, or out of the range the kernels take)."""
    if type(target) is not int or not -(1 << 62) < target < (1 << 62):
        return False
    label[0] = target
    return True


cdef bint _valid_weight(object weight, cnp.ndarray x, int typenum, int kind, bint with_grad,
                        object out) noexcept:
    """weight is None, or (float32/float64 logits) a (C,) array of the logits'
    dtype that _float_array accepts, apart from out where the call writes a
    gradient there (the full path refuses an overlap)."""
    if weight is None:
        return True
    if kind >= 0 or _float_array(weight) != typenum:
        return False
    cdef cnp.ndarray w = <cnp.ndarray>weight
    if (cnp.PyArray_NDIM(w) != 1
            or cnp.PyArray_DIMS(w)[0] != cnp.PyArray_DIMS(x)[cnp.PyArray_NDIM(x) - 1]):
        return False
    return not (with_grad and out is not None and not _apart(w, <cnp.ndarray>out))


def fast_cross_entropy(object logits, object target, object axis, object ignore_index,
                       object reduction, object label_smoothing, object num_threads,
                       bint with_grad, object out, object weight=None, object z_loss=0.0,
                       object softcap=None, object return_z_loss=False,
                       object return_token_accuracy=False):
    """cross_entropy (with_grad False) or cross_entropy_with_grad, for logits
    with the classes on axis (a Python int) and native int32/int64 labels of
    the other axes' shape (a Python int for (C,) logits) or, with the classes
    last, probability targets of the logits' shape and dtype; class weights
    None or (float32/float64 logits) a (C,) array of the logits' dtype.  Over
    a middle axis (float32/float64 logits, labels) the strided kernels read
    the logits in place.  z_loss, softcap and the return_* flags as the public
    functions take them; with a flag the result is (loss, z_loss,
    token_accuracy), or (loss, grad, z_loss, token_accuracy).  None when
    declined."""
    cdef _FastCall c
    c.kind = -1
    c.typenum = _float_array(logits)
    if c.typenum < 0:
        c.kind = _half_kind(logits)
        if c.kind < 0:
            return None
        c.typenum = cnp.PyArray_TYPE(<cnp.ndarray>logits)
    cdef int kind = c.kind
    if not _extra_options(&c, z_loss, softcap, return_z_loss, return_token_accuracy):
        return None
    cdef cnp.ndarray x = <cnp.ndarray>logits
    c.nd = cnp.PyArray_NDIM(x)
    cdef int ax = _one_axis(axis, c.nd), i
    if ax < 0:
        return None
    cdef _Middle d = _middle_of(x, ax)
    if d.inner > 1 and kind >= 0:
        return None                    # 16-bit logits over a middle axis: the full path
    cdef cnp.npy_intp positions[cnp.NPY_MAXDIMS]
    for i in range(c.nd - 1):
        positions[i] = cnp.PyArray_DIMS(x)[i if i < ax else i + 1]
    c.dims = positions
    c.n = d.C
    c.n_rows = d.outer * d.inner
    c.inner = d.inner
    if not _loss_options(&c, reduction, ignore_index, label_smoothing):
        return None
    cdef Py_ssize_t requested = _requested_threads(num_threads)
    if requested < 0 or (with_grad and not (_half_valid_out(out, x) if kind >= 0
                                            else _valid_out(out, x, c.typenum))):
        return None
    if not _valid_weight(weight, x, c.typenum, kind, with_grad, out):
        return None
    # the targets: labels (int32, int64, or one Python int) or probabilities
    cdef int64_t one_label
    cdef int label_size = -1
    cdef cnp.ndarray y = None
    if c.nd == 1 and type(target) is int:
        if not _python_label(target, &one_label):
            return None
        label_size = 0
    cdef cnp.ndarray labels = None   # other integer labels as int64 (as the full path)
    if c.nd > 1:
        label_size = _label_size(target, c.nd - 1, c.dims)
        if label_size < 0:
            labels = _labels_as_int64(target, c.nd - 1, c.dims)
            if labels is not None:
                label_size = 8
    if label_size < 0:
        if (not (_half_like(target, x, False) if kind >= 0
                 else _like(target, x, c.typenum, False)) or c.ignore_index >= 0
                or c.inner > 1 or c.want_acc):
            return None
    # the kernels read the targets while they write the gradient: out must
    # not overlap them, not even as the same array (the full path refuses it)
    if (with_grad and out is not None and label_size != 0
            and not _apart(<cnp.ndarray>target, <cnp.ndarray>out)):
        return None
    if label_size < 0:
        y = <cnp.ndarray>target
    c.threads = (_call_threads(c.n_rows, c.n, requested, True) if c.inner == 1
                 else _middle_threads(&d, cnp.PyArray_ITEMSIZE(x), requested))
    cdef cnp.ndarray grad = None
    if with_grad:
        grad = (cnp.PyArray_EMPTY(cnp.PyArray_NDIM(x), cnp.PyArray_DIMS(x), c.typenum, 0)
                if out is None else <cnp.ndarray>out)
    cdef void *tp = NULL
    cdef void *yp = NULL
    cdef void *gp = NULL
    cdef void *xp = cnp.PyArray_DATA(x)
    if label_size == 0:
        tp = &one_label
    elif labels is not None:
        tp = cnp.PyArray_DATA(labels)
    elif label_size > 0:
        tp = cnp.PyArray_DATA(<cnp.ndarray>target)
    else:
        yp = cnp.PyArray_DATA(y)
    if grad is not None:
        gp = cnp.PyArray_DATA(grad)
    cdef void *wp = NULL if weight is None else cnp.PyArray_DATA(<cnp.ndarray>weight)
    if kind >= 0:
        if label_size == 4:
            loss = _fast_half_cross_entropy(&c, x, <const int32_t *>tp, y, grad)
        else:
            loss = _fast_half_cross_entropy(&c, x, <const int64_t *>tp, y, grad)
    elif c.typenum == cnp.NPY_FLOAT32:
        if label_size == 4:
            loss = _fast_cross_entropy_run(&c, x, <const float *>xp, <const int32_t *>tp,
                                           <const float *>NULL, <float *>gp, <const float *>wp)
        else:
            loss = _fast_cross_entropy_run(&c, x, <const float *>xp, <const int64_t *>tp,
                                           <const float *>yp, <float *>gp, <const float *>wp)
    else:
        if label_size == 4:
            loss = _fast_cross_entropy_run(&c, x, <const double *>xp, <const int32_t *>tp,
                                           <const double *>NULL, <double *>gp,
                                           <const double *>wp)
        else:
            loss = _fast_cross_entropy_run(&c, x, <const double *>xp, <const int64_t *>tp,
                                           <const double *>yp, <double *>gp, <const double *>wp)
    if loss is None:
        return None
    if not with_grad:
        return loss
    if c.want_z or c.want_acc:
        return loss[0], grad, loss[1], loss[2]
    return loss, grad
