/*
 * One extra SIMD clone of the chunk loop, in a translation unit of its own so that it can be
 * compiled for that instruction set with the compiler's own switch (-mavx2, -mavx512f...,
 * /arch:AVX2, /arch:AVX512): that works for GCC, Clang and MSVC alike, where
 * __attribute__((target)) would leave MSVC out. setup.py compiles this file once per ISA with
 * -DDPO_ISA=<name>; dispatch.c calls the result only on CPUs that have the ISA. Nothing else
 * lives here, so no code outside these functions can use the wider instructions.
 */
#include "dispatch_internal.h"

#ifndef DPO_ISA
#error "compile simd_clone.c with -DDPO_ISA=avx2 or -DDPO_ISA=avx512"
#endif

#define DPO_LINKAGE DPO_CLONE_LINKAGE
#define DPO_TARGET
#define DPO_LOOP_HINT DPO_VEC_HINT
#include "chunk_instances.h"
