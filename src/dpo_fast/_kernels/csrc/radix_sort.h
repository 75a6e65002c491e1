/*
 * A stable radix sort of float64 values, for the batch-sorted loss types (aot, aot_unpaired:
 * dpo_fast._sorted sorts the per-pair differences with it). The driver is _kernels/_sort.pyx:
 * every thread forms the keys of one contiguous chunk (dpo_radix_keys, which also forms the
 * differences), counts its chunk's top digit (dpo_radix_count) and moves it into the top
 * buckets (dpo_radix_move, at offsets bucket-major then thread: stable); the top buckets are
 * then sorted independently (dpo_radix_sort_buckets), so the result is the same for every
 * thread count.
 *
 * Keys are the float bits made order-preserving as unsigned integers (negative numbers with
 * every bit flipped, others with the sign bit set), after -0.0 is made +0.0 and every NaN the
 * one quiet NaN: equal values then have equal keys, so ties keep index order, -0.0 ties with
 * +0.0 and NaNs come last in index order, exactly as numpy.argsort(kind="stable").
 *
 * Most significant digit first: an LSD sort of doubles needs all 8 byte passes over the whole
 * array (their low mantissa bytes always differ), 8 scatters of 12-byte records through
 * memory (41 ms per 1e6 on one thread here). The top digit starts at the highest bit that
 * differs between keys and is up to 16 bits wide; each top bucket (cache-sized) is then split
 * once more on a digit of about log2(n) bits, after which one insertion pass puts the few
 * keys that share a bucket right (dpo_radix_msd). On 1e6 normal differences: 2 moves in all
 * (about 12 ms per 1e6 with positions, 10 without, on one thread in C).
 */
#ifndef DPO_RADIX_SORT_H
#define DPO_RADIX_SORT_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The widest first split (the only one over the whole array, in parallel): for doubles its
 * top bits are the sign and exponent, so it takes 16 for cache-sized buckets. */
#define DPO_RADIX_TOP_BITS 16
#define DPO_RADIX_TOP_BUCKETS (1 << DPO_RADIX_TOP_BITS)
/* The widest digit below the top one, and the widest whose counts are on the stack (1 KiB a
 * level: the recursion stays shallow in stack even on musl's 128 KiB thread stacks); wider
 * ones are on the heap. */
#define DPO_RADIX_MSD_BITS 14
#define DPO_RADIX_STACK_BITS 8
/* Buckets this small are left to insertion sort. */
#define DPO_RADIX_SMALL 16

#if defined(__GNUC__)
#define DPO_RADIX_INLINE static inline __attribute__((always_inline))
#else
#define DPO_RADIX_INLINE static inline
#endif

static inline uint64_t dpo_radix_key(double value)
{
    uint64_t bits;
    double canonical = value + 0.0; /* -0.0 + 0.0 = +0.0 */
    memcpy(&bits, &canonical, sizeof bits);
    if (value != value)
        bits = UINT64_C(0x7ff8000000000000);
    return bits ^ ((bits >> 63) ? UINT64_C(0xffffffffffffffff) : UINT64_C(0x8000000000000000));
}

/* keys[lo:hi] turned in place into the bits of the values they are the keys of. */
static inline void dpo_radix_to_values(uint64_t *keys, ptrdiff_t lo, ptrdiff_t hi)
{
    for (ptrdiff_t i = lo; i < hi; i++)
        keys[i] ^= (keys[i] >> 63) ? UINT64_C(0x8000000000000000)
                                   : UINT64_C(0xffffffffffffffff);
}

/* The keys of first[i] * scale - second[i] * scale (second NULL: first[i] * scale) in
 * float64, for i in lo..hi-1, of float64 inputs (single: float32). Returns the AND of the keys
 * and sets *key_or to their OR (the bits that differ are the ones set in OR and not in AND),
 * and *all_finite to 0 if a difference is not finite. (The first split's counts are another
 * pass: counting here too makes this loop scalar, 3.5x slower than both passes.) */
#define DPO_RADIX_KEYS_LOOP(T)                                                                 \
    for (ptrdiff_t i = lo; i < hi; i++) {                                                   \
        double value = (double)((const T *)first)[i] * scale;                              \
        if (second != NULL)                                                                \
            value = value - (double)((const T *)second)[i] * scale;                        \
        const uint64_t key = dpo_radix_key(value);                                         \
        keys[i] = key;                                                                     \
        all_and &= key;                                                                    \
        all_or |= key;                                                                     \
        finite &= value - value == 0.0;                                                    \
    }

static inline uint64_t dpo_radix_keys(const void *first, const void *second, int single,
                                      double scale, ptrdiff_t lo, ptrdiff_t hi, uint64_t *keys,
                                      uint64_t *key_or, int *all_finite)
{
    uint64_t all_and = ~UINT64_C(0), all_or = 0;
    int finite = 1;
    if (single) {
        DPO_RADIX_KEYS_LOOP(float)
    } else {
        DPO_RADIX_KEYS_LOOP(double)
    }
    *key_or = all_or;
    *all_finite = finite;
    return all_and;
}

/* counts[digit] = how many of keys[lo:hi] have it, the digit being (key >> shift) & mask. */
static inline void dpo_radix_count(const uint64_t *keys, ptrdiff_t lo, ptrdiff_t hi, int shift,
                                   uint64_t mask, ptrdiff_t *counts)
{
    memset(counts, 0, sizeof(ptrdiff_t) * (size_t)(mask + 1));
    for (ptrdiff_t i = lo; i < hi; i++)
        counts[(ptrdiff_t)((keys[i] >> shift) & mask)]++;
}

/* Move keys[lo:hi] (with their positions lo..hi-1 when out_index is not NULL) to
 * out_keys/out_index by digit; offsets[digit] is where the next one goes (advanced). */
static inline void dpo_radix_move(const uint64_t *keys, ptrdiff_t lo, ptrdiff_t hi, int shift,
                                  uint64_t mask, ptrdiff_t *offsets, uint64_t *out_keys,
                                  uint32_t *out_index)
{
    if (out_index != NULL) {
        for (ptrdiff_t i = lo; i < hi; i++) {
            const uint64_t key = keys[i];
            const ptrdiff_t to = offsets[(ptrdiff_t)((key >> shift) & mask)]++;
            out_keys[to] = key;
            out_index[to] = (uint32_t)i;
        }
    } else {
        for (ptrdiff_t i = lo; i < hi; i++) {
            const uint64_t key = keys[i];
            out_keys[offsets[(ptrdiff_t)((key >> shift) & mask)]++] = key;
        }
    }
}

/* Stable insertion sort of keys[0:n] (index along, when not NULL) in place. Run over a
 * range already ordered by its higher bits, it only moves keys within their small buckets. */
DPO_RADIX_INLINE void dpo_radix_insertion_body(uint64_t *keys, uint32_t *index, ptrdiff_t n)
{
    for (ptrdiff_t i = 1; i < n; i++) {
        const uint64_t key = keys[i];
        if (keys[i - 1] <= key)
            continue;
        const uint32_t position = index != NULL ? index[i] : 0;
        ptrdiff_t j = i;
        do {
            keys[j] = keys[j - 1];
            if (index != NULL)
                index[j] = index[j - 1];
            j--;
        } while (j > 0 && keys[j - 1] > key);
        keys[j] = key;
        if (index != NULL)
            index[j] = position;
    }
}

static void dpo_radix_msd(uint64_t *keys, uint32_t *index, uint64_t *out_keys,
                          uint32_t *out_index, ptrdiff_t n, int top);
static void dpo_radix_msd_keys(uint64_t *keys, uint64_t *out_keys, ptrdiff_t n, int top);

/* The MSD step, always inlined into the two functions below (with and without positions) so
 * that their loops have no per-element tests of index != NULL. Sorts keys[0:n] (index along)
 * by the bits below `top` (those above are the same in all of them) into out_keys/out_index;
 * keys/index are left as scratch.
 *
 * The digit is about log2(n) bits wide (at most DPO_RADIX_MSD_BITS): after one move the keys
 * are in order but for buckets of a key or two, which one insertion pass over the whole range
 * puts right (with few mispredicted branches, and no loop over the buckets). Buckets of more
 * than DPO_RADIX_SMALL (keys alike in these bits) are sorted first by the next digits. */
DPO_RADIX_INLINE void dpo_radix_msd_body(uint64_t *keys, uint32_t *index, uint64_t *out_keys,
                                         uint32_t *out_index, ptrdiff_t n, int top)
{
    uint32_t stack_offsets[1 << DPO_RADIX_STACK_BITS], *offsets = stack_offsets, *heap = NULL;
    int shift = 0, width = 1;
    uint64_t mask = 0;
    ptrdiff_t largest = 0;
    while (width < DPO_RADIX_MSD_BITS && ((size_t)n >> width) != 0)
        width++;
    if (width > DPO_RADIX_STACK_BITS && n > DPO_RADIX_SMALL) {
        heap = (uint32_t *)malloc(sizeof(uint32_t) << width);
        if (heap != NULL)
            offsets = heap;
        else
            width = DPO_RADIX_STACK_BITS; /* (narrower digits: slower, the same result) */
    }
    /* Skip the digits the whole range shares: a count, no move. */
    while (n > DPO_RADIX_SMALL && top > 0) {
        shift = top > width ? top - width : 0;
        mask = (UINT64_C(1) << (top - shift)) - 1;
        memset(offsets, 0, sizeof(uint32_t) * (size_t)(mask + 1));
        for (ptrdiff_t i = 0; i < n; i++)
            offsets[(ptrdiff_t)((keys[i] >> shift) & mask)]++;
        largest = 0;
        for (ptrdiff_t b = 0; b <= (ptrdiff_t)mask; b++)
            largest = offsets[b] > largest ? offsets[b] : largest;
        if (largest < n)
            break;
        top = shift;
    }
    if (n <= DPO_RADIX_SMALL || top <= 0) {
        memcpy(out_keys, keys, sizeof(uint64_t) * (size_t)n);
        if (index != NULL)
            memcpy(out_index, index, sizeof(uint32_t) * (size_t)n);
        if (top > 0)
            dpo_radix_insertion_body(out_keys, out_index, n);
        free(heap);
        return;
    }
    uint32_t running = 0;
    for (ptrdiff_t b = 0; b <= (ptrdiff_t)mask; b++) {
        const uint32_t count = offsets[b];
        offsets[b] = running;
        running += count;
    }
    for (ptrdiff_t i = 0; i < n; i++) {
        const uint64_t key = keys[i];
        const uint32_t to = offsets[(ptrdiff_t)((key >> shift) & mask)]++;
        out_keys[to] = key;
        if (index != NULL)
            out_index[to] = index[i];
    }
    if (largest > DPO_RADIX_SMALL) {
        /* offsets[b] is now where bucket b ends. A large bucket is sorted into the scratch
         * and copied back (large buckets are rare: the digit is as wide as the range). */
        uint32_t start = 0;
        for (ptrdiff_t b = 0; b <= (ptrdiff_t)mask; b++) {
            const uint32_t end = offsets[b], count = end - start;
            if (count > DPO_RADIX_SMALL) {
                if (index != NULL) {
                    dpo_radix_msd(out_keys + start, out_index + start, keys + start,
                                  index + start, count, shift);
                    memcpy(out_index + start, index + start, sizeof(uint32_t) * count);
                } else {
                    dpo_radix_msd_keys(out_keys + start, keys + start, count, shift);
                }
                memcpy(out_keys + start, keys + start, sizeof(uint64_t) * count);
            }
            start = end;
        }
    }
    free(heap);
    dpo_radix_insertion_body(out_keys, out_index, n);
}

static void dpo_radix_msd(uint64_t *keys, uint32_t *index, uint64_t *out_keys,
                          uint32_t *out_index, ptrdiff_t n, int top)
{
    dpo_radix_msd_body(keys, index, out_keys, out_index, n, top);
}

static void dpo_radix_msd_keys(uint64_t *keys, uint64_t *out_keys, ptrdiff_t n, int top)
{
    dpo_radix_msd_body(keys, NULL, out_keys, NULL, n, top);
}

/* Sort the top buckets first..last-1, moved to scratch_keys/scratch_index[starts[b]:
 * starts[b + 1]] by dpo_radix_move, by the bits below `top`, into keys/index (index NULL: keys
 * only); then turn those keys into the bits of their values in place (the caller reads the
 * array as float64), while in cache. */
static inline void dpo_radix_sort_buckets(uint64_t *scratch_keys, uint32_t *scratch_index,
                                          uint64_t *keys, uint32_t *index,
                                          const ptrdiff_t *starts, ptrdiff_t first,
                                          ptrdiff_t last, int top)
{
    for (ptrdiff_t b = first; b < last; b++) {
        const ptrdiff_t lo = starts[b], hi = starts[b + 1];
        if (hi == lo)
            continue;
        if (index != NULL)
            dpo_radix_msd(scratch_keys + lo, scratch_index + lo, keys + lo, index + lo, hi - lo,
                          top);
        else
            dpo_radix_msd_keys(scratch_keys + lo, keys + lo, hi - lo, top);
        dpo_radix_to_values(keys, lo, hi);
    }
}

#endif /* DPO_RADIX_SORT_H */
