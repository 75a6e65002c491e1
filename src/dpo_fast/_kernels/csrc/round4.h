/*
 * round(x, 4) with the exact result of CPython's float.__round__, without its decimal
 * conversion in the common case.
 *
 * CPython rounds the exact binary value of x to 4 decimals (ties to even, via dtoa) and
 * converts the decimal k * 10^-4 back to the nearest double. For integer |k| < 2^53 that
 * double is exactly fl(k / 10000): IEEE division of two exact integers is correctly rounded.
 * So only k is needed: y = fl(x * 10^4) is within 2^-53 |y| of the exact product, so unless
 * y's fraction lies within a few ulps of one half, k is y rounded to the nearest integer.
 * Near-ties, |y| >= 2^51, infinities and NaN return 0, and the caller asks Python instead.
 * (An exact tie cannot occur: x * 10^4 = j + 1/2 would need 5^4 in the denominator of a
 * binary fraction.)
 */
#ifndef DPO_ROUND4_H
#define DPO_ROUND4_H

#include <math.h>

static inline int dpo_round4(double x, double *out)
{
    double y = x * 10000.0;
    double abs_y = fabs(y);
    if (!(abs_y < 2251799813685248.0)) /* 2^51; also false for NaN */
        return 0;
    double floor_y = floor(y);
    double frac = y - floor_y;
    /* Error bound of frac: 2^-53 |y| from the product plus 2^-53 from the subtraction;
     * the margin below is 4x that. */
    double margin = (abs_y + 1.0) * 4.440892098500626e-16; /* 2^-51 */
    if (fabs(frac - 0.5) <= margin)
        return 0;
    double k = (frac < 0.5) ? floor_y : floor_y + 1.0;
    /* copysign: round(-0.00001, 4) is -0.0 in Python. */
    *out = copysign(k / 10000.0, x);
    return 1;
}

#endif /* DPO_ROUND4_H */
