/*
 * exp.hpp -- the kernels' exp, and the bit views of floats it is built on.
 *
 * exp_poly is a polynomial exp with range reduction, written so that GCC turns
 * it into SIMD code under -fno-math-errno -fno-trapping-math (libm's exp is
 * never vectorised without -ffast-math).  It keeps IEEE semantics:
 * exp(-inf) = 0, exp(+inf) = +inf, overflow gives +inf, underflow gives
 * (correctly scaled) subnormals and then 0, and NaN propagates.
 * exp_nonpositive is the form for x - max <= 0 that the row kernels use.
 */
#ifndef CSOFTMAX_EXP_HPP
#define CSOFTMAX_EXP_HPP

#include "base.hpp"

namespace csoftmax {

/* ---- exp ---------------------------------------------------------------- */

static inline float bits_as_float(uint32_t u) { float f; memcpy(&f, &u, sizeof f); return f; }
static inline uint32_t float_bits(float f) { uint32_t u; memcpy(&u, &f, sizeof u); return u; }
static inline double bits_as_double(uint64_t u) { double d; memcpy(&d, &u, sizeof d); return d; }
static inline uint64_t double_bits(double d) { uint64_t u; memcpy(&u, &d, sizeof u); return u; }

/* exp(x) = 2^n * exp(r), n = round(x / ln 2), |r| <= ln(2)/2.
 * n is found by adding a "shifter" S (1.5 * 2^mantissa_bits, plus an offset
 * o): the sum t = x / ln 2 + S rounds x / ln 2 to an integer, and the low
 * mantissa bits of t hold n + o, read without a float->int conversion (which
 * is undefined for NaN).  r = x - n ln 2 is reduced in two steps (Cody-Waite:
 * r1 = x - n ln2_hi is exact, then c = -n ln2_lo is added).  exp(r) = 1 + u,
 * u = r + r^2 q(r), with q a minimax polynomial for the relative error of
 * 1 + u on |r| <= ln(2)/2 (float: degree 4, 3.1e-9 with the float
 * coefficients 3.6e-9, 0.03 ulp; double: degree 9, 1.2e-17), evaluated in
 * Estrin form (float: a shorter dependency chain for the same number of
 * operations) or Horner form (double: fewer operations than Estrin, no r^4).
 * The result's error is then that of the last roundings: of r, of u and of
 * 1 + u, each up to a quarter, a quarter and a half ulp of the result.  In
 * double the rounding of r is kept out: u = r1 + (c + r^2 q(r)) (r is then
 * only the polynomial's argument), one more operation; float does without
 * it (its largest error is 1.02 ulp then; with q of degree 5 it was 1.005,
 * and 0.94 with the split, for 5 % of the exp).
 *
 * Float's q was of degree 5 (1.6e-10): its largest error 1.005 ulp.  Degree
 * 4 is one FMA fewer of the 12 an exp takes on the two FMA pipes that bound
 * the AVX2 kernels: over every float in [-105.3, 0] (1.1e9, against exp in
 * double) the largest error 1.0205 ulp, 0.812 % of the results not
 * correctly rounded (0.804 % before), 0.16 % of them changed by an ulp (the
 * floats crowd near 0, where exp rounds easily: of arguments drawn uniformly
 * from [-20, 0], 9.65 % against 9.56 %, tests/test_exp_accuracy.py); the
 * AVX2 softmax of 8192x1000 took 0.91x the time, its loss 0.95x, the loss
 * of 65536x10 0.94x, the segmentation loss + gradient 0.97x (one thread;
 * 0.96x, 0.95x, 1.00x, 0.97x on two).
 * The arguments are first clamped to the range where n fits; NaN passes
 * through the clamps (every comparison with NaN is false) and poisons r, hence
 * the result. */
template <typename T> struct ExpFormat;
template <> struct ExpFormat<float> {
    typedef int32_t Int;
    typedef uint32_t Bits;
    enum { BIAS = 127, MANTISSA = 23, K = 25 };
    static float hi() { return 88.8f; }
    static float lo() { return -104.0f; }
    /* exp_nonpositive's clamp: n = -(BIAS + K) there (-105.3 / ln 2 = -151.9) */
    static float lo_nonpositive() { return -105.3f; }
    /* exp_nonpositive_as<true>'s clamp: n = -126 there (-87.3 / ln 2 = -125.95) */
    static float lo_summand() { return -87.3f; }
    static float two_minus_k() { return 2.98023223876953125e-8f; }       /* 2^-25 */
    static float from_bits(Bits u) { return bits_as_float(u); }
    static Bits to_bits(float f) { return float_bits(f); }
    static float log2e() { return 1.44269504088896341f; }
    static float ln2_hi() { return 0.693359375f; }
    static float ln2_lo() { return -2.12194440e-4f; }
    static float shifter() { return 12582912.0f; }                       /* 1.5 * 2^23 */
    enum { SPLIT_C = 0 };
    /* c + r^2 q(r), q(r) ~ (exp(r) - 1 - r) / r^2 */
    static float expm1_q(float r, float c) {
        const float c2 = 4.99999940395355225e-01f, c3 = 1.66665211319923401e-01f,
                    c4 = 4.16683889925479889e-02f, c5 = 8.36874544620513916e-03f,
                    c6 = 1.38145405799150467e-03f;
        float r2 = r * r;
        float a = c3 * r + c2;
        float b = c5 * r + c4;
        b = c6 * r2 + b;
        float q = b * r2 + a;
        return q * r2 + c;
    }
};
template <> struct ExpFormat<double> {
    typedef int64_t Int;
    typedef uint64_t Bits;
    enum { BIAS = 1023, MANTISSA = 52, K = 55 };
    static double hi() { return 709.9; }
    static double lo() { return -746.0; }
    static double lo_nonpositive() { return -747.2; }                    /* n = -1078 */
    static double lo_summand() { return -708.2; }                        /* n = -1022 */
    static double two_minus_k() { return 2.7755575615628914e-17; }      /* 2^-55 */
    static double from_bits(Bits u) { return bits_as_double(u); }
    static Bits to_bits(double d) { return double_bits(d); }
    static double log2e() { return 1.4426950408889634074; }
    static double ln2_hi() { return 6.93145751953125e-1; }
    static double ln2_lo() { return 1.42860682030941723212e-6; }
    static double shifter() { return 6755399441055744.0; }               /* 1.5 * 2^52 */
    enum { SPLIT_C = 1 };
    static double expm1_q(double r, double c) {
        double q = 2.49846962805745068e-8;
        q = q * r + 2.76197298578087900e-7;
        q = q * r + 2.75575804478011605e-6;
        q = q * r + 2.48015221527549336e-5;
        q = q * r + 1.98412695827994386e-4;
        q = q * r + 1.38888889165742761e-3;
        q = q * r + 8.33333333342319554e-3;
        q = q * r + 4.16666666666256537e-2;
        q = q * r + 1.66666666666665841e-1;
        q = q * r + 5.00000000000000097e-1;
        return q * (r * r) + c;
    }
};

/* u = exp(xc) / 2^n - 1 for xc already clamped to [lo, hi], with the
 * shifter S plus offset; t gets the bits of S plus n + offset.  SPLIT_C: see
 * above. */
template <typename T> static inline T exp_reduced_u(T xc, T offset, T *t) {
    typedef ExpFormat<T> F;
    T s = F::shifter() + offset;
    *t = xc * F::log2e() + s;
    T nf = *t - s;
    T r1 = xc - nf * F::ln2_hi();
    if (!F::SPLIT_C) {
        T r = r1 - nf * F::ln2_lo();
        return F::expm1_q(r, r);
    }
    T c = nf * -F::ln2_lo();
    T r = r1 + c;
    return r1 + F::expm1_q(r, c);
}

/* exp(r) and n for an argument xc already clamped to [lo, hi]. */
static inline float exp_reduced(float xc, int32_t *n) {
    typedef ExpFormat<float> F;
    float t;
    float u = exp_reduced_u(xc, 0.0f, &t);
    *n = (int32_t)(F::to_bits(t) - F::to_bits(F::shifter()));
    return u + 1.0f;
}

static inline double exp_reduced(double xc, int64_t *n) {
    typedef ExpFormat<double> F;
    double t;
    double u = exp_reduced_u(xc, 0.0, &t);
    *n = (int64_t)(F::to_bits(t) - F::to_bits(F::shifter()));
    return u + 1.0;
}

/* 2^e for a biased exponent e + BIAS in [1, 2 BIAS] */
template <typename T> static inline T pow2(typename ExpFormat<T>::Int e) {
    typedef ExpFormat<T> F;
    return F::from_bits((typename F::Bits)(e + (int)F::BIAS) << F::MANTISSA);
}

/* exp(x) for any x.  2^n is applied as two factors 2^(n/2) * 2^(n - n/2),
 * both normal numbers, so results that are subnormal or that overflow are
 * rounded once, correctly. */
template <typename T> static inline T exp_poly(T x) {
    typedef ExpFormat<T> F;
    T xc = x > F::hi() ? F::hi() : x;
    xc = xc < F::lo() ? F::lo() : xc;
    typename F::Int n;
    T y = exp_reduced(xc, &n);
    typename F::Int n1 = n >> 1;
    return (y * pow2<T>(n1)) * pow2<T>(n - n1);
}

/* The clamp of exp_nonpositive_as<Summand>: lo_nonpositive, or lo_summand. */
template <typename T, bool Summand> static inline T exp_clamp() {
    return Summand ? ExpFormat<T>::lo_summand() : ExpFormat<T>::lo_nonpositive();
}

/* exp(x) for x <= 0 (or NaN): the exponentials of a row shifted by its
 * maximum.  n is in [-152, 0] (float) / [-1078, 0] (double), so with the
 * shifter offset BIAS + K the low bits of t are the biased exponent of
 * 2^(n + K): shifting them into the exponent field gives it (the bits of S
 * above are shifted out), a normal number, or +0 at n = -(BIAS + K).  The
 * clamp lo (lo_nonpositive) is at that n, where exp(x) rounds to 0 anyway:
 * every smaller argument (-inf: masked and padded entries) gives +0 as a
 * product with 0, where a product with a subnormal result takes a microcode
 * assist on x86 (exp_poly's lo did: masked softmax ran 4.6x slower, its
 * -inf entries clamped there).  (1 + u) 2^-K is formed, rounded
 * once, by u 2^-K + 2^-K (all normal numbers: scaling by 2^-K is exact), and
 * one product by 2^(n + K) then is exact, or, where the result is subnormal,
 * rounded once: correctly rounded subnormals.  Only x <= 0 or NaN are valid:
 * the callers pass x_k - max_k x_k, which IEEE subtraction keeps <= 0, and
 * skipping a clamp from above is the point (larger x give wrong values, never
 * undefined behaviour).
 *
 * Summand: exp(x) as a term of a sum that nothing else reads (a loss without
 * its gradient, logsumexp, log_softmax): the value above where n >= -125
 * (float; -1021 double), else +0.  The same code with K = -1: 2^(n - 1) is
 * then normal down to n = -125, and its exponent field 0 (+0) at n = -126,
 * where the clamp lo_summand is.  Where the product above is subnormal it
 * takes a microcode assist on x86: the loss of 8192x1000 logits with a spread
 * beyond 87 (N(0, 30^2)) ran 5.6x slower than of N(0, 1) ones.  The terms
 * dropped are below 2^-125 (2^-1021) and the sum is at least 1 (its largest
 * term, exp(0)), in double: they move it by far less than its last bit, and
 * can change its rounding only where the exact sum lies within them of a
 * rounding boundary. */
template <bool Summand, typename T> static inline T exp_nonpositive_as(T x, T lo) {
    typedef ExpFormat<T> F;
    const int k = Summand ? -1 : (int)F::K;
    const T two_minus_k = Summand ? (T)2 : F::two_minus_k();
    T xc = x < lo ? lo : x;
    T t;
    T u = exp_reduced_u(xc, (T)((int)F::BIAS + k), &t);
    T scale = F::from_bits(F::to_bits(t) << F::MANTISSA);    /* 2^(n + k), or +0 */
#if defined(__FMA__) && (defined(__GNUC__) || defined(__clang__))
    if (Summand) {
        /* (1 + u) 2^n as one FMA of u with 2^n = scale + scale (exact): one
         * multiply-pipe operation fewer than (2 + 2u) 2^(n - 1), 11 in all
         * (the AVX2 loss of 65536x10 spends most of its time in this exp,
         * bound by the two FMA pipes), and the same value: both round 1 + u
         * once and scale it exactly (the result is normal for n >= -125), and
         * +0 stays +0.  Without an FMA the product and the sum would each
         * round, hence the form below there. */
        T twice = scale + scale;
        return mul_add(u, twice, twice);
    }
#endif
    T y = u * two_minus_k + two_minus_k;
    return y * scale;
}

template <typename T> static inline T exp_nonpositive(T x, T lo) { return exp_nonpositive_as<false>(x, lo); }

template <typename T> static inline T exp_nonpositive(T x) { return exp_nonpositive(x, exp_clamp<T, false>()); }

/* exp_clamp<T, Summand>() as a value the compiler cannot see through, for
 * vector loops to take once and pass on.  With the constant, GCC folds
 * exp_nonpositive(lo) to 0 and moves the clamp's select past the whole exp
 * into what uses it: on AVX2 (no mask
 * registers) a sum in double then took a compare, two sign extensions and
 * two ANDs per vector in place of one vmaxps, and the extra registers
 * spilled the accumulators (the 65536x10 loss: 6 % more instructions, 5 %
 * slower).  An empty asm statement hides the value; inside the loop it would
 * stop the vectorisation, so callers take it before. */
template <typename T, bool Summand = false> static inline T exp_lo() {
    T lo = exp_clamp<T, Summand>();
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
    __asm__("" : "+x"(lo));
#endif
    return lo;
}
}  // namespace csoftmax

#endif
