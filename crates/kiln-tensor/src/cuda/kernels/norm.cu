// Row-wise kernels over the last dimension: RMSNorm, LayerNorm and softmax.
//
// Layout: x and y are contiguous (n_rows, cols); w and b are (cols,). One block per row
// (grid = n_rows, blockIdx.x is the row); blockDim is the launcher's choice (256), any multiple
// of 32 up to 1024. Threads stride over the row; reductions are in float, warp shuffles then one
// float per warp in shared memory, so every thread ends with the row's total.
// dtype suffixes f32 / bf16 / f16: load to float, compute in float, round to nearest on store.
// The formulas follow kiln-tensor/src/cpu/norm.rs and cpu/softmax.rs (same operation order where
// it matters: x * inv * w, 1 / sqrt(..), exp(x - max) * (1 / sum)). cols = 0 writes nothing.
// y may equal x (in place): each element is read before it is written, by the thread writing it.

// rms_norm_{t}(const T* x, const T* w, T* y, int cols, float eps):
// y = x / sqrt(mean(x^2) + eps) * w.
template <typename T>
__device__ __forceinline__ void kiln_rms_norm(const T* x, const T* w,
                                              T* y, int cols, float eps) {
    __shared__ float red[32];
    const long long row = (long long)blockIdx.x * cols;
    x += row;
    y += row;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = kiln_load(x[c]);
        ss += v * v;
    }
    ss = kiln_block_sum(ss, red);
    const float inv = 1.0f / sqrtf(ss / (float)cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        y[c] = kiln_store<T>(kiln_load(x[c]) * inv * kiln_load(w[c]));
    }
}

// layer_norm_{t}(const T* x, const T* w, const T* b, T* y, int cols, float eps), b may be null:
// two passes (mean, then the mean of (x - mean)^2) rather than E[x^2] - E[x]^2, which cancels.
template <typename T>
__device__ __forceinline__ void kiln_layer_norm(const T* x, const T* w,
                                                const T* b, T* y,
                                                int cols, float eps) {
    __shared__ float red[32];
    const long long row = (long long)blockIdx.x * cols;
    x += row;
    y += row;
    float s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) s += kiln_load(x[c]);
    const float mean = kiln_block_sum(s, red) / (float)cols;
    float sv = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float d = kiln_load(x[c]) - mean;
        sv += d * d;
    }
    const float var = kiln_block_sum(sv, red) / (float)cols;
    const float inv = 1.0f / sqrtf(var + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float bias = b != nullptr ? kiln_load(b[c]) : 0.0f;
        y[c] = kiln_store<T>((kiln_load(x[c]) - mean) * inv * kiln_load(w[c]) + bias);
    }
}

// softmax_{t}(const T* x, T* y, int cols): exp(x - max) / sum, recomputing exp in the last pass
// so bf16/f16 outputs are rounded once. A row whose max is -inf (fully masked) becomes zeros,
// as cpu/softmax.rs defines it.
template <typename T>
__device__ __forceinline__ void kiln_softmax(const T* x, T* y, int cols) {
    __shared__ float red[32];
    const long long row = (long long)blockIdx.x * cols;
    x += row;
    y += row;
    float m = KILN_NEG_INF;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, kiln_load(x[c]));
    m = kiln_block_max(m, red);
    if (m == KILN_NEG_INF) {
        for (int c = threadIdx.x; c < cols; c += blockDim.x) y[c] = kiln_store<T>(0.0f);
        return;
    }
    float s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) s += expf(kiln_load(x[c]) - m);
    const float inv = 1.0f / kiln_block_sum(s, red);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        y[c] = kiln_store<T>(expf(kiln_load(x[c]) - m) * inv);
    }
}

#define KILN_NORM_ALL(TN, T)                                                                  \
    extern "C" __global__ void rms_norm_##TN(const T* x, const T* w, T* y, int cols,         \
                                             float eps) {                                     \
        kiln_rms_norm<T>(x, w, y, cols, eps);                                                 \
    }                                                                                         \
    extern "C" __global__ void layer_norm_##TN(const T* x, const T* w, const T* b, T* y,     \
                                               int cols, float eps) {                         \
        kiln_layer_norm<T>(x, w, b, y, cols, eps);                                            \
    }                                                                                         \
    extern "C" __global__ void softmax_##TN(const T* x, T* y, int cols) {                    \
        kiln_softmax<T>(x, y, cols);                                                          \
    }

KILN_NORM_ALL(f32, float)
KILN_NORM_ALL(bf16, __nv_bfloat16)
KILN_NORM_ALL(f16, __half)
