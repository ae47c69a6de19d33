/*
 * strided.hpp -- softmax, log_softmax, logsumexp (and, in stridedce.hpp on
 * these blocks, cross-entropy) over the middle axis of a C-contiguous array
 * viewed as (outer, C, inner): the class (reduced) axis has stride `inner`
 * elements, and the `inner` positions of one outer index are contiguous.  No
 * transposed copy is made: the kernels work on a block of consecutive
 * positions at a time (STRIDED_BYTES of them, up to WIDE_BYTES for few
 * classes), the positions as the vector lanes and the classes as the loop, so
 * every load and store is a contiguous vector.
 *
 * Passes over a block (each reads the block's C rows; a block of C = 1000
 * classes is 256 KiB, so passes 2 and 3 mostly hit L2; a staged block's
 * pass 2 also prefetches the next block, and its pass 3 may stream):
 *   1. m = max over classes;
 *   2. s = sum over classes of exp(x - m) (cross-entropy: also the smoothing
 *      sum and the label's logit);
 *   3. the result: softmax exp(x - m) / s (the exp recomputed rather than
 *      stored in pass 2 and rescaled: one write pass instead of two, and
 *      nothing depends on the block staying in cache), log_softmax
 *      (x - m) - log(s), cross-entropy gradient e sum(y') / s - y'.
 *
 * Sums of exponentials (each <= 1) are accumulated in T over SUM_CLASSES
 * classes per lane and in double across them, like rowops.hpp's SUM_BLOCK
 * scheme; other sums are kept in double.  The blocks depend on the shape only
 * and each lane's sums run over the classes in order, so a position's result
 * does not depend on the thread count or on which thread ran its block.
 * Special values follow the row kernels: NaN propagates, a max of +inf gives
 * NaN, an all -inf slice gives NaN (softmax, log_softmax) or -inf
 * (logsumexp).
 */
#ifndef CSOFTMAX_STRIDED_HPP
#define CSOFTMAX_STRIDED_HPP

#include "rowops.hpp"
#include "tiles.hpp"  /* log_ge1 */

namespace csoftmax {

/* bytes of consecutive positions per block: at least STRIDED_BYTES, 64
 * floats or 32 doubles (four AVX-512 vectors, eight AVX2 ones), and for few
 * classes up to WIDE_BYTES (strided_block_bytes) */
enum { STRIDED_BYTES = 256, WIDE_BYTES = 4096, SUM_CLASSES = 16 };

template <typename T> struct StridedBlock {
    enum { B = STRIDED_BYTES / (int)sizeof(T), WIDE = WIDE_BYTES / (int)sizeof(T) };
};

/* Staging.  Where a block's rows are far apart (a stride of STAGE_STRIDE
 * bytes or more) its passes 2 and 3 read it from a contiguous copy made in
 * pass 1 (C x B elements of thread-private scratch): a large power-of-two
 * stride (inner = 4096 floats: 16 KiB) maps every row of a block to the same
 * few cache sets, and the block came from memory in every pass (logsumexp of
 * 1000 x 4096 over axis 0: 3.3 ms in place, 1.8 ms staged, one thread; at
 * inner = 128 staging cost 10%).  Blocks of more than STAGE_BYTES are read in
 * place.  Whether a block is staged depends on the shape only. */
enum { STAGE_BYTES = 1 << 20, STAGE_STRIDE = 2048 };

/* Wide blocks.  A staged block reads each of its C rows from memory in
 * pass 1 and writes each row of the result in pass 3: C streams of one
 * block's row.  Rows of STRIDED_BYTES (4 cache lines) are too short for the
 * hardware prefetchers and the memory's open pages, so where the classes are
 * few the block widens, doubling while C x width stays within WIDE_STAGE
 * (the staged block in L2) up to WIDE_BYTES (a page), as long as the outer
 * index keeps two blocks.  The segmentation loss 8x21x256x256 (blocks of
 * 4 KiB): loss + gradient 0.76x the time, loss 0.80x (AVX2, 2 threads).
 * Many classes keep STRIDED_BYTES: their blocks are large already. */
enum { WIDE_STAGE = 1 << 17 };

/* the bytes of positions per block over C classes of inner_bytes each: a
 * power of two from STRIDED_BYTES to WIDE_BYTES; the shape's, not the
 * thread count's */
static inline idx_t strided_block_bytes(idx_t C, idx_t inner_bytes) {
    idx_t b = STRIDED_BYTES;
    if (inner_bytes >= (idx_t)STAGE_STRIDE)
        while (2 * b <= (idx_t)WIDE_BYTES && C * 2 * b <= (idx_t)WIDE_STAGE &&
               4 * b <= inner_bytes)
            b *= 2;
    return b;
}

/* positions per block (strided_block_bytes) */
template <typename T> static inline idx_t strided_width(idx_t C, idx_t inner) {
    return strided_block_bytes(C, inner * (idx_t)sizeof(T)) / (idx_t)sizeof(T);
}

/* Rows of a block that are not contiguous (inner > B) lie in a new page each
 * (at inner >= 1024 floats), where the hardware prefetchers stop: the passes
 * that read or write them in place prefetch PREFETCH_ROWS rows ahead. */
enum { PREFETCH_ROWS = 8 };

/* From row c of a block in place (p its start; C rows inner apart, w
 * positions each), the row PREFETCH_ROWS ahead, where the rows are apart
 * and it is one of the block's: for reading, or for writing (write). */
template <typename T>
static inline void prefetch_ahead(const T *p, idx_t c, idx_t C, idx_t inner, idx_t w,
                                  int write) {
    if (inner <= w || c + PREFETCH_ROWS >= C) return;
    p += PREFETCH_ROWS * inner;
    for (idx_t k = 0; k < w; k += 64 / (idx_t)sizeof(T)) {
        if (write) __builtin_prefetch(p + k, 1);
        else __builtin_prefetch(p + k, 0);
    }
}

/* Streamed rows.  Pass 3 of a staged block writes each row of the result
 * once and reads nothing of it back; where the output is larger than the
 * caches (the caller's stream flag), the row is formed in an L1 buffer and
 * written with non-temporal stores, since a plain store first reads the line:
 * a third of the traffic of a loss + gradient.  stream_row copies with them
 * (the whole 64-byte lines; plain stores at the ends and in builds without
 * AVX); stream_fence orders them before the unit returns. */
template <typename T> static inline void stream_row(T *dst, const T *src, idx_t n) {
    idx_t i = 0;
#ifdef __AVX__
    /* whole cache lines only: a line written partly by plain stores and
     * partly streamed is flushed half-full (softmax of 1000x4096 over axis 0
     * into an output 16 bytes off a line took 4-9x the time) */
    const idx_t line = 64 / (idx_t)sizeof(T), half = line / 2;
    for (; i < n && ((uintptr_t)(dst + i) & 63) != 0; ++i) dst[i] = src[i];
    for (; i + line <= n; i += line) {
        _mm256_stream_si256((__m256i *)(dst + i), _mm256_loadu_si256((const __m256i *)(src + i)));
        _mm256_stream_si256((__m256i *)(dst + i + half),
                            _mm256_loadu_si256((const __m256i *)(src + i + half)));
    }
#endif
    for (; i < n; ++i) dst[i] = src[i];
}

/* Whether a block streams its rows (given the caller's stream flag): staged
 * (pass 3 reads the stage only), and either rows of STREAM_ROW_BYTES or more
 * (a partial line at each end) or rows of whole lines (out and the row
 * distance a multiple of 64 bytes).  Short rows off the lines (softmax of
 * 1000x4096 over axis 0, blocks of 256 bytes, output 16 bytes off a line)
 * were slower streamed: the line each pair of blocks shares is read twice. */
enum { STREAM_ROW_BYTES = 1024 };
template <typename T>
static inline bool streams_rows(const T *stage, const T *out, idx_t inner, idx_t w) {
    const idx_t row = w * (idx_t)sizeof(T);
    return stage != NULL &&
           (row >= (idx_t)STREAM_ROW_BYTES ||
            (((uintptr_t)out & 63) == 0 && row % 64 == 0 && inner * (idx_t)sizeof(T) % 64 == 0));
}

static inline void stream_fence(void) {
#ifdef __AVX__
    _mm_sfence();
#endif
}

/* Pass 3 of a block: its C rows of w positions (row distance inner in out),
 * each formed whole by write_row(c, dst) -- into out's row c, or where the
 * block streams its rows (streams_rows) into an L1 row then streamed there --
 * with the rows PREFETCH_ROWS ahead prefetched for writing where they are
 * not streamed.  W: the block's constant width, 0 for any (as the sblock
 * functions). */
template <typename T, int W, typename WriteRow>
static inline void sblock_write_rows(T *out, idx_t C, idx_t inner, idx_t w, const T *stage,
                                     int stream, WriteRow write_row) {
    enum { BW = W > 0 ? W : StridedBlock<T>::WIDE };
    stream = stream && streams_rows(stage, out, inner, w);
    T row[BW];                         /* a streamed row, formed here */
    for (idx_t c = 0; c < C; ++c) {
        T *oc = stream ? row : out + c * inner;
        if (!stream) prefetch_ahead(oc, c, C, inner, w, 1);
        write_row(c, oc);
        if (stream) stream_row(out + c * inner, row, w);
    }
    if (stream) stream_fence();
}

template <typename T> static inline idx_t strided_stage_elems(const T *, idx_t C, idx_t inner) {
    const idx_t bw = strided_width<T>(C, inner);
    return inner * (idx_t)sizeof(T) >= (idx_t)STAGE_STRIDE && inner > bw &&
                   C * bw * (idx_t)sizeof(T) <= (idx_t)STAGE_BYTES
               ? C * bw : 0;
}

/* Rows of a block taken together by passes 1 and 2 (sblock_max,
 * sblock_exp_sum) where its rows are long (STRIDED_LONG_ROW bytes and more:
 * the wide blocks of few classes): each position's running max or partial
 * sum is then loaded and stored once per STRIDED_ROWS rows instead of once a
 * row, the rows' values still taken in class order (the same bits).  One row
 * at a time, that load and store around each vector's one max or add were a
 * third of pass 1's instructions and pass 2's loop set-up came once a row:
 * the segmentation loss 8x21x256x256 (rows of 2 KiB) took 0.93x the time,
 * its logsumexp 0.89x, the loss + gradient 0.95x (AVX2, one thread).  Short
 * rows (STRIDED_BYTES: many classes) keep one row at a time: four rows of 4
 * cache lines each, read side by side, are too short for the prefetchers
 * that follow one row after the next, and the softmax of 1000x4096 over axis
 * 0 took 1.2x the time. */
enum { STRIDED_ROWS = 4, STRIDED_LONG_ROW = 1024 };

template <typename T> static inline int strided_rows_per_step(idx_t w) {
    return w * (idx_t)sizeof(T) >= (idx_t)STRIDED_LONG_ROW ? STRIDED_ROWS : 1;
}

/* m[j] = max over classes of x[c * inner + j], j < w (+0 for a zero max).
 * Unless stage is NULL, the block is also copied into stage (C x B,
 * contiguous): the later passes read it there (see strided_unit).
 * rows_max takes R rows of x (inner apart; strided_rows_per_step). */
template <int R, typename T>
CS_INLINE void rows_max(const T *x, idx_t inner, idx_t w, T *m, T *stage) {
#pragma omp simd
    for (idx_t j = 0; j < w; ++j) {
        T mj = m[j];
        for (int r = 0; r < R; ++r) {
            T v = x[r * inner + j];
            if (stage != NULL) stage[r * w + j] = v;
            mj = v > mj ? v : mj;
        }
        m[j] = mj;
    }
}

template <typename T, int W>
static inline void sblock_max(const T *x, idx_t C, idx_t inner, idx_t w_, T *m, T *stage) {
    const idx_t w = W > 0 ? (idx_t)W : w_;
    for (idx_t j = 0; j < w; ++j) m[j] = (T)-INFINITY;
    idx_t c = 0;
    for (; strided_rows_per_step<T>(w) > 1 && c + STRIDED_ROWS <= C; c += STRIDED_ROWS) {
        for (int r = 0; r < STRIDED_ROWS; ++r)
            prefetch_ahead(x + (c + r) * inner, c + r, C, inner, w, 0);
        if (stage != NULL)
            rows_max<STRIDED_ROWS>(x + c * inner, inner, w, m, stage + c * w);
        else
            rows_max<STRIDED_ROWS, T>(x + c * inner, inner, w, m, NULL);
    }
    for (; c < C; ++c) {
        prefetch_ahead(x + c * inner, c, C, inner, w, 0);
        if (stage != NULL)
            rows_max<1>(x + c * inner, inner, w, m, stage + c * w);
        else
            rows_max<1, T>(x + c * inner, inner, w, m, NULL);
    }
    for (idx_t j = 0; j < w; ++j) m[j] = m[j] + (T)0;
}

/* sblock_max of the soft-capped block (cap != 0): each class row capped into
 * stage (row_softcap: the cap of every path), the max taken there.  The
 * later passes read the capped block from stage, and the gradient goes back
 * through the cap from it (row_softcap_grad, row by row in pass 3). */
template <typename T, int W>
static inline void sblock_capped_max(const T *x, idx_t C, idx_t inner, idx_t w_, T *m, T *stage,
                                     T cap) {
    const idx_t w = W > 0 ? (idx_t)W : w_;
    for (idx_t j = 0; j < w; ++j) m[j] = (T)-INFINITY;
    for (idx_t c = 0; c < C; ++c) {
        const T *xc = x + c * inner;
        T *sc = stage + c * w;
        prefetch_ahead(xc, c, C, inner, w, 0);
        row_softcap(xc, sc, w, cap);
#pragma omp simd
        for (idx_t j = 0; j < w; ++j) m[j] = sc[j] > m[j] ? sc[j] : m[j];
    }
    for (idx_t j = 0; j < w; ++j) m[j] = m[j] + (T)0;
}

/* ---- how a block's rows come in and go out -----------------------------
 * A block kernel reads its rows from memory in pass 1 and writes the
 * result's rows in its last pass; in between it works on the staged block
 * (or in place).  Rows: its rows stored as T, the kernels' own type;
 * HalfRows (halfstrided.hpp) reads and writes 16-bit rows, converted to and
 * from the float32 stage in those two passes, so that a 16-bit block moves
 * its own bytes only (no float32 copy of its rows beside the stage). */
template <typename T> struct Rows {
    typedef T Stored;
    /* the block's values in place (x itself; HalfRows: none, its blocks are
     * always staged) */
    static const T *in_place(const T *x) { return x; }
    static T *in_place(T *x) { return x; }
    template <int W> void max(const T *x, idx_t C, idx_t inner, idx_t w, T *m, T *stage) const {
        sblock_max<T, W>(x, C, inner, w, m, stage);
    }
    template <int W>
    void capped_max(const T *x, idx_t C, idx_t inner, idx_t w, T *m, T *stage, T cap) const {
        sblock_capped_max<T, W>(x, C, inner, w, m, stage, cap);
    }
    template <int W, typename WriteRow>
    void write(T *out, idx_t C, idx_t inner, idx_t w, const T *stage, int stream,
               WriteRow write_row) const {
        sblock_write_rows<T, W>(out, C, inner, w, stage, stream, write_row);
    }
};

/* The next block of a staged one, read while this block's pass 2 runs
 * (strided_next): pass 1 of a block otherwise waits on memory for its C
 * rows (the segmentation loss 8x21x256x256 spent a quarter of its time
 * there), as a row's max pass did before the row kernels prefetched the next
 * row.  Only for blocks of at most a quarter of the L2 cache
 * (strided_next_bytes: both blocks then fit in half of it), in spans of
 * NEXT_SPAN elements (4 prefetches per span of floats): a burst of a whole row
 * at once was slower for the row kernels. */
template <typename T> struct StridedNext {
    const T *x;     /* its first element in place, or NULL for none */
    idx_t w, ld;    /* its width; its rows' distance (inner) */
};
enum { NEXT_SPAN = 64 };

/* The largest block (C x width bytes) whose next block is prefetched: a
 * quarter of the L2 cache that sysconf reports for the CPU the process
 * started on, at least WIDE_STAGE (the limit before the L2 was read, where it
 * is not known: both blocks within 256 KiB).  The softmax of 1000x4096 over axis 0
 * (blocks of 250 KiB) gains with a 1 MiB L2 (AMD Zen 4: 0.85x the time on
 * the AVX-512 kernels, 0.88x on the AVX2 ones, one thread).  Prefetches
 * only: no result depends on it. */
static inline idx_t strided_next_bytes(void) {
    static const idx_t limit = [] {
        idx_t quarter = (idx_t)(l2_cache_bytes() / 4);
        return quarter > (idx_t)WIDE_STAGE ? quarter : (idx_t)WIDE_STAGE;
    }();
    return limit;
}

/* part[j] += exp(x_r[j] - m[j]) for R rows r (ld apart), j in [k0, k1), in
 * row order (see strided_rows_per_step); with e (not NULL) the exponentials also
 * stored there (rows e_ld apart), else Summand: the terms of
 * exp_nonpositive_as<true>.  lo: the clamp of the form taken. */
template <bool Summand, int R, typename T>
CS_INLINE void rows_exp_add(const T *x, idx_t ld, idx_t k0, idx_t k1, const T *m, T lo, T *e,
                            idx_t e_ld, T *part) {
    if (e != NULL) {
#pragma omp simd
        for (idx_t j = k0; j < k1; ++j) {
            T p = part[j];
            for (int r = 0; r < R; ++r) {
                T v = exp_nonpositive((T)(x[r * ld + j] - m[j]), lo);
                e[r * e_ld + j] = v;
                p += v;
            }
            part[j] = p;
        }
    } else {
#pragma omp simd
        for (idx_t j = k0; j < k1; ++j) {
            T p = part[j];
            for (int r = 0; r < R; ++r)
                p += exp_nonpositive_as<Summand>((T)(x[r * ld + j] - m[j]), lo);
            part[j] = p;
        }
    }
}

/* rows_exp_add of the R rows from row c over the block's w positions, in
 * spans of NEXT_SPAN positions, each prefetching its share of the next
 * block's rows (the spans do not change the arithmetic) */
template <bool Summand, int R, typename T, typename N>
CS_INLINE void rows_exp_sum_spans(const T *x, idx_t c, idx_t ld, idx_t w, const T *m, T lo,
                                  T *e, idx_t e_ld, T *part, const StridedNext<N> &next) {
    for (idx_t k0 = 0; k0 < w; k0 += NEXT_SPAN) {
        idx_t k1 = w - k0 > NEXT_SPAN ? k0 + NEXT_SPAN : w;
        if (next.x != NULL && k0 < next.w)
            for (int r = 0; r < R; ++r)
                prefetch_columns(next.x + (c + r) * next.ld, k0, k1 < next.w ? k1 : next.w);
        rows_exp_add<Summand, R>(x + c * ld, ld, k0, k1, m, lo, e != NULL ? e + c * e_ld : e,
                                 e_ld, part);
    }
}

/* s[j] = sum over classes of exp(x - m[j]): in T over SUM_CLASSES classes,
 * then in double.  With e (not NULL) the exponentials are also stored there
 * (rows e_ld apart) for pass 3 to rescale (see strided_store_exp); else
 * Summand: the terms of exp_nonpositive_as<true> (the op reads nothing but the sum, as
 * the row kernels' row_exp_sum).  strided_rows_per_step rows at a time. */
template <bool Summand, typename T, int W, typename N>
CS_INLINE void sblock_exp_sum(const T *x, idx_t C, idx_t inner, idx_t w_, const T *m,
                             double *s, T *e, idx_t e_ld, const StridedNext<N> &next) {
    static_assert(SUM_CLASSES % STRIDED_ROWS == 0, "a group of classes is whole row groups");
    const idx_t w = W > 0 ? (idx_t)W : w_;
    const T lo = e != NULL ? exp_lo<T>() : exp_lo<T, Summand>();
    T part[W > 0 ? W : StridedBlock<T>::WIDE];
    for (idx_t j = 0; j < w; ++j) s[j] = 0.0;
    for (idx_t c0 = 0; c0 < C; c0 += SUM_CLASSES) {
        idx_t c1 = C - c0 > SUM_CLASSES ? c0 + SUM_CLASSES : C, c = c0;
        for (idx_t j = 0; j < w; ++j) part[j] = 0;
        for (; strided_rows_per_step<T>(w) > 1 && c + STRIDED_ROWS <= c1; c += STRIDED_ROWS)
            rows_exp_sum_spans<Summand, STRIDED_ROWS>(x, c, inner, w, m, lo, e, e_ld, part, next);
        for (; c < c1; ++c)
            rows_exp_sum_spans<Summand, 1>(x, c, inner, w, m, lo, e, e_ld, part, next);
        for (idx_t j = 0; j < w; ++j) s[j] += (double)part[j];
    }
}

/* Whether pass 2 stores a block's exponentials (in its staged copy, else in
 * the output) for pass 3 to rescale, rather than pass 3 computing them
 * again: where the block stays in L2 between the passes (C x STRIDED_BYTES
 * <= STORE_EXP_BYTES), a store and a load cost less than an exp (AVX2, the
 * segmentation loss 8x21x256x256: 1.1x faster; softmax of 64x1000x64 over
 * axis 1: 1.2x); larger blocks would go to memory and back.  A staged block
 * keeps them in the stage: the output's rows of a large power-of-two stride
 * share a few cache sets (see STAGE_STRIDE).  The values are the same either
 * way.  Depends on the shape only. */
enum { STORE_EXP_BYTES = 1 << 18 };
static inline bool strided_store_exp(idx_t C) {
    return C * (idx_t)STRIDED_BYTES <= (idx_t)STORE_EXP_BYTES;
}

/* 1 if the column x[c * inner], c < C, holds a NaN (rare lanes only) */
template <typename T> static inline int column_has_nan(const T *x, idx_t C, idx_t inner) {
    for (idx_t c = 0; c < C; ++c)
        if (x[c * inner] != x[c * inner]) return 1;
    return 0;
}

enum { STRIDED_SOFTMAX = 0, STRIDED_LOG_SOFTMAX = 1, STRIDED_LOGSUMEXP = 2 };

/* one block of w positions (W > 0: w == W known at compile time).
 * x: the block's first element; out: likewise (softmax, log_softmax); lse:
 * its w results (logsumexp). */
template <int Op, typename T, int W, typename IO = Rows<T>>
static inline void sblock_softmax(const typename IO::Stored *x, typename IO::Stored *out,
                                  T *lse, idx_t C, idx_t inner, idx_t w_, T *stage, int stream,
                                  const StridedNext<typename IO::Stored> &next,
                                  const IO &io = IO()) {
    const idx_t w = W > 0 ? (idx_t)W : w_;
    enum { BW = W > 0 ? W : StridedBlock<T>::WIDE };
    T m[BW];
    double s[BW];
    T f[BW];
    io.template max<W>(x, C, inner, w, m, stage);
    /* the block as read from here on */
    const T *xr = stage != NULL ? stage : IO::in_place(x);
    const idx_t ld = stage != NULL ? w : inner;
    /* the exponentials kept for pass 3: in the staged block, else in out */
    const bool store = Op == STRIDED_SOFTMAX && strided_store_exp(C);
    T *e = store ? (stage != NULL ? stage : IO::in_place(out)) : (T *)NULL;
    const idx_t e_ld = stage != NULL ? w : inner;
    sblock_exp_sum<Op != STRIDED_SOFTMAX, T, W>(xr, C, ld, w, m, s, e, e_ld, next);
    /* The logs by log_ge1 in one vector loop (s is in [1, C] or NaN: the
     * largest term is exp(0) = 1), as the tiles of short rows take theirs: a
     * libm log a position cost as much as the exp-sum over 10-21 classes
     * (logsumexp of 4x10x4096 over axis 1: 0.56 ns an element, softmax 0.32;
     * AVX-512, one thread).  Positions whose max is +-inf are redone apart. */
    if (Op == STRIDED_LOGSUMEXP) {
        int special = 0;
#pragma omp simd reduction(| : special)
        for (idx_t j = 0; j < w; ++j) {
            lse[j] = (T)((double)m[j] + log_ge1(s[j]));
            special |= m[j] == (T)INFINITY || m[j] == (T)-INFINITY;
        }
        if (special)
            for (idx_t j = 0; j < w; ++j)
                if (m[j] == (T)INFINITY || m[j] == (T)-INFINITY)
                    lse[j] = column_has_nan(xr + j, C, ld) ? (T)NAN : m[j];
        return;
    }
#pragma omp simd
    for (idx_t j = 0; j < w; ++j)
        f[j] = Op == STRIDED_SOFTMAX ? (T)(1.0 / s[j]) : (T)log_ge1(s[j]);
    const T lo = exp_lo<T>();
    io.template write<W>(out, C, inner, w, stage, stream, [&](idx_t c, T *oc) {
        const T *xc = xr + c * ld;
        if (Op == STRIDED_SOFTMAX && store) {
            const T *ec = e + c * e_ld;
#pragma omp simd
            for (idx_t j = 0; j < w; ++j) oc[j] = ec[j] * f[j];
        } else if (Op == STRIDED_SOFTMAX) {
#pragma omp simd
            for (idx_t j = 0; j < w; ++j) oc[j] = exp_nonpositive((T)(xc[j] - m[j]), lo) * f[j];
        } else {
#pragma omp simd
            for (idx_t j = 0; j < w; ++j) oc[j] = (xc[j] - m[j]) - f[j];
        }
    });
}

/* Where unit u's block lies in (outer, C, inner): outer index u / blocks,
 * block u % blocks; its first element's offset in a (outer, C, inner) array
 * (el) and in a per-position (outer, inner) array (pos), and its width. */
struct StridedBlockAt {
    idx_t el, pos, w, j0;   /* j0: its first position's index in the outer index */
};

/* The blocks of a call: bw positions wide from the first position of each
 * outer index, except where narrow rows would stream (see streams_rows) into
 * an output off the cache lines: then a first block of `shift` positions
 * puts the others on whole lines, so that they stream (softmax of 1000x4096
 * over axis 0 into an output 16 or 32 bytes off a line: 0.82-0.84x the time,
 * medians).  A position's values do not depend on where its block starts
 * (its sums run over the classes in order; tested bitwise), and out's
 * address only moves the starts; a soft-capped call (cap != 0) does not
 * shift (row_softcap picks its form per vector of a row: moved vectors can
 * round differently).  nb: the blocks of an outer index. */
struct StridedBlocks {
    idx_t bw, shift, nb;
};

/* The blocks at width bw, shifted as above where `shifts` (the block would
 * be staged and may stream; strided_blocks_of and strided_backward_blocks
 * say when) and its rows are narrower than STREAM_ROW_BYTES */
template <typename T>
static inline StridedBlocks strided_blocks_at_width(const T *out, idx_t inner, idx_t bw,
                                                    bool shifts) {
    StridedBlocks b = {bw, 0, 0};
    const idx_t line = 64, size = (idx_t)sizeof(T), a = (idx_t)((uintptr_t)out % line);
    if (shifts && bw * size < (idx_t)STREAM_ROW_BYTES && inner * size % line == 0 &&
        a % size == 0)
        b.shift = (line - a) % line / size;
    b.nb = (b.shift > 0) + (inner - b.shift + bw - 1) / bw;
    return b;
}

template <typename T>
static inline StridedBlocks strided_blocks_of(const T *out, idx_t C, idx_t inner, int stream,
                                             T cap) {
    return strided_blocks_at_width(out, inner, strided_width<T>(C, inner),
                                   stream && cap == (T)0 && strided_stage_elems(out, C, inner));
}

/* the units (blocks) of an outer index: see strided_blocks_of */
template <typename T>
static inline idx_t strided_units(const T *out, idx_t C, idx_t inner, int stream, T cap) {
    return strided_blocks_of(out, C, inner, stream, cap).nb;
}

static inline StridedBlockAt strided_block_at(const StridedBlocks &b, idx_t C, idx_t inner,
                                              idx_t u) {
    idx_t o = u / b.nb, k = u - o * b.nb;
    idx_t j0 = b.shift > 0 && k > 0 ? b.shift + (k - 1) * b.bw : k * b.bw;
    idx_t w = b.shift > 0 && k == 0 ? b.shift : (inner - j0 > b.bw ? b.bw : inner - j0);
    StridedBlockAt at = {o * C * inner + j0, o * inner + j0, w, j0};
    return at;
}

/* Unit u's block of a call (strided_blocks_of, then strided_block_at). */
template <typename T>
static inline StridedBlockAt strided_unit_block(const T *out, idx_t C, idx_t inner, int stream,
                                                T cap, idx_t u) {
    return strided_block_at(strided_blocks_of(out, C, inner, stream, cap), C, inner, u);
}

/* the block after the staged block `at` of x, when there is one in the same
 * outer index and `at` is at most strided_next_bytes (see StridedNext) */
template <typename T>
static inline StridedNext<T> strided_next(const T *x, idx_t C, idx_t inner, StridedBlockAt at,
                                          const T *stage) {
    StridedNext<T> next = {NULL, 0, inner};
    idx_t j1 = at.j0 + at.w;
    if (stage != NULL && j1 < inner && C * at.w * (idx_t)sizeof(T) <= strided_next_bytes()) {
        next.x = x + at.el + at.w;
        next.w = inner - j1 < at.w ? inner - j1 : at.w;
    }
    return next;
}

/* ex with its per-position arrays from position pos (a copy in *bex), or
 * NULL for none */
static inline const CrossEntropyExtra *extra_at(const CrossEntropyExtra *ex, idx_t pos,
                                                CrossEntropyExtra *bex) {
    if (ex == NULL) return ex;
    *bex = *ex;
    if (bex->zrow != NULL) bex->zrow += pos;
    if (bex->acc != NULL) bex->acc += pos;
    return bex;
}

/* Unit u of op over x (outer, C, inner) (see strided_block_at).  out:
 * (outer, C, inner), or (outer, inner) for logsumexp; stream: a staged
 * block's rows are streamed (see stream_row).  Out of line (see
 * CS_REDUCTION): one compiled copy for the serial and the threaded loop. */
template <typename T>
static CS_REDUCTION void strided_unit(int op, const T *x, T *out, idx_t C, idx_t inner, idx_t u,
                                      T *stage, int stream) {
    enum { B = StridedBlock<T>::B };
    StridedBlockAt at = strided_unit_block(out, C, inner, stream, (T)0, u);
    idx_t w = at.w;
    const T *xb = x + at.el;
    T *ob = op == STRIDED_LOGSUMEXP ? NULL : out + at.el;
    T *lb = op == STRIDED_LOGSUMEXP ? out + at.pos : NULL;
    const StridedNext<T> next = strided_next(x, C, inner, at, stage);
    if (w == B) {
        if (op == STRIDED_SOFTMAX) sblock_softmax<STRIDED_SOFTMAX, T, B>(xb, ob, lb, C, inner, w, stage, stream, next);
        else if (op == STRIDED_LOG_SOFTMAX) sblock_softmax<STRIDED_LOG_SOFTMAX, T, B>(xb, ob, lb, C, inner, w, stage, stream, next);
        else sblock_softmax<STRIDED_LOGSUMEXP, T, B>(xb, ob, lb, C, inner, w, stage, stream, next);
    } else {
        if (op == STRIDED_SOFTMAX) sblock_softmax<STRIDED_SOFTMAX, T, 0>(xb, ob, lb, C, inner, w, stage, stream, next);
        else if (op == STRIDED_LOG_SOFTMAX) sblock_softmax<STRIDED_LOG_SOFTMAX, T, 0>(xb, ob, lb, C, inner, w, stage, stream, next);
        else sblock_softmax<STRIDED_LOGSUMEXP, T, 0>(xb, ob, lb, C, inner, w, stage, stream, next);
    }
}

}  // namespace csoftmax

#endif
