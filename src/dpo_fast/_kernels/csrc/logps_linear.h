/*
 * The fused linear + log-softmax loops (dpo_fast.linear_sequence_logps), written once and
 * included by logps_simd.c after logps_row.h, once per element type, with the macros listed
 * there plus LOGPS_FOLD_FN and LOGPS_TILE_GRAD_FN (the names of the functions below).
 *
 * A tile is rows x n_cols logits of vocabulary columns [v0, v0 + n_cols), row i at
 * tile + i * ld: the product of some hidden rows and a slice of the weight, computed by BLAS
 * in the caller. The loops below add the bias in place (in the element type, the rounding
 * of `hidden @ weight.T + bias`), then either fold the tile into each row's running
 * statistics (forward) or turn it in place into the gradient of the logits (backward).
 *
 * Running statistics per row (DPO_LINEAR_STATE doubles at state + i * DPO_LINEAR_STATE),
 * relative to the running maximum m of z = x * inv_temperature:
 *   [0] m (-inf: no tile folded yet)   [1] s = sum exp(z - m)   [2] w = sum exp(z - m)(z - m)
 *   [3] q = sum exp(z - m)^2   [4] sum of x   [5] max x   [6] x at the label   [7] the first
 *   index of max x (a double: exact below 2^53).
 * A tile's own statistics come from LOGPS_STATS_FN (the row loop of sequence_logps, fixed
 * lanes), and are merged into the running ones with the online log-sum-exp rescaling
 *   M = max(m, m'),  s = s e^(m-M) + s' e^(m'-M),  w = e^(m-M) (w + s (m-M)) + ..., q = q e^2(m-M) + ...
 * Tiles are merged in vocabulary order and their boundaries are fixed by the caller, so the
 * result depends neither on the thread count nor on how many rows a tile holds.
 */

DPO_TARGET DPO_HIDDEN void LOGPS_FOLD_FN(const DpoLinearArgs *a, ptrdiff_t i0, ptrdiff_t i1)
{
    const ptrdiff_t n = a->n_cols;
    const double inv_t = a->inv_temperature;
    const LOGPS_T *DPO_RESTRICT bias = (const LOGPS_T *)a->bias;
    for (ptrdiff_t i = i0; i < i1; i++) {
        LOGPS_T *DPO_RESTRICT x = (LOGPS_T *)a->tile + i * a->ld;
        double *DPO_RESTRICT st_run = a->state + i * DPO_LINEAR_STATE;
        if (a->status[i] == DPO_LOGPS_NONFINITE)
            continue;
        if (bias != NULL) {
            DPO_LOOP_HINT
            for (ptrdiff_t j = 0; j < n; j++)
                x[j] = x[j] + bias[j];
        }
        const DpoLogpsRowStats st = LOGPS_STATS_FN(x, n, inv_t, a->want_extras, NULL);
        if (st.bad) {
            a->status[i] = DPO_LOGPS_NONFINITE;
            continue;
        }
        const ptrdiff_t label = (ptrdiff_t)a->labels[i] - a->v0;
        if (label >= 0 && label < n)
            st_run[6] = (double)x[label];
        const int first = !(st_run[0] >= -DBL_MAX); /* -inf: the row's first tile */
        if (first || st.xmax > st_run[5]) {
            /* The first index of the new maximum (the first maximal index over the whole row,
             * as numpy.argmax: an equal maximum in a later tile does not move it). */
            const LOGPS_T xmax = (LOGPS_T)st.xmax;
            ptrdiff_t j = 0;
            while (j < n && x[j] != xmax)
                j++;
            st_run[5] = st.xmax;
            st_run[7] = (double)(a->v0 + j);
        }
        if (first) {
            st_run[0] = st.m;
            st_run[1] = st.s;
            st_run[2] = st.w;
            st_run[3] = st.q;
            st_run[4] = st.xsum;
            continue;
        }
        const double m_old = st_run[0];
        const double m_new = (st.m > m_old) ? st.m : m_old;
        const double d_old = m_old - m_new, d_tile = st.m - m_new; /* both <= 0, one is 0 */
        const double f_old = LOGPS_EXP(d_old), f_tile = LOGPS_EXP(d_tile);
        const double s_old = st_run[1];
        st_run[0] = m_new;
        st_run[1] = s_old * f_old + st.s * f_tile;
        if (a->want_extras) {
            st_run[2] = f_old * (st_run[2] + s_old * d_old) + f_tile * (st.w + st.s * d_tile);
            st_run[3] = st_run[3] * (f_old * f_old) + st.q * (f_tile * f_tile);
            st_run[4] = st_run[4] + st.xsum;
        }
    }
}

DPO_TARGET DPO_HIDDEN void LOGPS_TILE_GRAD_FN(const DpoLinearArgs *a, ptrdiff_t i0, ptrdiff_t i1)
{
    const ptrdiff_t n = a->n_cols;
    const double inv_t = a->inv_temperature;
    const LOGPS_T *DPO_RESTRICT bias = (const LOGPS_T *)a->bias;
    for (ptrdiff_t i = i0; i < i1; i++) {
        LOGPS_T *DPO_RESTRICT x = (LOGPS_T *)a->tile + i * a->ld;
        if (bias != NULL) {
            DPO_LOOP_HINT
            for (ptrdiff_t j = 0; j < n; j++)
                x[j] = x[j] + bias[j];
        }
        /* d(z[label] - lse)/dx_j = (onehot_j - softmax_j) / temperature, times the row's
         * upstream weight: c = weight * inv_t. The clamp keeps softmax <= 1. */
        const double c = a->row_scale[i];
        const double lse = a->lse[i];
        const ptrdiff_t label = (ptrdiff_t)a->labels[i] - a->v0;
        double p_label = 0.0;
        if (label >= 0 && label < n) {
            const double d = (double)x[label] * inv_t - lse;
            p_label = LOGPS_EXP((d > 0.0) ? 0.0 : d);
        }
        LOGPS_GRAD_TERMS_FN(x, x, n, inv_t, lse, c);
        if (label >= 0 && label < n)
            x[label] = (LOGPS_T)(c * (1.0 - p_label));
    }
}
