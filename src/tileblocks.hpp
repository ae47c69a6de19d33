/*
 * tileblocks.hpp -- a tile of short rows in and out of its transposed
 * blocks: the tile and block sizes, the 4x4 (and 2- and 3-column) transposes,
 * and what is computed in their registers on the way (each row's maximum and
 * target logit in, softmax's products, log_softmax's shifts and the
 * cross-entropy gradient out).  Split from tiles.hpp, whose kernels work on
 * the blocks.
 */
#ifndef CSOFTMAX_TILEBLOCKS_HPP
#define CSOFTMAX_TILEBLOCKS_HPP

#include "rowops.hpp"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace csoftmax {

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

/* What a tile's rows get on their way out of the blocks (tile_out_map):
 * each row r's values v_k become
 *   ROWS_SCALE   v a_r                        (softmax: a = 1 / s)
 *   ROWS_SHIFT   (v - a_r) - b_r              (log_softmax: a = m, b = lse)
 *   ROWS_GRAD    v a_r, less b_r at k == t_r  (cross-entropy: a = c1, b = ct)
 * each product rounded before the subtraction, on every path alike (the
 * product of ROWS_GRAD has two uses, the select one of them: GCC does not
 * fuse it into an FMA). */
enum { ROWS_SCALE = 0, ROWS_SHIFT = 1, ROWS_GRAD = 2 };

template <int Op, typename T> static inline T row_value(T v, T a, T b, int target) {
    if (Op == ROWS_SCALE) return v * a;
    if (Op == ROWS_SHIFT) return (v - a) - b;
    T p = v * a;
    return target ? p - b : p;
}

#if defined(__AVX2__)
enum { HAVE_TRANSPOSE4 = 1 };
/* The 256-bit operations of Transpose4, ColumnStats and RowColumns, per
 * element type: one vector of a block column's G rows and of their int32
 * labels (widened to 64 bits for double).  First those that differ only by
 * their suffix (ps, pd), one definition for both: */
#define CS_LANES256_OPS(T, VECTOR, SFX)                                                      \
    typedef VECTOR V;                                                                        \
    static inline V load(const T *p) { return _mm256_loadu_##SFX(p); }                      \
    static inline void store(T *p, V v) { _mm256_storeu_##SFX(p, v); }                      \
    static inline V fill(T v) { return _mm256_set1_##SFX(v); }                               \
    static inline V max(V a, V b) { return _mm256_max_##SFX(a, b); }                        \
    static inline V mul(V a, V b) { return _mm256_mul_##SFX(a, b); }                        \
    static inline V sub(V a, V b) { return _mm256_sub_##SFX(a, b); }                        \
    static inline V blend(V a, V b, __m256i mask) {                                          \
        return _mm256_blendv_##SFX(a, b, _mm256_castsi256_##SFX(mask));                      \
    }
/* ... and the labels: G int32 (widened to 64 bits for double), less k, == j */
template <typename T> struct Lanes256Ops;
template <> struct Lanes256Ops<float> {
    CS_LANES256_OPS(float, __m256, ps)
    static inline __m256i labels(const int32_t *l) { return _mm256_loadu_si256((const __m256i *)l); }
    static inline __m256i less(__m256i l, idx_t k) { return _mm256_sub_epi32(l, _mm256_set1_epi32((int)k)); }
    static inline __m256i equals(__m256i l, int j) { return _mm256_cmpeq_epi32(l, _mm256_set1_epi32(j)); }
};
template <> struct Lanes256Ops<double> {
    CS_LANES256_OPS(double, __m256d, pd)
    static inline __m256i labels(const int32_t *l) {
        return _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)l));
    }
    static inline __m256i less(__m256i l, idx_t k) { return _mm256_sub_epi64(l, _mm256_set1_epi64x(k)); }
    static inline __m256i equals(__m256i l, int j) { return _mm256_cmpeq_epi64(l, _mm256_set1_epi64x(j)); }
};
#undef CS_LANES256_OPS

template <typename T> struct Lanes256 : Lanes256Ops<T> {
    typedef Lanes256Ops<T> O;
    typedef typename O::V V;
    /* columns 0 .. 3 of a block (column stride LANES) */
    static inline void store4(T *c, V a, V b, V cc, V d) {
        O::store(c, a), O::store(c + LANES, b), O::store(c + 2 * LANES, cc), O::store(c + 3 * LANES, d);
    }
    static inline void load4(const T *c, V &a, V &b, V &cc, V &d) {
        a = O::load(c), b = O::load(c + LANES), cc = O::load(c + 2 * LANES), d = O::load(c + 3 * LANES);
    }
    /* b in the lanes where lk == j, a elsewhere */
    static inline V select(V a, V b, __m256i lk, int j) { return O::blend(a, b, O::equals(lk, j)); }
};

/* 4 columns of G consecutive rows (row stride n) to and from 4 columns of a
 * transposed block (lanes l .. l + G - 1 at c, column stride LANES): GCC
 * does not vectorise a strided copy well (4 or 5 instructions an element
 * for the scalar loop), so on AVX2 it is a 4x4 transpose in registers.  On
 * the way in, stats.add4 sees the 4 columns (ColumnStats); on the way out,
 * map.apply4 changes them (RowColumns). */
template <typename T> struct Transpose4;
template <> struct Transpose4<float> {
    enum { G = 8 };  /* rows l and l + 4 share a vector: a 4x4 transpose in each 128-bit half */
    static inline void shuffle(__m256 &a, __m256 &b, __m256 &c, __m256 &d) {
        __m256 t0 = _mm256_unpacklo_ps(a, b), t1 = _mm256_unpackhi_ps(a, b);
        __m256 t2 = _mm256_unpacklo_ps(c, d), t3 = _mm256_unpackhi_ps(c, d);
        a = _mm256_shuffle_ps(t0, t2, 0x44), b = _mm256_shuffle_ps(t0, t2, 0xee);
        c = _mm256_shuffle_ps(t1, t3, 0x44), d = _mm256_shuffle_ps(t1, t3, 0xee);
    }
    static inline __m256 rows2(const float *x, idx_t n) {
        return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(x)), _mm_loadu_ps(x + 4 * n), 1);
    }
    template <typename S> static inline void in(const float *x, idx_t n, float *c, idx_t k, S &stats) {
        __m256 a = rows2(x, n), b = rows2(x + n, n), cc = rows2(x + 2 * n, n), d = rows2(x + 3 * n, n);
        shuffle(a, b, cc, d);
        Lanes256<float>::store4(c, a, b, cc, d);
        stats.add4(a, b, cc, d, k);
    }
    template <typename S> static inline void out(const float *c, idx_t n, float *x, idx_t k, const S &map) {
        __m256 v[4];
        Lanes256<float>::load4(c, v[0], v[1], v[2], v[3]);
        map.apply4(v[0], v[1], v[2], v[3], k);
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
        a = _mm256_permute2f128_pd(t0, t2, 0x20), b = _mm256_permute2f128_pd(t1, t3, 0x20);
        c = _mm256_permute2f128_pd(t0, t2, 0x31), d = _mm256_permute2f128_pd(t1, t3, 0x31);
    }
    template <typename S> static inline void in(const double *x, idx_t n, double *c, idx_t k, S &stats) {
        __m256d a = _mm256_loadu_pd(x), b = _mm256_loadu_pd(x + n);
        __m256d cc = _mm256_loadu_pd(x + 2 * n), d = _mm256_loadu_pd(x + 3 * n);
        shuffle(a, b, cc, d);
        Lanes256<double>::store4(c, a, b, cc, d);
        stats.add4(a, b, cc, d, k);
    }
    template <typename S> static inline void out(const double *c, idx_t n, double *x, idx_t k, const S &map) {
        __m256d a, b, cc, d;
        Lanes256<double>::load4(c, a, b, cc, d);
        map.apply4(a, b, cc, d, k);
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

/* The statistics of the G rows that Transpose4::in transposes, taken from its
 * registers as each column goes by (no second walk of the block): the row
 * maxima m and, Select, the target's logit xv (the column k equal to the
 * row's label; -1 and -2 select nothing).  Per lane, m = v > m ? v : m (what
 * vmaxps(v, m) computes, NaN skipped) and the select, as block_max_select
 * does in the same column order, so the same bits; the last columns of a
 * row whose width is not a multiple of 4 go by twice (see tile_in_groups),
 * which changes neither.  The labels less k are compared with 0 .. 3: one
 * broadcast for four columns.  AVX2 loss of 65536x10 float32 logits: the
 * tile's separate max and select pass was 1.1 instructions a logit. */
template <typename T, bool Select> struct ColumnStats {
    typedef Lanes256<T> L;
    typedef typename L::V V;
    V m, xv;
    __m256i lab;
    explicit ColumnStats(const int32_t *l)
        : m(L::fill((T)-INFINITY)), xv(L::fill((T)0)), lab(Select ? L::labels(l) : _mm256_setzero_si256()) {}
    inline void add4(V a, V b, V c, V d, idx_t k) {
        m = L::max(d, L::max(c, L::max(b, L::max(a, m))));
        if (!Select) return;
        __m256i lk = L::less(lab, k);
        xv = L::select(L::select(L::select(L::select(xv, a, lk, 0), b, lk, 1), c, lk, 2), d, lk, 3);
    }
    inline void store(T *mo, T *xo, idx_t r0) const {
        L::store(mo + r0, m);
        if (Select) L::store(xo + r0, xv);
    }
};

/* RowColumns: row_value of the G rows that Transpose4::out writes, applied
 * to its registers as they go (no pass over the block of its own). */
template <int Op, typename T> struct RowColumns {
    typedef Lanes256<T> L;
    typedef typename L::V V;
    V a, b;
    __m256i lab;
    RowColumns(const int32_t *l, const T *a_, const T *b_)
        : a(L::load(a_)), b(Op != ROWS_SCALE ? L::load(b_) : L::fill((T)0)),
          lab(Op == ROWS_GRAD ? L::labels(l) : _mm256_setzero_si256()) {}
    inline V value(V v, __m256i lk, int j) const {
        if (Op == ROWS_SCALE) return L::mul(v, a);
        if (Op == ROWS_SHIFT) return L::sub(L::sub(v, a), b);
        V p = L::mul(v, a);
        return L::select(p, L::sub(p, b), lk, j);
    }
    /* columns k .. k + 3 */
    inline void apply4(V &v0, V &v1, V &v2, V &v3, idx_t k) const {
        __m256i lk = Op == ROWS_GRAD ? L::less(lab, k) : lab;
        v0 = value(v0, lk, 0), v1 = value(v1, lk, 1), v2 = value(v2, lk, 2), v3 = value(v3, lk, 3);
    }
};
#else
enum { HAVE_TRANSPOSE4 = 0 };
template <typename T> struct Transpose4 {
    enum { G = 1 };
    template <typename S> static inline void in(const T *, idx_t, T *, idx_t, S &) {}
    template <typename S> static inline void out(const T *, idx_t, T *, idx_t, const S &) {}
};
template <typename T, bool Select> struct ColumnStats {
    explicit ColumnStats(const int32_t *) {}
    inline void store(T *, T *, idx_t) const {}
};
template <int Op, typename T> struct RowColumns {
    RowColumns(const int32_t *, const T *, const T *) {}
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

/* tile_in's statistics visitor: none */
struct NoColumnStats {
    explicit NoColumnStats(const int32_t *) {}
    template <typename V> inline void add4(V, V, V, V, idx_t) {}
    template <typename T> inline void store(T *, T *, idx_t) const {}
};

/* tile_in's groups of G rows, 4 columns at a time (the last 4 overlap the
 * previous ones for n not a multiple of 4: the same values again), n >= 4;
 * each group's statistics (S: ColumnStats or NoColumnStats, labels lab, into
 * m and xv at the group's rows).  Returns the rows done. */
template <typename S, typename T>
static inline idx_t tile_in_groups(const T *x, idx_t rows, idx_t n, T *c, const int32_t *lab, T *m,
                                   T *xv) {
    typedef Transpose4<T> TR;
    idx_t r0 = 0;
    /* column k of the G rows at r0 goes to cr + k LANES (tile_at) */
    for (; r0 + TR::G <= rows; r0 += TR::G) {
        const T *xr = x + r0 * n;
        T *cr = c + tile_at(r0, 0, n);
        S stats(lab != NULL ? lab + r0 : lab);
        idx_t k = 0;
        for (; k + 4 <= n; k += 4) TR::in(xr + k, n, cr + k * LANES, k, stats);
        if (k < n) TR::in(xr + (n - 4), n, cr + (n - 4) * LANES, n - 4, stats);
        stats.store(m, xv, r0);
    }
    return r0;
}

/* tile_in's rows from r0 on, element by element, and the padding lanes */
template <typename T> static inline void tile_in_rest(const T *x, idx_t r0, idx_t rows, idx_t n, T *c) {
    for (idx_t r = r0; r < rows; ++r)
        for (idx_t k = 0; k < n; ++k) c[tile_at(r, k, n)] = x[r * n + k];
    /* the padding, lanes l0 .. LANES - 1 of the last block: a select over
     * each column's lanes, which vectorises (element by element, a one-row
     * tile's 15 padding lanes were most of the way in of a 1x10 softmax) */
    const idx_t l0 = rows % LANES;
    if (l0 == 0) return;
    T *block = c + tile_at(rows - l0, 0, n);
    for (idx_t k = 0; k < n; ++k) {
        T *ck = block + k * LANES;
#pragma omp simd
        for (idx_t l = 0; l < LANES; ++l) ck[l] = l < l0 ? ck[l] : (T)0;
    }
}

/* A tile's rows into its transposed blocks, padding lanes 0.  G rows at a
 * time, 4 columns at a time where Transpose4 is available and n >= 4 (see
 * tile_in_groups); the rest element by element.  The whole tile is copied
 * before any block is read: a vector load of what scalar stores wrote a
 * moment before waits for them to reach the cache (no store forwarding). */
template <typename T> static inline void tile_in(const T *x, idx_t rows, idx_t n, T *c) {
    idx_t r0 = 0;
    if (HAVE_TRANSPOSE4 && n == 2) r0 = tile_narrow<Transpose2<T>, false>(x, rows, c);
    if (HAVE_TRANSPOSE4 && n == 3) r0 = tile_narrow<Transpose3<T>, false>(x, rows, c);
    if (HAVE_TRANSPOSE4 && n >= 4)
        r0 = tile_in_groups<NoColumnStats>(x, rows, n, c, (const int32_t *)NULL, (T *)NULL, (T *)NULL);
    tile_in_rest(x, r0, rows, n, c);
}

/* tile_out's visitor: no change on the way */
struct NoColumnMap {
    typedef NoColumnMap Group;
    inline NoColumnMap at(idx_t) const { return *this; }
    template <typename V> inline void apply4(V &, V &, V &, V &, idx_t) const {}
};

/* tile_out's groups of G rows, 4 columns at a time (as tile_in_groups),
 * n >= 4, each group's columns mapped by map.at(r0) on the way (see
 * RowColumns).  Returns the rows done. */
template <typename M, typename T>
static inline idx_t tile_out_groups(const T *c, idx_t rows, idx_t n, T *out, const M &map) {
    typedef Transpose4<T> TR;
    idx_t r0 = 0;
    for (; r0 + TR::G <= rows; r0 += TR::G) {
        T *xr = out + r0 * n;
        const T *cr = c + tile_at(r0, 0, n);
        const typename M::Group group = map.at(r0);
        idx_t k = 0;
        for (; k + 4 <= n; k += 4) TR::out(cr + k * LANES, n, xr + k, k, group);
        if (k < n) TR::out(cr + (n - 4) * LANES, n, xr + (n - 4), n - 4, group);
    }
    return r0;
}

template <typename T> static inline void tile_out(const T *c, idx_t rows, idx_t n, T *out) {
    idx_t r0 = 0;
    if (HAVE_TRANSPOSE4 && n == 2) r0 = tile_narrow<Transpose2<T>, true>(c, rows, out);
    if (HAVE_TRANSPOSE4 && n == 3) r0 = tile_narrow<Transpose3<T>, true>(c, rows, out);
    if (HAVE_TRANSPOSE4 && n >= 4) r0 = tile_out_groups(c, rows, n, out, NoColumnMap());
    for (idx_t r = r0; r < rows; ++r)
        for (idx_t k = 0; k < n; ++k) out[r * n + k] = c[tile_at(r, k, n)];
}

/* The per-row operands of row_value for tile_out_groups */
template <int Op, typename T> struct RowMap {
    typedef RowColumns<Op, T> Group;
    const int32_t *lab;
    const T *a, *b;
    inline Group at(idx_t r0) const {
        return Group(Op == ROWS_GRAD ? lab + r0 : lab, a + r0, Op != ROWS_SCALE ? b + r0 : b);
    }
};

/* out = row_value<Op> of a tile's values in its blocks c (row-major; out may
 * be the tile's input): with Transpose4 (n >= 4) on the way out of the
 * blocks (RowColumns), the rows after the last group element by element;
 * otherwise in place in c, a block at a time, then tile_out.  a and b (and
 * lab, ROWS_GRAD) per padded row; b unused by ROWS_SCALE, lab but by
 * ROWS_GRAD.  The same arithmetic either way.  AVX2, 65536x10 float32
 * logits: the separate pass over the blocks was 1.1 instructions a logit of
 * the loss + gradient. */
template <int Op, typename T>
static inline void tile_out_map(T *c, idx_t rows, idx_t n, const int32_t *lab, const T *a, const T *b,
                                T *out) {
    if (HAVE_TRANSPOSE4 && n >= 4) {
        const RowMap<Op, T> map = {lab, a, b};
        idx_t r0 = tile_out_groups(c, rows, n, out, map);
        for (idx_t r = r0; r < rows; ++r)
            for (idx_t k = 0; k < n; ++k)
                out[r * n + k] = row_value<Op>(c[tile_at(r, k, n)], a[r], Op != ROWS_SCALE ? b[r] : (T)0,
                                               Op == ROWS_GRAD && lab[r] == (int32_t)k);
        return;
    }
    for (idx_t r = 0; r < rows; r += LANES) {
        T *cb = c + r * n;
        T ab[LANES], bb[LANES];        /* local: no aliasing with c, so kept in registers */
        int32_t lb[LANES];
#pragma omp simd
        for (idx_t l = 0; l < LANES; ++l) {
            ab[l] = a[r + l];
            bb[l] = Op != ROWS_SCALE ? b[r + l] : (T)0;
            lb[l] = Op == ROWS_GRAD ? lab[r + l] : -1;
        }
        for (idx_t k = 0; k < n; ++k) {
#pragma omp simd
            for (idx_t l = 0; l < LANES; ++l)
                cb[k * LANES + l] = row_value<Op>(cb[k * LANES + l], ab[l], bb[l], lb[l] == (int32_t)k);
        }
    }
    tile_out(c, rows, n, out);
}

/* m[l] = max of lane l's row (-inf for n == 0; NaN is skipped here and
 * caught by x - m later, as in row_max) */
template <bool Select, typename T>
static inline void block_max_select(const T *c, idx_t n, const int32_t *lab, T *m, T *xv) {
    /* local: no aliasing with c, so kept in registers (through m, each column
     * waited on the previous column's store: float64 log_softmax of 100000x3,
     * AVX-512, one thread, 1.17x the time) */
    T mb[LANES], xb[LANES];
#pragma omp simd
    for (idx_t l = 0; l < LANES; ++l) mb[l] = (T)-INFINITY, xb[l] = (T)0;
    for (idx_t k = 0; k < n; ++k) {
        const T *ck = c + k * LANES;
#pragma omp simd
        for (idx_t l = 0; l < LANES; ++l) {
            T v = ck[l];
            mb[l] = v > mb[l] ? v : mb[l];
            if (Select) xb[l] = lab[l] == (int32_t)k ? v : xb[l];
        }
    }
#pragma omp simd
    for (idx_t l = 0; l < LANES; ++l) {
        m[l] = mb[l];
        if (Select) xv[l] = xb[l];
    }
}

/* A tile's rows into its transposed blocks (tile_in) and each row's
 * statistics (see ColumnStats): the max m and, Select, the target's logit xv
 * of each row and padding row (lab: the labels of the padded rows, -1 in
 * the padding).  With Transpose4 (n >= 4) from the transpose's registers;
 * otherwise a second walk of each block. */
template <bool Select, typename T>
static inline void tile_in_stats(const T *x, idx_t rows, idx_t n, T *c, const int32_t *lab, T *m, T *xv) {
    if (!HAVE_TRANSPOSE4 || n < 4) {
        tile_in(x, rows, n, c);
        for (idx_t r = 0; r < rows; r += LANES)
            block_max_select<Select>(c + r * n, n, Select ? lab + r : lab, m + r, Select ? xv + r : xv);
        return;
    }
    idx_t r0 = tile_in_groups<ColumnStats<T, Select> >(x, rows, n, c, lab, m, xv);
    tile_in_rest(x, r0, rows, n, c);
    for (idx_t r = r0; r < rows; ++r) {
        T mr = (T)-INFINITY, xr = (T)0;
        for (idx_t k = 0; k < n; ++k) {
            T v = x[r * n + k];
            mr = v > mr ? v : mr;
            if (Select && lab[r] == (int32_t)k) xr = v;
        }
        m[r] = mr;
        if (Select) xv[r] = xr;
    }
    for (idx_t r = rows; r % LANES != 0; ++r) {   /* padding rows of zeros, label -1 */
        m[r] = (T)0;
        if (Select) xv[r] = (T)0;
    }
}

}  // namespace csoftmax

#endif
