/*
 * maskedstrided.hpp -- `where=` over the middle axis of C-contiguous arrays
 * viewed as (outer, C, inner): softmax, log_softmax, logsumexp and the two
 * backward passes, without the moved copy of x (and of grad_output) that the
 * masked rows path (masked.hpp) needs for an axis that is not the last: 6-22x
 * the unmasked call's time, up to 4x PyTorch's masked_fill + softmax (1000 x
 * 4096 over axis 0, AVX2, 2 threads).
 *
 * float16/bfloat16 rows are converted into the float32 scratch as they are
 * selected, and each result row rounded once: the float32 masked call over
 * the same axis rounded once.
 *
 * The mask is np.broadcast_to(where, x.shape) read in place through three byte
 * strides, one per group of axes (outer, classes, inner; a broadcast axis has
 * stride 0; the Python layer takes this path only where each group collapses
 * into one stride).  A unit is a block of w consecutive positions of one
 * outer index (half_strided_block, halfstrided.hpp).  Its C rows are copied
 * into the thread's scratch with the mask as a select -- a masked entry
 * becomes -inf for the forward ops (exp(-inf) = +0 exactly), 0 in both inputs
 * for the backward ones (it then adds nothing to the sums) -- the unmasked
 * strided kernel (strided.hpp, stridedbackward.hpp) runs on the scratch in
 * place, and each result row is copied out with the mask as a select again:
 * masked entries get 0 (softmax, the gradients) or -inf (log_softmax).
 *
 * So the rules of masked.hpp hold: a slice with no kept entry gives softmax
 * 0, log_softmax -inf (every entry masked: the second select), logsumexp -inf
 * (the unmasked kernel's value for an all -inf slice); a kept NaN or +inf, or
 * kept entries that are all -inf, make the kept outputs NaN.  A position's
 * values are the unmasked strided kernel's on the selected slice, so where
 * the mask keeps a whole slice they are the unmasked call's over the same
 * axis, bit for bit (a test).
 */
#ifndef CSOFTMAX_MASKEDSTRIDED_HPP
#define CSOFTMAX_MASKEDSTRIDED_HPP

#include "halfstrided.hpp"  /* HalfStridedBlock: a unit's block */
#include "masked.hpp"       /* the MASKED_* ops */
#include "stridedbackward.hpp"

namespace csoftmax {

/* the mask of (outer, C, inner) positions: byte (o, c, j) at
 * base + o so + c sc + j si */
struct MaskStrides {
    const uint8_t *base;
    int64_t so, sc, si;
};

/* positions a unit: as the 16-bit kernels' blocks (C x width elements of
 * scratch within 128 KiB where the classes allow) */
static inline idx_t masked_strided_width(idx_t C) { return half_strided_width(C); }

/* a block row's mask bytes: kept[j] for the w positions from j0 */
static inline void mask_block_row(const MaskStrides &mk, idx_t o, idx_t c, idx_t j0, idx_t w,
                                  uint8_t *kept) {
    const uint8_t *p = mk.base + o * mk.so + c * mk.sc + j0 * mk.si;
    if (mk.si == 1) memcpy(kept, p, (size_t)w);
    else if (mk.si == 0) memset(kept, p[0] != 0, (size_t)w);
    else
        for (idx_t j = 0; j < w; ++j) kept[j] = p[j * mk.si];
}

/* dst = kept ? src : fill, w elements */
template <typename T>
static inline void select_row(const T *src, const uint8_t *kept, T fill, T *dst, idx_t w) {
#pragma omp simd
    for (idx_t j = 0; j < w; ++j) dst[j] = kept[j] != 0 ? src[j] : fill;
}

/* A row of x (or g) into the scratch with the mask as a select; 16-bit rows
 * (kind) converted first, then selected in place. */
template <typename T>
static inline void load_selected(const T *src, int, const uint8_t *kept, T drop, T *dst,
                                 idx_t w) {
    select_row(src, kept, drop, dst, w);
}
static inline void load_selected(const uint16_t *src, int kind, const uint8_t *kept, float drop,
                                 float *dst, idx_t w) {
    half_load(kind, src, dst, w);
    select_row(dst, kept, drop, dst, w);
}

/* A result row out of the scratch with the mask as a select; 16-bit out
 * selected into `row` (w floats), then rounded once into dst. */
template <typename T>
static inline void store_selected(const T *src, const uint8_t *kept, T fill, T *dst, T *, int,
                                  idx_t w) {
    select_row(src, kept, fill, dst, w);
}
static inline void store_selected(const float *src, const uint8_t *kept, float fill,
                                  uint16_t *dst, float *row, int kind, idx_t w) {
    select_row(src, kept, fill, row, w);
    half_store(kind, row, dst, w);
}

/* Unit u of masked op (MASKED_SOFTMAX .. MASKED_LOG_SOFTMAX_BACKWARD) over
 * the middle axis of x (the forward's input, or for the backward ops its
 * output) and g (grad_output; NULL for the forward ops), all (outer, C,
 * inner) of storage S: T (float, double) or uint16_t (float16/bfloat16 of
 * kind `kind`, computed in T = float and rounded once); out likewise (may be
 * x or g), or for logsumexp lse (outer, inner) in T.  width: positions a
 * unit; stage (and gstage for the backward ops): C x width elements of the
 * thread's scratch. */
template <typename S, typename T>
static CS_REDUCTION void masked_strided_unit(int op, int kind, const S *x, const S *g, S *out,
                                             T *lse, const MaskStrides *mk, idx_t C,
                                             idx_t inner, idx_t width, idx_t u, T *stage,
                                             T *gstage) {
    const HalfStridedBlock b = half_strided_block(C, inner, width, u);
    const idx_t w = b.w, o = b.pos / inner, j0 = b.pos - o * inner;
    const bool backward = op >= MASKED_SOFTMAX_BACKWARD;
    const T drop = backward ? (T)0 : (T)-INFINITY;   /* a masked entry in the scratch */
    uint8_t kept[HALF_STRIDED_MAX_W];
    T row[sizeof(S) < sizeof(T) ? HALF_STRIDED_MAX_W : 1];   /* a 16-bit result row */
    /* rows apart: prefetched PREFETCH_ROWS ahead, as in strided.hpp (1000 x 4096
     * over axis 0, rows in pages of their own) */
    for (idx_t c = 0; c < C; ++c) {
        const idx_t at = b.el + c * inner;
        prefetch_ahead(x + at, c, C, inner, w, 0);
        if (backward) prefetch_ahead(g + at, c, C, inner, w, 0);
        mask_block_row(*mk, o, c, j0, w, kept);
        load_selected(x + at, kind, kept, drop, stage + c * w, w);
        if (backward) load_selected(g + at, kind, kept, drop, gstage + c * w, w);
    }
    if (op == MASKED_LOGSUMEXP) {
        const idx_t units = strided_units<T>(lse + b.pos, C, w, 0, (T)0);
        for (idx_t s = 0; s < units; ++s)
            strided_unit<T>(STRIDED_LOGSUMEXP, stage, lse + b.pos, C, w, s, NULL, 0);
        return;
    }
    T *r = backward ? gstage : stage;
    if (backward) {
        const int bop = op == MASKED_SOFTMAX_BACKWARD ? STRIDED_SOFTMAX : STRIDED_LOG_SOFTMAX;
        const idx_t units = strided_backward_units(stage, C, w, 0);
        for (idx_t s = 0; s < units; ++s)
            strided_backward_unit<T>(bop, gstage, stage, gstage, C, w, s, NULL, 0);
    } else {
        const int fop = op == MASKED_SOFTMAX ? STRIDED_SOFTMAX : STRIDED_LOG_SOFTMAX;
        const idx_t units = strided_units<T>(stage, C, w, 0, (T)0);
        for (idx_t s = 0; s < units; ++s) strided_unit<T>(fop, stage, stage, C, w, s, NULL, 0);
    }
    const T fill = op == MASKED_LOG_SOFTMAX ? (T)-INFINITY : (T)0;
    for (idx_t c = 0; c < C; ++c) {
        const idx_t at = b.el + c * inner;
        prefetch_ahead(out + at, c, C, inner, w, 1);
        mask_block_row(*mk, o, c, j0, w, kept);
        store_selected(r + c * w, kept, fill, out + at, row, kind, w);
    }
}

/* masked_strided_unit with T the compute type of the storage S (float for
 * 16-bit storage, else S); lse: T values, stage: 2 C width of them. */
template <typename S> struct MaskedCompute { typedef S T; };
template <> struct MaskedCompute<uint16_t> { typedef float T; };

template <typename S>
static inline void masked_strided_unit_of(int op, int kind, const S *x, const S *g, S *out,
                                          void *lse, const MaskStrides *mk, idx_t C,
                                          idx_t inner, idx_t width, idx_t u, void *stage) {
    typedef typename MaskedCompute<S>::T T;
    T *st = (T *)stage;
    masked_strided_unit<S, T>(op, kind, x, g, out, (T *)lse, mk, C, inner, width, u, st,
                              st + C * width);
}

}  // namespace csoftmax

#endif
