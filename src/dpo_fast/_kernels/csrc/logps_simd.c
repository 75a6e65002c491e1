/*
 * The log-softmax rows' instances for one SIMD level: dpo_logps_forward_f64/f32_<DPO_ISA> and
 * dpo_logps_backward_f64/f32_<DPO_ISA>, from logps_row.h for double and float, and the fused
 * linear head's dpo_linear_fold / dpo_linear_tile_grad _f64/f32_<DPO_ISA> from logps_linear.h. setup.py
 * compiles this file once per level (simd.h); logps.c calls the instance of the chosen one.
 */
#include <stdint.h>
#include <string.h>

#include "logps_api.h"
#include "logps_math.h"
#include "simd.h"

#ifndef DPO_ISA
#error "compile logps_simd.c with -DDPO_ISA=scalar, baseline, avx2 or avx512"
#endif

#define LOGPS_T double
#define LOGPS_EXP dpo_logps_exp
#define LOGPS_FLOAT_EXP 0
#define LOGPS_GRAD_TERMS_FN DPO_SIMD_FN(dpo_logps_grad_terms_f64)
#define LOGPS_BITS int64_t
#define LOGPS_SIGN_SHIFT 63
#define LOGPS_KEY_MIN INT64_MIN
#define LOGPS_MAG_MASK INT64_C(0x7fffffffffffffff)
#define LOGPS_EXP_MASK INT64_C(0x7ff0000000000000)
#define LOGPS_STATS_FN DPO_SIMD_FN(dpo_logps_stats_f64)
#define LOGPS_FWD_FN DPO_SIMD_FN(dpo_logps_forward_f64)
#define LOGPS_BWD_FN DPO_SIMD_FN(dpo_logps_backward_f64)
#define LOGPS_FOLD_FN DPO_SIMD_FN(dpo_linear_fold_f64)
#define LOGPS_TILE_GRAD_FN DPO_SIMD_FN(dpo_linear_tile_grad_f64)
#include "logps_row.h"
#include "logps_linear.h"
#undef LOGPS_T
#undef LOGPS_EXP
#undef LOGPS_FLOAT_EXP
#undef LOGPS_GRAD_TERMS_FN
#undef LOGPS_BITS
#undef LOGPS_SIGN_SHIFT
#undef LOGPS_KEY_MIN
#undef LOGPS_MAG_MASK
#undef LOGPS_EXP_MASK
#undef LOGPS_STATS_FN
#undef LOGPS_FWD_FN
#undef LOGPS_BWD_FN
#undef LOGPS_FOLD_FN
#undef LOGPS_TILE_GRAD_FN

#define LOGPS_T float
#define LOGPS_EXP dpo_logps_exp_short
#define LOGPS_FLOAT_EXP 1
#define LOGPS_GRAD_TERMS_FN DPO_SIMD_FN(dpo_logps_grad_terms_f32)
#define LOGPS_BITS int32_t
#define LOGPS_SIGN_SHIFT 31
#define LOGPS_KEY_MIN INT32_MIN
#define LOGPS_MAG_MASK INT32_C(0x7fffffff)
#define LOGPS_EXP_MASK INT32_C(0x7f800000)
#define LOGPS_STATS_FN DPO_SIMD_FN(dpo_logps_stats_f32)
#define LOGPS_FWD_FN DPO_SIMD_FN(dpo_logps_forward_f32)
#define LOGPS_BWD_FN DPO_SIMD_FN(dpo_logps_backward_f32)
#define LOGPS_FOLD_FN DPO_SIMD_FN(dpo_linear_fold_f32)
#define LOGPS_TILE_GRAD_FN DPO_SIMD_FN(dpo_linear_tile_grad_f32)
#include "logps_row.h"
#include "logps_linear.h"
#undef LOGPS_T
#undef LOGPS_EXP
#undef LOGPS_FLOAT_EXP
#undef LOGPS_GRAD_TERMS_FN
#undef LOGPS_BITS
#undef LOGPS_SIGN_SHIFT
#undef LOGPS_KEY_MIN
#undef LOGPS_MAG_MASK
#undef LOGPS_EXP_MASK
#undef LOGPS_STATS_FN
#undef LOGPS_FWD_FN
#undef LOGPS_BWD_FN
#undef LOGPS_FOLD_FN
#undef LOGPS_TILE_GRAD_FN
