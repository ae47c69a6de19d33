/*
 * softcap.hpp -- the logit soft cap (Gemma 2: x -> cap tanh(x / cap)) on the
 * paths that compute a block of rows at a time: tiles of short rows.  Each
 * caps what it reads into a bounded scratch (a tile: TILE elements on the
 * thread's stack), runs the plain kernel on it, and takes the gradient back
 * through the cap from that scratch.  No copy of the whole input is made.
 *
 * Every path caps with row_softcap and applies the chain factor with
 * row_softcap_grad (rowops.hpp, out of line: one compiled copy), so a logit
 * gets the same capped value, and its gradient the same factor, on every path
 * and at every thread count.
 */
#ifndef CSOFTMAX_SOFTCAP_HPP
#define CSOFTMAX_SOFTCAP_HPP

#include "tiles.hpp"

namespace csoftmax {

/* The cross-entropy gradient of a soft-capped row (or chunk) with class
 * indices from its exponentials e (in g), in one pass:
 *   g_k = ((e_k c1 - c2 w_k) - [k == t] ct) (1 - (c_k / cap)^2)
 * (w == NULL: ones; c the capped logits; t outside [0, n): no label here).
 * The rows given here are computed ones (a skipped row is zeroed apart), so
 * unlike row_softcap_grad no zero is kept from a NaN logit's factor: a NaN
 * logit makes its e_k NaN anyway; without that select the loop is two
 * instructions a vector shorter.
 * Out of line: whole rows and the chunks of split rows get the same bits. */
template <typename T>
static CS_REDUCTION void row_grad_softcap(T *g, const T *c, const T *w, idx_t n, T c1, T c2,
                                          idx_t t, T ct, T cap) {
    const T inv = (T)1 / cap;
    if (!(inv < (T)INFINITY)) {        /* a subnormal cap: the separate passes */
        if (w == NULL)
            for (idx_t k = 0; k < n; ++k) g[k] = g[k] * c1 - c2;
        else
            for (idx_t k = 0; k < n; ++k) g[k] = g[k] * c1 - c2 * w[k];
        if (0 <= t && t < n) g[t] = g[t] - ct;
        row_softcap_grad(g, c, n, cap);
        return;
    }
    /* the label's element is redone after the loop, from its exponential: a
     * compare of 64-bit indices in the loop cost AVX2 a third of the pass */
    const bool has_t = 0 <= t && t < n;
    const T et = has_t ? g[t] : (T)0;
    if (w == NULL) {
#pragma omp simd
        for (idx_t k = 0; k < n; ++k) {
            T v = g[k] * c1 - c2;
            T u = c[k] * inv;
            g[k] = v * ((T)1 - u * u);
        }
    } else {
#pragma omp simd
        for (idx_t k = 0; k < n; ++k) {
            T v = g[k] * c1 - c2 * w[k];
            T u = c[k] * inv;
            g[k] = v * ((T)1 - u * u);
        }
    }
    if (has_t) {
        T v = (et * c1 - c2 * (w == NULL ? (T)1 : w[t])) - ct;
        T u = c[t] * inv;
        g[t] = v * ((T)1 - u * u);
    }
    vector_upper_clear();
}

/* tile_cross_entropy_index on the soft-capped rows of a tile (rows * n <=
 * TILE): the capped tile in c (grad may be x), the gradient times the chain
 * factor; kept (or NULL) as there. */
template <typename T, typename L>
static CS_REDUCTION double tile_cross_entropy_index_capped(
        const T *x, const L *target, idx_t rows, idx_t n, idx_t ignore_index, const T *w,
        double w_total, double alpha, double beta, double *loss, T *grad, double scale,
        const CrossEntropyExtra *ex, T cap, idx_t *kept) {
    T c[TILE];
    row_softcap(x, c, rows * n, cap);
    double total = tile_cross_entropy_index(c, target, rows, n, ignore_index, w, w_total,
                                            alpha, beta, loss, grad, scale, ex, kept);
    if (grad != NULL) row_softcap_grad(grad, c, rows * n, cap);
    return total;
}

}  // namespace csoftmax

#endif
