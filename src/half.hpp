/*
 * half.hpp -- float16 and bfloat16 storage <-> float32, vectorised.
 *
 * The 16-bit kernels (half.pxi) keep 16-bit arrays as uint16_t and convert
 * blocks of rows to float32 scratch and back with these two functions
 *
 *   half_load(kind, src, dst, n)    16-bit -> float32 (exact)
 *   half_store(kind, src, dst, n)   float32 -> 16-bit, round to nearest even
 *
 * and the fused forms of the long-row kernels: half_load_max (the load and
 * the row maximum in one walk) and half_store_scaled (a scaling, then the
 * store); half_store_lines (the store, whole cache lines streamed) for the
 * kernels over a middle axis (halfstrided.hpp).
 *
 * kind is HALF_F16 (IEEE binary16) or HALF_BF16 (bfloat16).  float16 uses
 * F16C (vcvtph2ps / vcvtps2ph, the AVX2 and AVX-512 builds) or AVX-512F's
 * 512-bit forms; bfloat16 is integer work: a load is a shift left by 16, a
 * store adds 0x7fff plus the kept part's lowest bit and shifts right (round
 * to nearest even), NaN kept NaN (quiet bit set); on CPUs with AVX512_BF16
 * the AVX-512 build's stores round with vcvtne2ps2bf16 (see "bfloat16 by
 * AVX512_BF16" below: the same bits).  The scalar functions give
 * the same bits as the instructions for every input (tested over all 65536
 * 16-bit patterns and the rounding boundaries next to each, on every build):
 *
 * - float16 -> float32: exact; a NaN gets its quiet bit set (as vcvtph2ps);
 * - float32 -> float16: round to nearest even, overflow to +-inf (from
 *   65520 up), float16 subnormals rounded correctly (never flushed); a NaN
 *   keeps the top 10 bits of its payload and gets the quiet bit;
 * - float32 -> bfloat16: round to nearest even (overflow to +-inf), a NaN
 *   keeps the top 7 bits of its payload and gets the quiet bit.
 *
 * The SIMD forms do not depend on the floating-point environment; the
 * scalar ones assume its default rounding (to nearest even), which csoftmax
 * never changes, for float16 subnormals.
 */
#ifndef CSOFTMAX_HALF_HPP
#define CSOFTMAX_HALF_HPP

#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <string.h>

#if defined(__F16C__) || defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace csoftmax {

enum { HALF_F16 = 0, HALF_BF16 = 1 };

static inline uint32_t half_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float half_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- scalar ------------------------------------------------------------ */

/* Branch-free (selects only), so that the loops over them vectorise in the
 * baseline build too. */
static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = h & 0x7c00u, m = h & 0x3ffu;
    uint32_t bits = (uint32_t)(h & 0x7fffu) << 13;
    uint32_t normal = bits + 0x38000000u;
    uint32_t special = (bits + 0x70000000u) | (m ? 0x400000u : 0u);  /* inf, NaN (quieted) */
    /* a subnormal (or zero): m * 2^-24, exact */
    uint32_t sub = half_f32_bits((float)(int32_t)m * 5.9604644775390625e-8f);
    uint32_t r = e == 0x7c00u ? special : (e == 0 ? sub : normal);
    return half_bits_f32(sign | r);
}

static inline uint16_t f32_to_f16(float f) {
    uint32_t u = half_f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    /* a normal float16 (>= 2^-14): round the mantissa to 10 bits, to nearest even */
    uint32_t normal = (a + 0xfffu + ((a >> 13) & 1u) - 0x38000000u) >> 13;
    /* below 2^-14: |f| + 0.5 rounds |f| to a multiple of 2^-24 (the float16
     * subnormals' step; the default rounding mode, to nearest even, assumed:
     * csoftmax never changes it), exactly */
    uint32_t sub = half_f32_bits(half_bits_f32(a) + 0.5f) - 0x3f000000u;
    uint32_t r = a >= 0x38800000u ? normal : sub;
    r = a >= 0x477ff000u ? 0x7c00u : r;                               /* >= 65520: inf */
    r = a > 0x7f800000u ? (0x7e00u | ((a >> 13) & 0x3ffu)) : r;       /* NaN, quieted */
    return (uint16_t)(sign | r);
}

static inline float bf16_to_f32(uint16_t h) {
    return half_bits_f32((uint32_t)h << 16);
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u = half_f32_bits(f);
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : r);
}

/* float64 -> 16 bits, rounded once (a loss): to float32 rounding to odd
 * (toward zero, then the last bit set where inexact), then to nearest even;
 * the same as rounding the double directly, float32 keeping more than two
 * extra bits (csoftmax._half.round_once does the same in NumPy). */
static inline uint16_t f64_to_half(int kind, double v) {
    float f = (float)v;
    uint32_t u = half_f32_bits(f);
    if (v == v && (double)f != v) {
        if (v > 0 ? (double)f > v : (double)f < v)
            u -= 1;
        u |= 1u;
    }
    f = half_bits_f32(u);
    return kind == HALF_F16 ? f32_to_f16(f) : f32_to_bf16(f);
}

/* ---- vectors (8 or 16 elements) ---------------------------------------- */

#if defined(__AVX512F__) && defined(__AVX512BW__)
enum { HALF_LANES = 16 };

static inline __m512 f16_vec(const uint16_t *s) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)s)); }
static inline __m512 bf16_vec(const uint16_t *s) {
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)s));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
static inline void f16_load_v(const uint16_t *s, float *d) { _mm512_storeu_ps(d, f16_vec(s)); }

typedef __m256i half_packed;   /* HALF_LANES 16-bit values */
static inline void packed_store(uint16_t *d, half_packed p) { _mm256_storeu_si256((__m256i *)d, p); }
static inline void packed_stream(uint16_t *d, half_packed p) { _mm256_stream_si256((__m256i *)d, p); }

static inline half_packed f16_pack(__m512 v) { return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT); }

static inline void bf16_load_v(const uint16_t *s, float *d) { _mm512_storeu_ps(d, bf16_vec(s)); }

/* the bfloat16 bits of v in 32-bit lanes, for v not NaN: round to nearest even */
static inline __m512i bf16_round_nonan(__m512 v) {
    __m512i u = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    return _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
}

static inline half_packed bf16_pack(__m512 v) {
    __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);   /* NaN: its top bits, quieted */
    __m512i r = _mm512_mask_or_epi32(bf16_round_nonan(v), nan,
                                     _mm512_srli_epi32(_mm512_castps_si512(v), 16),
                                     _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(r);
}

/* bf16_pack of values that are not NaN: the rounding alone */
static inline half_packed bf16_pack_nonan(__m512 v) { return _mm512_cvtepi32_epi16(bf16_round_nonan(v)); }

/* two vectors' worth (2 HALF_LANES values), stored at once */
typedef __m512i half_packed2;
static inline half_packed2 packed_pair(half_packed a, half_packed b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
}
static inline void packed2_store(uint16_t *d, half_packed2 p) { _mm512_storeu_si512((void *)d, p); }
static inline void packed2_stream(uint16_t *d, half_packed2 p) { _mm512_stream_si512((__m512i *)d, p); }
static inline half_packed2 f16_pack2(__m512 a, __m512 b) { return packed_pair(f16_pack(a), f16_pack(b)); }
static inline half_packed2 bf16_pack2(__m512 a, __m512 b) { return packed_pair(bf16_pack(a), bf16_pack(b)); }
static inline half_packed2 bf16_pack2_nonan(__m512 a, __m512 b) {
    return packed_pair(bf16_pack_nonan(a), bf16_pack_nonan(b));
}

typedef __m512 half_vec;
static inline half_vec half_vec_load(const float *s) { return _mm512_loadu_ps(s); }
static inline void half_vec_store(float *d, half_vec v) { _mm512_storeu_ps(d, v); }
static inline half_vec half_vec_mul(half_vec a, float c) { return _mm512_mul_ps(a, _mm512_set1_ps(c)); }
static inline half_vec half_vec_set1(float c) { return _mm512_set1_ps(c); }
/* a > b ? a : b lane by lane (b where a is NaN) */
static inline half_vec half_vec_max(half_vec a, half_vec b) { return _mm512_max_ps(a, b); }
#define CS_HALF_SIMD 1
#elif defined(__AVX2__) && defined(__F16C__)
enum { HALF_LANES = 8 };

static inline __m256 f16_vec(const uint16_t *s) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)s)); }
static inline __m256 bf16_vec(const uint16_t *s) {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)s));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
static inline void f16_load_v(const uint16_t *s, float *d) { _mm256_storeu_ps(d, f16_vec(s)); }

typedef __m128i half_packed;   /* HALF_LANES 16-bit values */
static inline void packed_store(uint16_t *d, half_packed p) { _mm_storeu_si128((__m128i *)d, p); }
static inline void packed_stream(uint16_t *d, half_packed p) { _mm_stream_si128((__m128i *)d, p); }

static inline half_packed f16_pack(__m256 v) { return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT); }

static inline void bf16_load_v(const uint16_t *s, float *d) { _mm256_storeu_ps(d, bf16_vec(s)); }

/* the bfloat16 bits of v in 32-bit lanes, for v not NaN: round to nearest even */
static inline __m256i bf16_round_nonan(__m256 v) {
    __m256i u = _mm256_castps_si256(v);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    return _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
}

/* the bfloat16 bits of v in 32-bit lanes (NaN: its top bits, quieted) */
static inline __m256i bf16_round(__m256 v) {
    __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    __m256i q = _mm256_or_si256(_mm256_srli_epi32(_mm256_castps_si256(v), 16), _mm256_set1_epi32(0x40));
    return _mm256_blendv_epi8(bf16_round_nonan(v), q, nan);
}

static inline half_packed bf16_pack(__m256 v) {
    __m256i r = bf16_round(v);
    return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}

/* two vectors' worth (2 HALF_LANES values), stored at once; bfloat16 packs
 * both in one 256-bit step (and a lane fix-up) instead of a 128-bit
 * extract and pack each */
typedef __m256i half_packed2;
static inline void packed2_store(uint16_t *d, half_packed2 p) { _mm256_storeu_si256((__m256i *)d, p); }
static inline void packed2_stream(uint16_t *d, half_packed2 p) { _mm256_stream_si256((__m256i *)d, p); }
static inline half_packed2 f16_pack2(__m256 a, __m256 b) { return _mm256_set_m128i(f16_pack(b), f16_pack(a)); }
static inline half_packed2 bf16_pack2(__m256 a, __m256 b) {
    return _mm256_permute4x64_epi64(_mm256_packus_epi32(bf16_round(a), bf16_round(b)), 0xd8);
}
static inline half_packed2 bf16_pack2_nonan(__m256 a, __m256 b) {
    return _mm256_permute4x64_epi64(_mm256_packus_epi32(bf16_round_nonan(a), bf16_round_nonan(b)),
                                    0xd8);
}

typedef __m256 half_vec;
static inline half_vec half_vec_load(const float *s) { return _mm256_loadu_ps(s); }
static inline void half_vec_store(float *d, half_vec v) { _mm256_storeu_ps(d, v); }
static inline half_vec half_vec_mul(half_vec a, float c) { return _mm256_mul_ps(a, _mm256_set1_ps(c)); }
static inline half_vec half_vec_set1(float c) { return _mm256_set1_ps(c); }
/* a > b ? a : b lane by lane (b where a is NaN) */
static inline half_vec half_vec_max(half_vec a, half_vec b) { return _mm256_max_ps(a, b); }
#define CS_HALF_SIMD 1
#endif

#ifdef CS_HALF_SIMD
static inline void f16_store_v(const float *s, uint16_t *d) { packed_store(d, f16_pack(half_vec_load(s))); }
static inline void bf16_store_v(const float *s, uint16_t *d) { packed_store(d, bf16_pack(half_vec_load(s))); }
#endif

/* ---- bfloat16 by AVX512_BF16 --------------------------------------------
 * Rounded in software (bf16_pack: shifts, adds, a NaN test and a narrowing),
 * a bfloat16 vector took nine instructions, and a bfloat16 loss + gradient
 * of 4096x4096 took 1.12x the time of a float16 one, whose rounding is one
 * vcvtps2ph.  CPUs with AVX512_BF16 (Intel Cooper Lake, Sapphire Rapids and
 * later, AMD Zen 4 and later) round two float32 vectors to one bfloat16
 * vector in one vcvtne2ps2bf16: the same rounding to nearest even, a NaN
 * quieted the same way (its top bits kept, the quiet bit set), but a float32
 * subnormal flushed to zero, where bf16_pack rounds it; a pair with a
 * subnormal lane (vfpclassps) goes through bf16_pack.  Same bits as
 * bf16_pack2 for every input.  The AVX-512 build also runs on CPUs without
 * the extension (Skylake-X, Ice Lake), so the loops that use it are
 * compiled for it alone (a target attribute, not inlined into the rest) and
 * chosen at run time: half_bf16_native().  Against the software rounding
 * (AMD Zen 4, 2 threads, one process, tools/ab_builds.py): the bfloat16
 * loss + gradient of 4096x4096 0.93-0.94x the time, of 4096x32000
 * 0.90-0.93x, softmax of 4096x32000 0.91-0.95x, the segmentation case over
 * a middle axis 0.95-0.98x.  Plain (not streamed) stores go a vector at a
 * time, as bf16_store_v's: one 512-bit store a pair made the conversion of
 * 64 MiB into memory 1.05-1.2x slower than the software rounding (one
 * thread), a vector at a time 0.87-0.98x. */
#if defined(CS_HALF_SIMD) && defined(__AVX512F__) && defined(__x86_64__) && \
    ((defined(__GNUC__) && __GNUC__ >= 11 && !defined(__clang__)) || \
     (defined(__clang__) && __clang_major__ >= 14))
#define CS_BF16_NATIVE 1
#define CS_TARGET_BF16 __attribute__((target("avx512bf16"), noinline))

/* 1 where the CPU has AVX512_BF16 and the native rounding is on, else 0;
 * -1 until first asked (the module asks at import, before any thread).
 * half_bf16_native_set switches it (the tests run both ways). */
static int cs_bf16_native = -1;

static inline int half_bf16_native() {
    if (cs_bf16_native < 0) {
        __builtin_cpu_init();
        cs_bf16_native = __builtin_cpu_supports("avx512bf16") ? 1 : 0;
    }
    return cs_bf16_native;
}

/* on: use the native rounding where the CPU has it; returns whether it was
 * in use before */
static inline int half_bf16_native_set(int on) {
    int was = half_bf16_native();
    __builtin_cpu_init();
    cs_bf16_native = on && __builtin_cpu_supports("avx512bf16") ? 1 : 0;
    return was;
}

/* dst[k] = bfloat16(src[k] * c) (Scaled; else src[k]) for k from i, two
 * vectors a step (Stream: non-temporal stores); returns where it stopped */
template <bool Scaled, bool Stream>
CS_TARGET_BF16 static ptrdiff_t bf16_pairs_native(const float *src, float c, uint16_t *dst,
                                                  ptrdiff_t i, ptrdiff_t n) {
    const __m512 cv = _mm512_set1_ps(c);
    for (; i + 2 * HALF_LANES <= n; i += 2 * HALF_LANES) {
        __m512 a = _mm512_loadu_ps(src + i), b = _mm512_loadu_ps(src + i + HALF_LANES);
        if (Scaled) a = _mm512_mul_ps(a, cv), b = _mm512_mul_ps(b, cv);   /* half_vec_mul */
        __mmask16 sub = (__mmask16)(_mm512_fpclass_ps_mask(a, 0x20) | _mm512_fpclass_ps_mask(b, 0x20));
        if (Stream) {
            packed2_stream(dst + i, sub != 0 ? bf16_pack2(a, b)
                                             : (half_packed2)_mm512_cvtne2ps_pbh(b, a));
        } else if (sub != 0) {
            packed_store(dst + i, bf16_pack(a));
            packed_store(dst + i + HALF_LANES, bf16_pack(b));
        } else {
            packed_store(dst + i, (half_packed)_mm512_cvtneps_pbh(a));
            packed_store(dst + i + HALF_LANES, (half_packed)_mm512_cvtneps_pbh(b));
        }
    }
    return i;
}
#else
static inline int half_bf16_native() { return 0; }
static inline int half_bf16_native_set(int) { return 0; }
#endif

/* ---- rows ---------------------------------------------------------------- */

static inline void half_load(int kind, const uint16_t *src, float *dst, ptrdiff_t n) {
    ptrdiff_t i = 0;
#ifdef CS_HALF_SIMD
    if (kind == HALF_F16)
        for (; i + HALF_LANES <= n; i += HALF_LANES)
            f16_load_v(src + i, dst + i);
    else
        for (; i + HALF_LANES <= n; i += HALF_LANES)
            bf16_load_v(src + i, dst + i);
#endif
    if (kind == HALF_F16) {
#pragma omp simd
        for (ptrdiff_t k = i; k < n; k++)
            dst[k] = f16_to_f32(src[k]);
    } else {
#pragma omp simd
        for (ptrdiff_t k = i; k < n; k++)
            dst[k] = bf16_to_f32(src[k]);
    }
}

#ifdef CS_HALF_SIMD
template <int Kind> static inline half_vec half_vec_of(const uint16_t *s) {
    return Kind == HALF_F16 ? f16_vec(s) : bf16_vec(s);
}

/* half_load_max's vector part: [0, nv) (a multiple of 2 HALF_LANES), its
 * maxima into a[0] and a[1] */
template <int Kind>
static inline void half_load_max_vec(const uint16_t *src, float *dst, ptrdiff_t nv, half_vec *a) {
    for (ptrdiff_t i = 0; i < nv; i += 2 * HALF_LANES) {
        half_vec v0 = half_vec_of<Kind>(src + i), v1 = half_vec_of<Kind>(src + i + HALF_LANES);
        half_vec_store(dst + i, v0);
        half_vec_store(dst + i + HALF_LANES, v1);
        a[0] = half_vec_max(v0, a[0]);
        a[1] = half_vec_max(v1, a[1]);
    }
}
#endif

/* half_load that also returns the largest value loaded, as row_max takes it
 * (v > m ? v : m: NaN skipped, exact, so in any order; +0 for a zero
 * maximum, -inf for n == 0): the conversion and the maximum in one walk, two
 * vectors a step.  The conversion and then row_max over the converted chunk
 * took 1.3 of the 6.9 instructions per element of a bfloat16 32000-column
 * loss with its gradient on AVX2. */
static inline float half_load_max(int kind, const uint16_t *src, float *dst, ptrdiff_t n) {
    float m = -INFINITY;
    ptrdiff_t i = 0;
#ifdef CS_HALF_SIMD
    enum { STEP = 2 * HALF_LANES };
    half_vec a[2] = {half_vec_set1(-INFINITY), half_vec_set1(-INFINITY)};
    i = n / STEP * STEP;
    if (kind == HALF_F16)
        half_load_max_vec<HALF_F16>(src, dst, i, a);
    else
        half_load_max_vec<HALF_BF16>(src, dst, i, a);
    float lanes[STEP];
    half_vec_store(lanes, a[0]);
    half_vec_store(lanes + HALF_LANES, a[1]);
    for (int l = 0; l < STEP; ++l) m = lanes[l] > m ? lanes[l] : m;
#endif
    for (ptrdiff_t k = i; k < n; k++) {
        float v = kind == HALF_F16 ? f16_to_f32(src[k]) : bf16_to_f32(src[k]);
        dst[k] = v;
        m = v > m ? v : m;
    }
    return m + 0.0f;   /* -0 as +0, as row_max */
}

static inline void half_store(int kind, const float *src, uint16_t *dst, ptrdiff_t n) {
    ptrdiff_t i = 0;
#ifdef CS_HALF_SIMD
    if (kind == HALF_F16)
        for (; i + HALF_LANES <= n; i += HALF_LANES)
            f16_store_v(src + i, dst + i);
    else {
#ifdef CS_BF16_NATIVE
        if (half_bf16_native()) i = bf16_pairs_native<false, false>(src, 1.0f, dst, i, n);
#endif
        for (; i + HALF_LANES <= n; i += HALF_LANES)
            bf16_store_v(src + i, dst + i);
    }
#endif
    if (kind == HALF_F16) {
#pragma omp simd
        for (ptrdiff_t k = i; k < n; k++)
            dst[k] = f32_to_f16(src[k]);
    } else {
#pragma omp simd
        for (ptrdiff_t k = i; k < n; k++)
            dst[k] = f32_to_bf16(src[k]);
    }
}

/* half_store, the whole 64-byte lines of dst with non-temporal stores where
 * stream is set: the partial lines at its ends (which a neighbouring row
 * may share) with plain ones, since a line written partly each way is
 * flushed half full.  The same values as half_store. */
static inline void half_store_lines(int kind, const float *src, uint16_t *dst, ptrdiff_t n,
                                    int stream) {
    ptrdiff_t i = 0;
#ifdef CS_HALF_SIMD
    enum { LINE = 32, STEP = 2 * HALF_LANES };   /* 16-bit values a line; a packed pair */
    if (stream && ((uintptr_t)dst & 1) == 0) {
        i = (ptrdiff_t)((((uintptr_t)0 - (uintptr_t)dst) & 63) / 2);
        if (i > n) i = n;
        half_store(kind, src, dst, i);
#ifdef CS_BF16_NATIVE
        if (kind == HALF_BF16 && half_bf16_native())   /* whole lines: pairs of vectors */
            i = bf16_pairs_native<false, true>(src, 1.0f, dst, i, i + (n - i) / LINE * LINE);
#endif
        for (; i + LINE <= n; i += LINE)
            for (ptrdiff_t j = i; j < i + LINE; j += STEP) {
                half_vec a = half_vec_load(src + j), b = half_vec_load(src + j + HALF_LANES);
                packed2_stream(dst + j, kind == HALF_F16 ? f16_pack2(a, b) : bf16_pack2(a, b));
            }
    }
#else
    (void)stream;
#endif
    half_store(kind, src + i, dst + i, n - i);
}

/* half_store_lines of a whole row, its streamed lines fenced before it
 * returns (as half_store_scaled's) */
static inline void half_store_row(int kind, const float *src, uint16_t *dst, ptrdiff_t n,
                                  int stream) {
    half_store_lines(kind, src, dst, n, stream);
#ifdef CS_HALF_SIMD
    if (stream) _mm_sfence();
#endif
}

static inline uint16_t f32_to_half(int kind, float v) {
    return kind == HALF_F16 ? f32_to_f16(v) : f32_to_bf16(v);
}

#ifdef CS_HALF_SIMD
/* half_store_scaled's bfloat16 pairs of vectors from i (Stream: streamed;
 * dst + i aligned for it); returns where they stopped.  Where c is finite,
 * src (exponentials, in [0, 1], or NaN only where their sum and so c is NaN)
 * times c is never NaN, and the rounding skips its NaN test and select
 * (three of the eight instructions a vector on AVX2). */
template <bool Stream>
static inline ptrdiff_t bf16_scaled_pairs(const float *src, float c, uint16_t *dst, ptrdiff_t i,
                                          ptrdiff_t n) {
#ifdef CS_BF16_NATIVE
    if (half_bf16_native()) return bf16_pairs_native<true, Stream>(src, c, dst, i, n);
#endif
    const bool no_nan = c - c == 0.0f;
    for (; i + 2 * HALF_LANES <= n; i += 2 * HALF_LANES) {
        half_vec a = half_vec_mul(half_vec_load(src + i), c);
        half_vec b = half_vec_mul(half_vec_load(src + i + HALF_LANES), c);
        half_packed2 p = no_nan ? bf16_pack2_nonan(a, b) : bf16_pack2(a, b);
        if (Stream)
            packed2_stream(dst + i, p);
        else
            packed2_store(dst + i, p);
    }
    return i;
}
#endif

/* dst = src * c rounded to 16 bits, element t (if 0 <= t < n) then
 * src[t] * c - ct: the gradient of a cross-entropy row from its
 * exponentials (row_scale, then the target's term), or softmax's
 * probabilities, rounded once as half_store would round it, without
 * writing the float32 gradient back.  src: exponentials of a row (in
 * [0, 1]; NaN only where their sum is, and so c).
 * stream: with non-temporal stores (from the first vector-aligned element),
 * for outputs much larger than the caches: a plain store first reads the
 * destination's line (half of the traffic of writing a large output). */
static inline void half_store_scaled(int kind, const float *src, float c, uint16_t *dst,
                                     ptrdiff_t n, ptrdiff_t t, float ct, int stream) {
    ptrdiff_t i = 0;
#ifdef CS_HALF_SIMD
    /* two vectors a step (then one), each scaled as row_scale scales */
#define CS_SCALED(j) half_vec_mul(half_vec_load(src + (j)), c)
    if (stream && ((uintptr_t)dst & 1) == 0) {
        ptrdiff_t head = (ptrdiff_t)((((uintptr_t)0 - (uintptr_t)dst) & (sizeof(half_packed2) - 1)) / 2);
        for (; i < head && i < n; ++i) dst[i] = f32_to_half(kind, src[i] * c);
        if (kind == HALF_F16)
            for (; i + 2 * HALF_LANES <= n; i += 2 * HALF_LANES)
                packed2_stream(dst + i, f16_pack2(CS_SCALED(i), CS_SCALED(i + HALF_LANES)));
        else
            i = bf16_scaled_pairs<true>(src, c, dst, i, n);
        _mm_sfence();   /* the streamed lines before the plain stores below */
    } else if (kind == HALF_F16) {
        for (; i + 2 * HALF_LANES <= n; i += 2 * HALF_LANES)
            packed2_store(dst + i, f16_pack2(CS_SCALED(i), CS_SCALED(i + HALF_LANES)));
    } else {
        i = bf16_scaled_pairs<false>(src, c, dst, i, n);
    }
    if (i + HALF_LANES <= n) {
        if (kind == HALF_F16)
            packed_store(dst + i, f16_pack(CS_SCALED(i)));
        else
            packed_store(dst + i, bf16_pack(CS_SCALED(i)));
        i += HALF_LANES;
    }
#undef CS_SCALED
#else
    (void)stream;
#endif
    if (kind == HALF_F16) {
#pragma omp simd
        for (ptrdiff_t k = i; k < n; k++)
            dst[k] = f32_to_f16(src[k] * c);
    } else {
#pragma omp simd
        for (ptrdiff_t k = i; k < n; k++)
            dst[k] = f32_to_bf16(src[k] * c);
    }
    if (0 <= t && t < n) {
        /* two roundings, as row_scale then the target's subtraction: the
         * volatile keeps GCC (-ffp-contract=fast) from fusing them into an FMA */
        volatile float scaled = src[t] * c;
        float v = scaled - ct;
        dst[t] = f32_to_half(kind, v);
    }
}

}  // namespace csoftmax

#endif
