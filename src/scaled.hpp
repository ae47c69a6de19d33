/*
 * scaled.hpp -- logsumexp with factors (SciPy's logsumexp(x, b=b)): over a
 * row, log|sum_k b_k exp(x_k)| and the sign of the sum, in two passes over
 * the row and its factors, with no array of x's size made on the way (the
 * NumPy formulation it replaces took eight, and 60x the time of a plain
 * logsumexp).
 *
 * A term whose factor is 0 is left out whatever x_k holds (NaN, +inf), as a
 * masked entry.  Otherwise, as SciPy: a NaN factor, or a NaN x_k, gives NaN;
 * an infinite factor times exp(-inf) is NaN; +inf terms decide alone (all of
 * one sign: +inf with that sign; of both signs: NaN); a row with no term, or
 * whose terms cancel exactly, gives -inf with sign 0.
 *
 * The sum is s = sum b_k exp(x_k - m), m the largest x_k kept, in double (the
 * exponentials in T, as the row kernels take them); the result m + log|s|.
 */
#ifndef CSOFTMAX_SCALED_HPP
#define CSOFTMAX_SCALED_HPP

#include "rowops.hpp"

namespace csoftmax {

/* row x[0, n) with factors b[0, n) (both contiguous): *r = log|sum b e^x|,
 * *sign its sign (+1, -1, 0; NaN with a NaN result) */
template <typename T>
static CS_REDUCTION void row_logsumexp_scaled(const T *x, const T *b, idx_t n, double *r,
                                              double *sign) {
    T m = (T)-INFINITY;
    int bad = 0;                       /* a NaN among the kept terms, or inf * 0 */
#pragma omp simd reduction(max : m) reduction(| : bad)
    for (idx_t k = 0; k < n; ++k) {
        const T bk = b[k], xk = x[k];
        const bool kept = bk != (T)0;  /* true for a NaN factor */
        const bool inf_b = bk == (T)INFINITY || bk == (T)-INFINITY;
        bad |= (bk != bk) | (kept & (xk != xk)) | (inf_b & (xk == (T)-INFINITY));
        const T v = kept ? xk : (T)-INFINITY;
        m = v > m ? v : m;
    }
    vector_upper_clear();
    if (bad) {
        *r = *sign = NAN;
        return;
    }
    if (m == (T)-INFINITY) {           /* no term */
        *r = -INFINITY;
        *sign = 0.0;
        return;
    }
    if (m == (T)INFINITY) {            /* the +inf terms alone */
        int pos = 0, neg = 0;
        for (idx_t k = 0; k < n; ++k)
            if (x[k] == (T)INFINITY) {
                pos |= b[k] > (T)0;
                neg |= b[k] < (T)0;
            }
        *r = pos && neg ? NAN : INFINITY;
        *sign = pos && neg ? NAN : (pos ? 1.0 : -1.0);
        return;
    }
    const T lo = exp_lo<T>();
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (idx_t k = 0; k < n; ++k) {
        const T e = exp_nonpositive((T)(x[k] - m), lo);
        s += b[k] != (T)0 ? (double)b[k] * (double)e : 0.0;
    }
    vector_upper_clear();
    if (s != s) {                      /* infinite factors of both signs */
        *r = *sign = NAN;
    } else if (s == 0.0) {             /* terms that cancel exactly */
        *r = -INFINITY;
        *sign = 0.0;
    } else {
        *r = (double)m + log(s < 0.0 ? -s : s);
        *sign = s < 0.0 ? -1.0 : 1.0;
    }
}

}  // namespace csoftmax

#endif
