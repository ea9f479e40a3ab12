/* Fused forward and backward of a ReLU MLP  x -> relu(x W_0^T + b_0) -> ... -> h W_{L-1}^T + b_{L-1}
 * in float32: the "native" kernels of sesamo_bench.core.kernels, built on first use by
 * sesamo_bench/core/native/__init__.py and called through ctypes.
 *
 * The batch is cut into tiles of TILE rows, and each thread carries its tiles through every
 * layer while they sit in its cache: one pass over the batch forward and one backward, instead
 * of several passes and a fork and join of the threads per layer and operator. The forward
 * writes the hidden activations (the backward needs them); the backward reads each once, for the
 * weight gradient and the ReLU mask, and sums the weight and bias gradients in a buffer per slot of
 * 1024 rows; the slots' buffers are added up in order at the end. Every sum runs in an order fixed
 * by the batch alone, so the results depend neither on the number of threads nor on TILE or the
 * blocking of the products.
 *
 * Matrix products: one register-blocked micro-kernel, C[R x VL NV] (+)= A[R x K] B[K x VL NV], in
 * GCC vector extensions of VL floats, blocked for the target's register file:
 * - AVX-512 (32 vector registers of 16 floats): VL = 16, NV <= 4 vectors and R <= 6 rows (8 with
 *   NV <= 3): up to 24 accumulators;
 * - otherwise (AVX2/FMA and SSE: 16 registers; VL = 8 fills a 256-bit register): NV <= 2 and
 *   R <= 6: 12 accumulators, 2 rows of B and one broadcast, so nothing spills. (The AVX-512
 *   blocking compiled for AVX2 splits every vector in two and spills most accumulators: 3-5x
 *   slower than PyTorch there.)
 * Widths are padded to a multiple of 16 (PAD) in the tiles and the packed weights, whatever VL;
 * padding columns of weights and biases are zero, so padding columns of activations are zero too.
 *
 * Layouts (row-major, C-contiguous): x (n, d_0); W_k (d_{k+1}, d_k) as in torch.nn.Linear;
 * b_k (d_{k+1}); out (n, d_L). The hidden activations hidden[k], k < L-1, are kept padded,
 * (n, pad(d_{k+1})) with pad(d) = d rounded up to a multiple of 16, so that tiles are written and
 * read in place; hidden == NULL: not kept (inference). Backward: gout (n, d_L) -> gx (n, d_0)
 * (NULL: not formed), gW_k (d_{k+1}, d_k), gb_k (d_{k+1}). Both return 0, or 1 when memory ran
 * out (or L < 1).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TILE 64 /* rows per tile: 3 tiles of width 48 fill 37 KB of a 48 KB L1 */
#define PAD 16  /* widths are padded to a multiple of this many floats (sesamo_bench.core.native.VECTOR) */
#if defined(__AVX512F__)
#define VL 16    /* floats per vector */
#define NV_MAX 4 /* vectors per row of the micro-kernel's block */
#define R_MAX 6  /* rows of the block at NV_MAX vectors (R_WIDE_MAX below) */
#define R_WIDE_MAX 8
#define SB_BLOCKING "avx512: 16-float vectors, 6x4 / 8x3 blocks"
#else
#define VL 8
#define NV_MAX 2
#define R_MAX 6
#define R_WIDE_MAX 6
#define SB_BLOCKING "avx2: 8-float vectors, 6x2 blocks"
#endif
#define SLOT_TILES (1024 / TILE) /* tiles per partial sum of the weight gradients: 1024 rows */
typedef float vf __attribute__((vector_size(VL * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(VL * sizeof(int32_t))));

static inline vf ld(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void st(float *p, vf v) { memcpy(p, &v, sizeof v); }
/* s in every lane, as an initialiser (the compiler keeps (vf){0} + s as an add before the broadcast) */
#if VL == 16
static inline vf bc(float s) { return (vf){s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s}; }
#else
static inline vf bc(float s) { return (vf){s, s, s, s, s, s, s, s}; }
#endif
static inline vf where_pos(vf m, vf v) { return (vf)((vi)v & (m > 0)); } /* v where m > 0, else 0 */
static inline int64_t pad(int64_t d) { return (d + PAD - 1) / PAD * PAD; }

/* which register blocking this build has (shown in provenance and by `sesamo-bench perf`) */
const char *sb_blocking(void) { return SB_BLOCKING; }

int sb_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

enum { ZERO, ACCUMULATE, BIAS };

/* C[r, 16 v + l] = init + sum_k A[r ar + k ak] B[k ldb + 16 v + l] for r < R, v < NV, where init is 0,
   C itself or bias[16 v + l]; then max(0, .) if relu. R and NV are constants after inlining. */
static inline __attribute__((always_inline)) void micro(const int R, const int NV, int64_t K, const float *A,
                                                        int64_t ar, int64_t ak, const float *B, int64_t ldb,
                                                        float *C, int64_t ldc, int init, const float *bias, int relu)
{
    vf c[R_WIDE_MAX > R_MAX ? R_WIDE_MAX : R_MAX][NV_MAX];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++)
            c[r][v] = init == ACCUMULATE ? ld(C + r * ldc + v * VL) : init == BIAS ? ld(bias + v * VL) : (vf){0};
    for (int64_t k = 0; k < K; k++) {
        vf b[NV_MAX];
        for (int v = 0; v < NV; v++)
            b[v] = ld(B + k * ldb + v * VL);
        for (int r = 0; r < R; r++) {
            vf a = bc(A[r * ar + k * ak]);
            for (int v = 0; v < NV; v++)
                c[r][v] += a * b[v];
        }
    }
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++)
            st(C + r * ldc + v * VL, relu ? where_pos(c[r][v], c[r][v]) : c[r][v]);
}

#define MICRO_CASE(R_, NV_) \
    case (R_) * 8 + (NV_): micro(R_, NV_, K, A, ar, ak, B, ldb, C, ldc, init, bias, relu); break;
#define MICRO_ROWS3(R_) MICRO_CASE(R_, 1) MICRO_CASE(R_, 2) MICRO_CASE(R_, 3)
#define MICRO_ROWS4(R_) MICRO_ROWS3(R_) MICRO_CASE(R_, 4)

#define MICRO_ROWS2(R_) MICRO_CASE(R_, 1) MICRO_CASE(R_, 2)

static void micro_any(int R, int NV, int64_t K, const float *A, int64_t ar, int64_t ak, const float *B,
                      int64_t ldb, float *C, int64_t ldc, int init, const float *bias, int relu)
{
    switch (R * 8 + NV) {
#if NV_MAX == 4
        MICRO_ROWS4(1) MICRO_ROWS4(2) MICRO_ROWS4(3) MICRO_ROWS4(4) MICRO_ROWS4(5) MICRO_ROWS4(6)
        MICRO_ROWS3(7) MICRO_ROWS3(8)
#else
        MICRO_ROWS2(1) MICRO_ROWS2(2) MICRO_ROWS2(3) MICRO_ROWS2(4) MICRO_ROWS2(5) MICRO_ROWS2(6)
#endif
    }
}

/* C[m x cols] = init + A[m x K] B[K x cols] (see micro); cols a multiple of VL; A[i, k] at A + i ar + k ak. */
static void gemm(int64_t m, int64_t cols, int64_t K, const float *A, int64_t ar, int64_t ak, const float *B,
                 int64_t ldb, float *C, int64_t ldc, int init, const float *bias, int relu)
{
    for (int64_t c0 = 0; c0 < cols; c0 += NV_MAX * VL) {
        int nv = (cols - c0) / VL < NV_MAX ? (int)((cols - c0) / VL) : NV_MAX;
        int rmax = nv == NV_MAX ? R_MAX : R_WIDE_MAX;
        for (int64_t i0 = 0; i0 < m; i0 += rmax) {
            int R = m - i0 < rmax ? (int)(m - i0) : rmax;
            micro_any(R, nv, K, A + i0 * ar, ar, ak, B + c0, ldb, C + i0 * ldc + c0, ldc, init,
                      bias ? bias + c0 : NULL, relu);
        }
    }
}

static int threads_for(int64_t n, int requested)
{
    int64_t tiles = (n + TILE - 1) / TILE;
    if (requested > tiles)
        requested = (int)tiles;
    return requested < 1 ? 1 : requested;
}

/* rows x d block of a row-major (., d) array <-> a tile with row stride ld */
static void load_rows(float *tile, int64_t ld, const float *src, int64_t d, int64_t rows)
{
    for (int64_t r = 0; r < rows; r++)
        memcpy(tile + r * ld, src + r * d, (size_t)d * sizeof(float));
}

static void store_rows(float *dst, int64_t d, const float *tile, int64_t ld, int64_t rows)
{
    for (int64_t r = 0; r < rows; r++)
        memcpy(dst + r * d, tile + r * ld, (size_t)d * sizeof(float));
}

/* this thread's `count` zeroed tiles of TILE x P floats; NULL, and *failed set, if out of memory */
static float *tile_buffers(int count, int64_t P, int *failed)
{
    float *buf = calloc((size_t)(count * TILE * P), sizeof(float));
    if (!buf) {
#pragma omp atomic write
        *failed = 1;
    }
    return buf;
}

static int64_t max_pad(int L, const int64_t *dims)
{
    int64_t w = 0;
    for (int k = 0; k <= L; k++)
        w = pad(dims[k]) > w ? pad(dims[k]) : w;
    return w;
}

int sb_mlp_forward(int64_t n, int L, const int64_t *dims, const float *const *W, const float *const *b,
                   const float *x, float *const *hidden, float *out, int nthreads)
{
    if (L < 1)
        return 1;
    int64_t P = max_pad(L, dims), size = 0;
    for (int k = 0; k < L; k++)
        size += dims[k] * pad(dims[k + 1]) + pad(dims[k + 1]);
    /* packed weights Wt_k (d_k x pad d_{k+1}) = W_k^T and padded biases, zero in the padding */
    float *pack = calloc((size_t)size, sizeof(float));
    const float **Wt = malloc(2 * (size_t)L * sizeof(float *)), **bp = Wt + L;
    if (!pack || !Wt) {
        free(pack);
        free(Wt);
        return 1;
    }
    float *p = pack;
    for (int k = 0; k < L; k++) {
        int64_t din = dims[k], dout = dims[k + 1], lo = pad(dout);
        for (int64_t i = 0; i < din; i++)
            for (int64_t j = 0; j < dout; j++)
                p[i * lo + j] = W[k][j * din + i];
        Wt[k] = p;
        p += din * lo;
        memcpy(p, b[k], (size_t)dout * sizeof(float));
        bp[k] = p;
        p += lo;
    }
    int failed = 0;
    int64_t ntiles = (n + TILE - 1) / TILE;
#pragma omp parallel num_threads(threads_for(n, nthreads))
    {
        float *buf = tile_buffers(2, P, &failed);
#pragma omp for schedule(static)
        for (int64_t t = 0; t < ntiles; t++) {
            if (!buf)
                continue;
            int64_t r0 = t * TILE, rows = n - r0 < TILE ? n - r0 : TILE;
            /* in: this layer's input; o: the free tile buffer. The hidden layers go straight to
               memory when they are kept, through the buffers otherwise. */
            float *in = buf, *o = buf + TILE * P;
            int64_t ldin = P;
            load_rows(in, P, x + r0 * dims[0], dims[0], rows);
            for (int k = 0; k < L; k++) {
                int last = k == L - 1, kept = !last && hidden;
                int64_t lo = pad(dims[k + 1]), ldo = kept ? lo : P;
                float *dst = kept ? hidden[k] + r0 * lo : o;
                gemm(rows, lo, dims[k], in, ldin, 1, Wt[k], lo, dst, ldo, BIAS, bp[k], !last);
                if (last)
                    store_rows(out + r0 * dims[L], dims[L], dst, P, rows);
                else if (!kept)
                    o = dst == buf ? buf + TILE * P : buf;
                in = dst;
                ldin = ldo;
            }
        }
        free(buf);
    }
    free(pack);
    free(Wt);
    return failed;
}

int sb_mlp_backward(int64_t n, int L, const int64_t *dims, const float *const *W, const float *x,
                    const float *const *hidden, const float *gout, float *gx, float *const *gW, float *const *gb,
                    int nthreads)
{
    if (L < 1)
        return 1;
    int64_t P = max_pad(L, dims), wsize = 0, asize = 0;
    for (int k = 0; k < L; k++) {
        wsize += dims[k + 1] * pad(dims[k]);
        asize += dims[k + 1] * pad(dims[k]) + pad(dims[k + 1]);
    }
    /* the weight and bias gradients are summed per slot of SLOT_TILES consecutive tiles, then over
       the slots in order: the same sums whatever the number of threads */
    int64_t ntiles = (n + TILE - 1) / TILE, nslots = (ntiles + SLOT_TILES - 1) / SLOT_TILES;
    nslots = nslots < 1 ? 1 : nslots;
    int nt = nthreads < 1 ? 1 : nthreads > nslots ? (int)nslots : nthreads;
    /* packed weights Wp_k (d_{k+1} x pad d_k), zero in the padding; per-slot sums of the weight
       gradients (same layout) followed by the bias gradients (pad d_{k+1}) */
    float *pack = calloc((size_t)wsize, sizeof(float)), *acc = calloc((size_t)(asize * nslots), sizeof(float));
    const float **Wp = malloc((size_t)L * sizeof(float *));
    int64_t *off = malloc(2 * (size_t)L * sizeof(int64_t)), *off_b = off + L;
    if (!pack || !acc || !Wp || !off) {
        free(pack);
        free(acc);
        free(Wp);
        free(off);
        return 1;
    }
    float *p = pack;
    int64_t o = 0;
    for (int k = 0; k < L; k++) {
        int64_t din = dims[k], dout = dims[k + 1], li = pad(din);
        for (int64_t j = 0; j < dout; j++)
            memcpy(p + j * li, W[k] + j * din, (size_t)din * sizeof(float));
        Wp[k] = p;
        p += dout * li;
        off[k] = o;
        o += dout * li;
        off_b[k] = o;
        o += pad(dout);
    }
    int failed = 0;
#pragma omp parallel num_threads(nt)
    {
        float *buf = tile_buffers(3, P, &failed);
#pragma omp for schedule(static)
        for (int64_t slot = 0; slot < nslots; slot++) {
            float *mine = acc + slot * asize;
            int64_t t_end = (slot + 1) * SLOT_TILES < ntiles ? (slot + 1) * SLOT_TILES : ntiles;
            for (int64_t t = slot * SLOT_TILES; t < t_end && buf; t++) {
                int64_t r0 = t * TILE, rows = n - r0 < TILE ? n - r0 : TILE;
                /* g: gradient at the current layer's output (tile); gn: at its input */
                float *g = buf, *gn = buf + TILE * P, *xtile = buf + 2 * TILE * P;
                load_rows(g, P, gout + r0 * dims[L], dims[L], rows);
                for (int k = L - 1; k >= 0; k--) {
                    int64_t din = dims[k], dout = dims[k + 1], li = pad(din);
                    /* h: the layer's input, x or the kept activation of the layer below */
                    const float *h = k > 0 ? hidden[k - 1] + r0 * li : xtile;
                    int64_t ldh = k > 0 ? li : P;
                    if (k == 0)
                        load_rows(xtile, P, x + r0 * din, din, rows);
                    /* gW_k += g^T h: a product over the tile's rows */
                    gemm(dout, li, rows, g, 1, P, h, ldh, mine + off[k], li, ACCUMULATE, NULL, 0);
                    float *gbk = mine + off_b[k];
                    for (int64_t r = 0; r < rows; r++)
                        for (int64_t v = 0; v < pad(dout); v += VL)
                            st(gbk + v, ld(gbk + v) + ld(g + r * P + v));
                    if (k == 0 && !gx)
                        break;
                    /* g W_k, the gradient at the layer's input; below layer 0, the ReLU's mask (h > 0) */
                    gemm(rows, li, dout, g, P, 1, Wp[k], li, gn, P, ZERO, NULL, 0);
                    if (k == 0) {
                        store_rows(gx + r0 * din, din, gn, P, rows);
                        break;
                    }
                    for (int64_t r = 0; r < rows; r++)
                        for (int64_t v = 0; v < li; v += VL)
                            st(gn + r * P + v, where_pos(ld(h + r * ldh + v), ld(gn + r * P + v)));
                    float *s = g;
                    g = gn;
                    gn = s;
                }
            }
        }
        free(buf);
        /* the slots' sums, in slot order, into slot 0 */
#pragma omp for schedule(static)
        for (int64_t i = 0; i < asize; i++)
            for (int64_t slot = 1; slot < nslots; slot++)
                acc[i] += acc[slot * asize + i];
    }
    if (!failed)
        for (int k = 0; k < L; k++) {
            int64_t din = dims[k], dout = dims[k + 1], li = pad(din);
            for (int64_t j = 0; j < dout; j++) {
                memcpy(gW[k] + j * din, acc + off[k] + j * li, (size_t)din * sizeof(float));
                gb[k][j] = acc[off_b[k] + j];
            }
        }
    free(pack);
    free(acc);
    free(Wp);
    free(off);
    return failed;
}
