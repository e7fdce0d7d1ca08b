/* The full-batch cross-entropy of a linear classifier in one pass over the rows: logits, loss
 * and gradient of each block of rows while the block is in cache.
 *
 * C with no Python or torch headers (GCC or Clang: it uses their vector extensions), so `cc`
 * builds it in about a second of CPU (training/fused_cross_entropy.py compiles it on first use
 * and calls it through ctypes).
 *
 * For rows x (n, d), W (k, d) and b (k) (or none), with logits z = x W^T + b:
 *   k == 1, binary: y holds 0/1 in x's type, loss = max(z, 0) - z y + log(1 + exp(-|z|)),
 *                   dloss/dz = sigmoid(z) - y;
 *   k >= 2, classes: y holds int64 class indices, loss = log(sum_c exp(z_c)) - z_y,
 *                   dloss/dz_c = softmax(z)_c - [c == y].
 * Each row's loss and dloss/dz are multiplied by its weight (1 without weights). The kernel
 * writes the sums over the rows, in double: out[0] the loss, out[1 .. k d] dloss/dW row by row,
 * out[1 + k d .. k d + k] dloss/db. The caller divides by n.
 *
 * Each row is computed in the rows' type (cross_entropy_rows.h, included once per type): float
 * rows in float, LANES to a vector (16 with AVX-512, else 8), double rows 8 to a vector; sums go
 * into double every block of BLOCK_ROWS rows (the gradients and the binary loss, summed lane
 * by lane in the rows' type within the block) or row by row (the softmax loss). A row is read
 * from memory once, for its logits (one vector of products per row, the vectors of LANES rows
 * summed by one shuffle network); the loss and the gradient read the rows again from L1
 * (binary rows of one or two vectors: each 2 LANES rows as soon as their logits are known,
 * with the next block asked for ahead; otherwise the whole block after its logits). exp and
 * log are written out here (polynomials after a range reduction; relative errors about 1e-16
 * in double, 1e-7 in float) so that the compiler vectorises them over rows and no libm call
 * sits in the loop (the build's -fno-trapping-math lets GCC turn their selects into blends
 * where there is no AVX-512).
 *
 * Rows are summed in chunks of CHUNK_ROWS, each chunk's sums apart, then the chunks in order:
 * the result is the same, bit for bit, whatever the number of threads. Threads are pthreads
 * (torch ships its own OpenMP runtime, which a second one would fight), each with a contiguous
 * range of chunks. */

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK_ROWS 2048
#define BLOCK_ROWS 64

#define GDFLOW_OK 0
#define GDFLOW_BAD_LABEL 1
#define GDFLOW_NO_MEMORY 2

static inline uint64_t bits_of_double(double v) {
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    return u;
}

static inline double double_of_bits(uint64_t u) {
    double v;
    memcpy(&v, &u, sizeof v);
    return v;
}

static inline uint32_t bits_of_float(float v) {
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return u;
}

static inline float float_of_bits(uint32_t u) {
    float v;
    memcpy(&v, &u, sizeof v);
    return v;
}

/* ln 2 split so that k * LN2_HI is exact for the k that occur (fdlibm's constants). */
static const double LN2_HI = 6.93147180369123816490e-01;
static const double LN2_LO = 1.90821492927058770002e-10;
static const double LOG2_E = 1.44269504088896338700e+00;
/* 1.5 * 2^52: adding it rounds a double below 2^51 in magnitude to an integer, held in the low
 * bits of the sum's mantissa. */
static const double SHIFT = 0x1.8p52;

static const float LN2_HI_F = 6.9314575195e-01f;
static const float LN2_LO_F = 1.4286067653e-06f;
static const float LOG2_E_F = 1.4426950409e+00f;
static const float SHIFT_F = 0x1.8p23f;

/* exp(a) for a <= 0, and 0 for a below -708 (where exp(a) < 3e-308); NaN stays NaN.
 * a = k ln2 + r with |r| <= ln2 / 2, exp(r) by its Taylor polynomial of degree 13 (truncation
 * below 5e-18), times 2^k written into the exponent bits. */
static inline double exp_nonpositive_double(double a) {
    double t = a * LOG2_E + SHIFT;
    double k = t - SHIFT;
    double r = (a - k * LN2_HI) - k * LN2_LO;
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    /* t's low 12 mantissa bits hold k mod 4096 (2^51 is a multiple of 4096) */
    double scale = double_of_bits((bits_of_double(t) + 1023u) << 52);
    return a < -708.0 ? 0.0 : p * scale;
}

/* The same in float: 0 below -87 (exp(-87) ~ 1.6e-38), degree 7 (truncation below 1e-8). */
static inline float exp_nonpositive_float(float a) {
    float t = a * LOG2_E_F + SHIFT_F;
    float k = t - SHIFT_F;
    float r = (a - k * LN2_HI_F) - k * LN2_LO_F;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    float scale = float_of_bits((bits_of_float(t) + 127u) << 23);
    return a < -87.0f ? 0.0f : p * scale;
}

/* log(u) for a positive normal u (fdlibm's e_log.c without its branches): u = 2^k m with m in
 * [sqrt(2)/2, sqrt(2)), f = m - 1 exactly, s = f / (2 + f), log(1 + f) = 2 atanh(s) by a
 * minimax polynomial in s^2. */
static inline double log_positive_double(double u) {
    const uint64_t off = 0x3fe6a09e00000000ull;
    uint64_t bits = bits_of_double(u);
    uint64_t tmp = bits - off;
    int64_t k = (int64_t)tmp >> 52;
    double m = double_of_bits(bits - (tmp & 0xfff0000000000000ull));
    /* k as a double without an int64 conversion (AVX2 has none): 1.5 * 2^52 + k less 1.5 * 2^52 */
    double kd = double_of_bits(bits_of_double(SHIFT) + (uint64_t)k) - SHIFT;
    double f = m - 1.0;
    double s = f / (2.0 + f);
    double z = s * s;
    double w = z * z;
    double t1 = w * (3.999999999940941908e-01 +
                     w * (2.222219843214978396e-01 + w * 1.531383769920937332e-01));
    double t2 = z * (6.666666666666735130e-01 +
                     w * (2.857142874366239149e-01 +
                          w * (1.818357216161805012e-01 + w * 1.479819860511658591e-01)));
    double r = t2 + t1;
    double hfsq = 0.5 * f * f;
    return kd * LN2_HI - ((hfsq - (s * (hfsq + r) + kd * LN2_LO)) - f);
}

/* The same in float (fdlibm's e_logf.c). */
static inline float log_positive_float(float u) {
    const uint32_t off = 0x3f3504f3u;
    uint32_t bits = bits_of_float(u);
    uint32_t tmp = bits - off;
    int32_t k = (int32_t)tmp >> 23;
    float m = float_of_bits(bits - (tmp & 0xff800000u));
    float kf = float_of_bits(bits_of_float(SHIFT_F) + (uint32_t)k) - SHIFT_F;
    float f = m - 1.0f;
    float s = f / (2.0f + f);
    float z = s * s;
    float w = z * z;
    float t1 = w * (0x1.999c26p-2f + w * 0x1.f13c4cp-3f);
    float t2 = z * (0x1.555554p-1f + w * 0x1.23d3dcp-2f);
    float r = t2 + t1;
    float hfsq = 0.5f * f * f;
    return s * (hfsq + r) + kf * 9.0580006145e-06f - hfsq + f + kf * 6.9313812256e-01f;
}

/* log(1 + e) for e in [0, 1], with u = 1 + e and r = 1 / u already at hand: log(u) plus the
 * rounding of u = 1 + e, to first order. */
static inline double log1p_unit_double(double e, double u, double r) {
    return log_positive_double(u) + (e - (u - 1.0)) * r;
}

/* The same in float: e P(e), P of degree 8 fitted to log(1 + e) / e on [0, 1] (Chebyshev, in
 * float evaluation within 2e-7 of log1p): no division and no range reduction. */
static inline float log1p_unit_float(float e, float u, float r) {
    (void)u;
    (void)r;
    float p = 0.005253457929939032f;
    p = p * e - 0.02958850748836994f;
    p = p * e + 0.07836166769266129f;
    p = p * e - 0.13674770295619965f;
    p = p * e + 0.19111430644989014f;
    p = p * e - 0.24844369292259216f;
    p = p * e + 0.33319270610809326f;
    p = p * e - 0.49999502301216125f;
    p = p * e + 1.0f;
    return e * p;
}

typedef struct {
    const void *x;
    const void *y;
    const void *weights; /* NULL: every row weighs 1 */
    const void *w;       /* k x d, in x's type */
    const void *b;       /* k, or NULL: no bias */
    int64_t n, d, k;
    int is_double;
    double *partial;     /* one row of 1 + k d + k sums per chunk */
    int64_t first, last; /* this job's chunks */
    int status;
} job_t;

/* A thread's working memory, each part sized for double rows. */
typedef struct {
    void *z;    /* k x BLOCK_ROWS: logits, then their gradients */
    void *rows; /* 3 x BLOCK_ROWS */
    void *grad; /* d rounded up to a vector: one class's gradient over the block */
    void *w;    /* k x ceil(d / LANES) vectors: W, zero beyond d */
    void *mask; /* one vector: the lanes of W's last vector below d */
    void *pad;  /* BLOCK_ROWS x d + one vector: the data's last rows, padded */
    void *ones; /* BLOCK_ROWS ones: the weights of rows without weights */
} scratch_t;

#define REAL float
#define WORD int32_t
/* Vectors of the machine's width: 16 floats where there is AVX-512; elsewhere 8 (on AVX2, GCC
 * splits 64-byte vectors in two, and the softmax epoch on 1M x 16 x 10 took 343-385 ms on one
 * Zen 3 thread with 16 lanes against 105 ms with 8). */
#if defined(__AVX512F__)
#define LANES 16
#else
#define LANES 8
#endif
#define FN(name) name##_float
#define EXP exp_nonpositive_float
#define LOG log_positive_float
#define LOG1P log1p_unit_float
#include "cross_entropy_rows.h"
#undef REAL
#undef WORD
#undef LANES
#undef FN
#undef EXP
#undef LOG
#undef LOG1P

#define REAL double
#define WORD int64_t
#define LANES 8
#define FN(name) name##_double
#define EXP exp_nonpositive_double
#define LOG log_positive_double
#define LOG1P log1p_unit_double
#include "cross_entropy_rows.h"
#undef REAL
#undef WORD
#undef LANES
#undef FN
#undef EXP
#undef LOG
#undef LOG1P

static void *aligned(size_t bytes) {
    return aligned_alloc(64, (bytes + 63) / 64 * 64);
}

static void *run_job(void *arg) {
    job_t *job = (job_t *)arg;
    const int64_t d = job->d, k = job->k, width = 1 + k * d + k;
    const size_t vectors = (size_t)(k * ((d + 7) / 8)); /* enough for LANES 8 and 16 */
    scratch_t scratch = {
        aligned(sizeof(double) * BLOCK_ROWS * k),
        aligned(sizeof(double) * BLOCK_ROWS * 3),
        aligned(sizeof(double) * (d + 8)),
        aligned(64 * (vectors > 0 ? vectors : 1)),
        aligned(64),
        aligned(sizeof(double) * (BLOCK_ROWS * d + 8)),
        aligned(sizeof(double) * BLOCK_ROWS),
    };
    job->status = GDFLOW_OK;
    if (!scratch.z || !scratch.rows || !scratch.grad || !scratch.w || !scratch.mask ||
        !scratch.pad || !scratch.ones) {
        job->status = GDFLOW_NO_MEMORY;
    } else if (job->is_double) {
        prepare_double(job, &scratch);
    } else {
        prepare_float(job, &scratch);
    }
    for (int64_t chunk = job->first; chunk < job->last && job->status == GDFLOW_OK; chunk++) {
        double *sums = job->partial + chunk * width;
        memset(sums, 0, sizeof(double) * width);
        int64_t end = (chunk + 1) * CHUNK_ROWS < job->n ? (chunk + 1) * CHUNK_ROWS : job->n;
        for (int64_t start = chunk * CHUNK_ROWS; start < end; start += BLOCK_ROWS) {
            int64_t rows = end - start < BLOCK_ROWS ? end - start : BLOCK_ROWS;
            if (k == 1 && job->is_double) {
                binary_block_double(job, start, rows, &scratch, sums);
            } else if (k == 1) {
                binary_block_float(job, start, rows, &scratch, sums);
            } else {
                job->status = job->is_double
                                  ? classes_block_double(job, start, rows, &scratch, sums)
                                  : classes_block_float(job, start, rows, &scratch, sums);
                if (job->status != GDFLOW_OK) break;
            }
        }
    }
    free(scratch.z);
    free(scratch.rows);
    free(scratch.grad);
    free(scratch.w);
    free(scratch.mask);
    free(scratch.pad);
    free(scratch.ones);
    return NULL;
}

/* Runs work on each of count jobs (job t at (char *)jobs + t * size): jobs 1 .. count - 1 on
 * threads of their own, job 0 on this one, and a job whose thread cannot start here too. Each
 * job keeps its own status. Returns GDFLOW_NO_MEMORY, having run nothing, if the threads'
 * handles cannot be allocated, else GDFLOW_OK once every job is done. */
static int run_on_threads(void *(*work)(void *), void *jobs, size_t size, int64_t count) {
    char *job = (char *)jobs;
    pthread_t *handles = calloc((size_t)count, sizeof(pthread_t));
    char *started = calloc((size_t)count, 1);
    int status = GDFLOW_NO_MEMORY;
    if (handles && started) {
        for (int64_t t = 1; t < count; t++) {
            started[t] = pthread_create(&handles[t], NULL, work, job + t * size) == 0;
            if (!started[t]) work(job + t * size); /* no thread: this one does its work */
        }
        work(job);
        for (int64_t t = 1; t < count; t++) {
            if (started[t]) pthread_join(handles[t], NULL);
        }
        status = GDFLOW_OK;
    }
    free(handles);
    free(started);
    return status;
}

static int cross_entropy(const void *x, const void *y, const void *weights, const void *w,
                         const void *b, int64_t n, int64_t d, int64_t k, int64_t threads,
                         int is_double, double *out) {
    const int64_t width = 1 + k * d + k;
    const int64_t chunks = (n + CHUNK_ROWS - 1) / CHUNK_ROWS;
    memset(out, 0, sizeof(double) * width);
    if (n <= 0) return GDFLOW_OK;
    if (threads < 1) threads = 1;
    if (threads > chunks) threads = chunks;
    double *partial = malloc(sizeof(double) * chunks * width);
    job_t *jobs = calloc((size_t)threads, sizeof(job_t));
    int status = GDFLOW_NO_MEMORY;
    if (partial && jobs) {
        for (int64_t t = 0; t < threads; t++) {
            job_t job = {x, y, weights, w, b, n, d, k, is_double, partial,
                         chunks * t / threads, chunks * (t + 1) / threads, GDFLOW_OK};
            jobs[t] = job;
        }
        status = run_on_threads(run_job, jobs, sizeof(job_t), threads);
    }
    for (int64_t t = 0; status == GDFLOW_OK && t < threads; t++) status = jobs[t].status;
    if (status == GDFLOW_OK) {
        for (int64_t chunk = 0; chunk < chunks; chunk++) {
            const double *sums = partial + chunk * width;
            for (int64_t e = 0; e < width; e++) out[e] += sums[e];
        }
    }
    free(partial);
    free(jobs);
    return status;
}

/* The entries, one per type of x, weights, W and b (y: x's type for k == 1, else int64).
 * Returns 0, GDFLOW_BAD_LABEL (a class index outside [0, k)) or GDFLOW_NO_MEMORY. */
int gdflow_cross_entropy_float(const float *x, const void *y, const float *weights,
                               const float *w, const float *b, int64_t n, int64_t d, int64_t k,
                               int64_t threads, double *out) {
    return cross_entropy(x, y, weights, w, b, n, d, k, threads, 0, out);
}

int gdflow_cross_entropy_double(const double *x, const void *y, const double *weights,
                                const double *w, const double *b, int64_t n, int64_t d,
                                int64_t k, int64_t threads, double *out) {
    return cross_entropy(x, y, weights, w, b, n, d, k, threads, 1, out);
}

/* The least-squares statistics of training/statistics_mse.py, built into the same library. */
#include "comoment.h"
