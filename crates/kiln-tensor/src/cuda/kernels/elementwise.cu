// Elementwise kernels: dtype casts, strided-to-contiguous copies, unary activations, binary ops
// with a broadcast second operand, and gated activations (SwiGLU/GeGLU's act(gate) * up).
//
// Conventions (shared by every kiln .cu file):
// - Exported names are `extern "C"` and carry a dtype suffix: f32 (float), bf16 (__nv_bfloat16),
//   f16 (__half). Values are loaded to float, computed in float, rounded to nearest even on store,
//   as the CPU backend does (it widens to f32 and narrows with the `half` crate).
// - Every kernel here is a 1-D grid-stride loop: any grid works; the launcher uses blockDim 256,
//   grid = min(ceil(n / 256), 65535). n = 0 does nothing. Indices are 64-bit inside the loop.
// - Buffers are contiguous unless a Strides argument says otherwise; inputs never alias outputs
//   except where the launcher passes the same buffer on purpose for an in-place unary/binary op
//   (each element is read before it is written by the same thread, so that is safe too).
// - Compiled with accurate libm (expf, erff, tanhf), not --use_fast_math: results must agree
//   with the CPU reference to a few ulp in f32.

// ---------------------------------------------------------------------------------------------
// cast_{s}_to_{d}(const S* x, D* y, int n)

#define KILN_CAST(SN, S, DN, D)                                                                  \
    extern "C" __global__ void cast_##SN##_to_##DN(const S* __restrict__ x, D* __restrict__ y, \
                                                   int n) {                                      \
        KILN_GRID_STRIDE(i, n) { y[i] = kiln_store<D>(kiln_load(x[i])); }                      \
    }

KILN_CAST(f32, float, bf16, __nv_bfloat16)
KILN_CAST(bf16, __nv_bfloat16, f32, float)
KILN_CAST(f32, float, f16, __half)
KILN_CAST(f16, __half, f32, float)

// ---------------------------------------------------------------------------------------------
// copy_strided_{t}(const T* x, T* y, int n, Strides st)
//
// y is contiguous row-major over st.dims[0..rank]; y[i] = x[sum_d idx_d * st.strides[d]] where
// idx is i unravelled over dims (last dim fastest). x is already offset to the view's first
// element; strides are in elements and may be 0 (broadcast) or negative. rank 0 is a scalar
// (n = 1, offset 0). Host mirror (104 bytes, 8-aligned):
//   #[repr(C)] struct Strides { rank: i32, dims: [i64; 6], strides: [i64; 6] }

#define KILN_MAX_RANK 6
struct Strides {
    int rank;
    long long dims[KILN_MAX_RANK];
    long long strides[KILN_MAX_RANK];
};

__device__ __forceinline__ long long kiln_strided_offset(long long i, const Strides& st) {
    long long off = 0;
#pragma unroll
    for (int d = KILN_MAX_RANK - 1; d >= 0; --d) {
        if (d < st.rank) {
            const long long dim = st.dims[d];
            const long long idx = i % dim;
            i /= dim;
            off += idx * st.strides[d];
        }
    }
    return off;
}

#define KILN_COPY_STRIDED(TN, T)                                                              \
    extern "C" __global__ void copy_strided_##TN(const T* __restrict__ x, T* __restrict__ y, \
                                                 int n, Strides st) {                         \
        KILN_GRID_STRIDE(i, n) { y[i] = x[kiln_strided_offset(i, st)]; }                     \
    }

KILN_COPY_STRIDED(f32, float)
KILN_COPY_STRIDED(bf16, __nv_bfloat16)
KILN_COPY_STRIDED(f16, __half)
KILN_COPY_STRIDED(u32, unsigned)

// ---------------------------------------------------------------------------------------------
// Activations, the same formulas as kiln-tensor/src/cpu/activation.rs.

__device__ __forceinline__ float kiln_silu(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float kiln_gelu(float x) {
    return 0.5f * x * (1.0f + erff(x / 1.41421356237309505f));
}
__device__ __forceinline__ float kiln_gelu_tanh(float x) {
    const float c = 0.7978845608f;  // sqrt(2/pi)
    return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
}
// fmaxf(NaN, 0) = 0, like Rust's f32::max used by the CPU relu.
__device__ __forceinline__ float kiln_relu(float x) { return fmaxf(x, 0.0f); }

// unary_{op}_{t}(const T* x, T* y, int n, float alpha); alpha is read by `scale` only.
#define KILN_UNARY(OP, EXPR, TN, T)                                                          \
    extern "C" __global__ void unary_##OP##_##TN(const T* x, T* y, int n, float alpha) {    \
        KILN_GRID_STRIDE(i, n) {                                                             \
            const float v = kiln_load(x[i]);                                                 \
            y[i] = kiln_store<T>(EXPR);                                                      \
        }                                                                                    \
    }

#define KILN_UNARY_ALL(TN, T)                     \
    KILN_UNARY(silu, kiln_silu(v), TN, T)         \
    KILN_UNARY(gelu, kiln_gelu(v), TN, T)         \
    KILN_UNARY(gelu_tanh, kiln_gelu_tanh(v), TN, T) \
    KILN_UNARY(relu, kiln_relu(v), TN, T)         \
    KILN_UNARY(tanh, tanhf(v), TN, T)             \
    KILN_UNARY(scale, v * alpha, TN, T)

KILN_UNARY_ALL(f32, float)
KILN_UNARY_ALL(bf16, __nv_bfloat16)
KILN_UNARY_ALL(f16, __half)

// ---------------------------------------------------------------------------------------------
// binary_{op}_{t}(const T* a, const T* b, T* y, int n, int b_n): y[i] = a[i] op b[i % b_n].
// b_n == n for equal shapes, b_n == cols for a per-row bias; b_n <= 0 writes nothing.

#define KILN_BINARY(OP, EXPR, TN, T)                                                          \
    extern "C" __global__ void binary_##OP##_##TN(const T* a, const T* b, T* y, int n,       \
                                                  int b_n) {                                  \
        if (b_n <= 0) return;                                                                 \
        KILN_GRID_STRIDE(i, n) {                                                              \
            const float u = kiln_load(a[i]);                                                  \
            const float w = kiln_load(b[i % b_n]);                                            \
            y[i] = kiln_store<T>(EXPR);                                                       \
        }                                                                                     \
    }

#define KILN_BINARY_ALL(TN, T)        \
    KILN_BINARY(add, u + w, TN, T)    \
    KILN_BINARY(mul, u * w, TN, T)

KILN_BINARY_ALL(f32, float)
KILN_BINARY_ALL(bf16, __nv_bfloat16)
KILN_BINARY_ALL(f16, __half)

// ---------------------------------------------------------------------------------------------
// gated_{act}_{t}(const T* gate, const T* up, T* y, int n): y = act(gate) * up.

#define KILN_GATED(ACT, FN, TN, T)                                                            \
    extern "C" __global__ void gated_##ACT##_##TN(const T* gate, const T* up, T* y, int n) { \
        KILN_GRID_STRIDE(i, n) {                                                              \
            y[i] = kiln_store<T>(FN(kiln_load(gate[i])) * kiln_load(up[i]));                 \
        }                                                                                     \
    }

#define KILN_GATED_ALL(TN, T)                        \
    KILN_GATED(silu, kiln_silu, TN, T)               \
    KILN_GATED(gelu, kiln_gelu, TN, T)               \
    KILN_GATED(gelu_tanh, kiln_gelu_tanh, TN, T)     \
    KILN_GATED(relu, kiln_relu, TN, T)               \
    KILN_GATED(tanh, tanhf, TN, T)

KILN_GATED_ALL(f32, float)
KILN_GATED_ALL(bf16, __nv_bfloat16)
KILN_GATED_ALL(f16, __half)
