/*
 * tiles.hpp -- short rows (fewer than SHORT_ROW_BYTES bytes), a tile of
 * consecutive rows at a time: softmax's and log_softmax's max and
 * exponentials, and cross-entropy with class indices.  Split from rowops.hpp,
 * whose one-row primitives and exp/log these build on.
 */
#ifndef CSOFTMAX_TILES_HPP
#define CSOFTMAX_TILES_HPP

#include "rowops.hpp"

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

/* ---- blocks: LANES rows of a tile, transposed ----------------------------
 * With rows as the vector lanes every step of a short row is a vertical
 * vector operation (no horizontal reductions, no per-row loop set-up, each
 * row's sums added in column order in its lane), but read in place the
 * lanes of a column are strided: GCC builds such a vector an element at a
 * time (or does not vectorise at all for a group size that is not a power
 * of two).  So a block of LANES rows is first copied, transposed, into a
 * scratch block c[k * LANES + l] = x[l * n + k] in L1, where the columns are
 * contiguous vectors; results are copied back the same way.  The copies are
 * scalar loads and stores: they run on the load and store ports, which the
 * vector arithmetic (the exp) leaves idle.  A block's padding lanes (a
 * tile's last block) hold 0 and their results are dropped. */
enum { TILE = 1024, LANES = 16 };
/* Rows of fewer than SHORT_ROW_BYTES bytes (float32: up to 63 columns,
 * float64: 31; 16-bit rows are computed in float32) are computed a tile of
 * rows at a time; the choice depends on the width and the dtype only, so every
 * row of a given width always takes the same arithmetic path.  There the
 * blocks beat the row loops, whose horizontal reductions and per-row log form
 * a chain of dependent operations that a short row cannot hide.  Measured on
 * AVX2 (AMD Zen 3, 2^21 logits, against the row loops, one and two threads):
 * float32 rows of 32-63 columns take 0.26-0.60x the time for the loss,
 * 0.41-0.97x for the loss + gradient, 0.39-1.03x for softmax (33 columns:
 * 0.26x, 0.41x, 0.39x); bfloat16 0.30-0.70x, 0.36-0.84x, 0.48-0.78x.  Rows of
 * 256 bytes and more lose the gradient's and softmax's lead: float32 rows of
 * 64 columns 1.03-1.19x and 1.06-1.36x the time in tiles, float64 rows of 48
 * 1.49x for the loss + gradient, so they run by rows.  On the baseline build
 * float32 rows of 33-63 columns: loss 0.53-0.86x, loss + gradient
 * 0.65-1.00x, softmax 0.70-1.21x. */
enum { SHORT_ROW_BYTES = 256 };
/* the widest short row in columns (float, the narrowest type computed) */
enum { SHORT_ROW_MAX = SHORT_ROW_BYTES / sizeof(float) - 1 };
static_assert(TILE / SHORT_ROW_MAX >= LANES, "a tile holds a block of the widest short rows");
/* a tile's blocks: rows padded to a multiple of LANES */
enum { TILE_BLOCKS = TILE + (LANES - 1) * SHORT_ROW_MAX };

/* 4 columns of G consecutive rows (row stride n) to and from 4 columns of a
 * transposed block (lanes l .. l + G - 1 at c, column stride LANES): GCC
 * does not vectorise a strided copy well (4 or 5 instructions an element
 * for the scalar loop), so on AVX2 it is a 4x4 transpose in registers. */
#if defined(__AVX2__)
enum { HAVE_TRANSPOSE4 = 1 };
template <typename T> struct Transpose4;
template <> struct Transpose4<float> {
    enum { G = 8 };  /* rows l and l + 4 share a vector: a 4x4 transpose in each 128-bit half */
    static inline void shuffle(__m256 &a, __m256 &b, __m256 &c, __m256 &d) {
        __m256 t0 = _mm256_unpacklo_ps(a, b), t1 = _mm256_unpackhi_ps(a, b);
        __m256 t2 = _mm256_unpacklo_ps(c, d), t3 = _mm256_unpackhi_ps(c, d);
        a = _mm256_shuffle_ps(t0, t2, 0x44);
        b = _mm256_shuffle_ps(t0, t2, 0xee);
        c = _mm256_shuffle_ps(t1, t3, 0x44);
        d = _mm256_shuffle_ps(t1, t3, 0xee);
    }
    static inline __m256 rows2(const float *x, idx_t n) {
        return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(x)), _mm_loadu_ps(x + 4 * n), 1);
    }
    static inline void in(const float *x, idx_t n, float *c) {
        __m256 a = rows2(x, n), b = rows2(x + n, n), cc = rows2(x + 2 * n, n), d = rows2(x + 3 * n, n);
        shuffle(a, b, cc, d);
        _mm256_storeu_ps(c, a);
        _mm256_storeu_ps(c + LANES, b);
        _mm256_storeu_ps(c + 2 * LANES, cc);
        _mm256_storeu_ps(c + 3 * LANES, d);
    }
    static inline void out(const float *c, idx_t n, float *x) {
        __m256 v[4] = {_mm256_loadu_ps(c), _mm256_loadu_ps(c + LANES), _mm256_loadu_ps(c + 2 * LANES),
                       _mm256_loadu_ps(c + 3 * LANES)};
        shuffle(v[0], v[1], v[2], v[3]);
        for (int i = 0; i < 4; ++i) {
            _mm_storeu_ps(x + i * n, _mm256_castps256_ps128(v[i]));
            _mm_storeu_ps(x + (i + 4) * n, _mm256_extractf128_ps(v[i], 1));
        }
    }
};
template <> struct Transpose4<double> {
    enum { G = 4 };
    static inline void shuffle(__m256d &a, __m256d &b, __m256d &c, __m256d &d) {
        __m256d t0 = _mm256_unpacklo_pd(a, b), t1 = _mm256_unpackhi_pd(a, b);
        __m256d t2 = _mm256_unpacklo_pd(c, d), t3 = _mm256_unpackhi_pd(c, d);
        a = _mm256_permute2f128_pd(t0, t2, 0x20);
        b = _mm256_permute2f128_pd(t1, t3, 0x20);
        c = _mm256_permute2f128_pd(t0, t2, 0x31);
        d = _mm256_permute2f128_pd(t1, t3, 0x31);
    }
    static inline void in(const double *x, idx_t n, double *c) {
        __m256d a = _mm256_loadu_pd(x), b = _mm256_loadu_pd(x + n);
        __m256d cc = _mm256_loadu_pd(x + 2 * n), d = _mm256_loadu_pd(x + 3 * n);
        shuffle(a, b, cc, d);
        _mm256_storeu_pd(c, a);
        _mm256_storeu_pd(c + LANES, b);
        _mm256_storeu_pd(c + 2 * LANES, cc);
        _mm256_storeu_pd(c + 3 * LANES, d);
    }
    static inline void out(const double *c, idx_t n, double *x) {
        __m256d a = _mm256_loadu_pd(c), b = _mm256_loadu_pd(c + LANES);
        __m256d cc = _mm256_loadu_pd(c + 2 * LANES), d = _mm256_loadu_pd(c + 3 * LANES);
        shuffle(a, b, cc, d);
        _mm256_storeu_pd(x, a);
        _mm256_storeu_pd(x + n, b);
        _mm256_storeu_pd(x + 2 * n, cc);
        _mm256_storeu_pd(x + 3 * n, d);
    }
};

/* Rows of 2 and 3 columns, which Transpose4 cannot take: G consecutive rows
 * are N whole vectors, in and out of N columns of the block.  Element by
 * element, n = 3 was the slowest short row (softmax of 655360 float32
 * logits: 2x the time of n = 4; AVX2, Zen 3), n = 2 the next.  (The loss of
 * n = 2 has its own kernel, tile_cross_entropy_binary, without a block.)
 *
 * Two columns: one shuffle a column picks the even or the odd elements of two
 * vectors, lane by lane; a permute of 64-bit pairs puts them in row order. */
template <typename T> struct Transpose2;
template <> struct Transpose2<float> {
    enum { G = 8, N = 2 };
    static inline __m256 pairs(__m256 v) {    /* 64-bit pairs 0 2 1 3: its own inverse */
        return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), 0xd8));
    }
    static inline void in(const float *x, float *c) {
        __m256 a = _mm256_loadu_ps(x), b = _mm256_loadu_ps(x + 8);
        _mm256_storeu_ps(c, pairs(_mm256_shuffle_ps(a, b, 0x88)));          /* 0 2 of each 4 */
        _mm256_storeu_ps(c + LANES, pairs(_mm256_shuffle_ps(a, b, 0xdd)));  /* 1 3 */
    }
    static inline void out(const float *c, float *x) {
        __m256 k0 = pairs(_mm256_loadu_ps(c)), k1 = pairs(_mm256_loadu_ps(c + LANES));
        _mm256_storeu_ps(x, _mm256_unpacklo_ps(k0, k1));
        _mm256_storeu_ps(x + 8, _mm256_unpackhi_ps(k0, k1));
    }
};
template <> struct Transpose2<double> {
    enum { G = 4, N = 2 };
    static inline void in(const double *x, double *c) {
        __m256d a = _mm256_loadu_pd(x), b = _mm256_loadu_pd(x + 4);
        _mm256_storeu_pd(c, _mm256_permute4x64_pd(_mm256_unpacklo_pd(a, b), 0xd8));
        _mm256_storeu_pd(c + LANES, _mm256_permute4x64_pd(_mm256_unpackhi_pd(a, b), 0xd8));
    }
    static inline void out(const double *c, double *x) {
        __m256d k0 = _mm256_permute4x64_pd(_mm256_loadu_pd(c), 0xd8);
        __m256d k1 = _mm256_permute4x64_pd(_mm256_loadu_pd(c + LANES), 0xd8);
        _mm256_storeu_pd(x, _mm256_unpacklo_pd(k0, k1));
        _mm256_storeu_pd(x + 4, _mm256_unpackhi_pd(k0, k1));
    }
};

/* Three columns (three-class problems): G rows are 3 vectors, a, b, cc; each column's
 * elements sit at positions that differ between the three vectors (column 0
 * of 8 float rows: a at 0, 3, 6, b at 1, 4, 7, cc at 2, 5), so two blends
 * gather a column into one vector and one permute puts it in row order.
 */
template <typename T> struct Transpose3;
template <> struct Transpose3<float> {
    enum { G = 8, N = 3 };
    static inline __m256i order(int i0, int i1, int i2, int i3, int i4, int i5, int i6, int i7) {
        return _mm256_setr_epi32(i0, i1, i2, i3, i4, i5, i6, i7);
    }
    static inline void in(const float *x, float *c) {
        __m256 a = _mm256_loadu_ps(x), b = _mm256_loadu_ps(x + 8), cc = _mm256_loadu_ps(x + 16);
        __m256 k0 = _mm256_blend_ps(_mm256_blend_ps(a, b, 0x92), cc, 0x24);  /* a0 b1 c2 a3 b4 c5 a6 b7 */
        __m256 k1 = _mm256_blend_ps(_mm256_blend_ps(a, b, 0x24), cc, 0x49);  /* c0 a1 b2 c3 a4 b5 c6 a7 */
        __m256 k2 = _mm256_blend_ps(_mm256_blend_ps(a, b, 0x49), cc, 0x92);  /* b0 c1 a2 b3 c4 a5 b6 c7 */
        _mm256_storeu_ps(c, _mm256_permutevar8x32_ps(k0, order(0, 3, 6, 1, 4, 7, 2, 5)));
        _mm256_storeu_ps(c + LANES, _mm256_permutevar8x32_ps(k1, order(1, 4, 7, 2, 5, 0, 3, 6)));
        _mm256_storeu_ps(c + 2 * LANES, _mm256_permutevar8x32_ps(k2, order(2, 5, 0, 3, 6, 1, 4, 7)));
    }
    static inline void out(const float *c, float *x) {
        /* the inverse permutes back to the blended layouts above */
        __m256 k0 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(c), order(0, 3, 6, 1, 4, 7, 2, 5));
        __m256 k1 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(c + LANES), order(5, 0, 3, 6, 1, 4, 7, 2));
        __m256 k2 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(c + 2 * LANES), order(2, 5, 0, 3, 6, 1, 4, 7));
        _mm256_storeu_ps(x, _mm256_blend_ps(_mm256_blend_ps(k0, k1, 0x92), k2, 0x24));
        _mm256_storeu_ps(x + 8, _mm256_blend_ps(_mm256_blend_ps(k0, k1, 0x24), k2, 0x49));
        _mm256_storeu_ps(x + 16, _mm256_blend_ps(_mm256_blend_ps(k0, k1, 0x49), k2, 0x92));
    }
};
template <> struct Transpose3<double> {
    enum { G = 4, N = 3 };
    static inline void in(const double *x, double *c) {
        __m256d a = _mm256_loadu_pd(x), b = _mm256_loadu_pd(x + 4), cc = _mm256_loadu_pd(x + 8);
        __m256d k0 = _mm256_blend_pd(_mm256_blend_pd(a, b, 0x4), cc, 0x2);  /* a0 c1 b2 a3 */
        __m256d k1 = _mm256_blend_pd(_mm256_blend_pd(a, b, 0x9), cc, 0x4);  /* b0 a1 c2 b3 */
        __m256d k2 = _mm256_blend_pd(_mm256_blend_pd(a, b, 0x2), cc, 0x9);  /* c0 b1 a2 c3 */
        _mm256_storeu_pd(c, _mm256_permute4x64_pd(k0, 0x6c));               /* 0 3 2 1 */
        _mm256_storeu_pd(c + LANES, _mm256_permute_pd(k1, 0x5));            /* 1 0 3 2 */
        _mm256_storeu_pd(c + 2 * LANES, _mm256_permute4x64_pd(k2, 0xc6));   /* 2 1 0 3 */
    }
    static inline void out(const double *c, double *x) {
        /* each permute above is its own inverse */
        __m256d k0 = _mm256_permute4x64_pd(_mm256_loadu_pd(c), 0x6c);
        __m256d k1 = _mm256_permute_pd(_mm256_loadu_pd(c + LANES), 0x5);
        __m256d k2 = _mm256_permute4x64_pd(_mm256_loadu_pd(c + 2 * LANES), 0xc6);
        _mm256_storeu_pd(x, _mm256_blend_pd(_mm256_blend_pd(k0, k1, 0x2), k2, 0x4));
        _mm256_storeu_pd(x + 4, _mm256_blend_pd(_mm256_blend_pd(k0, k1, 0x9), k2, 0x2));
        _mm256_storeu_pd(x + 8, _mm256_blend_pd(_mm256_blend_pd(k0, k1, 0x4), k2, 0x9));
    }
};
#else
enum { HAVE_TRANSPOSE4 = 0 };
template <typename T> struct Transpose4 {
    enum { G = 1 };
    static inline void in(const T *, idx_t, T *) {}
    static inline void out(const T *, idx_t, T *) {}
};
template <typename T> struct Transpose2 {
    enum { G = 1, N = 2 };
    static inline void in(const T *, T *) {}
    static inline void out(const T *, T *) {}
};
template <typename T> struct Transpose3 {
    enum { G = 1, N = 3 };
    static inline void in(const T *, T *) {}
    static inline void out(const T *, T *) {}
};
#endif

/* The first rows of a tile of TR::N columns into (Out: out of) its blocks,
 * TR::G at a time; returns the rows done. */
template <typename TR, bool Out, typename T>
static inline idx_t tile_narrow(const T *from, idx_t rows, T *to) {
    idx_t r0 = 0;
    for (; r0 + TR::G <= rows; r0 += TR::G) {
        if (Out) TR::out(from + tile_at(r0, 0, TR::N), to + r0 * TR::N);
        else TR::in(from + r0 * TR::N, to + tile_at(r0, 0, TR::N));
    }
    return r0;
}

/* Rows per tile for short rows of n columns: a multiple of LANES, so that only
 * an array's last tile has a block with padding lanes. */
static inline idx_t tile_rows(idx_t n) { return TILE / n / LANES * LANES; }

/* The element of row r, column k of a tile in its transposed blocks: block
 * b (rows [b LANES, (b + 1) LANES)) is at c + b n LANES. */
static inline idx_t tile_at(idx_t r, idx_t k, idx_t n) {
    size_t u = (size_t)r;              /* r >= 0: a shift and a mask, no signed division */
    return (idx_t)(u / LANES) * n * LANES + k * LANES + (idx_t)(u % LANES);
}

/* A tile's rows into its transposed blocks, padding lanes 0.  G rows at a
 * time, 4 columns at a time (the last 4 overlap the previous ones for n not
 * a multiple of 4: the same values again), where Transpose4 is available and
 * n >= 4; the rest element by element.  The whole tile is copied before any
 * block is read: a vector load of what scalar stores wrote a moment before
 * waits for them to reach the cache (no store forwarding). */
template <typename T> static inline void tile_in(const T *x, idx_t rows, idx_t n, T *c) {
    typedef Transpose4<T> TR;
    idx_t r0 = 0;
    if (HAVE_TRANSPOSE4 && n == 2) r0 = tile_narrow<Transpose2<T>, false>(x, rows, c);
    if (HAVE_TRANSPOSE4 && n == 3) r0 = tile_narrow<Transpose3<T>, false>(x, rows, c);
    if (HAVE_TRANSPOSE4 && n >= 4) {
        /* column k of the G rows at r0 goes to cr + k LANES (tile_at) */
        for (; r0 + TR::G <= rows; r0 += TR::G) {
            const T *xr = x + r0 * n;
            T *cr = c + tile_at(r0, 0, n);
            idx_t k = 0;
            for (; k + 4 <= n; k += 4) TR::in(xr + k, n, cr + k * LANES);
            if (k < n) TR::in(xr + (n - 4), n, cr + (n - 4) * LANES);
        }
    }
    for (idx_t r = r0; r < rows; ++r)
        for (idx_t k = 0; k < n; ++k) c[tile_at(r, k, n)] = x[r * n + k];
    for (idx_t r = rows; r % LANES != 0; ++r)
        for (idx_t k = 0; k < n; ++k) c[tile_at(r, k, n)] = (T)0;
}

template <typename T> static inline void tile_out(const T *c, idx_t rows, idx_t n, T *out) {
    typedef Transpose4<T> TR;
    idx_t r0 = 0;
    if (HAVE_TRANSPOSE4 && n == 2) r0 = tile_narrow<Transpose2<T>, true>(c, rows, out);
    if (HAVE_TRANSPOSE4 && n == 3) r0 = tile_narrow<Transpose3<T>, true>(c, rows, out);
    if (HAVE_TRANSPOSE4 && n >= 4) {
        for (; r0 + TR::G <= rows; r0 += TR::G) {
            T *xr = out + r0 * n;
            const T *cr = c + tile_at(r0, 0, n);
            idx_t k = 0;
            for (; k + 4 <= n; k += 4) TR::out(cr + k * LANES, n, xr + k);
            if (k < n) TR::out(cr + (n - 4) * LANES, n, xr + (n - 4));
        }
    }
    for (idx_t r = r0; r < rows; ++r)
        for (idx_t k = 0; k < n; ++k) out[r * n + k] = c[tile_at(r, k, n)];
}

/* m[l] = max of lane l's row (-inf for n == 0; NaN is skipped here and
 * caught by x - m later, as in row_max) */
template <typename T> static inline void block_max(const T *c, idx_t n, T *m) {
#pragma omp simd
    for (idx_t l = 0; l < LANES; ++l) m[l] = (T)-INFINITY;
    for (idx_t k = 0; k < n; ++k) {
#pragma omp simd
        for (idx_t l = 0; l < LANES; ++l) m[l] = c[k * LANES + l] > m[l] ? c[k * LANES + l] : m[l];
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
    if (EXP_SUM_SPLIT)
        for (idx_t k = 0; k < n; ++k) {
#pragma omp simd
            for (idx_t l = 0; l < LANES; ++l) acc[l] += (double)e[k * LANES + l];
        }
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
 * tile_cross_entropy_index_any: the max m, the target's logit xv (a select
 * per column: no gather; lab -1 or -2 selects nothing), with smoothing the
 * weighted sum of x - m, and the exp-sum s (Grad: the exponentials replace
 * c).  The finish (log, loss, gradient coefficients) is left to one loop over
 * the whole tile: per block its log was a chain of dependent operations that
 * the next block's loops could not hide (17 % of the AVX2 loss at 65536x10). */
template <bool Grad, typename T>
static inline void block_cross_entropy_stats(T *c, idx_t n, const int32_t *lab, const T *w,
                                             double beta, T *m, T *xv, double *smooth, double *s) {
#pragma omp simd
    for (idx_t l = 0; l < LANES; ++l) m[l] = (T)-INFINITY, xv[l] = (T)0;
    for (idx_t k = 0; k < n; ++k) {
        const T *ck = c + k * LANES;
#pragma omp simd
        for (idx_t l = 0; l < LANES; ++l) {
            T v = ck[l];
            m[l] = v > m[l] ? v : m[l];
            xv[l] = lab[l] == (int32_t)k ? v : xv[l];
        }
    }
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

/* The gradient of one block from its exponentials in c:
 * e c1 [- beta scale w_k] [- ct at the target]. */
template <typename T>
static inline void block_cross_entropy_grad(T *c, idx_t n, const int32_t *lab, const T *w,
                                            double beta, double scale, const T *c1, const T *ct) {
    const T cb = (T)(beta * scale);
    /* one pass a column: the product, then the target's subtraction of the
     * rounded product (the product has a second use, the select, so it is not
     * fused into an FMA: the bits of two passes) */
    T c1b[LANES], ctb[LANES];
    int32_t lb[LANES];
#pragma omp simd
    for (idx_t l = 0; l < LANES; ++l) c1b[l] = c1[l], ctb[l] = ct[l], lb[l] = lab[l];
    if (beta != 0.0) {
        for (idx_t k = 0; k < n; ++k) {
            T *ck = c + k * LANES;
            T cw = cb * (w != NULL ? w[k] : (T)1);
#pragma omp simd
            for (idx_t l = 0; l < LANES; ++l) {
                T v = ck[l] * c1b[l] - cw;
                ck[l] = lb[l] == (int32_t)k ? v - ctb[l] : v;
            }
        }
        return;
    }
    for (idx_t k = 0; k < n; ++k) {
        T *ck = c + k * LANES;
#pragma omp simd
        for (idx_t l = 0; l < LANES; ++l) {
            T v = ck[l] * c1b[l];
            ck[l] = lb[l] == (int32_t)k ? v - ctb[l] : v;
        }
    }
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
        const CrossEntropyExtra *ex) {
    enum { R = TILE + LANES };
    T c[TILE_BLOCKS];
    int32_t lab[R];
    double wt[R], bl[R], s[R];         /* bl holds the smoothing sums until the finish */
    T m[R], xv[R], c1[Grad ? R : 1], ct[Grad ? R : 1];
    double bz[Extra ? R : 1], ba[Extra ? R : 1];
    int special = tile_labels(target, rows, n, ignore_index, lab);
    idx_t padded = (rows + LANES - 1) / LANES * LANES;
    for (idx_t r = rows; r < padded; ++r) lab[r] = -1;
    if (w != NULL)                     /* loads at a data-dependent index */
        for (idx_t r = 0; r < padded; ++r) wt[r] = lab[r] >= 0 ? (double)w[lab[r]] : 1.0;
    else
        for (idx_t r = 0; r < padded; ++r) wt[r] = 1.0;
    tile_in(x, rows, n, c);            /* x is not read again: grad may overwrite it */
    for (idx_t r = 0; r < rows; r += LANES)
        block_cross_entropy_stats<Grad>(c + r * n, n, lab + r, w, beta, m + r, xv + r, bl + r,
                                        s + r);
    tile_cross_entropy_finish<Grad, Extra>(padded, wt, m, xv, bl, s, w_total, alpha,
                                           beta, scale, ex, bl, bz, ba, c1, ct);
    if (special > 0)
        tile_skipped_rows<T>(lab, rows, n, bl, Extra ? bz : NULL, Extra ? ba : NULL, NULL);
    if (loss != NULL) memcpy(loss, bl, (size_t)rows * sizeof(double));
    if (Extra && ex->zrow != NULL) memcpy(ex->zrow, bz, (size_t)rows * sizeof(double));
    if (Extra && ex->acc != NULL) memcpy(ex->acc, ba, (size_t)rows * sizeof(double));
    double total = row_sum(bl, rows);
    if (!Grad) return total;
    for (idx_t r = 0; r < rows; r += LANES)
        block_cross_entropy_grad(c + r * n, n, lab + r, w, beta, scale, c1 + r, ct + r);
    tile_out(c, rows, n, grad);
    if (special > 0) tile_skipped_rows<T>(lab, rows, n, NULL, NULL, NULL, grad);
    return total;
}

/* ---- softmax, log_softmax, logsumexp over a tile of short rows ----------
 * On the transposed blocks (see tile_in), like the cross-entropy above; the
 * sum of exponentials in double, the log by log_ge1 (s is in [1, 63] or NaN). */

/* The max m and the exp-sum s of every row of a tile in its transposed
 * blocks c (Store: the exponentials replace c).  The per-row finish (a
 * division, a log) is then one loop over the whole tile: done per block it
 * was a chain of dependent operations that the next block could not hide. */
template <bool Store, typename T>
static inline void tile_blocks_max_exp_sum(T *c, idx_t rows, idx_t n, T *m, double *s) {
    for (idx_t r = 0; r < rows; r += LANES) {
        block_max(c + r * n, n, m + r);
        block_exp_sum<Store>(c + r * n, n, m + r, s + r);
    }
}

/* out = softmax of each row (out may be x); its 1 / s per block (deferred
 * to a loop over the tile, as the logs below, it measured 3 % slower) */
template <typename T> static CS_REDUCTION void tile_softmax(const T *x, T *out, idx_t rows, idx_t n) {
    T c[TILE_BLOCKS], m[LANES], inv[LANES];
    double s[LANES];
    tile_in(x, rows, n, c);
    for (idx_t r = 0; r < rows; r += LANES) {
        T *cb = c + r * n;
        block_max(cb, n, m);
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

/* out = log_softmax of each row, (x - m) - lse (out may be x) */
template <typename T> static CS_REDUCTION void tile_log_softmax(const T *x, T *out, idx_t rows, idx_t n) {
    T c[TILE_BLOCKS], m[TILE + LANES], lse[TILE + LANES];
    double s[TILE + LANES];
    idx_t padded = (rows + LANES - 1) / LANES * LANES;
    tile_in(x, rows, n, c);
    tile_blocks_max_exp_sum<false>(c, rows, n, m, s);
#pragma omp simd
    for (idx_t r = 0; r < padded; ++r) lse[r] = (T)log_ge1(s[r]);
    for (idx_t r = 0; r < rows; r += LANES) {
        T *cb = c + r * n;
        for (idx_t k = 0; k < n; ++k) {
#pragma omp simd
            for (idx_t l = 0; l < LANES; ++l)
                cb[k * LANES + l] = (cb[k * LANES + l] - m[r + l]) - lse[r + l];
        }
    }
    tile_out(c, rows, n, out);
}

/* out[r] = log(sum(exp(x_r))); rows whose max is +-inf: +-inf, or NaN if
 * the row holds one (rare: done row by row) */
template <typename T> static CS_REDUCTION void tile_logsumexp(const T *x, T *out, idx_t rows, idx_t n) {
    T c[TILE_BLOCKS], m[TILE + LANES], o[TILE + LANES];
    double s[TILE + LANES];
    int inf_max = 0;
    idx_t padded = (rows + LANES - 1) / LANES * LANES;
    tile_in(x, rows, n, c);
    tile_blocks_max_exp_sum<false>(c, rows, n, m, s);
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
        const CrossEntropyExtra *ex) {
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
        const CrossEntropyExtra *ex) {
    if (grad != NULL && beta != 0.0)
        return tile_cross_entropy_binary<true, Extra, true>(x, target, rows, ignore_index, w,
                                                            w_total, alpha, beta, loss, grad,
                                                            scale, ex);
    if (grad != NULL)
        return tile_cross_entropy_binary<true, Extra, false>(x, target, rows, ignore_index, w,
                                                             w_total, alpha, beta, loss, grad,
                                                             scale, ex);
    if (beta != 0.0)
        return tile_cross_entropy_binary<false, Extra, true>(x, target, rows, ignore_index, w,
                                                             w_total, alpha, beta, loss, grad,
                                                             scale, ex);
    return tile_cross_entropy_binary<false, Extra, false>(x, target, rows, ignore_index, w,
                                                          w_total, alpha, beta, loss, grad,
                                                          scale, ex);
}

template <bool Extra, typename T, typename L>
static inline double tile_cross_entropy_index_with(
        const T *x, const L *target, idx_t rows, idx_t n, idx_t ignore_index, const T *w,
        double w_total, double alpha, double beta, double *loss, T *grad, double scale,
        const CrossEntropyExtra *ex) {
    if (n == 2)  /* binary classification: the common short row */
        return tile_cross_entropy_binary_with<Extra>(x, target, rows, ignore_index, w, w_total,
                                                     alpha, beta, loss, grad, scale, ex);
    if (grad != NULL)
        return tile_cross_entropy_index_any<true, Extra>(x, target, rows, n, ignore_index, w,
                                                         w_total, alpha, beta, loss, grad, scale,
                                                         ex);
    return tile_cross_entropy_index_any<false, Extra>(x, target, rows, n, ignore_index, w,
                                                      w_total, alpha, beta, loss, grad, scale, ex);
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
        const CrossEntropyExtra *ex) {
    if (ex != NULL)
        return tile_cross_entropy_index_with<true>(x, target, rows, n, ignore_index, w, w_total,
                                                   alpha, beta, loss, grad, scale, ex);
    return tile_cross_entropy_index_with<false>(x, target, rows, n, ignore_index, w, w_total,
                                                alpha, beta, loss, grad, scale, ex);
}

}  // namespace csoftmax

#endif
