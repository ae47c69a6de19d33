/*
 * halfstrided.hpp -- float16 and bfloat16 arrays over a middle axis, viewed
 * as (outer, C, inner): softmax, log_softmax, logsumexp and cross-entropy
 * (class indices or probabilities) without the transposed 16-bit copies they
 * took before (in and out: 4-7x the time of the float32 call over the same
 * axis, slower than PyTorch's bfloat16 calls).
 *
 * A unit is a block of w consecutive positions of one outer index.
 * softmax, log_softmax, logsumexp and cross-entropy with class indices run
 * the float32 block kernels of strided.hpp through HalfRows: their first
 * pass converts the block's C rows of w 16-bit values into the thread's
 * float32 scratch (C x w, contiguous) as it takes the maxima, the next
 * block's rows are prefetched during the exp pass, and the last pass rounds
 * each row of the result, formed in L1, once into the 16-bit output
 * (non-temporal stores where it is larger than the caches and the rows 1 KiB
 * or longer; logsumexp writes w float32 values).  A block so
 * moves its 16-bit bytes once each way.  (Before, the block was converted
 * into the scratch in a pass of its own, the float32 kernel ran on the
 * scratch as an array (1, C, w) and the result was converted back in
 * another: the bfloat16 segmentation loss 8x21x256x256 with its gradient
 * took 1.25-1.4x the float32 call's time, now 1.0-1.2x.)  Probability
 * targets, whose targets the float32 kernel reads in place in two passes,
 * still take that way (half_block_load, the float32 unit, half_block_store),
 * and the gradient through softmax has a loop of its own below.
 * A position's float32 values do not depend on which block holds it (its
 * sums run over the classes in order, see strided_blocks_of), so a result
 * is the float32 call's over the same axis on the converted input, rounded
 * once, bit for bit, at any w and any thread count (logsumexp: w float32
 * values, rounded by the caller; cross-entropy: the gradient, the losses per
 * position in double).
 */
#ifndef CSOFTMAX_HALFSTRIDED_HPP
#define CSOFTMAX_HALFSTRIDED_HPP

#include "half.hpp"
#include "strided.hpp"
#include "stridedbackward.hpp"
#include "stridedce.hpp"

namespace csoftmax {

/* Positions per unit: as many as keep the scratch within HALF_STRIDED_STAGE
 * floats (few classes read longer runs of each row: as strided.hpp's wide
 * blocks), in multiples of 64, from 64 to 1024.  Past HALF_STRIDED_MAX_C
 * classes even 64 positions need more than 2 MiB of scratch a thread: the
 * Python layer then moves the axis last instead. */
enum { HALF_STRIDED_STAGE = 1 << 15, HALF_STRIDED_MIN_W = 64, HALF_STRIDED_MAX_W = 1024,
       HALF_STRIDED_MAX_C = 8192 };

/* a block is computed whole by the float32 block kernels, whose per-position
 * arrays hold StridedBlock<float>::WIDE */
static_assert((int)HALF_STRIDED_MAX_W <= (int)StridedBlock<float>::WIDE, "a 16-bit block fits the kernels");

static inline idx_t half_strided_width(idx_t C) {
    idx_t w = (idx_t)HALF_STRIDED_STAGE / (C > 0 ? C : 1) / HALF_STRIDED_MIN_W * HALF_STRIDED_MIN_W;
    return w < HALF_STRIDED_MIN_W ? HALF_STRIDED_MIN_W : (w > HALF_STRIDED_MAX_W ? HALF_STRIDED_MAX_W : w);
}

/* Unit u's block, positions [j0, j0 + w) of outer index o = u / (blocks per
 * outer index): w, el its first element (o C inner + j0), pos its first
 * position (o inner + j0). */
struct HalfStridedBlock {
    idx_t w, el, pos;
};
static inline HalfStridedBlock half_strided_block(idx_t C, idx_t inner, idx_t width, idx_t u) {
    const idx_t nb = (inner + width - 1) / width;
    const idx_t o = u / nb, j0 = (u - o * nb) * width;
    HalfStridedBlock b = {inner - j0 < width ? inner - j0 : width, o * C * inner + j0,
                          o * inner + j0};
    return b;
}

/* Whether a block writes its 16-bit rows with non-temporal stores: where
 * the caller streams the output (larger than the caches) and the rows are
 * STREAM_ROW_BYTES or longer.  Shorter rows were slower streamed (their
 * partial lines at each end; softmax of 1000x4096 bfloat16 over axis 0,
 * rows of 128 bytes: 1.1-1.4x the time of the float32 call streamed, 1.1x
 * not; AVX-512, 2 threads). */
static inline int half_strided_streams(int stream, const HalfStridedBlock &b) {
    return stream && b.w * 2 >= (idx_t)STREAM_ROW_BYTES;
}

/* the block's C rows (inner apart in x) into stage (C x b.w, contiguous),
 * and back (rounded once) */
static inline void half_block_load(int kind, const uint16_t *x, idx_t C, idx_t inner,
                                   const HalfStridedBlock &b, float *stage) {
    for (idx_t c = 0; c < C; ++c) half_load(kind, x + b.el + c * inner, stage + c * b.w, b.w);
}
static inline void half_block_store(int kind, const float *stage, idx_t C, idx_t inner,
                                    const HalfStridedBlock &b, uint16_t *out) {
    for (idx_t c = 0; c < C; ++c) half_store(kind, stage + c * b.w, out + b.el + c * inner, b.w);
}

/* A block's 16-bit rows in and out of the float32 kernels of strided.hpp
 * (see Rows there): pass 1 converts each row into the stage as it takes the
 * maxima, the last pass rounds each row of the result, formed in L1, into
 * the output (stream: its whole lines with non-temporal stores).  The
 * kernels' arithmetic on the stage is the float32 call's, so a result is
 * that call's on the converted input, rounded once. */
struct HalfRows {
    typedef uint16_t Stored;
    int kind;
    static const float *in_place(const uint16_t *) { return NULL; }   /* always staged */
    static float *in_place(uint16_t *) { return NULL; }
    /* pass 1: each row converted into the stage (capped there where cap !=
     * 0), the maxima taken from it as sblock_max takes them */
    void load_max(const uint16_t *x, idx_t C, idx_t inner, idx_t w, float *m, float *stage,
                  float cap) const {
        for (idx_t j = 0; j < w; ++j) m[j] = -INFINITY;
        for (idx_t c = 0; c < C; ++c) {
            float *sc = stage + c * w;
            prefetch_ahead(x + c * inner, c, C, inner, w, 0);
            half_load(kind, x + c * inner, sc, w);
            if (cap != 0.0f) row_softcap(sc, sc, w, cap);
#pragma omp simd
            for (idx_t j = 0; j < w; ++j) m[j] = sc[j] > m[j] ? sc[j] : m[j];
        }
        for (idx_t j = 0; j < w; ++j) m[j] = m[j] + 0.0f;
    }
    template <int W>
    void max(const uint16_t *x, idx_t C, idx_t inner, idx_t w, float *m, float *stage) const {
        load_max(x, C, inner, w, m, stage, 0.0f);
    }
    template <int W>
    void capped_max(const uint16_t *x, idx_t C, idx_t inner, idx_t w, float *m, float *stage,
                    float cap) const {
        load_max(x, C, inner, w, m, stage, cap);
    }
    template <int W, typename WriteRow>
    void write(uint16_t *out, idx_t C, idx_t inner, idx_t w, const float *, int stream,
               WriteRow write_row) const {
        float row[HALF_STRIDED_MAX_W];
        for (idx_t c = 0; c < C; ++c) {
            if (!stream) prefetch_ahead(out + c * inner, c, C, inner, w, 1);
            write_row(c, row);
            half_store_lines(kind, row, out + c * inner, w, stream);
        }
        if (stream) stream_fence();
    }
};

/* Unit u of the gradient through softmax (op STRIDED_SOFTMAX) or log_softmax
 * (STRIDED_LOG_SOFTMAX) over the middle axis of the 16-bit g (grad_output)
 * and a (the forward's output), the float32 arithmetic of stridedbackward.hpp
 * on their converted rows (stage, astage: C x width floats each): each class
 * row converted and at once summed (in L1), then each row's result formed
 * in L1 and rounded once into out (may be g or a; HalfRows::write, streamed
 * where `stream` is set): two passes over the scratch fewer than running
 * strided_backward_unit on it.  bfloat16
 * softmax_backward, AVX2, 2 threads, minimum times of separate runs against
 * that first version: 64x1000x64 over axis 1 2.6 -> 2.3 ms, 1000x4096 over
 * axis 0 8.6 -> 4.2 ms (most of it the prefetch below), 8x21x256x256 over
 * axis 1 8.7 -> 8.4 ms. */
template <bool Softmax>
static inline void half_strided_backward_block(int kind, const uint16_t *g, const uint16_t *a,
                                               uint16_t *out, idx_t C, idx_t inner,
                                               const HalfStridedBlock &b, float *stage,
                                               float *astage, int stream) {
    const idx_t w = b.w;
    double s[HALF_STRIDED_MAX_W];
    float f[HALF_STRIDED_MAX_W];
    for (idx_t j = 0; j < w; ++j) s[j] = 0.0;
    /* rows apart (in pages of their own from 2 KiB on): the rows PREFETCH_ROWS
     * ahead are prefetched, for reading and then for writing, as in strided.hpp
     * (without, 1000x4096 over axis 0 took 1.45x the time) */
    for (idx_t c = 0; c < C; ++c) {
        float *gc = stage + c * w, *ac = astage + c * w;
        const idx_t at = b.el + c * inner;
        prefetch_ahead(g + at, c, C, inner, w, 0);
        prefetch_ahead(a + at, c, C, inner, w, 0);
        half_load(kind, g + at, gc, w);
        half_load(kind, a + at, ac, w);
        backward_row_sums<Softmax>(gc, ac, s, w);
    }
    for (idx_t j = 0; j < w; ++j) f[j] = (float)s[j];
    const HalfRows io = {kind};
    io.write<0>(out + b.el, C, inner, w, stage, stream, [&](idx_t c, float *row) {
        backward_row_out<Softmax>(stage + c * w, astage + c * w, f, row, w);
    });
}

static CS_REDUCTION void half_strided_backward_unit(int op, int kind, const uint16_t *g,
                                                    const uint16_t *a, uint16_t *out, idx_t C,
                                                    idx_t inner, idx_t width, idx_t u,
                                                    float *stage, float *astage, int stream) {
    const HalfStridedBlock b = half_strided_block(C, inner, width, u);
    stream = half_strided_streams(stream, b);
    if (op == STRIDED_SOFTMAX)
        half_strided_backward_block<true>(kind, g, a, out, C, inner, b, stage, astage, stream);
    else
        half_strided_backward_block<false>(kind, g, a, out, C, inner, b, stage, astage, stream);
    vector_upper_clear();
}

/* The block after b in its outer index, prefetched as b's exp pass goes
 * (see StridedNext), or none: as strided_next, only where b's stage (C x
 * b.w floats) is at most strided_next_bytes. */
static inline StridedNext<uint16_t> half_strided_next(const uint16_t *x, idx_t C, idx_t inner,
                                                      const HalfStridedBlock &b) {
    StridedNext<uint16_t> next = {NULL, 0, inner};
    const idx_t j1 = b.pos % inner + b.w;
    if (j1 < inner && C * b.w * (idx_t)sizeof(float) <= strided_next_bytes()) {
        next.x = x + b.el + b.w;
        next.w = inner - j1 < b.w ? inner - j1 : b.w;
    }
    return next;
}

/* one block of half_strided_cross_entropy_index_unit; W: as
 * sblock_cross_entropy_index's */
template <bool Grad, int W, typename L>
static inline void half_strided_ce_block(
        const HalfRows &io, const uint16_t *x, const L *target, idx_t C, idx_t inner,
        const HalfStridedBlock &b, idx_t ignore_index, const float *w, double w_total,
        double alpha, double beta, double *loss, uint16_t *grad, double scale, float *stage,
        const CrossEntropyExtra *ex, float cap, int stream, const StridedNext<uint16_t> &next) {
    sblock_cross_entropy_index<Grad, float, L, W, HalfRows>(
        x + b.el, target + b.pos, C, inner, b.w, ignore_index, w, w_total, alpha, beta,
        loss + b.pos, Grad ? grad + b.el : NULL, scale, stage, ex, cap, stream, next, io);
}

/* Unit u of cross-entropy with class indices over the middle axis of 16-bit
 * logits x (outer, C, inner): strided_cross_entropy_index_unit's arguments
 * (target and loss (outer, inner), ex's per-position arrays likewise), the
 * gradient rounded into grad (may be x; NULL: the loss alone; stream: with
 * non-temporal stores).  stage: C x width floats. */
template <typename L>
static CS_REDUCTION void half_strided_cross_entropy_index_unit(
        int kind, const uint16_t *x, const L *target, idx_t C, idx_t inner, idx_t width,
        idx_t u, idx_t ignore_index, const float *w, double w_total, double alpha, double beta,
        double *loss, uint16_t *grad, double scale, float *stage, const CrossEntropyExtra *ex,
        float cap, int stream) {
    const HalfStridedBlock b = half_strided_block(C, inner, width, u);
    CrossEntropyExtra bex;
    ex = extra_at(ex, b.pos, &bex);
    stream = half_strided_streams(stream, b);
    const StridedNext<uint16_t> next = half_strided_next(x, C, inner, b);
    const HalfRows io = {kind};
    enum { B = StridedBlock<float>::B };
    /* the narrowest blocks (many classes) with their loops' trip count known */
    if (b.w == B && grad != NULL)
        half_strided_ce_block<true, B>(io, x, target, C, inner, b, ignore_index, w, w_total,
                                       alpha, beta, loss, grad, scale, stage, ex, cap, stream,
                                       next);
    else if (b.w == B)
        half_strided_ce_block<false, B>(io, x, target, C, inner, b, ignore_index, w, w_total,
                                        alpha, beta, loss, grad, scale, stage, ex, cap, stream,
                                        next);
    else if (grad != NULL)
        half_strided_ce_block<true, 0>(io, x, target, C, inner, b, ignore_index, w, w_total,
                                       alpha, beta, loss, grad, scale, stage, ex, cap, stream,
                                       next);
    else
        half_strided_ce_block<false, 0>(io, x, target, C, inner, b, ignore_index, w, w_total,
                                        alpha, beta, loss, grad, scale, stage, ex, cap, stream,
                                        next);
    vector_upper_clear();
}

/* one block of half_strided_unit; W: as sblock_softmax's */
template <int W>
static inline void half_strided_block_op(int op, const HalfRows &io, const uint16_t *x,
                                         uint16_t *out, float *out32, idx_t C, idx_t inner,
                                         const HalfStridedBlock &b, float *stage, int stream,
                                         const StridedNext<uint16_t> &next) {
    const uint16_t *xb = x + b.el;
    if (op == STRIDED_SOFTMAX)
        sblock_softmax<STRIDED_SOFTMAX, float, W, HalfRows>(xb, out + b.el, NULL, C, inner, b.w,
                                                             stage, stream, next, io);
    else if (op == STRIDED_LOG_SOFTMAX)
        sblock_softmax<STRIDED_LOG_SOFTMAX, float, W, HalfRows>(xb, out + b.el, NULL, C, inner,
                                                                 b.w, stage, stream, next, io);
    else
        sblock_softmax<STRIDED_LOGSUMEXP, float, W, HalfRows>(xb, NULL, out32 + b.pos, C, inner,
                                                               b.w, stage, 0, next, io);
}

/* Unit u of op (STRIDED_SOFTMAX, STRIDED_LOG_SOFTMAX: out (outer, C, inner)
 * 16-bit, streamed where stream is set; STRIDED_LOGSUMEXP: out32 (outer,
 * inner) float32) over the 16-bit x of kind `kind`, with width =
 * half_strided_width(C) positions a unit and stage C x width floats: the
 * float32 block kernel of strided.hpp through HalfRows.  out may be x. */
static CS_REDUCTION void half_strided_unit(int op, int kind, const uint16_t *x, uint16_t *out,
                                           float *out32, idx_t C, idx_t inner, idx_t width,
                                           idx_t u, float *stage, int stream) {
    enum { B = StridedBlock<float>::B };
    const HalfStridedBlock b = half_strided_block(C, inner, width, u);
    stream = half_strided_streams(stream, b);
    const StridedNext<uint16_t> next = half_strided_next(x, C, inner, b);
    const HalfRows io = {kind};
    /* the narrowest blocks (many classes) with their loops' trip count known */
    if (b.w == B) half_strided_block_op<B>(op, io, x, out, out32, C, inner, b, stage, stream, next);
    else half_strided_block_op<0>(op, io, x, out, out32, C, inner, b, stage, stream, next);
    vector_upper_clear();
}

/* Unit u of cross-entropy with probability targets over the middle axis of
 * 16-bit logits x: y (x's layout) 16-bit of the logits' kind (y16) or float32
 * (y32), its block into ystage (C x width floats) beside the logits' in
 * stage, and cap_stage (as many more where cap != 0, else NULL) for the
 * float32 kernel to cap the block into; the rest as
 * half_strided_cross_entropy_index_unit, with strided_cross_entropy_prob_unit's
 * arguments.  The block is converted into the stage, the float32 unit runs on
 * it as an array (1, C, w) of its own, and the gradient is rounded back
 * (half_block_load, half_block_store). */
static CS_REDUCTION void half_strided_cross_entropy_prob_unit(
        int kind, const uint16_t *x, const uint16_t *y16, const float *y32, idx_t C,
        idx_t inner, idx_t width, idx_t u, const float *w, double alpha, double beta,
        double *loss, uint16_t *grad, double scale, float *stage, float *ystage,
        float *cap_stage, const CrossEntropyExtra *ex, float cap) {
    const HalfStridedBlock b = half_strided_block(C, inner, width, u);
    half_block_load(kind, x, C, inner, b, stage);
    if (y16 != NULL)
        half_block_load(kind, y16, C, inner, b, ystage);
    else
        for (idx_t c = 0; c < C; ++c)
            memcpy(ystage + c * b.w, y32 + b.el + c * inner, (size_t)b.w * sizeof(float));
    CrossEntropyExtra bex;
    ex = extra_at(ex, b.pos, &bex);
    float *g = grad != NULL ? stage : NULL;
    const idx_t units = strided_units<float>(g, C, b.w, 0, cap);
    for (idx_t s = 0; s < units; ++s)
        strided_cross_entropy_prob_unit<float>(stage, ystage, C, b.w, w, alpha, beta,
                                               loss + b.pos, g, scale, s, cap_stage, ex, cap, 0);
    if (grad != NULL) half_block_store(kind, stage, C, inner, b, grad);
}

}  // namespace csoftmax

#endif
