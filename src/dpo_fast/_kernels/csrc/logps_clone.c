/*
 * One extra SIMD clone of the log-softmax rows, in a translation unit of its own compiled with
 * the compiler's switch for that instruction set (-mavx2, -mavx512f..., /arch:AVX2,
 * /arch:AVX512), as simd_clone.c does for the pairwise loop. setup.py compiles this file once
 * per ISA with -DDPO_ISA=<name>; logps_dispatch.c calls the result only on CPUs that have it.
 */
#include "logps_internal.h"

#ifndef DPO_ISA
#error "compile logps_clone.c with -DDPO_ISA=avx2 or -DDPO_ISA=avx512"
#endif

#define LOGPS_LINKAGE LOGPS_CLONE_LINKAGE
#define DPO_TARGET
#define LOGPS_LOOP_HINT LOGPS_VEC_HINT
#include "logps_instances.h"
