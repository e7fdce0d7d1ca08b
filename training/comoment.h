/* The sufficient statistics of least squares in one pass over the rows, for
 * training/statistics_mse.py: the count, the column means m of z = (x, y) and the co-moment
 * matrix sum over rows of (z - m)(z - m)^T, all in double, from float or double rows.
 *
 * Rows are taken in chunks of COMOMENT_CHUNK_ROWS (4096 x 17 floats: 272 KiB, in L2). A chunk's
 * mean comes from a first read of the chunk; its co-moment about that mean from a second read,
 * COMOMENT_BLOCK_ROWS rows at a time: the block is centred and transposed into columns of double
 * (17 KiB at 16 features, in L1), and each pair of columns i <= j adds their dot product into a
 * vector of partial sums kept per pair for the chunk. Chunks merge by Chan et al.'s pairwise
 * update, in order, within COMOMENT_GROUPS groups of consecutive chunks fixed by n alone, then the
 * groups in order: the result is the same, bit for bit, whatever the number of threads (a thread
 * takes a contiguous range of groups).
 *
 * Included by cross_entropy_kernel.c (its aligned(), GDFLOW_OK and GDFLOW_NO_MEMORY). */

#define COMOMENT_CHUNK_ROWS 4096
#define COMOMENT_BLOCK_ROWS 128
#define COMOMENT_GROUPS 16
#define COMOMENT_LANES 4

typedef double cm_vec __attribute__((vector_size(COMOMENT_LANES * sizeof(double))));

typedef struct {
    const void *x, *y;
    int64_t n, d;
    int is_double;
    int64_t first_group, last_group, chunks;
    double *groups; /* per group: count, mean (d + 1), co-moment (d + 1)^2, d + 1 of scratch */
    int status;
} comoment_job_t;

/* Adds the statistics b (count, mean, co-moment of p = d + 1 columns) into a, in place (Chan et
 * al.): the co-moments plus n_a n_b / n (m_b - m_a)(m_b - m_a)^T, the means weighted. a has p
 * doubles of scratch after its co-moment. */
static void comoment_merge(double *a, const double *b, int64_t p) {
    const double na = a[0], nb = b[0];
    if (nb == 0) return;
    const double total = na + nb, scale = na * nb / total;
    double *mean_a = a + 1, *cm_a = a + 1 + p, *delta = a + 1 + p + p * p;
    const double *mean_b = b + 1, *cm_b = b + 1 + p;
    for (int64_t i = 0; i < p; i++) delta[i] = mean_b[i] - mean_a[i];
    for (int64_t i = 0; i < p; i++) {
        for (int64_t j = i; j < p; j++) { /* the upper triangle, mirrored: exactly symmetric */
            double value = cm_a[i * p + j] + (cm_b[i * p + j] + scale * delta[i] * delta[j]);
            cm_a[i * p + j] = value;
            cm_a[j * p + i] = value;
        }
    }
    for (int64_t i = 0; i < p; i++) mean_a[i] += delta[i] * (nb / total);
    a[0] = total;
}

/* Per type of row: the column sums of some rows (z = (x, y)), and a block of rows centred on
 * `mean` and written as columns of COMOMENT_BLOCK_ROWS doubles (zeros past `count`). */
#define COMOMENT_READERS(T)                                                                     \
    static void comoment_sums_##T(const T *x, const T *y, int64_t rows, int64_t d,             \
                                  double *sums) {                                               \
        for (int64_t j = 0; j <= d; j++) sums[j] = 0.0;                                         \
        for (int64_t r = 0; r < rows; r++) {                                                    \
            for (int64_t j = 0; j < d; j++) sums[j] += (double)x[r * d + j];                   \
            sums[d] += (double)y[r];                                                            \
        }                                                                                       \
    }                                                                                           \
    static void comoment_columns_##T(const T *x, const T *y, int64_t count, int64_t d,         \
                                     const double *mean, double *cols) {                        \
        for (int64_t r = 0; r < count; r++) {                                                   \
            for (int64_t j = 0; j < d; j++) {                                                   \
                cols[j * COMOMENT_BLOCK_ROWS + r] = (double)x[r * d + j] - mean[j];            \
            }                                                                                   \
            cols[d * COMOMENT_BLOCK_ROWS + r] = (double)y[r] - mean[d];                        \
        }                                                                                       \
        for (int64_t r = count; r < COMOMENT_BLOCK_ROWS; r++) {                                 \
            for (int64_t j = 0; j <= d; j++) cols[j * COMOMENT_BLOCK_ROWS + r] = 0.0;           \
        }                                                                                       \
    }
COMOMENT_READERS(float)
COMOMENT_READERS(double)
#undef COMOMENT_READERS

/* Adds each pair i <= j of a block's p columns: their dot product, into acc[i p + j]. */
static void comoment_pairs(const double *cols, int64_t p, cm_vec *acc) {
    const cm_vec zero = {0};
    for (int64_t i = 0; i < p; i++) {
        const cm_vec *ci = (const cm_vec *)(cols + i * COMOMENT_BLOCK_ROWS);
        for (int64_t j = i; j < p; j++) {
            const cm_vec *cj = (const cm_vec *)(cols + j * COMOMENT_BLOCK_ROWS);
            cm_vec s0 = zero, s1 = zero;
            for (int64_t v = 0; v < COMOMENT_BLOCK_ROWS / COMOMENT_LANES; v += 2) {
                s0 += ci[v] * cj[v];
                s1 += ci[v + 1] * cj[v + 1];
            }
            acc[i * p + j] += s0 + s1;
        }
    }
}

/* One chunk's statistics into out (count, mean, co-moment). */
static void comoment_chunk(const comoment_job_t *job, int64_t start, int64_t rows, double *out,
                           double *cols, cm_vec *acc) {
    const int64_t d = job->d, p = d + 1;
    double *mean = out + 1, *cm = out + 1 + p;
    if (job->is_double) {
        comoment_sums_double((const double *)job->x + start * d, (const double *)job->y + start,
                             rows, d, mean);
    } else {
        comoment_sums_float((const float *)job->x + start * d, (const float *)job->y + start,
                            rows, d, mean);
    }
    for (int64_t j = 0; j < p; j++) mean[j] /= (double)rows;
    const cm_vec zero = {0};
    for (int64_t e = 0; e < p * p; e++) acc[e] = zero;
    for (int64_t first = start; first < start + rows; first += COMOMENT_BLOCK_ROWS) {
        int64_t left = start + rows - first;
        int64_t count = left < COMOMENT_BLOCK_ROWS ? left : COMOMENT_BLOCK_ROWS;
        if (job->is_double) {
            comoment_columns_double((const double *)job->x + first * d,
                                    (const double *)job->y + first, count, d, mean, cols);
        } else {
            comoment_columns_float((const float *)job->x + first * d,
                                   (const float *)job->y + first, count, d, mean, cols);
        }
        comoment_pairs(cols, p, acc);
    }
    for (int64_t i = 0; i < p; i++) {
        for (int64_t j = i; j < p; j++) {
            double sum = 0.0;
            for (int lane = 0; lane < COMOMENT_LANES; lane++) sum += acc[i * p + j][lane];
            cm[i * p + j] = sum;
            cm[j * p + i] = sum;
        }
    }
    out[0] = (double)rows;
}

static void *comoment_run(void *arg) {
    comoment_job_t *job = (comoment_job_t *)arg;
    const int64_t p = job->d + 1, width = 1 + p + p * p + p;
    double *chunk = aligned(sizeof(double) * width);
    double *cols = aligned(sizeof(double) * COMOMENT_BLOCK_ROWS * p);
    cm_vec *acc = aligned(sizeof(cm_vec) * p * p);
    job->status = GDFLOW_OK;
    if (!chunk || !cols || !acc) {
        job->status = GDFLOW_NO_MEMORY;
    } else {
        for (int64_t g = job->first_group; g < job->last_group; g++) {
            double *stats = job->groups + g * width;
            memset(stats, 0, sizeof(double) * width);
            int64_t last = job->chunks * (g + 1) / COMOMENT_GROUPS;
            for (int64_t c = job->chunks * g / COMOMENT_GROUPS; c < last; c++) {
                int64_t start = c * COMOMENT_CHUNK_ROWS, left = job->n - start;
                comoment_chunk(job, start, left < COMOMENT_CHUNK_ROWS ? left : COMOMENT_CHUNK_ROWS,
                               chunk, cols, acc);
                comoment_merge(stats, chunk, p);
            }
        }
    }
    free(chunk);
    free(cols);
    free(acc);
    return NULL;
}

/* out: count, mean (d + 1), co-moment (d + 1)^2 row by row, then d + 1 doubles of scratch. */
static int comoment(const void *x, const void *y, int64_t n, int64_t d, int64_t threads,
                    int is_double, double *out) {
    const int64_t p = d + 1, width = 1 + p + p * p + p;
    const int64_t chunks = (n + COMOMENT_CHUNK_ROWS - 1) / COMOMENT_CHUNK_ROWS;
    memset(out, 0, sizeof(double) * width);
    if (n <= 0) return GDFLOW_OK;
    if (threads < 1) threads = 1;
    if (threads > COMOMENT_GROUPS) threads = COMOMENT_GROUPS;
    double *groups = malloc(sizeof(double) * COMOMENT_GROUPS * width);
    comoment_job_t *jobs = calloc((size_t)threads, sizeof(comoment_job_t));
    int status = GDFLOW_NO_MEMORY;
    if (groups && jobs) {
        for (int64_t t = 0; t < threads; t++) {
            comoment_job_t job = {x,         y,
                                  n,         d,
                                  is_double, COMOMENT_GROUPS * t / threads,
                                  COMOMENT_GROUPS * (t + 1) / threads, chunks,
                                  groups,    GDFLOW_OK};
            jobs[t] = job;
        }
        status = run_on_threads(comoment_run, jobs, sizeof(comoment_job_t), threads);
    }
    for (int64_t t = 0; status == GDFLOW_OK && t < threads; t++) status = jobs[t].status;
    if (status == GDFLOW_OK) {
        for (int64_t g = 0; g < COMOMENT_GROUPS; g++) comoment_merge(out, groups + g * width, p);
    }
    free(groups);
    free(jobs);
    return status;
}

/* The entries, one per type of x and y. Returns 0 or GDFLOW_NO_MEMORY. */
int gdflow_comoment_float(const float *x, const float *y, int64_t n, int64_t d, int64_t threads,
                          double *out) {
    return comoment(x, y, n, d, threads, 0, out);
}

int gdflow_comoment_double(const double *x, const double *y, int64_t n, int64_t d,
                           int64_t threads, double *out) {
    return comoment(x, y, n, d, threads, 1, out);
}
