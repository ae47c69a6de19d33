/*
 * masked.hpp -- the row primitives of the masked functions (`where=`):
 * softmax, log_softmax, logsumexp and the two backward passes over the
 * entries of a row that a boolean mask keeps.
 *
 * (Over a single axis that is not the last, float32/float64 x is not moved:
 * see maskedstrided.hpp.)
 *
 * The mask is read where it lies: the Python layer passes the data pointer of
 * np.broadcast_to(where, x.shape) with its axes moved as x's, and how to find
 * a row's bytes in it (MaskRows): row i starts at base + row_off[i] (or
 * i * row_stride when the leading axes collapse into one stride) and column k
 * lies col_off[k] (or k * col_stride) bytes further.  A broadcast mask has
 * zero strides, so nothing of x's size is ever made of it.  Per row:
 *
 *   col_stride 1   the row's bytes are contiguous: read in place;
 *   col_stride 0   the mask is constant along the row: the row is computed as
 *                  unmasked (the same code as the unmasked kernels, the same
 *                  bits) or is entirely masked (0 / -inf, no arithmetic);
 *   otherwise      the row's bytes are gathered into a scratch row of the
 *                  calling thread (n bytes per thread, from the caller).
 * A row whose mask keeps a prefix of p entries (a padding mask) is computed as
 * unmasked over those p, the rest filled (kept_prefix).
 *
 * The arithmetic is rowops.hpp's with the mask as a select:
 *   m = max_k (kept_k ? x_k : -inf)
 *   e_k = exp_nonpositive(kept_k ? x_k - m : -inf)   (exp(-inf) = +0 exactly)
 * so an all-True row too long for the tiles of short rows (SHORT_ROW_BYTES
 * bytes or more, tiles.hpp) runs through the very
 * operations of the unmasked kernel (the same lanes, blocks and chunks) and
 * gives the same bits; shorter rows take the masked row code where the
 * unmasked kernels use their transposed tiles (tiles.hpp): the same values
 * within rounding.  A row is always
 * computed by one thread, by out-of-line code (masked_row), so results do not
 * depend on the thread count.
 *
 * Rows with no kept entry: softmax 0, log_softmax -inf, logsumexp -inf (the
 * "safe softmax" convention of PyTorch's fully padded attention rows).  Kept
 * entries follow the unmasked rules: a kept NaN or +inf, or kept entries that
 * are all -inf, make the kept outputs NaN; masked outputs stay 0 / -inf.
 * Gradients are 0 at masked entries.
 */
#ifndef CSOFTMAX_MASKED_HPP
#define CSOFTMAX_MASKED_HPP

#include "rowops.hpp"

namespace csoftmax {

/* Where a row's mask bytes lie (see above). */
struct MaskRows {
    const uint8_t *base;
    int64_t row_stride;
    const int64_t *row_off;   /* NULL: row i at i * row_stride */
    int64_t col_stride;
    const int64_t *col_off;   /* NULL: column k at k * col_stride */
    uint8_t *scratch;         /* n bytes per thread, for gathered rows */
    int64_t prefix;           /* every row's kept_prefix (one mask row for all
                                 rows: found once per call), or -2: per row */
};

enum {
    MASKED_SOFTMAX = 0,
    MASKED_LOG_SOFTMAX = 1,
    MASKED_LOGSUMEXP = 2,
    MASKED_SOFTMAX_BACKWARD = 3,
    MASKED_LOG_SOFTMAX_BACKWARD = 4,
};

/* The width below which masked rows are summed in column order (the rows of
 * one or two vectors; the unmasked kernels' tiles, tiles.hpp, take rows of
 * fewer than SHORT_ROW_BYTES bytes: float32 up to 63 columns). */
enum { MASKED_SHORT_ROW = 32 };

static inline int masked_thread_num(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* kept_k for an explicit mask row, or true for an all-kept row (All). */
template <bool All> static inline bool kept(const uint8_t *k, idx_t i) { return All || k[i] != 0; }

/* ---- reductions over the kept entries ----------------------------------- */

/* max over the kept entries (-inf if none; +0 for a zero max), as row_max:
 * the same lanes, so NaNs are skipped and the order does not matter. */
template <typename T> static inline T masked_row_max(const T *x, const uint8_t *k, idx_t n) {
    enum { L = 256 / (int)sizeof(T) };
    const T ninf = (T)-INFINITY;
    T m = ninf;
    if (n < L) {
#pragma omp simd reduction(max : m)
        for (idx_t j = 0; j < n; ++j) {
            T xv = x[j];
            T v = k[j] ? xv : ninf;
            m = v > m ? v : m;
        }
        return m + (T)0;
    }
    T acc[L];
    for (int l = 0; l < L; ++l) acc[l] = ninf;
    idx_t nb = n - n % L;
    for (idx_t b = 0; b < nb; b += L) {
        typename ExpFormat<T>::Int km[L];  /* widened first: see masked_chunk_exp_lanes */
        for (int l = 0; l < L; ++l) km[l] = k[b + l];
        for (int l = 0; l < L; ++l) {
            T xv = x[b + l];
            T v = km[l] != 0 ? xv : ninf;
            acc[l] = v > acc[l] ? v : acc[l];
        }
    }
    if (nb < n) {
        const T *y = x + n - L;
        const uint8_t *ky = k + n - L;
        for (int l = 0; l < L; ++l) {
            T yv = y[l];
            T v = ky[l] ? yv : ninf;
            acc[l] = v > acc[l] ? v : acc[l];
        }
    }
    m = lanes_max<L>(acc);
    return m + (T)0;
}

/* chunk_exp_lanes over the kept entries: e_k = exp(x_k - shift) where kept,
 * +0 elsewhere (with Store; e may be x), and their sum in the same lanes. */
template <bool Store, typename T>
static inline double masked_chunk_exp_lanes(const T *x, const uint8_t *k, T *e, idx_t n, T shift,
                                             const T *next) {
    const T ninf = (T)-INFINITY;
    const T lo = exp_clamp<T, !Store>();  /* a sum alone: Summand, as chunk_exp_lanes */
    double sd[SUM_LANES];
    lanes_zero(sd);
    idx_t nv = vector_part(n);
    for (idx_t k0 = 0; k0 < nv; k0 += SUM_BLOCK) {
        idx_t k1 = block_end(k0, nv);
        prefetch_columns(next, k0, k1 < nv ? k1 : n);  /* as in chunk_exp_lanes */
        T bs[SUM_LANES];
        lanes_zero(bs);
        /* the block's mask bytes widened to T's width first (in L1): the exp
         * loop is then of one width and vectorises at T's full width (mixed
         * with bytes GCC took 8 lanes, or widened through the stack) */
        typename ExpFormat<T>::Int km[SUM_BLOCK];
#pragma omp simd
        for (idx_t j = k0; j < k1; ++j) km[j - k0] = k[j];
        for (idx_t j = k0; j < k1; j += SUM_LANES) {
#pragma omp simd
            for (int l = 0; l < SUM_LANES; ++l) {
                T d = x[j + l] - shift;  /* loaded whatever the mask: a select, no masked load */
                T v = exp_nonpositive_as<!Store>(km[j - k0 + l] != 0 ? d : ninf, lo);
                if (Store) e[j + l] = v;
                bs[l] += v;
            }
        }
        lanes_widen_add(sd, bs);
    }
    if (nv < n) {
        T buf[EXP_TAIL];
        for (idx_t l = 0; l < EXP_TAIL; ++l) buf[l] = ninf;
        for (idx_t l = 0; l < n - nv; ++l) {
            T d = x[nv + l] - shift;
            buf[l] = k[nv + l] ? d : ninf;
        }
#pragma omp simd
        for (idx_t l = 0; l < EXP_TAIL; ++l) buf[l] = exp_nonpositive_as<!Store>(buf[l], lo);
        if (Store) tail_store(e + nv, n - nv, buf);
        lanes_widen_add(sd, buf);
    }
    return lanes_total(sd);
}

/* Rows narrower than MASKED_SHORT_ROW: the exponentials as one vector of
 * EXP_TAIL lanes (or two), summed in column order in double. */
template <bool Store, bool All, typename T>
static inline double masked_short_exp_sum(const T *x, const uint8_t *k, T *e, idx_t n, T shift) {
    const T ninf = (T)-INFINITY;
    const T lo = exp_clamp<T, !Store>();  /* a sum alone: Summand, as chunk_exp_lanes */
    T buf[MASKED_SHORT_ROW];
    for (idx_t l = 0; l < MASKED_SHORT_ROW; ++l) buf[l] = ninf;
    for (idx_t l = 0; l < n; ++l) {
        T d = x[l] - shift;
        buf[l] = kept<All>(k, l) ? d : ninf;
    }
#pragma omp simd
    for (idx_t l = 0; l < MASKED_SHORT_ROW; ++l) buf[l] = exp_nonpositive_as<!Store>(buf[l], lo);
    double s = 0.0;
    for (idx_t l = 0; l < n; ++l) s += (double)buf[l];
    if (Store)
        for (idx_t l = 0; l < n; ++l) e[l] = buf[l];
    return s;
}

/* sum of exp(x_k - shift) over the kept entries, e_k stored with Store: by
 * chunks added in chunk order (row_exp_store_sum's), or for short rows in
 * column order; All: exactly the unmasked kernels' code.  next (or NULL):
 * the next row, prefetched meanwhile (see chunk_exp_lanes). */
template <bool Store, bool All, typename T>
static inline double masked_exp_sum(const T *x, const uint8_t *k, T *e, idx_t n, T shift,
                                    const T *next) {
    if (n < MASKED_SHORT_ROW) return masked_short_exp_sum<Store, All>(x, k, e, n, shift);
    if (All) return Store ? row_exp_store_sum(x, e, n, shift, next) : row_exp_sum(x, n, shift, next);
    double s = 0.0;
    for (idx_t c0 = 0; c0 < n; c0 += CHUNK)
        s = add_chunk(s, masked_chunk_exp_lanes<Store>(x + c0, k + c0, Store ? e + c0 : e,
                                                        chunk_len(c0, n), shift,
                                                        offset_or_null(next, c0)), c0);
    vector_upper_clear();
    return s;
}

template <bool All, typename T> static inline T masked_max(const T *x, const uint8_t *k, idx_t n) {
    return All ? row_max(x, n) : masked_row_max(x, k, n);
}

/* ---- one row ------------------------------------------------------------- */

template <bool All, typename T>
static inline void masked_softmax_row(const T *x, const uint8_t *k, T *out, idx_t n, const T *next) {
    T m = masked_max<All>(x, k, n);
    double s = masked_exp_sum<true, All>(x, k, out, n, m, next);
    row_scale(out, n, (T)(1.0 / s));
    if (!All && !(s >= 1.0)) {
        /* s >= 1 (exp(0) of the max) unless the row keeps nothing (s = 0) or
         * keeps NaN, +inf or only -inf (s NaN): kept outputs NaN, masked 0 */
        for (idx_t j = 0; j < n; ++j) out[j] = k[j] && s != 0.0 ? out[j] : (T)0;
    }
}

template <bool All, typename T>
static inline void masked_log_softmax_row(const T *x, const uint8_t *k, T *out, idx_t n,
                                          const T *next) {
    T m = masked_max<All>(x, k, n);
    T lse = (T)log(masked_exp_sum<false, All>(x, k, (T *)NULL, n, m, next));
    if (All) {
        row_log_softmax_from(x, out, n, m, lse);
        return;
    }
    const T ninf = (T)-INFINITY;
#pragma omp simd
    for (idx_t j = 0; j < n; ++j) {
        T v = (x[j] - m) - lse;
        out[j] = k[j] ? v : ninf;
    }
}

template <bool All, typename T>
static inline T masked_logsumexp_row(const T *x, const uint8_t *k, idx_t n, const T *next) {
    T m = masked_max<All>(x, k, n);
    double s = masked_exp_sum<false, All>(x, k, (T *)NULL, n, m, next);
    if (m == (T)INFINITY || m == (T)-INFINITY) {
        /* nothing kept or only -inf: -inf; +inf: +inf; unless a kept NaN */
        for (idx_t j = 0; j < n; ++j)
            if (kept<All>(k, j) && x[j] != x[j]) return (T)NAN;
        return m;
    }
    return (T)((double)m + log(s));
}

/* The backward rows: gnext, anext (or NULL) the next rows of g and a,
 * prefetched by the rows that keep all their entries (see
 * row_softmax_backward). */
template <bool All, typename T>
static inline void masked_softmax_backward_row(const T *g, const T *a, const uint8_t *k, T *out,
                                               idx_t n, const T *gnext, const T *anext) {
    if (All) {
        row_softmax_backward(g, a, out, n, (T)row_dot(g, a, n), gnext, anext);
        return;
    }
    double dot = 0.0;
#pragma omp simd reduction(+ : dot)
    for (idx_t j = 0; j < n; ++j) {
        double p = (double)g[j] * (double)a[j];
        dot += k[j] ? p : 0.0;
    }
    T d = (T)dot;
#pragma omp simd
    for (idx_t j = 0; j < n; ++j) {
        T v = a[j] * (g[j] - d);
        out[j] = k[j] ? v : (T)0;
    }
}

template <bool All, typename T>
static inline void masked_log_softmax_backward_row(const T *g, const T *o, const uint8_t *k,
                                                   T *out, idx_t n, const T *gnext,
                                                   const T *onext) {
    if (All) {
        row_log_softmax_backward(g, o, out, n, (T)row_sum(g, n), gnext, onext);
        return;
    }
    double gs = 0.0;
#pragma omp simd reduction(+ : gs)
    for (idx_t j = 0; j < n; ++j) {
        double v = (double)g[j];
        gs += k[j] ? v : 0.0;
    }
    T gsum = (T)gs;
    idx_t nv = vector_part(n);
#pragma omp simd
    for (idx_t j = 0; j < nv; ++j) {
        T v = g[j] - exp_poly(o[j]) * gsum;
        out[j] = k[j] ? v : (T)0;
    }
    if (nv < n) {
        T buf[EXP_TAIL];
        exp_tail<false>(o + nv, n - nv, (T)0, buf);
        for (idx_t l = 0; l < n - nv; ++l) {
            T v = g[nv + l] - buf[l] * gsum;
            out[nv + l] = k[nv + l] ? v : (T)0;
        }
    }
}

/* ---- a row of a call ------------------------------------------------------ */

/* The mask bytes of row i: a pointer to n bytes (gathered into the thread's
 * scratch row if need be) with *uniform = -1, or the row's one value (0 or 1)
 * in *uniform when the mask is constant along the row. */
static inline const uint8_t *mask_row(const MaskRows *mk, idx_t i, idx_t n, int *uniform) {
    const uint8_t *p = mk->base + (mk->row_off != NULL ? mk->row_off[i] : (int64_t)i * mk->row_stride);
    *uniform = -1;
    if (mk->col_off == NULL && mk->col_stride == 1) return p;
    if (mk->col_off == NULL && mk->col_stride == 0) {
        *uniform = p[0] != 0;
        return p;
    }
    uint8_t *s = mk->scratch + (idx_t)masked_thread_num() * n;
    if (mk->col_off != NULL)
        for (idx_t j = 0; j < n; ++j) s[j] = p[mk->col_off[j]];
    else
        for (idx_t j = 0; j < n; ++j) s[j] = p[(int64_t)j * mk->col_stride];
    return s;
}

/* p if the mask row is p kept entries followed by n - p masked ones (a
 * padding mask), else -1: p is the first zero byte (memchr, vectorised by
 * the C library), then the rest is read 8 bytes at a time up to its first
 * kept byte (at once, in a random mask). */
static inline idx_t kept_prefix(const uint8_t *k, idx_t n) {
    const void *z = memchr(k, 0, (size_t)n);
    idx_t p = z == NULL ? n : (idx_t)((const uint8_t *)z - k), j = p;
    for (; j + 8 <= n; j += 8) {
        uint64_t v;
        memcpy(&v, k + j, sizeof v);
        if (v != 0) return -1;
    }
    for (; j < n; ++j)
        if (k[j] != 0) return -1;
    return p;
}

template <bool All, typename T>
static inline void masked_op_row(int op, const T *x, const T *g, const uint8_t *k, T *out, idx_t n,
                                 const T *next, const T *gnext) {
    switch (op) {
    case MASKED_SOFTMAX: masked_softmax_row<All>(x, k, out, n, next); break;
    case MASKED_LOG_SOFTMAX: masked_log_softmax_row<All>(x, k, out, n, next); break;
    case MASKED_LOGSUMEXP: out[0] = masked_logsumexp_row<All>(x, k, n, next); break;
    case MASKED_SOFTMAX_BACKWARD:
        masked_softmax_backward_row<All>(g, x, k, out, n, gnext, next);
        break;
    default: masked_log_softmax_backward_row<All>(g, x, k, out, n, gnext, next); break;
    }
}

/* Row i of op (n >= 1 columns; its mask row i of mk): xr the input row (the
 * forward output for the backward ops), gr the upstream gradient's row
 * (backward ops, else NULL), o the result (one value for logsumexp; may be
 * xr or gr), next and gnext the next rows of x and g or NULL (prefetched by
 * the forward ops' exp pass, and by the backward ops' writing pass).  Out of
 * line: the serial loop and the OpenMP loop run the same code, and so do
 * the float32 rows of 16-bit arrays (src/half.pxi, half_masked_rows). */
template <typename T>
static CS_REDUCTION void masked_row(int op, const T *xr, const T *gr, T *o, idx_t n,
                                   const MaskRows *mk, idx_t i, const T *next,
                                   const T *gnext) {
    int uniform;
    const uint8_t *k = mask_row(mk, i, n, &uniform);
    /* a row that keeps its first p entries (padding): the unmasked code on
     * them, and the masked rest filled (-inf for log_softmax, else 0), with
     * no select or mask read per element (1.24x the unmasked softmax's time
     * with the masked code at 8192x1024, the last 10 % masked) */
    idx_t p = uniform >= 0 ? -1 : mk->prefix != -2 ? (idx_t)mk->prefix : kept_prefix(k, n);
    if (p == n) uniform = 1;
    if (p == 0) uniform = 0;
    if (0 < p && p < n) {
        masked_op_row<true>(op, xr, gr, k, o, p, next, gnext);
        if (op == MASKED_LOG_SOFTMAX)
            row_fill(o + p, n - p, (T)-INFINITY);
        else if (op != MASKED_LOGSUMEXP)
            row_zero(o + p, n - p);
    } else if (uniform == 1) {
        masked_op_row<true>(op, xr, gr, k, o, n, next, gnext);
    } else if (uniform == 0) {  /* nothing kept */
        if (op == MASKED_LOGSUMEXP)
            o[0] = (T)-INFINITY;
        else if (op == MASKED_LOG_SOFTMAX)
            row_fill(o, n, (T)-INFINITY);
        else
            row_zero(o, n);
    } else {
        masked_op_row<false>(op, xr, gr, k, o, n, next, gnext);
    }
    vector_upper_clear();
}

/* Row i of op over whole arrays: x and g (the backward functions' grad_output,
 * else NULL) n_rows x n, out like them (one value a row for logsumexp). */
template <typename T>
static inline void masked_unit(int op, const T *x, const T *g, T *out, idx_t n,
                               const MaskRows *mk, idx_t i, const T *next) {
    const T *gr = g != NULL ? g + i * n : g;
    const T *gnext = g != NULL && next != NULL ? gr + n : (const T *)NULL;
    masked_row(op, x + i * n, gr, op == MASKED_LOGSUMEXP ? out + i : out + i * n, n, mk, i,
               next, gnext);
}

}  // namespace csoftmax

#endif
