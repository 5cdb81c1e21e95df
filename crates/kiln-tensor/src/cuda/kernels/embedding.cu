// Row gathers: embedding lookup (whole rows of a table by id) and the weighted sum of rows that
// combines a mixture-of-experts layer's expert outputs.
//
// gather_rows_{t}(const T* table, const unsigned* ids, T* y, int n_ids, int cols)
// Layout: table is contiguous (vocab, cols); ids is (n_ids,), validated (< vocab) on the host;
// y is contiguous (n_ids, cols) with y[r, c] = table[ids[r], c]. Values are copied bit for bit
// (no float round trip). 1-D grid-stride loop over n_ids * cols (64-bit), so any grid works;
// the launcher uses blockDim 256, grid = min(ceil(n_ids * cols / 256), 65535). n_ids = 0 or
// cols = 0 does nothing. dtype suffixes f32 (float), bf16 (__nv_bfloat16), f16 (__half).

template <typename T>
__device__ __forceinline__ void kiln_gather_rows(const T* __restrict__ table,
                                                 const unsigned* __restrict__ ids,
                                                 T* __restrict__ y, int n_ids, int cols) {
    const long long n = (long long)n_ids * cols;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (long long)blockDim.x * gridDim.x) {
        const long long r = e / cols, c = e - r * cols;
        y[e] = table[(long long)ids[r] * cols + c];
    }
}

#define KILN_GATHER(TN, T)                                                                       \
    extern "C" __global__ void gather_rows_##TN(const T* table, const unsigned* ids, T* y,      \
                                                int n_ids, int cols) {                           \
        kiln_gather_rows<T>(table, ids, y, n_ids, cols);                                         \
    }

KILN_GATHER(f32, float)
KILN_GATHER(bf16, __nv_bfloat16)
KILN_GATHER(f16, __half)

// combine_rows_{t}(const T* src, const unsigned* ids, const float* w, T* y, int n_out, int k,
//                  int cols)
// y[i, c] = sum_{j<k} w[i*k + j] * src[ids[i*k + j], c], accumulated in f32 in j order (the
// order the host chose: HF's expert order, shared expert last), rounded once on store. ids are
// validated (< rows of src) on the host. Same grid-stride loop and launch shape as gather_rows;
// n_out = 0 or cols = 0 does nothing.
template <typename T>
__device__ __forceinline__ void kiln_combine_rows(const T* __restrict__ src,
                                                  const unsigned* __restrict__ ids,
                                                  const float* __restrict__ w, T* __restrict__ y,
                                                  int n_out, int k, int cols) {
    const long long n = (long long)n_out * cols;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (long long)blockDim.x * gridDim.x) {
        const long long r = e / cols, c = e - r * cols;
        float acc = 0.0f;
        for (int j = 0; j < k; ++j) {
            const long long s = r * k + j;
            acc += w[s] * kiln_load(src[(long long)ids[s] * cols + c]);
        }
        y[e] = kiln_store<T>(acc);
    }
}

#define KILN_COMBINE(TN, T)                                                                      \
    extern "C" __global__ void combine_rows_##TN(const T* src, const unsigned* ids,             \
                                                 const float* w, T* y, int n_out, int k,        \
                                                 int cols) {                                     \
        kiln_combine_rows<T>(src, ids, w, y, n_out, k, cols);                                    \
    }

KILN_COMBINE(f32, float)
KILN_COMBINE(bf16, __nv_bfloat16)
KILN_COMBINE(f16, __half)
