/*
 * halfstrided.hpp -- float16 and bfloat16 arrays over a middle axis, viewed
 * as (outer, C, inner): softmax, log_softmax, logsumexp and cross-entropy
 * (class indices or probabilities) without the transposed 16-bit copies they
 * took before (in and out: 4-7x the time of the float32 call over the same
 * axis, slower than PyTorch's bfloat16 calls).
 *
 * A unit is a block of w consecutive positions of one outer index.  Its C
 * rows of w 16-bit values are converted into the thread's float32 scratch
 * (C x w, contiguous: the rows of the block, each at most a few cache lines
 * of the input); the float32 kernel of strided.hpp runs on the scratch as an
 * array (1, C, w) of its own, in place; the result is rounded once into the
 * block's 16-bit rows (logsumexp: w float32 values, rounded by the caller;
 * cross-entropy: the gradient, the losses per position in double).
 * A position's float32 values do not depend on which block holds it (its
 * sums run over the classes in order, see strided_blocks_of), so a result
 * is the float32 call's over the same axis on the converted input, rounded
 * once, bit for bit, at any w and any thread count.
 */
#ifndef CSOFTMAX_HALFSTRIDED_HPP
#define CSOFTMAX_HALFSTRIDED_HPP

#include "half.hpp"
#include "strided.hpp"
#include "stridedbackward.hpp"

namespace csoftmax {

/* Positions per unit: as many as keep the scratch within HALF_STRIDED_STAGE
 * floats (few classes read longer runs of each row: as strided.hpp's wide
 * blocks), in multiples of 64, from 64 to 1024.  Past HALF_STRIDED_MAX_C
 * classes even 64 positions need more than 2 MiB of scratch a thread: the
 * Python layer then moves the axis last instead. */
enum { HALF_STRIDED_STAGE = 1 << 15, HALF_STRIDED_MIN_W = 64, HALF_STRIDED_MAX_W = 1024,
       HALF_STRIDED_MAX_C = 8192 };

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

/* Unit u of op (STRIDED_SOFTMAX, STRIDED_LOG_SOFTMAX: out (outer, C, inner)
 * 16-bit; STRIDED_LOGSUMEXP: out32 (outer, inner) float32) over the 16-bit x
 * of kind `kind`, with width = half_strided_width(C) positions a unit and
 * stage C x width floats.  out may be x. */
static CS_REDUCTION void half_strided_unit(int op, int kind, const uint16_t *x, uint16_t *out,
                                           float *out32, idx_t C, idx_t inner, idx_t width,
                                           idx_t u, float *stage) {
    const HalfStridedBlock b = half_strided_block(C, inner, width, u);
    half_block_load(kind, x, C, inner, b, stage);
    float *r = op == STRIDED_LOGSUMEXP ? out32 + b.pos : stage;
    const idx_t units = strided_units<float>(r, C, b.w, 0, 0.0f);
    for (idx_t s = 0; s < units; ++s) strided_unit<float>(op, stage, r, C, b.w, s, NULL, 0);
    if (op != STRIDED_LOGSUMEXP) half_block_store(kind, stage, C, inner, b, out);
}

/* Unit u of the gradient through softmax (op STRIDED_SOFTMAX) or log_softmax
 * (STRIDED_LOG_SOFTMAX) over the middle axis of the 16-bit g (grad_output)
 * and a (the forward's output), the float32 arithmetic of stridedbackward.hpp
 * on their converted rows (stage, astage: C x width floats each): each class
 * row converted and at once summed (in L1), then each row's result formed
 * in L1 and rounded once into out (may be g or a): two passes over the
 * scratch fewer than running strided_backward_unit on it.  bfloat16
 * softmax_backward, AVX2, 2 threads, minimum times of separate runs against
 * that first version: 64x1000x64 over axis 1 2.6 -> 2.3 ms, 1000x4096 over
 * axis 0 8.6 -> 4.2 ms (most of it the prefetch below), 8x21x256x256 over
 * axis 1 8.7 -> 8.4 ms. */
template <bool Softmax>
static inline void half_strided_backward_block(int kind, const uint16_t *g, const uint16_t *a,
                                               uint16_t *out, idx_t C, idx_t inner,
                                               const HalfStridedBlock &b, float *stage,
                                               float *astage) {
    const idx_t w = b.w;
    double s[HALF_STRIDED_MAX_W];
    float f[HALF_STRIDED_MAX_W], row[HALF_STRIDED_MAX_W];
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
    for (idx_t c = 0; c < C; ++c) {
        const idx_t at = b.el + c * inner;
        prefetch_ahead(out + at, c, C, inner, w, 1);
        backward_row_out<Softmax>(stage + c * w, astage + c * w, f, row, w);
        half_store(kind, row, out + at, w);
    }
}

static CS_REDUCTION void half_strided_backward_unit(int op, int kind, const uint16_t *g,
                                                    const uint16_t *a, uint16_t *out, idx_t C,
                                                    idx_t inner, idx_t width, idx_t u,
                                                    float *stage, float *astage) {
    const HalfStridedBlock b = half_strided_block(C, inner, width, u);
    if (op == STRIDED_SOFTMAX)
        half_strided_backward_block<true>(kind, g, a, out, C, inner, b, stage, astage);
    else
        half_strided_backward_block<false>(kind, g, a, out, C, inner, b, stage, astage);
    vector_upper_clear();
}

/* Unit u of cross-entropy with class indices over the middle axis of 16-bit
 * logits x (outer, C, inner): strided_cross_entropy_index_unit's arguments
 * (target and loss (outer, inner), ex's per-position arrays likewise), the
 * gradient rounded into grad (may be x; NULL: the loss alone).  stage: C x
 * width floats; cap_stage: as many more where cap != 0 (the float32 kernel
 * caps a block into its staging scratch), else NULL. */
template <typename L>
static CS_REDUCTION void half_strided_cross_entropy_index_unit(
        int kind, const uint16_t *x, const L *target, idx_t C, idx_t inner, idx_t width,
        idx_t u, idx_t ignore_index, const float *w, double w_total, double alpha, double beta,
        double *loss, uint16_t *grad, double scale, float *stage, float *cap_stage,
        const CrossEntropyExtra *ex, float cap) {
    const HalfStridedBlock b = half_strided_block(C, inner, width, u);
    half_block_load(kind, x, C, inner, b, stage);
    CrossEntropyExtra bex;
    ex = extra_at(ex, b.pos, &bex);
    float *g = grad != NULL ? stage : NULL;
    const idx_t units = strided_units<float>(g, C, b.w, 0, cap);
    for (idx_t s = 0; s < units; ++s)
        strided_cross_entropy_index_unit<float, L>(stage, target + b.pos, C, b.w, ignore_index,
                                                   w, w_total, alpha, beta, loss + b.pos, g,
                                                   scale, s, cap_stage, ex, cap, 0);
    if (grad != NULL) half_block_store(kind, stage, C, inner, b, grad);
}

/* Unit u of cross-entropy with probability targets over the middle axis of
 * 16-bit logits x: y (x's layout) 16-bit of the logits' kind (y16) or float32
 * (y32), its block into ystage (C x width floats) beside the logits' in
 * stage; the rest as half_strided_cross_entropy_index_unit, with
 * strided_cross_entropy_prob_unit's arguments. */
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
