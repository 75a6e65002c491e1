/*
 * Correctly rounded sums of doubles: the number math.fsum returns, in one pass of integer
 * adds instead of Python's list of partials.
 *
 * Every finite double is an integer number of units of 2^-1074 (the smallest subnormal):
 * m * 2^s units, m < 2^53 the significand, s = max(biased exponent, 1) - 1 in [0, 2045]. The
 * accumulator holds the exact total as base-2^32 digits in int64 words (the idea of Radford
 * Neal's "small superaccumulator", arXiv:1505.05571; this is our own code): a value adds its
 * low 32 - (s mod 32) bits, shifted, to digit s / 32 and the rest (< 2^53) to the digit above.
 * A digit therefore grows by < 2^53 per value, so carries are propagated every
 * DPO_EXACT_CARRY_EVERY values (1024 * 2^53 = 2^63 would overflow; 512 leaves room for the
 * normalised 2^32 already there). Rounding the total once, half to even, gives the correctly
 * rounded sum whatever the order of the values.
 *
 * Non-finite values follow math.fsum: any NaN gives NaN; +inf and -inf together are an
 * error (DPO_EXACT_INF_CLASH); otherwise an infinity is the sum. A finite total beyond the
 * double range is an error too (DPO_EXACT_OVERFLOW; math.fsum raises OverflowError).
 */
#ifndef DPO_EXACT_SUM_H
#define DPO_EXACT_SUM_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* 2045 + 53 bits of one value, times up to 2^63 values: < 2^2162, 68 digits of 32 bits. */
#define DPO_EXACT_DIGITS 70
#define DPO_EXACT_CARRY_EVERY 512

enum { DPO_EXACT_OK = 0, DPO_EXACT_INF_CLASH = 1, DPO_EXACT_OVERFLOW = 2 };

typedef struct {
    int64_t digit[DPO_EXACT_DIGITS];
    int has_nan, has_pos_inf, has_neg_inf;
} DpoExactSum;

static inline void dpo_exact_init(DpoExactSum *acc)
{
    memset(acc, 0, sizeof *acc);
}

/* Each digit into [0, 2^32) but the top one, which keeps the sign. */
static inline void dpo_exact_carry(DpoExactSum *acc)
{
    for (int i = 0; i < DPO_EXACT_DIGITS - 1; i++) {
        int64_t carry = acc->digit[i] >> 32;          /* floor division (arithmetic shift) */
        acc->digit[i] -= (int64_t)((uint64_t)carry << 32);
        acc->digit[i + 1] += carry;
    }
}

/* A non-finite value: only its flag (NaN, +inf or -inf); dpo_exact_result applies them. */
static inline void dpo_exact_add_special(DpoExactSum *acc, double value)
{
    if (value != value)
        acc->has_nan = 1;
    else if (value < 0.0)
        acc->has_neg_inf = 1;
    else
        acc->has_pos_inf = 1;
}

/* The finite value of `bits` (biased exponent `biased` < 0x7ff) into the digits, branch-free:
 * the hot loop of the array sums below. */
static inline void dpo_exact_add_bits(int64_t *digit, uint64_t bits, uint64_t biased)
{
    uint64_t mantissa = (bits & ((UINT64_C(1) << 52) - 1)) | ((uint64_t)(biased != 0) << 52);
    uint64_t shift = biased - (biased != 0);
    uint64_t offset = shift & 31;
    int64_t low = (int64_t)((mantissa << (32 + offset)) >> 32);   /* < 2^32 */
    int64_t high = (int64_t)(mantissa >> (32 - offset));         /* < 2^53 */
    int64_t sign = -(int64_t)(bits >> 63);                        /* 0 or -1 */
    digit[shift >> 5] += (low ^ sign) - sign;
    digit[(shift >> 5) + 1] += (high ^ sign) - sign;
}

/* Adds x[0], x[stride], ... (n values) in blocks of DPO_EXACT_CARRY_EVERY values with no
 * per-value bookkeeping and a carry pass after each. Non-finite values are rare: a second
 * pass sets their flags. */
static inline void dpo_exact_add_array(DpoExactSum *acc, const double *x, ptrdiff_t stride,
                                       ptrdiff_t n)
{
    int non_finite = 0;
    for (ptrdiff_t start = 0; start < n; start += DPO_EXACT_CARRY_EVERY) {
        ptrdiff_t stop = n - start < DPO_EXACT_CARRY_EVERY ? n : start + DPO_EXACT_CARRY_EVERY;
        for (ptrdiff_t i = start; i < stop; i++) {
            uint64_t bits;
            memcpy(&bits, &x[i * stride], sizeof bits);
            uint64_t biased = (bits >> 52) & 0x7ff;
            if (biased == 0x7ff) {
                non_finite = 1;
                continue;
            }
            dpo_exact_add_bits(acc->digit, bits, biased);
        }
        dpo_exact_carry(acc);
    }
    if (non_finite)
        for (ptrdiff_t i = 0; i < n; i++) {
            double value = x[i * stride];
            if (!isfinite(value))
                dpo_exact_add_special(acc, value);
        }
}

/* Adds a[i] - b[i] (each difference rounded to double, as a float subtraction gives it) for
 * contiguous a, b of n values; returns 1 when every a[i] and b[i] was finite (a finite pair
 * may still give an infinite difference, which takes the flag path), else 0 (the total is
 * then incomplete). */
static inline int dpo_exact_add_differences(DpoExactSum *acc, const double *a, const double *b,
                                            ptrdiff_t n)
{
    const uint64_t exponent = UINT64_C(0x7ff0000000000000);
    for (ptrdiff_t start = 0; start < n; start += DPO_EXACT_CARRY_EVERY) {
        ptrdiff_t stop = n - start < DPO_EXACT_CARRY_EVERY ? n : start + DPO_EXACT_CARRY_EVERY;
        for (ptrdiff_t i = start; i < stop; i++) {
            uint64_t a_bits, b_bits, bits;
            memcpy(&a_bits, &a[i], sizeof a_bits);
            memcpy(&b_bits, &b[i], sizeof b_bits);
            if ((a_bits & exponent) == exponent || (b_bits & exponent) == exponent)
                return 0;
            double difference = a[i] - b[i];
            memcpy(&bits, &difference, sizeof bits);
            if ((bits & exponent) == exponent)
                dpo_exact_add_special(acc, difference);   /* overflowed: +-inf */
            else
                dpo_exact_add_bits(acc->digit, bits, (bits >> 52) & 0x7ff);
        }
        dpo_exact_carry(acc);
    }
    return 1;
}

/* The exact total of the finite values added, as DPO_EXACT_DIGITS 32-bit digits of a two's
 * complement integer in units of 2^-1074, least significant first (for a caller that keeps
 * the total exact, e.g. to merge it with others). */
static inline void dpo_exact_digits(DpoExactSum *acc, uint32_t *out)
{
    dpo_exact_carry(acc);
    for (int i = 0; i < DPO_EXACT_DIGITS; i++)
        out[i] = (uint32_t)acc->digit[i];
}

/* Bit `position` of the non-negative normalised digits. */
static inline unsigned dpo_exact_bit(const uint32_t *magnitude, int position)
{
    return (magnitude[position >> 5] >> (position & 31)) & 1u;
}

/* The total rounded once to the nearest double, ties to even; *status as in the header. */
static inline double dpo_exact_result(DpoExactSum *acc, int *status)
{
    *status = DPO_EXACT_OK;
    if (acc->has_nan)
        return NAN;
    if (acc->has_pos_inf && acc->has_neg_inf) {
        *status = DPO_EXACT_INF_CLASH;
        return NAN;
    }
    if (acc->has_pos_inf)
        return INFINITY;
    if (acc->has_neg_inf)
        return -INFINITY;
    dpo_exact_carry(acc);
    int negative = acc->digit[DPO_EXACT_DIGITS - 1] < 0;
    uint32_t magnitude[DPO_EXACT_DIGITS];
    /* Two's complement negation of the whole number when it is negative. */
    uint64_t borrow = 1;
    for (int i = 0; i < DPO_EXACT_DIGITS; i++) {
        uint32_t word = (uint32_t)acc->digit[i];
        if (negative) {
            uint64_t flipped = (uint64_t)(uint32_t)~word + borrow;
            word = (uint32_t)flipped;
            borrow = flipped >> 32;
        }
        magnitude[i] = word;
    }
    int top = DPO_EXACT_DIGITS - 1;
    while (top >= 0 && magnitude[top] == 0)
        top--;
    if (top < 0)
        return 0.0;  /* an exact zero is +0.0, as math.fsum gives for [-0.0, 0.0] and for [] */
    int length = 32 * top;
    for (uint32_t word = magnitude[top]; word != 0; word >>= 1)
        length++;
    double result;
    if (length <= 53) {
        /* Exact: an integer below 2^53 times 2^-1074 is a double (subnormal or normal). */
        uint64_t units = magnitude[0] | (top >= 1 ? (uint64_t)magnitude[1] << 32 : 0);
        result = ldexp((double)units, -1074);
    } else {
        /* The top 53 bits, then half to even on the bit below and the sticky rest. */
        uint64_t kept = 0;
        for (int bit = length - 1; bit >= length - 53; bit--)
            kept = (kept << 1) | dpo_exact_bit(magnitude, bit);
        int round_position = length - 54;
        unsigned round_bit = dpo_exact_bit(magnitude, round_position);
        int sticky = 0;
        for (int i = 0; i < (round_position >> 5) && !sticky; i++)
            sticky = magnitude[i] != 0;
        for (int bit = (round_position >> 5) << 5; bit < round_position && !sticky; bit++)
            sticky = dpo_exact_bit(magnitude, bit);
        int exponent = length - 53 - 1074;
        if (round_bit && (sticky || (kept & 1))) {
            kept++;
            if (kept == UINT64_C(1) << 53) {
                kept >>= 1;
                exponent++;
            }
        }
        /* A total of 2^1024 or more has length - 53 - 1074 >= 971 after rounding. */
        if (exponent > 1023 - 52) {
            *status = DPO_EXACT_OVERFLOW;
            return negative ? -INFINITY : INFINITY;
        }
        result = ldexp((double)kept, exponent);
    }
    return negative ? -result : result;
}

#endif
