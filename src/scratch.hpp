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
 * larger call takes a buffer of its own, freed when the call ends
 * (row_scratch_done), and leaves the kept one as it is.
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
    double *p;       /* the kept buffer, n doubles */
    idx_t n;
    double *large;   /* a call's above ROW_SCRATCH_MAX, until row_scratch_done */
    ~RowScratch() {
        free(p);
        free(large);
    }
};

static inline RowScratch &row_scratch_of_thread(void) {
    static thread_local RowScratch s = {NULL, 0, NULL};
    return s;
}

/* Room for n doubles (n >= 1), the calling thread's until its next call
 * here: its contents are the caller's only while it makes no other call that
 * takes the scratch.  Above ROW_SCRATCH_MAX a buffer of the call's own, the
 * kept one left as it is.  NULL when out of memory. */
static inline double *row_scratch(idx_t n) {
    RowScratch &s = row_scratch_of_thread();
    if (n <= s.n) return s.p;
    if (n > (idx_t)ROW_SCRATCH_MAX) {
        free(s.large);
        s.large = (double *)malloc((size_t)n * sizeof(double));
        return s.large;
    }
    /* grown at least twofold up to the limit, so that growing calls allocate
     * a few times */
    idx_t want = 2 * s.n < (idx_t)ROW_SCRATCH_MAX ? 2 * s.n : (idx_t)ROW_SCRATCH_MAX;
    if (want < n) want = n;
    free(s.p);
    s.p = (double *)malloc((size_t)want * sizeof(double));
    s.n = s.p != NULL ? want : 0;
    return s.p;
}

/* After a call's use of row_scratch (whether it returned or raised): frees a
 * buffer above ROW_SCRATCH_MAX. */
static inline void row_scratch_done(void) {
    RowScratch &s = row_scratch_of_thread();
    free(s.large);
    s.large = NULL;
}

}  // namespace csoftmax

#endif
