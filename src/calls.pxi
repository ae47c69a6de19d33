# The entry points of the compiled kernels (included by kernels.pxi).
#
# Each operation has one core, over raw pointers, that picks how the work runs
# (rows split over threads, a static prange over rows, or one thread) and
# whether the GIL is released.  Two kinds of entry point call the cores:
#
# * the *_rows kernels: typed memoryviews of arrays that the Python layer has
#   already validated and laid out (the full path, for every input);
# * the fast_* functions: the common call -- a C-contiguous, aligned,
#   native-order float32/float64 ndarray over its last axis, native integer
#   labels, default or simple options -- checked and allocated here in a few
#   C reads, without a Python-level argument object or memoryviews.  Each
#   returns None for anything else, bad input included, *before* it writes
#   anything: the caller then takes the full path, which gives the same
#   results (the same cores) and raises the same errors.
#
# The GIL: a call that runs on one thread keeps it below GIL_WORK elements.
# Releasing it around a few microseconds of work costs more than the work when
# several Python threads call at once (each release hands the GIL to a waiting
# thread, and the caller waits to get it back: 8 threads calling a 1x1000
# cross-entropy reached 0.42x the calls per second of one); above it the
# kernel runs without the GIL, so that calling threads run in parallel.

cdef enum:
    GIL_WORK = 1 << 14


# ---------------------------------------------------------------------------
# softmax, log_softmax, logsumexp

cdef inline void _rows_unit(
    int op, const floating *x, floating *out, Py_ssize_t n_rows, Py_ssize_t n, Py_ssize_t i
) noexcept nogil:
    if op == OP_SOFTMAX:
        _softmax_unit(x, out, n_rows, n, i)
    elif op == OP_LOG_SOFTMAX:
        _log_softmax_unit(x, out, n_rows, n, i)
    else:
        _logsumexp_unit(x, out, n_rows, n, i)


cdef inline bint _row_grouped(Py_ssize_t n, Py_ssize_t itemsize, bint writes) noexcept nogil:
    """Whether rows of n columns (of itemsize bytes) go ROW_GROUP rows a unit
    (softmax, log_softmax, logsumexp, cross-entropy with class indices without
    a soft cap): long rows up to GROUP_ROW_BYTES, or below
    GROUP_WRITE_ROW_BYTES where the call writes rows (writes: softmax,
    log_softmax, the gradient).  Such a row is a chain of dependent steps (a
    horizontal max, an exp-sum, a log or a scaling) that a row of a few
    hundred columns cannot hide; a step of every row of the group before the
    next step gives the core the rows beside it meanwhile.  Measured (AVX2,
    AMD Zen 3, float32, against a row a unit, one and two threads): rows of
    64-128 columns, the loss 0.76-0.92x the time, the loss + gradient
    0.77-0.92x, logsumexp 0.82-0.99x, softmax 0.82-1.05x, log_softmax
    0.82-0.98x; 1000 columns, the loss and logsumexp 0.95-0.99x, but the
    calls that write rows 1.02-1.11x (a group's rows and outputs overflow the
    L1 cache between the passes)."""
    if _short_row(n, itemsize):
        return False
    return n * itemsize < GROUP_WRITE_ROW_BYTES if writes else n * itemsize <= GROUP_ROW_BYTES


cdef inline Py_ssize_t _group_units(
    Py_ssize_t n_rows, Py_ssize_t n, Py_ssize_t itemsize, bint grouped
) noexcept nogil:
    return (n_rows + ROW_GROUP - 1) // ROW_GROUP if grouped else _n_units(n_rows, n, itemsize)


cdef inline void _rows_group_unit(
    int op, const floating *x, floating *out, Py_ssize_t n_rows, Py_ssize_t n, Py_ssize_t u
) noexcept nogil:
    """op (softmax, log_softmax, logsumexp) of rows u ROW_GROUP ..
    (_row_grouped), by the row units' arithmetic and bits (_softmax_row,
    _log_softmax_row, _logsumexp_unit), a step of every row before the next:
    the maxima, the exp-sums, then each row's output."""
    cdef Py_ssize_t i0 = u * ROW_GROUP
    cdef Py_ssize_t rows = min(<Py_ssize_t>ROW_GROUP, n_rows - i0)
    cdef Py_ssize_t k
    cdef floating m[ROW_GROUP]
    cdef double s[ROW_GROUP]
    cdef const floating *xk
    cdef const floating *nxt
    for k in range(rows):
        m[k] = row_max(x + (i0 + k) * n, n)
    for k in range(rows):
        xk = x + (i0 + k) * n
        nxt = _next_row(x, n_rows, n, i0 + k + ROW_GROUP - 1)  # this row of the next group
        if op == OP_SOFTMAX:
            s[k] = row_exp_store_sum(xk, out + (i0 + k) * n, n, m[k], nxt)
        else:
            s[k] = row_exp_sum(xk, n, m[k], nxt)
    for k in range(rows):
        xk = x + (i0 + k) * n
        if op == OP_SOFTMAX:
            row_scale(out + (i0 + k) * n, n, <floating>(1.0 / s[k]))
        elif op == OP_LOG_SOFTMAX:
            row_log_softmax_from(xk, out + (i0 + k) * n, n, m[k], <floating>log(s[k]))
        else:
            out[i0 + k] = <floating>_logsumexp_finish(xk, n, m[k], s[k])


cdef inline void _rows_any_unit(
    int op, const floating *x, floating *out, Py_ssize_t n_rows, Py_ssize_t n, bint grouped,
    Py_ssize_t i,
) noexcept nogil:
    if grouped:
        _rows_group_unit(op, x, out, n_rows, n, i)
    else:
        _rows_unit(op, x, out, n_rows, n, i)


cdef void _rows_serial(
    int op, const floating *x, floating *out, Py_ssize_t n_rows, Py_ssize_t n, bint grouped
) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(_group_units(n_rows, n, sizeof(floating), grouped)):
        _rows_any_unit(op, x, out, n_rows, n, grouped, i)


cdef int _rows_core(
    int op, const floating *x, floating *out, Py_ssize_t n_rows, Py_ssize_t n, int n_threads
) except -1:
    """op (softmax, log_softmax: out like x; logsumexp: one value per row) over
    n_rows >= 1 rows of n >= 1 columns."""
    cdef Py_ssize_t i
    if _split_rows(n_rows, n, n_threads):
        return _split_columns(op, x, <const floating *>NULL, <const int32_t *>NULL,
                              <const floating *>NULL, out, NULL, n_rows, n, n_threads)
    cdef bint grouped = _row_grouped(n, sizeof(floating), op != OP_LOGSUMEXP)
    if n_threads > 1:
        for i in prange(_group_units(n_rows, n, sizeof(floating), grouped), nogil=True,
                        schedule="guided", num_threads=n_threads):
            _rows_any_unit(op, x, out, n_rows, n, grouped, i)
    elif n_rows * n < GIL_WORK:
        _rows_serial(op, x, out, n_rows, n, grouped)
    else:
        with nogil:
            _rows_serial(op, x, out, n_rows, n, grouped)
    return 0


def softmax_rows(const floating[:, ::1] x, floating[:, ::1] out, int n_threads):
    """out[i] = softmax(x[i]) for every row; out may be x."""
    if x.shape[0] and x.shape[1]:
        _rows_core(OP_SOFTMAX, &x[0, 0], &out[0, 0], x.shape[0], x.shape[1], n_threads)


def log_softmax_rows(const floating[:, ::1] x, floating[:, ::1] out, int n_threads):
    """out[i] = log_softmax(x[i]) for every row; out may be x."""
    if x.shape[0] and x.shape[1]:
        _rows_core(OP_LOG_SOFTMAX, &x[0, 0], &out[0, 0], x.shape[0], x.shape[1], n_threads)


def logsumexp_rows(const floating[:, ::1] x, floating[::1] out, int n_threads):
    """out[i] = log(sum(exp(x[i]))) for every row (-inf for empty rows)."""
    if x.shape[0] == 0:
        return
    if x.shape[1] == 0:
        out[:] = -INFINITY
        return
    _rows_core(OP_LOGSUMEXP, &x[0, 0], &out[0], x.shape[0], x.shape[1], n_threads)


# ---------------------------------------------------------------------------
# the backward functions (each row, or tile of short rows, on one thread)

cdef extern from "tilesbackward.hpp" namespace "csoftmax" nogil:
    # softmax_backward's rows of fewer bytes go by tiles (log_softmax_backward's:
    # _short_row's)
    enum: SOFTMAX_BACKWARD_TILE_BYTES
    void tile_softmax_backward[T](const T *g, const T *a, T *out, Py_ssize_t rows,
                                  Py_ssize_t n) noexcept
    void tile_log_softmax_backward[T](const T *g, const T *o, T *out, Py_ssize_t rows,
                                      Py_ssize_t n) noexcept


cdef inline bint _backward_tiled(int op, Py_ssize_t n, Py_ssize_t itemsize) noexcept nogil:
    """Whether rows of n elements of the gradient through softmax (op OP_SOFTMAX) or
    log_softmax go a tile of rows a unit (the width and the dtype alone decide: every
    row of a call takes the same path)."""
    if op == OP_SOFTMAX:
        return n * itemsize < SOFTMAX_BACKWARD_TILE_BYTES
    return _short_row(n, itemsize)


cdef inline Py_ssize_t _backward_units(
    int op, Py_ssize_t n_rows, Py_ssize_t n, Py_ssize_t itemsize
) noexcept nogil:
    return _n_tiles(n_rows, n) if _backward_tiled(op, n, itemsize) else n_rows


cdef inline void _backward_unit(
    int op, const floating *g, const floating *a, floating *out, Py_ssize_t n_rows,
    Py_ssize_t n, Py_ssize_t i
) noexcept nogil:
    """Unit i (_backward_units) of the gradient through softmax (op OP_SOFTMAX) or
    log_softmax: a tile of short rows, else row i."""
    cdef Py_ssize_t r0, rows
    if _backward_tiled(op, n, sizeof(floating)):
        # (not above: a row's two divisions took 5-10 % of a 1000-column row)
        r0 = i * _tile_rows(n)
        rows = min(_tile_rows(n), n_rows - r0)
        if op == OP_SOFTMAX:
            tile_softmax_backward(g + r0 * n, a + r0 * n, out + r0 * n, rows, n)
        else:
            tile_log_softmax_backward(g + r0 * n, a + r0 * n, out + r0 * n, rows, n)
    elif op == OP_SOFTMAX:
        _softmax_backward_unit(g, a, out, n, i, _backward_next(g, n_rows, n, i))
    else:
        _log_softmax_backward_unit(g, a, out, n, i, _backward_next(g, n_rows, n, i))


cdef void _backward_serial(
    int op, const floating *g, const floating *a, floating *out, Py_ssize_t n_rows,
    Py_ssize_t n
) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(_backward_units(op, n_rows, n, sizeof(floating))):
        _backward_unit(op, g, a, out, n_rows, n, i)


cdef int _backward_core(
    int op, const floating *g, const floating *a, floating *out, Py_ssize_t n_rows,
    Py_ssize_t n, int n_threads
) except -1:
    """The gradient through softmax (op OP_SOFTMAX) or log_softmax; out may be
    g or a."""
    cdef Py_ssize_t i
    if n_threads > 1:
        for i in prange(_backward_units(op, n_rows, n, sizeof(floating)),
                        nogil=True, schedule="guided", num_threads=n_threads):
            _backward_unit(op, g, a, out, n_rows, n, i)
    elif n_rows * n < GIL_WORK:
        _backward_serial(op, g, a, out, n_rows, n)
    else:
        with nogil:
            _backward_serial(op, g, a, out, n_rows, n)
    return 0


def softmax_backward_rows(const floating[:, ::1] grad_output,
                          const floating[:, ::1] output,
                          floating[:, ::1] out, int n_threads):
    """out[i] = a (g - <g, a>) with g = grad_output[i], a = output[i]."""
    if output.shape[0] and output.shape[1]:
        _backward_core(OP_SOFTMAX, &grad_output[0, 0], &output[0, 0], &out[0, 0],
                       output.shape[0], output.shape[1], n_threads)


def log_softmax_backward_rows(const floating[:, ::1] grad_output,
                              const floating[:, ::1] output,
                              floating[:, ::1] out, int n_threads):
    """out[i] = g - exp(o) sum(g) with g = grad_output[i], o = output[i]."""
    if output.shape[0] and output.shape[1]:
        _backward_core(OP_LOG_SOFTMAX, &grad_output[0, 0], &output[0, 0], &out[0, 0],
                       output.shape[0], output.shape[1], n_threads)


# ---------------------------------------------------------------------------
# labels

cdef enum:
    LABEL_CHUNK = 65536  # labels per unit of the label check over threads


cdef inline Py_ssize_t _labels_chunk_bad(
    const label_t *t, Py_ssize_t n_rows, Py_ssize_t n_classes, Py_ssize_t ignore_index,
    Py_ssize_t c, Py_ssize_t *kept,
) noexcept nogil:
    cdef Py_ssize_t k0 = c * LABEL_CHUNK
    return labels_count_bad(t + k0, min(<Py_ssize_t>LABEL_CHUNK, n_rows - k0), n_classes,
                            ignore_index, &kept[c])


cdef Py_ssize_t _labels_count_bad(
    const label_t *t, Py_ssize_t n_rows, Py_ssize_t n_classes, Py_ssize_t ignore_index,
    Py_ssize_t *kept, int n_threads,
) except -1:
    """labels_count_bad, by chunks over the threads for many labels (counts:
    exact in any order)."""
    if n_rows < GIL_WORK:
        return labels_count_bad(t, n_rows, n_classes, ignore_index, kept)
    if n_threads == 1 or n_rows <= LABEL_CHUNK:
        with nogil:
            return labels_count_bad(t, n_rows, n_classes, ignore_index, kept)
    cdef Py_ssize_t c, bad = 0, n_chunks = (n_rows + LABEL_CHUNK - 1) // LABEL_CHUNK
    cdef Py_ssize_t *chunk_kept = <Py_ssize_t *>malloc(n_chunks * sizeof(Py_ssize_t))
    if chunk_kept == NULL:
        raise MemoryError()
    for c in prange(n_chunks, nogil=True, schedule="guided", num_threads=n_threads):
        bad += _labels_chunk_bad(t, n_rows, n_classes, ignore_index, c, chunk_kept)
    kept[0] = 0
    for c in range(n_chunks):
        kept[0] += chunk_kept[c]
    free(chunk_kept)
    return bad


cdef Py_ssize_t _labels_weight_total(
    const label_t *target, Py_ssize_t n_rows, Py_ssize_t n_classes, Py_ssize_t ignore_index,
    const floating *weight, double *total_out,
) noexcept nogil:
    """The first row whose label is neither in [0, n_classes) nor ignore_index
    (-1 when all are valid) and into total_out the sum of (double)weight[t] (of
    1 where weight is NULL) over the non-ignored rows, added in row order with
    Neumaier's compensation: a plain running sum of 2e6 weights in [0, 1) was
    86796 ulp off (NumPy's pairwise sum, the twin's, 1 ulp), and float64 losses
    of a weighted "mean" inherit it.  The one loop of label_summary and of the
    fast path's weighted calls: the same total either way."""
    cdef Py_ssize_t i, t
    cdef double total = 0.0, lost = 0.0, v, s
    for i in range(n_rows):
        t = target[i]
        if t == ignore_index:
            continue
        if t < 0 or t >= n_classes:
            return i
        v = <double>weight[t] if weight != NULL else 1.0
        s = total + v
        lost += (total - s) + v if fabs(total) >= fabs(v) else (v - s) + total
        total = s
    # the lost low parts of a finite sum (of an infinite one they are NaN)
    total_out[0] = total + lost if isfinite(total) else total
    return -1


def label_summary(const label_t[::1] target, Py_ssize_t n_classes,
                  Py_ssize_t ignore_index, const double[::1] weight=None, int n_threads=1):
    """Check class indices and total the weight that a "mean" divides by.

    Returns ``(first_bad_row, total)``: the first row whose label is neither in
    ``[0, n_classes)`` nor ``ignore_index`` (-1 when all are valid), and the sum
    of ``weight[t]`` (of 1 when weight is None) over the non-ignored rows
    (_labels_weight_total).
    """
    cdef Py_ssize_t bad = -1, n_rows = target.shape[0], kept
    cdef double total = 0.0
    cdef const double *w = NULL
    if n_rows > 0 and weight is None:
        # the common case as one vector pass; the scalar loop below finds the
        # first bad row only when there is one
        bad = _labels_count_bad(&target[0], n_rows, n_classes, ignore_index, &kept, n_threads)
        if bad == 0:
            return -1, <double>kept
    if n_rows == 0:
        return -1, 0.0
    if weight is not None:
        w = &weight[0]
    with nogil:
        bad = _labels_weight_total(&target[0], n_rows, n_classes, ignore_index, w, &total)
    return bad, total


# ---------------------------------------------------------------------------
# cross-entropy

cdef inline void _cross_entropy_index_group_unit(
    const floating *x, const label_t *target, Py_ssize_t n_rows, Py_ssize_t n,
    Py_ssize_t ignore_index, const floating *w, double w_total, double alpha, double beta,
    double *loss, floating *grad, double scale, const CrossEntropyExtra *ex, Py_ssize_t u,
    Py_ssize_t *kept,
) noexcept nogil:
    """The loss, and unless grad is NULL the gradient, of rows u ROW_GROUP ..
    of long rows (_row_grouped, no soft cap), by _cross_entropy_index_row's
    arithmetic and bits, one step of every row of the group before the next
    (maxima, sums, finish, gradient).  grad may be x: a row's statistics are
    read before its exponentials overwrite it.  kept (or NULL): as
    _cross_entropy_index_unit's."""
    cdef Py_ssize_t i0 = u * ROW_GROUP
    cdef Py_ssize_t rows = min(<Py_ssize_t>ROW_GROUP, n_rows - i0)
    cdef Py_ssize_t k, t
    cdef floating m[ROW_GROUP]
    cdef double s[ROW_GROUP]
    cdef double smooth[ROW_GROUP]
    cdef double x_t[ROW_GROUP]
    cdef double c1[ROW_GROUP]
    cdef Py_ssize_t lab[ROW_GROUP]
    cdef floating *gk
    for k in range(rows):
        t = target[i0 + k]
        # each label read once (see _skipped_row): -1 ignored, -2 out of range
        lab[k] = t if t != ignore_index and 0 <= t < n else (-1 if t == ignore_index else -2)
    if kept != NULL:
        kept[0] = 0
        for k in range(rows):
            if lab[k] == -2:
                kept[0] = -1
                break
            kept[0] += lab[k] >= 0
    for k in range(rows):
        if lab[k] >= 0:
            m[k] = row_max(x + (i0 + k) * n, n)
    for k in range(rows):
        if lab[k] >= 0:
            x_t[k] = <double>x[(i0 + k) * n + lab[k]] - <double>m[k]
            # the exp pass prefetches the same row of the next group
            s[k] = _cross_entropy_index_sums(
                x + (i0 + k) * n, n, m[k], w, beta, grad if grad == NULL else grad + (i0 + k) * n,
                &smooth[k], _next_row(x, n_rows, n, i0 + k + ROW_GROUP - 1))
    for k in range(rows):
        t = lab[k]
        gk = grad if grad == NULL else grad + (i0 + k) * n
        if t >= 0:
            loss[i0 + k] = _cross_entropy_index_finish(
                x_t[k], m[k], 1.0 if w == NULL else w[t], w_total, alpha, beta, smooth[k], s[k],
                scale, ex, i0 + k, &c1[k])
        else:
            loss[i0 + k] = _skipped_row(gk, n, t == -1)
            _extra_skipped(ex, i0 + k, t == -1)
    if grad == NULL:
        return
    for k in range(rows):
        t = lab[k]
        if t >= 0:
            _cross_entropy_index_grad(grad + (i0 + k) * n, n, t, w, 1.0 if w == NULL else w[t],
                                      alpha, beta, c1[k], scale)


cdef void _cross_entropy_index_serial(
    const floating *x, const label_t *t, Py_ssize_t n_rows, Py_ssize_t n,
    Py_ssize_t ignore_index, const floating *w, double w_total, double alpha, double beta,
    double *loss, double *tile_loss, floating *grad, double scale,
    const CrossEntropyExtra *ex, floating *capped, floating cap, bint grouped,
    Py_ssize_t *kept,
) noexcept nogil:
    """The units of _cross_entropy_index_core in order on this thread; kept
    (or NULL): as there."""
    cdef Py_ssize_t i, unit_kept = 0, n_kept = 0
    for i in range(_group_units(n_rows, n, sizeof(floating), grouped)):
        _cross_entropy_index_any_unit(x, t, n_rows, n, ignore_index, w, w_total, alpha, beta,
                                      loss, tile_loss, grad, scale, ex, capped, cap, grouped, i,
                                      &unit_kept if kept != NULL else NULL)
        if kept != NULL and n_kept >= 0:
            n_kept = -1 if unit_kept < 0 else n_kept + unit_kept
    if kept != NULL:
        kept[0] = n_kept


cdef inline void _cross_entropy_index_any_unit(
    const floating *x, const label_t *t, Py_ssize_t n_rows, Py_ssize_t n,
    Py_ssize_t ignore_index, const floating *w, double w_total, double alpha, double beta,
    double *loss, double *tile_loss, floating *grad, double scale,
    const CrossEntropyExtra *ex, floating *capped, floating cap, bint grouped, Py_ssize_t i,
    Py_ssize_t *kept=NULL,
) noexcept nogil:
    """Unit i of _cross_entropy_index_core: a group of rows (grouped), else a
    row or a tile; kept (or NULL): its labels counted (_cross_entropy_index_unit)."""
    if grouped:
        _cross_entropy_index_group_unit(x, t, n_rows, n, ignore_index, w, w_total, alpha,
                                        beta, loss, grad, scale, ex, i, kept)
    else:
        _cross_entropy_index_unit(x, t, n_rows, n, ignore_index, w, w_total, alpha, beta,
                                  loss, tile_loss, grad, scale, ex, capped, cap, i, kept)


cdef double _cross_entropy_index_core(
    const floating *x, const label_t *t, Py_ssize_t n_rows, Py_ssize_t n,
    const floating *w, Py_ssize_t ignore_index, double label_smoothing, double scale,
    double *loss, floating *grad, int n_threads,
    const CrossEntropyExtra *ex=NULL, double cap=0.0, Py_ssize_t *kept=NULL,
) except? -1:
    """Row losses with class indices (checked) into loss, the gradient times
    scale into grad unless NULL (grad may be x); returns the sum of the row
    losses (see _loss_total).  loss may be NULL for short rows (_short_row),
    whose tiles then give only their sums.  ex: z-loss and per-row
    extras (NULL: none);
    cap > 0: the logits soft-capped at cap (see softcap.pxi: a long row in a
    thread's scratch row, a tile on the stack, a split row by chunks).
    kept (or NULL; the loss alone, grad NULL: nothing but the row losses is
    written before the check): the labels are checked here, as each unit
    reads them (_cross_entropy_index_unit), and *kept gets the number of
    those that are not ignore_index, or -1 where one is out of range (the
    losses are then meaningless).  n_rows >= 1."""
    cdef Py_ssize_t i, unit_kept, n_kept = 0
    cdef int any_bad = 0
    cdef double w_total = <double>n if w == NULL else row_sum(w, n)
    cdef double alpha = 1.0 - label_smoothing
    cdef double beta = label_smoothing / n
    cdef _CrossEntropyArgs ce = _CrossEntropyArgs(ignore_index, w_total, alpha, beta, scale,
                                                  loss, ex)
    cdef double total
    if _split_rows(n_rows, n, n_threads):
        if kept != NULL and labels_count_bad(t, n_rows, n, ignore_index, kept) != 0:
            kept[0] = -1  # a few long rows: their labels checked first
            return 0.0
        _split_columns(OP_CROSS_ENTROPY_INDEX, x, <const floating *>NULL, t, w, grad, &ce,
                       n_rows, n, n_threads, <floating>cap)
        return _loss_total(loss, NULL, n_rows, n)
    cdef floating *capped = _row_cap_scratch(x, n, cap, n_threads)  # n columns per thread
    cdef double *tl = _tile_loss_alloc(n_rows, n, sizeof(floating))
    cdef bint grouped = cap == 0.0 and _row_grouped(n, sizeof(floating), grad != NULL)
    if n_threads > 1:
        for i in prange(_group_units(n_rows, n, sizeof(floating), grouped), nogil=True,
                        schedule="guided", num_threads=n_threads):
            unit_kept = 0
            _cross_entropy_index_any_unit(
                x, t, n_rows, n, ignore_index, w, w_total, alpha, beta, loss, tl, grad, scale,
                ex, capped if capped == NULL else capped + threadid() * n, <floating>cap,
                grouped, i, &unit_kept if kept != NULL else NULL)
            any_bad |= unit_kept < 0
            n_kept += unit_kept
        if kept != NULL:
            kept[0] = -1 if any_bad else n_kept
    elif n_rows * n < GIL_WORK:
        _cross_entropy_index_serial(x, t, n_rows, n, ignore_index, w, w_total, alpha, beta,
                                    loss, tl, grad, scale, ex, capped, <floating>cap, grouped,
                                    kept)
    else:
        with nogil:
            _cross_entropy_index_serial(x, t, n_rows, n, ignore_index, w, w_total, alpha,
                                        beta, loss, tl, grad, scale, ex, capped,
                                        <floating>cap, grouped, kept)
    total = _loss_total(loss, tl, n_rows, n)
    free(tl)
    free(capped)
    return total


cdef void _cross_entropy_prob_serial(
    const floating *x, const floating *y, Py_ssize_t n_rows, Py_ssize_t n,
    const floating *w, double alpha, double beta, double *loss, double *tile_loss,
    floating *grad, double scale, const CrossEntropyExtra *ex, floating *capped,
    floating cap,
) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(_n_units(n_rows, n, sizeof(floating))):
        _cross_entropy_prob_unit(x, y, n_rows, n, w, alpha, beta, loss, tile_loss, grad,
                                 scale, ex, capped, cap, i)


cdef double _cross_entropy_prob_core(
    const floating *x, const floating *y, Py_ssize_t n_rows, Py_ssize_t n,
    const floating *w, double label_smoothing, double scale, double *loss, floating *grad,
    int n_threads, const CrossEntropyExtra *ex=NULL, double cap=0.0,
) except? -1:
    """As _cross_entropy_index_core, with probability targets y (grad may be
    x but not y)."""
    cdef Py_ssize_t i
    cdef double alpha = 1.0 - label_smoothing
    cdef double beta = label_smoothing / n
    cdef _CrossEntropyArgs ce = _CrossEntropyArgs(0, 0.0, alpha, beta, scale, loss, ex)
    cdef double total
    if _split_rows(n_rows, n, n_threads):
        _split_columns(OP_CROSS_ENTROPY_PROB, x, y, <const int32_t *>NULL, w, grad, &ce,
                       n_rows, n, n_threads, <floating>cap)
        return _loss_total(loss, NULL, n_rows, n)
    cdef floating *capped = _row_cap_scratch(x, n, cap, n_threads)  # n columns per thread
    cdef double *tl = _tile_loss_alloc(n_rows, n, sizeof(floating))
    if n_threads > 1:
        for i in prange(_n_units(n_rows, n, sizeof(floating)), nogil=True, schedule="guided",
                        num_threads=n_threads):
            _cross_entropy_prob_unit(x, y, n_rows, n, w, alpha, beta, loss, tl, grad,
                                     scale, ex,
                                     capped if capped == NULL else capped + threadid() * n,
                                     <floating>cap, i)
    elif n_rows * n < GIL_WORK:
        _cross_entropy_prob_serial(x, y, n_rows, n, w, alpha, beta, loss, tl, grad, scale, ex,
                                   capped, <floating>cap)
    else:
        with nogil:
            _cross_entropy_prob_serial(x, y, n_rows, n, w, alpha, beta, loss, tl, grad,
                                       scale, ex, capped, <floating>cap)
    total = _loss_total(loss, tl, n_rows, n)
    free(tl)
    free(capped)
    return total


cdef CrossEntropyExtra *_extra_args(
    CrossEntropyExtra *ex, double z_loss, double z_scale, double[::1] row_z,
    double[::1] row_acc,
) noexcept:
    """ex filled from the def kernels' optional arguments; NULL when all are
    the defaults (the kernels' plain code)."""
    ex.z = z_loss
    ex.zscale = z_scale
    ex.zrow = NULL
    ex.acc = NULL
    if row_z is not None and row_z.shape[0] > 0:
        ex.zrow = &row_z[0]
    if row_acc is not None and row_acc.shape[0] > 0:
        ex.acc = &row_acc[0]
    if z_loss == 0.0 and ex.zrow == NULL and ex.acc == NULL:
        return NULL
    return ex


cdef extern from "scratch.hpp" namespace "csoftmax" nogil:
    double *row_scratch(Py_ssize_t n) noexcept
    void row_scratch_done() noexcept


cdef double *_loss_rows(double[::1] row_loss, Py_ssize_t n) except NULL:
    """row_loss's data, or where it is None (the caller keeps only their sum:
    a reduction) room for n losses in the calling thread's scratch
    (scratch.hpp), which the caller hands back by row_scratch_done."""
    if row_loss is not None:
        return &row_loss[0]
    cdef double *p = row_scratch(n)
    if p == NULL:
        raise MemoryError()
    return p


def cross_entropy_index_rows(const floating[:, ::1] logits,
                             const label_t[::1] target,
                             const floating[::1] weight,
                             Py_ssize_t ignore_index,
                             double label_smoothing,
                             double grad_scale,
                             double[::1] row_loss,
                             floating[:, ::1] grad,
                             int n_threads,
                             double z_loss=0.0,
                             double z_scale=0.0,
                             double softcap=0.0,
                             double[::1] row_z=None,
                             double[::1] row_acc=None):
    """Per-row cross-entropy with class indices into row_loss (None: into
    scratch, for their sum alone), and returns their sum (see _loss_total);
    the gradient (times grad_scale) into grad when grad is not None.  Labels
    must have been checked with label_summary.  weight may be None; grad may
    be logits.

    z_loss: z lse^2 per counted row, its gradient times z_scale, the parts
    into row_z (not into row_loss nor the sum; row_z may be None where
    z_loss is 0); softcap > 0: the logits become softcap tanh(x / softcap)
    first; row_acc: 1.0 per row whose target holds the row maximum (see
    token_correct in rowops.hpp).  The defaults run the plain kernels."""
    if logits.shape[0] == 0:
        return 0.0
    cdef const floating *w = NULL
    cdef floating *g = NULL
    cdef CrossEntropyExtra ex
    cdef const CrossEntropyExtra *exp = _extra_args(&ex, z_loss, z_scale, row_z, row_acc)
    if weight is not None:
        w = &weight[0]
    if grad is not None:
        g = &grad[0, 0]
    try:
        return _cross_entropy_index_core(
            &logits[0, 0], &target[0], logits.shape[0], logits.shape[1], w, ignore_index,
            label_smoothing, grad_scale, _loss_rows(row_loss, logits.shape[0]), g, n_threads,
            exp, softcap)
    finally:
        row_scratch_done()


def cross_entropy_prob_rows(const floating[:, ::1] logits,
                            const floating[:, ::1] target,
                            const floating[::1] weight,
                            double label_smoothing,
                            double grad_scale,
                            double[::1] row_loss,
                            floating[:, ::1] grad,
                            int n_threads,
                            double z_loss=0.0,
                            double z_scale=0.0,
                            double softcap=0.0,
                            double[::1] row_z=None):
    """Per-row cross-entropy with probability targets (they need not sum to
    one) into row_loss (None as for cross_entropy_index_rows), and returns
    their sum (see _loss_total); the gradient (times grad_scale) into grad
    when grad is not None.  weight may be None; grad may be logits but not
    target.  z_loss, z_scale, softcap, row_z: as
    for cross_entropy_index_rows."""
    if logits.shape[0] == 0:
        return 0.0
    cdef const floating *w = NULL
    cdef floating *g = NULL
    cdef CrossEntropyExtra ex
    cdef const CrossEntropyExtra *exp = _extra_args(&ex, z_loss, z_scale, row_z, None)
    if weight is not None:
        w = &weight[0]
    if grad is not None:
        g = &grad[0, 0]
    try:
        return _cross_entropy_prob_core(
            &logits[0, 0], &target[0, 0], logits.shape[0], logits.shape[1], w, label_smoothing,
            grad_scale, _loss_rows(row_loss, logits.shape[0]), g, n_threads, exp, softcap)
    finally:
        row_scratch_done()


include "fastpath.pxi"
include "fastlinear.pxi"
include "vocabsplit.pxi"
include "public.pxi"
