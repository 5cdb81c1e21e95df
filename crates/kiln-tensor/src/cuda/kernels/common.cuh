// Shared by every kiln kernel source: kernels.rs prepends this file to each .cu before NVRTC
// compiles it (NVRTC has no include path of ours), so each helper is written once.
//
// kiln_load / kiln_store: load to float, store rounded to nearest even (as the CPU backend
// widens to f32 and narrows with the `half` crate). Warp and block reductions in float; a block
// reduction's `red` holds 32 floats and every thread gets the result. KILN_GRID_STRIDE: a 1-D
// grid-stride loop with 64-bit indices.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

// NVRTC has no <math.h>, so no INFINITY macro.
#define KILN_NEG_INF (-__int_as_float(0x7f800000))

__device__ __forceinline__ float kiln_load(float x) { return x; }
__device__ __forceinline__ float kiln_load(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float kiln_load(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T kiln_store(float x);
template <> __device__ __forceinline__ float kiln_store<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 kiln_store<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ __half kiln_store<__half>(float x) { return __float2half_rn(x); }

__device__ __forceinline__ float kiln_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float kiln_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide sum / max; every thread gets the result. `red` holds 32 floats. The leading
// __syncthreads makes back-to-back calls with the same `red` safe.
__device__ __forceinline__ float kiln_block_sum(float v, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n_warps = (blockDim.x + 31) >> 5;
    v = kiln_warp_sum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    return kiln_warp_sum(lane < n_warps ? red[lane] : 0.0f);
}

__device__ __forceinline__ float kiln_block_max(float v, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n_warps = (blockDim.x + 31) >> 5;
    v = kiln_warp_max(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    return kiln_warp_max(lane < n_warps ? red[lane] : KILN_NEG_INF);
}

#define KILN_GRID_STRIDE(i, n)                                                                 \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (long long)(n); \
         i += (long long)blockDim.x * gridDim.x)
