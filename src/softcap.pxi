# The logit soft cap (softcap=: x -> cap tanh(x / cap)) of the cross-entropy
# kernels on every path, without a capped copy of the logits (included at the
# end of kernels.pxi):
#
# * long rows: the row capped into n columns of thread-private scratch
#   (calls.pxi allocates it), computed from there;
# * tiles of short rows: the tile capped on the thread's stack (softcap.hpp);
# * rows split over threads: a chunk at a time, see _split_chunk_capped;
# * the strided kernel (class axis not last): each block capped into its
#   staging scratch (strided.hpp).
#
# The gradient goes back through the cap (row_softcap_grad) from the capped
# values that the path kept.  Every path caps with row_softcap and takes the
# chain factor with row_softcap_grad (one compiled copy each, rowops.hpp): a
# logit's result has the same bits on every path and at every thread count.

from libc.string cimport memcpy

cdef extern from "softcap.hpp" namespace "csoftmax" nogil:
    double tile_cross_entropy_index_capped[T, L](
        const T *x, const L *target, Py_ssize_t rows, Py_ssize_t n, Py_ssize_t ignore_index,
        const T *w, double w_total, double alpha, double beta, double *loss, T *grad,
        double scale, const CrossEntropyExtra *ex, T cap, Py_ssize_t *kept) noexcept
    void row_grad_softcap[T](T *g, const T *c, const T *w, Py_ssize_t n, T c1, T c2,
                             Py_ssize_t t, T ct, T cap) noexcept


cdef inline void _cross_entropy_index_grad_capped(
    floating *grad, const floating *capped, Py_ssize_t n, Py_ssize_t t, const floating *w,
    double w_t, double alpha, double beta, double c1, double scale, floating cap,
) noexcept nogil:
    """_cross_entropy_index_grad and the chain factor through the cap (capped:
    the row's capped logits) in one pass (row_grad_softcap)."""
    row_grad_softcap(grad, capped, w, n, <floating>c1, <floating>(beta * scale), t,
                     <floating>(alpha * w_t * scale), cap)


# ---------------------------------------------------------------------------
# probability targets

cdef inline void _cross_entropy_prob_tile_capped(
    const floating *x, const floating *y, Py_ssize_t rows, Py_ssize_t n,
    const floating *w, double alpha, double beta, double *loss, floating *grad,
    double scale, const CrossEntropyExtra *ex, Py_ssize_t r0, floating cap,
) noexcept nogil:
    """_cross_entropy_prob_tile on the tile capped into c (rows * n <= TILE)."""
    cdef floating c[TILE]
    row_softcap(x, &c[0], rows * n, cap)
    _cross_entropy_prob_tile(&c[0], y, rows, n, w, alpha, beta, loss, grad, scale, ex, r0)
    if grad != NULL:
        row_softcap_grad(grad, &c[0], rows * n, cap)


cdef inline double _cross_entropy_prob_row_capped(
    const floating *x, const floating *y, Py_ssize_t n, const floating *w,
    double alpha, double beta, floating *grad, double scale,
    const CrossEntropyExtra *ex, Py_ssize_t i, floating *capped, floating cap,
) noexcept nogil:
    """_cross_entropy_prob_row on the row capped into capped (n columns)."""
    row_softcap(x, capped, n, cap)
    cdef double loss = _cross_entropy_prob_row(capped, y, n, w, alpha, beta, grad, scale,
                                               ex, i)
    if grad != NULL:
        row_softcap_grad(grad, capped, n, cap)
    return loss


cdef floating *_row_cap_scratch(
    const floating *x, Py_ssize_t n, double cap, int n_threads
) except? NULL:
    """n columns of scratch per thread for soft-capped long rows (NULL where
    there is no cap or the rows are short: tiles cap on the stack)."""
    if cap == 0.0 or _short_row(n, sizeof(floating)):
        return NULL
    cdef floating *p = <floating *>malloc(n_threads * n * sizeof(floating))
    if p == NULL:
        raise MemoryError()
    return p


# ---------------------------------------------------------------------------
# rows split over threads (see _split_columns).  With a gradient, pass 0 caps
# each chunk into the gradient array, where the later passes read it (x is
# not read again: grad may be x); pass 1 takes the sums from there (the
# exponentials go to the thread's scratch and are dropped), and pass 2 moves
# the capped chunk to the scratch, computes the exponentials and the gradient
# into the gradient array and takes them through the cap.  Without a
# gradient every pass caps the chunk of x into the scratch.  The sums and the
# exponentials are those of the uncapped code on the capped chunk.

cdef floating *_split_cap_scratch(floating cap, int n_threads) except? NULL:
    """CHUNK elements of scratch per thread (NULL without a cap)."""
    if cap == 0:
        return NULL
    cdef floating *p = <floating *>malloc(n_threads * <Py_ssize_t>CHUNK * sizeof(floating))
    if p == NULL:
        raise MemoryError()
    return p


cdef inline const floating *_split_capped_source(
    const floating *x, floating *out, floating cap
) noexcept nogil:
    """Where the serial steps read the (capped) logits: the gradient array
    once pass 0 has capped into it, else x."""
    if cap != 0 and out != NULL:
        return out
    return x


cdef void _split_capped_labels(
    int op, const floating *x, floating cap, _Split *sp
) noexcept nogil:
    """Without a gradient: x_t - m of each computed row from the capped x_t
    (the serial step read it uncapped from x)."""
    cdef Py_ssize_t r
    cdef floating v
    cdef _RowSums *row
    if op != OP_CROSS_ENTROPY_INDEX:
        return
    for r in range(sp.n_rows):
        row = &sp.row[r]
        if row.state == 0:
            row_softcap(x + r * sp.n + row.t, &v, 1, cap)
            row.x_t = <double>v - <double><floating>row.m


cdef inline void _split_chunk_capped(
    int op, int step, const floating *x, const floating *y, const floating *w,
    floating *out, const _CrossEntropyArgs *ce, _Split *sp, Py_ssize_t u,
    floating cap, floating *sc,
) noexcept nogil:
    """Pass `step` of cross-entropy op over chunk u of the soft-capped rows;
    sc: CHUNK elements of the thread's scratch."""
    cdef Py_ssize_t r = u // sp.nc
    cdef Py_ssize_t c0 = (u - r * sp.nc) * CHUNK
    cdef Py_ssize_t k = min(<Py_ssize_t>CHUNK, sp.n - c0)
    cdef Py_ssize_t o = r * sp.n + c0
    cdef const floating *wc = w if w == NULL else w + c0
    cdef _RowSums *row = &sp.row[r]
    cdef _ChunkSums *part = &sp.chunk[u]
    cdef floating m = <floating>row.m
    cdef bint index = op == OP_CROSS_ENTROPY_INDEX
    if out == NULL:
        if step == 0:
            part.s = row_softcap_max(x + o, sc, k, cap)
            return
        row_softcap(x + o, sc, k, cap)
        if index and row.state == 0:
            if ce.beta != 0.0:
                part.a = row_weighted_shifted_sum(sc, wc, k, m)
            part.s = row_exp_sum(sc, k, m)
        elif not index:
            part.a = row_soft_target_sums(sc, y + o, wc, k, m, ce.alpha, ce.beta, &part.b)
            part.s = row_exp_sum(sc, k, m)
        return
    if step == 0:
        part.s = row_softcap_max(x + o, out + o, k, cap)
    elif index and row.state != 0:
        if step == 2:
            _skipped_row(out + o, k, row.state == 1)
    elif step == 1:
        if not index:
            part.s = row_exp_store_sum_soft(out + o, y + o, wc, sc, k, m, ce.alpha, ce.beta,
                                            &part.a, &part.b)
        elif ce.beta != 0.0:
            part.s = row_exp_store_sum_smooth(out + o, sc, wc, k, m, &part.a)
        else:
            part.s = row_exp_store_sum(out + o, sc, k, m)
    else:
        memcpy(sc, out + o, k * sizeof(floating))
        row_exp_store_sum(sc, out + o, k, m)
        if index:
            _cross_entropy_index_grad_capped(out + o, sc, k, row.t - c0, wc, row.w_t,
                                             ce.alpha, ce.beta, row.c1, ce.scale, cap)
        else:
            _cross_entropy_prob_finish(out + o, y + o, k, wc, ce.alpha, ce.beta, row.a,
                                       row.b, row.s, ce.scale, row.m, ce.ex, -1)
            row_softcap_grad(out + o, sc, k, cap)
