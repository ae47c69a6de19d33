/*
 * tiles.hpp -- short rows (fewer than SHORT_ROW_BYTES bytes), a tile of
 * consecutive rows at a time: softmax's and log_softmax's max and
 * exponentials, and cross-entropy with class indices.  Split from rowops.hpp,
 * whose one-row primitives and exp/log these build on.
 */
#ifndef CSOFTMAX_TILES_HPP
#define CSOFTMAX_TILES_HPP

#include "tileblocks.hpp"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace csoftmax {

/* The vector width of the build, for loops that mix float and double (see
 * tile_cross_entropy_binary). */
#if defined(__AVX512F__)
enum { VECTOR_BYTES = 64 };
#elif defined(__AVX__)
enum { VECTOR_BYTES = 32 };
#else
enum { VECTOR_BYTES = 16 };
#endif

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
    const T lo = exp_lo<T>();
#pragma omp simd
    for (idx_t k = 0; k < nv; ++k) e[k] = exp_nonpositive(e[k], lo);
    if (nv < total) {
        T buf[EXP_TAIL];
        exp_tail<true>(e + nv, total - nv, (T)0, buf);
        tail_store(e + nv, total - nv, buf);
    }
    for (idx_t r = 0; r < rows; ++r) s[r] = 0.0;
    for (idx_t k = 0; k < n; ++k) {
#pragma omp simd
        for (idx_t r = 0; r < rows; ++r) s[r] += (double)e[r * n + k];
    }
}

/* s[l] = sum_k exp(c_kl - m[l]) in double, in column order (at most 63
 * terms, each <= 1: the largest is exp(0) = 1, so s is in [1, 63] or NaN);
 * Store: the exponentials replace c.  A float sum lost up to n ulp, which
 * every probability of the row inherits (5 ulp at 10 classes, more than
 * PyTorch's error); in double the sum is exact to well below a float ulp.
 *
 * Below AVX-512 (two vectors a column of the block, sixteen registers) the
 * exponentials are first stored, to c or to a scratch block, and summed in a
 * second loop: with the sums in the same loop, its double accumulators and
 * the exp's constants did not fit in the registers and were spilled and
 * reloaded every column, and the exp of a column waited on them.  Split,
 * the exp loop carries nothing from one column to the next: the loss of
 * 65536x10 float32 logits took 0.95x the time on AVX2 (AMD Zen 3, one
 * thread), 0.92x on the baseline build, logsumexp 0.90x / 0.92x; the same
 * sums in the same order, so the same bits.  AVX-512 keeps the single loop
 * (one vector a column, no spill), as measured before. */
#if defined(__AVX512F__)
enum { EXP_SUM_SPLIT = 0 };
#else
enum { EXP_SUM_SPLIT = 1 };
#endif

/* acc_l += e_kl widened to double, k = 0 .. n - 1 in column order */
template <typename T> static inline void block_widen_sum(const T *e, idx_t n, double *acc) {
    for (idx_t k = 0; k < n; ++k) {
#pragma omp simd
        for (idx_t l = 0; l < LANES; ++l) acc[l] += (double)e[k * LANES + l];
    }
}

#if defined(__AVX2__) && !defined(__AVX512F__)
/* GCC's loop widened each float vector's upper half by an extract and a
 * conversion; a conversion from memory takes four floats in one
 * instruction.  The same additions in the same order. */
template <> inline void block_widen_sum<float>(const float *e, idx_t n, double *acc) {
    static_assert(LANES == 16, "four double vectors a column");
    __m256d a0 = _mm256_loadu_pd(acc), a1 = _mm256_loadu_pd(acc + 4);
    __m256d a2 = _mm256_loadu_pd(acc + 8), a3 = _mm256_loadu_pd(acc + 12);
    for (idx_t k = 0; k < n; ++k) {
        const float *ek = e + k * LANES;
        a0 = _mm256_add_pd(_mm256_cvtps_pd(_mm_loadu_ps(ek)), a0);
        a1 = _mm256_add_pd(_mm256_cvtps_pd(_mm_loadu_ps(ek + 4)), a1);
        a2 = _mm256_add_pd(_mm256_cvtps_pd(_mm_loadu_ps(ek + 8)), a2);
        a3 = _mm256_add_pd(_mm256_cvtps_pd(_mm_loadu_ps(ek + 12)), a3);
    }
    _mm256_storeu_pd(acc, a0), _mm256_storeu_pd(acc + 4, a1);
    _mm256_storeu_pd(acc + 8, a2), _mm256_storeu_pd(acc + 12, a3);
}
#endif

template <bool Store, typename T> static inline void block_exp_sum(T *c, idx_t n, const T *m, double *s) {
    double acc[LANES];                 /* local: no aliasing with c, so kept in registers */
    T mk[LANES];
    T scratch[EXP_SUM_SPLIT && !Store ? SHORT_ROW_MAX * LANES : 1];
    T *e = Store ? c : scratch;        /* where the split loop puts the exponentials */
    const T lo = exp_lo<T, !Store>();  /* a sum alone: Summand */
#pragma omp simd
    for (idx_t l = 0; l < LANES; ++l) acc[l] = 0.0, mk[l] = m[l];
    for (idx_t k = 0; k < n; ++k) {
#pragma omp simd
        for (idx_t l = 0; l < LANES; ++l) {
            T v = exp_nonpositive_as<!Store>((T)(c[k * LANES + l] - mk[l]), lo);
            if (EXP_SUM_SPLIT || Store) e[k * LANES + l] = v;
            if (!EXP_SUM_SPLIT) acc[l] += (double)v;
        }
    }
    if (EXP_SUM_SPLIT) block_widen_sum(e, n, acc);
#pragma omp simd
    for (idx_t l = 0; l < LANES; ++l) s[l] = acc[l];
}

/* ---- cross-entropy over a tile of short rows ------------------------- */

/* log(x) for x >= 1 (finite) or NaN: the log of a sum of exponentials shifted
 * by the row maximum, whose largest term is exp(0) = 1.  fdlibm's e_log.c
 * (error < 1 ulp) without its branches for zero, negative, subnormal and
 * infinite arguments, so that it vectorises; NaN is passed through. */
CS_INLINE double log_ge1(double x) {
    const double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
    const double Lg1 = 6.666666666666735130e-01, Lg2 = 3.999999999940941908e-01,
                 Lg3 = 2.857142874366239149e-01, Lg4 = 2.222219843214978396e-01,
                 Lg5 = 1.818357216161805012e-01, Lg6 = 1.531383769920937332e-01,
                 Lg7 = 1.479819860511658591e-01;
    uint64_t b = double_bits(x);
    /* the exponent k as a double without an int64 -> double conversion,
     * which AVX2 lacks (GCC left the whole loop scalar): its biased bits
     * (x >= 1: no sign bit) in the mantissa of 2^52, less 2^52 + 1023 */
    double dk = bits_as_double((b >> 52) | 0x4330000000000000ull) - (4503599627370496.0 + 1023.0);
    double f = bits_as_double((b & 0x000fffffffffffffull) | 0x3ff0000000000000ull);
    int big = f > 1.4142135623730951;                          /* f in [sqrt2/2, sqrt2) */
    f = big ? 0.5 * f : f;
    dk = big ? dk + 1.0 : dk;
    f = f - 1.0;
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
CS_INLINE float log_ge1(float x) {
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

/* Cross-entropy with class indices over a tile of `rows` short rows (n <= SHORT_ROW_MAX,
 * rows * n <= TILE): the loss of each row into loss[r] and, unless grad is
 * NULL, the gradient times `scale` into grad (which may be x).  A block of
 * LANES rows at a time, transposed (see tile_in): the max, the target's
 * logit (a select per column: no gather), the smoothing sum, the exp and
 * its sum, the finish (log, loss, gradient coefficients) and the gradient
 * are vector loops over the block's rows.  Per row the arithmetic (sums in
 * k order) follows _cross_entropy_index_row's formulas:
 *   loss = alpha w_t (lse - x_t) [+ beta (W lse - sum_k w_k (x_k - m))]
 *   grad = e (alpha w_t [+ beta W]) / s * scale [- beta scale w_k] - [k == t] alpha w_t scale
 * with W = w_total, the sum of exponentials s in double (see block_exp_sum)
 * and the loss in double.  Label t is read once; t == ignore_index gives
 * loss 0 and a zero gradient row, any other label outside [0, n) a NaN loss
 * and row. */

/* tile_labels' first loop: the labels copied to int32, and the OR of their
 * tests (outside [0, n); TestIgnore: or ignore_index) */
template <bool TestIgnore, typename L>
static inline idx_t tile_labels_copy(const L *target, idx_t rows, idx_t n, idx_t ignore_index,
                                     int32_t *lab) {
    idx_t other = 0;
#pragma omp simd reduction(| : other)
    for (idx_t r = 0; r < rows; ++r) {
        idx_t t = (idx_t)target[r];
        lab[r] = (int32_t)t;
        other |= (idx_t)((uint64_t)t >= (uint64_t)n);
        if (TestIgnore) other |= (idx_t)(t == ignore_index);
    }
    return other;
}

/* lab[r] = the class index of row r as int32, -1 where it is ignore_index, -2
 * where it is outside [0, n); returns the number of rows of the latter two.
 * First the common case, all labels class indices: a copy and one OR of
 * 64-bit tests (as one classifying loop, GCC carried each row's tests as
 * 64-bit masks through compares, ANDs and blends, and packed them to 32
 * bits: 5 instructions a row, 13 % of the AVX2 loss and gradient of
 * 262144x2).  Where a label is not, the labels are classified again, read
 * once more: every lab then comes from that one read (ignore_index is
 * compared in 64 bits: it need not fit in L). */
template <typename L>
static inline int tile_labels(const L *target, idx_t rows, idx_t n, idx_t ignore_index, int32_t *lab) {
    /* ignore_index outside [0, n) (the default -100): a label equal to it is
     * outside [0, n) too, so the range test alone finds every label that is
     * not a class (2 % of the instructions of the AVX2 loss of 262144x2) */
    idx_t other = (uint64_t)ignore_index >= (uint64_t)n
                      ? tile_labels_copy<false>(target, rows, n, ignore_index, lab)
                      : tile_labels_copy<true>(target, rows, n, ignore_index, lab);
    if (other == 0) return 0;
    int special = 0;
#pragma omp simd reduction(+ : special)
    for (idx_t r = 0; r < rows; ++r) {
        idx_t t = (idx_t)target[r];
        int valid = t != ignore_index && t >= 0 && t < n;
        lab[r] = valid ? (int32_t)t : (t == ignore_index ? -1 : -2);
        special += !valid;
    }
    return special;
}

/* The rows of a tile whose labels tile_labels classified (lab, special its
 * count of rows that are not classes) that are not ignore_index, or -1 where
 * one is outside [0, n): the loss alone checks its labels so (see
 * _cross_entropy_index_core in calls.pxi), with no pass of their own. */
static inline idx_t tile_labels_kept(const int32_t *lab, idx_t rows, int special) {
    if (special == 0) return rows;
    idx_t n_kept = 0;
    for (idx_t r = 0; r < rows; ++r) {
        if (lab[r] == -2) return -1;
        n_kept += lab[r] >= 0;
    }
    return n_kept;
}

/* The rows of a tile that its labels skip (lab -1: ignore_index, loss 0 and
 * a zero gradient row; -2: outside [0, n), NaN), written over what the row
 * loops computed for them: those loops compute every row alike, with no
 * per-row select of the loss (its int32 mask widened to two double vectors
 * and two blends: 9 % of the instructions of the AVX2 binary loss + gradient
 * of 262144x2).  Each of bl, bz, ba (Extra) and grad may be NULL. */
template <typename T>
static inline void tile_skipped_rows(const int32_t *lab, idx_t rows, idx_t n, double *bl,
                                     double *bz, double *ba, T *grad) {
    for (idx_t r = 0; r < rows; ++r) {
        if (lab[r] >= 0) continue;
        int ignored = lab[r] == -1;
        double skip = ignored ? 0.0 : (double)NAN;
        if (bl != NULL) bl[r] = skip;
        if (bz != NULL) bz[r] = skip, ba[r] = skip;
        if (grad == NULL) continue;
        if (ignored)
            row_zero(grad + r * n, n);
        else
            row_fill(grad + r * n, n, (T)NAN);
    }
}

/* The row statistics of one block (LANES rows, transposed in c) of
 * tile_cross_entropy_index_any after its max m (tile_in_stats): with
 * smoothing the weighted sum of x - m, and the exp-sum s (Grad: the
 * exponentials replace c).  The finish (log, loss, gradient coefficients) is
 * left to one loop over the whole tile: per block its log was a chain of
 * dependent operations that the next block's loops could not hide (17 % of
 * the AVX2 loss at 65536x10). */
template <bool Grad, typename T>
static inline void block_cross_entropy_stats(T *c, idx_t n, const T *w, double beta, const T *m,
                                             double *smooth, double *s) {
    if (beta != 0.0) {
        double sm[LANES];
#pragma omp simd
        for (idx_t l = 0; l < LANES; ++l) sm[l] = 0.0;
        for (idx_t k = 0; k < n; ++k) {
            double wk = w != NULL ? (double)w[k] : 1.0;
#pragma omp simd
            for (idx_t l = 0; l < LANES; ++l)
                sm[l] += wk * ((double)c[k * LANES + l] - (double)m[l]);
        }
#pragma omp simd
        for (idx_t l = 0; l < LANES; ++l) smooth[l] = sm[l];
    }
    block_exp_sum<Grad>(c, n, m, s);
}

/* The gradient of one block from its exponentials in c, with smoothing
 * (beta != 0): e c1 - beta scale w_k [- ct at the target].  Without it,
 * tile_out_map's ROWS_GRAD. */
template <typename T>
static inline void block_cross_entropy_grad(T *c, idx_t n, const int32_t *lab, const T *w,
                                            double beta, double scale, const T *c1, const T *ct) {
    const T cb = (T)(beta * scale);
    T c1b[LANES], ctb[LANES];
    int32_t lb[LANES];
#pragma omp simd
    for (idx_t l = 0; l < LANES; ++l) c1b[l] = c1[l], ctb[l] = ct[l], lb[l] = lab[l];
    for (idx_t k = 0; k < n; ++k) {
        T *ck = c + k * LANES;
        T cw = cb * (w != NULL ? w[k] : (T)1);
#pragma omp simd
        for (idx_t l = 0; l < LANES; ++l) {
            T v = ck[l] * c1b[l] - cw;
            ck[l] = lb[l] == (int32_t)k ? v - ctb[l] : v;
        }
    }
}

/* The gradient of a tile from the exponentials in its blocks c, into grad
 * (row-major): without smoothing tile_out_map (on the way out of the blocks
 * where Transpose4 takes the rows); with it a pass over each block
 * (block_cross_entropy_grad), then tile_out. */
template <typename T>
static inline void tile_out_grad(T *c, idx_t rows, idx_t n, const int32_t *lab, const T *w,
                                 double beta, double scale, const T *c1, const T *ct, T *grad) {
    if (beta == 0.0) {
        tile_out_map<ROWS_GRAD>(c, rows, n, lab, c1, ct, grad);
        return;
    }
    for (idx_t r = 0; r < rows; r += LANES)
        block_cross_entropy_grad(c + r * n, n, lab + r, w, beta, scale, c1 + r, ct + r);
    tile_out(c, rows, n, grad);
}

/* The finish of `rows` rows (a multiple of LANES) from their statistics:
 * the loss into bl, with Extra the z term and the accuracy into bz and ba,
 * with Grad the gradient coefficients c1 (of the exponentials) and ct (of
 * the target).  bl may be smooth (each row's sum is read before its loss is
 * written).  Every row alike: the rows that their labels skip are written
 * over afterwards (tile_skipped_rows).  wt: the labels' weights (all ones
 * without class weights: never NULL, since GCC if-converts a NULL test into
 * masked loads from the NULL pointer, which on AVX2 take a microcode assist
 * each -- the whole tile ran 1.8x slower). */
template <bool Grad, bool Extra, typename T>
static inline void tile_cross_entropy_finish(
        idx_t rows, const double *wt, const T *m, const T *xv,
        const double *smooth, const double *s, double w_total, double alpha, double beta,
        double scale, const CrossEntropyExtra *ex, double *bl, double *bz, double *ba, T *c1,
        T *ct) {
    const double y_extra = beta != 0.0 ? beta * w_total : 0.0;
    /* Extra: z-loss and accuracy (see CrossEntropyExtra), the z term with
     * this path's lse, and its gradient coefficient only where z != 0 */
    const double z = Extra ? ex->z : 0.0, zs = Extra ? ex->zscale : 0.0;
#pragma omp simd
    for (idx_t r = 0; r < rows; ++r) {
        double lse = (double)log_ge1((T)s[r]);    /* the logits' precision */
        double aw = alpha * wt[r];
        double v = aw * (lse - ((double)xv[r] - (double)m[r]));
        if (beta != 0.0) v += beta * (w_total * lse - smooth[r]);
        bl[r] = v;                     /* skipped rows: tile_skipped_rows */
        double lt = (double)m[r] + lse;
        if (Extra) {
            bz[r] = z * lt * lt;
            ba[r] = xv[r] == m[r] && s[r] == s[r] ? 1.0 : 0.0;
        }
        if (Grad) {
            c1[r] = Extra && z != 0.0
                        ? (T)(((aw + y_extra) * scale + 2.0 * z * zs * lt) / (double)s[r])
                        : (T)((aw + y_extra) / (double)s[r] * scale);
            ct[r] = (T)(aw * scale);
        }
    }
}

template <bool Grad, bool Extra, typename T, typename L>
static inline double tile_cross_entropy_index_any(
        const T *x, const L *target, idx_t rows, idx_t n, idx_t ignore_index, const T *w,
        double w_total, double alpha, double beta, double *loss, T *grad, double scale,
        const CrossEntropyExtra *ex, idx_t *kept = NULL) {
    enum { R = TILE + LANES };
    T c[TILE_BLOCKS];
    int32_t lab[R];
    double wt[R], bl[R], s[R];         /* bl holds the smoothing sums until the finish */
    T m[R], xv[R], c1[Grad ? R : 1], ct[Grad ? R : 1];
    double bz[Extra ? R : 1], ba[Extra ? R : 1];
    int special = tile_labels(target, rows, n, ignore_index, lab);
    if (kept != NULL) *kept = tile_labels_kept(lab, rows, special);
    idx_t padded = (rows + LANES - 1) / LANES * LANES;
    for (idx_t r = rows; r < padded; ++r) lab[r] = -1;
    if (w != NULL)                     /* loads at a data-dependent index */
        for (idx_t r = 0; r < padded; ++r) wt[r] = lab[r] >= 0 ? (double)w[lab[r]] : 1.0;
    else
        for (idx_t r = 0; r < padded; ++r) wt[r] = 1.0;
    /* x is not read again: grad may overwrite it.  The target's logit: a
     * select per column, no gather */
    tile_in_stats<true>(x, rows, n, c, lab, m, xv);
    for (idx_t r = 0; r < rows; r += LANES)
        block_cross_entropy_stats<Grad>(c + r * n, n, w, beta, m + r, bl + r, s + r);
    tile_cross_entropy_finish<Grad, Extra>(padded, wt, m, xv, bl, s, w_total, alpha,
                                           beta, scale, ex, bl, bz, ba, c1, ct);
    if (special > 0)
        tile_skipped_rows<T>(lab, rows, n, bl, Extra ? bz : NULL, Extra ? ba : NULL, NULL);
    if (loss != NULL) memcpy(loss, bl, (size_t)rows * sizeof(double));
    if (Extra && ex->zrow != NULL) memcpy(ex->zrow, bz, (size_t)rows * sizeof(double));
    if (Extra && ex->acc != NULL) memcpy(ex->acc, ba, (size_t)rows * sizeof(double));
    double total = row_sum(bl, rows);
    if (!Grad) return total;
    tile_out_grad(c, rows, n, lab, w, beta, scale, c1, ct, grad);
    if (special > 0) tile_skipped_rows<T>(lab, rows, n, NULL, NULL, NULL, grad);
    return total;
}

/* ---- softmax, log_softmax, logsumexp over a tile of short rows ----------
 * On the transposed blocks (see tile_in), like the cross-entropy above; the
 * sum of exponentials in double, the log by log_ge1 (s is in [1, 63] or NaN). */

/* A tile's rows into its transposed blocks c, and the max m and the
 * exp-sum s of every row (Store: the exponentials replace c).  The per-row
 * finish (a division, a log) is then one loop over the whole tile: done per
 * block it was a chain of dependent operations that the next block could
 * not hide. */
template <bool Store, typename T>
static inline void tile_in_max_exp_sum(const T *x, T *c, idx_t rows, idx_t n, T *m, double *s) {
    tile_in_stats<false>(x, rows, n, c, (const int32_t *)NULL, m, (T *)NULL);
    for (idx_t r = 0; r < rows; r += LANES) block_exp_sum<Store>(c + r * n, n, m + r, s + r);
}

/* tile_softmax of rows that Transpose4 does not take (2 and 3 columns, or
 * the baseline build): a block at a time, each block's max, exponentials,
 * 1 / s and products together, the products in place.  Through
 * tile_out_map's own pass instead, float64 softmax of 100000x3 took 1.26x
 * the time on AVX-512 (1.22x on AVX2), float32 of 200000x3 1.11x. */
template <typename T> static CS_REDUCTION void tile_softmax_blocks(const T *x, T *out, idx_t rows, idx_t n) {
    T c[TILE_BLOCKS], m[LANES], inv[LANES];
    double s[LANES];
    tile_in(x, rows, n, c);
    for (idx_t r = 0; r < rows; r += LANES) {
        T *cb = c + r * n;
        block_max_select<false>(cb, n, (const int32_t *)NULL, m, (T *)NULL);
        block_exp_sum<true>(cb, n, m, s);
#pragma omp simd
        for (idx_t l = 0; l < LANES; ++l) inv[l] = (T)(1.0 / s[l]);
        for (idx_t k = 0; k < n; ++k) {
#pragma omp simd
            for (idx_t l = 0; l < LANES; ++l) cb[k * LANES + l] = cb[k * LANES + l] * inv[l];
        }
    }
    tile_out(c, rows, n, out);
}

/* out = softmax of each row (out may be x): 1 / s per block (deferred to a
 * loop over the tile, as the logs below, it measured 3 % slower), the
 * products on the way out (tile_out_map) */
template <typename T> static CS_REDUCTION void tile_softmax(const T *x, T *out, idx_t rows, idx_t n) {
    if (!HAVE_TRANSPOSE4 || n < 4) {
        tile_softmax_blocks(x, out, rows, n);
        return;
    }
    T c[TILE_BLOCKS], m[TILE + LANES], inv[TILE + LANES];
    double s[LANES];
    tile_in_stats<false>(x, rows, n, c, (const int32_t *)NULL, m, (T *)NULL);
    for (idx_t r = 0; r < rows; r += LANES) {
        block_exp_sum<true>(c + r * n, n, m + r, s);
#pragma omp simd
        for (idx_t l = 0; l < LANES; ++l) inv[r + l] = (T)(1.0 / s[l]);
    }
    tile_out_map<ROWS_SCALE>(c, rows, n, (const int32_t *)NULL, inv, (const T *)NULL, out);
}

/* out = log_softmax of each row, (x - m) - lse (out may be x) */
template <typename T> static CS_REDUCTION void tile_log_softmax(const T *x, T *out, idx_t rows, idx_t n) {
    T c[TILE_BLOCKS], m[TILE + LANES], lse[TILE + LANES];
    double s[TILE + LANES];
    idx_t padded = (rows + LANES - 1) / LANES * LANES;
    tile_in_max_exp_sum<false>(x, c, rows, n, m, s);
#pragma omp simd
    for (idx_t r = 0; r < padded; ++r) lse[r] = (T)log_ge1(s[r]);
    tile_out_map<ROWS_SHIFT>(c, rows, n, (const int32_t *)NULL, m, lse, out);
}

/* out[r] = log(sum(exp(x_r))); rows whose max is +-inf: +-inf, or NaN if
 * the row holds one (rare: done row by row) */
template <typename T> static CS_REDUCTION void tile_logsumexp(const T *x, T *out, idx_t rows, idx_t n) {
    T c[TILE_BLOCKS], m[TILE + LANES], o[TILE + LANES];
    double s[TILE + LANES];
    int inf_max = 0;
    idx_t padded = (rows + LANES - 1) / LANES * LANES;
    tile_in_max_exp_sum<false>(x, c, rows, n, m, s);
#pragma omp simd reduction(+ : inf_max)
    for (idx_t r = 0; r < padded; ++r) {
        o[r] = (T)((double)m[r] + log_ge1(s[r]));
        inf_max += m[r] == (T)INFINITY || m[r] == (T)-INFINITY;
    }
    for (idx_t r = 0; r < rows; ++r) out[r] = o[r];
    if (inf_max > 0)
        for (idx_t r = 0; r < rows; ++r) {
            T mr = o[r];
            if (mr == (T)INFINITY || mr == (T)-INFINITY || mr != mr) {
                T mx = row_max(x + r * n, n);
                if (mx == (T)INFINITY || mx == (T)-INFINITY) out[r] = row_has_nan(x + r * n, n) ? (T)NAN : mx;
            }
        }
}

/* tile_cross_entropy_index for rows of two classes (rows <= TILE / 2): vector
 * loops over the rows (see below), with the same formulas and order of
 * operations.  Smooth: beta != 0 (a template argument: GCC
 * computed the smoothing term of every row and dropped it by a blend, 9 % of
 * the AVX2 loss and gradient at 262144x2).  The loop's lanes are a full
 * vector of T: GCC would take the double's lane count, and do the float half
 * of the work (the exp, the log, the loads) in half-width vectors. */
template <bool Grad, bool Extra, bool Smooth, typename T, typename L>
static inline double tile_cross_entropy_binary(
        const T *x, const L *target, idx_t rows, idx_t ignore_index, const T *w,
        double w_total, double alpha, double beta, double *loss, T *grad, double scale,
        const CrossEntropyExtra *ex, idx_t *kept = NULL) {
    double bz[Extra ? TILE / 2 : 1], ba[Extra ? TILE / 2 : 1];
    const double z = Extra ? ex->z : 0.0, zs = Extra ? ex->zscale : 0.0;
    const T wk0 = w != NULL ? w[0] : (T)1, wk1 = w != NULL ? w[1] : (T)1;
    const double w0 = (double)wk0, w1 = (double)wk1;
    const T cb0 = (T)(beta * scale) * (w != NULL ? w[0] : (T)1);
    const T cb1 = (T)(beta * scale) * (w != NULL ? w[1] : (T)1);
    const double y_extra = beta != 0.0 ? beta * w_total : 0.0;
    /* the target's gradient coefficient alpha w_t scale of either class,
     * rounded to T as the other short-row and row paths round it: formed in
     * the loop, its product was contracted into the subtraction g - ct by
     * GCC in some builds of a variant and not in others (float64 with
     * smoothing, 1 ulp) */
    const T ct0 = (T)(alpha * w0 * scale), ct1 = (T)(alpha * w1 * scale);
    double bl[TILE / 2];
    int32_t lab[TILE / 2];
    int special = tile_labels(target, rows, 2, ignore_index, lab);
    if (kept != NULL) *kept = tile_labels_kept(lab, rows, special);
    /* Three loops over the tile, each row's exponential, then its log and loss,
     * then its gradient: one loop's iteration was a chain of dependent
     * operations (the exp, the widening, the log, the division) longer than
     * the out-of-order window could overlap with the next iteration's. */
    T mr[TILE / 2], eo[TILE / 2], c1r[Grad ? TILE / 2 : 1];
#pragma omp simd simdlen(VECTOR_BYTES / sizeof(T))
    for (idx_t r = 0; r < rows; ++r) {
        T x0 = x[2 * r], x1 = x[2 * r + 1];
        T m = x0 > (T)-INFINITY ? x0 : (T)-INFINITY;
        m = x1 > m ? x1 : m;
        /* one of d0, d1 is 0 (exp = 1 exactly) unless NaN is about: one exp of
         * their sum gives the other, and NaN still reaches both sums */
        T d0 = x0 - m, d1 = x1 - m;
        mr[r] = m;
        eo[r] = exp_nonpositive_as<!Grad>((T)(d0 + d1), exp_clamp<T, !Grad>());
    }
#pragma omp simd simdlen(VECTOR_BYTES / sizeof(T))
    for (idx_t r = 0; r < rows; ++r) {
        int is1 = lab[r] == 1;
        T x0 = x[2 * r], x1 = x[2 * r + 1], m = mr[r];
        double s = 1.0 + (double)eo[r];  /* (double)e0 + (double)e1: one of them is 1 */
        double lse = (double)log_ge1((T)s);
        double aw = alpha * (double)(is1 ? wk1 : wk0);  /* a select of T: its mask is not widened */
        double l = aw * (lse - ((double)(is1 ? x1 : x0) - (double)m));
        if (Smooth) {                  /* every product fused explicitly: see mul_add */
            double sm = mul_add(w0, (double)x0 - (double)m, w1 * ((double)x1 - (double)m));
            l = mul_add(beta, mul_sub(w_total, lse, sm), l);
        }
        bl[r] = l;                     /* skipped rows: tile_skipped_rows */
        double lt = 0.0;
        if (Extra) {
            lt = (double)m + lse;
            bz[r] = z * lt * lt;
            ba[r] = (is1 ? x1 : x0) == m && s == s ? 1.0 : 0.0;
        }
        if (Grad)
            c1r[r] = Extra && z != 0.0 ? (T)(((aw + y_extra) * scale + 2.0 * z * zs * lt) / s)
                                       : (T)((aw + y_extra) / s * scale);
    }
    if (Grad) {
#pragma omp simd simdlen(VECTOR_BYTES / sizeof(T))
        for (idx_t r = 0; r < rows; ++r) {
            int is1 = lab[r] == 1;
            T x0 = x[2 * r], x1 = x[2 * r + 1], m = mr[r];
            T d0 = x0 - m, d1 = x1 - m;    /* grad may be x: the row is read first */
            T e0 = d0 == (T)0 ? (T)1 : eo[r], e1 = d1 == (T)0 ? (T)1 : eo[r];
            T c1 = c1r[r], ct = is1 ? ct1 : ct0;
            /* e c1 [- cb] - [at the target] ct, the product fused with the
             * first subtraction (explicitly: see mul_add) */
            T g0 = Smooth ? mul_sub(e0, c1, cb0) : e0 * c1;
            T g1 = Smooth ? mul_sub(e1, c1, cb1) : e1 * c1;
            T t0 = Smooth ? g0 - ct : mul_sub(e0, c1, ct);
            T t1 = Smooth ? g1 - ct : mul_sub(e1, c1, ct);
            grad[2 * r] = is1 ? g0 : t0;
            grad[2 * r + 1] = is1 ? t1 : g1;
        }
    }
    if (special > 0)                   /* the labels as classified above */
        tile_skipped_rows<T>(lab, rows, 2, bl, Extra ? bz : NULL, Extra ? ba : NULL,
                             Grad ? grad : NULL);
    if (loss != NULL) memcpy(loss, bl, (size_t)rows * sizeof(double));
    if (Extra && ex->zrow != NULL) memcpy(ex->zrow, bz, (size_t)rows * sizeof(double));
    if (Extra && ex->acc != NULL) memcpy(ex->acc, ba, (size_t)rows * sizeof(double));
    return row_sum(bl, rows);
}

template <bool Extra, typename T, typename L>
static inline double tile_cross_entropy_binary_with(
        const T *x, const L *target, idx_t rows, idx_t ignore_index, const T *w,
        double w_total, double alpha, double beta, double *loss, T *grad, double scale,
        const CrossEntropyExtra *ex, idx_t *kept = NULL) {
    if (grad != NULL && beta != 0.0)
        return tile_cross_entropy_binary<true, Extra, true>(x, target, rows, ignore_index, w,
                                                            w_total, alpha, beta, loss, grad,
                                                            scale, ex, kept);
    if (grad != NULL)
        return tile_cross_entropy_binary<true, Extra, false>(x, target, rows, ignore_index, w,
                                                             w_total, alpha, beta, loss, grad,
                                                             scale, ex, kept);
    if (beta != 0.0)
        return tile_cross_entropy_binary<false, Extra, true>(x, target, rows, ignore_index, w,
                                                             w_total, alpha, beta, loss, grad,
                                                             scale, ex, kept);
    return tile_cross_entropy_binary<false, Extra, false>(x, target, rows, ignore_index, w,
                                                          w_total, alpha, beta, loss, grad,
                                                          scale, ex, kept);
}

template <bool Extra, typename T, typename L>
static inline double tile_cross_entropy_index_with(
        const T *x, const L *target, idx_t rows, idx_t n, idx_t ignore_index, const T *w,
        double w_total, double alpha, double beta, double *loss, T *grad, double scale,
        const CrossEntropyExtra *ex, idx_t *kept = NULL) {
    if (n == 2)  /* binary classification: the common short row */
        return tile_cross_entropy_binary_with<Extra>(x, target, rows, ignore_index, w, w_total,
                                                     alpha, beta, loss, grad, scale, ex, kept);
    if (grad != NULL)
        return tile_cross_entropy_index_any<true, Extra>(x, target, rows, n, ignore_index, w,
                                                         w_total, alpha, beta, loss, grad, scale,
                                                         ex, kept);
    return tile_cross_entropy_index_any<false, Extra>(x, target, rows, n, ignore_index, w,
                                                      w_total, alpha, beta, loss, grad, scale, ex,
                                                      kept);
}

/* ex: z-loss and per-row extras (CrossEntropyExtra, its arrays from the
 * tile's first row), NULL for none: the plain code.  Returns the sum of the
 * tile's row losses (row_sum, in row order); loss may be NULL (a reduced
 * loss needs only the sum: no store of 8 bytes per row, as many as a row of
 * two float32 logits). */
template <typename T, typename L>
static CS_REDUCTION double tile_cross_entropy_index(
        const T *x, const L *target, idx_t rows, idx_t n, idx_t ignore_index, const T *w,
        double w_total, double alpha, double beta, double *loss, T *grad, double scale,
        const CrossEntropyExtra *ex, idx_t *kept = NULL) {
    if (ex != NULL)
        return tile_cross_entropy_index_with<true>(x, target, rows, n, ignore_index, w, w_total,
                                                   alpha, beta, loss, grad, scale, ex, kept);
    return tile_cross_entropy_index_with<false>(x, target, rows, n, ignore_index, w, w_total,
                                                alpha, beta, loss, grad, scale, ex, kept);
}

}  // namespace csoftmax

#endif
