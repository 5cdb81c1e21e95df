// Paged KV cache write: scatter a step's new K and V rows into their cache slots.
//
// kv_write_{t}(const T* k, const T* v, T* kc, T* vc, const int* slots, int n_tokens,
//              int n_kv_heads, int head_dim, int block_size)
// Layout: k and v are contiguous (n_tokens, n_kv_heads, head_dim); the caches kc and vc are
// (n_blocks, n_kv_heads, block_size, head_dim), head-major within a block as in
// kiln-tensor/src/cpu/paged_attention.rs. Token t goes to block slots[t] / block_size at offset
// slots[t] % block_size; slots[t] < 0 skips the token (padding). Slots are validated on the host
// (< n_blocks * block_size) and distinct.
// 1-D grid-stride loop over n_tokens * n_kv_heads * head_dim elements (64-bit), so any grid
// works; the launcher uses blockDim 256, grid = min(ceil(total / 256), 65535). Consecutive
// threads write consecutive head_dim elements of one row. Values are copied bit for bit.
// dtype suffixes f32 (float), bf16 (__nv_bfloat16), f16 (__half).

template <typename T>
__device__ __forceinline__ void kiln_kv_write(const T* __restrict__ k, const T* __restrict__ v,
                                              T* __restrict__ kc, T* __restrict__ vc,
                                              const int* __restrict__ slots, int n_tokens,
                                              int n_kv_heads, int head_dim, int block_size) {
    const long long row = (long long)n_kv_heads * head_dim;
    const long long n = (long long)n_tokens * row;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (long long)blockDim.x * gridDim.x) {
        const long long t = e / row;
        const int slot = slots[t];
        if (slot < 0) continue;
        const long long rem = e - t * row;
        const long long h = rem / head_dim, d = rem - h * head_dim;
        const long long blk = slot / block_size, off = slot % block_size;
        const long long dst = ((blk * n_kv_heads + h) * block_size + off) * head_dim + d;
        kc[dst] = k[e];
        vc[dst] = v[e];
    }
}

#define KILN_KV_WRITE(TN, T)                                                                     \
    extern "C" __global__ void kv_write_##TN(const T* k, const T* v, T* kc, T* vc,              \
                                             const int* slots, int n_tokens, int n_kv_heads,     \
                                             int head_dim, int block_size) {                     \
        kiln_kv_write<T>(k, v, kc, vc, slots, n_tokens, n_kv_heads, head_dim, block_size);     \
    }

KILN_KV_WRITE(f32, float)
KILN_KV_WRITE(bf16, __nv_bfloat16)
KILN_KV_WRITE(f16, __half)
