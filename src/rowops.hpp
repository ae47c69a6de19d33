/*
 * rowops.hpp -- the vectorised one-row primitives that the Cython kernels in
 * _kernels.pyx are built from (on base.hpp and the exp of exp.hpp).
 *
 * Each helper does one job over one contiguous row of n elements and is a
 * template over float/double, so the .pyx calls one name for both dtypes.
 * Reductions use `#pragma omp simd reduction(...)`: it lets GCC reorder the
 * additions of that one loop into vector lanes (it never does so for floating
 * point without -ffast-math, which this package must not use), and it needs
 * only -fopenmp-simd, so the serial build vectorises too.  Sums are kept in
 * double whatever the element type.
 */
#ifndef CSOFTMAX_ROWOPS_HPP
#define CSOFTMAX_ROWOPS_HPP

#include "base.hpp"
#include "exp.hpp"
#include "rowtail.hpp"

namespace csoftmax {

/* ---- reductions over one row -------------------------------------------- */

/* The largest of L lanes (a power of two), folded in halves: max is exact,
 * so the order is free.  The halving steps run over a linear counter, so
 * that GCC unrolls them into a fixed sequence of vector maxima: as a loop
 * `h /= 2` it kept each step a loop with a scalar remainder, some 150
 * instructions a call on AVX2 (the 8192x1000 loss took 2-3 % longer). */
template <int L, typename T> static inline T lanes_max(T *acc) {
    enum { STEPS = L >= 64 ? 6 : L >= 32 ? 5 : L >= 16 ? 4 : L >= 8 ? 3 : L >= 4 ? 2 : L >= 2 ? 1 : 0 };
    static_assert((1 << STEPS) == L, "L is a power of two up to 64");
#if defined(__GNUC__)
#pragma GCC unroll 8
#endif
    for (int i = 1; i <= (int)STEPS; ++i) {
        const int h = L >> i;
#pragma omp simd
        for (int l = 0; l < h; ++l) acc[l] = acc[l + h] > acc[l] ? acc[l + h] : acc[l];
    }
    return acc[0];
}

/* max_k x_k (+0 for a zero maximum); -inf for n == 0.  NaN handling is left
 * to the callers: a NaN in the row makes x - max NaN somewhere, and the
 * exp-sum carries it to every output of the row.  Independent partial maxima
 * (four vectors of AVX-512; 256 bytes of lanes) hide the latency of the max
 * instruction; the compiler keeps the fixed-size lane array in registers.
 * Every step takes max(v, acc) = v > acc ? v : acc, which skips NaNs and is
 * exact, so the order is free: the last partial block is read as the last L
 * elements (overlapping the previous block: max is idempotent) and the lanes
 * are folded in halves, all vector operations (a serial scalar fold of the 64
 * float lanes cost a quarter of a 1000-column loss). */
template <typename T> static CS_REDUCTION T row_max(const T *x, idx_t n) {
    enum { L = 256 / (int)sizeof(T) };
    T m = (T)-INFINITY;
    if (n < L) {
#pragma omp simd reduction(max : m)
        for (idx_t k = 0; k < n; ++k) m = x[k] > m ? x[k] : m;
        return m + (T)0;
    }
    T acc[L];
    for (int l = 0; l < L; ++l) acc[l] = (T)-INFINITY;
    idx_t nb = n - n % L;
    for (idx_t b = 0; b < nb; b += L)
        for (int l = 0; l < L; ++l) acc[l] = x[b + l] > acc[l] ? x[b + l] : acc[l];
    if (nb < n) {
        const T *y = x + n - L;
        for (int l = 0; l < L; ++l) acc[l] = y[l] > acc[l] ? y[l] : acc[l];
    }
    m = lanes_max<L>(acc);
    return m + (T)0;  /* -0 as +0: which zero a tie keeps depends on the order */
}

/* 1 if the row holds a NaN; used only on the rare rows whose max is +-inf. */
template <typename T> static CS_REDUCTION int row_has_nan(const T *x, idx_t n) {
    for (idx_t k = 0; k < n; ++k)
        if (x[k] != x[k]) return 1;
    return 0;
}

/* The sums over a row are accumulated in SUM_LANES lanes: lane l holds the
 * terms k = l (mod SUM_LANES).  Within blocks of SUM_BLOCK elements a lane
 * adds in T (a float vector accumulator adds 16 lanes per add, where a double
 * one would be latency-bound: each float vector widened into two double
 * vectors added one after the other, as long as the whole exp); a block puts
 * at most 16 terms into a lane, and the block's lanes are then widened, exactly,
 * into double lanes.  The double lanes are added once per chunk, folded in
 * halves (lanes_total).  The old per-block horizontal sum (16 dependent
 * scalar adds, 64 cycles per 256 elements) was a fifth of a 1000-column loss.
 * Only sums of exponentials (each <= 1) and the smoothing sum (checked for
 * overflow) are kept in T: other sums (targets) are unbounded and stay in
 * double.  The lanes are explicit arrays, not `omp simd reduction` variables
 * whose order of addition is the compiler's: the same 16 lanes at every
 * vector width, and the lanes and the blocks depend on the row length only, so
 * results do not depend on the thread count (nor on the instruction set, for
 * the same exponentials). */
enum { SUM_LANES = EXP_TAIL };  /* 16: lanes_total is written for 16 */
enum { SUM_BLOCK = 256 };

static inline idx_t block_end(idx_t k0, idx_t nv) { return nv - k0 > SUM_BLOCK ? k0 + SUM_BLOCK : nv; }

template <typename T> static inline void lanes_zero(T *d) {
    for (int l = 0; l < SUM_LANES; ++l) d[l] = 0;
}

/* d_l += b_l (widened to double) */
template <typename T> static inline void lanes_widen_add(double *d, const T *b) {
#pragma omp simd
    for (int l = 0; l < SUM_LANES; ++l) d[l] += (double)b[l];
}

/* The sum of the lanes, folded in halves: lane l + h into lane l for h = 8,
 * 4, 2, 1 (written out: GCC's code for the loops went through memory). */
static inline double lanes_total(const double *d) {
    double h0 = d[0] + d[8], h1 = d[1] + d[9], h2 = d[2] + d[10], h3 = d[3] + d[11];
    double h4 = d[4] + d[12], h5 = d[5] + d[13], h6 = d[6] + d[14], h7 = d[7] + d[15];
    h0 += h4, h1 += h5, h2 += h6, h3 += h7;
    h0 += h2, h1 += h3;
    return h0 + h1;
}

/* Long rows are reduced by chunks of CHUNK columns: each row_* reduction
 * below computes the sums of chunk 0, 1, ... (a chunk_* function, columns
 * [c0, c0 + CHUNK)) and adds them in chunk order, the first one as it is.
 * A kernel that splits a row's columns over threads (too few rows to keep
 * the team busy) calls the same row_* function on each chunk and adds the
 * results in the same order, so a row's result does not depend on whether,
 * or over how many threads, it was split.  CHUNK is a multiple of SUM_BLOCK
 * and of every vector width, so the blocks and vector loops of a chunk are
 * those of the whole row; rows of at most CHUNK columns are one chunk. */
enum { CHUNK = 16384 };

static inline idx_t chunk_len(idx_t c0, idx_t n) { return n - c0 > CHUNK ? CHUNK : n - c0; }

/* w + k for an optional array w (the class weights: NULL means all ones). */
template <typename T> static inline const T *offset_or_null(const T *w, idx_t k) { return w == NULL ? w : w + k; }

/* Adds the partial sum p of the chunk at column c0 to the running sum s of a
 * row.  Out of line, and called by the split kernels too: where both are NaN
 * (a row with +inf in one chunk and a NaN in another) the sum keeps one
 * operand's NaN, and an inlined copy may put the operands in either order
 * (its sign bit would then depend on the thread count). */
static CS_REDUCTION double add_chunk(double s, double p, idx_t c0) { return c0 == 0 ? p : s + p; }

/* Prefetching the next row.  A long row is read from memory once, by its
 * maximum; the exp pass and those after it work from the cache, and
 * meanwhile the memory bus stood idle: the hardware prefetchers follow a
 * stream within a 4 KB page and do not run ahead of a pass that misses
 * nothing.  So the exp pass of row i prefetches row i + 1 as it goes (its
 * block at column k0, the same columns of the next row), and the next
 * maximum finds its row in the cache.  Spread over the pass, not issued at
 * once: all of a 4000-column row's lines prefetched before its exp pass made
 * the loss 1.05-1.1x slower (the misses queue up and the loads behind them
 * wait), spread over it 0.66x the time (AMD Zen 3, AVX2, one thread, 1000
 * to 32000 columns).  No result changes. */
template <typename N> CS_INLINE void prefetch_columns(const N *next, idx_t k0, idx_t k1) {
    if (next != NULL)
        for (idx_t k = k0; k < k1; k += 64 / (idx_t)sizeof(N)) __builtin_prefetch(next + k);
}

/* sum_k exp(x_k - shift), shift = max_k x_k, and with Store e_k = exp(x_k -
 * shift) (e may be x).  The tail (n mod SUM_LANES elements) is one more
 * vector of lanes, padded with exp(-inf) = 0.  next (or NULL): the same
 * columns of the next row, prefetched as the blocks go (see above). */
template <bool Store, typename T, typename N>
static inline double chunk_exp_lanes(const T *x, T *e, idx_t n, T shift, const N *next) {
    double sd[SUM_LANES];
    lanes_zero(sd);
    const T lo = exp_lo<T, !Store>();  /* a sum alone: Summand */
    idx_t nv = vector_part(n);
    for (idx_t k0 = 0; k0 < nv; k0 += SUM_BLOCK) {
        idx_t k1 = block_end(k0, nv);
        prefetch_columns(next, k0, k1 < nv ? k1 : n);  /* the last block: the tail's too */
        T bs[SUM_LANES];
        lanes_zero(bs);
        for (idx_t k = k0; k < k1; k += SUM_LANES) {
#pragma omp simd
            for (int l = 0; l < SUM_LANES; ++l) {
                T v = exp_nonpositive_as<!Store>((T)(x[k + l] - shift), lo);
                if (Store) e[k + l] = v;
                bs[l] += v;
            }
        }
        lanes_widen_add(sd, bs);
    }
    if (nv < n) {
        T buf[EXP_TAIL];
        exp_tail<true, !Store>(x + nv, n - nv, shift, buf);
        if (Store) tail_store(e + nv, n - nv, buf);
        lanes_widen_add(sd, buf);
    }
    return lanes_total(sd);
}

template <typename T, typename N = T>
static inline double chunk_exp_sum(const T *x, idx_t n, T shift, const N *next = NULL) {
    return chunk_exp_lanes<false>(x, (T *)NULL, n, shift, next);
}

/* e_k = exp(x_k - shift) and returns sum_k e_k, shift = max_k x_k.  e may be x.
 * The same sum, bit for bit, as chunk_exp_sum: a loss has the same bits with
 * or without its gradient. */
template <typename T, typename N = T>
static inline double chunk_exp_store_sum(const T *x, T *e, idx_t n, T shift,
                                         const N *next = NULL) {
    return chunk_exp_lanes<true>(x, e, n, shift, next);
}

template <typename T>
static CS_REDUCTION double row_weighted_shifted_sum(const T *x, const T *w, idx_t n, T m);

/* chunk_exp_store_sum that also returns, in *smooth, sum_k w_k (x_k - shift)
 * (w == NULL: all ones): the label-smoothing term of cross-entropy with class
 * indices, in the same pass over the row.  e may be x. */
template <typename T>
static inline double chunk_exp_store_sum_smooth(const T *x, T *e, const T *w, idx_t n, T shift,
                                                 double *smooth, const T *next = NULL) {
    double sd[SUM_LANES], sa[SUM_LANES], a = 0.0;
    const T lo = exp_lo<T>();
    lanes_zero(sd);
    lanes_zero(sa);
    idx_t nv = vector_part(n);
    for (idx_t k = nv; k < n; ++k)
        a += (w == NULL ? 1.0 : (double)w[k]) * ((double)x[k] - (double)shift);
    for (idx_t k0 = 0; k0 < nv; k0 += SUM_BLOCK) {
        idx_t k1 = block_end(k0, nv);
        prefetch_columns(next, k0, k1 < nv ? k1 : n);  /* as in chunk_exp_lanes */
        /* The smoothing terms w_k (x_k - m) are unbounded: they are summed
         * in T in the exp loop, and in float a lane's block sum can overflow
         * where the total does not: a float block with a lane that is not
         * finite is summed again in double from x.  In place (e == x) the exp
         * loop overwrites x, so the block is first copied aside (1 KiB, in
         * L1).  The exp loop is the same code in place or not: the same bits. */
        const bool is_float = sizeof(T) < sizeof(double);
        T saved[SUM_BLOCK];
        const T *xs = x + k0;
        if (is_float && (const T *)e == x) {
            memcpy(saved, x + k0, (size_t)(k1 - k0) * sizeof(T));
            xs = saved;
        }
        /* w == NULL tested outside the loops: with the test inside, the
         * AVX-512 build kept ba on the stack, a store and a reload every
         * vector (smoothing took 1.30x the plain call's time, one thread) */
        T ba[SUM_LANES], bs[SUM_LANES];
        lanes_zero(ba);
        lanes_zero(bs);
        if (w == NULL) {
            for (idx_t k = k0; k < k1; k += SUM_LANES) {
#pragma omp simd
                for (int l = 0; l < SUM_LANES; ++l) {
                    T d = x[k + l] - shift;
                    ba[l] += d;
                    T v = exp_nonpositive(d, lo);
                    e[k + l] = v;
                    bs[l] += v;
                }
            }
        } else {
            for (idx_t k = k0; k < k1; k += SUM_LANES) {
#pragma omp simd
                for (int l = 0; l < SUM_LANES; ++l) {
                    T d = x[k + l] - shift;
                    ba[l] += w[k + l] * d;
                    T v = exp_nonpositive(d, lo);
                    e[k + l] = v;
                    bs[l] += v;
                }
            }
        }
        int finite = 1;
        for (int l = 0; l < SUM_LANES; ++l) finite &= isfinite(ba[l]) ? 1 : 0;
        if (is_float && !finite)
            a += row_weighted_shifted_sum(xs, offset_or_null(w, k0), k1 - k0, shift);
        else
            lanes_widen_add(sa, ba);
        lanes_widen_add(sd, bs);
    }
    if (nv < n) {
        T buf[EXP_TAIL];
        exp_tail<true>(x + nv, n - nv, shift, buf);
        tail_store(e + nv, n - nv, buf);
        lanes_widen_add(sd, buf);
    }
    *smooth = a + lanes_total(sa);
    return lanes_total(sd);
}

template <typename T>
static inline double chunk_soft_target_sums(const T *x, const T *y, const T *w, idx_t n, T m,
                                             double alpha, double beta, double *ydot,
                                             const T *ynext = NULL);

/* chunk_exp_store_sum for probability targets: also returns sum_k y'_k in *y_sum
 * and sum_k y'_k (x_k - shift) in *y_dot, y'_k = w_k (alpha y_k + beta)
 * (w == NULL: ones).  The targets' terms are formed and summed in double
 * (y'_k and the products are unbounded, and a float product can overflow
 * where the double sum is finite: +inf - inf = NaN where the loss is -inf),
 * by chunk_soft_target_sums, the loss-only path's code, before the exp pass
 * (x is in cache): the loss has the same bits with or without the gradient.
 * e may be x, not y.  next, ynext (or NULL): the same columns of the next
 * rows of x and y, prefetched by the exp pass and the targets' pass. */
template <typename T>
static inline double chunk_exp_store_sum_soft(const T *x, const T *y, const T *w, T *e, idx_t n,
                                               T shift, double alpha, double beta, double *y_sum,
                                               double *y_dot, const T *next = NULL,
                                               const T *ynext = NULL) {
    *y_sum = chunk_soft_target_sums(x, y, w, n, shift, alpha, beta, y_dot, ynext);
    return chunk_exp_store_sum(x, e, n, shift, next);
}

/* The dot products and plain sums of a row (row_dot, row_sum) are added in
 * DOT_LANES double lanes, lane l the terms k = l mod DOT_LANES, then folded
 * to SUM_LANES (lane l + 16 into l) and summed in lanes_total's order.  An
 * `omp simd reduction` kept one vector accumulator, a chain of dependent adds
 * as long as the row, in an order that depends on the vector width; 32 lanes
 * are 4 (AVX-512) or 8 (AVX2) independent chains, the same order on every
 * instruction set.  The products of floats are exact in double, so an FMA
 * gives the bits of a multiply and an add (float64 products are rounded: the
 * baseline build, without FMA, differs there in the last bits).  Measured
 * (AMD Zen 4, 2^20 elements, one thread): float32 softmax_backward of
 * 256-4096 columns 0.75-0.79x the time on AVX2, 0.86-0.89x on AVX-512. */
enum { DOT_LANES = 2 * SUM_LANES };

/* sum_k a_k b_k (b == NULL: sum_k a_k) in double, in DOT_LANES lanes */
template <typename T> static inline double lanes_dot_total(const T *a, const T *b, idx_t n) {
    double d[DOT_LANES];
    idx_t nv = n - n % DOT_LANES;
#pragma omp simd
    for (int l = 0; l < DOT_LANES; ++l) d[l] = 0;
    for (idx_t k = 0; k < nv; k += DOT_LANES) {
        if (b == NULL) {
#pragma omp simd
            for (int l = 0; l < DOT_LANES; ++l) d[l] += (double)a[k + l];
        } else {
#pragma omp simd
            for (int l = 0; l < DOT_LANES; ++l) d[l] += (double)a[k + l] * (double)b[k + l];
        }
    }
    for (idx_t k = nv; k < n; ++k) d[k - nv] += b == NULL ? (double)a[k] : (double)a[k] * (double)b[k];
    for (int l = 0; l < SUM_LANES; ++l) d[l] += d[l + SUM_LANES];
    return lanes_total(d);
}

/* Written out for AVX2 and AVX-512: for float GCC loaded a vector and widened
 * each half (an extract and two converts a vector), and for both types kept
 * the lanes in memory outside the loop and zeroed them with `rep stos` (a
 * short row took twice the time of the old single-accumulator sum).  Here the
 * converts read memory, the tail is one more step of masked loads (masked-off
 * elements read as +0, which leaves a lane as it is: a lane that starts at +0
 * is never -0), and the lanes are folded in registers in lanes_total's order:
 * the same bits as the loops above. */
#if defined(__AVX512F__)
typedef __m512d DotVector;
enum { DOT_WIDTH = 8 };
static inline __m512d dot_load(const float *p, idx_t left) {
    __mmask8 m = left >= 8 ? (__mmask8)0xff : left <= 0 ? (__mmask8)0 : (__mmask8)((1u << left) - 1);
    return _mm512_cvtps_pd(_mm256_maskz_loadu_ps(m, p));
}
static inline __m512d dot_load(const double *p, idx_t left) {
    __mmask8 m = left >= 8 ? (__mmask8)0xff : left <= 0 ? (__mmask8)0 : (__mmask8)((1u << left) - 1);
    return _mm512_maskz_loadu_pd(m, p);
}
static inline __m512d dot_add(__m512d x, __m512d y, __m512d acc) { return _mm512_fmadd_pd(x, y, acc); }
static inline __m512d dot_add(__m512d x, __m512d acc) { return _mm512_add_pd(x, acc); }
static inline __m512d dot_zero() { return _mm512_setzero_pd(); }
/* lanes 0-15 (two vectors) folded to 4: l + 8, then l + 4 */
static inline __m256d dot_fold(__m512d e0, __m512d e1) {
    __m512d h = _mm512_add_pd(e0, e1);
    return _mm256_add_pd(_mm512_castpd512_pd256(h), _mm512_extractf64x4_pd(h, 1));
}
#elif defined(__AVX2__) && defined(__FMA__)
typedef __m256d DotVector;
enum { DOT_WIDTH = 4 };
static inline __m256d dot_load(const float *p, idx_t left) {
    if (left >= 4) return _mm256_cvtps_pd(_mm_loadu_ps(p));
    __m128i m = _mm_cmpgt_epi32(_mm_set1_epi32((int)(left < 0 ? 0 : left)), _mm_setr_epi32(0, 1, 2, 3));
    return _mm256_cvtps_pd(_mm_maskload_ps(p, m));
}
static inline __m256d dot_load(const double *p, idx_t left) {
    if (left >= 4) return _mm256_loadu_pd(p);
    __m256i m = _mm256_cmpgt_epi64(_mm256_set1_epi64x(left < 0 ? 0 : left), _mm256_setr_epi64x(0, 1, 2, 3));
    return _mm256_maskload_pd(p, m);
}
static inline __m256d dot_add(__m256d x, __m256d y, __m256d acc) { return _mm256_fmadd_pd(x, y, acc); }
static inline __m256d dot_add(__m256d x, __m256d acc) { return _mm256_add_pd(x, acc); }
static inline __m256d dot_zero() { return _mm256_setzero_pd(); }
#endif

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
enum { DOT_VECTORS = DOT_LANES / DOT_WIDTH };

/* the next DOT_LANES elements into acc (rem < DOT_LANES: only the first rem;
 * the vectors past them load +0, which leaves their lanes as they are).  Every
 * vector, whatever rem: a loop bounded by rem kept acc in memory, zeroed by
 * `rep stos` (a 32-column row 2.4x the time on AVX2). */
template <typename T>
static inline void dot_step(DotVector *acc, const T *a, const T *b, idx_t rem) {
#if defined(__GNUC__)
#pragma GCC unroll 8
#endif
    for (int j = 0; j < DOT_VECTORS; ++j) {
        DotVector x = dot_load(a + DOT_WIDTH * j, rem - DOT_WIDTH * j);
        acc[j] = b == NULL ? dot_add(x, acc[j]) : dot_add(x, dot_load(b + DOT_WIDTH * j, rem - DOT_WIDTH * j), acc[j]);
    }
}

template <typename T> static inline double lanes_dot_total_simd(const T *a, const T *b, idx_t n) {
    DotVector acc[DOT_VECTORS];
#if defined(__GNUC__)
#pragma GCC unroll 8
#endif
    for (int j = 0; j < DOT_VECTORS; ++j) acc[j] = dot_zero();
    /* whole steps apart from the last, partial one: their loads test no bound
     * (1.6 instructions an element on AVX2 with the tests, 0.9 without) */
    idx_t nf = n - n % DOT_LANES;
    if (b == NULL)
        for (idx_t k = 0; k < nf; k += DOT_LANES) dot_step(acc, a + k, (const T *)NULL, DOT_LANES);
    else
        for (idx_t k = 0; k < nf; k += DOT_LANES) dot_step(acc, a + k, b + k, DOT_LANES);
    if (nf < n) dot_step(acc, a + nf, b == NULL ? NULL : b + nf, n - nf);
    /* lane l + 16 into l, then lanes_total: l + 8, l + 4, l + 2, l + 1 */
#if defined(__AVX512F__)
    __m256d q = dot_fold(_mm512_add_pd(acc[0], acc[2]), _mm512_add_pd(acc[1], acc[3]));
#else
    __m256d e0 = _mm256_add_pd(acc[0], acc[4]), e1 = _mm256_add_pd(acc[1], acc[5]);
    __m256d e2 = _mm256_add_pd(acc[2], acc[6]), e3 = _mm256_add_pd(acc[3], acc[7]);
    __m256d q = _mm256_add_pd(_mm256_add_pd(e0, e2), _mm256_add_pd(e1, e3));
#endif
    __m128d p = _mm_add_pd(_mm256_castpd256_pd128(q), _mm256_extractf128_pd(q, 1));
    return _mm_cvtsd_f64(p) + _mm_cvtsd_f64(_mm_unpackhi_pd(p, p));
}

template <> inline double lanes_dot_total<float>(const float *a, const float *b, idx_t n) {
    return lanes_dot_total_simd(a, b, n);
}

template <> inline double lanes_dot_total<double>(const double *a, const double *b, idx_t n) {
    return lanes_dot_total_simd(a, b, n);
}
#endif

/* sum_k a_k * b_k in double (exact products, DOT_LANES lanes) */
template <typename T> static CS_REDUCTION double row_dot(const T *a, const T *b, idx_t n) {
    return lanes_dot_total(a, b, n);
}

/* sum_k a_k in double (DOT_LANES lanes) */
template <typename T> static CS_REDUCTION double row_sum(const T *a, idx_t n) {
    return lanes_dot_total(a, (const T *)NULL, n);
}

/* sum_k a_k in double, pairwise over halves down to blocks of 1024 (each a
 * vector sum): the error grows with log(n), not n, as in NumPy's sum.  For
 * the row losses of a whole call (millions of rows, float64 results). */
template <typename T> static CS_REDUCTION double pairwise_sum(const T *a, idx_t n) {
    if (n <= 1024) return row_sum(a, n);
    idx_t h = (n / 2 + 1023) / 1024 * 1024;
    return pairwise_sum(a, h) + pairwise_sum(a + h, n - h);
}

/* sum_k w_k (x_k - m) in double, w == NULL meaning all ones: the smoothing
 * term of cross-entropy with integer targets. */
template <typename T> static inline double chunk_weighted_shifted_sum(const T *x, const T *w, idx_t n, T m) {
    double s = 0.0;
    if (w == NULL) {
#pragma omp simd reduction(+ : s)
        for (idx_t k = 0; k < n; ++k) s += (double)x[k] - (double)m;
    } else {
#pragma omp simd reduction(+ : s)
        for (idx_t k = 0; k < n; ++k) s += (double)w[k] * ((double)x[k] - (double)m);
    }
    return s;
}

/* For probability targets: y'_k = w_k (alpha y_k + beta).  Returns
 * sum_k y'_k and stores sum_k y'_k (x_k - m) in *ydot; w == NULL is all ones.
 * Both sums in SUM_LANES lanes (lane l: the terms k = l mod SUM_LANES, the
 * tail's in lanes 0..), added by lanes_total: one accumulator was a chain of
 * dependent additions, an FMA's latency per vector (1.4 ms of a 8192x1000
 * loss on two AVX2 cores, more than the exp pass).  ynext (or NULL): the same
 * columns of the next row of y, prefetched as the lanes go: this pass is the
 * one that reads y from memory, and the exp pass's prefetch of the next row
 * of x left y's lines to the demand misses (8192x1000 and 1024x32000, AVX2,
 * one thread: loss + gradient 0.84-0.89x the time, loss 0.85-0.92x). */
template <bool Weighted, bool Plain, typename T>
static inline void soft_target_lanes(const T *x, const T *y, const T *w, idx_t n, T m, double alpha,
                                     double beta, double *sy, double *sd, const T *ynext) {
    lanes_zero(sy);
    lanes_zero(sd);
    idx_t nv = n / SUM_LANES * SUM_LANES;
    for (idx_t k = 0; k < nv; k += SUM_LANES) {
        prefetch_columns(ynext, k, k + SUM_LANES);
#pragma omp simd
        for (int l = 0; l < SUM_LANES; ++l) {
            double yk = Plain ? (double)y[k + l] : alpha * (double)y[k + l] + beta;
            if (Weighted) yk *= (double)w[k + l];
            sy[l] += yk;
            sd[l] += yk * ((double)x[k + l] - (double)m);
        }
    }
    prefetch_columns(ynext, nv, n);
    for (idx_t k = nv; k < n; ++k) {
        double yk = alpha * (double)y[k] + beta;
        if (Weighted) yk *= (double)w[k];
        sy[k - nv] += yk;
        sd[k - nv] += yk * ((double)x[k] - (double)m);
    }
}

template <typename T>
static inline double chunk_soft_target_sums(const T *x, const T *y, const T *w, idx_t n, T m,
                                             double alpha, double beta, double *ydot,
                                             const T *ynext) {
    double sy[SUM_LANES], sd[SUM_LANES];
    /* Plain (no smoothing: alpha 1, beta 0): y'_k = y_k without the FMA,
     * the same sums (1 y + 0 is y but for the sign of a zero, which the
     * sums, started at +0, do not keep) */
    if (w != NULL)
        soft_target_lanes<true, false>(x, y, w, n, m, alpha, beta, sy, sd, ynext);
    else if (alpha == 1.0 && beta == 0.0)
        soft_target_lanes<false, true>(x, y, w, n, m, alpha, beta, sy, sd, ynext);
    else
        soft_target_lanes<false, false>(x, y, w, n, m, alpha, beta, sy, sd, ynext);
    *ydot = lanes_total(sd);
    return lanes_total(sy);
}

/* ---- the row reductions: chunk sums added in chunk order (see CHUNK) ---- */

/* Clears the upper halves of the vector registers before a row reduction
 * returns.  GCC 12 leaves out its own vzeroupper at the return of the lane
 * loops' functions (AVX-512 build), and the caller's next libm call (log, in
 * SSE code) then ran at a fifth of its speed: 17% of a 1000-column loss. */
static inline void vector_upper_clear(void) {
#ifdef __AVX__
    _mm256_zeroupper();
#endif
}

/* sum_k exp(x_k - shift) of a row (row_exp_store_sum: the exponentials into
 * e); next (or NULL): the next row, prefetched meanwhile (chunk_exp_lanes),
 * of x's type or, for a row converted from 16 bits, of its storage type N */
template <typename T, typename N = T>
static CS_REDUCTION double row_exp_sum(const T *x, idx_t n, T shift, const N *next = NULL) {
    double s = 0.0;
    for (idx_t c0 = 0; c0 < n; c0 += CHUNK)
        s = add_chunk(s, chunk_exp_sum(x + c0, chunk_len(c0, n), shift, offset_or_null(next, c0)),
                      c0);
    vector_upper_clear();
    return s;
}

template <typename T, typename N = T>
static CS_REDUCTION double row_exp_store_sum(const T *x, T *e, idx_t n, T shift,
                                             const N *next = NULL) {
    double s = 0.0;
    for (idx_t c0 = 0; c0 < n; c0 += CHUNK)
        s = add_chunk(s, chunk_exp_store_sum(x + c0, e + c0, chunk_len(c0, n), shift,
                                             offset_or_null(next, c0)),
                      c0);
    vector_upper_clear();
    return s;
}

template <typename T>
static CS_REDUCTION double row_exp_store_sum_smooth(const T *x, T *e, const T *w, idx_t n, T shift,
                                                    double *smooth, const T *next = NULL) {
    double s = 0.0, a = 0.0, pa;
    for (idx_t c0 = 0; c0 < n; c0 += CHUNK) {
        s = add_chunk(s, chunk_exp_store_sum_smooth(x + c0, e + c0, offset_or_null(w, c0),
                                                    chunk_len(c0, n), shift, &pa,
                                                    offset_or_null(next, c0)), c0);
        a = add_chunk(a, pa, c0);
    }
    *smooth = a;
    vector_upper_clear();
    return s;
}

template <typename T>
static CS_REDUCTION double row_exp_store_sum_soft(const T *x, const T *y, const T *w, T *e, idx_t n,
                                                  T shift, double alpha, double beta, double *y_sum,
                                                  double *y_dot, const T *next = NULL,
                                                  const T *ynext = NULL) {
    double s = 0.0, sy = 0.0, sd = 0.0, py, pd;
    for (idx_t c0 = 0; c0 < n; c0 += CHUNK) {
        s = add_chunk(s, chunk_exp_store_sum_soft(x + c0, y + c0, offset_or_null(w, c0), e + c0,
                                                  chunk_len(c0, n), shift, alpha, beta, &py, &pd,
                                                  offset_or_null(next, c0),
                                                  offset_or_null(ynext, c0)), c0);
        sy = add_chunk(sy, py, c0);
        sd = add_chunk(sd, pd, c0);
    }
    *y_sum = sy;
    *y_dot = sd;
    vector_upper_clear();
    return s;
}

template <typename T> static CS_REDUCTION double row_weighted_shifted_sum(const T *x, const T *w, idx_t n, T m) {
    double s = 0.0;
    for (idx_t c0 = 0; c0 < n; c0 += CHUNK)
        s = add_chunk(s, chunk_weighted_shifted_sum(x + c0, offset_or_null(w, c0), chunk_len(c0, n), m), c0);
    return s;
}

template <typename T>
static CS_REDUCTION double row_soft_target_sums(const T *x, const T *y, const T *w, idx_t n, T m,
                                                double alpha, double beta, double *ydot,
                                                const T *ynext = NULL) {
    double sy = 0.0, sd = 0.0, pd;
    for (idx_t c0 = 0; c0 < n; c0 += CHUNK) {
        sy = add_chunk(sy, chunk_soft_target_sums(x + c0, y + c0, offset_or_null(w, c0),
                                                  chunk_len(c0, n), m, alpha, beta, &pd,
                                                  offset_or_null(ynext, c0)), c0);
        sd = add_chunk(sd, pd, c0);
    }
    *ydot = sd;
    return sy;
}

/* ---- the scalar end of a row's cross-entropy ------------------------------
 * Out of line for the reason the reductions are: GCC contracts a * b + c into
 * an FMA (-ffp-contract=fast, its default) in each inlined copy on its own, and
 * the copies in the whole-row kernel and in the serial step of a split row
 * were contracted differently (the loss of a row one ulp apart).  One compiled
 * copy gives a row the same bits on every path. */

/* Loss of a row with class index t (weight w_t), from x_t - m, the smoothing
 * sum and s = sum_k exp(x_k - m); sum(y') into *y_sum. */
static CS_REDUCTION double cross_entropy_index_loss(double w_t, double w_total, double alpha, double beta,
                                                    double x_t, double smooth, double s, double *y_sum) {
    double lse = log(s);
    double loss = alpha * w_t * (lse - x_t);
    *y_sum = alpha * w_t;
    if (beta != 0.0) {
        /* only with smoothing do the other classes' weights enter (a NaN
         * weight of an unused class must not reach the row otherwise, as in
         * PyTorch) */
        loss += beta * (w_total * lse - smooth);
        *y_sum += beta * w_total;
    }
    return loss;
}

/* Loss of a row with probability targets: sum(y') log(s) - sum(y'_k (x_k - m)). */
static CS_REDUCTION double cross_entropy_prob_loss(double y_sum, double y_dot, double s) {
    return y_sum * log(s) - y_dot;
}

/* ---- z-loss, token accuracy and logit soft-capping ----------------------
 * The options of the fused cross-entropy beyond PyTorch's (PaLM's z-loss,
 * Gemma 2's soft cap, and what an evaluation pass reads from the same pass).
 * With z-loss a row's loss gains z lse^2 (lse = m + log s, the row's true
 * logsumexp) and the exponentials' gradient coefficient 2 z lse / s times the
 * z-loss reduction factor zscale (1 / counted rows for "mean", whatever the
 * class weights).  The per-row parts go to optional float64 arrays (NULL:
 * not wanted), indexed like the row losses: zrow the z-loss part (0 for
 * ignored rows, NaN for a label out of range), acc 1.0 where the target's
 * logit equals the row maximum and the row's sum of exponentials is not NaN
 * (ties count as correct; a row holding NaN or +inf is not), else 0.0. */
struct CrossEntropyExtra {
    double z, zscale;
    double *zrow;
    double *acc;
};

/* z lse^2 of a computed row, and in *c1 the coefficient of its exponentials
 * in the gradient, (y_sum scale + 2 z zscale lse) / s.  Out of line (one
 * compiled copy) so that the whole-row and the split paths give the same bits. */
static CS_REDUCTION double z_loss_terms(double z, double zscale, double y_sum, double scale,
                                        double m, double s, double *c1) {
    double lse = m + log(s);
    *c1 = (y_sum * scale + 2.0 * z * zscale * lse) / s;
    return z * lse * lse;
}

/* 1.0 when x_t - m == 0 (the target holds the row maximum) in a row whose
 * sum of exponentials s is not NaN, else 0.0. */
static inline double token_correct(double x_t_shifted, double s) {
    return x_t_shifted == 0.0 && s == s ? 1.0 : 0.0;
}

/* tanh(y) for |y| < TANH_SMALL: y + y z tanh_odd(z), z = y^2, with an odd
 * polynomial (float; Cephes tanhf) or rational function (double; Cephes
 * tanh). */
#define CS_TANH_SMALL 0.625

static inline float tanh_odd(float z) {
    return (((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z +
            1.33314422036e-1f) * z - 3.33332819422e-1f;
}

static inline double tanh_odd(double z) {
    return ((-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z -
            1.61468768441708447952e3) /
           (((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z +
            4.84406305325125486048e3);
}

template <typename T> static inline T tanh_small(T y) {
    T z = y * y;
    return y + y * z * tanh_odd(z);
}

/* tanh(y) for |y| >= TANH_SMALL: 1 - 2e / (1 + e) with e = exp(-2|y|) <= 0.29
 * (exp_nonpositive), the sign of y; +-inf give +-1, NaN propagates. */
template <typename T> static inline T tanh_big(T y) {
    T e = exp_nonpositive((T)-2 * (y < (T)0 ? -y : y));
    T big = (T)1 - (T)2 * e / ((T)1 + e);
    return y < (T)0 ? -big : big;
}

/* tanh(y): tanh_small for |y| < TANH_SMALL, where tanh_big's form would
 * cancel, else tanh_big; both are computed and one selected (vector code).
 * At most 1.5 ulp (float and double, measured against long double). */
template <typename T> static inline T tanh_poly(T y) {
    T a = y < (T)0 ? -y : y;
    return a < (T)CS_TANH_SMALL ? tanh_small(y) : tanh_big(y);
}

/* out_k = cap tanh(x_k / cap): the soft-capped logits (out may be x), with
 * x_k / cap taken as y = x_k (1 / cap); returns the largest of them (as
 * row_max of out: NaN skipped, +0 for a zero maximum, -inf for n == 0), in
 * the same pass.  Where y^2 < TANH_SMALL^2 the capped logit is
 * x + x y^2 tanh_odd(y^2) (cap tanh_small(y) with cap y taken as the x it
 * came from: no multiply by the cap, no rounding of x / cap back to x), else
 * cap tanh_poly(y).  By blocks of CAP_BLOCK: each block is first capped with
 * the small form alone (no exp, no division); where a y^2 of the block turns
 * out to be TANH_SMALL^2 or more (rare for logits well inside the cap) the
 * block is capped again with both forms, selected per element, so that a
 * logit gets the same value whatever block it is in.  NaN is skipped by the
 * maxima and propagates through either form.  Out of line: every path caps
 * with the same compiled code. */
enum { CAP_BLOCK = 512, CAP_LANES = 16 };
#define CS_TANH_SMALL_SQ (CS_TANH_SMALL * CS_TANH_SMALL)

/* the capped logit of x, y = x (1 / cap), z = y^2; Small: the small form
 * alone */
template <bool Small, typename T> static inline T cap_value(T x, T y, T z, T cap) {
    T small = x + x * z * tanh_odd(z);
    if (Small) return small;
    return z < (T)CS_TANH_SMALL_SQ ? small : cap * tanh_big(y);
}

/* x[0, n) capped into out, the maxima of y^2 and of the capped values into
 * the lanes zl and ml (element k into lane k mod CAP_LANES) */
template <bool Small, typename T>
static inline void cap_block(const T *x, T *out, idx_t n, T cap, T inv, T *zl, T *ml) {
    for (int l = 0; l < CAP_LANES; ++l) zl[l] = (T)0, ml[l] = (T)-INFINITY;
    idx_t nv = n / CAP_LANES * CAP_LANES;
    for (idx_t k = 0; k < nv; k += CAP_LANES) {
#pragma omp simd
        for (int l = 0; l < CAP_LANES; ++l) {
            T y = x[k + l] * inv;
            T z = y * y;
            T v = cap_value<Small>(x[k + l], y, z, cap);
            out[k + l] = v;
            zl[l] = z > zl[l] ? z : zl[l];
            ml[l] = v > ml[l] ? v : ml[l];
        }
    }
    for (idx_t k = nv; k < n; ++k) {
        T y = x[k] * inv;
        T z = y * y;
        T v = cap_value<Small>(x[k], y, z, cap);
        out[k] = v;
        zl[k - nv] = z > zl[k - nv] ? z : zl[k - nv];
        ml[k - nv] = v > ml[k - nv] ? v : ml[k - nv];
    }
}

template <typename T> static CS_REDUCTION T row_softcap_max(const T *x, T *out, idx_t n, T cap) {
    const T inv = (T)1 / cap;
    if (!(inv < (T)INFINITY)) {        /* a subnormal cap: 1 / cap overflows */
        T m = (T)-INFINITY;
        for (idx_t k = 0; k < n; ++k) {
            out[k] = cap * tanh_poly(x[k] / cap);
            m = out[k] > m ? out[k] : m;
        }
        return m + (T)0;
    }
    T ml[CAP_LANES], bl[CAP_LANES], zl[CAP_LANES];
    T buf[CAP_BLOCK];                  /* in place (out == x): a block's first try */
    for (int l = 0; l < CAP_LANES; ++l) ml[l] = (T)-INFINITY;
    for (idx_t b = 0; b < n; b += CAP_BLOCK) {
        idx_t len = n - b > CAP_BLOCK ? CAP_BLOCK : n - b;
        T *o = out == x ? buf : out + b;
        cap_block<true>(x + b, o, len, cap, inv, zl, bl);
        if (!(lanes_max<CAP_LANES>(zl) < (T)CS_TANH_SMALL_SQ))
            cap_block<false>(x + b, out + b, len, cap, inv, zl, bl);
        else if (o == buf)
            memcpy(out + b, buf, (size_t)len * sizeof(T));
#pragma omp simd
        for (int l = 0; l < CAP_LANES; ++l) ml[l] = bl[l] > ml[l] ? bl[l] : ml[l];
    }
    vector_upper_clear();
    return lanes_max<CAP_LANES>(ml) + (T)0;
}

template <typename T> static CS_REDUCTION void row_softcap(const T *x, T *out, idx_t n, T cap) {
    (void)row_softcap_max(x, out, n, cap);
}

/* g_k *= 1 - (c_k / cap)^2, c the capped logits: the chain rule through the
 * soft cap (d/dx cap tanh(x / cap) = 1 - tanh^2), c_k / cap taken as
 * c_k (1 / cap) as in row_softcap. */
template <typename T> static CS_REDUCTION void row_softcap_grad(T *g, const T *c, idx_t n, T cap) {
    /* a zero gradient stays zero: an ignored row holding NaN logits keeps its
     * all-zero gradient (0 * NaN would be NaN) */
    const T inv = (T)1 / cap;
    if (!(inv < (T)INFINITY)) {        /* a subnormal cap */
#pragma omp simd
        for (idx_t k = 0; k < n; ++k) {
            T u = c[k] / cap;
            g[k] = g[k] != (T)0 ? g[k] * ((T)1 - u * u) : g[k];
        }
    } else {
#pragma omp simd
        for (idx_t k = 0; k < n; ++k) {
            T u = c[k] * inv;
            g[k] = g[k] != (T)0 ? g[k] * ((T)1 - u * u) : g[k];
        }
    }
    vector_upper_clear();
}

/* ---- elementwise maps over one row -------------------------------------- */

/* e_k *= c */
template <typename T> static inline void row_scale(T *e, idx_t n, T c) {
#pragma omp simd
    for (idx_t k = 0; k < n; ++k) e[k] = e[k] * c;
}

/* out_k = (x_k - m) - lse: this order is the accurate one for log_softmax. */
template <typename T> static inline void row_log_softmax_from(const T *x, T *out, idx_t n, T m, T lse) {
#pragma omp simd
    for (idx_t k = 0; k < n; ++k) out[k] = (x[k] - m) - lse;
}

/* The backward passes read their two inputs from memory in their first pass
 * (the dot or the sum) and from the cache in the pass that writes, which left
 * the memory bus idle; given the next rows of both inputs (gnext and anext,
 * or NULL), the writing pass prefetches their same columns as it goes, one
 * cache line of each per line of the row, as chunk_exp_lanes does.  Without
 * them (NULL: the rows that do not prefetch, see _backward_next) the pass is
 * one loop.  A line at a time (an inner loop of a fixed BackwardLine<T>::N
 * elements, whole vectors), not in spans of 64 elements each with its own
 * prefetch loops and vector-loop set-up: the spans ran 2.2 instructions an
 * element for softmax_backward's one subtract and multiply (AVX2, callgrind),
 * the lines about 1.0. */
template <typename T> struct BackwardLine {
    enum { N = 64 / (int)sizeof(T) };
};

/* softmax backward: out_k = a_k (g_k - dot).  out may be g or a. */
template <typename T>
static inline void row_softmax_backward(const T *g, const T *a, T *out, idx_t n, T dot,
                                        const T *gnext = NULL, const T *anext = NULL) {
    enum { L = BackwardLine<T>::N };
    idx_t k0 = 0;
    if (gnext != NULL)
        for (; k0 + L <= n; k0 += L) {
            __builtin_prefetch(gnext + k0), __builtin_prefetch(anext + k0);
#pragma omp simd
            for (int l = 0; l < L; ++l) out[k0 + l] = a[k0 + l] * (g[k0 + l] - dot);
        }
#pragma omp simd
    for (idx_t k = k0; k < n; ++k) out[k] = a[k] * (g[k] - dot);
}

/* log_softmax backward: out_k = g_k - exp(o_k) * gsum.  out may be g or o. */
template <typename T>
static inline void row_log_softmax_backward(const T *g, const T *o, T *out, idx_t n, T gsum,
                                            const T *gnext = NULL, const T *onext = NULL) {
    enum { L = BackwardLine<T>::N };
    idx_t nv = vector_part(n), k0 = 0;
    if (gnext != NULL)
        for (; k0 + L <= nv; k0 += L) {
            __builtin_prefetch(gnext + k0), __builtin_prefetch(onext + k0);
#pragma omp simd
            for (int l = 0; l < L; ++l) out[k0 + l] = g[k0 + l] - exp_poly(o[k0 + l]) * gsum;
        }
#pragma omp simd
    for (idx_t k = k0; k < nv; ++k) out[k] = g[k] - exp_poly(o[k]) * gsum;
    if (nv < n) {
        T buf[EXP_TAIL];
        exp_tail<false>(o + nv, n - nv, (T)0, buf);
        for (idx_t l = 0; l < n - nv; ++l) out[nv + l] = g[nv + l] - buf[l] * gsum;
    }
}

/* Cross-entropy gradient from the stored exponentials (in place):
 * g_k = e_k * c1 - c2 * w_k  (w == NULL: all ones). */
template <typename T> static inline void row_grad_affine(T *e, const T *w, idx_t n, T c1, T c2) {
    if (w == NULL) {
#pragma omp simd
        for (idx_t k = 0; k < n; ++k) e[k] = e[k] * c1 - c2;
    } else {
#pragma omp simd
        for (idx_t k = 0; k < n; ++k) e[k] = e[k] * c1 - c2 * w[k];
    }
}

/* Probability targets: g_k = e_k * c1 - w_k (a2 y_k + b2)  (w == NULL: ones). */
template <typename T> static inline void row_grad_soft(T *e, const T *y, const T *w, idx_t n, T c1, T a2, T b2) {
    if (w == NULL) {
#pragma omp simd
        for (idx_t k = 0; k < n; ++k) e[k] = e[k] * c1 - (a2 * y[k] + b2);
    } else {
#pragma omp simd
        for (idx_t k = 0; k < n; ++k) e[k] = e[k] * c1 - w[k] * (a2 * y[k] + b2);
    }
}

/* Prefetches a row that is skipped (an ignored cross-entropy row): reading
 * past it in memory order keeps the hardware prefetchers' streams going, and
 * the next row arrives as fast as after a computed one. */
template <typename T> static inline void row_prefetch(const T *x, idx_t n) {
    for (idx_t k = 0; k < n; k += 64 / (idx_t)sizeof(T)) __builtin_prefetch(x + k);
}

template <typename T> static inline void row_fill(T *out, idx_t n, T value) {
    for (idx_t k = 0; k < n; ++k) out[k] = value;
}

template <typename T> static inline void row_zero(T *out, idx_t n) {
    memset(out, 0, (size_t)n * sizeof(T));
}

/* ---- labels ------------------------------------------------------------ */

/* The number of labels that are neither in [0, n_classes) nor ignore_index,
 * and in *kept the number of labels that are not ignore_index: the checks
 * and the "mean" divisor of unweighted cross-entropy, as one vector loop. */
template <typename L>
static inline idx_t labels_count_bad(const L *t, idx_t n, idx_t n_classes, idx_t ignore_index,
                                     idx_t *kept) {
    idx_t bad = 0, ignored = 0;
#pragma omp simd reduction(+ : bad, ignored)
    for (idx_t i = 0; i < n; ++i) {
        idx_t ti = (idx_t)t[i];          /* in 64 bits: ignore_index need not fit in L */
        idx_t is_ignored = ti == ignore_index;
        ignored += is_ignored;
        /* outside [0, n_classes) as one unsigned compare, in 64-bit lanes
         * throughout: GCC packed 64-bit masks to 32 bits and back for the
         * int of `ti < 0 || ti >= n_classes` (9 % of the AVX2 loss of
         * 262144x2) */
        bad += (idx_t)((uint64_t)ti >= (uint64_t)n_classes) & (is_ignored ^ 1);
    }
    *kept = n - ignored;
    return bad;
}

}  // namespace csoftmax

#endif
