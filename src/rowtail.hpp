/*
 * rowtail.hpp -- the last, partial vector of a row: the elements past the
 * row's last multiple of EXP_TAIL, exponentiated as one more vector of lanes.
 *
 * The vector loops of rowops.hpp stop at a multiple of EXP_TAIL and hand the
 * rest (r < EXP_TAIL elements) here.  The r elements are read into a buffer
 * of EXP_TAIL lanes, padded with -inf (whose exp is 0), and the buffer goes
 * through one fixed-length vector loop: a scalar exp per element cost more
 * than the rest of a short row.
 *
 * The buffer is written as whole vectors (masked loads) on AVX2 and AVX-512.
 * Written element by element, the exp loop's vector load of it could not be
 * forwarded from those stores and waited for them to reach the cache: a row
 * with a tail took some 20 ns (70 cycles) longer than one without (AMD Zen 4,
 * AVX-512 and AVX2 alike; the exp-sum of a 68-column row 2x the time of a
 * 64-column one, of a 100-column row 1.8x a 96-column one).  Masked-off
 * elements are not read (no fault past the end of the array); the lanes and
 * the values are those of the element-wise code, bit for bit.
 */
#ifndef CSOFTMAX_ROWTAIL_HPP
#define CSOFTMAX_ROWTAIL_HPP

#include "base.hpp"
#include "exp.hpp"

namespace csoftmax {

enum { EXP_TAIL = 16 };

static inline idx_t vector_part(idx_t n) { return n - n % EXP_TAIL; }

/* buf_l = x_l - shift for l < r, -inf for r <= l < EXP_TAIL (0 <= r < EXP_TAIL) */
template <typename T> static inline void tail_load_shifted(const T *x, idx_t r, T shift, T *buf) {
    for (idx_t l = 0; l < EXP_TAIL; ++l) buf[l] = (T)-INFINITY;
    for (idx_t l = 0; l < r; ++l) buf[l] = x[l] - shift;
}

/* e_l = buf_l for l < r (0 <= r < EXP_TAIL) */
template <typename T> static inline void tail_store(T *e, idx_t r, const T *buf) {
    for (idx_t l = 0; l < r; ++l) e[l] = buf[l];
}

#if defined(__AVX512F__)
/* the first r of 16 lanes (0 <= r <= 16) */
static inline __mmask16 tail_mask16(idx_t r) { return (__mmask16)((1u << r) - 1); }

template <> inline void tail_load_shifted<float>(const float *x, idx_t r, float shift, float *buf) {
    __mmask16 m = tail_mask16(r);
    __m512 v = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, x), _mm512_set1_ps(shift));
    _mm512_storeu_ps(buf, _mm512_mask_blend_ps(m, _mm512_set1_ps(-INFINITY), v));
}

template <> inline void tail_load_shifted<double>(const double *x, idx_t r, double shift, double *buf) {
    __mmask16 m = tail_mask16(r);
    for (int j = 0; j < 2; ++j) {
        __mmask8 mj = (__mmask8)(m >> (8 * j));
        __m512d v = _mm512_sub_pd(_mm512_maskz_loadu_pd(mj, x + 8 * j), _mm512_set1_pd(shift));
        _mm512_storeu_pd(buf + 8 * j, _mm512_mask_blend_pd(mj, _mm512_set1_pd(-INFINITY), v));
    }
}

/* AVX-512 stores the tail with a masked store too (0.5-1 ns a row less);
 * AVX2 keeps the element loop (an AVX2 masked store was not tried) */
template <> inline void tail_store<float>(float *e, idx_t r, const float *buf) {
    _mm512_mask_storeu_ps(e, tail_mask16(r), _mm512_loadu_ps(buf));
}
#elif defined(__AVX2__)
template <> inline void tail_load_shifted<float>(const float *x, idx_t r, float shift, float *buf) {
    for (int j = 0; j < 2; ++j) {
        __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)r - 8 * j), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        __m256 v = _mm256_sub_ps(_mm256_maskload_ps(x + 8 * j, m), _mm256_set1_ps(shift));
        _mm256_storeu_ps(buf + 8 * j, _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), v, _mm256_castsi256_ps(m)));
    }
}

template <> inline void tail_load_shifted<double>(const double *x, idx_t r, double shift, double *buf) {
    for (int j = 0; j < 4; ++j) {
        __m256i m = _mm256_cmpgt_epi64(_mm256_set1_epi64x(r - 4 * j), _mm256_setr_epi64x(0, 1, 2, 3));
        __m256d v = _mm256_sub_pd(_mm256_maskload_pd(x + 4 * j, m), _mm256_set1_pd(shift));
        _mm256_storeu_pd(buf + 4 * j, _mm256_blendv_pd(_mm256_set1_pd(-INFINITY), v, _mm256_castsi256_pd(m)));
    }
}
#endif

/* exp(x_l - shift) for the last r < EXP_TAIL elements of a row, into buf
 * (zeros past r).  Shifted: x_l - shift <= 0 (shift is the row maximum). */
template <bool Shifted, bool Summand = false, typename T>
static inline void exp_tail(const T *x, idx_t r, T shift, T *buf) {
    const T lo = exp_lo<T, Summand>();
    tail_load_shifted(x, r, shift, buf);
#pragma omp simd
    for (idx_t l = 0; l < EXP_TAIL; ++l)
        buf[l] = Shifted ? exp_nonpositive_as<Summand>(buf[l], lo) : exp_poly(buf[l]);
}

}  // namespace csoftmax

#endif
