/*
 * Shared by the translation units that instantiate the log-softmax rows (logps_dispatch.c for
 * the baseline and scalar paths, logps_clone.c once per extra x86-64 instruction set, the
 * scheme of dispatch.c / simd_clone.c): loop pragmas, linkage, and the clones' declarations.
 */
#ifndef DPO_LOGPS_INTERNAL_H
#define DPO_LOGPS_INTERNAL_H

#include <stdint.h>
#include <string.h>

#include "logps_api.h"
#include "logps_math.h"

/* Same numbering as dispatch.h's DPO_SIMD_* (not included: it would pull in the pairwise
 * kernels' declarations). */
enum { LOGPS_SIMD_SCALAR = 0, LOGPS_SIMD_BASELINE = 1, LOGPS_SIMD_AVX2 = 2, LOGPS_SIMD_AVX512 = 3 };

/* LOGPS_VEC_HINT: the row loops read the logits and write a local buffer or the gradient,
 * which never overlaps the logits (the Python layer checks); GCC cannot prove it for the
 * gradient and would otherwise version the loop on a run-time alias check.
 * LOGPS_NOVEC_*: the "scalar" path, kept to test that every path gives the same bits. */
#if defined(__clang__)
#define LOGPS_VEC_HINT _Pragma("clang loop vectorize(assume_safety)")
#define LOGPS_NOVEC_HINT _Pragma("clang loop vectorize(disable) interleave(disable)")
#define LOGPS_NOVEC_ATTR
#elif defined(__GNUC__)
#define LOGPS_VEC_HINT _Pragma("GCC ivdep")
#define LOGPS_NOVEC_HINT
#define LOGPS_NOVEC_ATTR __attribute__((optimize("no-tree-vectorize")))
#elif defined(_MSC_VER)
#define LOGPS_VEC_HINT __pragma(loop(ivdep))
#define LOGPS_NOVEC_HINT __pragma(loop(no_vector))
#define LOGPS_NOVEC_ATTR
#else
#define LOGPS_VEC_HINT
#define LOGPS_NOVEC_HINT
#define LOGPS_NOVEC_ATTR
#endif

/* Software prefetch of the next row into L2 (a hint: no effect on any value). */
#if defined(__GNUC__) || defined(__clang__)
#define LOGPS_PREFETCH(address) __builtin_prefetch((address), 0, 2)
#elif defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
#include <xmmintrin.h>
#define LOGPS_PREFETCH(address) _mm_prefetch((const char *)(address), _MM_HINT_T1)
#else
#define LOGPS_PREFETCH(address) ((void)(address))
#endif

#if defined(__GNUC__) || defined(__clang__)
#define LOGPS_CLONE_LINKAGE __attribute__((visibility("hidden"))) /* not exported by the .so */
#else
#define LOGPS_CLONE_LINKAGE
#endif

#define LOGPS_DECLARE_CLONE(ISA)                                                             \
    LOGPS_CLONE_LINKAGE void dpo_logps_forward_f64_##ISA(const DpoLogpsArgs *,               \
                                                         const int64_t *, ptrdiff_t,         \
                                                         ptrdiff_t);                         \
    LOGPS_CLONE_LINKAGE void dpo_logps_forward_f32_##ISA(const DpoLogpsArgs *,               \
                                                         const int64_t *, ptrdiff_t,         \
                                                         ptrdiff_t);                         \
    LOGPS_CLONE_LINKAGE void dpo_logps_backward_f64_##ISA(const DpoLogpsArgs *, ptrdiff_t,   \
                                                          ptrdiff_t);                        \
    LOGPS_CLONE_LINKAGE void dpo_logps_backward_f32_##ISA(const DpoLogpsArgs *, ptrdiff_t,   \
                                                          ptrdiff_t);
LOGPS_DECLARE_CLONE(avx2)
LOGPS_DECLARE_CLONE(avx512)

#endif /* DPO_LOGPS_INTERNAL_H */
