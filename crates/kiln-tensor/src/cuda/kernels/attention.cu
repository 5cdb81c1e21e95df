// Paged attention for packed queries: one block per (query token, head), an online softmax
// (Milakov & Gimelshein 2018, as in FlashAttention) over tiles of 128 keys read in place through
// the sequence's block table. The GPU counterpart of kiln-tensor/src/cpu/paged_attention.rs and
// of `reference_attention` in cpu/backend.rs; correctness before speed: no tensor cores.
//
// attention_{t}(const T* q, const T* kc, const T* vc, T* out,
//               const int* tok_seq, const int* tok_pos, const int* seq_len,
//               const int* block_tables, int max_blocks,
//               int n_heads, int n_kv_heads, int head_dim, int block_size,
//               long long block_stride, long long head_stride, long long row_stride,
//               float scale, int causal, int window,
//               const float* alibi, const float* rel_bias, int min_rel, int n_rel)
// Layout:
// - q and out: contiguous (n_tok, n_heads, head_dim).
// - query t belongs to sequence s = tok_seq[t] at absolute position p = tok_pos[t]; sequence s
//   has n_kv = seq_len[s] keys at positions 0..n_kv; block_tables is (n_seqs, max_blocks).
// - key j of kv head g (= h / (n_heads / n_kv_heads)), element d:
//     kc[block_tables[s * max_blocks + j / block_size] * block_stride + g * head_stride
//        + (j % block_size) * row_stride + d]            (vc the same; strides in elements)
// - visible keys [lo, hi): hi = causal ? min(p + 1, n_kv) : n_kv,
//   lo = window > 0 ? max(0, p + 1 - window) : 0, clamped to <= hi. Only their table entries
//   are read (entries before the window may be released blocks).
// - score = scale * dot(q, k_j) + (alibi ? alibi[h] * (float)(j - p) : 0)
//           + (rel_bias ? rel_bias[h * n_rel + (j - p - min_rel)] : 0); alibi is (n_heads,),
//   rel_bias (n_heads, n_rel). The host guarantees min_rel <= j - p < min_rel + n_rel for every
//   visible key; the index is clamped to [0, n_rel) anyway so a violation cannot read outside.
// - out = softmax(scores) . V over the visible keys; no visible key gives zeros.
// Launch: grid (n_tok, n_heads), blockDim exactly 128, head_dim <= 256 (thread i owns output
// dims i and i + 128; a larger head_dim returns without writing: the host must reject it).
// Per tile: the 128 keys' row offsets go to shared memory; each warp computes the scores of
// every 4th key of the tile (lanes split head_dim, a shuffle sum: coalesced K reads), so thread
// i then holds key i's score; block max and sum give the new running max, the accumulators are
// rescaled by exp(m_old - m_new), and each thread adds p_j * v_j[d] for its dims over the
// tile's keys (probabilities in shared memory, coalesced V reads). Everything accumulates in
// float. dtype suffixes f32 / bf16 / f16 for q, kc, vc and out.

#define KILN_ATT_THREADS 128
#define KILN_ATT_WARPS (KILN_ATT_THREADS / 32)
#define KILN_ATT_TILE KILN_ATT_THREADS
#define KILN_ATT_MAX_HEAD_DIM (2 * KILN_ATT_THREADS)

template <typename T>
__device__ __forceinline__ void kiln_attention(
    const T* __restrict__ q, const T* __restrict__ kc, const T* __restrict__ vc,
    T* __restrict__ out, const int* __restrict__ tok_seq, const int* __restrict__ tok_pos,
    const int* __restrict__ seq_len, const int* __restrict__ block_tables, int max_blocks,
    int n_heads, int n_kv_heads, int head_dim, int block_size, long long block_stride,
    long long head_stride, long long row_stride, float scale, int causal, int window,
    const float* __restrict__ alibi, const float* __restrict__ rel_bias, int min_rel, int n_rel) {
    __shared__ float q_s[KILN_ATT_MAX_HEAD_DIM];
    __shared__ float p_s[KILN_ATT_TILE];       // scores, then probabilities, of the tile
    __shared__ long long off_s[KILN_ATT_TILE];  // row offsets of the tile's keys
    __shared__ float red[32];

    if (head_dim > KILN_ATT_MAX_HEAD_DIM || head_dim < 0) return;
    const int t = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5;
    const int group = n_kv_heads > 0 && n_heads >= n_kv_heads ? n_heads / n_kv_heads : 1;
    const long long kv_off = (long long)(h / group) * head_stride;
    const long long q_off = ((long long)t * n_heads + h) * head_dim;

    for (int d = tid; d < head_dim; d += KILN_ATT_THREADS) q_s[d] = kiln_load(q[q_off + d]);

    const int s = tok_seq[t], p = tok_pos[t], n_kv = seq_len[s];
    const int hi = causal ? min(p + 1, n_kv) : n_kv;
    const int lo = min(window > 0 ? max(0, p + 1 - window) : 0, hi);
    const int* table = block_tables + (long long)s * max_blocks;
    const float slope = alibi != nullptr ? alibi[h] : 0.0f;
    const float* rel = rel_bias != nullptr && n_rel > 0 ? rel_bias + (long long)h * n_rel : nullptr;
    const int d0 = tid, d1 = tid + KILN_ATT_THREADS;

    float m = KILN_NEG_INF;  // running max
    float l = 0.0f;       // running sum of exp(score - m)
    float acc0 = 0.0f, acc1 = 0.0f;
    __syncthreads();  // q_s

    for (int j0 = lo; j0 < hi; j0 += KILN_ATT_TILE) {
        const int n_tile = min(KILN_ATT_TILE, hi - j0);
        if (tid < n_tile) {
            const int j = j0 + tid;
            off_s[tid] = (long long)table[j / block_size] * block_stride + kv_off +
                         (long long)(j % block_size) * row_stride;
        }
        __syncthreads();  // off_s

        for (int jj = warp; jj < n_tile; jj += KILN_ATT_WARPS) {
            const T* kr = kc + off_s[jj];
            float dot = 0.0f;
            for (int d = lane; d < head_dim; d += 32) dot += q_s[d] * kiln_load(kr[d]);
            dot = kiln_warp_sum(dot);
            if (lane == 0) {
                const int j = j0 + jj;
                float sc = scale * dot;
                if (alibi != nullptr) sc += slope * (float)(j - p);
                if (rel != nullptr) sc += rel[min(max(j - p - min_rel, 0), n_rel - 1)];
                p_s[jj] = sc;
            }
        }
        __syncthreads();  // p_s holds the scores

        const float sc = tid < n_tile ? p_s[tid] : KILN_NEG_INF;
        const float m_new = fmaxf(m, kiln_block_max(sc, red));
        // m_new is -inf only while every score so far is -inf: those keys get weight 0.
        const float pj = (tid < n_tile && m_new != KILN_NEG_INF) ? expf(sc - m_new) : 0.0f;
        const float tile_sum = kiln_block_sum(pj, red);
        const float corr = m_new != KILN_NEG_INF ? expf(m - m_new) : 0.0f;  // exp(-inf) = 0
        l = l * corr + tile_sum;
        acc0 *= corr;
        acc1 *= corr;
        m = m_new;
        p_s[tid] = pj;  // every thread read its own score above, before kiln_block_sum's syncs
        __syncthreads();  // p_s holds the probabilities

        for (int jj = 0; jj < n_tile; ++jj) {
            const float w = p_s[jj];
            const T* vr = vc + off_s[jj];
            if (d0 < head_dim) acc0 += w * kiln_load(vr[d0]);
            if (d1 < head_dim) acc1 += w * kiln_load(vr[d1]);
        }
        __syncthreads();  // the next tile overwrites off_s and p_s
    }

    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    if (d0 < head_dim) out[q_off + d0] = kiln_store<T>(acc0 * inv);
    if (d1 < head_dim) out[q_off + d1] = kiln_store<T>(acc1 * inv);
}

#define KILN_ATTENTION(TN, T)                                                                   \
    extern "C" __global__ void __launch_bounds__(KILN_ATT_THREADS) attention_##TN(             \
        const T* q, const T* kc, const T* vc, T* out, const int* tok_seq, const int* tok_pos,  \
        const int* seq_len, const int* block_tables, int max_blocks, int n_heads,               \
        int n_kv_heads, int head_dim, int block_size, long long block_stride,                   \
        long long head_stride, long long row_stride, float scale, int causal, int window,       \
        const float* alibi, const float* rel_bias, int min_rel, int n_rel) {                    \
        kiln_attention<T>(q, kc, vc, out, tok_seq, tok_pos, seq_len, block_tables, max_blocks,  \
                          n_heads, n_kv_heads, head_dim, block_size, block_stride, head_stride,  \
                          row_stride, scale, causal, window, alibi, rel_bias, min_rel, n_rel);   \
    }

KILN_ATTENTION(f32, float)
KILN_ATTENTION(bf16, __nv_bfloat16)
KILN_ATTENTION(f16, __half)
