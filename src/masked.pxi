# The masked functions (``where=``), included at the end of kernels.pxi.
#
# softmax, log_softmax, logsumexp and their backward passes over the entries
# that a boolean mask keeps.  The mask is not copied: the Python layer
# (csoftmax/_validation.py, MaskRows) describes np.broadcast_to(where, x.shape)
# with its axes moved as x's by a data pointer, a row stride or per-row byte
# offsets (O(rows)), and a column stride or per-column offsets (O(columns));
# zero strides are the broadcast axes.  The row arithmetic lives in
# masked.hpp (masked_row: one row, out of line, on one thread).  Rows are
# spread over threads as _rows_core spreads them (static prange; one thread,
# and the GIL kept, below GIL_WORK elements); a row is never split over
# threads, so results are the same bits at every thread count.

from libc.stdint cimport uint8_t

cdef extern from "masked.hpp" namespace "csoftmax" nogil:
    ctypedef struct MaskRows:
        const uint8_t *base
        int64_t row_stride
        const int64_t *row_off
        int64_t col_stride
        const int64_t *col_off
        uint8_t *scratch
        int64_t prefix
    Py_ssize_t kept_prefix(const uint8_t *k, Py_ssize_t n) noexcept
    void masked_unit[T](int op, const T *x, const T *g, T *out, Py_ssize_t n,
                        const MaskRows *mk, Py_ssize_t i, const T *next) noexcept
    void masked_row[T](int op, const T *xr, const T *gr, T *o, Py_ssize_t n,
                       const MaskRows *mk, Py_ssize_t i, const T *next,
                       const T *gnext) noexcept
    enum:
        MASKED_SOFTMAX
        MASKED_LOG_SOFTMAX
        MASKED_LOGSUMEXP
        MASKED_SOFTMAX_BACKWARD
        MASKED_LOG_SOFTMAX_BACKWARD


cdef inline const floating *_masked_next(
    int op, const floating *x, Py_ssize_t n_rows, Py_ssize_t n, Py_ssize_t i
) noexcept nogil:
    """The next row of x that row i prefetches: the forward ops' rule
    (_next_row), or the backward functions' (_backward_next)."""
    if op == MASKED_SOFTMAX_BACKWARD or op == MASKED_LOG_SOFTMAX_BACKWARD:
        if not _backward_next(x, n_rows, n, i):
            return NULL
    return _next_row(x, n_rows, n, i)


cdef void _masked_serial(
    int op, const floating *x, const floating *g, floating *out, Py_ssize_t n_rows,
    Py_ssize_t n, const MaskRows *mk
) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n_rows):
        masked_unit(op, x, g, out, n, mk, i, _masked_next(op, x, n_rows, n, i))


cdef int _masked_core(
    int op, const floating *x, const floating *g, floating *out, Py_ssize_t n_rows,
    Py_ssize_t n, const MaskRows *mk, int n_threads
) except -1:
    """op over n_rows >= 1 rows of n >= 1 columns (see masked.hpp)."""
    cdef Py_ssize_t i
    if n_threads > 1:
        for i in prange(n_rows, nogil=True, schedule="guided", num_threads=n_threads):
            masked_unit(op, x, g, out, n, mk, i, _masked_next(op, x, n_rows, n, i))
    elif n_rows * n < GIL_WORK:
        _masked_serial(op, x, g, out, n_rows, n, mk)
    else:
        with nogil:
            _masked_serial(op, x, g, out, n_rows, n, mk)
    return 0


cdef object _mask_rows(object mask, Py_ssize_t n, int n_threads, MaskRows *mk):
    """Fills mk from a csoftmax._validation.MaskRows; returns the arrays that
    must stay alive while the kernel runs (offsets, scratch)."""
    cdef cnp.ndarray view = <cnp.ndarray>mask.view
    cdef cnp.ndarray row_off = mask.row_offsets
    cdef cnp.ndarray col_off = mask.col_offsets
    cdef cnp.ndarray scratch = None
    mk.base = <const uint8_t *>cnp.PyArray_DATA(view)
    mk.row_stride = mask.row_stride
    mk.col_stride = mask.col_stride
    mk.row_off = NULL
    mk.col_off = NULL
    if row_off is not None:
        mk.row_off = <const int64_t *>cnp.PyArray_DATA(row_off)
    if col_off is not None:
        mk.col_off = <const int64_t *>cnp.PyArray_DATA(col_off)
    mk.scratch = NULL
    if col_off is not None or mk.col_stride not in (0, 1):
        scratch = np.empty(max(n_threads, 1) * n, np.uint8)
        mk.scratch = <uint8_t *>cnp.PyArray_DATA(scratch)
    _mask_prefix(mk, n)
    return (view, row_off, col_off, scratch)


cdef inline void _mask_prefix(MaskRows *mk, Py_ssize_t n) noexcept:
    """mk.prefix from the rest of mk: for one contiguous mask row for every row
    (a broadcast (1, C) mask) its padding prefix, found once, not per row;
    else -2 (per row)."""
    mk.prefix = -2
    if mk.row_off == NULL and mk.row_stride == 0 and mk.col_off == NULL and mk.col_stride == 1:
        mk.prefix = kept_prefix(mk.base, n)


def masked_softmax_rows(const floating[:, ::1] x, object mask, floating[:, ::1] out,
                        int n_threads):
    """out[i] = softmax of x[i] over the entries the mask keeps (0 elsewhere;
    a row keeping nothing: 0); out may be x."""
    cdef MaskRows mk
    if x.shape[0] and x.shape[1]:
        keep = _mask_rows(mask, x.shape[1], n_threads, &mk)
        _masked_core(MASKED_SOFTMAX, &x[0, 0], <const floating *>NULL, &out[0, 0],
                     x.shape[0], x.shape[1], &mk, n_threads)


def masked_log_softmax_rows(const floating[:, ::1] x, object mask, floating[:, ::1] out,
                            int n_threads):
    """out[i] = log_softmax of x[i] over the kept entries (-inf elsewhere; a
    row keeping nothing: -inf); out may be x."""
    cdef MaskRows mk
    if x.shape[0] and x.shape[1]:
        keep = _mask_rows(mask, x.shape[1], n_threads, &mk)
        _masked_core(MASKED_LOG_SOFTMAX, &x[0, 0], <const floating *>NULL, &out[0, 0],
                     x.shape[0], x.shape[1], &mk, n_threads)


def masked_logsumexp_rows(const floating[:, ::1] x, object mask, floating[::1] out,
                          int n_threads):
    """out[i] = logsumexp of x[i] over the kept entries (-inf if none)."""
    cdef MaskRows mk
    if x.shape[0] == 0:
        return
    if x.shape[1] == 0:
        out[:] = -INFINITY
        return
    keep = _mask_rows(mask, x.shape[1], n_threads, &mk)
    _masked_core(MASKED_LOGSUMEXP, &x[0, 0], <const floating *>NULL, &out[0],
                 x.shape[0], x.shape[1], &mk, n_threads)


def masked_softmax_backward_rows(const floating[:, ::1] grad_output,
                                 const floating[:, ::1] output, object mask,
                                 floating[:, ::1] out, int n_threads):
    """out[i] = a (g - <g, a>) over the kept entries (the dot too), 0 elsewhere."""
    cdef MaskRows mk
    if output.shape[0] and output.shape[1]:
        keep = _mask_rows(mask, output.shape[1], n_threads, &mk)
        _masked_core(MASKED_SOFTMAX_BACKWARD, &output[0, 0], &grad_output[0, 0], &out[0, 0],
                     output.shape[0], output.shape[1], &mk, n_threads)


def masked_log_softmax_backward_rows(const floating[:, ::1] grad_output,
                                     const floating[:, ::1] output, object mask,
                                     floating[:, ::1] out, int n_threads):
    """out[i] = g - exp(o) sum(g) over the kept entries (the sum too), 0 elsewhere."""
    cdef MaskRows mk
    if output.shape[0] and output.shape[1]:
        keep = _mask_rows(mask, output.shape[1], n_threads, &mk)
        _masked_core(MASKED_LOG_SOFTMAX_BACKWARD, &output[0, 0], &grad_output[0, 0],
                     &out[0, 0], output.shape[0], output.shape[1], &mk, n_threads)


# ---------------------------------------------------------------------------
# the C fast path of a masked call (see fastpath.pxi): softmax, log_softmax
# and logsumexp over the last axis with a bool mask of x's shape, or one mask
# row for every row ((n,) or (1, ..., 1, n)): the MaskRows that
# csoftmax._validation.MaskRows and _mask_rows make of such a mask, without
# the Python objects

def fast_masked(int op, object x, object where, object axis, object out, object num_threads,
                object grad_output=None):
    """op (MASKED_SOFTMAX, MASKED_LOG_SOFTMAX: into out or a new array;
    MASKED_LOGSUMEXP: out None, a NumPy scalar for 1-D x; the backward ops
    MASKED_SOFTMAX_BACKWARD, MASKED_LOG_SOFTMAX_BACKWARD: x the forward
    output, grad_output like it, into out or a new array) of float32/float64 x
    over its last axis, over the entries where keeps (a C-contiguous bool
    array of x's shape, or of shape (n,) / (1, ..., 1, n)); None when
    declined."""
    cdef int typenum = _float_array(x)
    if typenum < 0 or type(where) is not cnp.ndarray:
        return None
    cdef cnp.ndarray a = <cnp.ndarray>x
    cdef bint backward = op == MASKED_SOFTMAX_BACKWARD or op == MASKED_LOG_SOFTMAX_BACKWARD
    if backward and not (_like(grad_output, a, typenum, False)
                         and _valid_out(out, <cnp.ndarray>grad_output, typenum)):
        return None
    cdef const void *gp = NULL if not backward else cnp.PyArray_DATA(<cnp.ndarray>grad_output)
    cdef cnp.ndarray m = <cnp.ndarray>where
    cdef int i, nd = cnp.PyArray_NDIM(a), md = cnp.PyArray_NDIM(m)
    if (not _last_axis(axis, nd) or cnp.PyArray_TYPE(m) != cnp.NPY_BOOL
            or not cnp.PyArray_ISCARRAY_RO(m)):
        return None
    cdef Py_ssize_t n = cnp.PyArray_DIMS(a)[nd - 1], n_rows = _rows_of(a)
    cdef bint full = _same_shape(m, a)
    if not full:                       # one mask row for every row
        if md < 1 or md > nd or cnp.PyArray_DIMS(m)[md - 1] != n:
            return None
        for i in range(md - 1):
            if cnp.PyArray_DIMS(m)[i] != 1:
                return None
    cdef Py_ssize_t requested = _requested_threads(num_threads)
    if requested < 0:
        return None
    if op != MASKED_LOGSUMEXP and not (_valid_out(out, a, typenum) and
                                       (out is None or _apart(<cnp.ndarray>out, m))):
        return None                    # the full path refuses out overlapping where
    cdef MaskRows mk
    mk.base = <const uint8_t *>cnp.PyArray_DATA(m)
    mk.row_stride = n if full and n_rows > 1 else 0    # bytes: bool items
    mk.col_stride = 1 if n > 1 else 0
    mk.row_off = NULL
    mk.col_off = NULL
    mk.scratch = NULL
    _mask_prefix(&mk, n)
    cdef int threads = _call_threads(n_rows, n, requested, False)
    cdef cnp.ndarray r
    if op == MASKED_LOGSUMEXP:
        r = cnp.PyArray_EMPTY(nd - 1, cnp.PyArray_DIMS(a), typenum, 0)
    elif out is None:
        r = cnp.PyArray_EMPTY(nd, cnp.PyArray_DIMS(a), typenum, 0)
    else:
        r = <cnp.ndarray>out
    if typenum == cnp.NPY_FLOAT32:
        _masked_core(op, <const float *>cnp.PyArray_DATA(a), <const float *>gp,
                     <float *>cnp.PyArray_DATA(r), n_rows, n, &mk, threads)
    else:
        _masked_core(op, <const double *>cnp.PyArray_DATA(a), <const double *>gp,
                     <double *>cnp.PyArray_DATA(r), n_rows, n, &mk, threads)
    return r[()] if op == MASKED_LOGSUMEXP and nd == 1 else r


# ---------------------------------------------------------------------------
# over the middle axis of (outer, C, inner) arrays (maskedstrided.hpp)

cdef extern from "maskedstrided.hpp" namespace "csoftmax" nogil:
    ctypedef struct MaskStrides:
        const uint8_t *base
        int64_t so
        int64_t sc
        int64_t si
    void masked_strided_unit_of[S](int op, int kind, const S *x, const S *g, S *out,
                                   void *lse, const MaskStrides *mk, Py_ssize_t C,
                                   Py_ssize_t inner, Py_ssize_t width, Py_ssize_t u,
                                   void *stage) noexcept
    Py_ssize_t masked_strided_width(Py_ssize_t C) noexcept


ctypedef fused masked_storage:
    float
    double
    uint16_t


cdef void _masked_strided_serial(
    int op, int kind, const masked_storage *x, const masked_storage *g, masked_storage *out,
    void *lse, const MaskStrides *mk, Py_ssize_t C, Py_ssize_t inner, Py_ssize_t width,
    Py_ssize_t n_units, char *stage,
) noexcept nogil:
    cdef Py_ssize_t u
    for u in range(n_units):
        masked_strided_unit_of(op, kind, x, g, out, lse, mk, C, inner, width, u, stage)


cdef int _masked_strided_core(
    int op, int kind, const masked_storage *x, const masked_storage *g, masked_storage *out,
    void *lse, object mask, int64_t so, int64_t sc, int64_t si, Py_ssize_t outer,
    Py_ssize_t C, Py_ssize_t inner, int n_threads,
) except -1:
    """masked op over axis 1 of (outer, C, inner) x of storage masked_storage,
    computed in its type (float32 for 16-bit; see masked_strided)."""
    cdef MaskStrides mk
    mk.base = <const uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>mask)
    mk.so = so
    mk.sc = sc
    mk.si = si
    cdef Py_ssize_t u, width = masked_strided_width(C)
    cdef Py_ssize_t n_units = outer * ((inner + width - 1) // width)
    cdef Py_ssize_t compute_size = sizeof(masked_storage)
    if masked_storage is uint16_t:
        compute_size = sizeof(float)
    cdef Py_ssize_t stage_bytes = 2 * C * width * compute_size   # a thread's two blocks
    n_threads = <int>min(<Py_ssize_t>n_threads, n_units)
    cdef char *stage = <char *>malloc(n_threads * stage_bytes)
    if stage == NULL:
        raise MemoryError()
    if n_threads > 1:
        for u in prange(n_units, nogil=True, schedule="guided", num_threads=n_threads):
            masked_strided_unit_of(op, kind, x, g, out, lse, &mk, C, inner, width, u,
                                   stage + threadid() * stage_bytes)
    elif outer * C * inner < GIL_WORK:
        _masked_strided_serial(op, kind, x, g, out, lse, &mk, C, inner, width, n_units, stage)
    else:
        with nogil:
            _masked_strided_serial(op, kind, x, g, out, lse, &mk, C, inner, width, n_units,
                                   stage)
    free(stage)
    return 0


def masked_strided(int op, const floating[:, :, ::1] x, const floating[:, :, ::1] grad_output,
                   object mask, int64_t so, int64_t sc, int64_t si, floating[::1] out,
                   int n_threads):
    """Masked op (MASKED_SOFTMAX .. MASKED_LOG_SOFTMAX_BACKWARD) over axis 1
    of x (outer, C, inner) with C <= HALF_STRIDED_CLASSES: mask (a bool
    array, np.broadcast_to(where, x.shape)) keeps entry (o, c, j) at byte
    o so + c sc + j si of its data; grad_output (x's shape) for the backward
    ops, else None; out: x's elements flattened, or (outer, inner)'s for
    logsumexp; out may be x or grad_output."""
    if x.shape[0] == 0 or x.shape[1] == 0 or x.shape[2] == 0:
        return
    cdef const floating *g = NULL
    if grad_output is not None:
        g = &grad_output[0, 0, 0]
    cdef floating *o = &out[0]
    cdef bint lse = op == MASKED_LOGSUMEXP
    _masked_strided_core(op, 0, &x[0, 0, 0], g, <floating *>NULL if lse else o,
                         <void *>o if lse else NULL, mask, so, sc, si, x.shape[0], x.shape[1],
                         x.shape[2], n_threads)


def half_masked_strided(int op, const uint16_t[:, :, ::1] x,
                        const uint16_t[:, :, ::1] grad_output, object mask, int64_t so,
                        int64_t sc, int64_t si, uint16_t[::1] out, float[::1] out32, int kind,
                        int n_threads):
    """masked_strided for 16-bit x and grad_output of kind `kind`, computed in
    float32: out (16-bit, the result rounded once) or, for logsumexp, out32
    (float32, (outer, inner) flattened); the other None."""
    if x.shape[0] == 0 or x.shape[1] == 0 or x.shape[2] == 0:
        return
    cdef const uint16_t *g = NULL
    if grad_output is not None:
        g = &grad_output[0, 0, 0]
    cdef uint16_t *o = NULL
    cdef float *o32 = NULL
    if out is not None:
        o = &out[0]
    if out32 is not None:
        o32 = &out32[0]
    _masked_strided_core(op, kind, &x[0, 0, 0], g, o, <void *>o32, mask, so, sc, si,
                         x.shape[0], x.shape[1], x.shape[2], n_threads)
