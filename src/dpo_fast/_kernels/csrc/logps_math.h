/*
 * Type-independent pieces of the log-softmax rows (logps_row.h): the row statistics record,
 * the fixed-order lane sum, and log(s) for the log-sum-exp. Everything is branch-free double
 * arithmetic from simd_math.h, so every instruction set gives the same bits.
 */
#ifndef DPO_LOGPS_MATH_H
#define DPO_LOGPS_MATH_H

#include <float.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "simd_math.h"

/* Sums over a row are kept in LANES partial sums, element i of a block in lane i % LANES,
 * and the lanes are added in one fixed tree at the end: the vectoriser maps the lanes onto
 * whatever vector width the clone has without changing which numbers are added in which
 * order (a plain `s += e` reduction would either stay scalar or, with reassociation, give
 * other bits per instruction set). */
#define DPO_LOGPS_LANES 8
/* Elements per block: exp values are staged in block-sized buffers (up to 4 x 4 KiB on the
 * stack, in L1) between the vectorised map and the lane sums. */
#define DPO_LOGPS_BLOCK 512

typedef struct {
    double xmax;  /* largest logit of the row (before the temperature) */
    double m;     /* xmax * inv_temperature */
    double s;     /* sum exp(z - m) >= 1 */
    double log_s; /* log(s) */
    double w;     /* sum exp(z - m) * (z - m) <= 0, when the extras are wanted */
    double q;     /* sum exp(z - m)^2 >= 1, when the extras are wanted */
    double xsum;  /* sum of the logits (before the temperature), when the extras are wanted */
    int bad;      /* the row holds a NaN or an infinity */
} DpoLogpsRowStats;

/*
 * exp(d) for d <= 0, the only arguments the row loops produce (d = z - max(z), or z - lse
 * with lse >= max(z)): dpo_exp (simd_math.h) with the same Cody-Waite reduction and
 * Estrin-evaluated Taylor polynomial, minus what d <= 0 makes unnecessary. dpo_exp clamps
 * above (overflow) and splits 2^k in two factors so that subnormal results are kept; here
 * there is no upper clamp and one 2^k factor, and results below 2^-1021 (d < -708) are
 * flushed to 0: a sum that holds the term exp(0) = 1 cannot see them, nor can a float32
 * gradient. For -708 <= d <= 0 the result is bit-identical to dpo_exp (p * 2^k is exact
 * while normal; tests/test_logps_vectorisation.py compiles both and compares them). Measured:
 * ~20% less time than dpo_exp in the row loop (AVX-512). NaN propagates; d > 0 gives an
 * unspecified finite or infinite value (no undefined behaviour: the shift is unsigned).
 */
DPO_INLINE double dpo_logps_exp(double d)
{
    double x = (d < -708.0) ? -708.0 : d;
    double k_real;
    int64_t k;
    double p = dpo_exp_reduced(x, &k_real, &k);
    double e = p * dpo_bits_double((int64_t)((uint64_t)(k + 1023) << 52));
    return (d < -708.0) ? 0.0 : e;
}

/*
 * exp(d) for d <= 0 to 2.2e-10 relative, for float32 logits: the reduction and 2^k of
 * dpo_logps_exp with exp(r) = 1 + r + r^2 q(r), q of degree 5 instead of 11. q interpolates
 * (exp(r) - 1 - r) / r^2 at the 6 Chebyshev nodes of [-ln2/2, ln2/2] (coefficients computed
 * with mpmath, 40 digits): the error oscillates in sign over the interval (a truncated
 * Taylor series would always err low, and a sequence's sum of 2048 token log-probs would
 * add the bias up) and exp(0) is exactly 1. Float32 rows then stay within 1e-8 of the float64
 * reference, far inside the float32 contract (1e-6 absolute), for about half the arithmetic
 * per logit (measured: -27% time of the forward pass, AVX-512, V = 32000, 1 thread).
 */
DPO_INLINE double dpo_logps_exp_short(double d)
{
    const double log2e = 1.4426950408889634;
    const double ln2_hi = 6.93147180369123816490e-01;
    const double ln2_lo = 1.90821492927058770002e-10;
    const double shifter = DPO_ROUND_SHIFTER;
    double x = (d < -708.0) ? -708.0 : d;
    double t = x * log2e + shifter;
    double k_real = t - shifter;
    int64_t k = dpo_double_bits(t) - dpo_double_bits(shifter);
    double r = (x - k_real * ln2_hi) - k_real * ln2_lo;
    double r2 = r * r;
    double a0 = 0.5000000013457727 + r * 0.16666666681614256;
    double a1 = 0.04166646500604005 + r * 0.008333310934448869;
    double a2 = 0.0013933641031986701 + r * 0.00019890980869750327;
    double q = a0 + r2 * (a1 + r2 * a2);
    double p = 1.0 + (r + r2 * q);
    double e = p * dpo_bits_double((int64_t)((uint64_t)(k + 1023) << 52));
    return (d < -708.0) ? 0.0 : e;
}

/*
 * exp(d) for float d <= 0 in float arithmetic, for the gradient of float32 logits (16 lanes a
 * vector where the double exps have 8): the reduction of dpo_logps_exp_short in float (ln2_hi
 * has 16 significant bits, so k * ln2_hi is exact for the |k| <= 126 that occur) and
 * exp(r) = 1 + r + r^2 q(r), q of degree 4 interpolating (exp(r) - 1 - r) / r^2 at the 5
 * Chebyshev nodes of [-ln2/2, ln2/2] (mpmath, rounded to float). Within 1.05 float ulps
 * (8.5e-8 relative) of exp over a dense grid of [-87, 0], mean error 2e-10 relative (no bias);
 * below -87 (exp < 1.7e-38, under float's normal range) the result is 0. The gradient's
 * contract for float32 logits is 1e-6 absolute; this and the float product keep it within
 * ~3e-7 relative. Deterministic IEEE float operations: the same bits on every SIMD level.
 */
DPO_INLINE float dpo_logps_expf(float d)
{
    const float log2e = 1.442695f;
    const float ln2_hi = 0.693145751953125f;   /* 0x3f317200 */
    const float ln2_lo = 1.4286068e-06f;       /* ln2 - ln2_hi */
    const float shifter = 12582912.0f;         /* 1.5 * 2^23: adding it rounds to an integer */
    float x = (d < -87.0f) ? -87.0f : d;
    float t = x * log2e + shifter;
    float k_real = t - shifter;
    int32_t t_bits, shifter_bits;
    memcpy(&t_bits, &t, sizeof t_bits);
    memcpy(&shifter_bits, &shifter, sizeof shifter_bits);
    int32_t k = t_bits - shifter_bits; /* in [-126, 0] */
    float r = (x - k_real * ln2_hi) - k_real * ln2_lo;
    float r2 = r * r;
    float q = 0.5f + r * (0.16666578f + r * (0.041666556f + r * (0.008363173f
                                                                   + r * 0.0013926176f)));
    float p = 1.0f + (r + r2 * q);
    int32_t scale_bits = (int32_t)((uint32_t)(k + 127) << 23);
    float scale;
    memcpy(&scale, &scale_bits, sizeof scale);
    float e = p * scale;
    return (d < -87.0f) ? 0.0f : e;
}

/* lanes[j] += buf[i + j] over whole lanes of a block (n a multiple of DPO_LOGPS_LANES). */
DPO_INLINE void dpo_logps_lane_add(double *DPO_RESTRICT lanes, const double *DPO_RESTRICT buf,
                                   ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i += DPO_LOGPS_LANES)
        for (int j = 0; j < DPO_LOGPS_LANES; j++)
            lanes[j] += buf[i + j];
}

DPO_INLINE double dpo_logps_lane_total(const double *lanes)
{
    return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
           + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

/*
 * log(s) for a finite s >= 1 (here 1 <= s <= V). s = 2^k * u with u in [sqrt(2)/2, sqrt(2)),
 * log(s) = k*ln2 + log(u), log(u) from simd_math.h's fdlibm-style dpo_log1p_unit with
 * e = u - 1 (exact by Sterbenz's lemma, so its rounding correction is 0); ln2 is split as in
 * fdlibm so k*ln2_hi is exact. Within about 1 ulp; called once per row.
 */
DPO_INLINE double dpo_logps_log(double s)
{
    const double ln2_hi = 6.93147180369123816490e-01;
    const double ln2_lo = 1.90821492927058770002e-10;
    int64_t bits = dpo_double_bits(s);
    int64_t k = (bits >> 52) - 1023;
    double u = dpo_bits_double((bits & INT64_C(0x000fffffffffffff)) | INT64_C(0x3ff0000000000000));
    int upper = u > 1.4142135623730951;
    u = upper ? 0.5 * u : u;
    k += upper;
    double kd = (double)k;
    return kd * ln2_hi + (dpo_log1p_unit(u - 1.0, u, 1.0 / u) + kd * ln2_lo);
}

#endif /* DPO_LOGPS_MATH_H */
