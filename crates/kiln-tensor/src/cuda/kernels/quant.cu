// Dequantization of GGUF block formats: a quantized matrix's rows decoded to float values.
//
// dequant_{fmt}_{t}(const unsigned char* w, const unsigned* ids, T* y, int n_rows, int cols)
// Layout: w is a (rows, cols) matrix in GGUF layout, each row cols / BLOCK blocks of BYTES
// bytes (fmt: q8_0, q4_0, q4_1, q5_0, q5_1 with BLOCK 32; q4_k, q6_k with BLOCK 256). ids is (n_rows,)
// source rows, validated on the host, or null for rows 0..n_rows; y is contiguous (n_rows, cols)
// with y[r, c] = value c of row ids[r]. This one kernel serves the quantized matmul (the whole
// matrix, then cuBLASLt), embedding lookups (ids) and casts. Correct and simple: one thread per
// value, 1-D grid-stride loop (64-bit), blockDim 256, grid = min(ceil(n_rows * cols / 256),
// 65535). dtype suffixes f32 (float), bf16 (__nv_bfloat16), f16 (__half).
//
// The per-format decoders below read value j of one block exactly as kiln-quant's
// `dequantize_block` does (the CPU oracle; the block diagrams are in kiln-quant's q*.rs).

__device__ __forceinline__ float kiln_f16_at(const unsigned char* b) {
    return __half2float(__ushort_as_half((unsigned short)(b[0] | (b[1] << 8))));
}

// Q8_0: d (f16) | qs[32] (i8). value = d * qs[j].
struct KilnQ8_0 {
    static constexpr int BLOCK = 32, BYTES = 34;
    __device__ static float at(const unsigned char* b, int j) {
        return kiln_f16_at(b) * (float)(signed char)b[2 + j];
    }
};

// Q4_0: d (f16) | qs[16]: low nibbles are values 0..15, high nibbles 16..31. value = d * (q - 8).
struct KilnQ4_0 {
    static constexpr int BLOCK = 32, BYTES = 18;
    __device__ static float at(const unsigned char* b, int j) {
        const unsigned char byte = b[2 + (j & 15)];
        const int q = j < 16 ? (byte & 0xF) : (byte >> 4);
        return kiln_f16_at(b) * (float)(q - 8);
    }
};

// Q4_1: d (f16) | m (f16) | qs[16] as Q4_0. value = d * q + m.
struct KilnQ4_1 {
    static constexpr int BLOCK = 32, BYTES = 20;
    __device__ static float at(const unsigned char* b, int j) {
        const unsigned char byte = b[4 + (j & 15)];
        const int q = j < 16 ? (byte & 0xF) : (byte >> 4);
        return kiln_f16_at(b) * (float)q + kiln_f16_at(b + 2);
    }
};

// The 5-bit value j of a Q5_0/Q5_1 block: the nibble as Q4_0 (qs at `qs`) with bit j of the
// little-endian u32 at `qh` as bit 4.
__device__ __forceinline__ int kiln_q5_value(const unsigned char* qh, const unsigned char* qs,
                                             int j) {
    const unsigned char byte = qs[j & 15];
    const int lo = j < 16 ? (byte & 0xF) : (byte >> 4);
    return lo | (((qh[j >> 3] >> (j & 7)) & 1) << 4);
}

// Q5_0: d (f16) | qh (u32) | qs[16]. value = d * (q - 16).
struct KilnQ5_0 {
    static constexpr int BLOCK = 32, BYTES = 22;
    __device__ static float at(const unsigned char* b, int j) {
        return kiln_f16_at(b) * (float)(kiln_q5_value(b + 2, b + 6, j) - 16);
    }
};

// Q5_1: d (f16) | m (f16) | qh (u32) | qs[16]. value = d * q + m.
struct KilnQ5_1 {
    static constexpr int BLOCK = 32, BYTES = 24;
    __device__ static float at(const unsigned char* b, int j) {
        return kiln_f16_at(b) * (float)kiln_q5_value(b + 4, b + 8, j) + kiln_f16_at(b + 2);
    }
};

// Q4_K: d (f16) | dmin (f16) | scales[12] (8 x 6-bit scale and min) | qs[128]. Sub-block s of
// 32 values: nibbles of qs[32 * (s / 2) ..], low for even s, high for odd.
// value = d * scale_s * q - dmin * min_s.
struct KilnQ4_K {
    static constexpr int BLOCK = 256, BYTES = 144;
    __device__ static float at(const unsigned char* b, int j) {
        const unsigned char* s = b + 4;
        const int sub = j >> 5, l = j & 31;
        int sc, m;
        if (sub < 4) {
            sc = s[sub] & 63;
            m = s[sub + 4] & 63;
        } else {
            sc = (s[sub + 4] & 0xF) | ((s[sub - 4] >> 6) << 4);
            m = (s[sub + 4] >> 4) | ((s[sub] >> 6) << 4);
        }
        const unsigned char byte = b[16 + 32 * (sub >> 1) + l];
        const int q = (sub & 1) ? (byte >> 4) : (byte & 0xF);
        return kiln_f16_at(b) * (float)sc * (float)q - kiln_f16_at(b + 2) * (float)m;
    }
};

// Q6_K: ql[128] (low 4 bits) | qh[64] (high 2 bits) | scales[16] (i8, one per 16 values) |
// d (f16). Value j: half n = j / 128, quarter = (j % 128) / 32, lane l = j % 32.
// value = d * scales[j / 16] * (q - 32).
struct KilnQ6_K {
    static constexpr int BLOCK = 256, BYTES = 210;
    __device__ static float at(const unsigned char* b, int j) {
        const int n = j >> 7, r = j & 127, quarter = r >> 5, l = r & 31;
        const unsigned char* ql = b + 64 * n;
        const unsigned char qh = b[128 + 32 * n + l];
        const unsigned char lowbyte = ql[l + ((quarter & 1) ? 32 : 0)];
        const int low = (quarter & 2) ? (lowbyte >> 4) : (lowbyte & 0xF);
        const int q = low | (((qh >> (2 * quarter)) & 3) << 4);
        return kiln_f16_at(b + 208) * (float)(signed char)b[192 + (j >> 4)] * (float)(q - 32);
    }
};

template <typename F, typename T>
__device__ __forceinline__ void kiln_dequant(const unsigned char* __restrict__ w,
                                             const unsigned* __restrict__ ids,
                                             T* __restrict__ y, int n_rows, int cols) {
    const long long n = (long long)n_rows * cols;
    const long long row_bytes = (long long)(cols / F::BLOCK) * F::BYTES;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (long long)blockDim.x * gridDim.x) {
        const long long r = e / cols;
        const int c = (int)(e - r * cols);
        const long long src = ids ? (long long)ids[r] : r;
        const unsigned char* block = w + src * row_bytes + (long long)(c / F::BLOCK) * F::BYTES;
        y[e] = kiln_store<T>(F::at(block, c % F::BLOCK));
    }
}

#define KILN_DEQUANT(FN, F, TN, T)                                                               \
    extern "C" __global__ void dequant_##FN##_##TN(const unsigned char* w, const unsigned* ids, \
                                                   T* y, int n_rows, int cols) {               \
        kiln_dequant<F, T>(w, ids, y, n_rows, cols);                                           \
    }

// Quantized matrix-vector products for a few tokens (decode): y = x · Wᵀ with W decoded in
// registers, never written out.
//
// qgemv_{fmt}_{t}(const unsigned char* w, const T* x, T* y, int rows, int cols, int n_tok)
// Layout: w as above (rows, cols); x contiguous (n_tok, cols); y contiguous (n_tok, rows).
// n_tok <= KILN_QGEMV_MAX_TOK (the launcher takes the dequantize + cuBLASLt path above that).
// Grid: one block of KILN_QGEMV_THREADS (128) threads per row; thread i reads values i, i + 128,
// ... of the row (four 32-blocks per step, the headers broadcast within a warp), accumulates
// every token in f32, then the block reduces (warp sums, then the 4 warps through shared memory).
#define KILN_QGEMV_MAX_TOK 8
#define KILN_QGEMV_THREADS 128

template <typename F, typename T>
__device__ __forceinline__ void kiln_qgemv(const unsigned char* __restrict__ w,
                                           const T* __restrict__ x, T* __restrict__ y, int rows,
                                           int cols, int n_tok) {
    __shared__ float part[KILN_QGEMV_THREADS / 32][KILN_QGEMV_MAX_TOK];
    const int row = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const long long row_bytes = (long long)(cols / F::BLOCK) * F::BYTES;
    const unsigned char* wr = w + row * row_bytes;
    float acc[KILN_QGEMV_MAX_TOK];
#pragma unroll
    for (int t = 0; t < KILN_QGEMV_MAX_TOK; ++t) acc[t] = 0.0f;
    // Unrolled so each thread has several independent weight loads in flight.
#pragma unroll 4
    for (int c = threadIdx.x; c < cols; c += KILN_QGEMV_THREADS) {
        const float v = F::at(wr + (long long)(c / F::BLOCK) * F::BYTES, c % F::BLOCK);
#pragma unroll
        for (int t = 0; t < KILN_QGEMV_MAX_TOK; ++t)
            if (t < n_tok) acc[t] += v * kiln_load(x[(long long)t * cols + c]);
    }
#pragma unroll
    for (int t = 0; t < KILN_QGEMV_MAX_TOK; ++t) {
        const float s = kiln_warp_sum(acc[t]);
        if (lane == 0) part[warp][t] = s;
    }
    __syncthreads();
    if (threadIdx.x < n_tok) {
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < KILN_QGEMV_THREADS / 32; ++k) s += part[k][threadIdx.x];
        y[(long long)threadIdx.x * rows + row] = kiln_store<T>(s);
    }
}

#define KILN_QGEMV(FN, F, TN, T)                                                                 \
    extern "C" __global__ void qgemv_##FN##_##TN(const unsigned char* w, const T* x, T* y,      \
                                                 int rows, int cols, int n_tok) {              \
        kiln_qgemv<F, T>(w, x, y, rows, cols, n_tok);                                          \
    }

// Both kernels of a format, for every activation dtype.
#define KILN_QUANT_KERNELS(FN, F, TN, T)                                                         \
    KILN_DEQUANT(FN, F, TN, T)                                                                   \
    KILN_QGEMV(FN, F, TN, T)

#define KILN_QUANT_FORMAT(FN, F)                                                                 \
    KILN_QUANT_KERNELS(FN, F, f32, float)                                                        \
    KILN_QUANT_KERNELS(FN, F, bf16, __nv_bfloat16)                                               \
    KILN_QUANT_KERNELS(FN, F, f16, __half)

KILN_QUANT_FORMAT(q8_0, KilnQ8_0)
KILN_QUANT_FORMAT(q4_0, KilnQ4_0)
KILN_QUANT_FORMAT(q4_1, KilnQ4_1)
KILN_QUANT_FORMAT(q5_0, KilnQ5_0)
KILN_QUANT_FORMAT(q5_1, KilnQ5_1)
KILN_QUANT_FORMAT(q4_k, KilnQ4_K)
KILN_QUANT_FORMAT(q6_k, KilnQ6_K)
