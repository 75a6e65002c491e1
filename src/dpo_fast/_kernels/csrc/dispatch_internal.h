/*
 * Shared by the translation units that instantiate the chunk loop (dispatch.c for the baseline
 * and scalar paths, simd_clone.c once per extra instruction set): loop pragmas and the zero
 * buffers that stand in for a missing reference.
 */
#ifndef DPO_DISPATCH_INTERNAL_H
#define DPO_DISPATCH_INTERNAL_H

#include "dispatch.h"

/* DPO_VEC_HINT: the rows of a chunk are independent and outputs never alias inputs (the
 * Python layer checks), which GCC cannot prove across 9 pointers: without the hint it gives up
 * on the run-time alias checks (--param vect-max-version-for-alias-checks) and stays scalar.
 * DPO_NOVEC_*: the "scalar" path, kept to test that every path gives the same bits. */
#if defined(__clang__)
#define DPO_VEC_HINT _Pragma("clang loop vectorize(assume_safety)")
#define DPO_NOVEC_HINT _Pragma("clang loop vectorize(disable) interleave(disable)")
#define DPO_NOVEC_ATTR
#elif defined(__GNUC__)
#define DPO_VEC_HINT _Pragma("GCC ivdep")
#define DPO_NOVEC_HINT
#define DPO_NOVEC_ATTR __attribute__((optimize("no-tree-vectorize")))
#elif defined(_MSC_VER)
#define DPO_VEC_HINT __pragma(loop(ivdep))
#define DPO_NOVEC_HINT __pragma(loop(no_vector))
#define DPO_NOVEC_ATTR
#else
#define DPO_VEC_HINT
#define DPO_NOVEC_HINT
#define DPO_NOVEC_ATTR
#endif

extern const double dpo_zeros_f64[DPO_CHUNK];
extern const float dpo_zeros_f32[DPO_CHUNK];
extern const double dpo_ones_f64[DPO_CHUNK]; /* per-pair weights when none are given */

/* Chunk functions of the extra x86-64 instruction sets, defined by simd_clone.c (compiled
 * once with -mavx2 / /arch:AVX2 and once with -mavx512f... / /arch:AVX512 by setup.py). */
#if defined(__GNUC__) || defined(__clang__)
#define DPO_CLONE_LINKAGE __attribute__((visibility("hidden"))) /* not exported by the .so */
#else
#define DPO_CLONE_LINKAGE
#endif
#define DPO_DECLARE_CLONE(ISA)                                                              \
    DPO_CLONE_LINKAGE void dpo_chunk_f64_##ISA(const DpoChunkArgs *, ptrdiff_t, ptrdiff_t,  \
                                               double *);                                   \
    DPO_CLONE_LINKAGE void dpo_chunk_f32_##ISA(const DpoChunkArgs *, ptrdiff_t, ptrdiff_t,  \
                                               double *);
DPO_DECLARE_CLONE(avx2)
DPO_DECLARE_CLONE(avx512)

#endif /* DPO_DISPATCH_INTERNAL_H */
