/*
 * Branch-free double-precision exp / log1p / softplus written so that GCC and Clang
 * auto-vectorise them: no calls into libm, no data-dependent branches (only selects), no
 * lookup tables (they would need gathers). Every function is always_inline so that the
 * loop it is inlined into is compiled for that loop's SIMD level (see simd.h), and the
 * result is the same bits for the scalar, SSE2, AVX2 and AVX-512 code paths because the
 * operations are plain IEEE-754 double adds/multiplies/divides (built with
 * -ffp-contract=off: no fused multiply-add).
 *
 * Accuracy (measured by tests/test_extremes.py against mpmath over z in [-800, 800]): the
 * logistic loss log(1 + exp(-z)) within 1.75 ulp (1.68 measured), its derivative within 3 ulp
 * (2.4 measured).
 */
#ifndef DPO_SIMD_MATH_H
#define DPO_SIMD_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(_MSC_VER) && !defined(__clang__)
#define DPO_RESTRICT __restrict
#else
#define DPO_RESTRICT restrict
#endif

#if defined(__GNUC__) || defined(__clang__)
#define DPO_INLINE static inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define DPO_INLINE static __forceinline
#else
#define DPO_INLINE static inline
#endif

DPO_INLINE int64_t dpo_double_bits(double x)
{
    int64_t bits;
    memcpy(&bits, &x, sizeof bits);
    return bits;
}

DPO_INLINE double dpo_bits_double(int64_t bits)
{
    double x;
    memcpy(&x, &bits, sizeof x);
    return x;
}

/* 1.5 * 2^52: adding it to |t| < 2^51 rounds t to the nearest integer (ties to even) and
 * leaves that integer in the low mantissa bits, so it can be read back as int64 without a
 * double->int64 conversion (which AVX2 lacks). */
#define DPO_ROUND_SHIFTER 6755399441055744.0

/*
 * exp(x). Range reduction x = k*ln2 + r, |r| <= ln2/2, with ln2 split in two (Cody & Waite;
 * the split constants are fdlibm's, whose ln2_hi has 32 significant bits so k*ln2_hi is exact
 * for |k| < 2^21). exp(r) is its Taylor series to degree 13 (the first omitted term is below
 * 2^-57 relative on |r| <= ln2/2), summed as 1 + (r + r^2*q(r)) so the final rounding
 * dominates the error. 2^k is applied as two factors 2^k1 * 2^k2, each a normal number, so
 * results that overflow give +inf and results in the subnormal range are still returned
 * (gradual underflow) rather than flushed to zero.
 * NaN in, NaN out; the clamp keeps k in range for any finite or infinite x.
 */
/* The part of exp shared by dpo_exp, dpo_expm1_exp and the log-softmax rows
 * (csrc/logps_math.h): for x already clamped to the caller's range, returns
 * exp(r) - 1 = r + r^2*q(r) and sets *k (and the same integer as a double in *k_real: AVX2
 * has no int64 -> double conversion), with exp(x) = (1 + result) * 2^k. */
DPO_INLINE double dpo_exp_reduced_m1(double x, double *k_real_out, int64_t *k)
{
    const double log2e = 1.4426950408889634;
    const double ln2_hi = 6.93147180369123816490e-01;
    const double ln2_lo = 1.90821492927058770002e-10;
    const double shifter = DPO_ROUND_SHIFTER;

    double t = x * log2e + shifter;
    double k_real = t - shifter;
    *k_real_out = k_real;
    *k = dpo_double_bits(t) - dpo_double_bits(shifter);
    double r = (x - k_real * ln2_hi) - k_real * ln2_lo;

    /* q(r) = sum_{n=2}^{13} r^(n-2)/n!, evaluated with Estrin's scheme: the same number of
     * operations as Horner's rule but a dependency chain a third as long, which is what limits
     * the vectorised loop (it is latency-bound, not throughput-bound). */
    double r2 = r * r;
    double r4 = r2 * r2;
    double a0 = 0.5 + r * 0.16666666666666666;
    double a1 = 0.041666666666666664 + r * 0.008333333333333333;
    double a2 = 0.001388888888888889 + r * 0.0001984126984126984;
    double a3 = 2.48015873015873e-05 + r * 2.7557319223985893e-06;
    double a4 = 2.755731922398589e-07 + r * 2.505210838544172e-08;
    double a5 = 2.08767569878681e-09 + r * 1.6059043836821613e-10;
    double b0 = a0 + r2 * a1;
    double b1 = a2 + r2 * a3;
    double b2 = a4 + r2 * a5;
    double q = b0 + r4 * (b1 + r4 * b2);
    return r + r2 * q;
}

/* p = exp(r) of the above, with exp(x) = p * 2^k. */
DPO_INLINE double dpo_exp_reduced(double x, double *k_real_out, int64_t *k)
{
    return 1.0 + dpo_exp_reduced_m1(x, k_real_out, k);
}

/* p * 2^k for the k of the reduction (k_real: the same integer as a double). */
DPO_INLINE double dpo_exp_scale(double p, double k_real, int64_t k)
{
    const double shifter = DPO_ROUND_SHIFTER;

    /* k1 = round(k/2), k2 = k - k1: both in [-549, 520], so 2^k1 and 2^k2 are normal. */
    double t_half = k_real * 0.5 + shifter;
    int64_t k1 = dpo_double_bits(t_half) - dpo_double_bits(shifter);
    int64_t k2 = k - k1;
    /* Shifted as unsigned: a NaN x gives a meaningless k1, k2 (the NaN still propagates
     * through p), and a signed left shift of a negative value is undefined behaviour. */
    double scale1 = dpo_bits_double((int64_t)((uint64_t)(k1 + 1023) << 52));
    double scale2 = dpo_bits_double((int64_t)((uint64_t)(k2 + 1023) << 52));
    return (p * scale1) * scale2;
}

/* Written as selects, not fmin/fmax: NaN must pass through unchanged. The clamp keeps k in
 * range; exp(-760) is 0 and exp(720) +inf in double anyway. */
DPO_INLINE double dpo_exp_clamp(double x)
{
    x = (x < -760.0) ? -760.0 : x;
    return (x > 720.0) ? 720.0 : x;
}

DPO_INLINE double dpo_exp(double x)
{
    double k_real;
    int64_t k;
    x = dpo_exp_clamp(x);
    double p = dpo_exp_reduced(x, &k_real, &k);
    return dpo_exp_scale(p, k_real, k);
}

/*
 * expm1(x), returning exp(x) in *exp_out as well (one range reduction for both). Where the
 * reduction gives k = 0 (|x| < ln2/2) expm1 is the polynomial part r + r^2*q(r) itself, with
 * no cancellation; elsewhere |exp(x) - 1| > 0.29 and exp(x) - 1 is within a few ulp. Used
 * where a difference of exponentials is divided by a small number (alpha-divergence scores
 * with alpha near 1), which exp(x) - 1 computed at |x| ~ 1e-16 would reduce to noise.
 */
DPO_INLINE double dpo_expm1_exp(double x, double *exp_out)
{
    double k_real;
    int64_t k;
    x = dpo_exp_clamp(x);
    double w = dpo_exp_reduced_m1(x, &k_real, &k);
    double e = dpo_exp_scale(1.0 + w, k_real, k);
    *exp_out = e;
    return (k_real == 0.0) ? w : e - 1.0;
}

/*
 * fdlibm's log kernel (e_log.c, Sun Microsystems, freely distributable): for 1 + f in
 * [sqrt(2)/2, sqrt(2)), log(2^k * (1 + f)) + c with c a small correction, as
 * log(1 + f) = f - hfsq + s*(hfsq + R(s^2)), s = f/(2 + f), with fdlibm's minimax coefficients
 * Lg1..Lg7 for R, and ln2 split in two so that k*ln2_hi is exact.
 */
DPO_INLINE double dpo_log_kernel(double f, double k, double c)
{
    const double ln2_hi = 6.93147180369123816490e-01;
    const double ln2_lo = 1.90821492927058770002e-10;
    const double Lg1 = 6.666666666666735130e-01;
    const double Lg2 = 3.999999999940941908e-01;
    const double Lg3 = 2.857142874366239149e-01;
    const double Lg4 = 2.222219843214978396e-01;
    const double Lg5 = 1.818357216161805012e-01;
    const double Lg6 = 1.531383769920937332e-01;
    const double Lg7 = 1.479819860511658591e-01;

    double hfsq = 0.5 * f * f;
    double s = f / (2.0 + f);
    double z = s * s;
    double w = z * z;
    double t1 = w * (Lg2 + w * (Lg4 + w * Lg6));
    double t2 = z * (Lg1 + w * (Lg3 + w * (Lg5 + w * Lg7)));
    double R = t2 + t1;
    return k * ln2_hi - ((hfsq - (s * (hfsq + R) + (k * ln2_lo + c))) - f);
}

/*
 * log(u_true) where u_true = 1 + e, e in [0, 1], given u = fl(1 + e) and inv_u = 1/u (the
 * caller needs 1/u for the sigmoid anyway, so the division is shared).
 * fdlibm's log1p method: u = 2^j * (1 + f) with 1 + f in [sqrt(2)/2, sqrt(2)); the
 * rounding error of u = fl(1 + e) is added back as c = (e - (u - 1))/u, exact numerator.
 * Here j is 0 or 1 and f is computed exactly (Sterbenz), which keeps it branch-free.
 */
DPO_INLINE double dpo_log1p_unit(double e, double u, double inv_u)
{
    double c = (e - (u - 1.0)) * inv_u;
    int upper = u > 1.4142135623730951;
    double j = upper ? 1.0 : 0.0;
    double half_or_one = upper ? 0.5 : 1.0;
    double f = u * half_or_one - 1.0;
    c = c * half_or_one;
    return dpo_log_kernel(f, j, c);
}

/*
 * log(x) for x > 0 (finite, normal or subnormal; 0 gives -inf, inf gives inf), within about
 * an ulp: x = 2^k * m with m in [sqrt(2)/2, sqrt(2)) read from the bits (the exponent as a
 * double through the 2^52 shifter: AVX2 has no int64 -> double conversion), f = m - 1 exact,
 * then fdlibm's kernel. Subnormals are scaled by 2^54 first.
 */
/* dpo_log_pos's reduction, shared with pair_losses.h's dpo_orpo_log1mexp: returns f = m - 1
 * and sets *k_out (meaningless for 0, inf and NaN, which dpo_log_special then replaces). */
DPO_INLINE double dpo_log_reduce(double x, double *k_out)
{
    int subnormal = x < 2.2250738585072014e-308;
    double scaled = subnormal ? x * 18014398509481984.0 : x; /* 2^54 */
    int64_t bits = dpo_double_bits(scaled);
    int64_t biased = (bits >> 52) & 0x7ff;
    double m = dpo_bits_double((bits & INT64_C(0x000fffffffffffff)) | INT64_C(0x3ff0000000000000));
    double k = dpo_bits_double(INT64_C(0x4330000000000000) | biased) - 4503599627370496.0
               - 1023.0 - (subnormal ? 54.0 : 0.0);
    int upper = m > 1.4142135623730951;
    m = upper ? 0.5 * m : m;
    *k_out = upper ? k + 1.0 : k;
    return m - 1.0;
}

/* log(x)'s special values (0, inf, NaN) over the kernel's result, by selects, keeping the
 * loop branch-free. */
DPO_INLINE double dpo_log_special(double x, double result)
{
    result = (x == 0.0) ? -INFINITY : result;
    result = (x == INFINITY) ? INFINITY : result;
    return (x != x) ? x : result;
}

DPO_INLINE double dpo_log_pos(double x)
{
    double k;
    double f = dpo_log_reduce(x, &k);
    return dpo_log_special(x, dpo_log_kernel(f, k, 0.0));
}

/*
 * log(1 - y) for y in [0, 1): for y > 1/2, 1 - y is exact (Sterbenz) and its log is
 * dpo_log_pos's; else the rounded u = 1 - y in [1/2, 1] plus its exact rounding error
 * c = ((1 - u) - y)/u, through fdlibm's kernel (u = 2^j (1 + f), j = -1 below sqrt(2)/2).
 */
DPO_INLINE double dpo_log1m(double y)
{
    double u = 1.0 - y;
    double c = ((1.0 - u) - y) / u;
    int lower = u < 0.7071067811865476;
    double mant = lower ? 2.0 * u : u;
    double near_one = dpo_log_kernel(mant - 1.0, lower ? -1.0 : 0.0, c);
    return (y > 0.5) ? dpo_log_pos(u) : near_one;
}

/*
 * log(1 - exp(a)) for a < 0 (Maechler's log1mexp): log(-expm1(a)) for a > -ln 2, where
 * 1 - exp(a) would cancel, else dpo_log1m(exp(a)) (exp(a) <= 1/2 there). Also returns
 * 1 - exp(a) in *one_minus_out.
 */
DPO_INLINE double dpo_log1mexp(double a, double *one_minus_out)
{
    double e;
    double m1 = dpo_expm1_exp(a, &e);
    double near = -m1; /* 1 - exp(a), accurate for a > -ln 2 */
    double u = 1.0 - e; /* 1 - exp(a) rounded, for a <= -ln 2 (error below half an ulp) */
    int close = a > -0.6931471805599453;
    *one_minus_out = close ? near : u;
    double log_near = dpo_log_pos(near);
    double log_far = dpo_log1m(e); /* e = exp(a) <= 1/2 here */
    return close ? log_near : log_far;
}

/*
 * The pieces every logistic loss needs, for one z, in one go:
 *   log1p_e = log(1 + exp(-|z|))   so softplus(z) = max(z, 0) + log1p_e
 *                                    and softplus(-z) = max(-z, 0) + log1p_e,
 *   sig_pos = sigmoid(z), sig_neg = sigmoid(-z) = 1 - sigmoid(z), both without cancellation.
 * Finite z never gives NaN: for |z| large, exp(-|z|) underflows to 0 and everything stays
 * finite; infinite z gives the limits. NaN propagates.
 */
typedef struct {
    double log1p_e;
    double sig_pos;
    double sig_neg;
} DpoLogistic;

DPO_INLINE DpoLogistic dpo_logistic(double z)
{
    DpoLogistic out;
    double abs_z = (z < 0.0) ? -z : z;
    double e = dpo_exp(-abs_z);
    double u = 1.0 + e;
    double inv_u = 1.0 / u;
    double e_over_u = e * inv_u;
    out.log1p_e = dpo_log1p_unit(e, u, inv_u);
    out.sig_pos = (z >= 0.0) ? inv_u : e_over_u;
    out.sig_neg = (z >= 0.0) ? e_over_u : inv_u;
    return out;
}

DPO_INLINE double dpo_relu(double x)
{
    return (x > 0.0) ? x : 0.0;
}

#endif /* DPO_SIMD_MATH_H */
