# The 16-bit kernels: float16 and bfloat16 storage, float32 arithmetic
# (included by kernels.pxi).
#
# 16-bit arrays arrive as uint16 views, with their kind (HALF_F16 or
# HALF_BF16, see half.hpp).  Nothing of the input's size is converted ahead:
# each thread takes a block of whole rows at a time (at most STAGE float32
# elements, at least one row), converts it into its own float32 scratch
# (half_load), runs the float32 units of kernels.pxi over the scratch -- the
# same short-row tiles, long-row loops and cross-entropy options as a float32
# call -- and rounds the result or gradient once into the 16-bit output
# (half_store).  So a 16-bit result is the float32 computation's result on
# the converted input, rounded once, bit for bit; per-row losses stay double.
# Blocks of short rows hold whole tiles, so the tiles (and the sum of the row
# losses, see _loss_total) are the float32 call's; a block's size never
# changes a bit of the result, and so neither does the thread count.
#
# Scratch per thread: one block (two for the backward functions and 16-bit
# probability targets, one more with a soft cap), so a row longer than STAGE
# takes a block of one row.  Rows split over threads (fewer rows than two per
# thread, longer than CHUNK) are converted whole into float32 (at most two
# rows per thread) and computed by the float32 cores, which split them.

from libc.string cimport memset

cdef extern from "half.hpp" namespace "csoftmax" nogil:
    void half_load(int kind, const uint16_t *src, float *dst, Py_ssize_t n) noexcept
    float half_load_max(int kind, const uint16_t *src, float *dst, Py_ssize_t n) noexcept
    void half_store(int kind, const float *src, uint16_t *dst, Py_ssize_t n) noexcept
    void half_store_scaled(int kind, const float *src, float c, uint16_t *dst, Py_ssize_t n,
                           Py_ssize_t t, float ct, int stream) noexcept
    void half_store_row(int kind, const float *src, uint16_t *dst, Py_ssize_t n,
                        int stream) noexcept
    int half_bf16_native_set(int on) noexcept
    int c_half_bf16_native "csoftmax::half_bf16_native"() noexcept

cdef enum:
    # float32 elements of a block of rows (128 KiB: with a second input and a
    # capped copy, three stay within a 512 KiB L2)
    STAGE = 1 << 15
    # elements per unit of the plain conversions over threads
    CONVERT_BLOCK = 1 << 16
    # ops of the staged kernels beyond those of kernels.pxi
    OP_SOFTMAX_BACKWARD = 5
    OP_LOG_SOFTMAX_BACKWARD = 6


cdef struct _Half:
    int op, kind
    Py_ssize_t n_rows, n, block, stage  # rows, columns, rows per block, scratch per buffer
    const uint16_t *x
    const uint16_t *y16     # backward: the forward output; 16-bit probability targets
    const float *y32        # float32 probability targets
    uint16_t *out           # the 16-bit result or gradient (NULL: the loss alone)
    float *out32            # logsumexp: one value per row
    const float *w          # class weights (float32) or NULL
    double *loss            # per-row losses
    double *tile_loss       # per-tile loss sums of short rows (or NULL)
    _CrossEntropyArgs *ce
    float cap
    double smoothing        # label smoothing


cdef inline bint _half_short(Py_ssize_t n) noexcept nogil:
    """Whether 16-bit rows of n columns run in tiles: they are computed in
    float32, by float32's tiles."""
    return _short_row(n, sizeof(float))


cdef Py_ssize_t _half_block_rows(Py_ssize_t n_rows, Py_ssize_t n, int n_threads) noexcept nogil:
    """Rows per block: STAGE elements (at least one row), no more than a
    thread's share of the rows, whole tiles for short rows."""
    cdef Py_ssize_t b = max(<Py_ssize_t>1, STAGE // n)
    b = min(b, (n_rows + n_threads - 1) // n_threads)
    if _half_short(n):
        b = (b + _tile_rows(n) - 1) // _tile_rows(n) * _tile_rows(n)
    return max(<Py_ssize_t>1, b)


cdef inline void _half_ce_index(
    const _Half *h, const label_t *t, float *xs, float *cs, Py_ssize_t r0, Py_ssize_t rows
) noexcept nogil:
    """Rows r0 .. r0 + rows of a class-index cross-entropy, xs holding them in
    float32 (their gradient on return when h.out), cs room for a capped row
    (long rows) when h.cap != 0."""
    cdef const _CrossEntropyArgs *ce = h.ce
    cdef Py_ssize_t i, n = h.n
    cdef Py_ssize_t tile0 = r0 // _tile_rows(n) if _half_short(n) else 0
    cdef CrossEntropyExtra ex
    cdef const CrossEntropyExtra *exp
    cdef float *grad = xs if h.out != NULL else NULL
    cdef float *capped = cs if h.cap != 0.0 and not _half_short(n) else NULL
    cdef double w_total = ce.w_total
    exp = extra_at(ce.ex, r0, &ex)  # the per-row extras from row r0
    # the soft cap as in the float32 call: short rows capped in their tile,
    # long rows through the scratch row cs
    for i in range(_n_units(rows, n, sizeof(float))):
        _cross_entropy_index_unit(xs, t + r0, rows, n, ce.ignore_index, h.w, w_total,
                                  ce.alpha, ce.beta, h.loss + r0,
                                  h.tile_loss if h.tile_loss == NULL else h.tile_loss + tile0,
                                  grad, ce.scale, exp, capped, h.cap, i)


cdef inline void _half_ce_prob(
    const _Half *h, float *xs, const float *ys, float *cs, Py_ssize_t r0, Py_ssize_t rows
) noexcept nogil:
    """As _half_ce_index with probability targets ys (float32)."""
    cdef const _CrossEntropyArgs *ce = h.ce
    cdef Py_ssize_t i, n = h.n
    cdef Py_ssize_t tile0 = r0 // _tile_rows(n) if _half_short(n) else 0
    cdef CrossEntropyExtra ex
    cdef const CrossEntropyExtra *exp
    cdef float *grad = xs if h.out != NULL else NULL
    cdef float *capped = cs if h.cap != 0.0 and not _half_short(n) else NULL
    exp = extra_at(ce.ex, r0, &ex)  # the per-row extras from row r0
    for i in range(_n_units(rows, n, sizeof(float))):
        _cross_entropy_prob_unit(xs, ys, rows, n, h.w, ce.alpha, ce.beta, h.loss + r0,
                                 h.tile_loss if h.tile_loss == NULL else h.tile_loss + tile0,
                                 grad, ce.scale, exp, capped, h.cap, i)


# Long rows of softmax and log_softmax: the row's conversion fused with its
# maximum (half_load_max: the largest converted value, as row_max takes it),
# and its last step with the rounding, a CHUNK_16 elements at a time (in L1),
# so that the scratch row is walked as often as a float32 row is.  The same
# arithmetic as _softmax_row and _log_softmax_row.

cdef enum:
    CHUNK_16 = 512


# 16-bit outputs of at least this many bytes are written with non-temporal
# stores (half_store_scaled): beyond the caches, where a plain store first
# reads the destination's line.  bfloat16 4096x32000 loss + gradient, AVX-512,
# 2 threads: 50.2 -> 43.1 ms (softmax 45.6 -> 42.0 ms).  Streamed / plain time,
# bfloat16 loss + gradient of N x 4096, 2 threads (2 MiB of L2 a core), AVX-512
# and AVX2, in one process: N = 256 (2 MiB out) 1.34 / 1.27, 512 (4 MiB) 1.02 /
# 0.99, 1024 (8 MiB) 0.93 / 0.95, 2048 (16 MiB) 0.93 / 0.96, 4096 (32 MiB)
# 0.86 / 0.94; float16 softmax 2048x4096 0.83 / 0.85.
cdef Py_ssize_t _stream_bytes = 8 << 20
# ... and rows of at least this many bytes: shorter rows were slower streamed
# (a partial line at each end of a row of 2 KB): streamed / plain time,
# bfloat16, AVX2 (AMD Zen 3), 2 threads, one process, minimum and median:
# 8192x1000 loss + gradient 1.34-1.60x, softmax 1.13-1.23x; 4096x2048
# 1.06-1.28x and 0.94-1.00x; 2048x4096 0.96-1.00x and 0.90-0.94x; 512x16384
# 0.91x and 0.83-0.91x.
cdef Py_ssize_t _stream_row_bytes = 8192


def half_stream_bytes(Py_ssize_t n=-1, Py_ssize_t row=-1):
    """The size of output, and of its rows, from which 16-bit outputs are
    streamed; n >= 0 and row >= 0 set them (tests).  Returns the first.  The
    kernels over a middle axis take the size only: their rows stream from
    STREAM_ROW_BYTES (halfstrided.hpp)."""
    global _stream_bytes, _stream_row_bytes
    if n >= 0:
        _stream_bytes = n
    if row >= 0:
        _stream_row_bytes = row
    return _stream_bytes


def half_bf16_native(int on=-1):
    """Whether bfloat16 values are rounded by AVX512_BF16's vcvtne2ps2bf16
    (half.hpp: the AVX-512 kernels on a CPU that has it; the same bits as the
    software rounding); on = 0 or 1 switches it (tests), where the CPU has
    it.  Returns the state before."""
    if on >= 0:
        return bool(half_bf16_native_set(on))
    return bool(c_half_bf16_native())


c_half_bf16_native()  # the CPU asked once, at import (half.hpp)


cdef inline int _half_streams(const _Half *h) noexcept nogil:
    """Whether the 16-bit output is written with non-temporal stores (at least
    _stream_bytes of it, in rows of at least _stream_row_bytes)."""
    return (h.out != NULL and h.n_rows * h.n * 2 >= _stream_bytes
            and h.n * 2 >= _stream_row_bytes)


cdef inline void _half_row_finish(int op, int kind, float *xs, uint16_t *out, Py_ssize_t n,
                                  float m, float v, int stream) noexcept nogil:
    """softmax: out = xs * v (xs the exponentials, v = 1 / their sum);
    log_softmax: out = (xs - m) - v (v the logsumexp), rounded to 16 bits."""
    cdef Py_ssize_t c = 0, k
    if op == OP_SOFTMAX:  # rounded as it is scaled (row_scale's product), not written back
        half_store_scaled(kind, xs, v, out, n, -1, 0.0, stream)
        return
    while c < n:
        k = min(<Py_ssize_t>CHUNK_16, n - c)
        row_log_softmax_from(<const float *>xs + c, xs + c, k, m, v)
        half_store(kind, xs + c, out + c, k)
        c += k


cdef inline const uint16_t *_half_next_row(
    const _Half *h, Py_ssize_t r, Py_ssize_t n
) noexcept nogil:
    """The 16-bit row after row r that the exp pass of row r prefetches, as
    _next_row (NULL after the last row and under PREFETCH_ROW_BYTES)."""
    if r + 1 >= h.n_rows or n * 2 < PREFETCH_ROW_BYTES:
        return NULL
    return h.x + (r + 1) * n


cdef inline void _half_long_row(int op, int kind, const uint16_t *x, float *xs, uint16_t *out,
                                Py_ssize_t n, int stream, const uint16_t *nxt) noexcept nogil:
    """softmax or log_softmax of one long row (a long row: not _short_row), xs its scratch;
    nxt (or NULL): the next row, prefetched by the exp pass."""
    cdef float m = half_load_max(kind, x, xs, n)
    if op == OP_SOFTMAX:
        _half_row_finish(op, kind, xs, out, n, m,
                         <float>(1.0 / row_exp_store_sum(<const float *>xs, xs, n, m, nxt)),
                         stream)
    else:
        _half_row_finish(op, kind, xs, out, n, m,
                         <float>log(row_exp_sum(<const float *>xs, n, m, nxt)), stream)


cdef inline float _half_logsumexp_long(
    int kind, const uint16_t *x, float *xs, Py_ssize_t n, const uint16_t *nxt
) noexcept nogil:
    """logsumexp of one long row (a long row: not _short_row), xs its scratch: the
    conversion fused with the maximum, then the exp-sum prefetching nxt (or
    NULL), as _half_long_row.  Converted whole, then its maximum and exp-sum
    as a float32 row's (_logsumexp_unit), the row took three walks and no
    prefetch: bfloat16 4096x32000 took 1.4x the time of its cross-entropy
    loss (AVX2).  The same arithmetic, so the same bits."""
    cdef float m = half_load_max(kind, x, xs, n)
    return <float>_logsumexp_finish(<const float *>xs, n, m,
                                    row_exp_sum(<const float *>xs, n, m, nxt))


cdef inline void _half_ce_index_long(
    const _Half *h, const label_t *t, float *xs, Py_ssize_t r0, Py_ssize_t rows
) noexcept nogil:
    """Rows r0 .. r0 + rows (long rows, no soft cap) of a class-index
    cross-entropy, a row at a time in the scratch row xs: its conversion
    fused with its maximum, and its gradient's last step with the rounding
    to 16 bits, CHUNK_16 elements at a time (as _half_long_row), so that the
    scratch row is walked as often as a float32 row is.  A converted block
    took five walks: the conversion, the maximum, the exponentials, the
    gradient, the rounding.  The arithmetic is _cross_entropy_index_row's."""
    cdef const _CrossEntropyArgs *ce = h.ce
    cdef Py_ssize_t i, c, k, ti, n = h.n
    cdef CrossEntropyExtra ex
    cdef const CrossEntropyExtra *exp
    cdef float *grad = xs if h.out != NULL else NULL
    cdef uint16_t *out
    cdef float m
    cdef double c1, w_t
    cdef int stream = _half_streams(h)
    exp = extra_at(ce.ex, r0, &ex)  # the per-row extras from row r0
    for i in range(rows):
        ti = t[r0 + i]
        out = <uint16_t *>NULL if h.out == NULL else h.out + (r0 + i) * n
        if ti == ce.ignore_index or not 0 <= ti < n:
            h.loss[r0 + i] = _skipped_row(grad, n, ti == ce.ignore_index)
            _extra_skipped(exp, i, ti == ce.ignore_index)
            if out != NULL:
                half_store(h.kind, xs, out, n)
            continue
        m = half_load_max(h.kind, h.x + (r0 + i) * n, xs, n)
        h.loss[r0 + i] = _cross_entropy_index_from_max(
            <const float *>xs, n, ti, m, h.w, ce.w_total, ce.alpha, ce.beta, grad, ce.scale,
            exp, i, &c1, &w_t, NULL, _half_next_row(h, r0 + i, n))
        if out == NULL:
            continue
        if ce.beta == 0.0:  # e c1 (and the target's term), rounded as it is formed
            half_store_scaled(h.kind, xs, <float>c1, out, n, ti,
                              <float>(ce.alpha * w_t * ce.scale), stream)
            continue
        c = 0
        while c < n:
            k = min(<Py_ssize_t>CHUNK_16, n - c)
            _cross_entropy_index_grad(xs + c, k, ti - c, h.w if h.w == NULL else h.w + c, w_t,
                                      ce.alpha, ce.beta, c1, ce.scale)
            half_store(h.kind, xs + c, out + c, k)
            c += k


cdef inline void _half_ce_prob_long(
    const _Half *h, float *xs, float *ys, Py_ssize_t r0, Py_ssize_t rows
) noexcept nogil:
    """Rows r0 .. r0 + rows (long rows, no soft cap) of a cross-entropy
    with probability targets, a row at a time in the scratch rows xs (the
    logits, then their gradient) and ys (16-bit targets, converted): the
    logits' conversion fused with their maximum, as _half_ce_index_long.
    Converted a block at a time, then walked by the float32 row kernel
    (maximum, exponentials, gradient), bfloat16 targets and logits took
    longer than float32 ones.  The arithmetic is _cross_entropy_prob_row's."""
    cdef const _CrossEntropyArgs *ce = h.ce
    cdef Py_ssize_t i, n = h.n
    cdef CrossEntropyExtra ex
    cdef const CrossEntropyExtra *exp
    cdef float *grad = xs if h.out != NULL else NULL
    cdef const float *y
    cdef float m
    cdef int stream = _half_streams(h)
    exp = extra_at(ce.ex, r0, &ex)  # the per-row extras from row r0
    for i in range(rows):
        m = half_load_max(h.kind, h.x + (r0 + i) * n, xs, n)
        if h.y16 != NULL:
            half_load(h.kind, h.y16 + (r0 + i) * n, ys, n)
            y = ys
        else:
            y = h.y32 + (r0 + i) * n
        h.loss[r0 + i] = _cross_entropy_prob_from_max(
            <const float *>xs, y, n, h.w, ce.alpha, ce.beta, grad, ce.scale, exp, i, m)
        if h.out != NULL:  # rounded, streamed when large
            half_store_row(h.kind, xs, h.out + (r0 + i) * n, n, stream)


cdef void _half_block(
    const _Half *h, const label_t *t, float *scratch, Py_ssize_t b
) noexcept nogil:
    """Block b of rows: loaded into scratch (h.stage floats per buffer),
    computed by the float32 units, the result stored in 16 bits."""
    cdef Py_ssize_t i, n = h.n, r0 = b * h.block
    cdef int op
    cdef Py_ssize_t rows = min(h.block, h.n_rows - r0)
    cdef Py_ssize_t off = r0 * n, size = rows * n
    cdef float *xs = scratch
    cdef float *ys = scratch + h.stage
    cdef const float *yp = ys
    if (h.op == OP_SOFTMAX or h.op == OP_LOG_SOFTMAX) and not _half_short(n):
        for i in range(rows):
            _half_long_row(h.op, h.kind, h.x + off + i * n, xs + i * n, h.out + off + i * n, n,
                           _half_streams(h), _half_next_row(h, r0 + i, n))
        return
    if h.op == OP_CROSS_ENTROPY_INDEX and not _half_short(n) and h.cap == 0.0:
        _half_ce_index_long(h, t, xs, r0, rows)
        return
    if h.op == OP_CROSS_ENTROPY_PROB and not _half_short(n) and h.cap == 0.0:
        _half_ce_prob_long(h, xs, ys, r0, rows)
        return
    if h.op == OP_LOGSUMEXP and not _half_short(n):
        for i in range(rows):
            h.out32[r0 + i] = _half_logsumexp_long(h.kind, h.x + off + i * n, xs, n,
                                                   _half_next_row(h, r0 + i, n))
        return
    half_load(h.kind, h.x + off, xs, size)
    if h.op == OP_LOGSUMEXP:
        for i in range(_n_units(rows, n, sizeof(float))):
            _rows_unit(OP_LOGSUMEXP, <const float *>xs, h.out32 + r0, rows, n, i)
        return
    if h.op == OP_SOFTMAX or h.op == OP_LOG_SOFTMAX:
        for i in range(_n_units(rows, n, sizeof(float))):
            _rows_unit(h.op, <const float *>xs, xs, rows, n, i)
    elif h.op == OP_SOFTMAX_BACKWARD or h.op == OP_LOG_SOFTMAX_BACKWARD:
        half_load(h.kind, h.y16 + off, ys, size)
        op = OP_SOFTMAX if h.op == OP_SOFTMAX_BACKWARD else OP_LOG_SOFTMAX
        for i in range(_backward_units(op, rows, n, sizeof(float))):
            _backward_unit(op, <const float *>xs, <const float *>ys, xs, rows, n, i)
    elif h.op == OP_CROSS_ENTROPY_INDEX:
        _half_ce_index(h, t, xs, ys, r0, rows)
    else:
        if h.y16 != NULL:
            half_load(h.kind, h.y16 + off, ys, size)
        else:
            yp = h.y32 + off
        _half_ce_prob(h, xs, yp, scratch + 2 * h.stage, r0, rows)
    if h.out != NULL:
        half_store(h.kind, xs, h.out + off, size)


cdef void _half_serial(const _Half *h, const label_t *t, float *scratch,
                       Py_ssize_t n_blocks) noexcept nogil:
    cdef Py_ssize_t b
    for b in range(n_blocks):
        _half_block(h, t, scratch, b)


cdef int _half_staged(_Half *h, const label_t *t, int n_threads) except -1:
    """Every block of rows of h (n_rows >= 1) over n_threads."""
    h.block = _half_block_rows(h.n_rows, h.n, n_threads)
    h.stage = h.block * h.n
    cdef Py_ssize_t b, n_blocks = (h.n_rows + h.block - 1) // h.block
    n_threads = <int>min(<Py_ssize_t>n_threads, n_blocks)
    cdef Py_ssize_t buffers = 1
    if h.op == OP_SOFTMAX_BACKWARD or h.op == OP_LOG_SOFTMAX_BACKWARD:
        buffers = 2
    elif h.op == OP_CROSS_ENTROPY_INDEX and h.cap != 0.0:
        buffers = 2
    elif h.op == OP_CROSS_ENTROPY_PROB:
        buffers = 3 if h.cap != 0.0 else 2
    cdef Py_ssize_t per_thread = buffers * h.stage
    cdef float *scratch = <float *>malloc(n_threads * per_thread * sizeof(float))
    if scratch == NULL:
        raise MemoryError()
    if n_threads > 1:
        for b in prange(n_blocks, nogil=True, schedule="guided", num_threads=n_threads):
            _half_block(h, t, scratch + threadid() * per_thread, b)
    elif h.n_rows * h.n < GIL_WORK:
        _half_serial(h, t, scratch, n_blocks)
    else:
        with nogil:
            _half_serial(h, t, scratch, n_blocks)
    free(scratch)
    return 0


# ---------------------------------------------------------------------------
# whole arrays converted (rows split over threads; the Python layer's paths
# that have no 16-bit kernel)

cdef void _convert_unit(int kind, bint to_half, const void *src, void *dst, Py_ssize_t size,
                        Py_ssize_t u) noexcept nogil:
    cdef Py_ssize_t k0 = u * CONVERT_BLOCK
    cdef Py_ssize_t k = min(<Py_ssize_t>CONVERT_BLOCK, size - k0)
    if to_half:
        half_store(kind, <const float *>src + k0, <uint16_t *>dst + k0, k)
    else:
        half_load(kind, <const uint16_t *>src + k0, <float *>dst + k0, k)


cdef int _convert(int kind, bint to_half, const void *src, void *dst, Py_ssize_t size,
                  int n_threads) except -1:
    cdef Py_ssize_t u, nu = (size + CONVERT_BLOCK - 1) // CONVERT_BLOCK
    n_threads = <int>min(<Py_ssize_t>n_threads, nu)
    if n_threads > 1:
        for u in prange(nu, nogil=True, schedule="guided", num_threads=n_threads):
            _convert_unit(kind, to_half, src, dst, size, u)
    elif size < GIL_WORK:
        for u in range(nu):
            _convert_unit(kind, to_half, src, dst, size, u)
    else:
        with nogil:
            for u in range(nu):
                _convert_unit(kind, to_half, src, dst, size, u)
    return 0


def half_load_array(const uint16_t[::1] src, float[::1] dst, int kind, int n_threads=1):
    """dst = src (16-bit bits of kind 0: float16, 1: bfloat16) as float32, exactly."""
    if src.shape[0]:
        _convert(kind, False, &src[0], &dst[0], src.shape[0], n_threads)


def half_store_array(const float[::1] src, uint16_t[::1] dst, int kind, int n_threads=1):
    """dst = src rounded to 16 bits of kind (to nearest even, NaN kept NaN)."""
    if src.shape[0]:
        _convert(kind, True, &src[0], &dst[0], src.shape[0], n_threads)


cdef float *_half_widen(int kind, const uint16_t *x, Py_ssize_t size,
                        int n_threads) except NULL:
    cdef float *f = <float *>malloc(max(size, 1) * sizeof(float))
    if f == NULL:
        raise MemoryError()
    _convert(kind, False, x, f, size, n_threads)
    return f


cdef double _half_whole(_Half *h, const label_t *t, int n_threads) except? -1:
    """h over float32 copies by the float32 cores (rows split over threads);
    returns the cross-entropy's loss total (0 for the others)."""
    cdef Py_ssize_t size = h.n_rows * h.n
    cdef float *x = _half_widen(h.kind, h.x, size, n_threads)
    cdef float *y = NULL
    cdef double total = 0.0
    cdef _CrossEntropyArgs *ce = h.ce
    try:
        if h.op == OP_CROSS_ENTROPY_PROB and h.y16 != NULL:
            y = _half_widen(h.kind, h.y16, size, n_threads)
        if h.op == OP_LOGSUMEXP:
            _rows_core(OP_LOGSUMEXP, <const float *>x, h.out32, h.n_rows, h.n, n_threads)
        elif h.op == OP_SOFTMAX or h.op == OP_LOG_SOFTMAX:
            _rows_core(h.op, <const float *>x, x, h.n_rows, h.n, n_threads)
        elif h.op == OP_CROSS_ENTROPY_INDEX:
            total = _cross_entropy_index_core(
                <const float *>x, t, h.n_rows, h.n, h.w, ce.ignore_index, h.smoothing,
                ce.scale, h.loss, x if h.out != NULL else NULL, n_threads, ce.ex, h.cap)
        else:
            total = _cross_entropy_prob_core(
                <const float *>x, <const float *>y if y != NULL else h.y32, h.n_rows, h.n,
                h.w, h.smoothing, ce.scale, h.loss, x if h.out != NULL else NULL,
                n_threads, ce.ex, h.cap)
        if h.out != NULL and h.op != OP_LOGSUMEXP:
            _convert(h.kind, True, x, h.out, size, n_threads)
    finally:
        free(x)
        free(y)
    return total


cdef double _half_run(_Half *h, const label_t *t, int n_threads) except? -1:
    """h over its rows; the cross-entropy's loss total (see _loss_total)."""
    cdef bint ce = h.op == OP_CROSS_ENTROPY_INDEX or h.op == OP_CROSS_ENTROPY_PROB
    if (h.op != OP_SOFTMAX_BACKWARD and h.op != OP_LOG_SOFTMAX_BACKWARD
            and _split_rows(h.n_rows, h.n, n_threads)):
        return _half_whole(h, t, n_threads)
    h.tile_loss = NULL
    if ce:
        h.tile_loss = _tile_loss_alloc(h.n_rows, h.n, sizeof(float))
    try:
        _half_staged(h, t, n_threads)
    except MemoryError:
        free(h.tile_loss)
        raise
    cdef double total = 0.0
    if ce:
        total = _loss_total(h.loss, h.tile_loss, h.n_rows, h.n)
    free(h.tile_loss)
    return total


cdef _Half _half_args(int op, int kind, const uint16_t[:, ::1] x) noexcept:
    cdef _Half h
    memset(&h, 0, sizeof(_Half))
    h.op = op
    h.kind = kind
    h.n_rows = x.shape[0]
    h.n = x.shape[1]
    h.x = &x[0, 0]
    return h


# ---------------------------------------------------------------------------
# the entry points (x and outputs: uint16 views of float16/bfloat16 arrays)

def half_rows(int op, const uint16_t[:, ::1] x, uint16_t[:, ::1] out, int kind,
              int n_threads):
    """softmax (op 0) or log_softmax (op 1) of every row of 16-bit x into out
    (may be x)."""
    if x.shape[0] == 0 or x.shape[1] == 0:
        return
    cdef _Half h = _half_args(op, kind, x)
    h.out = &out[0, 0]
    _half_run(&h, <const int32_t *>NULL, n_threads)


def half_logsumexp_rows(const uint16_t[:, ::1] x, float[::1] out, int kind, int n_threads):
    """The logsumexp of every row of 16-bit x, in float32 (-inf for empty rows)."""
    if x.shape[0] == 0:
        return
    if x.shape[1] == 0:
        out[:] = -INFINITY
        return
    cdef _Half h = _half_args(OP_LOGSUMEXP, kind, x)
    h.out32 = &out[0]
    _half_run(&h, <const int32_t *>NULL, n_threads)


# ---------------------------------------------------------------------------
# where= on 16-bit rows: each row converted into float32 scratch rows of its
# thread (two: the input and the upstream gradient), computed by the float32
# masked row (masked_row, masked.hpp) and rounded to 16 bits: the float32
# kernel's bits on the converted values, with no float32 copy of the arrays.

cdef inline void _half_masked_unit(
    int op, int kind, const uint16_t *x, const uint16_t *g, uint16_t *out, float *out32,
    Py_ssize_t n, const MaskRows *mk, Py_ssize_t i, float *xs
) noexcept nogil:
    """Row i of masked op (MASKED_*) of 16-bit x (g: grad_output or NULL), in
    the scratch rows xs and xs + n; the result rounded into out, or for
    logsumexp into out32[i] (float32, rounded once by the caller)."""
    cdef float *gs = xs + n
    half_load(kind, x + i * n, xs, n)
    if op == MASKED_LOGSUMEXP:
        masked_row(op, <const float *>xs, <const float *>NULL, out32 + i, n, mk, i,
                   <const float *>NULL, <const float *>NULL)
        return
    if g != NULL:
        half_load(kind, g + i * n, gs, n)
    else:
        gs = NULL
    masked_row(op, <const float *>xs, <const float *>gs, xs, n, mk, i, <const float *>NULL,
               <const float *>NULL)
    half_store(kind, xs, out + i * n, n)


def half_masked_rows(int op, const uint16_t[:, ::1] x, object grad_output, object mask,
                     object out, int kind, int n_threads):
    """Masked op (MASKED_*, masked.hpp) over 16-bit rows of one kind: x the
    input (the forward output for the backward ops), grad_output 16-bit like x
    for the backward ops (else None), out 16-bit like x (may be x or
    grad_output), or float32 (n_rows,) for logsumexp; mask as for
    masked_softmax_rows."""
    cdef Py_ssize_t i, n_rows = x.shape[0], n = x.shape[1]
    cdef MaskRows mk
    cdef const uint16_t[:, ::1] g
    cdef uint16_t[:, ::1] o16
    cdef float[::1] o32
    cdef const uint16_t *gp = NULL
    cdef uint16_t *op16 = NULL
    cdef float *op32 = NULL
    if n_rows == 0:
        return
    if op == MASKED_LOGSUMEXP:
        o32 = out
        if n == 0:
            o32[:] = -INFINITY
            return
        op32 = &o32[0]
    elif n == 0:
        return
    else:
        o16 = out
        op16 = &o16[0, 0]
    if grad_output is not None:
        g = grad_output
        gp = &g[0, 0]
    keep = _mask_rows(mask, n, n_threads, &mk)
    cdef const uint16_t *xp = &x[0, 0]
    cdef Py_ssize_t per_thread = 2 * n
    cdef float *scratch = <float *>malloc(max(n_threads, 1) * per_thread * sizeof(float))
    if scratch == NULL:
        raise MemoryError()
    try:
        if n_threads > 1:
            for i in prange(n_rows, nogil=True, schedule="guided", num_threads=n_threads):
                _half_masked_unit(op, kind, xp, gp, op16, op32, n, &mk, i,
                                  scratch + threadid() * per_thread)
        elif n_rows * n < GIL_WORK:
            for i in range(n_rows):
                _half_masked_unit(op, kind, xp, gp, op16, op32, n, &mk, i, scratch)
        else:
            with nogil:
                for i in range(n_rows):
                    _half_masked_unit(op, kind, xp, gp, op16, op32, n, &mk, i, scratch)
    finally:
        free(scratch)


def half_backward_rows(int op, const uint16_t[:, ::1] grad_output,
                       const uint16_t[:, ::1] output, uint16_t[:, ::1] out, int kind,
                       int n_threads):
    """The gradient through softmax (op 0) or log_softmax (op 1), 16-bit
    arrays of one kind; out may be grad_output or output."""
    if output.shape[0] == 0 or output.shape[1] == 0:
        return
    cdef _Half h = _half_args(OP_SOFTMAX_BACKWARD if op == OP_SOFTMAX
                              else OP_LOG_SOFTMAX_BACKWARD, kind, grad_output)
    h.y16 = &output[0, 0]
    h.out = &out[0, 0]
    _half_run(&h, <const int32_t *>NULL, n_threads)


cdef double _half_cross_entropy(
    _Half *h, const label_t *t, const float[::1] weight, Py_ssize_t ignore_index,
    double label_smoothing, double grad_scale, double[::1] row_loss, uint16_t[:, ::1] grad,
    int n_threads, double z_loss, double z_scale, double softcap, double[::1] row_z,
    double[::1] row_acc,
) except? -1:
    cdef CrossEntropyExtra ex
    cdef _CrossEntropyArgs ce
    ce.ex = _extra_args(&ex, z_loss, z_scale, row_z, row_acc)
    ce.ignore_index = ignore_index
    ce.alpha = 1.0 - label_smoothing
    ce.beta = label_smoothing / h.n
    ce.scale = grad_scale
    ce.loss = _loss_rows(row_loss, h.n_rows)
    h.ce = &ce
    h.loss = ce.loss
    h.cap = <float>softcap
    h.smoothing = label_smoothing
    if weight is not None:
        h.w = &weight[0]
    ce.w_total = <double>h.n if h.w == NULL else row_sum(h.w, h.n)
    if grad is not None:
        h.out = &grad[0, 0]
    try:
        return _half_run(h, t, n_threads)
    finally:
        row_scratch_done()


def half_cross_entropy_index_rows(const uint16_t[:, ::1] logits,
                                  const label_t[::1] target,
                                  const float[::1] weight,
                                  Py_ssize_t ignore_index,
                                  double label_smoothing,
                                  double grad_scale,
                                  double[::1] row_loss,
                                  uint16_t[:, ::1] grad,
                                  int kind,
                                  int n_threads,
                                  double z_loss=0.0,
                                  double z_scale=0.0,
                                  double softcap=0.0,
                                  double[::1] row_z=None,
                                  double[::1] row_acc=None):
    """cross_entropy_index_rows (calls.pxi) over 16-bit logits (the gradient
    in 16 bits, of the same kind; grad may be logits); weight in float32."""
    if logits.shape[0] == 0:
        return 0.0
    cdef _Half h = _half_args(OP_CROSS_ENTROPY_INDEX, kind, logits)
    return _half_cross_entropy(&h, &target[0], weight, ignore_index, label_smoothing,
                               grad_scale, row_loss, grad, n_threads, z_loss, z_scale,
                               softcap, row_z, row_acc)


def half_cross_entropy_prob_rows(const uint16_t[:, ::1] logits,
                                 object target,
                                 const float[::1] weight,
                                 double label_smoothing,
                                 double grad_scale,
                                 double[::1] row_loss,
                                 uint16_t[:, ::1] grad,
                                 int kind,
                                 int n_threads,
                                 double z_loss=0.0,
                                 double z_scale=0.0,
                                 double softcap=0.0,
                                 double[::1] row_z=None):
    """cross_entropy_prob_rows over 16-bit logits; target: 16-bit of the
    logits' kind (a uint16 view) or float32, of the logits' shape."""
    if logits.shape[0] == 0:
        return 0.0
    cdef _Half h = _half_args(OP_CROSS_ENTROPY_PROB, kind, logits)
    cdef const uint16_t[:, ::1] y16
    cdef const float[:, ::1] y32
    cdef double[::1] no_acc = None
    if target.dtype == np.uint16:
        y16 = target
        h.y16 = &y16[0, 0]
    else:
        y32 = target
        h.y32 = &y32[0, 0]
    return _half_cross_entropy(&h, <const int32_t *>NULL, weight, 0, label_smoothing,
                               grad_scale, row_loss, grad, n_threads, z_loss, z_scale,
                               softcap, row_z, no_acc)


include "fasthalf.pxi"
