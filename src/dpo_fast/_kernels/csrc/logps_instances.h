/*
 * Defines the forward and backward log-softmax row functions of logps_row.h for float and
 * double, for the instruction set DPO_ISA, with DPO_TARGET / LOGPS_LOOP_HINT / LOGPS_LINKAGE
 * as set by the includer (logps_dispatch.c or logps_clone.c), then clears those macros.
 */
#define LOGPS_PASTE_(a, b) a##_##b
#define LOGPS_PASTE(a, b) LOGPS_PASTE_(a, b)

#define LOGPS_T double
#define LOGPS_BITS int64_t
#define LOGPS_SIGN_SHIFT 63
#define LOGPS_KEY_MIN INT64_MIN
#define LOGPS_MAG_MASK INT64_C(0x7fffffffffffffff)
#define LOGPS_EXP_MASK INT64_C(0x7ff0000000000000)
#define LOGPS_STATS_FN LOGPS_PASTE(dpo_logps_stats_f64, DPO_ISA)
#define LOGPS_FWD_FN LOGPS_PASTE(dpo_logps_forward_f64, DPO_ISA)
#define LOGPS_BWD_FN LOGPS_PASTE(dpo_logps_backward_f64, DPO_ISA)
#include "logps_row.h"
#undef LOGPS_T
#undef LOGPS_BITS
#undef LOGPS_SIGN_SHIFT
#undef LOGPS_KEY_MIN
#undef LOGPS_MAG_MASK
#undef LOGPS_EXP_MASK
#undef LOGPS_STATS_FN
#undef LOGPS_FWD_FN
#undef LOGPS_BWD_FN

#define LOGPS_T float
#define LOGPS_BITS int32_t
#define LOGPS_SIGN_SHIFT 31
#define LOGPS_KEY_MIN INT32_MIN
#define LOGPS_MAG_MASK INT32_C(0x7fffffff)
#define LOGPS_EXP_MASK INT32_C(0x7f800000)
#define LOGPS_STATS_FN LOGPS_PASTE(dpo_logps_stats_f32, DPO_ISA)
#define LOGPS_FWD_FN LOGPS_PASTE(dpo_logps_forward_f32, DPO_ISA)
#define LOGPS_BWD_FN LOGPS_PASTE(dpo_logps_backward_f32, DPO_ISA)
#include "logps_row.h"
#undef LOGPS_T
#undef LOGPS_BITS
#undef LOGPS_SIGN_SHIFT
#undef LOGPS_KEY_MIN
#undef LOGPS_MAG_MASK
#undef LOGPS_EXP_MASK
#undef LOGPS_STATS_FN
#undef LOGPS_FWD_FN
#undef LOGPS_BWD_FN

#undef DPO_ISA
#undef DPO_TARGET
#undef LOGPS_LOOP_HINT
#undef LOGPS_LINKAGE
