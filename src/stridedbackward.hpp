/*
 * stridedbackward.hpp -- the gradients through softmax and log_softmax over
 * the middle axis of C-contiguous arrays viewed as (outer, C, inner) (see
 * strided.hpp), without transposed copies: the rows path moved the axis last
 * in three copies (grad_output, output and the result) and took 5-10x
 * PyTorch's time (softmax_backward of 64x1000x64 over axis 1: 25 ms against
 * 5.3 ms; of 1000x4096 over axis 0: 83 ms against 8.5 ms; AVX2, 2 threads).
 *
 * A unit is a block of w consecutive positions of one outer index, the
 * positions as the vector lanes and the classes as the loop.  Two passes:
 *   1. s[j] = sum over classes of g a (softmax) or of g (log_softmax), in
 *      double, as the row kernels' row_dot and row_sum (the products of two
 *      floats are exact in double);
 *   2. out = a (g - (T)s) (softmax), g - exp(o) (T)s (log_softmax): the
 *      row kernels' formulas.
 * Each position's sum runs over the classes in order, so its result does not
 * depend on its block or the thread count; it may differ from the rows
 * path's (vector partial sums) in the sum's last bit.
 *
 * Blocks are BACKWARD_BLOCK_BYTES of the two inputs at most (pass 2 finds
 * them in L2), at least one cache line of each row.  Where the rows are far
 * apart (STAGE_STRIDE, see strided.hpp) and many (BACKWARD_STAGE_CLASSES)
 * pass 1 copies the block's rows of both inputs into thread-private scratch,
 * which pass 2 reads: rows a large power of two apart share a few cache
 * sets, and pass 2 found them evicted.
 */
#ifndef CSOFTMAX_STRIDEDBACKWARD_HPP
#define CSOFTMAX_STRIDEDBACKWARD_HPP

#include "strided.hpp"

namespace csoftmax {

enum { BACKWARD_BLOCK_BYTES = 1 << 19 };

/* Positions per block over C classes of inner positions: strided_width, then
 * halved while the block of both inputs exceeds BACKWARD_BLOCK_BYTES, down
 * to a cache line of each row.  The shape's, not the thread count's. */
template <typename T> static inline idx_t strided_backward_width(idx_t C, idx_t inner) {
    idx_t w = strided_width<T>(C, inner);
    const idx_t line = 64 / (idx_t)sizeof(T);
    while (w > line && 2 * C * w * (idx_t)sizeof(T) > (idx_t)BACKWARD_BLOCK_BYTES) w /= 2;
    return w;
}

/* Staging needs many classes too: BACKWARD_STAGE_CLASSES or more.  With
 * fewer the block's rows stay in L2 without it, and the copy is extra work
 * (pass 2 runs two loads and a store an element): a C++ microbenchmark of
 * this header, one thread, float32, staged (streamed where the kernels
 * stream) / in place time, AVX-512 and AVX2: 10 classes 1.09-1.41x, 21
 * classes 1.07-1.40x, 64-100 classes 1.07-1.39x, 200 classes 0.86-1.26x,
 * 1000 classes 0.58-0.90x (4096-65536 positions, in L2 and from memory). */
enum { BACKWARD_STAGE_CLASSES = 128 };

/* scratch elements per thread for staged blocks (both inputs), 0 where the
 * blocks are read in place */
template <typename T>
static inline idx_t strided_backward_stage_elems(const T *, idx_t C, idx_t inner) {
    const idx_t w = strided_backward_width<T>(C, inner);
    return inner * (idx_t)sizeof(T) >= (idx_t)STAGE_STRIDE && inner > w &&
                   C >= (idx_t)BACKWARD_STAGE_CLASSES
               ? 2 * C * w
               : 0;
}

/* The blocks of a call, strided_blocks_of's layout at this width: where
 * staged blocks stream rows shorter than STREAM_ROW_BYTES into an output off
 * the cache lines, a first block of `shift` positions puts the others on
 * whole lines, so that they stream (softmax_backward of 1000x4096 over axis 0
 * into NumPy's output, 16 or 48 bytes off a line: 4.4-5.4 ms -> 4.2-4.4 ms,
 * as into an aligned one; AVX2, 2 threads, minimum times of separate runs).
 * A position's values do not depend on its block (a test). */
template <typename T>
static inline StridedBlocks strided_backward_blocks(const T *out, idx_t C, idx_t inner,
                                                    int stream) {
    return strided_blocks_at_width(out, inner, strided_backward_width<T>(C, inner),
                                   stream && strided_backward_stage_elems(out, C, inner));
}

/* the blocks of an outer index */
template <typename T>
static inline idx_t strided_backward_units(const T *out, idx_t C, idx_t inner, int stream) {
    return strided_backward_blocks(out, C, inner, stream).nb;
}

/* One class row of a block's w positions, the two passes' arithmetic (the
 * 16-bit unit of halfstrided.hpp runs the same on its converted rows):
 * s[j] += g a (Dot) or g, in double ... */
template <bool Dot, typename T>
static inline void backward_row_sums(const T *gc, const T *ac, double *s, idx_t w) {
    if (Dot) {
#pragma omp simd
        for (idx_t j = 0; j < w; ++j) s[j] += (double)gc[j] * (double)ac[j];
    } else {
#pragma omp simd
        for (idx_t j = 0; j < w; ++j) s[j] += (double)gc[j];
    }
}

/* ... and out = a (g - f) (Softmax) or g - exp(a) f, f the sums rounded to T */
template <bool Softmax, typename T>
static inline void backward_row_out(const T *gc, const T *ac, const T *f, T *oc, idx_t w) {
    if (Softmax) {
#pragma omp simd
        for (idx_t j = 0; j < w; ++j) oc[j] = ac[j] * (gc[j] - f[j]);
    } else {
#pragma omp simd
        for (idx_t j = 0; j < w; ++j) oc[j] = gc[j] - exp_poly(ac[j]) * f[j];
    }
}

/* Pass 2 of a block whose rows are one contiguous span of out (w == inner:
 * the block holds all of an outer index's positions, as in 64x1000x64 over
 * axis 1), streamed as that span: each row formed in an L1 buffer behind the
 * part line its predecessor left there, the buffer's whole lines streamed
 * and the rest carried to the next row, so that only the span's first and
 * last lines take plain stores, wherever the output lies on the lines
 * (sblock_write_rows streams a staged block's rows only, each on whole
 * lines; the forward kernels' unstaged blocks read their exponentials back
 * from the output).  A plain store first reads its line: softmax_backward
 * of 64x1000x64 over axis 1 took 0.84-0.92x the time streamed, on the lines
 * or 16 bytes off them, and went from 1.43-1.47x PyTorch's speed to
 * 1.52-1.77x (AVX2, 2 threads, interleaved).  Each element is formed from
 * its own inputs before it is written, so out may be an input. */
template <typename T, int W, typename WriteRow>
static inline void sblock_stream_span(T *out, idx_t C, idx_t w, WriteRow write_row) {
    enum { BW = W > 0 ? W : StridedBlock<T>::WIDE, LINE = 64 / (int)sizeof(T) };
    T buf[BW + LINE];
    idx_t held = 0;            /* elements of buf bound for out onwards, < LINE */
    for (idx_t c = 0; c < C; ++c) {
        write_row(c, buf + held);
        const idx_t n = held + w;
        T *cut = (T *)((uintptr_t)(out + n) & ~(uintptr_t)63);
        const idx_t k = cut > out ? (idx_t)(cut - out) : 0;
        stream_row(out, buf, k);
        for (idx_t i = k; i < n; ++i) buf[i - k] = buf[i];
        out += k;
        held = n - k;
    }
    for (idx_t i = 0; i < held; ++i) out[i] = buf[i];
    stream_fence();
}

/* pass 1 of a block: s[j] = sum_c g a (Dot) or sum_c g, in double; with a
 * stage, the rows of g and a copied into gs and as (C x w each) */
template <bool Dot, typename T, int W>
static inline void sblock_backward_sums(const T *g, const T *a, idx_t C, idx_t inner, idx_t w_,
                                        double *s, T *gs, T *as) {
    const idx_t w = W > 0 ? (idx_t)W : w_;
    for (idx_t j = 0; j < w; ++j) s[j] = 0.0;
    for (idx_t c = 0; c < C; ++c) {
        const T *gc = g + c * inner, *ac = a + c * inner;
        prefetch_ahead(gc, c, C, inner, w, 0);
        if (Dot || gs != NULL) prefetch_ahead(ac, c, C, inner, w, 0);
        backward_row_sums<Dot>(gc, ac, s, w);
        if (gs != NULL) {
            memcpy(gs + c * w, gc, (size_t)w * sizeof(T));
            memcpy(as + c * w, ac, (size_t)w * sizeof(T));
        }
    }
}

/* one block: g, a, out its first elements in (outer, C, inner) arrays; out
 * may be g or a.  Where the caller streams (stream), a block of all of an
 * outer index's positions streams its span (sblock_stream_span), a staged
 * one its rows. */
template <bool Softmax, typename T, int W>
static inline void sblock_backward(const T *g, const T *a, T *out, idx_t C, idx_t inner,
                                   idx_t w_, T *stage, int stream) {
    const idx_t w = W > 0 ? (idx_t)W : w_;
    enum { BW = W > 0 ? W : StridedBlock<T>::WIDE };
    double s[BW];
    T f[BW];
    T *gs = stage, *as = stage != NULL ? stage + C * w : NULL;
    sblock_backward_sums<Softmax, T, W>(g, a, C, inner, w, s, gs, as);
    for (idx_t j = 0; j < w; ++j) f[j] = (T)s[j];
    const T *gr = stage != NULL ? gs : g, *ar = stage != NULL ? as : a;
    const idx_t ld = stage != NULL ? w : inner;
    auto write_row = [&](idx_t c, T *oc) {
        const T *gc = gr + c * ld, *ac = ar + c * ld;
        if (stage == NULL) {
            prefetch_ahead(gc, c, C, inner, w, 0);
            prefetch_ahead(ac, c, C, inner, w, 0);
        }
        backward_row_out<Softmax>(gc, ac, f, oc, w);
    };
    if (stream && w == inner && (uintptr_t)out % sizeof(T) == 0)
        sblock_stream_span<T, W>(out, C, w, write_row);
    else
        sblock_write_rows<T, W>(out, C, inner, w, stage, stream, write_row);
}

/* Unit u (outer index u / blocks, its block u % blocks) of the gradient
 * through softmax (op STRIDED_SOFTMAX) or log_softmax (STRIDED_LOG_SOFTMAX)
 * of g (grad_output) and a (the forward's output), all (outer, C, inner);
 * out may be g or a.  stage: strided_backward_stage_elems(C, inner) elements
 * (NULL where 0); stream: write a staged block's rows with non-temporal
 * stores (see stream_row; it also moves the blocks, strided_backward_blocks).  Out of line: one compiled copy for the serial
 * and the threaded loop. */
template <bool Softmax, typename T>
static inline void sblock_backward_any(const T *g, const T *a, T *out, idx_t C, idx_t inner,
                                       idx_t w, T *stage, int stream) {
    /* the common widths with their loops' trip count known */
    enum { L = 64 / (int)sizeof(T) };
    if (w == L) sblock_backward<Softmax, T, L>(g, a, out, C, inner, w, stage, stream);
    else if (w == 2 * L) sblock_backward<Softmax, T, 2 * L>(g, a, out, C, inner, w, stage, stream);
    else if (w == 4 * L) sblock_backward<Softmax, T, 4 * L>(g, a, out, C, inner, w, stage, stream);
    else sblock_backward<Softmax, T, 0>(g, a, out, C, inner, w, stage, stream);
}

template <typename T>
static CS_REDUCTION void strided_backward_unit(int op, const T *g, const T *a, T *out, idx_t C,
                                               idx_t inner, idx_t u, T *stage, int stream) {
    const StridedBlockAt at = strided_block_at(strided_backward_blocks(out, C, inner, stream),
                                               C, inner, u);
    const idx_t el = at.el, w = at.w;
    if (op == STRIDED_SOFTMAX) sblock_backward_any<true>(g + el, a + el, out + el, C, inner, w, stage, stream);
    else sblock_backward_any<false>(g + el, a + el, out + el, C, inner, w, stage, stream);
}

}  // namespace csoftmax

#endif
