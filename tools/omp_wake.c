/*
 * omp_wake.c -- how late the second thread of a two-thread OpenMP region starts,
 * after the previous region ended some time before (busy or asleep meanwhile).
 *
 * OpenMP's idle team threads spin for a while after a region, then sleep in the
 * kernel; a region that finds them asleep starts without them until they wake.
 * csoftmax hands its rows out schedule(guided) so that the running threads take a
 * late thread's rows (docs/guide/threads.md).  No csoftmax here: the bare region.
 *
 *   cc -O2 -fopenmp tools/omp_wake.c -o /tmp/omp_wake && /tmp/omp_wake
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

enum { REPS = 50 };

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void busy(double s) {
    double t = now();
    while (now() - t < s) {
    }
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(void) {
    const double gaps[] = {0, 0.0002, 0.001, 0.003, 0.01, 0.03};
    for (int asleep = 0; asleep < 2; ++asleep) {
        for (size_t g = 0; g < sizeof gaps / sizeof gaps[0]; ++g) {
            double lat[REPS];
            for (int r = 0; r < REPS; ++r) {
                if (gaps[g] > 0) {
                    if (asleep)
                        usleep((useconds_t)(gaps[g] * 1e6));
                    else
                        busy(gaps[g]);
                }
                volatile double started = 0;
                double t0 = now();
#pragma omp parallel num_threads(2)
                {
                    if (omp_get_thread_num() == 1) started = now();
                }
                lat[r] = (started - t0) * 1e6;
            }
            qsort(lat, REPS, sizeof lat[0], by_value);
            printf("%s %5.1f ms before: second thread started after min %7.1f us, "
                   "median %7.1f, p90 %7.1f\n", asleep ? "asleep" : "busy  ", gaps[g] * 1e3,
                   lat[0], lat[REPS / 2], lat[REPS * 9 / 10]);
        }
    }
    return 0;
}
