# The rows split over threads (included by kernels.pxi): a row's columns cut
# into chunks spread over the team where whole rows would leave threads idle.
# Split from kernels.pxi, whose row and tile units these passes share.

# ---------------------------------------------------------------------------
# rows split over threads.  With fewer rows than two per thread (16x131072 on
# 16 threads, one wide row on two) whole rows leave threads idle, so each row's
# columns are cut into chunks of CHUNK and the chunks spread over the team, in
# up to three parallel passes with a serial step between them:
#   1. the maximum of each chunk;           then each row's maximum (and label)
#   2. each chunk's sums (exp, smoothing,   then each row's sums, in chunk
#      targets), exponentials stored;            order, and its loss
#   3. each chunk scaled into its output.
# rowops.hpp reduces every long row by the same chunks, added in the same
# order, whether or not the row is split: a row's result is the same bits at
# every thread count (tested).  The chunks of a pass are dealt out statically
# in the same order in every pass, so a thread finds its chunks in its own
# cache in passes 2 and 3.

cdef enum:
    # operations, for the kernels written once over several of them (the
    # rows split over threads, the entry points of calls.pxi)
    OP_SOFTMAX = 0
    OP_LOG_SOFTMAX = 1
    OP_LOGSUMEXP = 2
    OP_CROSS_ENTROPY_INDEX = 3
    OP_CROSS_ENTROPY_PROB = 4


cdef struct _ChunkSums:
    double s        # sum of exponentials (pass 1: the chunk's maximum)
    double a        # smoothing sum (indices) or sum of targets (probabilities)
    double b        # sum of targets times shifted logits (probabilities)

cdef struct _RowSums:
    double m        # maximum
    double s, a, b  # as _ChunkSums, over the row
    double x_t      # indices: x_t - m
    double w_t      # indices: the label's weight
    double y_sum    # indices: sum of the row's target
    double c1       # indices: the exponentials' gradient coefficient
    Py_ssize_t t    # indices: the label
    int state       # indices: 0 computed, 1 ignored, 2 label out of range

cdef struct _Split:
    Py_ssize_t n_rows, n, nc   # rows, columns, chunks per row
    _RowSums *row
    _ChunkSums *chunk          # n_rows * nc, chunk c of row r at r * nc + c

cdef struct _CrossEntropyArgs:
    Py_ssize_t ignore_index
    double w_total, alpha, beta, scale
    double *loss
    const CrossEntropyExtra *ex   # z-loss, per-row extras (NULL: none)


cdef inline bint _split_rows(Py_ssize_t n_rows, Py_ssize_t n, int n_threads) noexcept nogil:
    return n_threads > 1 and n > CHUNK and n_rows < 2 * n_threads


cdef int _split_alloc(_Split *sp, Py_ssize_t n_rows, Py_ssize_t n) except -1:
    sp.n_rows = n_rows
    sp.n = n
    sp.nc = (n + CHUNK - 1) // CHUNK
    sp.row = <_RowSums *>calloc(n_rows, sizeof(_RowSums))
    sp.chunk = <_ChunkSums *>calloc(n_rows * sp.nc, sizeof(_ChunkSums))
    if sp.row == NULL or sp.chunk == NULL:
        free(sp.row)
        free(sp.chunk)
        raise MemoryError()
    return 0


cdef inline void _split_chunk(
    int op, int step, const floating *x, const floating *y, const floating *w,
    floating *out, const _CrossEntropyArgs *ce, _Split *sp, Py_ssize_t u,
) noexcept nogil:
    """Pass `step` (0, 1, 2) of op over chunk u."""
    cdef Py_ssize_t r = u // sp.nc
    cdef Py_ssize_t c0 = (u - r * sp.nc) * CHUNK
    cdef Py_ssize_t k = min(<Py_ssize_t>CHUNK, sp.n - c0)
    cdef Py_ssize_t o = r * sp.n + c0
    cdef const floating *wc = w if w == NULL else w + c0
    cdef _RowSums *row = &sp.row[r]
    cdef _ChunkSums *part = &sp.chunk[u]
    cdef floating m = <floating>row.m
    if step == 0:
        part.s = row_max(x + o, k)
    elif op == OP_SOFTMAX:
        if step == 1:
            part.s = row_exp_store_sum(x + o, out + o, k, m)
        else:
            row_scale(out + o, k, <floating>(1.0 / row.s))
    elif op == OP_LOG_SOFTMAX or op == OP_LOGSUMEXP:
        if step == 1:
            part.s = row_exp_sum(x + o, k, m)
        elif op == OP_LOG_SOFTMAX:  # (logsumexp has no pass 2: out holds one value per row)
            row_log_softmax_from(x + o, out + o, k, m, <floating>log(row.s))
    elif op == OP_CROSS_ENTROPY_INDEX:
        if row.state != 0:
            if step == 2:
                _skipped_row(out + o, k, row.state == 1)
        elif step == 2:
            _cross_entropy_index_grad(out + o, k, row.t - c0, wc, row.w_t, ce.alpha,
                                      ce.beta, row.c1, ce.scale)
        elif out == NULL:
            if ce.beta != 0.0:
                part.a = row_weighted_shifted_sum(x + o, wc, k, m)
            part.s = row_exp_sum(x + o, k, m)
        elif ce.beta != 0.0:
            part.s = row_exp_store_sum_smooth(x + o, out + o, wc, k, m, &part.a)
        else:
            part.s = row_exp_store_sum(x + o, out + o, k, m)
    elif step == 1:  # OP_CROSS_ENTROPY_PROB
        if out == NULL:
            part.a = row_soft_target_sums(x + o, y + o, wc, k, m, ce.alpha, ce.beta, &part.b)
            part.s = row_exp_sum(x + o, k, m)
        else:
            part.s = row_exp_store_sum_soft(x + o, y + o, wc, out + o, k, m, ce.alpha,
                                            ce.beta, &part.a, &part.b)
    else:
        _cross_entropy_prob_finish(out + o, y + o, k, wc, ce.alpha, ce.beta, row.a, row.b,
                                   row.s, ce.scale, row.m, ce.ex, -1)


cdef inline void _split_rows_step(
    int op, int step, const floating *x, const label_t *target, const floating *w,
    floating *out, const _CrossEntropyArgs *ce, _Split *sp,
) noexcept nogil:
    """The serial step after pass `step` (0 or 1): the rows' maximum (the
    largest chunk maximum: the same value as row_max; max(-0, +0) cannot
    depend on the order as row_max returns +0 for either) and labels, or the
    rows' sums (chunk sums added in chunk order, as rowops.hpp does) and what
    follows from them."""
    cdef Py_ssize_t r, c, t, nc = sp.nc, n = sp.n
    cdef _RowSums *row
    cdef const _ChunkSums *part
    cdef double v
    for r in range(sp.n_rows):
        row = &sp.row[r]
        part = &sp.chunk[r * nc]
        if step == 0:
            row.m = part[0].s
            for c in range(1, nc):
                v = part[c].s
                row.m = v if v > row.m else row.m
            if op == OP_CROSS_ENTROPY_INDEX:
                # the label and x_t are read before pass 2 (out may be x)
                t = target[r]
                row.state = 1 if t == ce.ignore_index else (0 if 0 <= t < n else 2)
                if row.state == 0:
                    row.t = t
                    row.x_t = <double>x[r * n + t] - <double><floating>row.m
                    row.w_t = 1.0 if w == NULL else w[t]
            continue
        for c in range(nc):
            row.s = add_chunk(row.s, part[c].s, c * CHUNK)
            row.a = add_chunk(row.a, part[c].a, c * CHUNK)
            row.b = add_chunk(row.b, part[c].b, c * CHUNK)
        if op == OP_LOGSUMEXP:
            out[r] = <floating>_logsumexp_finish(x + r * n, n, <floating>row.m, row.s)
        elif op == OP_CROSS_ENTROPY_INDEX:
            if row.state != 0:
                ce.loss[r] = _skipped_row(<floating *>NULL, 0, row.state == 1)
                _extra_skipped(ce.ex, r, row.state == 1)
            else:
                ce.loss[r] = cross_entropy_index_loss(
                    row.w_t, ce.w_total, ce.alpha, ce.beta, row.x_t, row.a, row.s, &row.y_sum)
                row.c1 = row.y_sum / row.s * ce.scale
                if ce.ex != NULL:
                    _extra_row(ce.ex, r, row.x_t, row.m, row.s, row.y_sum, ce.scale, &row.c1)
        elif op == OP_CROSS_ENTROPY_PROB:
            ce.loss[r] = _cross_entropy_prob_finish(
                <floating *>NULL, <const floating *>NULL, n, w, ce.alpha, ce.beta, row.a,
                row.b, row.s, ce.scale, row.m, ce.ex, r)


cdef int _split_columns(
    int op, const floating *x, const floating *y, const label_t *target, const floating *w,
    floating *out, const _CrossEntropyArgs *ce, Py_ssize_t n_rows, Py_ssize_t n,
    int n_threads, floating cap=0,
) except -1:
    """op over rows split into chunks (see above).  out: the result (softmax,
    log_softmax, logsumexp) or the gradient (cross-entropy; NULL for the loss
    alone, which ce.loss receives); y: probability targets; target: labels.
    cap != 0 (cross-entropy): the logits soft-capped at cap, a chunk at a time
    (_split_chunk_capped, softcap.pxi)."""
    cdef _Split sp
    cdef floating *scratch = _split_cap_scratch(cap, n_threads)
    cdef const floating *xs = _split_capped_source(x, out, cap)
    _split_alloc(&sp, n_rows, n)
    cdef Py_ssize_t u, n_units = n_rows * sp.nc
    cdef int step
    cdef int n_steps = 2 if op == OP_LOGSUMEXP or out == NULL else 3
    with nogil:
        for step in range(n_steps):
            for u in prange(n_units, schedule="static", num_threads=n_threads):
                if cap != 0:
                    _split_chunk_capped(op, step, x, y, w, out, ce, &sp, u, cap,
                                        scratch + threadid() * CHUNK)
                else:
                    _split_chunk(op, step, x, y, w, out, ce, &sp, u)
            if step < 2:
                _split_rows_step(op, step, xs, target, w, out, ce, &sp)
            if step == 0 and cap != 0 and out == NULL:
                _split_capped_labels(op, x, cap, &sp)
    free(sp.row)
    free(sp.chunk)
    free(scratch)
    return 0
