/*
 * Bit-identity harness of the compiled kernels (issue 19): runs the C entry points the
 * extension modules call (csrc/pairwise.h, csrc/logps_api.h, csrc/round4.h,
 * csrc/radix_sort.h) over a fixed grid of inputs generated here, and prints one line per case:
 *
 *     <case name> <FNV-1a 64 hash of every output byte>
 *
 * scripts/aarch64_check.py compiles this file with csrc/ twice, natively for x86-64 and with
 * aarch64-linux-gnu-gcc (run under qemu-aarch64-static), with the wheel build's flags
 * (setup.py's GCC_FLAGS, each kernel source once per SIMD level), runs it once per SIMD level
 * and compares the lines. Nothing here copies kernel code: the loss types come from the
 * registry the extension exports (dpo_loss_registry, generated from pair_losses.h's X-macro),
 * so a new row of DPO_LOSS_REGISTRY joins the grid by itself.
 *
 * Usage: harness LEVEL [quick] [dump CASE]
 *   LEVEL  scalar | baseline | avx2 | avx512 (clamped to what the CPU and build have; the
 *          harness prints "# level <name>" with the name it got)
 *   quick  the reduced grid of CI (fewer sizes; every loss type, modifier and dtype)
 *   dump   print every output value of the one case named CASE (hex bits, for the driver's
 *          report of the first differing element) instead of the hashes
 *
 * Inputs come from a fixed PRNG (splitmix64) and exact arithmetic only (no libm, no
 * conversions that could round differently), so both builds feed the kernels the same bits.
 * NaN outputs are hashed as one canonical NaN: x86-64 and aarch64 create NaNs with different
 * sign bits (x86's default NaN is negative, ARM's positive) and propagate payloads by other
 * rules; IEEE 754 leaves both open. Everything else is compared bit for bit.
 */
#include <float.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "logps_api.h"
#include "pairwise.h"
#include "radix_sort.h"
#include "round4.h"
#include "simd.h"

/* ------------------------------------------------------------------ PRNG, hashing, output */

static uint64_t rng_state;

static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/* Uniform in [0, 1): 53 random bits times 2^-53, exact. */
static double rng_unit(void)
{
    return (double)(rng_next() >> 11) * (1.0 / 9007199254740992.0);
}

static int64_t rng_int(int64_t n) /* [0, n) */
{
    return (int64_t)(rng_next() % (uint64_t)n);
}

static uint64_t fnv_string(const char *s)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * UINT64_C(0x100000001b3);
    return h;
}

static uint64_t hash_state;
static const char *dump_case; /* NULL: print hashes */
static int dumping;           /* the current case is dump_case */
static long n_cases;
static long n_values; /* output values hashed, over all cases */

static void hash_bytes(const void *data, size_t n)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++)
        hash_state = (hash_state ^ p[i]) * UINT64_C(0x100000001b3);
}

static void begin_case(const char *name)
{
    hash_state = UINT64_C(0xcbf29ce484222325);
    rng_state = fnv_string(name); /* every case its own inputs, the same on every build */
    dumping = dump_case != NULL && strcmp(dump_case, name) == 0;
    n_cases++;
}

static void end_case(const char *name)
{
    if (dump_case == NULL)
        printf("%s %016" PRIx64 "\n", name, hash_state);
}

/* Outputs: doubles, floats, bytes. A NaN is hashed (and dumped) as the canonical quiet NaN. */
static void out_f64(const char *what, const double *x, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        uint64_t bits;
        memcpy(&bits, &x[i], 8);
        if (x[i] != x[i])
            bits = UINT64_C(0x7ff8000000000000);
        hash_bytes(&bits, 8);
        n_values++;
        if (dumping)
            printf("%s[%td] %016" PRIx64 " %.17g\n", what, i, bits, x[i]);
    }
}

static void out_f32(const char *what, const float *x, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &x[i], 4);
        if (x[i] != x[i])
            bits = UINT32_C(0x7fc00000);
        hash_bytes(&bits, 4);
        n_values++;
        if (dumping)
            printf("%s[%td] %08" PRIx32 " %.9g\n", what, i, bits, (double)x[i]);
    }
}

static void out_typed(const char *what, const void *x, ptrdiff_t n, int f32)
{
    if (f32)
        out_f32(what, x, n);
    else
        out_f64(what, x, n);
}

static void out_u8(const char *what, const uint8_t *x, ptrdiff_t n)
{
    hash_bytes(x, (size_t)n);
    n_values += n;
    if (dumping)
        for (ptrdiff_t i = 0; i < n; i++)
            printf("%s[%td] %02x\n", what, i, x[i]);
}

static void out_i64(const char *what, const int64_t *x, ptrdiff_t n)
{
    hash_bytes(x, (size_t)n * 8); /* both targets are little-endian */
    n_values += n;
    if (dumping)
        for (ptrdiff_t i = 0; i < n; i++)
            printf("%s[%td] %" PRId64 "\n", what, i, x[i]);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL) {
        fprintf(stderr, "harness: out of memory\n");
        exit(2);
    }
    return p;
}

/* ------------------------------------------------------------------ pairwise inputs */

/* One log-probability of a row of the given kind (see pair_inputs). */
static double logp_value(int f32)
{
    return -(rng_unit() * (f32 ? 300.0 : 600.0)) - rng_unit();
}

/*
 * n rows of pc, pr, rc, rr (typed), lengths and weights (double). Row kinds, by a fixed
 * random draw: ordinary log-probabilities with references a few nats away (most rows);
 * margins large enough to saturate every logistic and exp (|beta z| in the hundreds to
 * thousands); exact ties and signed zeros; tiny and subnormal values (float64); rows near
 * the largest finite value whose log-ratios overflow (float64: the scalar fix-up of
 * chunk_body.h / general_body.h; float32: the same values are finite in double); integers.
 */
static void pair_inputs(void *pc, void *pr, void *rc, void *rr, double *nc, double *nr,
                        double *w, ptrdiff_t n, int f32)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        double v[4];
        int64_t kind = rng_int(100);
        if (kind < 60) {
            v[0] = logp_value(f32);
            v[1] = logp_value(f32);
            v[2] = v[0] + (rng_unit() - 0.5) * 12.0;
            v[3] = v[1] + (rng_unit() - 0.5) * 12.0;
        } else if (kind < 72) {
            double scale = (rng_int(2) ? 1e3 : 1e5) * (f32 ? 1.0 : 10.0);
            for (int k = 0; k < 4; k++)
                v[k] = (rng_unit() - 0.5) * scale;
        } else if (kind < 78) {
            double x = logp_value(f32);
            v[0] = v[1] = x;
            v[2] = v[3] = rng_int(2) ? -0.0 : 0.0;
            if (rng_int(2)) {
                v[0] = 0.0;
                v[1] = -0.0;
            }
        } else if (kind < 84) {
            double tiny = f32 ? 1e-30 : 1e-310;
            for (int k = 0; k < 4; k++)
                v[k] = (rng_unit() - 0.5) * tiny;
        } else if (kind < 90) {
            double big = f32 ? (double)FLT_MAX : DBL_MAX;
            for (int k = 0; k < 4; k++)
                v[k] = (rng_unit() < 0.5 ? -big : big) * (0.5 + 0.5 * rng_unit());
        } else if (kind < 93) {
            for (int k = 0; k < 4; k++)
                v[k] = (double)(rng_int(41) - 30);
        } else if (kind < 96) {
            /* Log-ratios whose f-divergence score a*x lies just below and above exp's
             * overflow (|a| of the grid's coefficients 1, 0.5, 0.75; both signs), with the
             * two scores close: the rows general_body.h redoes with the C library's exp,
             * expm1 and log, in the range where their results are finite and not trivial. */
            const double inv_a[] = {1.0, 2.0, 4.0 / 3.0};
            double a_inv = inv_a[rng_int(3)], sign = rng_int(2) ? 1.0 : -1.0;
            double c = sign * (690.0 + 22.0 * rng_unit()) * a_inv;
            double r = c - (rng_unit() - 0.5) * 4.0 * a_inv;
            v[2] = rng_int(2) ? logp_value(f32) : 0.0;
            v[3] = logp_value(f32);
            v[0] = v[2] + c;
            v[1] = v[3] + r;
        } else {
            /* A chosen log-prob far below its reference, a rejected one above (dpop's
             * penalty, bco's shifted sigmoids), moderate margins. */
            v[0] = logp_value(f32);
            v[2] = v[0] + 1.0 + rng_unit() * 40.0;
            v[1] = logp_value(f32);
            v[3] = v[1] - 1.0 - rng_unit() * 40.0;
        }
        if (f32) {
            ((float *)pc)[i] = (float)v[0];
            ((float *)pr)[i] = (float)v[1];
            ((float *)rc)[i] = (float)v[2];
            ((float *)rr)[i] = (float)v[3];
        } else {
            ((double *)pc)[i] = v[0];
            ((double *)pr)[i] = v[1];
            ((double *)rc)[i] = v[2];
            ((double *)rr)[i] = v[3];
        }
        nc[i] = (double)(1 + rng_int(rng_int(4) ? 600 : 3));
        nr[i] = (double)(1 + rng_int(rng_int(4) ? 600 : 3));
        w[i] = rng_int(8) ? rng_unit() * 2.0 : 0.0;
    }
}

/* ------------------------------------------------------------------ pairwise cases */

/* What init_args (_pairwise.pyx) sets before a call: every field zero, then the defaults of a
 * plain sigmoid call and the parameters. The constants come from the kernels' own
 * simd_math.h functions, as there. */
static void init_args(DpoChunkArgs *args, double beta, double label_smoothing,
                      double discopop_tau)
{
    memset(args, 0, sizeof *args);
    args->grad_divisor = 1.0;
    args->loss_type = DPO_LOSS_SIGMOID;
    args->params.beta = beta;
    args->params.label_smoothing = label_smoothing;
    args->params.discopop_tau = discopop_tau;
    if (label_smoothing > 0.0) {
        args->params.exo_log1m_eps = dpo_log1m(label_smoothing);
        args->params.exo_log_eps = dpo_log_pos(label_smoothing);
    }
    args->params.discopop_neg_inf_arg =
        discopop_tau < 1.0 ? -INFINITY : (discopop_tau > 1.0 ? INFINITY : 0.0);
    args->divergence = DPO_DIV_IDENTITY;
}

/* run_loss (_pairwise.pyx) on one thread: one chunk straight into the totals, several
 * chunks into partial sums combined in the fixed order (the threads change only which core
 * computes a chunk). */
static void run_loss(const DpoChunkArgs *args, ptrdiff_t n, int f32, double *totals)
{
    ptrdiff_t n_chunks = (n + DPO_CHUNK - 1) / DPO_CHUNK;
    void (*chunk)(const DpoChunkArgs *, ptrdiff_t, ptrdiff_t, double *) =
        f32 ? dpo_chunk_f32 : dpo_chunk_f64;
    if (n_chunks == 1) {
        chunk(args, 0, n, totals);
        return;
    }
    double *partials = xmalloc((size_t)n_chunks * DPO_NSUMS * sizeof(double));
    for (ptrdiff_t c = 0; c < n_chunks; c++) {
        ptrdiff_t start = c * DPO_CHUNK;
        chunk(args, start, n - start < DPO_CHUNK ? n - start : DPO_CHUNK,
              &partials[c * DPO_NSUMS]);
    }
    dpo_combine_sums(partials, n_chunks, totals);
    free(partials);
}

enum { IN_REF = 1, IN_LENGTHS = 2, IN_WEIGHTS = 4, IN_GRAD = 8 };

/* One pairwise case: inputs for n rows, the call, every output hashed. */
static void pair_case(const char *name, const DpoChunkArgs *config, ptrdiff_t n, int f32,
                      int inputs)
{
    begin_case(name);
    size_t sz = f32 ? sizeof(float) : sizeof(double);
    void *pc = xmalloc(n * sz), *pr = xmalloc(n * sz), *rc = xmalloc(n * sz),
         *rr = xmalloc(n * sz);
    double *nc = xmalloc(n * sizeof(double)), *nr = xmalloc(n * sizeof(double)),
           *w = xmalloc(n * sizeof(double));
    void *loss = xmalloc(n * sz), *cr = xmalloc(n * sz), *rj = xmalloc(n * sz),
         *gc = xmalloc(n * sz), *gr = xmalloc(n * sz);
    pair_inputs(pc, pr, rc, rr, nc, nr, w, n, f32);
    /* Ground-truth reward margins for the PAIR_GT types (rpo_*; the others never read them):
     * moderate values of both signs, a few zeros. */
    double *gt = xmalloc(n * sizeof(double));
    for (ptrdiff_t i = 0; i < n; i++)
        gt[i] = rng_int(10) ? (rng_unit() - 0.5) * 12.0 : 0.0;
    DpoChunkArgs args = *config;
    args.gt_reward_margins = gt;
    args.chosen = pc;
    args.rejected = pr;
    args.ref_chosen = (inputs & IN_REF) ? rc : NULL;
    args.ref_rejected = (inputs & IN_REF) ? rr : NULL;
    args.chosen_lengths = (inputs & IN_LENGTHS) ? nc : NULL;
    args.rejected_lengths = (inputs & IN_LENGTHS) ? nr : NULL;
    args.weights = (inputs & IN_WEIGHTS) ? w : NULL;
    args.losses = loss;
    args.chosen_rewards = cr;
    args.rejected_rewards = rj;
    args.grad_chosen = (inputs & IN_GRAD) ? gc : NULL;
    args.grad_rejected = (inputs & IN_GRAD) ? gr : NULL;
    double totals[DPO_NSUMS];
    run_loss(&args, n, f32, totals);
    out_typed("losses", loss, n, f32);
    out_typed("chosen_rewards", cr, n, f32);
    out_typed("rejected_rewards", rj, n, f32);
    if (inputs & IN_GRAD) {
        out_typed("grad_chosen", gc, n, f32);
        out_typed("grad_rejected", gr, n, f32);
    }
    out_f64("sums", totals, DPO_NSUMS);
    end_case(name);
    free(pc), free(pr), free(rc), free(rr), free(nc), free(nr), free(w), free(gt);
    free(loss), free(cr), free(rj), free(gc), free(gr);
}

/* The parameters of a loss type in the grid: label smoothing inside its registry bound
 * (a positive one where the type needs it) and the other modifiers at non-default values. */
static void type_args(DpoChunkArgs *args, const DpoLossInfo *info, int smoothing_variant,
                      double beta)
{
    double smoothing = 0.0;
    if (info->smoothing_max > 0.0
        && (smoothing_variant || (info->flags & DPO_LT_SMOOTHING_POSITIVE)))
        smoothing = info->smoothing_max * (smoothing_variant ? 0.3 : 0.125);
    init_args(args, beta, smoothing, smoothing_variant ? 1.75 : 0.05);
    args->params.simpo_gamma = smoothing_variant ? 1.25 : 0.5;
    args->params.sft_value = 1.2345678901234567;
    args->params.dpop_lambda = smoothing_variant ? 5.0 : 50.0;
    args->params.bco_delta = smoothing_variant ? -0.75 : 0.3;
    args->params.gt_reward_scale = smoothing_variant ? 0.5 : 1.0;
    /* AlphaPO's shape where the type has it (0 would be SimPO), with the constants
     * _pairwise.pyx's LossConfig derives from it. */
    if (info->id == DPO_LOSS_ALPHAPO) {
        double alpha = smoothing_variant ? -0.5 : 0.25;
        args->params.alphapo_alpha = alpha;
        args->params.alphapo_log_beta = dpo_log_pos(beta);
        args->params.alphapo_log_scale = args->params.alphapo_log_beta
                                         - dpo_log_pos(alpha < 0.0 ? -alpha : alpha);
    }
}

static const ptrdiff_t SIZES_FULL[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63,
                                       64, 65, 127, 128, 129, 255, 256, 257, 1000, 8191, 8192,
                                       8193, 3 * 8192 + 5};
static const ptrdiff_t SIZES_QUICK[] = {1, 3, 8, 17, 33, 129, 257, 8193};
/* The sizes of the cases that sweep a modifier (not the row-count edges). */
static const ptrdiff_t SIZES_MODIFIER[] = {7, 300};

static int quick;

#define FOR_EACH_SIZE(SIZE_VAR, BODY)                                                       \
    {                                                                                       \
        const ptrdiff_t *sizes_ = quick ? SIZES_QUICK : SIZES_FULL;                         \
        size_t n_sizes_ = quick ? sizeof SIZES_QUICK / sizeof *SIZES_QUICK                  \
                                : sizeof SIZES_FULL / sizeof *SIZES_FULL;                   \
        for (size_t s_ = 0; s_ < n_sizes_; s_++) {                                          \
            ptrdiff_t SIZE_VAR = sizes_[s_];                                                \
            BODY                                                                            \
        }                                                                                   \
    }

static const char *const DIV_NAMES[] = {"identity", "exp", "js"};

static void pairwise_grid(void)
{
    char name[256];
    /* 1. The fused loop, raw log-ratios (chunk_body.h): every type with a plain case. */
    for (int t = 0; t < DPO_N_LOSS_TYPES; t++) {
        const DpoLossInfo *info = &dpo_loss_registry[t];
        if (!(info->flags & DPO_LT_PLAIN))
            continue;
        for (int f32 = 0; f32 < 2; f32++)
            for (int grad = 0; grad < 2; grad++)
                for (int ref = 0; ref < 2; ref++) {
                    if (ref && (info->flags & DPO_LT_REFERENCE_FREE))
                        continue;
                    DpoChunkArgs args;
                    type_args(&args, info, 0, 0.1);
                    args.loss_type = info->id;
                    int inputs = (ref ? IN_REF : 0) | (grad ? IN_GRAD : 0);
                    FOR_EACH_SIZE(n, {
                        snprintf(name, sizeof name, "plain/%s/%s/%s/%s/n=%td", info->name,
                                 f32 ? "f32" : "f64", grad ? "grad" : "nograd",
                                 ref ? "ref" : "noref", n);
                        pair_case(name, &args, n, f32, inputs);
                    })
                    /* Modifiers: other parameter values, other betas, a mean's divisor. */
                    for (int variant = 0; variant < 3; variant++) {
                        const double betas[] = {0.1, 2.5, 1e-3};
                        type_args(&args, info, variant > 0, betas[variant]);
                        args.loss_type = info->id;
                        args.grad_divisor = variant == 2 ? 300.0 : 1.0;
                        for (size_t s = 0; s < 2; s++) {
                            snprintf(name, sizeof name, "plain-mod%d/%s/%s/%s/%s/n=%td",
                                     variant, info->name, f32 ? "f32" : "f64",
                                     grad ? "grad" : "nograd", ref ? "ref" : "noref",
                                     SIZES_MODIFIER[s]);
                            pair_case(name, &args, SIZES_MODIFIER[s], f32, inputs);
                        }
                    }
                }
    }
    /* 1b. The fused cases with the general loop's bits (sft, rpo_sq: chunk_body.h's CONST
     * and GT rows), with and without pair weights, without and with sft's gradient offsets. */
    for (int t = 0; t < DPO_N_LOSS_TYPES; t++) {
        const DpoLossInfo *info = &dpo_loss_registry[t];
        if (!(info->flags & DPO_LT_FUSED_AS_GENERAL))
            continue;
        for (int f32 = 0; f32 < 2; f32++)
            for (int grad = 0; grad < 2; grad++)
                for (int extra = 0; extra < 3; extra++) {
                    /* extra 0: alone; 1: pair weights; 2: the offsets and a mean's divisor */
                    DpoChunkArgs args;
                    type_args(&args, info, extra == 1, 0.1);
                    args.loss_type = info->id;
                    args.params.sft_value = -0.8125;
                    args.params.gt_reward_scale = extra == 1 ? -1.5 : 1.0;
                    if (extra == 2) {
                        args.grad_chosen_offset = -0.0625;
                        args.grad_chosen_pair_offset = 0.375;
                        args.grad_divisor = 257.0;
                    }
                    int inputs = IN_REF | (grad ? IN_GRAD : 0) | (extra == 1 ? IN_WEIGHTS : 0);
                    FOR_EACH_SIZE(n, {
                        if (extra && n > 300)
                            continue;
                        snprintf(name, sizeof name, "fused-as-general/%s/%s/%s/extra%d/n=%td",
                                 info->name, f32 ? "f32" : "f64", grad ? "grad" : "nograd",
                                 extra, n);
                        pair_case(name, &args, n, f32, inputs);
                    })
                }
    }
    /* 2. The fused loop over length-normalised log-ratios, with and without pair weights. */
    for (int t = 0; t < DPO_N_LOSS_TYPES; t++) {
        const DpoLossInfo *info = &dpo_loss_registry[t];
        if (!(info->flags & DPO_LT_NORMALIZED))
            continue;
        for (int f32 = 0; f32 < 2; f32++)
            for (int grad = 0; grad < 2; grad++)
                for (int weighted = 0; weighted < 2; weighted++) {
                    int ref = !(info->flags & DPO_LT_REFERENCE_FREE);
                    int inputs = IN_LENGTHS | (ref ? IN_REF : 0) | (grad ? IN_GRAD : 0)
                                 | (weighted ? IN_WEIGHTS : 0);
                    for (int variant = 0; variant < 2; variant++) {
                        DpoChunkArgs args;
                        type_args(&args, info, variant, variant ? 2.5 : 0.1);
                        args.loss_type = info->id;
                        args.normalized_rewards = (info->flags & DPO_LT_NORMALIZED_REWARDS) != 0;
                        FOR_EACH_SIZE(n, {
                            if (variant && n > 300)
                                continue;
                            snprintf(name, sizeof name, "normalized%d/%s/%s/%s/%s/n=%td",
                                     variant, info->name, f32 ? "f32" : "f64",
                                     grad ? "grad" : "nograd",
                                     weighted ? "weights" : "noweights", n);
                            pair_case(name, &args, n, f32, inputs);
                        })
                    }
                }
    }
    /* 3. The general loop (general_body.h): each type as a weighted term, raw and (where it
     * has one) normalised, under each f-divergence the type takes, with and without pair
     * weights, with a batch-constant term (sft) added, and every type in one list. */
    int const_type = -1;
    for (int t = 0; t < DPO_N_LOSS_TYPES; t++)
        if (dpo_loss_registry[t].flags & DPO_LT_BATCH_CONSTANT)
            const_type = t;
    struct {
        int div;
        double coef;
    } divs[] = {{DPO_DIV_IDENTITY, 0.0}, {DPO_DIV_EXP, -1.0}, {DPO_DIV_EXP, -0.5},
                {DPO_DIV_EXP, 0.75}, {DPO_DIV_JS, 0.0}};
    for (int t = 0; t < DPO_N_LOSS_TYPES; t++) {
        const DpoLossInfo *info = &dpo_loss_registry[t];
        if (info->flags & (DPO_LT_SORTED | DPO_LT_BATCH_CONSTANT))
            continue;
        /* (PAIR_GT types run only here, over the raw log-ratios.) */
        int has_raw = (info->flags & (DPO_LT_PLAIN | DPO_LT_GT_REWARDS)) != 0;
        int has_norm = (info->flags & DPO_LT_NORMALIZED) != 0;
        for (int norm = 0; norm < 2; norm++) {
            if ((norm && !has_norm) || (!norm && !has_raw))
                continue;
            for (size_t d = 0; d < sizeof divs / sizeof *divs; d++) {
                if (divs[d].div != DPO_DIV_IDENTITY && !(info->flags & DPO_LT_DIVERGENCE))
                    continue;
                for (int f32 = 0; f32 < 2; f32++)
                    for (int grad = 0; grad < 2; grad++)
                        for (int extra = 0; extra < 3; extra++) {
                            /* extra 0: the term alone with weight 0.7; 1: pair weights;
                             * 2: + the batch constant with sft's gradient offsets. */
                            if (extra == 2 && const_type < 0)
                                continue;
                            DpoChunkArgs args;
                            type_args(&args, info, extra == 1, 0.1);
                            args.general = 1;
                            args.n_terms = 1;
                            args.term_types[0] = info->id;
                            args.term_normalized[0] = norm;
                            args.term_weights[0] = 0.7;
                            args.divergence = divs[d].div;
                            args.divergence_coef = divs[d].coef;
                            args.normalized_rewards =
                                norm && (info->flags & DPO_LT_NORMALIZED_REWARDS);
                            if (extra == 2) {
                                args.n_terms = 2;
                                args.term_types[1] = const_type;
                                args.term_weights[1] = 1.5;
                                args.grad_chosen_offset = -0.0625;
                                args.grad_chosen_pair_offset = 0.375;
                                args.grad_divisor = 257.0;
                            }
                            int ref = !(info->flags & DPO_LT_REFERENCE_FREE);
                            int inputs = (ref ? IN_REF : 0) | (grad ? IN_GRAD : 0)
                                         | ((norm || args.normalized_rewards) ? IN_LENGTHS : 0)
                                         | (extra == 1 ? IN_WEIGHTS : 0);
                            FOR_EACH_SIZE(n, {
                                if (extra && n > 300)
                                    continue;
                                snprintf(name, sizeof name,
                                         "general/%s/%s/%s%g/%s/%s/extra%d/n=%td", info->name,
                                         norm ? "norm" : "raw", DIV_NAMES[divs[d].div],
                                         divs[d].coef, f32 ? "f32" : "f64",
                                         grad ? "grad" : "nograd", extra, n);
                                pair_case(name, &args, n, f32, inputs);
                            })
                        }
            }
        }
    }
    /* Every type in lists of at most DPO_MAX_TERMS terms (the normalised variant where a type
     * has one, alternately), references given, lengths and weights. */
    for (int f32 = 0; f32 < 2; f32++)
        for (int grad = 0; grad < 2; grad++) {
            int list = 0;
            DpoChunkArgs args;
            init_args(&args, 0.1, 0.0, 0.05);
            for (int t = 0; t <= DPO_N_LOSS_TYPES; t++) {
                const DpoLossInfo *info = t < DPO_N_LOSS_TYPES ? &dpo_loss_registry[t] : NULL;
                if (info != NULL) {
                    if ((info->flags & (DPO_LT_SORTED | DPO_LT_REFERENCE_FREE))
                        || (info->flags & DPO_LT_SMOOTHING_POSITIVE))
                        continue;
                    int k = args.n_terms++;
                    args.general = 1;
                    args.term_types[k] = info->id;
                    args.term_normalized[k] =
                        (info->flags & DPO_LT_NORMALIZED)
                        && (!(info->flags & DPO_LT_PLAIN) || (k % 2));
                    args.term_weights[k] = 0.25 + 0.125 * k;
                    args.params.sft_value = -2.5;
                    args.params.dpop_lambda = 50.0;
                    args.params.simpo_gamma = 0.5;
                }
                if (args.n_terms > 0 && (info == NULL || args.n_terms == DPO_MAX_TERMS)) {
                    const ptrdiff_t sizes[] = {5, 129, 8193};
                    for (int s = 0; s < 3; s++) {
                        snprintf(name, sizeof name, "list%d/%s/%s/n=%td", list,
                                 f32 ? "f32" : "f64", grad ? "grad" : "nograd", sizes[s]);
                        pair_case(name, &args, sizes[s], f32,
                                  IN_REF | IN_LENGTHS | IN_WEIGHTS | (grad ? IN_GRAD : 0));
                    }
                    list++;
                    init_args(&args, 0.1, 0.0, 0.05);
                }
            }
        }
}

/* ------------------------------------------------------------------ sorted types, rounding */

/* _sort.pyx's sorted_differences on one thread: a dpo_radix_job filled as it fills it (the
 * chunks by length alone, as there) and dpo_radix_sort_team run outside any parallel region.
 * Returns the sorted values and the stable order. */
static void radix_sort_1t(const double *values, ptrdiff_t n, double *sorted, int64_t *order)
{
    const ptrdiff_t chunk_length = 65536; /* _sort.pyx's CHUNK_LENGTH */
    dpo_radix_job *job = calloc(1, sizeof *job);
    uint64_t *keys = xmalloc(n * 8), *scratch = xmalloc(n * 12);
    uint32_t *index = xmalloc(n * 4);
    if (job == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    ptrdiff_t chunks = n / chunk_length;
    chunks = chunks < 1 ? 1 : chunks > DPO_RADIX_MAX_CHUNKS ? DPO_RADIX_MAX_CHUNKS : chunks;
    job->first = values;
    job->second = NULL;
    job->single = 0;
    job->scale = 1.0;
    job->n = n;
    job->chunks = (int)chunks;
    job->keys = keys;
    job->index = index;
    job->scratch_keys = scratch;
    job->scratch_index = (uint32_t *)(scratch + n);
    dpo_radix_sort_team(job);
    if (job->status != 0) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    memcpy(sorted, keys, (size_t)n * 8); /* (the keys are the values' bits now) */
    for (ptrdiff_t i = 0; i < n; i++)
        order[i] = index[i];
    free(job->counts);
    free(job), free(keys), free(scratch), free(index);
}

/* aot: the batch's chosen and rejected differences sorted, then the sigmoid kernel on the
 * sorted ones (dpo_fast._sorted.sorted_term). */
static void sorted_grid(void)
{
    char name[128];
    const ptrdiff_t sizes[] = {1, 2, 17, 300, 8193};
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
        ptrdiff_t n = sizes[s];
        snprintf(name, sizeof name, "sorted/aot/n=%td", n);
        begin_case(name);
        double *pc = xmalloc(n * 8), *pr = xmalloc(n * 8), *rc = xmalloc(n * 8),
               *rr = xmalloc(n * 8), *nc = xmalloc(n * 8), *nr = xmalloc(n * 8),
               *w = xmalloc(n * 8);
        pair_inputs(pc, pr, rc, rr, nc, nr, w, n, 0);
        double *first = xmalloc(n * 8), *second = xmalloc(n * 8);
        for (ptrdiff_t i = 0; i < n; i++) {
            first[i] = 0.25 * pc[i] - 0.25 * pr[i]; /* quarters: never overflow */
            second[i] = 0.25 * rc[i] - 0.25 * rr[i];
        }
        double *shifted = xmalloc(n * 8), *baseline = xmalloc(n * 8);
        int64_t *order = xmalloc(n * 8), *order2 = xmalloc(n * 8);
        radix_sort_1t(first, n, shifted, order);
        radix_sort_1t(second, n, baseline, order2);
        out_f64("shifted", shifted, n);
        out_i64("order", order, n);
        DpoChunkArgs args;
        init_args(&args, 0.4, 0.1, 0.05);
        args.chosen = shifted;
        args.rejected = baseline;
        double *loss = xmalloc(n * 8), *cr = xmalloc(n * 8), *rj = xmalloc(n * 8),
               *gc = xmalloc(n * 8), *gr = xmalloc(n * 8);
        args.losses = loss;
        args.chosen_rewards = cr;
        args.rejected_rewards = rj;
        args.grad_chosen = gc;
        args.grad_rejected = gr;
        double totals[DPO_NSUMS];
        run_loss(&args, n, 0, totals);
        out_f64("losses", loss, n);
        out_f64("grad", gc, n);
        end_case(name);
        free(pc), free(pr), free(rc), free(rr), free(nc), free(nr), free(w), free(first);
        free(second), free(shifted), free(baseline), free(order), free(order2), free(loss);
        free(cr), free(rj), free(gc), free(gr);
    }
}

/* dpo_loss's list path (_seed.pyx) on 2 pairs: the f64 chunk, then round4 of each reward and
 * of the mean loss (1 = rounded here, 0 = the near-tie fallback to Python's round). */
static void rounding_grid(void)
{
    char name[64];
    int reps = quick ? 2000 : 20000;
    for (int batch = 0; batch < 4; batch++) {
        snprintf(name, sizeof name, "round4/dpo_loss-2-pairs/batch%d", batch);
        begin_case(name);
        for (int rep = 0; rep < reps; rep++) {
            double in[8], out[6];
            uint8_t ok[6];
            for (int k = 0; k < 8; k++) /* log-probs with few decimals, like typed ones */
                in[k] = (batch % 2) ? -(double)rng_int(100000) / 1000.0 : logp_value(0) / 8.0;
            DpoChunkArgs args;
            init_args(&args, batch < 2 ? 0.5 : 0.1, 0.0, 0.05);
            double pc[2] = {in[0], in[1]}, pr[2] = {in[2], in[3]}, rc[2] = {in[4], in[5]},
                   rr[2] = {in[6], in[7]}, loss[2], cr[2], rj[2], sums[DPO_NSUMS];
            args.chosen = pc;
            args.rejected = pr;
            args.ref_chosen = rc;
            args.ref_rejected = rr;
            args.losses = loss;
            args.chosen_rewards = cr;
            args.rejected_rewards = rj;
            run_loss(&args, 2, 0, sums);
            double values[6] = {sums[DPO_SUM_LOSS] / 2, cr[0], cr[1], rj[0], rj[1], loss[0]};
            for (int k = 0; k < 6; k++) {
                out[k] = 0.0;
                ok[k] = (uint8_t)dpo_round4(values[k], &out[k]);
            }
            out_f64("value", values, 6);
            out_f64("rounded", out, 6);
            out_u8("rounded_here", ok, 6);
        }
        end_case(name);
    }
    /* round4 alone near its ties and edges: k/10^4 +- a few ulps, large and tiny values. */
    snprintf(name, sizeof name, "round4/near-ties");
    begin_case(name);
    for (int rep = 0; rep < reps * 4; rep++) {
        double k = (double)(rng_int(2000000000) - 1000000000) + 0.5;
        double x = k / 10000.0;
        int64_t bits;
        memcpy(&bits, &x, 8);
        bits += rng_int(9) - 4;
        memcpy(&x, &bits, 8);
        if (rep % 7 == 0)
            x = (rng_unit() - 0.5) * (rep % 2 ? 1e15 : 1e-6);
        double out = 0.0;
        uint8_t ok = (uint8_t)dpo_round4(x, &out);
        out_f64("rounded", &out, 1);
        out_u8("rounded_here", &ok, 1);
    }
    end_case(name);
}

/* ------------------------------------------------------------------ sequence_logps */

static const ptrdiff_t VOCAB_FULL[] = {1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64,
                                       65, 511, 512, 513, 1000, 1024, 1031, 4099};
static const ptrdiff_t VOCAB_QUICK[] = {1, 3, 8, 17, 33, 513, 1031};

/* Logits of n_b x n_t rows of V values, strided (stride_t = V + 3) and typed. Row kinds: a
 * spread of ordinary logits; a huge spread (exp of large negatives, flushed terms); ties at
 * the maximum before and at the label; a NaN or an infinity (the NONFINITE status); all
 * equal. */
static void logits_inputs(void *logits, int64_t *labels, ptrdiff_t n_rows, ptrdiff_t vocab,
                          ptrdiff_t stride, int f32)
{
    for (ptrdiff_t r = 0; r < n_rows; r++) {
        int64_t kind = rng_int(20);
        int64_t label = rng_int(vocab);
        double spread = kind < 3 ? 2000.0 : (kind < 5 ? 1e-3 : 12.0);
        for (ptrdiff_t i = 0; i < stride; i++) {
            double x = (rng_unit() - 0.5) * spread;
            if (kind == 5)
                x = 1.5;
            if (f32)
                ((float *)logits)[r * stride + i] = (float)x;
            else
                ((double *)logits)[r * stride + i] = x;
        }
        double special = 0.0;
        ptrdiff_t at = rng_int(vocab);
        int set = 1;
        if (kind == 6)
            special = spread; /* the label is the maximum */
        else if (kind == 7)
            special = -1e30; /* a very negative finite logit: its exp flushes to 0 */
        else if (kind == 8)
            special = NAN;
        else if (kind == 9)
            special = INFINITY;
        else
            set = 0;
        if (kind == 6) {
            at = label;
            if (rng_int(2) && label > 0) { /* an earlier tie: not the first argmax */
                ptrdiff_t before = rng_int(label);
                if (f32)
                    ((float *)logits)[r * stride + before] = (float)special;
                else
                    ((double *)logits)[r * stride + before] = special;
            }
        }
        if (set) {
            if (f32)
                ((float *)logits)[r * stride + at] = (float)special;
            else
                ((double *)logits)[r * stride + at] = special;
        }
        labels[r] = label;
    }
}

static void logps_case(const char *name, ptrdiff_t vocab, int f32, double inv_temperature,
                       int extras, int backward)
{
    begin_case(name);
    const ptrdiff_t n_b = 3, n_t = 5, n_rows = n_b * n_t, stride = vocab + 3;
    size_t sz = f32 ? 4 : 8;
    void *logits = xmalloc(n_rows * stride * sz);
    int64_t *labels = xmalloc(n_rows * 8), *rows = xmalloc(n_rows * 8);
    logits_inputs(logits, labels, n_rows, vocab, stride, f32);
    ptrdiff_t n_sel = 0;
    for (ptrdiff_t r = 0; r < n_rows; r++)
        if (r % 4 != 3) /* some positions masked out: not processed */
            rows[n_sel++] = r;
    double *token = xmalloc(n_rows * 8), *lse = xmalloc(n_rows * 8),
           *entropy = xmalloc(n_rows * 8), *p2 = xmalloc(n_rows * 8),
           *xsum = xmalloc(n_rows * 8), *weight = xmalloc(n_rows * 8);
    uint8_t *status = xmalloc(n_rows);
    for (ptrdiff_t r = 0; r < n_rows; r++) {
        token[r] = lse[r] = entropy[r] = p2[r] = xsum[r] = 0.0;
        status[r] = 7;
        weight[r] = (r % 4 == 3) ? 0.0 : 0.5 + rng_unit();
    }
    DpoLogpsArgs args;
    memset(&args, 0, sizeof args);
    args.logits = logits;
    args.stride_b = n_t * stride;
    args.stride_t = stride;
    args.n_t = n_t;
    args.vocab = vocab;
    args.labels = labels;
    args.inv_temperature = inv_temperature;
    args.simd_level = dpo_simd_get();
    args.token_logps = token;
    args.logsumexp = lse;
    args.entropy = extras ? entropy : NULL;
    args.log_sum_p2 = extras ? p2 : NULL;
    args.logit_sum = extras ? xsum : NULL;
    args.status = status;
    (f32 ? dpo_logps_forward_f32 : dpo_logps_forward_f64)(&args, rows, 0, n_sel);
    out_f64("token_logps", token, n_rows);
    out_f64("logsumexp", lse, n_rows);
    if (extras) {
        out_f64("entropy", entropy, n_rows);
        out_f64("log_sum_p2", p2, n_rows);
        out_f64("logit_sum", xsum, n_rows);
    }
    out_u8("status", status, n_rows);
    if (backward) {
        void *grad = xmalloc(n_rows * vocab * sz);
        args.row_weight = weight;
        /* backward 1: the forward's logsumexp (rows it marked NONFINITE get weight 0, as
         * the Python layer refuses them); 2: recomputed. */
        if (backward == 1) {
            for (ptrdiff_t r = 0; r < n_rows; r++)
                if (status[r] == DPO_LOGPS_NONFINITE)
                    weight[r] = 0.0;
            args.lse_in = lse;
        }
        args.grad = grad;
        (f32 ? dpo_logps_backward_f32 : dpo_logps_backward_f64)(&args, 0, n_rows);
        out_typed("grad", grad, n_rows * vocab, f32);
        out_u8("status_after_backward", status, n_rows);
        free(grad);
    }
    end_case(name);
    free(logits), free(labels), free(rows), free(token), free(lse), free(entropy), free(p2);
    free(xsum), free(weight), free(status);
}

static void logps_grid(void)
{
    char name[128];
    const ptrdiff_t *vocabs = quick ? VOCAB_QUICK : VOCAB_FULL;
    size_t n_vocabs = quick ? sizeof VOCAB_QUICK / sizeof *VOCAB_QUICK
                            : sizeof VOCAB_FULL / sizeof *VOCAB_FULL;
    const double inv_temps[] = {1.0, 1.0 / 0.7, 1e-3};
    for (size_t v = 0; v < n_vocabs; v++)
        for (int f32 = 0; f32 < 2; f32++)
            for (int tmp = 0; tmp < 3; tmp++)
                for (int extras = 0; extras < 2; extras++)
                    for (int backward = 0; backward < 3; backward++) {
                        if (tmp == 2 && (extras || backward == 2))
                            continue;
                        snprintf(name, sizeof name, "logps/V=%td/%s/invT=%.17g/%s/%s",
                                 vocabs[v], f32 ? "f32" : "f64", inv_temps[tmp],
                                 extras ? "extras" : "noextras",
                                 backward == 0 ? "forward"
                                               : (backward == 1 ? "backward-lse"
                                                                : "backward-recompute"));
                        logps_case(name, vocabs[v], f32, inv_temps[tmp], extras, backward);
                    }
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s LEVEL [quick] [dump CASE]\n", argv[0]);
        return 2;
    }
    int level = -1;
    const int levels[] = {DPO_SIMD_SCALAR, DPO_SIMD_BASELINE, DPO_SIMD_AVX2, DPO_SIMD_AVX512};
    const char *names[] = {"scalar", "baseline", "avx2", "avx512"};
    for (int i = 0; i < 4; i++)
        if (strcmp(argv[1], names[i]) == 0)
            level = levels[i];
    if (level < 0) {
        fprintf(stderr, "harness: unknown level %s\n", argv[1]);
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "quick") == 0)
            quick = 1;
        else if (strcmp(argv[i], "dump") == 0 && i + 1 < argc)
            dump_case = argv[++i];
        else {
            fprintf(stderr, "harness: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    int got = dpo_simd_set(level);
    if (got != level) {
        fprintf(stderr, "harness: level %s not available here (best: %s)\n", argv[1],
                dpo_simd_name(dpo_simd_detect()));
        return 3;
    }
    printf("# level %s\n", dpo_simd_name(got));
    printf("# loss types %d\n", DPO_N_LOSS_TYPES);
    pairwise_grid();
    sorted_grid();
    rounding_grid();
    logps_grid();
    printf("# cases %ld\n", n_cases);
    printf("# values %ld\n", n_values);
    return 0;
}
