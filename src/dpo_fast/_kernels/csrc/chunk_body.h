/*
 * The chunk loop, written once. pairwise_simd.c (compiled once per SIMD level, see simd.h)
 * includes this file once per element type with these macros defined:
 *   DPO_T           element type of inputs and outputs (float or double)
 *   DPO_T_IS_FLOAT  1 when DPO_T is float, else 0
 *   DPO_ZEROS       DPO_CHUNK zeros of DPO_T, read in place of a missing reference
 *   DPO_CHUNK_FN    name of the function to define (hidden visibility: pairwise.c calls it)
 *   DPO_GENERAL_FN  name of the general loop's static function (general_body.h)
 * and simd.h's DPO_TARGET (function attribute) and DPO_LOOP_HINT (loop pragma) of the level.
 * All arithmetic is double; outputs are rounded to DPO_T once.
 */

/* Rows computed into local buffers before their sums are taken; LANES partial sums per
 * quantity, row i of the chunk always landing in lane i % LANES, so every instruction set
 * (and the scalar loop) adds the same numbers in the same order. */
#ifndef DPO_ABS
#define DPO_ABS(x) ((x) < 0.0 ? -(x) : (x))
#endif
#ifndef DPO_BLOCK
#define DPO_BLOCK 256
#define DPO_LANES 8

/* A block's row terms (buf, m rows) into the lane sums, padding to whole lanes with zeros
 * (x + 0.0 == x for the +0.0-started sums); then the lanes into the chunk's sums, in a fixed
 * order. Shared by the plain and the general loop. */
#define DPO_ADD_BLOCK_TO_LANES                                                              \
    {                                                                                       \
        ptrdiff_t m_padded = (m + DPO_LANES - 1) / DPO_LANES * DPO_LANES;                   \
        for (int q = 0; q < DPO_NSUMS; q++)                                                 \
            for (ptrdiff_t i = m; i < m_padded; i++)                                        \
                buf[q][i] = 0.0;                                                            \
        for (int q = 0; q < DPO_NSUMS; q++)                                                 \
            for (ptrdiff_t i = 0; i < m_padded; i += DPO_LANES)                             \
                for (int j = 0; j < DPO_LANES; j++)                                         \
                    lanes[q][j] += buf[q][i + j];                                           \
    }
/* 0.0 for a token count in [1, inf), else NaN (NaN too): the fused loop's check of the
 * lengths, which lets the fast path skip NumPy's min and max passes over them. (Two selects
 * of one compare each: a compare of two compares would not vectorise.) */
DPO_INLINE double dpo_length_mark(double count)
{
    double finite_or_zero = (count < INFINITY) ? count : 0.0;
    return (finite_or_zero >= 1.0) ? 0.0 : NAN;
}
/* 0.0 for a log-prob below 0, else NaN (NaN too): orpo's check in the fused loop. */
DPO_INLINE double dpo_negative_mark(double logp)
{
    return (logp < 0.0) ? 0.0 : NAN;
}
#define DPO_LANES_TO_SUMS                                                                   \
    for (int q = 0; q < DPO_NSUMS; q++) {                                                   \
        const double *l = lanes[q];                                                         \
        sums[q] = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));       \
    }

/* A side array's (lengths, margins, weights) rows from the chunk's start: a converted one
 * (pairwise.c) holds the chunk's rows only and begins at row side_start. */
#define DPO_SIDE_ROWS(P) ((P) + (start - args->side_start))

/* The locals both chunk loops start from: the chunk's rows of every array (a missing
 * reference reads zeros, missing lengths are NULL; converted side arrays begin at the
 * chunk's row, side_start) and copies of the scalars. DPO_RESTRICT:
 * the Python layer guarantees outputs never overlap inputs or each other; it also lets the
 * vectoriser drop run-time alias checks it would otherwise give up on. Local copies of the
 * parameters: read through args inside the loop, they could alias the outputs. */
#define DPO_CHUNK_LOCALS                                                                    \
    const DPO_T *DPO_RESTRICT pc = (const DPO_T *)args->chosen + start;                     \
    const DPO_T *DPO_RESTRICT pr = (const DPO_T *)args->rejected + start;                   \
    const DPO_T *DPO_RESTRICT rc =                                                          \
        args->ref_chosen ? (const DPO_T *)args->ref_chosen + start : DPO_ZEROS;             \
    const DPO_T *DPO_RESTRICT rr =                                                          \
        args->ref_rejected ? (const DPO_T *)args->ref_rejected + start : DPO_ZEROS;         \
    const double *DPO_RESTRICT nc =                                                         \
        args->chosen_lengths ? DPO_SIDE_ROWS(args->chosen_lengths) : NULL;                  \
    const double *DPO_RESTRICT nr =                                                         \
        args->rejected_lengths ? DPO_SIDE_ROWS(args->rejected_lengths) : NULL;              \
    const double *DPO_RESTRICT gt =                                                         \
        args->gt_reward_margins ? DPO_SIDE_ROWS(args->gt_reward_margins) : NULL;            \
    DPO_T *DPO_RESTRICT out_loss = args->losses ? (DPO_T *)args->losses + start : NULL;     \
    DPO_T *DPO_RESTRICT out_chosen_reward =                                                 \
        args->chosen_rewards ? (DPO_T *)args->chosen_rewards + start : NULL;                \
    DPO_T *DPO_RESTRICT out_rejected_reward =                                               \
        args->rejected_rewards ? (DPO_T *)args->rejected_rewards + start : NULL;            \
    const int with_grad = args->grad_chosen != NULL;                                        \
    DPO_T *DPO_RESTRICT out_grad_chosen =                                                   \
        with_grad ? (DPO_T *)args->grad_chosen + start : NULL;                              \
    DPO_T *DPO_RESTRICT out_grad_rejected =                                                 \
        with_grad ? (DPO_T *)args->grad_rejected + start : NULL;                            \
    const DpoLossParams params = args->params;                                              \
    const double beta = params.beta;                                                        \
    const double beta4 = 4.0 * beta;                                                        \
    const double grad_divisor = args->grad_divisor;                                         \
    const double grad_offset = args->grad_chosen_offset;                                    \
    const double grad_pair_offset = args->grad_chosen_pair_offset;                          \
    const double gt_scale = params.gt_reward_scale;                                         \
    const int normalized_rewards = args->normalized_rewards;                                \
    (void)gt;                                                                               \
    (void)gt_scale;                                                                         \
    (void)grad_offset;                                                                      \
    (void)grad_pair_offset;

/* The block's per-pair outputs, indexed by the row's place in the block: the caller's arrays,
 * or, for an output the call did not ask for (NULL), SCRATCH (3 x the block size of DPO_T, on
 * the stack, in L1), written and never read: the loops stay the same, the memory traffic and
 * the page faults of an unwanted output are gone. */
#define DPO_BLOCK_OUTPUTS(SCRATCH)                                                          \
    DPO_T *DPO_RESTRICT out_loss_b = out_loss ? out_loss + block : (SCRATCH)[0];            \
    DPO_T *DPO_RESTRICT out_chosen_reward_b =                                               \
        out_chosen_reward ? out_chosen_reward + block : (SCRATCH)[1];                       \
    DPO_T *DPO_RESTRICT out_rejected_reward_b =                                             \
        out_rejected_reward ? out_rejected_reward + block : (SCRATCH)[2];

/* The KIND of a fused row: what it reads and checks, and how it finishes. */
#define DPO_ROW_RAW 0   /* raw log-ratios */
#define DPO_ROW_NORM 1  /* length-normalised ones; both lengths checked */
#define DPO_ROW_ORPO 2  /* the same, and the log-probs checked below 0 */
#define DPO_ROW_CONST 3 /* a batch constant (sft), with the chosen lengths checked */
#define DPO_ROW_GT 4    /* raw, and g = gt_reward_scale * the pair's margin, checked finite */
#define DPO_ROW_IS_NORM(KIND) ((KIND) == DPO_ROW_NORM || (KIND) == DPO_ROW_ORPO)
/* CONST and GT rows finish as the general loop's passes 2 and 3 do (general_body.h: the
 * chain factor through dpo_mul00, sums started at 0.0, sft's gradient offsets): those types
 * had only that loop before, and either loop gives their bits (dpo_mul0(w, d) * 0.25 would
 * not, nor d without the 0.0 + that drops a zero's sign). */
#define DPO_ROW_AS_GENERAL(KIND) ((KIND) >= DPO_ROW_CONST)

/* The KIND of the fused case for the call's loss type. */
DPO_INLINE int dpo_row_kind(const DpoChunkArgs *args)
{
    switch (args->loss_type) {
#define DPO_KIND_CASE(ID, PAIR_FN) case ID:
#define DPO_EACH_X DPO_KIND_CASE
        DPO_FOR_EACH_CONST_LOSS
        return DPO_ROW_CONST;
        DPO_FOR_EACH_FUSED_GT_LOSS
        return DPO_ROW_GT;
#undef DPO_EACH_X
#undef DPO_KIND_CASE
    default:
        if (args->chosen_lengths == NULL)
            return DPO_ROW_RAW;
        return (args->loss_type == DPO_LOSS_ORPO) ? DPO_ROW_ORPO : DPO_ROW_NORM;
    }
}
#endif

/* Loss-type lists, sft and f-divergences: DPO_GENERAL_FN. */
#include "general_body.h"
/* alphapo alone with alpha != 0 (its rewards and a plain vectorised pass): DPO_ALPHAPO_FN. */
#include "alphapo_body.h"

/* One row of KIND (DPO_ROW_*): inputs -> loss, rewards, gradients, and the row's terms of
 * the chunk sums. Near DBL_MAX, c, r or c - r can overflow although beta times them does not.
 * Such rows (HUGE true) use quarter-scaled log-ratios and 4*beta: x/4 is exact for normal x,
 * so the result is what the plain formula gives wherever nothing overflows; `scale` =
 * d(c)/d(pc) for the chain rule. The vectorised loop runs every row with HUGE = 0 and only
 * flags the rows that overflowed; a scalar fix-up loop then redoes those (a NaN row, possible
 * with check_finite=False, is flagged too and stays NaN). */
#define DPO_ROW_BODY(PAIR_FN, WITH_GRAD, HUGE, KIND, IN, OUT)                               \
    ptrdiff_t row = block + i;                                                              \
    double chosen = IN(pc, row, j);                                                         \
    double rejected = IN(pr, row, j);                                                       \
    double ref_chosen = IN(rc, row, j);                                                     \
    double ref_rejected = IN(rr, row, j);                                                   \
    const int huge = (HUGE);                                                                \
    double scale = huge ? 0.25 : 1.0;                                                       \
    double row_beta = huge ? beta4 : beta;                                                  \
    double c = scale * chosen - scale * ref_chosen;                                         \
    double r = scale * rejected - scale * ref_rejected;                                     \
    /* normalised: length-normalised log-ratios (the reciprocal is the chain factor). */    \
    const int norm = DPO_ROW_IS_NORM(KIND);                                                 \
    double inv_c = norm ? 1.0 / nc[row] : 1.0;                                              \
    double inv_r = norm ? 1.0 / nr[row] : 1.0;                                              \
    double x_c = norm ? c * inv_c : c;                                                      \
    double x_r = norm ? r * inv_r : r;                                                      \
    /* GT: the PAIR_GT functions' last argument (DPO_PAIR_CALL passes it) */                \
    double g = ((KIND) == DPO_ROW_GT) ? gt_scale * gt[row] : 0.0;                           \
    DpoPairLoss pl = DPO_PAIR_CALL(PAIR_FN, &params, row_beta, 1.0 / scale, x_c, x_r);      \
    double chosen_reward = row_beta * ((norm && normalized_rewards) ? x_c : c);             \
    double rejected_reward = row_beta * ((norm && normalized_rewards) ? x_r : r);           \
    /* Per-pair weights in both variants (ones stand in when none are given, and            \
     * dpo_mul0(1, v) is v, bit for bit): weights cost a multiply, not the general loop. */ \
    double weight = DPO_ROW_WEIGHT(row);                                                    \
    double value = dpo_mul0(weight, DPO_ROW_AS_GENERAL(KIND) ? 0.0 + pl.value : pl.value);  \
    /* The loss sum's term carries a NaN where a length is not in [1, inf) (normalised and  \
     * CONST rows; CONST: the chosen ones, or ones), for ORPO where a log-prob is not below \
     * 0, for GT where g is not finite: the fast path then hands the call to the general    \
     * one, whose checks name it. (value + 0.0 in a lane sum is exact: the lanes are never  \
     * -0.0.) */                                                                           \
    double length_marks = norm ? dpo_length_mark(nc[row]) + dpo_length_mark(nr[row]) : 0.0; \
    double loss_term =                                                                      \
        ((KIND) == DPO_ROW_RAW) ? value                                                     \
        : ((KIND) == DPO_ROW_CONST) ? value + dpo_length_mark(chosen_counts[row])           \
        : ((KIND) == DPO_ROW_GT) ? value + g * 0.0                                          \
        : value + (((KIND) == DPO_ROW_ORPO) ? length_marks + (dpo_negative_mark(chosen)     \
                                                              + dpo_negative_mark(rejected)) \
                                            : length_marks);                                \
    OUT(out_loss_b, i, j, value);                                                           \
    OUT(out_chosen_reward_b, i, j, chosen_reward);                                          \
    OUT(out_rejected_reward_b, i, j, rejected_reward);                                      \
    if (WITH_GRAD) {                                                                        \
        double d_c = norm ? pl.d_chosen * inv_c : pl.d_chosen;                              \
        double d_r = norm ? pl.d_rejected * inv_r : pl.d_rejected;                          \
        double g_c, g_r;                                                                    \
        if (DPO_ROW_AS_GENERAL(KIND)) {                                                     \
            g_c = dpo_mul0(weight, (0.0 + dpo_mul00(d_c, scale)) + grad_pair_offset)        \
                      / grad_divisor                                                        \
                  + grad_offset;                                                            \
            g_r = dpo_mul0(weight, 0.0 + dpo_mul00(d_r, scale)) / grad_divisor;             \
        } else {                                                                            \
            g_c = dpo_mul0(weight, d_c) * scale / grad_divisor;                             \
            g_r = dpo_mul0(weight, d_r) * scale / grad_divisor;                             \
        }                                                                                   \
        OUT(out_grad_chosen, row, j, g_c);                                                  \
        OUT(out_grad_rejected, row, j, g_r);                                                \
    }                                                                                       \
    (void)g;                                                                                \
    (void)0;

/* A row's weight: the caller's, or the ones that stand in for none; a loop over unweighted
 * rows redefines it as 1.0 around its expansion (dpo_mul0(1.0, v) folds to v: the same bits
 * without the load, the compare and the multiply). */
#define DPO_ROW_WEIGHT(ROW) pw[ROW]
/* The row's call of its loss function; the PAIR_GT cases redefine it around their expansion
 * to pass g as well. */
#define DPO_PAIR_CALL(PAIR_FN, ...) PAIR_FN(__VA_ARGS__)

/* The row's terms of the chunk sums, added to lane J (= the row's index in the chunk modulo
 * DPO_LANES: each lane adds the same rows in the same order on every instruction set). */
#define DPO_ROW_TO_LANES(J)                                                                 \
    lanes[DPO_SUM_LOSS][J] += loss_term;                                                    \
    lanes[DPO_SUM_CHOSEN_REWARD][J] += chosen_reward;                                       \
    lanes[DPO_SUM_REJECTED_REWARD][J] += rejected_reward;                                   \
    lanes[DPO_SUM_MARGIN][J] += chosen_reward - rejected_reward;                            \
    lanes[DPO_SUM_ACCURACY][J] += (chosen_reward > rejected_reward) ? 1.0 : 0.0;            \
    lanes[DPO_SUM_CHOSEN_LOGP][J] += chosen;                                                \
    lanes[DPO_SUM_REJECTED_LOGP][J] += rejected;

/* Where a row's inputs come from and its outputs go: the caller's arrays (DIRECT), or, in the
 * float instance's lane loop, double copies of the group's rows (STAGED, see below). */
#define DPO_IN_DIRECT(ARRAY, ROW, J) ((double)(ARRAY)[ROW])
#define DPO_OUT_DIRECT(ARRAY, INDEX, J, VALUE) ((ARRAY)[INDEX] = (DPO_T)(VALUE))
#define DPO_IN_STAGED(ARRAY, ROW, J) (ARRAY##_staged[J])
#define DPO_OUT_STAGED(ARRAY, INDEX, J, VALUE) (ARRAY##_staged[J] = (VALUE))

/* One group of DPO_LANES rows starting at i0, the loop over the lanes: the vectoriser maps it
 * onto whole vectors (one AVX-512 vector of doubles, two AVX2 ones, ...) and the row terms go
 * straight into the lane sums, with no per-row buffer. (c - r) * 0 is 0 on ordinary rows and
 * NaN where c - r overflowed (or a NaN came in): summed into flag lanes, it flags the block
 * without a scalar scan (GCC vectorises neither an OR-reduction of a compare nor the
 * unordered compare itself). */
#define DPO_LANE_LOOP(PAIR_FN, WITH_GRAD, KIND, IN, OUT)                                    \
    DPO_NO_UNROLL                                                                           \
    DPO_LOOP_HINT                                                                           \
    for (int j = 0; j < DPO_LANES; j++) {                                                   \
        const ptrdiff_t i = i0 + j;                                                         \
        DPO_ROW_BODY(PAIR_FN, WITH_GRAD, 0, KIND, IN, OUT)                                  \
        DPO_ROW_TO_LANES(j)                                                                 \
        flag_lanes[j] += (x_c - x_r) * 0.0;                                                 \
    }

#if DPO_T_IS_FLOAT
#ifndef DPO_WIDEN8
/* A group's 8 floats to 8 doubles and back (exact, and rounded once, as the casts are). As
 * plain loops, GCC converts them in halves (8 floats as two xmm -> ymm conversions, stored as
 * two ymm halves that the lane loop then reads back as one zmm: a failed store-to-load
 * forwarding each): ~50 more instructions per 8 rows and ~1.2 ns a row (float32 sigmoid 5.3
 * ns a row in cache against float64's 4.1). On AVX-512 one conversion instruction each way
 * (GCC 12 lowers even the vector extension's 8-wide conversion in halves); elsewhere GCC's
 * and Clang's vector extension (two per way on AVX2); the scalar level and other compilers
 * keep the loops. */
#if defined(__AVX512F__) && !DPO_ISA_SCALAR && DPO_LANES == 8
#include <immintrin.h>
#define DPO_WIDEN8(SRC, DST) _mm512_storeu_pd((DST), _mm512_cvtps_pd(_mm256_loadu_ps(SRC)));
#define DPO_NARROW8(SRC, DST) _mm256_storeu_ps((DST), _mm512_cvtpd_ps(_mm512_loadu_pd(SRC)));
#elif (defined(__GNUC__) || defined(__clang__)) && !DPO_ISA_SCALAR && DPO_LANES == 8
typedef float DpoFloat8 __attribute__((vector_size(8 * sizeof(float))));
typedef double DpoDouble8 __attribute__((vector_size(8 * sizeof(double))));
#define DPO_WIDEN8(SRC, DST)                                                                \
    {                                                                                       \
        DpoFloat8 narrow_;                                                                  \
        memcpy(&narrow_, (SRC), sizeof narrow_);                                            \
        DpoDouble8 wide_ = __builtin_convertvector(narrow_, DpoDouble8);                    \
        memcpy((DST), &wide_, sizeof wide_);                                                \
    }
#define DPO_NARROW8(SRC, DST)                                                               \
    {                                                                                       \
        DpoDouble8 wide_;                                                                   \
        memcpy(&wide_, (SRC), sizeof wide_);                                                \
        DpoFloat8 narrow_ = __builtin_convertvector(wide_, DpoFloat8);                      \
        memcpy((DST), &narrow_, sizeof narrow_);                                            \
    }
#else
#define DPO_WIDEN8(SRC, DST)                                                                \
    DPO_NO_UNROLL                                                                           \
    DPO_LOOP_HINT                                                                           \
    for (int k_ = 0; k_ < DPO_LANES; k_++)                                                  \
        (DST)[k_] = (double)(SRC)[k_];
#define DPO_NARROW8(SRC, DST)                                                               \
    DPO_NO_UNROLL                                                                           \
    DPO_LOOP_HINT                                                                           \
    for (int k_ = 0; k_ < DPO_LANES; k_++)                                                  \
        (DST)[k_] = (float)(SRC)[k_];
#endif
#endif
/* float: the group's inputs converted to double first and its outputs rounded to float after
 * (DPO_WIDEN8, DPO_NARROW8), so the lane loop holds doubles only. With the float loads and
 * stores inside it, GCC vectorises it in float-sized vectors (8 floats in a ymm register) and
 * so computes the doubles in halves (4 per ymm, with spills): 1.4x the float64 instance's
 * time where the float one should be the faster. Same values, same order: only the speed
 * changes. */
#define DPO_LANE_GROUP(PAIR_FN, WITH_GRAD, KIND)                                            \
    {                                                                                       \
        double pc_staged[DPO_LANES], pr_staged[DPO_LANES], rc_staged[DPO_LANES],            \
            rr_staged[DPO_LANES];                                                           \
        double out_loss_b_staged[DPO_LANES], out_chosen_reward_b_staged[DPO_LANES],         \
            out_rejected_reward_b_staged[DPO_LANES], out_grad_chosen_staged[DPO_LANES],     \
            out_grad_rejected_staged[DPO_LANES];                                            \
        const ptrdiff_t group = block + i0;                                                 \
        DPO_WIDEN8(pc + group, pc_staged)                                                   \
        DPO_WIDEN8(pr + group, pr_staged)                                                   \
        DPO_WIDEN8(rc + group, rc_staged)                                                   \
        DPO_WIDEN8(rr + group, rr_staged)                                                   \
        DPO_LANE_LOOP(PAIR_FN, WITH_GRAD, KIND, DPO_IN_STAGED, DPO_OUT_STAGED)              \
        DPO_NARROW8(out_loss_b_staged, out_loss_b + i0)                                     \
        DPO_NARROW8(out_chosen_reward_b_staged, out_chosen_reward_b + i0)                   \
        DPO_NARROW8(out_rejected_reward_b_staged, out_rejected_reward_b + i0)               \
        if (WITH_GRAD) {                                                                    \
            DPO_NARROW8(out_grad_chosen_staged, out_grad_chosen + group)                    \
            DPO_NARROW8(out_grad_rejected_staged, out_grad_rejected + group)                \
        }                                                                                   \
    }
#else
#define DPO_LANE_GROUP(PAIR_FN, WITH_GRAD, KIND)                                            \
    DPO_LANE_LOOP(PAIR_FN, WITH_GRAD, KIND, DPO_IN_DIRECT, DPO_OUT_DIRECT)
#endif

/* The block's rows: whole groups of DPO_LANES, then the last m % DPO_LANES one by one. */
#define DPO_ROW_LOOP(PAIR_FN, WITH_GRAD, KIND)                                              \
    {                                                                                       \
        const ptrdiff_t m_lanes = m / DPO_LANES * DPO_LANES;                                \
        for (ptrdiff_t i0 = 0; i0 < m_lanes; i0 += DPO_LANES) {                             \
            DPO_LANE_GROUP(PAIR_FN, WITH_GRAD, KIND)                                        \
        }                                                                                   \
        for (ptrdiff_t i = m_lanes; i < m; i++) {                                           \
            const int j = (int)(i - m_lanes);                                               \
            DPO_ROW_BODY(PAIR_FN, WITH_GRAD, 0, KIND, DPO_IN_DIRECT, DPO_OUT_DIRECT)        \
            DPO_ROW_TO_LANES(j)                                                             \
            flag_lanes[j] += (x_c - x_r) * 0.0;                                             \
        }                                                                                   \
    }

/* A flagged block again, row by row (rare: rows near DBL_MAX, or NaN), into the lane sums as
 * they were before the block: a row whose plain log-ratio difference is finite gives what the
 * vectorised loop gave, a flagged one is redone with HUGE = 1, and every row's terms go to
 * the same lane in the same order as there. One function for every loss type
 * (dpo_pair_by_type, dpo_pair_gt_by_type: general_body.h, call the type's function) and
 * every KIND of row, with the row body of the vectorised loops, so it computes what a case
 * of its own would: the scalar redo costs no code per case. */
#define DPO_FIXUP_FN DPO_CONCAT(DPO_CHUNK_FN, _fixup)
#define DPO_PAIR_OF_LOSS_TYPE(...)                                                          \
    ((kind == DPO_ROW_GT) ? dpo_pair_gt_by_type(loss_type, __VA_ARGS__, g)                  \
                          : dpo_pair_by_type(loss_type, __VA_ARGS__))
DPO_TARGET DPO_NOINLINE static void DPO_FIXUP_FN(const DpoChunkArgs *args, ptrdiff_t start,
                                                 ptrdiff_t block, ptrdiff_t m, int kind,
                                                 double (*lanes)[DPO_LANES])
{
    DPO_CHUNK_LOCALS
    const double *DPO_RESTRICT pw = args->weights ? DPO_SIDE_ROWS(args->weights) : dpo_ones_f64;
    const double *DPO_RESTRICT chosen_counts = nc ? nc : dpo_ones_f64;
    const int loss_type = args->loss_type;
    DPO_T out_scratch[3][DPO_BLOCK];
    DPO_BLOCK_OUTPUTS(out_scratch)
    for (ptrdiff_t i = 0; i < m; i++) {
        /* The vectorised loop's flag, recomputed: the plain normalised log-ratios. */
        const ptrdiff_t row = block + i;
        double plain_c = (double)pc[row] - (double)rc[row];
        double plain_r = (double)pr[row] - (double)rr[row];
        if (DPO_ROW_IS_NORM(kind)) {
            plain_c *= 1.0 / nc[row];
            plain_r *= 1.0 / nr[row];
        }
        const int flagged = (plain_c - plain_r) * 0.0 != 0.0;
        {
            DPO_ROW_BODY(DPO_PAIR_OF_LOSS_TYPE, with_grad, flagged, kind, DPO_IN_DIRECT,
                         DPO_OUT_DIRECT)
            DPO_ROW_TO_LANES(i % DPO_LANES)
        }
    }
}
#undef DPO_PAIR_OF_LOSS_TYPE

/* One switch case of the fused loop, its rows of KIND; per-pair weights (or ones) in all. */
#define DPO_LOSS_CASE_KIND(ID, PAIR_FN, KIND)                                               \
    case ID:                                                                                \
        if (with_grad) {                                                                    \
            DPO_ROW_LOOP(PAIR_FN, 1, KIND)                                                  \
        } else {                                                                            \
            DPO_ROW_LOOP(PAIR_FN, 0, KIND)                                                  \
        }                                                                                   \
        break;
#define DPO_LOSS_CASE(ID, PAIR_FN) DPO_LOSS_CASE_KIND(ID, PAIR_FN, DPO_ROW_RAW)
#define DPO_NORM_OF(ID) (((ID) == DPO_LOSS_ORPO) ? DPO_ROW_ORPO : DPO_ROW_NORM)
#define DPO_LOSS_CASE_NORMALIZED(ID, PAIR_FN) DPO_LOSS_CASE_KIND(ID, PAIR_FN, DPO_NORM_OF(ID))
#define DPO_LOSS_CASE_CONST(ID, PAIR_FN) DPO_LOSS_CASE_KIND(ID, PAIR_FN, DPO_ROW_CONST)
#define DPO_LOSS_CASE_GT(ID, PAIR_FN) DPO_LOSS_CASE_KIND(ID, PAIR_FN, DPO_ROW_GT)

DPO_TARGET DPO_HIDDEN void DPO_CHUNK_FN(const DpoChunkArgs *args, ptrdiff_t start, ptrdiff_t n,
                                   double *sums)
{
    if (args->general) {
        DPO_GENERAL_FN(args, start, n, sums);
        return;
    }
    if (args->loss_type == DPO_LOSS_ALPHAPO && args->chosen_lengths != NULL
        && args->params.alphapo_alpha != 0.0) {
        DPO_ALPHAPO_FN(args, start, n, sums);
        return;
    }
    DPO_CHUNK_LOCALS
    /* One loss type of raw log-ratios (DPO_LT_PLAIN), or of length-normalised ones (ipo,
     * sigmoid_norm, simpo), a batch constant (sft) or a PAIR_GT type, with or without
     * per-pair weights (ones stand in), runs fused here; lists and f-divergences take the
     * general loop (_pairwise.pyx's LossConfig picks). */
    const int kind = dpo_row_kind(args);
    const int normalized = DPO_ROW_IS_NORM(kind);
    const double *DPO_RESTRICT pw = args->weights ? DPO_SIDE_ROWS(args->weights) : dpo_ones_f64;
    /* the CONST rows' lengths to check: ones when the caller checked them (the general
     * path) */
    const double *DPO_RESTRICT chosen_counts = nc ? nc : dpo_ones_f64;
    const int unweighted_unsmoothed_sigmoid = kind == DPO_ROW_RAW && args->weights == NULL
                                              && args->loss_type == DPO_LOSS_SIGMOID
                                              && params.label_smoothing == 0.0;

    double lanes[DPO_NSUMS][DPO_LANES];
    /* The lanes as they were before the block (for a fix-up), and the block's overflow flags
     * (0, or NaN). */
    double saved[DPO_NSUMS][DPO_LANES];
    double flag_lanes[DPO_LANES];
    for (int q = 0; q < DPO_NSUMS; q++)
        for (int j = 0; j < DPO_LANES; j++)
            lanes[q][j] = 0.0;

    DPO_T out_scratch[3][DPO_BLOCK];
    for (ptrdiff_t block = 0; block < n; block += DPO_BLOCK) {
        ptrdiff_t m = (n - block < DPO_BLOCK) ? n - block : DPO_BLOCK;
        DPO_BLOCK_OUTPUTS(out_scratch)
        memcpy(saved, lanes, sizeof lanes);
        for (int j = 0; j < DPO_LANES; j++)
            flag_lanes[j] = 0.0;
        if (unweighted_unsmoothed_sigmoid) {
            /* sigmoid with neither weights nor label smoothing: its own case (~7% less time
             * a row than the general sigmoid case; the same bits). */
#undef DPO_ROW_WEIGHT
#define DPO_ROW_WEIGHT(ROW) 1.0
            if (with_grad) {
                DPO_ROW_LOOP(dpo_pair_sigmoid_unsmoothed, 1, 0)
            } else {
                DPO_ROW_LOOP(dpo_pair_sigmoid_unsmoothed, 0, 0)
            }
#undef DPO_ROW_WEIGHT
#define DPO_ROW_WEIGHT(ROW) pw[ROW]
        } else if (!normalized) {
            switch (args->loss_type) {
#define DPO_EACH_X DPO_LOSS_CASE
                DPO_FOR_EACH_PLAIN_LOSS
#undef DPO_EACH_X
#define DPO_EACH_X DPO_LOSS_CASE_CONST
                DPO_FOR_EACH_CONST_LOSS
#undef DPO_EACH_X
#undef DPO_PAIR_CALL
#define DPO_PAIR_CALL(PAIR_FN, ...) PAIR_FN(__VA_ARGS__, g)
#define DPO_EACH_X DPO_LOSS_CASE_GT
                DPO_FOR_EACH_FUSED_GT_LOSS
#undef DPO_EACH_X
#undef DPO_PAIR_CALL
#define DPO_PAIR_CALL(PAIR_FN, ...) PAIR_FN(__VA_ARGS__)
            default:
                break;
            }
        } else {
            switch (args->loss_type) {
#define DPO_EACH_X DPO_LOSS_CASE_NORMALIZED
                DPO_FOR_EACH_NORMALIZED_LOSS
#undef DPO_EACH_X
            default:
                break;
            }
        }
        /* Any row flagged? Then redo the block from the saved lanes (only then: GCC would
         * otherwise if-convert the fix-up loop and run the whole row body again, masked, for
         * every row). */
        double flag = 0.0;
        for (int j = 0; j < DPO_LANES; j++)
            flag += flag_lanes[j];
        if (flag != 0.0) {
            memcpy(lanes, saved, sizeof lanes);
            DPO_FIXUP_FN(args, start, block, m, kind, lanes);
        }
    }
    DPO_LANES_TO_SUMS
}

#undef DPO_FIXUP_FN
#undef DPO_ALPHAPO_FN
#undef DPO_LOSS_CASE
#undef DPO_LOSS_CASE_KIND
#undef DPO_LOSS_CASE_NORMALIZED
#undef DPO_LOSS_CASE_CONST
#undef DPO_LOSS_CASE_GT
#undef DPO_NORM_OF
#undef DPO_ROW_LOOP
#undef DPO_LANE_GROUP
#undef DPO_LANE_LOOP
#undef DPO_ROW_WEIGHT
#undef DPO_PAIR_CALL
