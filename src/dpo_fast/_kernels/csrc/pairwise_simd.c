/*
 * The chunk loop's instances for one SIMD level: dpo_chunk_f64_<DPO_ISA> and
 * dpo_chunk_f32_<DPO_ISA> (and the static general loops they call), from chunk_body.h for
 * double and float. setup.py compiles this file once per level (simd.h); pairwise.c calls the
 * instance of the chosen one. Nothing else lives here, so no code outside these functions can
 * use the wider instructions of a level the CPU may lack.
 */
#include "pairwise.h"

#ifndef DPO_ISA
#error "compile pairwise_simd.c with -DDPO_ISA=scalar, baseline, avx2 or avx512"
#endif

#define DPO_T double
#define DPO_T_IS_FLOAT 0
#define DPO_ZEROS dpo_zeros_f64
#define DPO_CHUNK_FN DPO_SIMD_FN(dpo_chunk_f64)
#define DPO_GENERAL_FN DPO_SIMD_FN(dpo_general_f64)
#include "chunk_body.h"
#undef DPO_T
#undef DPO_T_IS_FLOAT
#undef DPO_ZEROS
#undef DPO_CHUNK_FN
#undef DPO_GENERAL_FN

#define DPO_T float
#define DPO_T_IS_FLOAT 1
#define DPO_ZEROS dpo_zeros_f32
#define DPO_CHUNK_FN DPO_SIMD_FN(dpo_chunk_f32)
#define DPO_GENERAL_FN DPO_SIMD_FN(dpo_general_f32)
#include "chunk_body.h"
#undef DPO_T
#undef DPO_T_IS_FLOAT
#undef DPO_ZEROS
#undef DPO_CHUNK_FN
#undef DPO_GENERAL_FN
