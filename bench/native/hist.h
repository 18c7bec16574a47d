/* hist.h - log-linear latency histogram (HdrHistogram-like), microsecond units.
 *
 * Values 0..2047 us are exact; above, each power-of-two range is split into
 * 1024 linear sub-buckets, i.e. three significant decimal digits, up to 60 s.
 * One histogram per load-generator thread, merged at the end.
 */
#ifndef TCPZOO_HIST_H
#define TCPZOO_HIST_H

#include <stdint.h>
#include <string.h>

#define H_SUB_BITS 11
#define H_SUB (1u << H_SUB_BITS)          /* 2048 */
#define H_HALF (H_SUB / 2)                /* 1024 */
#define H_MAX_US 60000000ull              /* 60 s */
#define H_BUCKETS 16                      /* 2^(11+15) > 60e6 */
#define H_SIZE (H_SUB + (H_BUCKETS - 1) * H_HALF)

typedef struct {
    uint64_t counts[H_SIZE];
    uint64_t total;
    uint64_t max_us;
    uint64_t sum_ns;
} hist_t;

static inline unsigned hist_index(uint64_t v)
{
    if (v > H_MAX_US)
        v = H_MAX_US;
    if (v < H_SUB)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned b = msb - (H_SUB_BITS - 1);            /* >= 1 */
    unsigned sub = (unsigned)(v >> b);              /* H_HALF .. H_SUB-1 */
    return H_SUB + (b - 1) * H_HALF + (sub - H_HALF);
}

/* Highest value that falls in the same bucket as index i. */
static inline uint64_t hist_high(unsigned i)
{
    if (i < H_SUB)
        return i;
    unsigned b = (i - H_SUB) / H_HALF + 1;
    uint64_t sub = (i - H_SUB) % H_HALF + H_HALF;
    return ((sub + 1) << b) - 1;
}

static inline void hist_record_ns(hist_t *h, uint64_t ns)
{
    uint64_t us = (ns + 500) / 1000;
    h->counts[hist_index(us)]++;
    h->total++;
    h->sum_ns += ns;
    if (us > h->max_us)
        h->max_us = us;
}

static inline void hist_merge(hist_t *dst, const hist_t *src)
{
    for (unsigned i = 0; i < H_SIZE; i++)
        dst->counts[i] += src->counts[i];
    dst->total += src->total;
    dst->sum_ns += src->sum_ns;
    if (src->max_us > dst->max_us)
        dst->max_us = src->max_us;
}

/* Value at percentile p (0..100), in us: the bucket's highest equivalent value. */
static inline uint64_t hist_percentile(const hist_t *h, double p)
{
    if (h->total == 0)
        return 0;
    uint64_t rank = (uint64_t)(p / 100.0 * (double)h->total + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > h->total)
        rank = h->total;
    uint64_t seen = 0;
    for (unsigned i = 0; i < H_SIZE; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            uint64_t v = hist_high(i);
            return v > h->max_us ? h->max_us : v;
        }
    }
    return h->max_us;
}

#endif
