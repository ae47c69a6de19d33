/*
 * tilesbackward.hpp -- softmax_backward and log_softmax_backward of short
 * rows (fewer than SHORT_ROW_BYTES bytes), a tile of rows at a time, on the
 * transposed blocks of tiles.hpp.
 */
#ifndef CSOFTMAX_TILESBACKWARD_HPP
#define CSOFTMAX_TILESBACKWARD_HPP

#include "tiles.hpp"

namespace csoftmax {

/* softmax_backward's rows of fewer bytes go by tiles: float32 up to 31
 * columns, float64 up to 15 (log_softmax_backward's: all short rows,
 * SHORT_ROW_BYTES).  Measured (AMD Zen 4, AVX2 and AVX-512 kernels, 2^20
 * elements, one thread, tiles against rows): float32 rows of 2-16 columns
 * 0.05-0.87x the time; of 32-63 columns softmax_backward 1.03-1.37x (its row
 * is a dot product and one pass, cheaper than the tile's transposes),
 * log_softmax_backward 0.4-0.7x where the row has an exp tail (n not a
 * multiple of 16), 0.93-1.31x where it has none (32, 48 columns). */
enum { SOFTMAX_BACKWARD_TILE_BYTES = 128 };

/* The gradient through softmax (Log: log_softmax) of a tile of short rows:
 * out = a (g - <g, a>), or out = g - exp(a) sum(g) where a holds the
 * log-probabilities; out may be g or a (both are copied into their blocks
 * first).  A row at a time, the row's dot product or sum (a horizontal
 * reduction in double) and the loop set-up of its two passes were most of a
 * short row: softmax_backward of 10 float32 columns took 1.9x PyTorch's time,
 * log_softmax_backward 3.2x (AVX2, AMD Zen 4).  Rows as the lanes of a block,
 * the sums are vertical, in double, in column order. */
template <bool Log, typename T>
static CS_REDUCTION void tile_backward(const T *g, const T *a, T *out, idx_t rows, idx_t n) {
    T cg[TILE_BLOCKS], ca[TILE_BLOCKS];
    tile_in(g, rows, n, cg);
    tile_in(a, rows, n, ca);
    for (idx_t r = 0; r < rows; r += LANES) {
        T *gb = cg + r * n;
        const T *ab = ca + r * n;
        double acc[LANES];
        T dot[LANES];
#pragma omp simd
        for (idx_t l = 0; l < LANES; ++l) acc[l] = 0.0;
        for (idx_t k = 0; k < n; ++k) {
#pragma omp simd
            for (idx_t l = 0; l < LANES; ++l)
                acc[l] += Log ? (double)gb[k * LANES + l]
                              : (double)gb[k * LANES + l] * (double)ab[k * LANES + l];
        }
#pragma omp simd
        for (idx_t l = 0; l < LANES; ++l) dot[l] = (T)acc[l];
        for (idx_t k = 0; k < n; ++k) {
#pragma omp simd
            for (idx_t l = 0; l < LANES; ++l) {
                T gk = gb[k * LANES + l], ak = ab[k * LANES + l];
                gb[k * LANES + l] = Log ? gk - exp_poly(ak) * dot[l] : ak * (gk - dot[l]);
            }
        }
    }
    tile_out(cg, rows, n, out);
}

template <typename T>
static inline void tile_softmax_backward(const T *g, const T *a, T *out, idx_t rows, idx_t n) {
    tile_backward<false>(g, a, out, rows, n);
}

template <typename T>
static inline void tile_log_softmax_backward(const T *g, const T *o, T *out, idx_t rows, idx_t n) {
    tile_backward<true>(g, o, out, rows, n);
}

}  // namespace csoftmax

#endif
