/*
 * base.hpp -- what every kernel header builds on: the index type, the
 * inlining and out-of-line markers, explicit FMAs, and the build and CPU facts
 * that show_config() and the kernel dispatch read.
 */
#ifndef CSOFTMAX_BASE_HPP
#define CSOFTMAX_BASE_HPP

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef __AVX__
#include <immintrin.h>
#endif

namespace csoftmax {

typedef ptrdiff_t idx_t;

/* The reductions over a row are kept out of line: a kernel calls them from a
 * serial loop and from an OpenMP region, and an inlined copy in each could be
 * vectorised differently (another order of the additions), which would make
 * results depend on the thread count.  One compiled copy per dtype and
 * instruction set keeps them bitwise identical; the call costs nanoseconds. */
#if defined(_MSC_VER)
#define CS_REDUCTION __declspec(noinline)
#else
#define CS_REDUCTION __attribute__((noinline))
#endif

/* Small math helpers called inside `omp simd` loops must be inlined there or
 * the loop stays scalar (a call per element): GCC stopped inlining log_ge1
 * once the z-loss variants multiplied its call sites, and the 262144x2
 * cross-entropy ran 12x slower. */
#if defined(_MSC_VER)
#define CS_INLINE static __forceinline
#else
#define CS_INLINE static inline __attribute__((always_inline))
#endif

/* a * b + c and a * b - c, rounded once where the build has FMA
 * instructions (twice where it has not).  For the few places where one loop
 * has variants whose bits must agree (with and without the gradient, with
 * and without the z-loss and accuracy extras): GCC contracts a product and a
 * sum into an FMA at its discretion, and in the binary tile it did so in one
 * variant and not in another (the loss and the gradient 1 ulp apart). */
template <typename T> CS_INLINE T mul_add(T a, T b, T c) {
#if defined(__FMA__) && (defined(__GNUC__) || defined(__clang__))
    return sizeof(T) == sizeof(float) ? (T)__builtin_fmaf((float)a, (float)b, (float)c)
                                      : (T)__builtin_fma((double)a, (double)b, (double)c);
#else
    return a * b + c;
#endif
}

template <typename T> CS_INLINE T mul_sub(T a, T b, T c) { return mul_add(a, b, -c); }

/* ---- build facts, read by show_config() ------------------------------- */

static inline int have_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

static inline int omp_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static inline const char *simd_level(void) {
#if defined(__AVX512F__)
    return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
    return "avx2";
#elif defined(__SSE2__) || defined(_M_X64)
    return "sse2";
#elif defined(__ARM_NEON)
    return "neon";
#else
    return "scalar";
#endif
}

/* Which instruction sets the running CPU (and OS) supports: the Python layer
 * loads the fastest kernel module built for one of them. */
static inline int cpu_has_avx2(void) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
#else
    return 0;
#endif
}

static inline int cpu_has_avx512(void) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    return cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

/* The running CPU's L2 cache per core in bytes, 0 where unknown (glibc's
 * sysconf reads it from cpuid; other systems report nothing here).  For
 * prefetch distances only: no result may depend on it. */
static inline long l2_cache_bytes(void) {
#if defined(_SC_LEVEL2_CACHE_SIZE)
    long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return l2 > 0 ? l2 : 0;
#else
    return 0;
#endif
}

}  // namespace csoftmax

#endif
