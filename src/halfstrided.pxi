# float16 and bfloat16 over a middle axis (included by kernels.pxi after
# half.pxi and strided.pxi): softmax, log_softmax, logsumexp and cross-entropy
# (class indices or probabilities) of 16-bit (outer, C, inner) arrays, block by block
# through float32 scratch (see halfstrided.hpp); the units spread over
# threads with a static prange.


cdef extern from "halfstrided.hpp" namespace "csoftmax" nogil:
    enum: HALF_STRIDED_MAX_C
    Py_ssize_t half_strided_width(Py_ssize_t C) noexcept
    void half_strided_unit(int op, int kind, const uint16_t *x, uint16_t *out, float *out32,
                           Py_ssize_t C, Py_ssize_t inner, Py_ssize_t width, Py_ssize_t u,
                           float *stage, int stream) noexcept
    void half_strided_backward_unit(int op, int kind, const uint16_t *g, const uint16_t *a,
                                    uint16_t *out, Py_ssize_t C, Py_ssize_t inner,
                                    Py_ssize_t width, Py_ssize_t u, float *stage,
                                    float *astage, int stream) noexcept
    void half_strided_cross_entropy_index_unit[L](
        int kind, const uint16_t *x, const L *target, Py_ssize_t C, Py_ssize_t inner,
        Py_ssize_t width, Py_ssize_t u, Py_ssize_t ignore_index, const float *w,
        double w_total, double alpha, double beta, double *loss, uint16_t *grad, double scale,
        float *stage, const CrossEntropyExtra *ex, float cap, int stream) noexcept
    void half_strided_cross_entropy_prob_unit(
        int kind, const uint16_t *x, const uint16_t *y16, const float *y32, Py_ssize_t C,
        Py_ssize_t inner, Py_ssize_t width, Py_ssize_t u, const float *w, double alpha,
        double beta, double *loss, uint16_t *grad, double scale, float *stage, float *ystage,
        float *cap_stage, const CrossEntropyExtra *ex, float cap) noexcept


# the most classes the 16-bit kernels over a middle axis take (more: the
# Python layer moves the axis last)
HALF_STRIDED_CLASSES = HALF_STRIDED_MAX_C


cdef inline void _half_strided_unit(
    int op, int kind, const uint16_t *g, const uint16_t *x, uint16_t *out, float *out32,
    Py_ssize_t C, Py_ssize_t inner, Py_ssize_t width, Py_ssize_t u, float *stage, int stream,
) noexcept nogil:
    """g NULL: op of x; else the gradient through op of x (its output), g
    the upstream gradient (stage: two blocks); stream: the 16-bit output
    written with non-temporal stores."""
    if g == NULL:
        half_strided_unit(op, kind, x, out, out32, C, inner, width, u, stage, stream)
    else:
        half_strided_backward_unit(op, kind, g, x, out, C, inner, width, u, stage,
                                   stage + C * width, stream)


cdef void _half_strided_serial(
    int op, int kind, const uint16_t *g, const uint16_t *x, uint16_t *out, float *out32,
    Py_ssize_t C, Py_ssize_t inner, Py_ssize_t width, Py_ssize_t n_units, float *stage,
    int stream,
) noexcept nogil:
    cdef Py_ssize_t u
    for u in range(n_units):
        _half_strided_unit(op, kind, g, x, out, out32, C, inner, width, u, stage, stream)


cdef int _half_strided_core(
    int op, int kind, const uint16_t *g, const uint16_t *x, uint16_t *out, float *out32,
    Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner, int n_threads,
) except -1:
    """op over 16-bit x (outer, C, inner), all >= 1 (g not NULL: its gradient,
    see _half_strided_unit); C <= HALF_STRIDED_MAX_C."""
    cdef Py_ssize_t u, width = half_strided_width(C)
    cdef Py_ssize_t n_units = outer * ((inner + width - 1) // width)
    cdef Py_ssize_t elems = C * width * (1 if g == NULL else 2)
    # a 16-bit output larger than the caches is streamed (see _stream_bytes)
    cdef int stream = out != NULL and outer * C * inner * 2 >= _stream_bytes
    n_threads = <int>min(<Py_ssize_t>n_threads, n_units)
    cdef float *stage = <float *>malloc(n_threads * elems * sizeof(float))
    if stage == NULL:
        raise MemoryError()
    if n_threads > 1:
        for u in prange(n_units, nogil=True, schedule="guided", num_threads=n_threads):
            _half_strided_unit(op, kind, g, x, out, out32, C, inner, width, u,
                               stage + threadid() * elems, stream)
    elif outer * C * inner < GIL_WORK:
        _half_strided_serial(op, kind, g, x, out, out32, C, inner, width, n_units, stage,
                             stream)
    else:
        with nogil:
            _half_strided_serial(op, kind, g, x, out, out32, C, inner, width, n_units, stage,
                                 stream)
    free(stage)
    return 0


def half_strided(int op, const uint16_t[:, :, ::1] x, uint16_t[:, :, ::1] out, int kind,
                 int n_threads):
    """softmax (op 0) or log_softmax (op 1) over axis 1 of 16-bit x (outer, C,
    inner), rounded into out (may be x); at most HALF_STRIDED_CLASSES classes."""
    if x.shape[0] and x.shape[1] and x.shape[2]:
        _half_strided_core(op, kind, NULL, &x[0, 0, 0], &out[0, 0, 0], <float *>NULL,
                           x.shape[0], x.shape[1], x.shape[2], n_threads)


def half_logsumexp_strided(const uint16_t[:, :, ::1] x, float[:, ::1] out, int kind,
                           int n_threads):
    """out[o, j] = logsumexp(x[o, :, j]) of 16-bit x, in float32 (-inf over an
    empty axis); at most HALF_STRIDED_CLASSES classes."""
    if x.shape[0] == 0 or x.shape[2] == 0:
        return
    if x.shape[1] == 0:
        out[:, :] = -INFINITY
        return
    _half_strided_core(OP_LOGSUMEXP, kind, NULL, &x[0, 0, 0], <uint16_t *>NULL, &out[0, 0],
                       x.shape[0], x.shape[1], x.shape[2], n_threads)


def half_strided_backward(int op, const uint16_t[:, :, ::1] grad_output,
                          const uint16_t[:, :, ::1] output, uint16_t[:, :, ::1] out, int kind,
                          int n_threads):
    """The gradient through softmax (op 0) or log_softmax (op 1) over axis 1
    of 16-bit (outer, C, inner) arrays, the float32 result rounded once into
    out (may be either input); at most HALF_STRIDED_CLASSES classes."""
    if output.shape[0] and output.shape[1] and output.shape[2]:
        _half_strided_core(op, kind, &grad_output[0, 0, 0], &output[0, 0, 0], &out[0, 0, 0],
                           <float *>NULL, output.shape[0], output.shape[1], output.shape[2],
                           n_threads)


cdef void _half_strided_ce_serial(
    int kind, const uint16_t *x, const label_t *t, Py_ssize_t C, Py_ssize_t inner,
    Py_ssize_t width, Py_ssize_t n_units, Py_ssize_t ignore_index, const float *w,
    double w_total, double alpha, double beta, double *loss, uint16_t *g, double scale,
    float *stage, const CrossEntropyExtra *ex, float cap, int stream,
) noexcept nogil:
    cdef Py_ssize_t u
    for u in range(n_units):
        half_strided_cross_entropy_index_unit(
            kind, x, t, C, inner, width, u, ignore_index, w, w_total, alpha, beta, loss, g,
            scale, stage, ex, cap, stream)


def half_cross_entropy_index_strided(const uint16_t[:, :, ::1] logits,
                                     const label_t[:, ::1] target,
                                     const float[::1] weight,
                                     Py_ssize_t ignore_index,
                                     double label_smoothing,
                                     double grad_scale,
                                     double[::1] row_loss,
                                     uint16_t[:, :, ::1] grad,
                                     int kind,
                                     int n_threads,
                                     double z_loss=0.0,
                                     double z_scale=0.0,
                                     double softcap=0.0,
                                     double[::1] row_z=None,
                                     double[::1] row_acc=None):
    """cross_entropy_index_strided for 16-bit logits (outer, C, inner) of kind
    `kind`, at most HALF_STRIDED_CLASSES classes: the same arguments (weight
    float32; row_loss None: the losses into scratch), the gradient rounded
    once into grad (may be logits, or None); returns the sum of the position
    losses, added pairwise in their order."""
    cdef Py_ssize_t outer = logits.shape[0], C = logits.shape[1], inner = logits.shape[2]
    cdef Py_ssize_t u, n_rows = outer * inner
    if n_rows == 0:
        return 0.0
    cdef const float *w = NULL
    cdef uint16_t *g = NULL
    if weight is not None:
        w = &weight[0]
    if grad is not None:
        g = &grad[0, 0, 0]
    cdef const uint16_t *x = &logits[0, 0, 0]
    cdef CrossEntropyExtra ex_args
    cdef const CrossEntropyExtra *ex = _extra_args(&ex_args, z_loss, z_scale, row_z, row_acc)
    cdef const label_t *t = &target[0, 0]
    cdef double *loss
    cdef double w_total = <double>C if w == NULL else row_sum(w, C)
    cdef double alpha = 1.0 - label_smoothing
    cdef double beta = label_smoothing / C
    cdef float cap = <float>softcap
    cdef Py_ssize_t width = half_strided_width(C)
    cdef Py_ssize_t n_units = outer * ((inner + width - 1) // width)
    cdef Py_ssize_t per_thread = C * width
    # the gradient streamed where it is larger than the caches (see _stream_bytes)
    cdef int stream = g != NULL and n_rows * C * 2 >= _stream_bytes
    n_threads = <int>min(<Py_ssize_t>n_threads, n_units)
    cdef float *stage = <float *>malloc(n_threads * per_thread * sizeof(float))
    if stage == NULL:
        raise MemoryError()
    try:
        loss = _loss_rows(row_loss, n_rows)
        if n_threads > 1:
            for u in prange(n_units, nogil=True, schedule="guided", num_threads=n_threads):
                half_strided_cross_entropy_index_unit(
                    kind, x, t, C, inner, width, u, ignore_index, w, w_total, alpha, beta, loss,
                    g, grad_scale, stage + threadid() * per_thread, ex, cap, stream)
        elif n_rows * C < GIL_WORK:
            _half_strided_ce_serial(kind, x, t, C, inner, width, n_units, ignore_index, w,
                                    w_total, alpha, beta, loss, g, grad_scale, stage, ex, cap,
                                    stream)
        else:
            with nogil:
                _half_strided_ce_serial(kind, x, t, C, inner, width, n_units, ignore_index, w,
                                        w_total, alpha, beta, loss, g, grad_scale, stage, ex,
                                        cap, stream)
        return pairwise_sum(loss, n_rows)
    finally:
        free(stage)
        row_scratch_done()


cdef struct _HalfProb:
    int kind
    const uint16_t *x
    const uint16_t *y16
    const float *y32
    Py_ssize_t C, inner, width, elems, per_thread
    const float *w
    double alpha, beta, scale
    double *loss
    uint16_t *g
    const CrossEntropyExtra *ex
    float cap


cdef inline void _half_prob_unit(const _HalfProb *p, Py_ssize_t u, float *scratch) noexcept nogil:
    """Unit u with the thread's scratch: the logits' block, the targets' block,
    the capped block (cap != 0)."""
    half_strided_cross_entropy_prob_unit(
        p.kind, p.x, p.y16, p.y32, p.C, p.inner, p.width, u, p.w, p.alpha, p.beta, p.loss,
        p.g, p.scale, scratch, scratch + p.elems,
        scratch + 2 * p.elems if p.cap != 0 else <float *>NULL, p.ex, p.cap)


cdef void _half_prob_serial(const _HalfProb *p, Py_ssize_t n_units, float *scratch) noexcept nogil:
    cdef Py_ssize_t u
    for u in range(n_units):
        _half_prob_unit(p, u, scratch)


def half_cross_entropy_prob_strided(const uint16_t[:, :, ::1] logits,
                                    object target,
                                    const float[::1] weight,
                                    double label_smoothing,
                                    double grad_scale,
                                    double[::1] row_loss,
                                    uint16_t[:, :, ::1] grad,
                                    int kind,
                                    int n_threads,
                                    double z_loss=0.0,
                                    double z_scale=0.0,
                                    double softcap=0.0,
                                    double[::1] row_z=None):
    """cross_entropy_prob_strided for 16-bit logits (outer, C, inner) of kind
    `kind`, at most HALF_STRIDED_CLASSES classes; target: 16-bit of the
    logits' kind (a uint16 view) or float32, of the logits' shape; the
    gradient rounded once into grad (may be logits, not target; or None);
    returns the sum of the position losses, added pairwise in their order."""
    cdef Py_ssize_t outer = logits.shape[0], C = logits.shape[1], inner = logits.shape[2]
    cdef Py_ssize_t u, n_rows = outer * inner
    if n_rows == 0:
        return 0.0
    cdef _HalfProb p
    cdef const uint16_t[:, :, ::1] y16
    cdef const float[:, :, ::1] y32
    cdef CrossEntropyExtra ex_args
    p.kind = kind
    p.x = &logits[0, 0, 0]
    p.y16 = NULL
    p.y32 = NULL
    if target.dtype == np.uint16:
        y16 = target
        p.y16 = &y16[0, 0, 0]
    else:
        y32 = target
        p.y32 = &y32[0, 0, 0]
    p.C, p.inner = C, inner
    p.width = half_strided_width(C)
    p.elems = C * p.width
    p.cap = <float>softcap
    p.per_thread = p.elems * (3 if p.cap != 0 else 2)
    p.w = NULL
    if weight is not None:
        p.w = &weight[0]
    p.alpha = 1.0 - label_smoothing
    p.beta = label_smoothing / C
    p.scale = grad_scale
    p.loss = NULL                  # the scratch, taken below
    p.g = NULL
    if grad is not None:
        p.g = &grad[0, 0, 0]
    p.ex = _extra_args(&ex_args, z_loss, z_scale, row_z, None)
    cdef Py_ssize_t n_units = outer * ((inner + p.width - 1) // p.width)
    n_threads = <int>min(<Py_ssize_t>n_threads, n_units)
    cdef float *scratch = <float *>malloc(n_threads * p.per_thread * sizeof(float))
    if scratch == NULL:
        raise MemoryError()
    try:
        p.loss = _loss_rows(row_loss, n_rows)
        if n_threads > 1:
            for u in prange(n_units, nogil=True, schedule="guided", num_threads=n_threads):
                _half_prob_unit(&p, u, scratch + threadid() * p.per_thread)
        elif n_rows * C < GIL_WORK:
            _half_prob_serial(&p, n_units, scratch)
        else:
            with nogil:
                _half_prob_serial(&p, n_units, scratch)
        return pairwise_sum(p.loss, n_rows)
    finally:
        free(scratch)
        row_scratch_done()
