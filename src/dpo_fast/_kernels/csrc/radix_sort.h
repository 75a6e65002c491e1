/*
 * A stable LSD radix sort of float64 values, for the batch-sorted loss types (aot,
 * aot_unpaired: dpo_fast._general sorts the per-pair differences). The driver is
 * _kernels/_sort.pyx: it splits the input into one contiguous chunk per thread and, per
 * pass, has every thread count its chunk's digits (dpo_radix_count), turns the counts into
 * per-thread starting offsets (bucket-major, then thread: the sort stays stable), and has
 * every thread move its chunk (dpo_radix_move).
 *
 * Keys are the float bits made order-preserving as unsigned integers (negative numbers with
 * every bit flipped, others with the sign bit set), after -0.0 is made +0.0 and every NaN the
 * one quiet NaN: equal values then have equal keys, so ties keep index order, -0.0 ties with
 * +0.0 and NaNs come last in index order, exactly as numpy.argsort(kind="stable").
 * Digits are DPO_RADIX_BITS wide: 8 passes of 256 buckets, measured 30% faster (1 thread,
 * 1e6 values) than 6 passes of 11-bit digits, whose 2048 offsets and write streams outgrow
 * L1. A pass whose digit is the same for every key is skipped (the driver finds those from
 * one count of all digits).
 */
#ifndef DPO_RADIX_SORT_H
#define DPO_RADIX_SORT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define DPO_RADIX_BITS 8
#define DPO_RADIX_BUCKETS (1 << DPO_RADIX_BITS)
#define DPO_RADIX_PASSES ((64 + DPO_RADIX_BITS - 1) / DPO_RADIX_BITS)

static inline uint64_t dpo_radix_key(double value)
{
    uint64_t bits;
    double canonical = value + 0.0; /* -0.0 + 0.0 = +0.0 */
    memcpy(&bits, &canonical, sizeof bits);
    if (value != value)
        bits = UINT64_C(0x7ff8000000000000);
    return bits ^ ((bits >> 63) ? UINT64_C(0xffffffffffffffff) : UINT64_C(0x8000000000000000));
}

static inline double dpo_radix_value(uint64_t key)
{
    uint64_t bits = key ^ ((key >> 63) ? UINT64_C(0x8000000000000000)
                                       : UINT64_C(0xffffffffffffffff));
    double value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

/* counts[p * BUCKETS + digit p of key] += 1 for every pass p, over values[lo:hi]. */
static inline void dpo_radix_count_all(const double *values, ptrdiff_t lo, ptrdiff_t hi,
                                       int64_t *counts)
{
    memset(counts, 0, sizeof(int64_t) * DPO_RADIX_PASSES * DPO_RADIX_BUCKETS);
    for (ptrdiff_t i = lo; i < hi; i++) {
        uint64_t key = dpo_radix_key(values[i]);
        for (int p = 0; p < DPO_RADIX_PASSES; p++)
            counts[p * DPO_RADIX_BUCKETS
                   + (ptrdiff_t)((key >> (p * DPO_RADIX_BITS)) & (DPO_RADIX_BUCKETS - 1))]++;
    }
}

/* counts[digit of key at `shift`] += 1 over keys[lo:hi]. */
static inline void dpo_radix_count(const uint64_t *keys, ptrdiff_t lo, ptrdiff_t hi, int shift,
                                   int64_t *counts)
{
    memset(counts, 0, sizeof(int64_t) * DPO_RADIX_BUCKETS);
    for (ptrdiff_t i = lo; i < hi; i++)
        counts[(ptrdiff_t)((keys[i] >> shift) & (DPO_RADIX_BUCKETS - 1))]++;
}

/* The body of dpo_radix_move, always inlined so that each call below, with constant NULLs,
 * becomes a loop without the per-element tests of what is NULL. */
#if defined(__GNUC__)
#define DPO_RADIX_INLINE static inline __attribute__((always_inline))
#else
#define DPO_RADIX_INLINE static inline
#endif

DPO_RADIX_INLINE void dpo_radix_move_body(const uint64_t *keys, const uint32_t *index,
                                          const double *values, ptrdiff_t lo, ptrdiff_t hi,
                                          int shift, int64_t *offsets, uint64_t *out_keys,
                                          uint32_t *out_index, double *out_sorted,
                                          int64_t *out_order)
{
    for (ptrdiff_t i = lo; i < hi; i++) {
        const uint64_t key = keys != NULL ? keys[i] : dpo_radix_key(values[i]);
        const uint32_t position = index != NULL ? index[i] : (uint32_t)i;
        const int64_t to = offsets[(ptrdiff_t)((key >> shift) & (DPO_RADIX_BUCKETS - 1))]++;
        if (out_sorted != NULL) {
            out_sorted[to] = dpo_radix_value(key);
            if (out_order != NULL)
                out_order[to] = (int64_t)position;
        } else {
            out_keys[to] = key;
            if (out_index != NULL)
                out_index[to] = position;
        }
    }
}

/*
 * Move elements lo..hi-1 to their places by the digit at `shift`; offsets[digit] is where the
 * next one of that digit goes (advanced as it goes). The source is keys/index (or, on the
 * first pass, values with index = position: keys == NULL). The destination is keys/index for
 * another pass, or on the last pass the sorted values and their original positions (order).
 * index, out_index and out_order are NULL when only the sorted values are wanted.
 */
static inline void dpo_radix_move(const uint64_t *keys, const uint32_t *index,
                                  const double *values, ptrdiff_t lo, ptrdiff_t hi, int shift,
                                  int64_t *offsets, uint64_t *out_keys, uint32_t *out_index,
                                  double *out_sorted, int64_t *out_order)
{
    const int first = keys == NULL, last = out_sorted != NULL, ordered = out_order != NULL
                                                                       || out_index != NULL;
    if (first && last && ordered)
        dpo_radix_move_body(NULL, NULL, values, lo, hi, shift, offsets, NULL, NULL, out_sorted,
                            out_order);
    else if (first && last)
        dpo_radix_move_body(NULL, NULL, values, lo, hi, shift, offsets, NULL, NULL, out_sorted,
                            NULL);
    else if (first && ordered)
        dpo_radix_move_body(NULL, NULL, values, lo, hi, shift, offsets, out_keys, out_index,
                            NULL, NULL);
    else if (first)
        dpo_radix_move_body(NULL, NULL, values, lo, hi, shift, offsets, out_keys, NULL, NULL,
                            NULL);
    else if (last && ordered)
        dpo_radix_move_body(keys, index, NULL, lo, hi, shift, offsets, NULL, NULL, out_sorted,
                            out_order);
    else if (last)
        dpo_radix_move_body(keys, NULL, NULL, lo, hi, shift, offsets, NULL, NULL, out_sorted,
                            NULL);
    else if (ordered)
        dpo_radix_move_body(keys, index, NULL, lo, hi, shift, offsets, out_keys, out_index,
                            NULL, NULL);
    else
        dpo_radix_move_body(keys, NULL, NULL, lo, hi, shift, offsets, out_keys, NULL, NULL,
                            NULL);
}

#endif /* DPO_RADIX_SORT_H */
