# Kernels over the middle axis of a C-contiguous array viewed as
# (outer, C, inner) (included at the end of kernels.pxi): softmax, log_softmax,
# logsumexp and cross-entropy with class indices over a class axis that is
# not the last, without a transposed copy.  The arithmetic of a block of
# positions lives in strided.hpp and stridedce.hpp (positions as the vector
# lanes, classes as the loop); here the units (outer index, block of
# positions) are spread over threads with a static prange.  A unit's
# arithmetic is the same on every path, so results are bitwise identical at
# every thread count.


cdef extern from "strided.hpp" namespace "csoftmax" nogil:
    const CrossEntropyExtra *extra_at(const CrossEntropyExtra *ex, Py_ssize_t pos,
                                      CrossEntropyExtra *bex) noexcept
    void strided_unit[T](
        int op, const T *x, T *out, Py_ssize_t C, Py_ssize_t inner, Py_ssize_t u,
        T *stage, int stream) noexcept
    Py_ssize_t strided_stage_elems[T](const T *x, Py_ssize_t C, Py_ssize_t inner) noexcept
    Py_ssize_t strided_block_bytes(Py_ssize_t C, Py_ssize_t inner_bytes) noexcept
    Py_ssize_t strided_units[T](const T *out, Py_ssize_t C, Py_ssize_t inner, int stream,
                                T cap) noexcept


cdef extern from "stridedce.hpp" namespace "csoftmax" nogil:
    void strided_cross_entropy_index_unit[T, L](
        const T *x, const L *target, Py_ssize_t C, Py_ssize_t inner,
        Py_ssize_t ignore_index, const T *w, double w_total, double alpha, double beta,
        double *loss, T *grad, double scale, Py_ssize_t u, T *stage,
        const CrossEntropyExtra *ex, T cap, int stream) noexcept
    void strided_cross_entropy_prob_unit[T](
        const T *x, const T *y, Py_ssize_t C, Py_ssize_t inner, const T *w, double alpha,
        double beta, double *loss, T *grad, double scale, Py_ssize_t u, T *stage,
        const CrossEntropyExtra *ex, T cap, int stream) noexcept


# Outputs of at least this many bytes are written with non-temporal stores
# where the blocks are staged (stream_row in strided.hpp): beyond the caches,
# where a plain store first reads the line.  AVX2, 2 threads, streamed / plain
# time: the segmentation loss + gradient 8x21x256x256 (44 MiB) 0.85-0.95x,
# softmax of 1000x4096 over axis 0 into a line-aligned output 0.83x.
cdef Py_ssize_t _strided_stream_bytes = 8 << 20


def strided_stream_bytes(Py_ssize_t n=-1):
    """The output size from which staged blocks stream their rows; n >= 0
    sets it (tests)."""
    global _strided_stream_bytes
    if n >= 0:
        _strided_stream_bytes = n
    return _strided_stream_bytes


cdef floating *_stage_alloc(
    const floating *x, Py_ssize_t C, Py_ssize_t inner, int n_threads, Py_ssize_t *elems,
    bint capped=False,
) except? NULL:
    """Thread-private scratch for staged blocks (see strided.hpp), n_threads
    times elems[0] elements; NULL (elems[0] = 0) where blocks are not staged.
    capped: soft-capped blocks, always staged."""
    elems[0] = strided_stage_elems(x, C, inner)
    if capped:
        elems[0] = C * (strided_block_bytes(C, inner * <Py_ssize_t>sizeof(floating))
                        // <Py_ssize_t>sizeof(floating))
    if elems[0] == 0:
        return NULL
    cdef floating *p = <floating *>malloc(n_threads * elems[0] * sizeof(floating))
    if p == NULL:
        raise MemoryError()
    return p


cdef void _strided_serial(
    int op, const floating *x, floating *out, Py_ssize_t C, Py_ssize_t inner,
    Py_ssize_t n_units, floating *stage, int stream,
) noexcept nogil:
    cdef Py_ssize_t u
    for u in range(n_units):
        strided_unit(op, x, out, C, inner, u, stage, stream)


cdef int _strided_core(
    int op, const floating *x, floating *out, Py_ssize_t outer, Py_ssize_t C,
    Py_ssize_t inner, int n_threads,
) except -1:
    """op (OP_SOFTMAX, OP_LOG_SOFTMAX: out like x; OP_LOGSUMEXP: out
    (outer, inner)) over x (outer, C, inner), all >= 1."""
    cdef int stream = (op != OP_LOGSUMEXP and
                       outer * C * inner * <Py_ssize_t>sizeof(floating) >= _strided_stream_bytes)
    cdef Py_ssize_t u, elems, n_units = outer * strided_units(out, C, inner, stream, <floating>0)
    n_threads = <int>min(<Py_ssize_t>n_threads, n_units)
    cdef floating *stage = _stage_alloc(x, C, inner, n_threads, &elems)
    if n_threads > 1:
        for u in prange(n_units, nogil=True, schedule="guided", num_threads=n_threads):
            strided_unit(op, x, out, C, inner, u,
                         stage if stage == NULL else stage + threadid() * elems, stream)
    elif outer * C * inner < GIL_WORK:
        _strided_serial(op, x, out, C, inner, n_units, stage, stream)
    else:
        with nogil:
            _strided_serial(op, x, out, C, inner, n_units, stage, stream)
    free(stage)
    return 0


def softmax_strided(const floating[:, :, ::1] x, floating[:, :, ::1] out, int n_threads):
    """out[o, :, j] = softmax(x[o, :, j]) for every (o, j); out may be x."""
    if x.shape[0] and x.shape[1] and x.shape[2]:
        _strided_core(OP_SOFTMAX, &x[0, 0, 0], &out[0, 0, 0], x.shape[0], x.shape[1],
                      x.shape[2], n_threads)


def log_softmax_strided(const floating[:, :, ::1] x, floating[:, :, ::1] out, int n_threads):
    """out[o, :, j] = log_softmax(x[o, :, j]) for every (o, j); out may be x."""
    if x.shape[0] and x.shape[1] and x.shape[2]:
        _strided_core(OP_LOG_SOFTMAX, &x[0, 0, 0], &out[0, 0, 0], x.shape[0], x.shape[1],
                      x.shape[2], n_threads)


def logsumexp_strided(const floating[:, :, ::1] x, floating[:, ::1] out, int n_threads):
    """out[o, j] = log(sum(exp(x[o, :, j]))) (-inf over an empty axis)."""
    if x.shape[0] == 0 or x.shape[2] == 0:
        return
    if x.shape[1] == 0:
        out[:, :] = -INFINITY
        return
    _strided_core(OP_LOGSUMEXP, &x[0, 0, 0], &out[0, 0], x.shape[0], x.shape[1], x.shape[2],
                  n_threads)


cdef void _strided_ce_serial(
    const floating *x, const label_t *t, Py_ssize_t C, Py_ssize_t inner,
    Py_ssize_t ignore_index, const floating *w, double w_total, double alpha, double beta,
    double *loss, floating *grad, double scale, Py_ssize_t n_units, floating *stage,
    const CrossEntropyExtra *ex, floating cap, int stream,
) noexcept nogil:
    cdef Py_ssize_t u
    for u in range(n_units):
        strided_cross_entropy_index_unit(x, t, C, inner, ignore_index, w, w_total, alpha,
                                         beta, loss, grad, scale, u, stage, ex, cap, stream)


cdef double _cross_entropy_index_strided_core(
    const floating *x, const label_t *t, Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
    const floating *w, Py_ssize_t ignore_index, double label_smoothing, double grad_scale,
    double *loss, floating *g, int n_threads, const CrossEntropyExtra *ex, double softcap,
) except? -1.0:
    """cross_entropy_index_strided on pointers (outer * inner >= 1 positions,
    C >= 1; w, g, ex may be NULL): the C fast path's call too."""
    cdef Py_ssize_t u, n_rows = outer * inner
    cdef double w_total = <double>C if w == NULL else row_sum(w, C)
    cdef double alpha = 1.0 - label_smoothing
    cdef double beta = label_smoothing / C
    cdef int stream = (g != NULL and
                       n_rows * C * <Py_ssize_t>sizeof(floating) >= _strided_stream_bytes)
    cdef floating cap = <floating>softcap
    cdef Py_ssize_t elems, n_units = outer * strided_units(g, C, inner, stream, cap)
    n_threads = <int>min(<Py_ssize_t>n_threads, n_units)
    cdef floating *stage = _stage_alloc(x, C, inner, n_threads, &elems, softcap != 0.0)
    if n_threads > 1:
        for u in prange(n_units, nogil=True, schedule="guided", num_threads=n_threads):
            strided_cross_entropy_index_unit(
                x, t, C, inner, ignore_index, w, w_total, alpha, beta, loss, g, grad_scale, u,
                stage if stage == NULL else stage + threadid() * elems, ex, cap, stream)
    elif n_rows * C < GIL_WORK:
        _strided_ce_serial(x, t, C, inner, ignore_index, w, w_total, alpha, beta, loss, g,
                           grad_scale, n_units, stage, ex, cap, stream)
    else:
        with nogil:
            _strided_ce_serial(x, t, C, inner, ignore_index, w, w_total, alpha, beta, loss,
                               g, grad_scale, n_units, stage, ex, cap, stream)
    free(stage)
    return pairwise_sum(loss, n_rows)


def cross_entropy_index_strided(const floating[:, :, ::1] logits,
                                const label_t[:, ::1] target,
                                const floating[::1] weight,
                                Py_ssize_t ignore_index,
                                double label_smoothing,
                                double grad_scale,
                                double[::1] row_loss,
                                floating[:, :, ::1] grad,
                                int n_threads,
                                double z_loss=0.0,
                                double z_scale=0.0,
                                double softcap=0.0,
                                double[::1] row_z=None,
                                double[::1] row_acc=None):
    """Cross-entropy with class indices over the middle axis of logits
    (outer, C, inner): the loss of position (o, j) into row_loss[o * inner + j]
    (the row order of the logits moved to (outer, inner, C); None: into
    scratch, for their sum alone) and returns their sum, added pairwise in
    that order; the gradient (times grad_scale) into grad when grad is not
    None.  Semantics of cross_entropy_index_rows: labels
    (outer, inner) must have been checked with label_summary; weight may be
    None; grad may be logits.  z_loss, z_scale, softcap, row_z, row_acc: as
    for cross_entropy_index_rows (the soft cap: each block capped into its
    staging scratch)."""
    cdef Py_ssize_t outer = logits.shape[0], C = logits.shape[1], inner = logits.shape[2]
    if outer * inner == 0:
        return 0.0
    cdef const floating *w = NULL
    cdef floating *g = NULL
    if weight is not None:
        w = &weight[0]
    if grad is not None:
        g = &grad[0, 0, 0]
    cdef CrossEntropyExtra ex_args
    cdef const CrossEntropyExtra *ex = _extra_args(&ex_args, z_loss, z_scale, row_z, row_acc)
    try:
        return _cross_entropy_index_strided_core(
            &logits[0, 0, 0], &target[0, 0], outer, C, inner, w, ignore_index, label_smoothing,
            grad_scale, _loss_rows(row_loss, outer * inner), g, n_threads, ex, softcap)
    finally:
        row_scratch_done()


cdef void _strided_prob_serial(
    const floating *x, const floating *y, Py_ssize_t C, Py_ssize_t inner, const floating *w,
    double alpha, double beta, double *loss, floating *grad, double scale,
    Py_ssize_t n_units, floating *stage, const CrossEntropyExtra *ex, floating cap, int stream,
) noexcept nogil:
    cdef Py_ssize_t u
    for u in range(n_units):
        strided_cross_entropy_prob_unit(x, y, C, inner, w, alpha, beta, loss, grad, scale, u,
                                        stage, ex, cap, stream)


def cross_entropy_prob_strided(const floating[:, :, ::1] logits,
                               const floating[:, :, ::1] target,
                               const floating[::1] weight,
                               double label_smoothing,
                               double grad_scale,
                               double[::1] row_loss,
                               floating[:, :, ::1] grad,
                               int n_threads,
                               double z_loss=0.0,
                               double z_scale=0.0,
                               double softcap=0.0,
                               double[::1] row_z=None):
    """Cross-entropy with probability targets (logits' layout) over the
    middle axis of logits (outer, C, inner): the loss of position (o, j) into
    row_loss[o * inner + j] and returns their sum, added pairwise in that
    order; the gradient (times grad_scale) into grad when grad is not None.
    Semantics of cross_entropy_prob_rows: weight may be None; grad may be
    logits but not target.  z_loss, z_scale, softcap, row_z: as for
    cross_entropy_prob_rows."""
    cdef Py_ssize_t outer = logits.shape[0], C = logits.shape[1], inner = logits.shape[2]
    cdef Py_ssize_t u, n_rows = outer * inner
    if n_rows == 0:
        return 0.0
    cdef const floating *w = NULL
    cdef floating *g = NULL
    if weight is not None:
        w = &weight[0]
    if grad is not None:
        g = &grad[0, 0, 0]
    cdef const floating *x = &logits[0, 0, 0]
    cdef const floating *y = &target[0, 0, 0]
    cdef CrossEntropyExtra ex_args
    cdef const CrossEntropyExtra *ex = _extra_args(&ex_args, z_loss, z_scale, row_z, None)
    cdef double *loss
    cdef double alpha = 1.0 - label_smoothing
    cdef double beta = label_smoothing / C
    cdef int stream = (g != NULL and
                       n_rows * C * <Py_ssize_t>sizeof(floating) >= _strided_stream_bytes)
    cdef floating cap = <floating>softcap
    cdef Py_ssize_t elems, n_units = outer * strided_units(g, C, inner, stream, cap)
    n_threads = <int>min(<Py_ssize_t>n_threads, n_units)
    cdef floating *stage = _stage_alloc(x, C, inner, n_threads, &elems, softcap != 0.0)
    try:
        loss = _loss_rows(row_loss, n_rows)
        if n_threads > 1:
            for u in prange(n_units, nogil=True, schedule="guided", num_threads=n_threads):
                strided_cross_entropy_prob_unit(
                    x, y, C, inner, w, alpha, beta, loss, g, grad_scale, u,
                    stage if stage == NULL else stage + threadid() * elems, ex, cap, stream)
        elif n_rows * C < GIL_WORK:
            _strided_prob_serial(x, y, C, inner, w, alpha, beta, loss, g, grad_scale, n_units,
                                 stage, ex, cap, stream)
        else:
            with nogil:
                _strided_prob_serial(x, y, C, inner, w, alpha, beta, loss, g, grad_scale,
                                     n_units, stage, ex, cap, stream)
        return pairwise_sum(loss, n_rows)
    finally:
        free(stage)
        row_scratch_done()


# ---------------------------------------------------------------------------
# the backward functions over the middle axis (stridedbackward.hpp)

cdef extern from "stridedbackward.hpp" namespace "csoftmax" nogil:
    void strided_backward_unit[T](
        int op, const T *g, const T *a, T *out, Py_ssize_t C, Py_ssize_t inner, Py_ssize_t u,
        T *stage, int stream) noexcept
    Py_ssize_t strided_backward_units[T](const T *out, Py_ssize_t C, Py_ssize_t inner,
                                         int stream) noexcept
    Py_ssize_t strided_backward_stage_elems[T](const T *a, Py_ssize_t C,
                                               Py_ssize_t inner) noexcept


cdef void _strided_backward_serial(
    int op, const floating *g, const floating *a, floating *out, Py_ssize_t C,
    Py_ssize_t inner, Py_ssize_t n_units, floating *stage, int stream,
) noexcept nogil:
    cdef Py_ssize_t u
    for u in range(n_units):
        strided_backward_unit(op, g, a, out, C, inner, u, stage, stream)


cdef int _strided_backward_core(
    int op, const floating *g, const floating *a, floating *o, Py_ssize_t outer,
    Py_ssize_t C, Py_ssize_t inner, int n_threads,
) except -1:
    """backward_strided over pointers (outer, C, inner all >= 1): the full
    path's call and the fast path's."""
    cdef int stream = outer * C * inner * <Py_ssize_t>sizeof(floating) >= _strided_stream_bytes
    cdef Py_ssize_t n_units = strided_backward_units(<const floating *>o, C, inner, stream)
    cdef Py_ssize_t u
    n_units *= outer
    cdef Py_ssize_t elems = strided_backward_stage_elems(a, C, inner)
    n_threads = <int>min(<Py_ssize_t>n_threads, n_units)
    cdef floating *stage = NULL
    if elems:
        stage = <floating *>malloc(n_threads * elems * sizeof(floating))
        if stage == NULL:
            raise MemoryError()
    if n_threads > 1:
        for u in prange(n_units, nogil=True, schedule="guided", num_threads=n_threads):
            strided_backward_unit(op, g, a, o, C, inner, u,
                                  stage if stage == NULL else stage + threadid() * elems,
                                  stream)
    elif outer * C * inner < GIL_WORK:
        _strided_backward_serial(op, g, a, o, C, inner, n_units, stage, stream)
    else:
        with nogil:
            _strided_backward_serial(op, g, a, o, C, inner, n_units, stage, stream)
    free(stage)
    return 0


def backward_strided(int op, const floating[:, :, ::1] grad_output,
                     const floating[:, :, ::1] output, floating[:, :, ::1] out,
                     int n_threads):
    """The gradient through softmax (op OP_SOFTMAX: out = a (g - sum(g a))) or
    log_softmax (OP_LOG_SOFTMAX: out = g - exp(o) sum(g)) over the middle
    axis of (outer, C, inner) arrays, each position's sum over its C classes;
    out may be grad_output or output."""
    if output.shape[0] and output.shape[1] and output.shape[2]:
        _strided_backward_core(op, &grad_output[0, 0, 0], &output[0, 0, 0], &out[0, 0, 0],
                               output.shape[0], output.shape[1], output.shape[2], n_threads)
