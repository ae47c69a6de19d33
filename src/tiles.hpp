/*
 * tiles.hpp -- short rows (n < 32 columns), a tile of consecutive rows at a
 * time: softmax's and log_softmax's max and exponentials, and cross-entropy
 * with class indices.  Split from rowops.hpp, whose one-row primitives and
 * exp/log these build on.
 */
#ifndef CSOFTMAX_TILES_HPP
#define CSOFTMAX_TILES_HPP

#include "rowops.hpp"

namespace csoftmax {

/* ---- tiles of short rows ------------------------------------------------
 * For rows shorter than a vector or two, per-row loops spend their time on
 * loop set-up and horizontal reductions.  These helpers take a tile of `rows`
 * consecutive rows of width n and do the expensive part, the exp, as one flat
 * vector loop over the whole tile. */

/* m[r] = max of row r, for each row of the tile: rows are the vector lanes,
 * columns the loop (strided loads, but no per-row loop set-up). */
template <typename T> static CS_REDUCTION void tile_max(const T *x, idx_t rows, idx_t n, T *m) {
    for (idx_t r = 0; r < rows; ++r) m[r] = (T)-INFINITY;
    for (idx_t k = 0; k < n; ++k) {
#pragma omp simd
        for (idx_t r = 0; r < rows; ++r) {
            T v = x[r * n + k];
            m[r] = v > m[r] ? v : m[r];
        }
    }
}

/* e = exp(x - m[row]) over the tile, s[r] = sum of row r of e in double (in
 * column order, rows as the vector lanes).  e may be x. */
template <typename T>
static CS_REDUCTION void tile_exp_shifted(const T *x, T *e, idx_t rows, idx_t n, const T *m, double *s) {
    for (idx_t r = 0; r < rows; ++r)
        for (idx_t k = 0; k < n; ++k) e[r * n + k] = x[r * n + k] - m[r];
    idx_t total = rows * n, nv = vector_part(total);
#pragma omp simd
    for (idx_t k = 0; k < nv; ++k) e[k] = exp_nonpositive(e[k]);
    if (nv < total) {
        T buf[EXP_TAIL];
        exp_tail<true>(e + nv, total - nv, (T)0, buf);
        for (idx_t l = 0; l < total - nv; ++l) e[nv + l] = buf[l];
    }
    for (idx_t r = 0; r < rows; ++r) s[r] = 0.0;
    for (idx_t k = 0; k < n; ++k) {
#pragma omp simd
        for (idx_t r = 0; r < rows; ++r) s[r] += (double)e[r * n + k];
    }
}

/* ---- cross-entropy over a tile of short rows ------------------------- */

/* log(x) for x >= 1 (finite) or NaN: the log of a sum of exponentials shifted
 * by the row maximum, whose largest term is exp(0) = 1.  fdlibm's e_log.c
 * (error < 1 ulp) without its branches for zero, negative, subnormal and
 * infinite arguments, so that it vectorises; NaN is passed through. */
static inline double log_ge1(double x) {
    const double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
    const double Lg1 = 6.666666666666735130e-01, Lg2 = 3.999999999940941908e-01,
                 Lg3 = 2.857142874366239149e-01, Lg4 = 2.222219843214978396e-01,
                 Lg5 = 1.818357216161805012e-01, Lg6 = 1.531383769920937332e-01,
                 Lg7 = 1.479819860511658591e-01;
    uint64_t b = double_bits(x);
    int64_t k = (int64_t)(b >> 52) - 1023;                      /* x >= 1: no sign bit */
    double f = bits_as_double((b & 0x000fffffffffffffull) | 0x3ff0000000000000ull);
    int big = f > 1.4142135623730951;                          /* f in [sqrt2/2, sqrt2) */
    f = big ? 0.5 * f : f;
    k = big ? k + 1 : k;
    f = f - 1.0;
    double dk = (double)k;
    double hfsq = 0.5 * f * f;
    double s = f / (2.0 + f);
    double z = s * s, w = z * z;
    double t1 = w * (Lg2 + w * (Lg4 + w * Lg6));
    double t2 = z * (Lg1 + w * (Lg3 + w * (Lg5 + w * Lg7)));
    double r = dk * ln2_hi - ((hfsq - (s * (hfsq + t1 + t2) + dk * ln2_lo)) - f);
    return x == x ? r : x;
}

/* log_ge1 in float, for float32 logits, whose loss needs no more: FreeBSD's
 * e_logf.c (error < 1 ulp of float) in the same branch-free form. */
static inline float log_ge1(float x) {
    const float ln2_hi = 6.9313812256e-01f, ln2_lo = 9.0580006145e-06f;
    const float Lg1 = 0.66666662693f, Lg2 = 0.40000972152f, Lg3 = 0.28498786688f,
                Lg4 = 0.24279078841f;
    uint32_t b = float_bits(x);
    int32_t k = (int32_t)(b >> 23) - 127;
    float f = bits_as_float((b & 0x007fffffu) | 0x3f800000u);
    int big = f > 1.41421356f;
    f = big ? 0.5f * f : f;
    k = big ? k + 1 : k;
    f = f - 1.0f;
    float dk = (float)k;
    float hfsq = 0.5f * f * f;
    float s = f / (2.0f + f);
    float z = s * s, w = z * z;
    float t1 = w * (Lg2 + w * Lg4);
    float t2 = z * (Lg1 + w * Lg3);
    float r = dk * ln2_hi - ((hfsq - (s * (hfsq + t1 + t2) + dk * ln2_lo)) - f);
    return x == x ? r : x;
}

/* Cross-entropy with class indices over a tile of `rows` short rows (n < 32,
 * rows * n <= TILE): the loss of each row into loss[r] and, unless grad is
 * NULL, the gradient times `scale` into grad (which may be x).  Rows are the
 * vector lanes here: the max (tile_max), the labels, the smoothing sum, the
 * sum of the exponentials and the finish (log, loss, gradient coefficients)
 * are vector loops over rows, and exp is one flat vector loop over the tile
 * (tile_exp_shifted, shared with softmax and log_softmax); only the
 * shift by the row's max, the gradient's affine map and the target's logit
 * are loops per row (a vector gather of per-row values by element is not
 * emitted by GCC for double).  Per row the arithmetic (sums in k order, in
 * double) matches _cross_entropy_index_row's formulas:
 *   loss = alpha w_t (lse - x_t) [+ beta (W lse - sum_k w_k (x_k - m))]
 *   grad = e (alpha w_t [+ beta W]) / s * scale [- beta scale w_k] - [k == t] alpha w_t scale
 * with W = w_total.  Label t is read once; t == ignore_index gives loss 0 and
 * a zero gradient row, any other label outside [0, n) a NaN loss and row. */
enum { TILE = 1024 };

/* The gradient rows that a cross-entropy tile skips: zero where the label is
 * ignore_index, NaN where it is outside [0, n). */
template <typename T> static inline void tile_skipped_row(T *grad, idx_t n, int ignored) {
    if (ignored)
        row_zero(grad, n);
    else
        row_fill(grad, n, (T)NAN);
}

template <typename T, typename L>
static inline void tile_cross_entropy_index_any(
        const T *x, const L *target, idx_t rows, idx_t n, idx_t ignore_index, const T *w,
        double w_total, double alpha, double beta, double *loss, T *grad, double scale) {
    T m[TILE], c1[TILE], ct[TILE], ebuf[TILE];
    double s[TILE], xt[TILE], wt[TILE], smooth[TILE];
    int32_t lab[TILE];                 /* the label, -1 ignored, -2 out of range */
    T *e = grad != NULL ? grad : ebuf;

    tile_max(x, rows, n, m);
#pragma omp simd
    for (idx_t r = 0; r < rows; ++r) {
        idx_t t = (idx_t)target[r];  /* compared in 64 bits: ignore_index need not fit in L */
        int valid = t != ignore_index && t >= 0 && t < n;
        lab[r] = valid ? (int32_t)t : (t == ignore_index ? -1 : -2);
    }
    for (idx_t r = 0; r < rows; ++r) {      /* loads at a data-dependent column */
        int32_t tt = lab[r] >= 0 ? lab[r] : 0;
        xt[r] = (double)x[r * n + tt] - (double)m[r];
        wt[r] = w != NULL ? (double)w[tt] : 1.0;
    }
    for (idx_t r = 0; r < rows; ++r) smooth[r] = 0.0;
    if (beta != 0.0) {
        for (idx_t k = 0; k < n; ++k) {
            double wk = w != NULL ? (double)w[k] : 1.0;
#pragma omp simd
            for (idx_t r = 0; r < rows; ++r) smooth[r] += wk * ((double)x[r * n + k] - (double)m[r]);
        }
    }
    /* x is read for the last time: from here e (= grad) may overwrite it */
    tile_exp_shifted(x, e, rows, n, m, s);
    const double y_extra = beta != 0.0 ? beta * w_total : 0.0;
    int special = 0;                   /* rows ignored or out of range */
#pragma omp simd reduction(+ : special)
    for (idx_t r = 0; r < rows; ++r) {
        double lse = (double)log_ge1((T)s[r]);   /* the logits' precision */
        double aw = alpha * wt[r];
        double l = aw * (lse - xt[r]);
        if (beta != 0.0) l += beta * (w_total * lse - smooth[r]);
        loss[r] = lab[r] >= 0 ? l : (lab[r] == -1 ? 0.0 : (double)NAN);
        special += lab[r] < 0;
        c1[r] = (T)((aw + y_extra) / s[r] * scale);
        ct[r] = (T)(aw * scale);
    }
    if (grad == NULL) return;
    const T cb = (T)(beta * scale);
    for (idx_t r = 0; r < rows; ++r) {
        T *g = grad + r * n;
        if (beta != 0.0)
            row_grad_affine(g, w, n, c1[r], cb);
        else
            row_scale(g, n, c1[r]);
        if (lab[r] >= 0) g[lab[r]] -= ct[r];
    }
    if (special > 0)
        for (idx_t r = 0; r < rows; ++r)
            if (lab[r] < 0) tile_skipped_row(grad + r * n, n, lab[r] == -1);
}

/* tile_cross_entropy_index for rows of two classes (rows <= TILE / 2): one
 * vector loop over the rows does everything, with the same formulas and
 * order of operations. */
template <bool Grad, typename T, typename L>
static inline void tile_cross_entropy_binary(
        const T *x, const L *target, idx_t rows, idx_t ignore_index, const T *w,
        double w_total, double alpha, double beta, double *loss, T *grad, double scale) {
    const double w0 = w != NULL ? (double)w[0] : 1.0, w1 = w != NULL ? (double)w[1] : 1.0;
    const T cb0 = (T)(beta * scale) * (w != NULL ? w[0] : (T)1);
    const T cb1 = (T)(beta * scale) * (w != NULL ? w[1] : (T)1);
    const double y_extra = beta != 0.0 ? beta * w_total : 0.0;
    int32_t skipped[TILE / 2];         /* 0 computed, 1 ignored, 2 label out of range */
    int special = 0;
#pragma omp simd reduction(+ : special)
    for (idx_t r = 0; r < rows; ++r) {
        idx_t t = (idx_t)target[r];  /* compared in 64 bits: ignore_index need not fit in L */
        int valid = t != ignore_index && t >= 0 && t < 2;
        skipped[r] = valid ? 0 : (t == ignore_index ? 1 : 2);
        int is1 = t == 1;
        T x0 = x[2 * r], x1 = x[2 * r + 1];
        T m = x0 > (T)-INFINITY ? x0 : (T)-INFINITY;
        m = x1 > m ? x1 : m;
        /* one of d0, d1 is 0 (exp = 1 exactly) unless NaN is about: one exp of
         * their sum gives the other, and NaN still reaches both sums */
        T d0 = x0 - m, d1 = x1 - m;
        T ex = exp_nonpositive((T)(d0 + d1));
        T e0 = d0 == (T)0 ? (T)1 : ex, e1 = d1 == (T)0 ? (T)1 : ex;
        double s = (double)e0 + (double)e1;
        double lse = (double)log_ge1((T)s);
        double aw = alpha * (is1 ? w1 : w0);
        double l = aw * (lse - ((double)(is1 ? x1 : x0) - (double)m));
        if (beta != 0.0)
            l += beta * (w_total * lse - (w0 * ((double)x0 - (double)m) + w1 * ((double)x1 - (double)m)));
        loss[r] = valid ? l : (t == ignore_index ? 0.0 : (double)NAN);
        special += !valid;
        if (Grad) {
            T c1 = (T)((aw + y_extra) / s * scale), ct = (T)(aw * scale);
            T g0 = e0 * c1, g1 = e1 * c1;
            if (beta != 0.0) {
                g0 -= cb0;
                g1 -= cb1;
            }
            grad[2 * r] = is1 ? g0 : g0 - ct;
            grad[2 * r + 1] = is1 ? g1 - ct : g1;
        }
    }
    if (Grad && special > 0)           /* the labels as read above: each is read once */
        for (idx_t r = 0; r < rows; ++r)
            if (skipped[r] != 0) tile_skipped_row(grad + 2 * r, 2, skipped[r] == 1);
}

template <typename T, typename L>
static CS_REDUCTION void tile_cross_entropy_index(
        const T *x, const L *target, idx_t rows, idx_t n, idx_t ignore_index, const T *w,
        double w_total, double alpha, double beta, double *loss, T *grad, double scale) {
    if (n == 2 && grad != NULL)  /* binary classification: the common short row */
        tile_cross_entropy_binary<true>(x, target, rows, ignore_index, w, w_total, alpha, beta,
                                        loss, grad, scale);
    else if (n == 2)
        tile_cross_entropy_binary<false>(x, target, rows, ignore_index, w, w_total, alpha, beta,
                                         loss, grad, scale);
    else
        tile_cross_entropy_index_any(x, target, rows, n, ignore_index, w, w_total, alpha, beta,
                                     loss, grad, scale);
}

}  // namespace csoftmax

#endif
