/* One block of rows of the fused cross-entropy, in the rows' own type: included twice by
 * cross_entropy_kernel.c, with REAL float (LANES 16, or 8 without AVX-512) and with REAL double
 * (LANES 8); FN(name) names each function after its type, EXP, LOG and LOG1P are that type's
 * exp, log and log1p.
 *
 * A block is at most BLOCK_ROWS rows (4 KiB of float rows with 16 features): its logits, its
 * losses and its gradient are computed while it is in L1. Per row, the products and the
 * polynomials run in REAL, vectorised over rows. Each block's binary sums (loss and gradient)
 * and each softmax block's gradient are added up in REAL, lane by lane, then into the chunk's
 * double sums; the softmax loss goes into double row by row. */

/* Binary rows of one or two vectors go GROUP_ROWS at a time (binary_groups). */
#define GROUP_ROWS (2 * LANES)

typedef REAL FN(vector) __attribute__((vector_size(LANES * sizeof(REAL))));
typedef WORD FN(bits) __attribute__((vector_size(LANES * sizeof(REAL))));
#define VEC FN(vector)
#define BITS FN(bits)
/* GCC before 12 has only __builtin_shuffle, with the lanes as a vector of integers. */
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUFFLE(a, b, ...) __builtin_shuffle(a, b, (BITS){__VA_ARGS__})
#endif

static inline VEC FN(load)(const REAL *p) {
    VEC v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* sum[l] = the sum of the lanes of p[l], for LANES vectors at once: four (three) rounds that
 * each add two halves of every pair of vectors (2 (LANES - 1) shuffles and LANES - 1
 * additions), then one shuffle that puts the sums back in the order of p. */
#if LANES == 16
static inline VEC FN(lane_sums)(VEC *p) {
    for (int r = 0; r < 8; r++) { /* 256-bit halves */
        VEC a = p[2 * r], b = p[2 * r + 1];
        p[r] = SHUFFLE(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
               SHUFFLE(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    }
    for (int r = 0; r < 4; r++) { /* 128-bit quarters */
        VEC a = p[2 * r], b = p[2 * r + 1];
        p[r] = SHUFFLE(a, b, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
               SHUFFLE(a, b, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    }
    for (int r = 0; r < 2; r++) { /* pairs of lanes */
        VEC a = p[2 * r], b = p[2 * r + 1];
        p[r] = SHUFFLE(a, b, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29) +
               SHUFFLE(a, b, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
    }
    VEC sums = SHUFFLE(p[0], p[1], 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30) +
               SHUFFLE(p[0], p[1], 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
    return SHUFFLE(sums, sums, 0, 4, 8, 12, 2, 6, 10, 14, 1, 5, 9, 13, 3, 7, 11, 15);
}
#else
static inline VEC FN(lane_sums)(VEC *p) {
    for (int r = 0; r < 4; r++) {
        VEC a = p[2 * r], b = p[2 * r + 1];
        p[r] = SHUFFLE(a, b, 0, 1, 2, 3, 8, 9, 10, 11) + SHUFFLE(a, b, 4, 5, 6, 7, 12, 13, 14, 15);
    }
    for (int r = 0; r < 2; r++) {
        VEC a = p[2 * r], b = p[2 * r + 1];
        p[r] = SHUFFLE(a, b, 0, 1, 8, 9, 4, 5, 12, 13) + SHUFFLE(a, b, 2, 3, 10, 11, 6, 7, 14, 15);
    }
    VEC sums = SHUFFLE(p[0], p[1], 0, 8, 2, 10, 4, 12, 6, 14) +
               SHUFFLE(p[0], p[1], 1, 9, 3, 11, 5, 13, 7, 15);
    return SHUFFLE(sums, sums, 0, 4, 2, 6, 1, 5, 3, 7);
}
#endif

/* w (d) as vectors of LANES, zero beyond d; the mask keeps the last vector's lanes below d. */
static void FN(vectors_of)(const REAL *w, int64_t d, VEC *out, BITS *mask) {
    const int64_t count = (d + LANES - 1) / LANES;
    for (int64_t c = 0; c < count; c++) {
        for (int l = 0; l < LANES; l++) {
            out[c][l] = c * LANES + l < d ? w[c * LANES + l] : 0;
        }
    }
    for (int l = 0; l < LANES; l++) (*mask)[l] = l < d % LANES ? -1 : 0;
}

/* logits[i] = bias + x[i] . w for rows (a multiple of LANES) rows x of d values, w as vectors
 * (vectors_of): each row's products in one vector of lanes, the lanes of LANES rows summed at
 * once (lane_sums). A row's last vector reads past its d values into the next row's (the
 * caller pads the rows at the end of the data); the mask drops what it read. */
static void FN(logits_of)(const REAL *x, int64_t rows, int64_t d, const VEC *w, BITS mask,
                          REAL bias, REAL *logits) {
    const int64_t full = d / LANES;
    const int tail = d % LANES != 0;
    for (int64_t i = 0; i < rows; i += LANES) {
        VEC p[LANES];
        for (int r = 0; r < LANES; r++) {
            const REAL *row = x + (i + r) * d;
            VEC acc = full > 0 ? FN(load)(row) * w[0] : (VEC){0};
            for (int64_t c = 1; c < full; c++) acc += FN(load)(row + c * LANES) * w[c];
            if (tail) acc += (VEC)((BITS)(FN(load)(row + full * LANES) * w[full]) & mask);
            p[r] = acc;
        }
        VEC sums = FN(lane_sums)(p) + bias;
        memcpy(logits + i, &sums, sizeof sums);
    }
}

/* grad (d, rounded up to LANES) = sum over the rows of coef[i] x[i], one vector of lanes at a
 * time, with four accumulators (rows i mod 4) so that the additions do not wait on each other.
 * Like logits_of it reads each row's last vector past d; those lanes of grad are not used. */
static void FN(rows_times)(const REAL *x, int64_t rows, int64_t d, const REAL *coef,
                           REAL *grad) {
    const int64_t chunks = (d + LANES - 1) / LANES;
    for (int64_t c = 0; c < chunks; c++) {
        const REAL *column = x + c * LANES;
        VEC g0 = {0}, g1 = {0}, g2 = {0}, g3 = {0};
        int64_t i = 0;
        for (; i + 4 <= rows; i += 4) {
            g0 += coef[i] * FN(load)(column + i * d);
            g1 += coef[i + 1] * FN(load)(column + (i + 1) * d);
            g2 += coef[i + 2] * FN(load)(column + (i + 2) * d);
            g3 += coef[i + 3] * FN(load)(column + (i + 3) * d);
        }
        for (; i < rows; i++) g0 += coef[i] * FN(load)(column + i * d);
        VEC g = (g0 + g1) + (g2 + g3);
        memcpy(grad + c * LANES, &g, sizeof g);
    }
}

/* W as vectors (scratch->w, one row of ceil(d / LANES) vectors per class), the mask of the
 * last vector's lanes (scratch->mask) and BLOCK_ROWS ones (scratch->ones), once per thread. */
static void FN(prepare)(const job_t *job, const scratch_t *scratch) {
    const int64_t chunks = (job->d + LANES - 1) / LANES;
    for (int64_t i = 0; i < BLOCK_ROWS; i++) ((REAL *)scratch->ones)[i] = 1;
    for (int64_t c = 0; c < job->k; c++) {
        FN(vectors_of)((const REAL *)job->w + c * job->d, job->d, (VEC *)scratch->w + c * chunks,
                       (BITS *)scratch->mask);
    }
}

/* The rows [start, start + rows) for logits_of and binary_groups: the data itself, or for the
 * data's last rows a copy padded with zeros to a multiple of GROUP_ROWS rows and one vector
 * beyond, so that no read goes past the end of x. */
static const REAL *FN(rows_of)(const job_t *job, int64_t start, int64_t rows,
                               const scratch_t *scratch) {
    const int64_t d = job->d;
    const REAL *x = (const REAL *)job->x + start * d;
    if (start + rows < job->n || (rows % GROUP_ROWS == 0 && d % LANES == 0)) return x;
    REAL *pad = (REAL *)scratch->pad;
    const int64_t padded = (rows + GROUP_ROWS - 1) / GROUP_ROWS * GROUP_ROWS;
    memcpy(pad, x, sizeof(REAL) * rows * d);
    memset(pad + rows * d, 0, sizeof(REAL) * ((padded - rows) * d + LANES));
    return pad;
}

/* The rows' weights from start on, or BLOCK_ROWS ones without weights: the loops always read
 * an array (a masked load from a NULL pointer, which a compiler may make of `weights ? w[i] :
 * 1`, costs a fault assist per vector on x86). */
static const REAL *FN(weights_of)(const job_t *job, int64_t start, const scratch_t *scratch) {
    return job->weights ? (const REAL *)job->weights + start : (const REAL *)scratch->ones;
}

/* The binary losses of `count` rows from their logits z: each row's weighted loss added into
 * loss[l], its weighted dloss/dz written into coef[l] (which may be z) and added into bias[l].
 * The lanes' sums are added up at the end of the block, in order (add_binary_sums). */
static inline void FN(binary_lanes)(int count, const REAL *z, const REAL *target,
                                    const REAL *weights, REAL *coef, REAL *loss, REAL *bias) {
#pragma omp simd
    for (int l = 0; l < count; l++) {
        REAL v = z[l];
        REAL e = EXP(v < 0 ? v : -v);
        REAL u = 1 + e;
        REAL r = 1 / u;
        REAL log1p_e = LOG1P(e, u, r);
        REAL each = (v > 0 ? v : 0) - v * target[l] + log1p_e;
        REAL sigmoid = v >= 0 ? r : e * r;
        REAL weight = weights[l];
        loss[l] += weight * each;
        coef[l] = weight * (sigmoid - target[l]);
        bias[l] += coef[l];
    }
}

/* A block's sums into the chunk's (loss, dW, db), in double and in order: the `lanes` lanes'
 * losses and bias gradients, then the block's gradient of W (d values), all in REAL. */
static inline void FN(add_binary_sums)(double *sums, int64_t d, const REAL *loss,
                                       const REAL *grad_b, const REAL *grad, int lanes) {
    for (int l = 0; l < lanes; l++) {
        sums[0] += (double)loss[l];
        sums[1 + d] += (double)grad_b[l];
    }
    for (int64_t j = 0; j < d; j++) sums[1 + j] += (double)grad[j];
}

/* Asks for the next block of rows (those after [start, start + rows), as many) to be brought
 * into cache while this one is computed. Without it the binary groups' reads from memory
 * waited on their arithmetic: the logistic loss of 1M x 16 float32 on two Zen 3 threads took
 * 3.6-4.0 ms with it against 4.2-5.2 ms (rows of 8 floats: 4.0 against 4.3 ms). Rows of more
 * than two vectors (binary_passes, about as fast without it, slower with it at 40 features)
 * and softmax blocks (bound by their arithmetic) go without. */
static inline void FN(prefetch_next)(const job_t *job, int64_t start, int64_t rows) {
    const int64_t next = start + rows;
    const int64_t count = job->n - next < rows ? job->n - next : rows;
    const char *from = (const char *)((const REAL *)job->x + next * job->d);
    const int64_t bytes = count * job->d * (int64_t)sizeof(REAL);
    for (int64_t q = 0; q < bytes; q += 64) __builtin_prefetch(from + q, 0, 3);
}

/* The binary loss of rows [start, start + rows) of one or two vectors (`vectors`, a constant
 * where it is called), added into sums (loss, dW, db). GROUP_ROWS rows at a time: their logits
 * (the one read of the rows from memory, LANES rows to a shuffle network), their losses, then
 * their share of the gradient while the rows are still in L1, so that the work on a group
 * overlaps the reads of the next instead of waiting for the whole block to be read first.
 * Rows of one vector: 1.3x the time of one read of X against 1.7-1.8x for binary_passes
 * (float, 1M x 16, one thread on the Intel VM). Groups of two sets of LANES rows give the
 * losses' long chains of dependent operations (exp, log1p, the division) two independent
 * vectors: float 1M x 16 in L3, one Zen 3 thread, 81 us per 16,384 rows against 106 us with
 * one set of LANES (double rows, 1M x 16 from memory, two threads: 24.7 against 36 ms). The
 * gradient goes into four vectors per vector of the row (rows i mod 4), summed in REAL over
 * the block, then into sums in double. */
static inline __attribute__((always_inline)) void FN(binary_groups)(
    const job_t *job, int64_t start, int64_t rows, const scratch_t *scratch, double *sums,
    const int vectors) {
    const int64_t d = job->d;
    FN(prefetch_next)(job, start, rows);
    const REAL *x = FN(rows_of)(job, start, rows, scratch);
    const REAL *target = (const REAL *)job->y + start;
    const REAL *weights = FN(weights_of)(job, start, scratch);
    const VEC *wv = (const VEC *)scratch->w;
    const VEC w0 = wv[0], w1 = vectors > 1 ? wv[1] : (VEC){0};
    const BITS mask = *(const BITS *)scratch->mask;
    const int whole = d == vectors * LANES;
    const REAL bias = job->b ? ((const REAL *)job->b)[0] : 0;
    REAL loss[GROUP_ROWS], grad_b[GROUP_ROWS];
    for (int l = 0; l < GROUP_ROWS; l++) loss[l] = grad_b[l] = 0;
    VEC g0 = {0}, g1 = {0}, g2 = {0}, g3 = {0};
    VEC h0 = {0}, h1 = {0}, h2 = {0}, h3 = {0};
    for (int64_t i = 0; i < rows; i += GROUP_ROWS) {
        const REAL *group = x + i * d;
        REAL coef[GROUP_ROWS];
        for (int set = 0; set < GROUP_ROWS / LANES; set++) {
            const REAL *part = group + set * LANES * d;
            VEC p[LANES];
            if (vectors == 1 && whole) {
                for (int r = 0; r < LANES; r++) p[r] = FN(load)(part + r * d) * w0;
            } else if (vectors == 1) {
                for (int r = 0; r < LANES; r++) {
                    p[r] = (VEC)((BITS)(FN(load)(part + r * d) * w0) & mask);
                }
            } else {
                for (int r = 0; r < LANES; r++) {
                    VEC acc = FN(load)(part + r * d) * w0;
                    if (whole) {
                        acc += FN(load)(part + r * d + LANES) * w1;
                    } else {
                        acc += (VEC)((BITS)(FN(load)(part + r * d + LANES) * w1) & mask);
                    }
                    p[r] = acc;
                }
            }
            VEC z = FN(lane_sums)(p) + bias;
            memcpy(coef + set * LANES, &z, sizeof z);
        }
        if (rows - i >= GROUP_ROWS) {
            FN(binary_lanes)(GROUP_ROWS, coef, target + i, weights + i, coef, loss, grad_b);
        } else {
            FN(binary_lanes)((int)(rows - i), coef, target + i, weights + i, coef, loss, grad_b);
            for (int64_t l = rows - i; l < GROUP_ROWS; l++) coef[l] = 0;
        }
        /* rows past `rows` (only in the padded copy of the data's end) have coef 0; lanes past
         * d read the next row's values, and are not used */
        for (int r = 0; r < GROUP_ROWS; r += 4) {
            g0 += coef[r] * FN(load)(group + r * d);
            g1 += coef[r + 1] * FN(load)(group + (r + 1) * d);
            g2 += coef[r + 2] * FN(load)(group + (r + 2) * d);
            g3 += coef[r + 3] * FN(load)(group + (r + 3) * d);
            if (vectors > 1) {
                h0 += coef[r] * FN(load)(group + r * d + LANES);
                h1 += coef[r + 1] * FN(load)(group + (r + 1) * d + LANES);
                h2 += coef[r + 2] * FN(load)(group + (r + 2) * d + LANES);
                h3 += coef[r + 3] * FN(load)(group + (r + 3) * d + LANES);
            }
        }
    }
    VEC g[2] = {(g0 + g1) + (g2 + g3), (h0 + h1) + (h2 + h3)};
    REAL lanes[2 * LANES];
    memcpy(lanes, g, sizeof g);
    FN(add_binary_sums)(sums, d, loss, grad_b, lanes, GROUP_ROWS);
}

/* The binary loss of rows [start, start + rows), added into sums (loss, dW, db), in three
 * passes over the block: the logits of all its rows (the one read from memory), their losses,
 * then the gradient. For rows of more than two vectors (d > 2 LANES), where it was about 1.2x
 * faster than groups of rows (float, d 24 to 64 with 16 lanes, one thread on the Intel VM). */
static void FN(binary_passes)(const job_t *job, int64_t start, int64_t rows,
                              const scratch_t *scratch, double *sums) {
    const int64_t d = job->d;
    const REAL *x = FN(rows_of)(job, start, rows, scratch);
    const REAL *target = (const REAL *)job->y + start;
    const REAL *weights = FN(weights_of)(job, start, scratch);
    const REAL *b = (const REAL *)job->b;
    REAL *coef = (REAL *)scratch->z, *grad = (REAL *)scratch->grad;
    FN(logits_of)(x, (rows + LANES - 1) / LANES * LANES, d, (const VEC *)scratch->w,
                  *(const BITS *)scratch->mask, b ? b[0] : 0, coef);
    REAL loss[LANES], grad_b[LANES];
    for (int l = 0; l < LANES; l++) loss[l] = grad_b[l] = 0;
    for (int64_t i = 0; i < rows; i += LANES) {
        const int count = rows - i < LANES ? (int)(rows - i) : LANES;
        FN(binary_lanes)(count, coef + i, target + i, weights + i, coef + i, loss, grad_b);
    }
    FN(rows_times)(x, rows, d, coef, grad);
    FN(add_binary_sums)(sums, d, loss, grad_b, grad, LANES);
}

/* The binary loss of rows [start, start + rows), added into sums (loss, dW, db). */
static void FN(binary_block)(const job_t *job, int64_t start, int64_t rows,
                             const scratch_t *scratch, double *sums) {
    if (job->d <= LANES) {
        FN(binary_groups)(job, start, rows, scratch, sums, 1);
    } else if (job->d <= 2 * LANES) {
        FN(binary_groups)(job, start, rows, scratch, sums, 2);
    } else {
        FN(binary_passes)(job, start, rows, scratch, sums);
    }
}

/* The multiclass loss of rows [start, start + rows), added into sums (loss, dW, db): z holds
 * the logits class by class (k x BLOCK_ROWS), then their gradients. */
static int FN(classes_block)(const job_t *job, int64_t start, int64_t rows,
                             const scratch_t *scratch, double *sums) {
    const int64_t d = job->d, k = job->k, chunks = (d + LANES - 1) / LANES;
    const int64_t *label = (const int64_t *)job->y + start;
    for (int64_t i = 0; i < rows; i++) {
        if (label[i] < 0 || label[i] >= k) return GDFLOW_BAD_LABEL;
    }
    const REAL *x = FN(rows_of)(job, start, rows, scratch);
    const REAL *weights = FN(weights_of)(job, start, scratch);
    const REAL *b = (const REAL *)job->b;
    REAL *z = (REAL *)scratch->z, *grad = (REAL *)scratch->grad;
    REAL *top = (REAL *)scratch->rows, *total = top + BLOCK_ROWS, *picked = total + BLOCK_ROWS;
    for (int64_t c = 0; c < k; c++) {
        FN(logits_of)(x, (rows + LANES - 1) / LANES * LANES, d,
                      (const VEC *)scratch->w + c * chunks, *(const BITS *)scratch->mask,
                      b ? b[c] : 0, z + c * BLOCK_ROWS);
    }
    for (int64_t i = 0; i < rows; i++) {
        top[i] = z[i];
        total[i] = 0;
        picked[i] = 0;
    }
    for (int64_t c = 1; c < k; c++) {
        const REAL *zc = z + c * BLOCK_ROWS;
#pragma omp simd
        for (int64_t i = 0; i < rows; i++) top[i] = zc[i] > top[i] ? zc[i] : top[i];
    }
    for (int64_t c = 0; c < k; c++) {
        REAL *zc = z + c * BLOCK_ROWS;
#pragma omp simd
        for (int64_t i = 0; i < rows; i++) {
            picked[i] += label[i] == c ? zc[i] : 0;
            REAL e = EXP(zc[i] - top[i]);
            total[i] += e;
            zc[i] = e;
        }
    }
    double loss = 0.0;
#pragma omp simd reduction(+ : loss)
    for (int64_t i = 0; i < rows; i++) {
        REAL weight = weights[i];
        /* (max - z_y) + log(sum exp(z - max)): no cancellation when z_y is the max */
        loss += (double)(weight * ((top[i] - picked[i]) + LOG(total[i])));
        total[i] = weight / total[i];
        top[i] = weight;
    }
    sums[0] += loss;
    for (int64_t c = 0; c < k; c++) {
        REAL *zc = z + c * BLOCK_ROWS;
        double grad_b = 0.0;
#pragma omp simd reduction(+ : grad_b)
        for (int64_t i = 0; i < rows; i++) {
            zc[i] = zc[i] * total[i] - (label[i] == c ? top[i] : 0);
            grad_b += (double)zc[i];
        }
        FN(rows_times)(x, rows, d, zc, grad);
        double *grad_c = sums + 1 + c * d;
        for (int64_t j = 0; j < d; j++) grad_c[j] += (double)grad[j];
        sums[1 + k * d + c] += grad_b;
    }
    return GDFLOW_OK;
}

#undef VEC
#undef BITS
#undef SHUFFLE
#undef GROUP_ROWS
