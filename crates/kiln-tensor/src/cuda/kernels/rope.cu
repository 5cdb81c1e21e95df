// Rotary position embeddings (RoPE, Su et al. 2021), applied in place.
//
// rope_{t}(T* x, const unsigned* positions, const float* inv_freq, int n_heads, int head_dim,
//          int half, float mscale, int interleaved)
// Layout: x is contiguous (n_tokens, n_heads, head_dim); positions is (n_tokens,) absolute
// positions; inv_freq is (half,) f32, already scaled by whatever long-context scheme applies.
// Grid (n_tokens, n_heads): blockIdx.x is the token, blockIdx.y the head; threads stride over
// i < half (any blockDim). angle = (float)pos * inv_freq[i] in f32 as the CPU (and transformers)
// computes it; c = cosf(angle) * mscale, s = sinf(angle) * mscale, with the accurate sincosf (the
// __cosf/__sinf intrinsics lose accuracy at the large angles of long positions).
// Pairs: interleaved == 0 is rotate_half (GPT-NeoX / HF LLaMA): (i, i + half); otherwise
// GPT-J / Meta style: (2i, 2i + 1). x0' = x0 c - x1 s, x1' = x1 c + x0 s.
// Dims >= 2 * half are left untouched (partial rotary). See kiln-tensor/src/cpu/rope.rs.
// dtype suffixes f32 / bf16 / f16: load to float, compute in float, round to nearest on store.

// `half_dim` is the spec's `half` (renamed: cuda_fp16.h defines a type named `half`).
template <typename T>
__device__ __forceinline__ void kiln_rope(T* x, const unsigned* positions, const float* inv_freq,
                                          int n_heads, int head_dim, int half_dim, float mscale,
                                          int interleaved) {
    const int t = blockIdx.x, h = blockIdx.y;
    T* row = x + ((long long)t * n_heads + h) * head_dim;
    const float pos = (float)positions[t];
    for (int i = threadIdx.x; i < half_dim; i += blockDim.x) {
        const float angle = pos * inv_freq[i];
        float sn, cs;
        sincosf(angle, &sn, &cs);  // the accurate pair, as cosf and sinf each
        const float c = cs * mscale;
        const float s = sn * mscale;
        const int i0 = interleaved ? 2 * i : i;
        const int i1 = interleaved ? 2 * i + 1 : i + half_dim;
        const float x0 = kiln_load(row[i0]);
        const float x1 = kiln_load(row[i1]);
        row[i0] = kiln_store<T>(x0 * c - x1 * s);
        row[i1] = kiln_store<T>(x1 * c + x0 * s);
    }
}

#define KILN_ROPE(TN, T)                                                                       \
    extern "C" __global__ void rope_##TN(T* x, const unsigned* positions, const float* inv_freq, \
                                         int n_heads, int head_dim, int half_dim, float mscale, \
                                         int interleaved) {                                      \
        kiln_rope<T>(x, positions, inv_freq, n_heads, head_dim, half_dim, mscale, interleaved); \
    }

KILN_ROPE(f32, float)
KILN_ROPE(bf16, __nv_bfloat16)
KILN_ROPE(f16, __half)
