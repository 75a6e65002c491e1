/*
 * The log-softmax row loops, written once. logps_simd.c (compiled once per SIMD level, see
 * simd.h) includes this file once per element type with these macros defined:
 *   LOGPS_T            element type of the logits and of the gradient (float or double)
 *   LOGPS_BITS         signed integer of the same width (int32_t / int64_t)
 *   LOGPS_SIGN_SHIFT   bit width - 1
 *   LOGPS_KEY_MIN      the smallest LOGPS_BITS (INT32_MIN / INT64_MIN)
 *   LOGPS_MAG_MASK     all bits but the sign
 *   LOGPS_EXP_MASK     the exponent field (all ones: NaN or infinity)
 *   LOGPS_EXP          exp(d) for d <= 0 in double: dpo_logps_exp for double logits, the
 *                      shorter dpo_logps_exp_short for float logits (logps_math.h)
 *   LOGPS_FLOAT_EXP    1 for float logits: the row sums at temperature 1 and the gradient's
 *                      softmax terms take the float exp (dpo_logps_expf, twice the lanes a
 *                      vector)
 *   LOGPS_GRAD_TERMS_FN  name of the gradient's row-block helper below
 *   LOGPS_STATS_FN, LOGPS_FWD_FN, LOGPS_BWD_FN   names of the functions to define
 * and simd.h's DPO_TARGET (function attribute) and DPO_LOOP_HINT (loop pragma) of the level.
 */

/*
 * Pass 1 (max, and the NaN/inf check) and pass 2 (sum of exp, in double) over one row; the
 * row is read twice, the second time from cache. The max is taken on integer keys (the float
 * bits with the magnitude flipped for negative numbers, which orders them like the values):
 * an integer max reduction vectorises freely, a floating-point one would not without
 * -ffast-math, and the max is exact either way. The exp pass is a plain map into a block
 * buffer followed by fixed-lane sums (logps_math.h). While it computes, the next row of the
 * same task (`next`, or NULL) is prefetched into L2, so that its pass 1 does not wait on
 * memory: pass 1 alone streams from DRAM no faster than pass 2 computes (measured: -17%
 * time per row, AVX-512, V = 32000 float32).
 */
DPO_INLINE DpoLogpsRowStats LOGPS_STATS_FN(const LOGPS_T *DPO_RESTRICT x, ptrdiff_t vocab,
                                           double inv_t, int want_extras, const LOGPS_T *next)
{
    DpoLogpsRowStats st;
    LOGPS_BITS key_max = LOGPS_KEY_MIN;
    LOGPS_BITS bad = 0;
    DPO_LOOP_HINT
    for (ptrdiff_t i = 0; i < vocab; i++) {
        LOGPS_BITS bits;
        memcpy(&bits, &x[i], sizeof bits);
        LOGPS_BITS key = bits ^ ((bits >> LOGPS_SIGN_SHIFT) & LOGPS_MAG_MASK);
        key_max = (key > key_max) ? key : key_max;
        bad |= (LOGPS_BITS)((bits & LOGPS_EXP_MASK) == LOGPS_EXP_MASK);
    }
    LOGPS_BITS max_bits = key_max ^ ((key_max >> LOGPS_SIGN_SHIFT) & LOGPS_MAG_MASK);
    LOGPS_T xmax;
    memcpy(&xmax, &max_bits, sizeof xmax);
    st.xmax = (double)xmax;
    st.m = st.xmax * inv_t;
    /* A tiny temperature can also overflow the scaled logits: reported like a NaN. */
    st.bad = bad != 0 || !(st.m <= DBL_MAX && st.m >= -DBL_MAX);
    st.s = st.w = st.q = st.xsum = st.log_s = 0.0;
    if (st.bad)
        return st;

    const double m = st.m;
    /* Float logits at temperature 1: m is the largest logit itself (a float), so z - m is one
     * float subtraction (<= 0, exact or within half a float ulp of its value) and exp runs in
     * float, twice the lanes of the double one (dpo_logps_expf: 1.05 float ulps); the sums
     * stay double. Token log-probs stay within ~4e-8 of float64; the terms' rounding is not
     * mean-zero over a row's narrow range of z - m, so a sequence's sum drifts by up to
     * ~3e-9 a token (bench/README-logps.md). */
    const int float_exp = LOGPS_FLOAT_EXP && inv_t == 1.0;
    const float m_f = (float)m;
    double s_lanes[DPO_LOGPS_LANES], w_lanes[DPO_LOGPS_LANES];
    double q_lanes[DPO_LOGPS_LANES], x_lanes[DPO_LOGPS_LANES];
    double ebuf[DPO_LOGPS_BLOCK], wbuf[DPO_LOGPS_BLOCK], qbuf[DPO_LOGPS_BLOCK],
        xbuf[DPO_LOGPS_BLOCK];
    for (int j = 0; j < DPO_LOGPS_LANES; j++)
        s_lanes[j] = w_lanes[j] = q_lanes[j] = x_lanes[j] = 0.0;
    for (ptrdiff_t start = 0; start < vocab; start += DPO_LOGPS_BLOCK) {
        const ptrdiff_t n = (vocab - start < DPO_LOGPS_BLOCK) ? vocab - start : DPO_LOGPS_BLOCK;
        const LOGPS_T *DPO_RESTRICT xb = x + start;
        if (next != NULL)
            for (ptrdiff_t i = 0; i < n; i += 64 / (ptrdiff_t)sizeof(LOGPS_T))
                DPO_PREFETCH(next + start + i);
        /* z - m <= 0 (rounding is monotone), so exp never overflows and the largest term is 1 */
        if (float_exp && want_extras) {
            /* As below, from the float exp (see float_exp). */
            DPO_LOOP_HINT
            for (ptrdiff_t i = 0; i < n; i++) {
                float d_f = (float)xb[i] - m_f;
                d_f = (d_f < -800.0f) ? -800.0f : d_f; /* x - m can overflow to -inf */
                const double e = (double)dpo_logps_expf(d_f);
                ebuf[i] = e;
                wbuf[i] = e * (double)d_f;
                qbuf[i] = e * e;
                xbuf[i] = (double)xb[i];
            }
        } else if (float_exp) {
            DPO_LOOP_HINT
            for (ptrdiff_t i = 0; i < n; i++)
                ebuf[i] = (double)dpo_logps_expf((float)xb[i] - m_f);
        } else if (want_extras) {
            /* Everything the optional outputs need, from the same exp: the entropy's
             * e * (z - m), WPO's e^2 (sum p^2 = sum e^2 / s^2) and the raw logit. One loop
             * for all of them keeps each value's arithmetic the same whichever are wanted. */
            DPO_LOOP_HINT
            for (ptrdiff_t i = 0; i < n; i++) {
                const double xd = (double)xb[i];
                double d = xd * inv_t - m;
                /* exp is exactly 0 below -708; the clamp keeps e * d at 0 (not NaN) when
                 * z = -inf, possible when a tiny temperature overflows a large logit. */
                d = (d < -800.0) ? -800.0 : d;
                double e = LOGPS_EXP(d);
                ebuf[i] = e;
                wbuf[i] = e * d;
                qbuf[i] = e * e;
                xbuf[i] = xd;
            }
        } else {
            DPO_LOOP_HINT
            for (ptrdiff_t i = 0; i < n; i++)
                ebuf[i] = LOGPS_EXP((double)xb[i] * inv_t - m);
        }
        /* Pad to whole lanes with +0.0, which leaves the (+0.0-started) sums unchanged. */
        const ptrdiff_t padded = (n + DPO_LOGPS_LANES - 1) / DPO_LOGPS_LANES * DPO_LOGPS_LANES;
        for (ptrdiff_t i = n; i < padded; i++)
            ebuf[i] = wbuf[i] = qbuf[i] = xbuf[i] = 0.0;
        dpo_logps_lane_add(s_lanes, ebuf, padded);
        if (want_extras) {
            dpo_logps_lane_add(w_lanes, wbuf, padded);
            dpo_logps_lane_add(q_lanes, qbuf, padded);
            dpo_logps_lane_add(x_lanes, xbuf, padded);
        }
    }
    st.s = dpo_logps_lane_total(s_lanes);
    st.w = dpo_logps_lane_total(w_lanes);
    st.q = dpo_logps_lane_total(q_lanes);
    st.xsum = dpo_logps_lane_total(x_lanes);
    st.log_s = dpo_logps_log(st.s);
    return st;
}

#ifndef LOGPS_ROW
/* The V logits of flat row r = b * n_t + t. */
#define LOGPS_ROW(args, r)                                                                   \
    ((const LOGPS_T *)(args)->logits + ((r) / (args)->n_t) * (args)->stride_b                \
     + ((r) % (args)->n_t) * (args)->stride_t)
#endif

DPO_TARGET DPO_HIDDEN void LOGPS_FWD_FN(const DpoLogpsArgs *args, const int64_t *rows,
                                           ptrdiff_t k0, ptrdiff_t k1)
{
    const ptrdiff_t vocab = args->vocab;
    const double inv_t = args->inv_temperature;
    const int want_entropy = args->entropy != NULL;
    const int want_extras = want_entropy || args->log_sum_p2 != NULL || args->logit_sum != NULL;
    for (ptrdiff_t k = k0; k < k1; k++) {
        const ptrdiff_t r = (ptrdiff_t)rows[k];
        const LOGPS_T *DPO_RESTRICT x = LOGPS_ROW(args, r);
        const LOGPS_T *next = (k + 1 < k1) ? LOGPS_ROW(args, (ptrdiff_t)rows[k + 1]) : NULL;
        const DpoLogpsRowStats st = LOGPS_STATS_FN(x, vocab, inv_t, want_extras, next);
        if (st.bad) {
            const double nan = dpo_bits_double(INT64_C(0x7ff8000000000000));
            args->token_logps[r] = args->logsumexp[r] = nan;
            if (want_entropy)
                args->entropy[r] = nan;
            if (args->log_sum_p2 != NULL)
                args->log_sum_p2[r] = nan;
            if (args->logit_sum != NULL)
                args->logit_sum[r] = nan;
            args->status[r] = DPO_LOGPS_NONFINITE;
            continue;
        }
        const ptrdiff_t label = (ptrdiff_t)args->labels[r];
        const LOGPS_T x_label = x[label];
        args->token_logps[r] = ((double)x_label * inv_t - st.m) - st.log_s;
        args->logsumexp[r] = st.m + st.log_s;
        if (want_entropy)
            args->entropy[r] = st.log_s - st.w / st.s; /* -w/s >= 0: no cancellation */
        /* log sum p^2 = log(sum e^2) - 2 log(s), e = exp(z - m): the sum holds the term 1,
         * so 1 <= q <= V and both logs are of numbers >= 1 (WPO, Zhou et al. 2024, Eq. 2). */
        if (args->log_sum_p2 != NULL)
            args->log_sum_p2[r] = dpo_logps_log(st.q) - 2.0 * st.log_s;
        if (args->logit_sum != NULL)
            args->logit_sum[r] = st.xsum;
        /* TRL's token accuracy compares argmax(logits) with the label; argmax is the first
         * maximal index (NumPy, PyTorch), so an earlier tie makes the label wrong. Only rows
         * whose label hits the max pay for the scan. */
        int argmax = (double)x_label == st.xmax;
        if (argmax) {
            const LOGPS_T xmax = (LOGPS_T)st.xmax;
            int earlier = 0;
            DPO_LOOP_HINT
            for (ptrdiff_t j = 0; j < label; j++)
                earlier |= x[j] == xmax;
            argmax = !earlier;
        }
        args->status[r] = argmax ? DPO_LOGPS_ARGMAX : DPO_LOGPS_NOT_ARGMAX;
    }
}

/*
 * out[i] = -(c * softmax(z)_i) = -(c * exp(x[i] * inv_t - lse)) for n logits: the gradient's
 * terms but the label's (the backward here and the linear head's tile gradient; out may be x,
 * written in place). The clamp keeps softmax <= 1 if a caller passes another lse than the
 * forward's. Float logits take float arithmetic (dpo_logps_expf, twice the lanes of double)
 * where c is well inside float's range: z - lse is formed in float too at temperature 1, with
 * lse split in two floats, (x - lse_hi) - lse_lo, each subtraction within half a float ulp of
 * |z - lse| (which moves exp by a relative 6e-8 |z - lse|; the terms that matter have
 * |z - lse| of a few units), and in double otherwise, where a large z at a small temperature
 * would lose the difference's digits in float. Elsewhere (double logits; a c or lse beyond
 * 1e30, e.g. a subnormal temperature) everything is double, rounded once.
 */
DPO_INLINE void LOGPS_GRAD_TERMS_FN(const LOGPS_T *x, LOGPS_T *out, ptrdiff_t n, double inv_t,
                                    double lse, double c)
{
#if LOGPS_FLOAT_EXP
    const double c_abs = (c < 0.0) ? -c : c;
    if (c_abs < 1e30 && c_abs > 1e-30) {
        const float c_f = (float)c;
        if (inv_t == 1.0 && lse < 1e30 && lse > -1e30) {
            const float lse_hi = (float)lse;
            const float lse_lo = (float)(lse - (double)lse_hi);
            DPO_LOOP_HINT
            for (ptrdiff_t i = 0; i < n; i++) {
                float d = ((float)x[i] - lse_hi) - lse_lo;
                out[i] = (LOGPS_T)(-(c_f * dpo_logps_expf((d > 0.0f) ? 0.0f : d)));
            }
        } else {
            DPO_LOOP_HINT
            for (ptrdiff_t i = 0; i < n; i++) {
                double d = (double)x[i] * inv_t - lse;
                out[i] = (LOGPS_T)(-(c_f * dpo_logps_expf((float)((d > 0.0) ? 0.0 : d))));
            }
        }
        return;
    }
#endif
    DPO_LOOP_HINT
    for (ptrdiff_t i = 0; i < n; i++) {
        double d = (double)x[i] * inv_t - lse;
        out[i] = (LOGPS_T)(-(c * LOGPS_EXP((d > 0.0) ? 0.0 : d)));
    }
}

DPO_TARGET DPO_HIDDEN void LOGPS_BWD_FN(const DpoLogpsArgs *args, ptrdiff_t r0, ptrdiff_t r1)
{
    const ptrdiff_t vocab = args->vocab;
    const double inv_t = args->inv_temperature;
    const int stream = args->grad_stream;
    for (ptrdiff_t r = r0; r < r1; r++) {
        LOGPS_T *DPO_RESTRICT g = (LOGPS_T *)args->grad + r * vocab;
        const double weight = args->row_weight[r];
        if (weight == 0.0) {
            if (!args->grad_zeroed && stream) {
                static const LOGPS_T zeros[DPO_LOGPS_BLOCK]; /* all +0.0 */
                for (ptrdiff_t start = 0; start < vocab; start += DPO_LOGPS_BLOCK) {
                    const ptrdiff_t n = (vocab - start < DPO_LOGPS_BLOCK) ? vocab - start
                                                                         : DPO_LOGPS_BLOCK;
                    DPO_STREAM_COPY(g + start, zeros, (size_t)n * sizeof(LOGPS_T));
                }
            } else if (!args->grad_zeroed) {
                memset(g, 0, (size_t)vocab * sizeof(LOGPS_T));
            }
            continue;
        }
        const LOGPS_T *DPO_RESTRICT x = LOGPS_ROW(args, r);
        double lse;
        if (args->lse_in != NULL) {
            lse = args->lse_in[r];
        } else {
            /* Without the forward's lse the row is read three times (max, sum, gradient),
             * all but the first from cache. */
            const LOGPS_T *next = (r + 1 < r1) ? LOGPS_ROW(args, r + 1) : NULL;
            const DpoLogpsRowStats st = LOGPS_STATS_FN(x, vocab, inv_t, 0, next);
            if (st.bad) {
                const LOGPS_T nan = (LOGPS_T)dpo_bits_double(INT64_C(0x7ff8000000000000));
                for (ptrdiff_t i = 0; i < vocab; i++)
                    g[i] = nan;
                args->status[r] = DPO_LOGPS_NONFINITE;
                continue;
            }
            lse = st.m + st.log_s;
        }
        /* d(z[label] - lse)/dx_i = (onehot_i - softmax_i) / temperature. z - lse <= 0 for
         * the forward's lse; the clamp keeps softmax <= 1 if a caller passes another. */
        const double c = weight * inv_t;
        const ptrdiff_t label = (ptrdiff_t)args->labels[r];
        const double d_label = (double)x[label] * inv_t - lse;
        const double p_label = LOGPS_EXP((d_label > 0.0) ? 0.0 : d_label);
        const LOGPS_T g_label = (LOGPS_T)(c * (1.0 - p_label));
        if (stream) {
            /* Block by block into an L1 buffer, then streamed out (simd.h): the same values,
             * without reading each gradient line from memory before it is overwritten. */
            LOGPS_T buf[DPO_LOGPS_BLOCK];
            for (ptrdiff_t start = 0; start < vocab; start += DPO_LOGPS_BLOCK) {
                const ptrdiff_t n = (vocab - start < DPO_LOGPS_BLOCK) ? vocab - start
                                                                     : DPO_LOGPS_BLOCK;
                LOGPS_GRAD_TERMS_FN(x + start, buf, n, inv_t, lse, c);
                if (label >= start && label < start + n)
                    buf[label - start] = g_label;
                DPO_STREAM_COPY(g + start, buf, (size_t)n * sizeof(LOGPS_T));
            }
            continue;
        }
        LOGPS_GRAD_TERMS_FN(x, g, vocab, inv_t, lse, c);
        g[label] = g_label;
    }
    if (stream)
        DPO_STREAM_FENCE();
}
