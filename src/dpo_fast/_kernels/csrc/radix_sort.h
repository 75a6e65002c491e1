/*
 * A stable radix sort of float64 values, for the batch-sorted loss types (aot, aot_unpaired:
 * dpo_fast._sorted sorts the per-pair differences with it). _kernels/_sort.pyx fills a
 * dpo_radix_job and runs dpo_radix_sort_team in one OpenMP parallel region: each contiguous
 * chunk's keys are formed (dpo_radix_keys, which also forms the differences), its top digits
 * counted (dpo_radix_count) and its keys moved into the top buckets (dpo_radix_move, at
 * offsets bucket-major then chunk: stable); the top buckets are then sorted independently
 * (dpo_radix_sort_buckets), so the result is the same for every thread count.
 *
 * Keys are the float bits made order-preserving as unsigned integers (negative numbers with
 * every bit flipped, others with the sign bit set), after -0.0 is made +0.0 and every NaN the
 * one quiet NaN: equal values then have equal keys, so ties keep index order, -0.0 ties with
 * +0.0 and NaNs come last in index order, exactly as numpy.argsort(kind="stable").
 *
 * Most significant digit first: an LSD sort of doubles needs all 8 byte passes over the whole
 * array (their low mantissa bytes always differ), 8 scatters of 12-byte records through
 * memory (41 ms per 1e6 on one thread here). The top digit is planned from a sample: the 12
 * bits from the highest one that differs between keys (a double's sign and exponent) pick a
 * class, and each class gets as many of the bits below it as split it into buckets of about
 * DPO_RADIX_BUCKET_KEYS (dpo_radix_make_plan). Each top bucket is then split once more in
 * cache on a digit of about log2(n) bits, after which one insertion pass puts the few keys
 * that share a bucket right (dpo_radix_msd), and is copied out in order. On 1e6 normal
 * differences: 2 moves in all (about 11 ms per 1e6 with positions, 9.5 without, on one
 * thread).
 */
#ifndef DPO_RADIX_SORT_H
#define DPO_RADIX_SORT_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The top digit's class: up to 12 bits from the highest one that differs between keys (for
 * doubles of both signs, the sign and the exponent). */
#define DPO_RADIX_CLASS_BITS 12
/* The classes are counted on every this-many-th key (only to size their digits). */
#define DPO_RADIX_SAMPLE_STRIDE 64
/* The top buckets' target size: a bucket and its sorted copy stay in L2 while it is sorted.
 * (Smaller ones cost more in the move than they save: with 512-2048 keys the move wrote to
 * thousands of buckets at once and took twice as long. Raised for very long inputs so that
 * there are at most ~2^15 buckets.) */
#define DPO_RADIX_BUCKET_KEYS 4096
/* The most bits of a class's digit below the class. */
#define DPO_RADIX_MAX_DIGIT_BITS 16
/* Buckets up to this size are sorted in a buffer (see dpo_radix_sort_buckets). */
#define DPO_RADIX_STAGED (4 * DPO_RADIX_BUCKET_KEYS)
/* The widest digit inside a bucket, and the widest whose counts are on the stack (1 KiB a
 * level: the recursion stays shallow in stack even on musl's 128 KiB thread stacks); wider
 * ones are in the caller's work buffer (the top level) or on the heap. */
#define DPO_RADIX_MSD_BITS 14
#define DPO_RADIX_STACK_BITS 8
/* The most chunks of the passes over the whole array. */
#define DPO_RADIX_MAX_CHUNKS 64
/* Buckets this small are left to insertion sort. */
#define DPO_RADIX_SMALL 16

#if defined(__GNUC__)
#define DPO_RADIX_INLINE static inline __attribute__((always_inline))
#define DPO_RADIX_NOINLINE static __attribute__((noinline))
#else
#define DPO_RADIX_INLINE static inline
#define DPO_RADIX_NOINLINE static
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
 * pass: counting here too, block by block from L1, took as long as both passes. Not inlined:
 * inlined into dpo_radix_sort_team this loop took 3x as long.) */
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

DPO_RADIX_NOINLINE uint64_t dpo_radix_keys(const void *first, const void *second, int single,
                                           double scale, ptrdiff_t lo, ptrdiff_t hi,
                                           uint64_t *keys, uint64_t *key_or, int *all_finite)
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

/* The top digit: a key's class (its DPO_RADIX_CLASS_BITS bits from the highest differing
 * one) picks a first bucket and how many of the bits below the class follow it, so that the
 * populated classes get buckets in proportion to their keys (a fixed 16-bit digit of doubles
 * is the sign, the exponent and 4 mantissa bits: a few hundred buckets of up to ~25,000 keys
 * on normal data, sorted out of cache). */
typedef struct {
    int class_shift;   /* class = (key >> class_shift) & class_mask */
    uint64_t class_mask;
    uint64_t below;    /* the bits under the class */
    ptrdiff_t n_buckets;
    uint64_t entry[1 << DPO_RADIX_CLASS_BITS]; /* (first bucket << 8) | shift of the rest */
} dpo_radix_plan;

DPO_RADIX_INLINE ptrdiff_t dpo_radix_digit(const dpo_radix_plan *plan, uint64_t key)
{
    const uint64_t entry = plan->entry[(key >> plan->class_shift) & plan->class_mask];
    return (ptrdiff_t)((entry >> 8) + ((key & plan->below) >> (entry & 63)));
}

/* The plan for keys[0:n] whose highest differing bit is top - 1 (top >= 1), from the classes
 * of a strided sample (estimates only: any plan sorts the same). Returns the bucket count. */
static inline ptrdiff_t dpo_radix_make_plan(const uint64_t *keys, ptrdiff_t n, int top,
                                            dpo_radix_plan *plan)
{
    /* (Fewer classes for short inputs: about one per 16 keys.) */
    int class_bits = 1;
    while (class_bits < DPO_RADIX_CLASS_BITS && ((size_t)n >> (class_bits + 4)) != 0)
        class_bits++;
    const int class_shift = top > class_bits ? top - class_bits : 0;
    const ptrdiff_t n_classes = (ptrdiff_t)1 << (top - class_shift);
    ptrdiff_t target = n >> (DPO_RADIX_MAX_DIGIT_BITS - 1), first = 0;
    if (target < DPO_RADIX_BUCKET_KEYS)
        target = DPO_RADIX_BUCKET_KEYS;
    plan->class_shift = class_shift;
    plan->class_mask = (uint64_t)n_classes - 1;
    plan->below = (UINT64_C(1) << class_shift) - 1;
    memset(plan->entry, 0, sizeof(plan->entry));
    for (ptrdiff_t i = 0; i < n; i += DPO_RADIX_SAMPLE_STRIDE)
        plan->entry[(keys[i] >> class_shift) & plan->class_mask]++;
    for (ptrdiff_t c = 0; c < n_classes; c++) {
        const uint64_t estimate = plan->entry[c] * DPO_RADIX_SAMPLE_STRIDE;
        int bits = 0;
        while (bits < class_shift && bits < DPO_RADIX_MAX_DIGIT_BITS
               && (estimate >> bits) > (uint64_t)target)
            bits++;
        plan->entry[c] = ((uint64_t)first << 8) | (uint64_t)(class_shift - bits);
        first += (ptrdiff_t)1 << bits;
    }
    plan->n_buckets = first;
    return first;
}

/* counts[digit] = how many of keys[lo:hi] have it. */
static inline void dpo_radix_count(const uint64_t *keys, ptrdiff_t lo, ptrdiff_t hi,
                                   const dpo_radix_plan *plan, ptrdiff_t *counts)
{
    memset(counts, 0, sizeof(ptrdiff_t) * (size_t)plan->n_buckets);
    for (ptrdiff_t i = lo; i < hi; i++)
        counts[dpo_radix_digit(plan, keys[i])]++;
}

/* counts[t * n_buckets + b] (chunk t's keys in bucket b) turned in place into where chunk t's
 * first key of bucket b goes: bucket-major, then chunk (stable); starts[b] = where bucket b
 * starts, starts[n_buckets] = the total. */
static inline void dpo_radix_offsets(ptrdiff_t *counts, int chunks, ptrdiff_t n_buckets,
                                     ptrdiff_t *starts)
{
    ptrdiff_t running = 0;
    for (ptrdiff_t b = 0; b < n_buckets; b++) {
        starts[b] = running;
        for (int t = 0; t < chunks; t++) {
            const ptrdiff_t count = counts[t * n_buckets + b];
            counts[t * n_buckets + b] = running;
            running += count;
        }
    }
    starts[n_buckets] = running;
}

/* The buckets cut into groups of at least `size` keys at bucket ends (a large bucket is a
 * group of its own): group g is buckets edges[g]..edges[g + 1]-1. Returns the group count. */
static inline ptrdiff_t dpo_radix_groups(const ptrdiff_t *starts, ptrdiff_t n_buckets,
                                         ptrdiff_t size, ptrdiff_t *edges)
{
    ptrdiff_t groups = 0, next = size;
    edges[0] = 0;
    for (ptrdiff_t b = 1; b < n_buckets; b++) {
        if (starts[b] >= next) {
            edges[++groups] = b;
            next = starts[b] + size;
        }
    }
    edges[++groups] = n_buckets;
    return groups;
}

/* Move keys[lo:hi] (with their positions lo..hi-1 when out_index is not NULL) to
 * out_keys/out_index by digit; offsets[digit] is where the next one goes (advanced). */
static inline void dpo_radix_move(const uint64_t *keys, ptrdiff_t lo, ptrdiff_t hi,
                                  const dpo_radix_plan *plan, ptrdiff_t *offsets,
                                  uint64_t *out_keys, uint32_t *out_index)
{
    if (out_index != NULL) {
        for (ptrdiff_t i = lo; i < hi; i++) {
            const uint64_t key = keys[i];
            const ptrdiff_t to = offsets[dpo_radix_digit(plan, key)]++;
            out_keys[to] = key;
            out_index[to] = (uint32_t)i;
        }
    } else {
        for (ptrdiff_t i = lo; i < hi; i++) {
            const uint64_t key = keys[i];
            out_keys[offsets[dpo_radix_digit(plan, key)]++] = key;
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
                          uint32_t *out_index, ptrdiff_t n, uint32_t *work);
static void dpo_radix_msd_keys(uint64_t *keys, uint64_t *out_keys, ptrdiff_t n,
                               uint32_t *work);

/* The MSD step after its count: offsets[d] = how many of keys[0:n] have digit
 * d = (key >> shift) & mask. (Split out so that a caller which counted in a pass of its own
 * saves the step's two reads of the keys.) */
DPO_RADIX_INLINE void dpo_radix_msd_rest(uint64_t *keys, uint32_t *index, uint64_t *out_keys,
                                         uint32_t *out_index, ptrdiff_t n, uint32_t *offsets,
                                         int shift, uint64_t mask)
{
    uint32_t running = 0, largest = 0;
    /* Two counts a step: the running sum's chain of adds is half as long (the bucket sorts
     * ~8% faster; four a step were no faster). mask + 1 = 2^width, width >= 1: even. */
    for (ptrdiff_t b = 0; b < (ptrdiff_t)mask; b += 2) {
        const uint32_t first = offsets[b], second = offsets[b + 1];
        offsets[b] = running;
        offsets[b + 1] = running + first;
        running += first + second;
        const uint32_t pair = first > second ? first : second;
        largest = pair > largest ? pair : largest;
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
                                  index + start, count, NULL);
                    memcpy(out_index + start, index + start, sizeof(uint32_t) * count);
                } else {
                    dpo_radix_msd_keys(out_keys + start, keys + start, count, NULL);
                }
                memcpy(out_keys + start, keys + start, sizeof(uint64_t) * count);
            }
            start = end;
        }
    }
    /* One branch-free bubble pass first: it orders the pairs that share a bucket (most of
     * the out-of-order keys), so the insertion pass's branch is mispredicted far less
     * (about 12% less time in the bucket sorts without positions, 2% with). */
    {
        uint64_t carry = out_keys[0];
        uint32_t carry_index = index != NULL ? out_index[0] : 0;
        if (index != NULL) {
            for (ptrdiff_t i = 1; i < n; i++) {
                const uint64_t key = out_keys[i];
                const uint64_t mask = (uint64_t)0 - (uint64_t)(carry > key);
                const uint64_t differ = (carry ^ key) & mask;
                out_keys[i - 1] = carry ^ differ;
                carry = key ^ differ;
                const uint32_t position = out_index[i];
                const uint32_t index_differ = (carry_index ^ position) & (uint32_t)mask;
                out_index[i - 1] = carry_index ^ index_differ;
                carry_index = position ^ index_differ;
            }
        } else {
            for (ptrdiff_t i = 1; i < n; i++) {
                const uint64_t key = out_keys[i];
                const int swap = carry > key;
                out_keys[i - 1] = swap ? key : carry;
                carry = swap ? carry : key;
            }
        }
        out_keys[n - 1] = carry;
        if (index != NULL)
            out_index[n - 1] = carry_index;
    }
    dpo_radix_insertion_body(out_keys, out_index, n);
}


/* The MSD step, always inlined into the two functions below (with and without positions) so
 * that their loops have no per-element tests of index != NULL. Sorts keys[0:n] (index along)
 * into out_keys/out_index; keys/index are left as scratch. `work` (NULL: the stack or the
 * heap) holds 2^DPO_RADIX_MSD_BITS counts.
 *
 * The digit is about log2(n) bits from the highest bit that differs in the range (an AND/OR
 * pass finds it): after one move the keys are in order but for buckets of a key or two,
 * which one insertion pass over the whole range puts right (with few mispredicted branches,
 * and no loop over the buckets). Buckets of more than DPO_RADIX_SMALL (keys alike in these
 * bits) are sorted first by the next digits. */
DPO_RADIX_INLINE void dpo_radix_msd_body(uint64_t *keys, uint32_t *index, uint64_t *out_keys,
                                         uint32_t *out_index, ptrdiff_t n, uint32_t *work)
{
    uint32_t stack_offsets[1 << DPO_RADIX_STACK_BITS], *offsets = stack_offsets, *heap = NULL;
    uint64_t all_and = ~UINT64_C(0), all_or = 0;
    int top = 0, width = 1;
    if (n > DPO_RADIX_SMALL) {
        for (ptrdiff_t i = 0; i < n; i++) {
            all_and &= keys[i];
            all_or |= keys[i];
        }
        top = all_and == all_or ? 0 : 64 - __builtin_clzll(all_and ^ all_or);
    }
    if (n <= DPO_RADIX_SMALL || top == 0) {
        memcpy(out_keys, keys, sizeof(uint64_t) * (size_t)n);
        if (index != NULL)
            memcpy(out_index, index, sizeof(uint32_t) * (size_t)n);
        if (top > 0 || n <= DPO_RADIX_SMALL)
            dpo_radix_insertion_body(out_keys, out_index, n);
        return;
    }
    while (width < DPO_RADIX_MSD_BITS && width < top && ((size_t)n >> width) != 0)
        width++;
    if (width > DPO_RADIX_STACK_BITS) {
        if (work == NULL)
            work = heap = (uint32_t *)malloc(sizeof(uint32_t) << width);
        if (work != NULL)
            offsets = work;
        else
            width = DPO_RADIX_STACK_BITS; /* (narrower digits: slower, the same result) */
    }
    const int shift = top - width;
    const uint64_t mask = (UINT64_C(1) << width) - 1;
    memset(offsets, 0, sizeof(uint32_t) << width);
    for (ptrdiff_t i = 0; i < n; i++)
        offsets[(ptrdiff_t)((keys[i] >> shift) & mask)]++;
    dpo_radix_msd_rest(keys, index, out_keys, out_index, n, offsets, shift, mask);
    free(heap);
}

static void dpo_radix_msd(uint64_t *keys, uint32_t *index, uint64_t *out_keys,
                          uint32_t *out_index, ptrdiff_t n, uint32_t *work)
{
    dpo_radix_msd_body(keys, index, out_keys, out_index, n, work);
}

static void dpo_radix_msd_keys(uint64_t *keys, uint64_t *out_keys, ptrdiff_t n,
                               uint32_t *work)
{
    dpo_radix_msd_body(keys, NULL, out_keys, NULL, n, work);
}

/* The size in bytes of dpo_radix_sort_buckets's work buffer for buckets of up to `largest`
 * keys: counts for digits of up to count_bits bits, and a bucket's keys (twice) and
 * positions (sized to the largest bucket: short inputs allocate little). */
static inline size_t dpo_radix_work_bytes(ptrdiff_t largest, int *count_bits,
                                          ptrdiff_t *staged)
{
    int bits = 1;
    while (bits < DPO_RADIX_MSD_BITS && ((size_t)largest >> bits) != 0)
        bits++;
    *count_bits = bits;
    *staged = largest < DPO_RADIX_STAGED ? largest : DPO_RADIX_STAGED;
    return (sizeof(uint32_t) << bits)
           + (2 * sizeof(uint64_t) + sizeof(uint32_t)) * (size_t)*staged;
}

/* Sort scratch_keys/scratch_index[lo:hi] (a staged bucket) as single words if
 * they fit in one: the bits the keys differ in, then the keys' places in the bucket (ordered
 * so, equal keys stay in index order); the positions are looked up from the places at the
 * end. The sort of words alone is about 25% faster than that of keys with positions
 * (whose every move and swap is two). Returns 0 (nothing done) when they do not fit. */
static inline int dpo_radix_sort_packed(const uint64_t *scratch_keys,
                                        const uint32_t *scratch_index, uint64_t *keys,
                                        uint32_t *index, ptrdiff_t lo, ptrdiff_t hi,
                                        uint64_t *packed, uint64_t *sorted, uint32_t *places,
                                        uint32_t *counts)
{
    const ptrdiff_t n = hi - lo;
    uint64_t all_and = ~UINT64_C(0), all_or = 0;
    int key_bits = 0, place_bits = 0;
    for (ptrdiff_t i = lo; i < hi; i++) {
        all_and &= scratch_keys[i];
        all_or |= scratch_keys[i];
    }
    if (all_and != all_or)
        key_bits = 64 - __builtin_clzll(all_and ^ all_or);
    while (((size_t)(n - 1) >> place_bits) != 0)
        place_bits++;
    if (key_bits + place_bits > 64 || key_bits == 64)
        return 0;
    if (key_bits == 0) {
        /* Equal keys: in index order already. */
        const uint64_t key = all_and ^ ((all_and >> 63) ? UINT64_C(0x8000000000000000)
                                                        : UINT64_C(0xffffffffffffffff));
        for (ptrdiff_t i = lo; i < hi; i++)
            keys[i] = key;
        memcpy(index + lo, scratch_index + lo, sizeof(uint32_t) * (size_t)n);
        return 1;
    }
    const uint64_t low = (UINT64_C(1) << key_bits) - 1, high = all_and & ~low;
    const uint64_t place_mask = (UINT64_C(1) << place_bits) - 1;
    /* (Copied in order, so that the lookups below hit the cache.) */
    memcpy(places, scratch_index + lo, sizeof(uint32_t) * (size_t)n);
    if (n > DPO_RADIX_SMALL) {
        /* The words' highest differing bit is known (the keys' above the places): the
         * first digit is counted as they are packed, not in two more passes over them (as
         * dpo_radix_msd_keys would: the same digit, the same order). */
        const int top = key_bits + place_bits;
        int width = 1;
        while (width < DPO_RADIX_MSD_BITS && width < top && ((size_t)n >> width) != 0)
            width++;
        const int shift = top - width;
        const uint64_t mask = (UINT64_C(1) << width) - 1;
        memset(counts, 0, sizeof(uint32_t) << width);
        for (ptrdiff_t i = 0; i < n; i++) {
            const uint64_t word = ((scratch_keys[lo + i] & low) << place_bits) | (uint64_t)i;
            packed[i] = word;
            counts[(ptrdiff_t)((word >> shift) & mask)]++;
        }
        dpo_radix_msd_rest(packed, NULL, sorted, NULL, n, counts, shift, mask);
    } else {
        for (ptrdiff_t i = 0; i < n; i++)
            packed[i] = ((scratch_keys[lo + i] & low) << place_bits) | (uint64_t)i;
        dpo_radix_msd_keys(packed, sorted, n, counts);
    }
    for (ptrdiff_t i = 0; i < n; i++) {
        const uint64_t word = sorted[i], key = high | (word >> place_bits);
        keys[lo + i] = key ^ ((key >> 63) ? UINT64_C(0x8000000000000000)
                                          : UINT64_C(0xffffffffffffffff));
        index[lo + i] = places[word & place_mask];
    }
    return 1;
}

/* Sort the top buckets first..last-1, moved to scratch_keys/scratch_index[starts[b]:
 * starts[b + 1]] by dpo_radix_move, into keys/index (index NULL: keys only), as the bits of
 * their values (the caller reads the array as float64). `work` is dpo_radix_work_bytes of
 * the largest bucket (which sets count_bits and staged), or NULL (slower: every bucket
 * straight into keys/index, its counts on the heap).
 *
 * A bucket of up to `staged` keys is sorted into the work buffer (in cache) and then copied
 * out in order: moved straight into keys/index, every store of the move missed the cache
 * (the destination is not in cache yet, and its lines are touched in random order). */
static inline void dpo_radix_sort_buckets(uint64_t *scratch_keys, uint32_t *scratch_index,
                                          uint64_t *keys, uint32_t *index,
                                          const ptrdiff_t *starts, ptrdiff_t first,
                                          ptrdiff_t last, void *work, int count_bits,
                                          ptrdiff_t staged)
{
    uint32_t *counts = (uint32_t *)work;
    uint64_t *staged_keys = NULL, *packed = NULL;
    uint32_t *staged_index = NULL;
    if (work != NULL) {
        staged_keys = (uint64_t *)(counts + ((size_t)1 << count_bits));
        packed = staged_keys + staged;
        staged_index = (uint32_t *)(packed + staged);
    }
    for (ptrdiff_t b = first; b < last; b++) {
        const ptrdiff_t lo = starts[b], hi = starts[b + 1];
        if (hi == lo)
            continue;
        if (work != NULL && hi - lo <= staged) {
            if (index != NULL) {
                if (dpo_radix_sort_packed(scratch_keys, scratch_index, keys, index, lo, hi,
                                          packed, staged_keys, staged_index, counts))
                    continue;
                dpo_radix_msd(scratch_keys + lo, scratch_index + lo, staged_keys, staged_index,
                              hi - lo, counts);
                memcpy(index + lo, staged_index, sizeof(uint32_t) * (size_t)(hi - lo));
            } else {
                dpo_radix_msd_keys(scratch_keys + lo, staged_keys, hi - lo, counts);
            }
            for (ptrdiff_t i = lo; i < hi; i++) {
                const uint64_t key = staged_keys[i - lo];
                keys[i] = key ^ ((key >> 63) ? UINT64_C(0x8000000000000000)
                                             : UINT64_C(0xffffffffffffffff));
            }
            continue;
        }
        if (index != NULL)
            dpo_radix_msd(scratch_keys + lo, scratch_index + lo, keys + lo, index + lo, hi - lo,
                          counts);
        else
            dpo_radix_msd_keys(scratch_keys + lo, keys + lo, hi - lo, counts);
        dpo_radix_to_values(keys, lo, hi);
    }
}

/* One sort: what dpo_radix_sort_team reads and writes. The caller fills the inputs. */
typedef struct {
    const void *first, *second; /* the differences' inputs (second NULL: first alone) */
    int single;                 /* float32 inputs (else float64) */
    double scale;
    ptrdiff_t n;
    int chunks;                 /* contiguous chunks of the key, count and move passes (at
                                   most DPO_RADIX_MAX_CHUNKS) */
    uint64_t *keys;             /* n: the sorted values' bits */
    uint32_t *index;            /* n positions, or NULL */
    uint64_t *scratch_keys;     /* n */
    uint32_t *scratch_index;    /* n, or NULL with index */
    /* Out: whether every difference is finite; -1 if out of memory, else 0. */
    int all_finite, status;
    /* Working state, per chunk (DPO_RADIX_MAX_CHUNKS at most) and shared. */
    uint64_t chunk_and[DPO_RADIX_MAX_CHUNKS], chunk_or[DPO_RADIX_MAX_CHUNKS];
    int chunk_finite[DPO_RADIX_MAX_CHUNKS], all_equal;
    ptrdiff_t *counts, *starts, *edges, n_groups, largest;
    dpo_radix_plan plan;
} dpo_radix_job;

DPO_RADIX_INLINE ptrdiff_t dpo_radix_chunk_start(const dpo_radix_job *job, int chunk)
{
    return job->n * chunk / job->chunks;
}

/* The whole sort, run by every thread of an OpenMP team (or by one thread outside any): the
 * passes are worksharing loops of this one parallel region, not a region each (each region
 * pays a fork-join). Every pass hands out its chunks (or bucket groups) to whichever thread
 * is free, several per thread: on a busy machine a thread that is not running holds up the
 * pass's end by one chunk, not by its half. The chunks depend on n only and every bucket is
 * sorted by one thread: the result is the same for every thread count. */
static void dpo_radix_sort_team(dpo_radix_job *job)
{
    const int chunks = job->chunks;
    const ptrdiff_t n = job->n;
#pragma omp for schedule(dynamic, 1)
    for (int c = 0; c < chunks; c++) {
        job->chunk_and[c] = dpo_radix_keys(job->first, job->second, job->single, job->scale,
                                           dpo_radix_chunk_start(job, c),
                                           dpo_radix_chunk_start(job, c + 1), job->keys,
                                           &job->chunk_or[c], &job->chunk_finite[c]);
    }
#pragma omp single
    {
        uint64_t key_and = job->chunk_and[0], key_or = job->chunk_or[0];
        job->all_finite = job->chunk_finite[0];
        for (int c = 1; c < chunks; c++) {
            key_and &= job->chunk_and[c];
            key_or |= job->chunk_or[c];
            job->all_finite &= job->chunk_finite[c];
        }
        /* Every key the same: already in order, in index order. */
        job->all_equal = key_and == key_or;
        if (!job->all_equal) {
            const ptrdiff_t n_buckets = dpo_radix_make_plan(
                job->keys, n, 64 - __builtin_clzll(key_and ^ key_or), &job->plan);
            job->counts = (ptrdiff_t *)malloc(sizeof(ptrdiff_t) * (size_t)n_buckets
                                              * (size_t)(chunks + 2) + sizeof(ptrdiff_t) * 2);
            if (job->counts == NULL) {
                job->status = -1;
            } else {
                job->starts = job->counts + n_buckets * chunks;
                job->edges = job->starts + n_buckets + 1;
            }
        }
    }
    if (job->status != 0)
        return;
    if (job->all_equal) {
#pragma omp for schedule(dynamic, 1)
        for (int c = 0; c < chunks; c++) {
            const ptrdiff_t lo = dpo_radix_chunk_start(job, c);
            const ptrdiff_t hi = dpo_radix_chunk_start(job, c + 1);
            dpo_radix_to_values(job->keys, lo, hi);
            if (job->index != NULL)
                for (ptrdiff_t i = lo; i < hi; i++)
                    job->index[i] = (uint32_t)i;
        }
        return;
    }
    const ptrdiff_t n_buckets = job->plan.n_buckets;
#pragma omp for schedule(dynamic, 1)
    for (int c = 0; c < chunks; c++)
        dpo_radix_count(job->keys, dpo_radix_chunk_start(job, c),
                        dpo_radix_chunk_start(job, c + 1), &job->plan,
                        job->counts + n_buckets * c);
#pragma omp single
    {
        dpo_radix_offsets(job->counts, chunks, n_buckets, job->starts);
        /* Groups of about n / 128 keys for whichever thread is free: a double's buckets are
         * uneven, equal bucket counts per thread would not be. */
        job->n_groups = dpo_radix_groups(job->starts, n_buckets, n / 128 + 1,
                                         job->edges);
        job->largest = 0;
        for (ptrdiff_t b = 0; b < n_buckets; b++)
            if (job->starts[b + 1] - job->starts[b] > job->largest)
                job->largest = job->starts[b + 1] - job->starts[b];
    }
#pragma omp for schedule(dynamic, 1)
    for (int c = 0; c < chunks; c++)
        dpo_radix_move(job->keys, dpo_radix_chunk_start(job, c),
                       dpo_radix_chunk_start(job, c + 1), &job->plan,
                       job->counts + n_buckets * c, job->scratch_keys, job->index != NULL
                       ? job->scratch_index : NULL);
    int count_bits;
    ptrdiff_t staged;
    /* (One per thread: NULL is only slower.) */
    void *work = malloc(dpo_radix_work_bytes(job->largest, &count_bits, &staged));
#pragma omp for schedule(dynamic, 1)
    for (ptrdiff_t g = 0; g < job->n_groups; g++)
        dpo_radix_sort_buckets(job->scratch_keys, job->scratch_index, job->keys, job->index,
                               job->starts, job->edges[g], job->edges[g + 1], work,
                               count_bits, staged);
    free(work);
}

#endif /* DPO_RADIX_SORT_H */
