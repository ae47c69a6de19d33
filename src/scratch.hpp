/*
 * scratch.hpp -- memory a calling thread keeps from call to call, for values
 * a call computes and drops: the per-position losses of a reduced
 * cross-entropy, summed pairwise in position order (pairwise_sum) and not
 * returned.
 *
 * Why kept: a buffer of MiB taken fresh on each call comes from the system
 * (glibc maps it, or grows the heap and trims it again on free), and its pages
 * are then first touched inside the parallel kernel, where a page fault costs
 * most.  The segmentation loss 8x21x256x256 (4 MiB of losses) took 8-12 ms
 * with fresh losses against 2.9 ms with reused ones, 2.2 ms more on one
 * thread (AVX-512, a 2-core VM; the same pages touched by one `fill` before
 * the kernel cost 0.5 ms).  One buffer a calling thread, grown to the largest
 * call up to ROW_SCRATCH_MAX positions and freed when the thread ends; a
 * larger call's buffer is freed when the call returns (row_scratch_done).
 */
#ifndef CSOFTMAX_SCRATCH_HPP
#define CSOFTMAX_SCRATCH_HPP

#include <stdlib.h>

#include "base.hpp"

namespace csoftmax {

/* positions whose losses a thread keeps room for: 16 MiB of doubles
 * (8x512x512 segmentation logits) */
enum { ROW_SCRATCH_MAX = 1 << 21 };

struct RowScratch {
    double *p;
    idx_t n;
    ~RowScratch() { free(p); }
};

static inline RowScratch &row_scratch_of_thread(void) {
    static thread_local RowScratch s = {NULL, 0};
    return s;
}

/* Room for n doubles (n >= 1), the calling thread's until its next call
 * here: its contents are the caller's only while it makes no other call that
 * takes the scratch.  NULL when out of memory. */
static inline double *row_scratch(idx_t n) {
    RowScratch &s = row_scratch_of_thread();
    if (n <= s.n) return s.p;
    /* grown at least twofold, so that growing calls allocate a few times */
    idx_t want = n < 2 * s.n && 2 * s.n <= (idx_t)ROW_SCRATCH_MAX ? 2 * s.n : n;
    free(s.p);
    s.p = (double *)malloc((size_t)want * sizeof(double));
    s.n = s.p != NULL ? want : 0;
    return s.p;
}

/* After a call's use of row_scratch: drops a buffer above ROW_SCRATCH_MAX. */
static inline void row_scratch_done(void) {
    RowScratch &s = row_scratch_of_thread();
    if (s.n > (idx_t)ROW_SCRATCH_MAX) {
        free(s.p);
        s.p = NULL;
        s.n = 0;
    }
}

}  // namespace csoftmax

#endif
