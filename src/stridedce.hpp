/*
 * stridedce.hpp -- cross-entropy over the middle axis of a C-contiguous array
 * viewed as (outer, C, inner), with class indices or probability targets: the
 * block kernels of strided.hpp (a block of consecutive positions as the
 * vector lanes, the classes as the loop, its passes and staging) with the
 * loss's own steps -- the labels classified, the target's logit gathered, the
 * per-position finish, the gradient rows.  Split from strided.hpp, which keeps
 * the blocks, their passes and the softmax family.
 */
#ifndef CSOFTMAX_STRIDEDCE_HPP
#define CSOFTMAX_STRIDEDCE_HPP

#include "strided.hpp"

namespace csoftmax {

/* ---- cross-entropy with class indices over the middle axis -------------
 * sblock_index_finish: the losses and gradient coefficients of a block's w
 * positions from their sums, the formulas of cross_entropy_index_loss as one
 * vector loop, the log by log_ge1 (s is in [1, C] or NaN: the largest term
 * is exp(0) = 1), where a libm log per position bounded the kernel.  Always
 * inlined: with the 16-bit kernels' instances GCC called it out of line, and
 * the float32 segmentation loss with its gradient took 1.05-1.3x the time
 * (AVX-512, 2 threads). */
template <typename T>
CS_INLINE void sblock_index_finish(idx_t w, const int32_t *lab, const double *wt,
                                   const double *xt, const double *sm, const double *s,
                                   double w_total, double alpha, double beta, double scale,
                                   double *loss, T *c1, T *ct, T *fill) {
    const double y_extra = beta != 0.0 ? beta * w_total : 0.0;
#pragma omp simd
    for (idx_t j = 0; j < w; ++j) {
        double lse = log_ge1(s[j]);
        double aw = alpha * wt[j];
        double l = aw * (lse - xt[j]);
        if (beta != 0.0) l += beta * (w_total * lse - sm[j]);
        loss[j] = lab[j] >= 0 ? l : (lab[j] == -1 ? 0.0 : (double)NAN);
        c1[j] = (T)((aw + y_extra) / s[j] * scale);
        ct[j] = (T)(aw * scale);
        fill[j] = lab[j] == -1 ? (T)0 : (T)NAN;
    }
}

/* xt[j] = x[t][j] - m[j] in double for the label t = lab[j] of each of a
 * block's w positions (rows ld apart; a label that is not a class reads row
 * 0, a value nobody uses).  With AVX2 a gather of 8 floats or 4 doubles where
 * the block's offsets fit in int32: the scalar loop took 16 instructions a
 * position, 0.78 an element of the segmentation loss (21 classes, AVX2). */
#if defined(__AVX2__)
static inline idx_t gather_target_logits(const float *x, idx_t ld, idx_t w, const int32_t *lab,
                                         const float *m, double *xt) {
    const __m256i rows = _mm256_set1_epi32((int32_t)ld), zero = _mm256_setzero_si256();
    __m256i pos = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    idx_t j = 0;
    for (; j + 8 <= w; j += 8, pos = _mm256_add_epi32(pos, _mm256_set1_epi32(8))) {
        __m256i t = _mm256_max_epi32(_mm256_loadu_si256((const __m256i *)(lab + j)), zero);
        __m256 v = _mm256_i32gather_ps(x, _mm256_add_epi32(_mm256_mullo_epi32(t, rows), pos), 4);
        __m256 mj = _mm256_loadu_ps(m + j);
        _mm256_storeu_pd(xt + j, _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)),
                                               _mm256_cvtps_pd(_mm256_castps256_ps128(mj))));
        _mm256_storeu_pd(xt + j + 4, _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)),
                                                   _mm256_cvtps_pd(_mm256_extractf128_ps(mj, 1))));
    }
    return j;
}
static inline idx_t gather_target_logits(const double *x, idx_t ld, idx_t w, const int32_t *lab,
                                         const double *m, double *xt) {
    const __m128i rows = _mm_set1_epi32((int32_t)ld), zero = _mm_setzero_si128();
    const __m256d all = _mm256_castsi256_pd(_mm256_set1_epi64x(-1));
    __m128i pos = _mm_setr_epi32(0, 1, 2, 3);
    idx_t j = 0;
    for (; j + 4 <= w; j += 4, pos = _mm_add_epi32(pos, _mm_set1_epi32(4))) {
        __m128i t = _mm_max_epi32(_mm_loadu_si128((const __m128i *)(lab + j)), zero);
        /* the masked form with every lane on: GCC 12's _mm256_i32gather_pd
         * passes an undefined source that -Wmaybe-uninitialized flags */
        __m128i at = _mm_add_epi32(_mm_mullo_epi32(t, rows), pos);
        __m256d v = _mm256_mask_i32gather_pd(_mm256_setzero_pd(), x, at, all, 8);
        _mm256_storeu_pd(xt + j, _mm256_sub_pd(v, _mm256_loadu_pd(m + j)));
    }
    return j;
}
#endif

template <typename T>
static inline void sblock_target_logits(const T *x, idx_t C, idx_t ld, idx_t w,
                                        const int32_t *lab, const T *m, double *xt) {
    idx_t j = 0;
#if defined(__AVX2__)
    if (C * ld <= (idx_t)INT32_MAX) j = gather_target_logits(x, ld, w, lab, m, xt);
#else
    (void)C;
#endif
    for (; j < w; ++j) {
        idx_t t = lab[j] >= 0 ? (idx_t)lab[j] : 0;
        xt[j] = (double)x[t * ld + j] - (double)m[j];
    }
}

/* Cross-entropy over the middle axis, a block of positions.
 * The formulas of _cross_entropy_index_row (kernels.pxi) per position:
 *   y'_k = alpha w_t [k == t] + beta w_k,
 *   loss = sum(y') lse - sum(y'_k (x_k - m)),  grad = e sum(y') / s - y',
 * the loss as cross_entropy_index_loss (rowops.hpp) forms it, in one vector
 * loop (sblock_index_finish), z-loss and accuracy added after.  Each label is
 * read once; ignore_index gives loss 0 and a zero gradient column whatever
 * the logits, any other label outside [0, C) a NaN loss and column.  x_t and
 * the sums are read before the gradient is written (grad may be x). */
template <bool Grad, typename T, typename L, int W, typename IO = Rows<T>>
static inline void sblock_cross_entropy_index(
        const typename IO::Stored *x, const L *target, idx_t C, idx_t inner, idx_t w_,
        idx_t ignore_index, const T *wt_, double w_total, double alpha, double beta,
        double *loss, typename IO::Stored *grad, double scale, T *stage,
        const CrossEntropyExtra *ex, T cap, int stream,
        const StridedNext<typename IO::Stored> &next, const IO &io = IO()) {
    const idx_t w = W > 0 ? (idx_t)W : w_;
    enum { BW = W > 0 ? W : StridedBlock<T>::WIDE };
    T m[BW], c1[BW], ct[BW], fill[BW];
    double s[BW], sm[BW], xt[BW], wt[BW];
    int32_t lab[BW];                    /* the label, -1 ignored, -2 out of range */
    if (cap != (T)0)                   /* soft-capped: always staged */
        io.template capped_max<W>(x, C, inner, w, m, stage, cap);
    else
        io.template max<W>(x, C, inner, w, m, stage);
    /* the block as read from here on */
    const T *xr = stage != NULL ? stage : IO::in_place(x);
    const idx_t ld = stage != NULL ? w : inner;
    /* the labels classified as the tiles' (tile_labels), then the target's
     * logit and weight in loops of their own */
    const int special = tile_labels(target, w, C, ignore_index, lab);
    sblock_target_logits(xr, C, ld, w, lab, m, xt);
    if (wt_ != NULL) {
        for (idx_t j = 0; j < w; ++j) wt[j] = (double)wt_[lab[j] >= 0 ? lab[j] : 0];
    } else {
        for (idx_t j = 0; j < w; ++j) wt[j] = 1.0;
    }
    for (idx_t j = 0; j < w; ++j) sm[j] = 0.0;
    if (beta != 0.0) {
        for (idx_t c = 0; c < C; ++c) {
            const T *xc = xr + c * ld;
            double wc = wt_ != NULL ? (double)wt_[c] : 1.0;
#pragma omp simd
            for (idx_t j = 0; j < w; ++j) sm[j] += wc * ((double)xc[j] - (double)m[j]);
        }
    }
    /* with Grad the exponentials kept for pass 3: in the staged block
     * (unless capped: the gradient goes back through the cap from it), else
     * in grad (x is not read after this pass: grad may be x) */
    T *e = NULL;
    idx_t e_ld = inner;
    if (Grad && strided_store_exp(C)) {
        if (stage == NULL)
            e = IO::in_place(grad);
        else if (cap == (T)0)
            e = stage, e_ld = w;
    }
    const bool store = e != NULL;
    /* the next block's labels, which follow this block's: read from memory
     * in its tile_labels, they stalled it (5 % of the segmentation loss's
     * time, AVX2, one thread) */
    if (next.x != NULL) prefetch_columns(target + w, 0, next.w);
    sblock_exp_sum<!Grad, T, W>(xr, C, ld, w, m, s, e, e_ld, next);
    sblock_index_finish(w, lab, wt, xt, sm, s, w_total, alpha, beta, scale, loss, c1, ct, fill);
    if (ex != NULL) {
        /* z-loss and accuracy on top of the plain finish, as the row kernels
         * compute them: the loss and, without z-loss, the gradient keep the
         * plain call's bits (with its own finish the loss took libm's log, and
         * return_token_accuracy moved it by an ulp) */
        const double y_extra = beta != 0.0 ? beta * w_total : 0.0;
        for (idx_t j = 0; j < w; ++j) {
            double skip = lab[j] == -1 ? 0.0 : (double)NAN;
            double zl = 0.0;
            if (ex->z != 0.0 && lab[j] >= 0) {
                double c = 0.0;
                zl = z_loss_terms(ex->z, ex->zscale, alpha * wt[j] + y_extra, scale,
                                  (double)m[j], s[j], &c);
                c1[j] = (T)c;
            }
            if (ex->zrow != NULL) ex->zrow[j] = lab[j] >= 0 ? zl : skip;
            if (ex->acc != NULL) ex->acc[j] = lab[j] >= 0 ? token_correct(xt[j], s[j]) : skip;
        }
    }
    if (!Grad) return;
    /* each row of the gradient formed whole (its targets' lanes and the soft
     * cap's chain included) before the next, so that it can be streamed */
    const T cb = (T)(beta * scale), lo = exp_lo<T>();
    io.template write<W>(grad, C, inner, w, stage, stream, [&](idx_t c, T *gc) {
        const T *xc = xr + c * ld;
        T cw = beta != 0.0 ? cb * (wt_ != NULL ? wt_[c] : (T)1) : (T)0;
        const T *ec = store ? e + c * e_ld : xc;
        const int32_t cl = (int32_t)c;
        if (store && special) {
#pragma omp simd
            for (idx_t j = 0; j < w; ++j) {
                T g = ec[j] * c1[j] - cw;
                g = lab[j] == cl ? g - ct[j] : g;
                gc[j] = lab[j] >= 0 ? g : fill[j];
            }
        } else if (store) {
#pragma omp simd
            for (idx_t j = 0; j < w; ++j) {
                T g = ec[j] * c1[j] - cw;
                gc[j] = lab[j] == cl ? g - ct[j] : g;
            }
        } else if (special) {
#pragma omp simd
            for (idx_t j = 0; j < w; ++j) {
                T g = exp_nonpositive((T)(xc[j] - m[j]), lo) * c1[j] - cw;
                g = lab[j] == cl ? g - ct[j] : g;
                gc[j] = lab[j] >= 0 ? g : fill[j];
            }
        } else {
#pragma omp simd
            for (idx_t j = 0; j < w; ++j) {
                T g = exp_nonpositive((T)(xc[j] - m[j]), lo) * c1[j] - cw;
                gc[j] = lab[j] == cl ? g - ct[j] : g;
            }
        }
        if (cap != (T)0) row_softcap_grad(gc, stage + c * w, w, cap);
    });
}

/* The block of unit u (as strided_unit) of a cross-entropy: where it lies in
 * x and grad (outer, C, inner) and in the per-position arrays (outer, inner),
 * the extras from its first position, and the next block to prefetch.  Not
 * copied: ex may point at its bex. */
template <typename T> struct StridedLossBlock {
    StridedBlockAt at;
    double *loss;
    T *grad;
    CrossEntropyExtra bex;
    const CrossEntropyExtra *ex;
    StridedNext<T> next;
    StridedLossBlock(const T *x, idx_t C, idx_t inner, double *loss_, T *grad_, idx_t u,
                     const T *stage, const CrossEntropyExtra *ex_, T cap, int stream)
        : at(strided_unit_block(grad_, C, inner, stream, cap, u)), loss(loss_ + at.pos),
          grad(grad_ == NULL ? grad_ : grad_ + at.el), bex(), ex(extra_at(ex_, at.pos, &bex)),
          next(strided_next(x, C, inner, at, stage)) {}
    StridedLossBlock(const StridedLossBlock &) = delete;
};

/* Unit u (as strided_unit) of cross-entropy: x (outer, C, inner), target and
 * loss (outer, inner), grad like x or NULL; cap != 0: the logits soft-capped
 * at cap (stage then holds C x B elements). */
template <typename T, typename L>
static CS_REDUCTION void strided_cross_entropy_index_unit(
        const T *x, const L *target, idx_t C, idx_t inner, idx_t ignore_index, const T *w,
        double w_total, double alpha, double beta, double *loss, T *grad, double scale,
        idx_t u, T *stage, const CrossEntropyExtra *ex, T cap, int stream) {
    enum { B = StridedBlock<T>::B };
    const StridedLossBlock<T> b(x, C, inner, loss, grad, u, stage, ex, cap, stream);
    const idx_t n = b.at.w;
    const T *xb = x + b.at.el;
    const L *tb = target + b.at.pos;
    if (n == B) {
        if (grad != NULL)
            sblock_cross_entropy_index<true, T, L, B>(xb, tb, C, inner, n, ignore_index, w,
                                                      w_total, alpha, beta, b.loss, b.grad,
                                                      scale, stage, b.ex, cap, stream, b.next);
        else
            sblock_cross_entropy_index<false, T, L, B>(xb, tb, C, inner, n, ignore_index, w,
                                                       w_total, alpha, beta, b.loss, b.grad,
                                                       scale, stage, b.ex, cap, stream, b.next);
    } else {
        if (grad != NULL)
            sblock_cross_entropy_index<true, T, L, 0>(xb, tb, C, inner, n, ignore_index, w,
                                                      w_total, alpha, beta, b.loss, b.grad,
                                                      scale, stage, b.ex, cap, stream, b.next);
        else
            sblock_cross_entropy_index<false, T, L, 0>(xb, tb, C, inner, n, ignore_index, w,
                                                       w_total, alpha, beta, b.loss, b.grad,
                                                       scale, stage, b.ex, cap, stream, b.next);
    }
}

/* ---- cross-entropy with probability targets over the middle axis ------
 * The formulas of _cross_entropy_prob_row (kernels.pxi) per position, with
 * y'_k = w_k (alpha y_k + beta):
 *   loss = sum(y') lse - sum(y'_k (x_k - m))  (cross_entropy_prob_loss),
 *   grad = e c1 - y',  c1 = sum(y') / s (plus the z-loss term, z_loss_terms),
 * the targets' terms and sums in double.  y has x's layout (outer, C, inner)
 * and is read in place (it is not staged: each of its elements is read
 * twice, in pass 2 and in pass 3).  cap != 0: soft-capped as the class-index
 * kernel (the block staged capped).  grad may be x, not y. */
template <bool Grad, typename T, int W>
static inline void sblock_cross_entropy_prob(
        const T *x, const T *y, idx_t C, idx_t inner, idx_t w_, const T *wt_, double alpha,
        double beta, double *loss, T *grad, double scale, T *stage, const CrossEntropyExtra *ex,
        T cap, int stream, const StridedNext<T> &next) {
    const idx_t w = W > 0 ? (idx_t)W : w_;
    enum { BW = W > 0 ? W : StridedBlock<T>::WIDE };
    T m[BW], c1[BW];
    double s[BW], ys[BW], yd[BW];
    if (cap != (T)0)
        sblock_capped_max<T, W>(x, C, inner, w, m, stage, cap);
    else
        sblock_max<T, W>(x, C, inner, w, m, stage);
    const T *xr = stage != NULL ? stage : x;     /* the block as read from here on */
    const idx_t ld = stage != NULL ? w : inner;
    for (idx_t j = 0; j < w; ++j) ys[j] = 0.0, yd[j] = 0.0;
    for (idx_t c = 0; c < C; ++c) {
        const T *xc = xr + c * ld;
        const T *yc = y + c * inner;
        double wc = wt_ != NULL ? (double)wt_[c] : 1.0;
#pragma omp simd
        for (idx_t j = 0; j < w; ++j) {
            double yk = wc * (alpha * (double)yc[j] + beta);
            ys[j] += yk;
            yd[j] += yk * ((double)xc[j] - (double)m[j]);
        }
    }
    sblock_exp_sum<!Grad, T, W>(xr, C, ld, w, m, s, (T *)NULL, 0, next);
    for (idx_t j = 0; j < w; ++j) {
        double c = ys[j] / s[j] * scale;
        if (ex != NULL && ex->z != 0.0) {
            double zl = z_loss_terms(ex->z, ex->zscale, ys[j], scale, (double)m[j], s[j], &c);
            if (ex->zrow != NULL) ex->zrow[j] = zl;
        }
        loss[j] = cross_entropy_prob_loss(ys[j], yd[j], s[j]);
        c1[j] = (T)c;
    }
    if (!Grad) return;
    const T a2 = (T)(alpha * scale), b2 = (T)(beta * scale), lo = exp_lo<T>();
    sblock_write_rows<T, W>(grad, C, inner, w, stage, stream, [&](idx_t c, T *gc) {
        const T *xc = xr + c * ld;
        const T *yc = y + c * inner;
        T wc = wt_ != NULL ? wt_[c] : (T)1;
#pragma omp simd
        for (idx_t j = 0; j < w; ++j)
            gc[j] = exp_nonpositive((T)(xc[j] - m[j]), lo) * c1[j] - wc * (a2 * yc[j] + b2);
        if (cap != (T)0) row_softcap_grad(gc, stage + c * w, w, cap);
    });
}

/* Unit u (as strided_unit) of cross-entropy with probability targets: x and y
 * (outer, C, inner), loss (outer, inner), grad like x or NULL. */
template <typename T>
static CS_REDUCTION void strided_cross_entropy_prob_unit(
        const T *x, const T *y, idx_t C, idx_t inner, const T *w, double alpha, double beta,
        double *loss, T *grad, double scale, idx_t u, T *stage, const CrossEntropyExtra *ex,
        T cap, int stream) {
    enum { B = StridedBlock<T>::B };
    const StridedLossBlock<T> b(x, C, inner, loss, grad, u, stage, ex, cap, stream);
    const idx_t n = b.at.w;
    const T *xb = x + b.at.el, *yb = y + b.at.el;
    if (n == B) {
        if (grad != NULL)
            sblock_cross_entropy_prob<true, T, B>(xb, yb, C, inner, n, w, alpha, beta, b.loss,
                                                  b.grad, scale, stage, b.ex, cap, stream, b.next);
        else
            sblock_cross_entropy_prob<false, T, B>(xb, yb, C, inner, n, w, alpha, beta, b.loss,
                                                   b.grad, scale, stage, b.ex, cap, stream, b.next);
    } else {
        if (grad != NULL)
            sblock_cross_entropy_prob<true, T, 0>(xb, yb, C, inner, n, w, alpha, beta, b.loss,
                                                  b.grad, scale, stage, b.ex, cap, stream, b.next);
        else
            sblock_cross_entropy_prob<false, T, 0>(xb, yb, C, inner, n, w, alpha, beta, b.loss,
                                                   b.grad, scale, stage, b.ex, cap, stream, b.next);
    }
}

}  // namespace csoftmax

#endif
