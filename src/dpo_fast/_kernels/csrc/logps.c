/*
 * The entry points of the log-softmax rows (logps_api.h): each runs the instance of the SIMD
 * level in args->simd_level (the instances: logps_simd.c, compiled once per level). The level
 * is the package's one chosen level (simd.c, in dpo_fast._kernels._pairwise), which _logps.pyx
 * reads per call through _pairwise.pxd, so DPO_FAST_SIMD and set_simd_level() switch these
 * loops too.
 */
#include "logps_api.h"
#include "simd.h"

DPO_SIMD_DECLARE(void, dpo_logps_forward_f32,
                 (const DpoLogpsArgs *, const int64_t *, ptrdiff_t, ptrdiff_t))
DPO_SIMD_DECLARE(void, dpo_logps_forward_f64,
                 (const DpoLogpsArgs *, const int64_t *, ptrdiff_t, ptrdiff_t))
DPO_SIMD_DECLARE(void, dpo_logps_backward_f32, (const DpoLogpsArgs *, ptrdiff_t, ptrdiff_t))
DPO_SIMD_DECLARE(void, dpo_logps_backward_f64, (const DpoLogpsArgs *, ptrdiff_t, ptrdiff_t))
DPO_SIMD_DECLARE(void, dpo_linear_fold_f32, (const DpoLinearArgs *, ptrdiff_t, ptrdiff_t))
DPO_SIMD_DECLARE(void, dpo_linear_fold_f64, (const DpoLinearArgs *, ptrdiff_t, ptrdiff_t))
DPO_SIMD_DECLARE(void, dpo_linear_tile_grad_f32, (const DpoLinearArgs *, ptrdiff_t, ptrdiff_t))
DPO_SIMD_DECLARE(void, dpo_linear_tile_grad_f64, (const DpoLinearArgs *, ptrdiff_t, ptrdiff_t))

void dpo_logps_forward_f32(const DpoLogpsArgs *args, const int64_t *rows, ptrdiff_t k0,
                           ptrdiff_t k1)
{
    DPO_SIMD_DISPATCH(args->simd_level, dpo_logps_forward_f32, args, rows, k0, k1)
}

void dpo_logps_forward_f64(const DpoLogpsArgs *args, const int64_t *rows, ptrdiff_t k0,
                           ptrdiff_t k1)
{
    DPO_SIMD_DISPATCH(args->simd_level, dpo_logps_forward_f64, args, rows, k0, k1)
}

void dpo_logps_backward_f32(const DpoLogpsArgs *args, ptrdiff_t r0, ptrdiff_t r1)
{
    DPO_SIMD_DISPATCH(args->simd_level, dpo_logps_backward_f32, args, r0, r1)
}

void dpo_logps_backward_f64(const DpoLogpsArgs *args, ptrdiff_t r0, ptrdiff_t r1)
{
    DPO_SIMD_DISPATCH(args->simd_level, dpo_logps_backward_f64, args, r0, r1)
}

void dpo_linear_fold_f32(const DpoLinearArgs *a, ptrdiff_t i0, ptrdiff_t i1)
{
    DPO_SIMD_DISPATCH(a->simd_level, dpo_linear_fold_f32, a, i0, i1)
}

void dpo_linear_fold_f64(const DpoLinearArgs *a, ptrdiff_t i0, ptrdiff_t i1)
{
    DPO_SIMD_DISPATCH(a->simd_level, dpo_linear_fold_f64, a, i0, i1)
}

void dpo_linear_tile_grad_f32(const DpoLinearArgs *a, ptrdiff_t i0, ptrdiff_t i1)
{
    DPO_SIMD_DISPATCH(a->simd_level, dpo_linear_tile_grad_f32, a, i0, i1)
}

void dpo_linear_tile_grad_f64(const DpoLinearArgs *a, ptrdiff_t i0, ptrdiff_t i1)
{
    DPO_SIMD_DISPATCH(a->simd_level, dpo_linear_tile_grad_f64, a, i0, i1)
}
