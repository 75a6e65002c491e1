/*
 * Defines dpo_chunk_f64_<DPO_ISA> and dpo_chunk_f32_<DPO_ISA> from chunk_body.h (and the
 * static general loops they call, dpo_general_f64/f32_<DPO_ISA>), compiled with
 * DPO_TARGET / DPO_LOOP_HINT / DPO_LINKAGE as set by the includer (dispatch.c or
 * simd_clone.c), then clears those macros.
 */
#define DPO_PASTE_(a, b) a##_##b
#define DPO_PASTE(a, b) DPO_PASTE_(a, b)

#define DPO_T double
#define DPO_ZEROS dpo_zeros_f64
#define DPO_CHUNK_FN DPO_PASTE(dpo_chunk_f64, DPO_ISA)
#define DPO_GENERAL_FN DPO_PASTE(dpo_general_f64, DPO_ISA)
#include "chunk_body.h"
#undef DPO_T
#undef DPO_ZEROS
#undef DPO_CHUNK_FN
#undef DPO_GENERAL_FN

#define DPO_T float
#define DPO_ZEROS dpo_zeros_f32
#define DPO_CHUNK_FN DPO_PASTE(dpo_chunk_f32, DPO_ISA)
#define DPO_GENERAL_FN DPO_PASTE(dpo_general_f32, DPO_ISA)
#include "chunk_body.h"
#undef DPO_T
#undef DPO_ZEROS
#undef DPO_CHUNK_FN
#undef DPO_GENERAL_FN

#undef DPO_ISA
#undef DPO_TARGET
#undef DPO_LOOP_HINT
#undef DPO_LINKAGE
