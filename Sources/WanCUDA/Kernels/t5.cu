// Kernels of the umT5 text encoder (official wan/modules/t5.py) that the DiT's files do not cover.
//
//   t5_attention: T5 self-attention of one query row and one head per thread block (launch: grid = (rows, heads),
//                 block = 128 threads). Scores scale * q . k (T5: scale 1, no 1/sqrt(d)) plus the relative-position
//                 bias table[bucket(pos_key - pos_query), head] (none when table is null: CLIP's attention) over the
//                 keys [0, keys) of the row's segment, softmax, times v. Rows are the stacked segments of a batch: row r belongs to the segment starting at row
//                 seg_start[r] with seg_keys[r] keys (its real tokens) and seg_rows[r] rows (real + padded); a
//                 segment with no key attends uniformly to all its rows (torch's softmax over equal finfo.min scores).
//                 bucket_of[relative + max_pos] is the bucket of a relative position; table is [buckets, heads] f32.
//                 q, k, v: rows ld elements apart (ld = heads * head_dim, or 3 * that for column views of one
//                 fused qkv product); out: [rows, heads * head_dim]; all in the activation type; scores and sums in float.
//                 At most T5_MAX_KEYS keys per segment (the official text length is 512).
//   t5_flash_attention_bf16_d{16,32,64,80}: t5_attention_bf16's semantics on the tensor cores, one block per (query tile
//                 of <= 64 rows of one segment, head); see its section below. The bf16 path runs it where it takes the
//                 head dim and layout (CUDAOps.t5FlashTakes), else t5_attention_bf16; f32 always runs t5_attention_f32.
//   t5_gelu_mul:  out = gelu_tanh(gate) * up (the gated-GELU FFN: fc1(x) * gate(x), gate = Linear + GELU(tanh)).
#include "common.cuh"

#define T5_MAX_KEYS 4096
#define T5_THREADS 128

template <typename T>
__device__ __forceinline__ void t5_attention_body(T* out, const T* q, const T* k, const T* v, int ld_in, const int* seg_start,
                                                  const int* seg_keys, const int* seg_rows, const int* positions,
                                                  const int* bucket_of, int max_pos, const float* table, int heads,
                                                  int head_dim, float scale) {
    __shared__ float scores[T5_MAX_KEYS];
    __shared__ float partial[T5_THREADS];
    __shared__ float scratch[32];
    const int row = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
    const int start = seg_start[row], keys = seg_keys[row];
    const bool uniform = keys == 0;
    const int n = uniform ? seg_rows[row] : keys;
    const long ld = ld_in, ldo = (long)heads * head_dim;
    const T* qr = q + (long)row * ld + (long)h * head_dim;
    const int pos_q = table ? positions[row] : 0;  // positions and bucket_of are unused without a table

    // Scores and their maximum.
    float local_max = NEG_INF;
    for (int j = tid; j < n; j += blockDim.x) {
        float s = 0.0f;
        if (!uniform) {
            const T* kr = k + (long)(start + j) * ld + (long)h * head_dim;
            for (int d = 0; d < head_dim; ++d) s += load_float(qr, d) * load_float(kr, d);
            s *= scale;
            if (table) s += table[bucket_of[positions[start + j] - pos_q + max_pos] * heads + h];
        }
        scores[j] = s;
        local_max = fmaxf(local_max, s);
    }
    // Block maximum (a sum of -max is not what we want: reduce with max through the scratch).
    local_max = warp_max(local_max);
    const int lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = local_max;
    __syncthreads();
    float m = lane < warps ? scratch[lane] : NEG_INF;
    m = warp_max(m);

    float local_sum = 0.0f;
    for (int j = tid; j < n; j += blockDim.x) {
        const float e = expf(scores[j] - m);
        scores[j] = e;
        local_sum += e;
    }
    const float inv = 1.0f / block_sum(local_sum, scratch);  // its barriers also publish the exponentials

    // out[d] = sum_j p_j v[j, d]: thread t takes dimension t % head_dim over every (blockDim / head_dim)-th key.
    const int groups = blockDim.x / head_dim;  // head_dim divides blockDim or is larger (then groups = 0)
    if (groups >= 1) {
        const int d = tid % head_dim, g = tid / head_dim;
        float acc = 0.0f;
        if (g < groups) {
            for (int j = g; j < n; j += groups) acc += scores[j] * load_float(v + (long)(start + j) * ld + (long)h * head_dim, d);
        }
        partial[tid] = acc;
        __syncthreads();
        if (tid < head_dim) {
            float total = 0.0f;
            for (int gg = 0; gg < groups; ++gg) total += partial[gg * head_dim + tid];
            store_float(out + (long)row * ldo + (long)h * head_dim, tid, total * inv);
        }
    } else {
        for (int d = tid; d < head_dim; d += blockDim.x) {
            float acc = 0.0f;
            for (int j = 0; j < n; ++j) acc += scores[j] * load_float(v + (long)(start + j) * ld + (long)h * head_dim, d);
            store_float(out + (long)row * ldo + (long)h * head_dim, d, acc * inv);
        }
    }
}

extern "C" __global__ void __launch_bounds__(T5_THREADS)
t5_attention_f32(float* out, const float* q, const float* k, const float* v, int ld_in, const int* seg_start, const int* seg_keys,
                 const int* seg_rows, const int* positions, const int* bucket_of, int max_pos, const float* table,
                 int heads, int head_dim, float scale) {
    t5_attention_body(out, q, k, v, ld_in, seg_start, seg_keys, seg_rows, positions, bucket_of, max_pos, table, heads, head_dim, scale);
}

extern "C" __global__ void __launch_bounds__(T5_THREADS)
t5_attention_bf16(bf16* out, const bf16* q, const bf16* k, const bf16* v, int ld_in, const int* seg_start, const int* seg_keys,
                  const int* seg_rows, const int* positions, const int* bucket_of, int max_pos, const float* table,
                  int heads, int head_dim, float scale) {
    t5_attention_body(out, q, k, v, ld_in, seg_start, seg_keys, seg_rows, positions, bucket_of, max_pos, table, heads, head_dim, scale);
}

__device__ __forceinline__ float t5_gelu_tanh(float x) {
    const float c = 0.7978845608028654f;  // sqrt(2 / pi)
    return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
}

// out may equal gate or up. Any grid (grid-stride loop).
extern "C" __global__ void t5_gelu_mul_f32(float* out, const float* gate, const float* up, long n) {
    FOR_EACH_INDEX(i, n) out[i] = t5_gelu_tanh(gate[i]) * up[i];
}

extern "C" __global__ void t5_gelu_mul_bf16(bf16* out, const bf16* gate, const bf16* up, long n) {
    // As the official bf16 model: GELU's output is rounded to bf16 before the product.
    FOR_EACH_INDEX(i, n) out[i] = float_to_bf16(bf16_to_float(float_to_bf16(t5_gelu_tanh(bf16_to_float(gate[i])))) * bf16_to_float(up[i]));
}

// ---------------------------------------------------------------------------------------------------------------------
// t5_flash_attention_bf16_d{16,32,64,80}: t5_attention_bf16's semantics (same arguments, plus the tile list) as one
// flash-style kernel on the tensor cores: mma.sync.m16n8k16 bf16 -> f32 (common.cuh's mma_bf16_16816), keys tiled
// through shared memory with an online softmax, no row of scores kept. Structure as attention2.cu's
// flash_attention_bf16_v2 (cp.async double-buffered K/V tiles, ldmatrix / ldmatrix.trans fragments, the softmax in the
// log2 domain, p rounded to bf16 for p v); the helpers below are that file's, renamed (NVRTC compiles each file alone).
//
// Launch: grid (tiles, heads), block 128 (4 warps of 16 query rows). tile_rows[blockIdx.x] is the first row of the
// block's query tile; the tile is its segment's rows [first, min(first + 64, seg_start + seg_rows)): a tile never
// straddles segments (the host cuts each segment into ceil(seg_rows / 64) tiles; rows past the segment are masked:
// zero q, not written). Keys: the segment's rows [seg_start, seg_start + n), n = keys, or all seg_rows rows when
// keys == 0 (uniform attention: every score 0); key slots >= n score -inf (zero-filled in shared memory).
// Score of key j: scale * q.k + table[bucket_of[pos_j - pos_q + max_pos], head]; the bias of every relative position
// (the head's table column gathered through bucket_of, times log2(e)) is staged in shared memory once per block, the
// keys' positions with each K/V tile. With a table, 2 * max_pos + 1 <= T5_FLASH_REL_MAX. q, k, v: rows ld apart
// (ld % 8 == 0), 16-byte aligned rows (cp.async); out [rows, heads * D]. D: 16, 32, 64, 80 (any multiple of 16);
// keys per tile 64 (D <= 64) or 32 (D 80: static shared memory stays under 48 KB).
#define T5_FLASH_ROWS 64       // query rows per block (4 warps x 16)
#define T5_FLASH_PAD 8         // shared row padding (bf16): ldmatrix's 8 rows land in distinct 16-byte bank groups
#define T5_FLASH_REL_MAX 2048  // staged relative positions: max_pos <= 1023

template <int D, int KEYS>
__device__ __forceinline__ void t5_flash_attention_body(bf16* out, const bf16* q, const bf16* k, const bf16* v, int ld_in,
                                                        const int* tile_rows, const int* seg_start, const int* seg_keys,
                                                        const int* seg_rows, const int* positions, const int* bucket_of,
                                                        int max_pos, const float* table, int heads, float scale) {
    static_assert(D % 16 == 0 && KEYS % 16 == 0, "k-steps of 16 (q k^T) and 16-key steps (p v)");
    constexpr int THREADS = 128;
    constexpr int KSTEPS = D / 16;      // k-steps of q k^T
    constexpr int DTILES = D / 8;       // 8-wide output column tiles (even)
    constexpr int NTILES = KEYS / 8;    // 8-key score tiles
    constexpr int STRIDE = D + T5_FLASH_PAD;
    __shared__ __align__(16) bf16 k_tile[2][KEYS * STRIDE];
    __shared__ __align__(16) bf16 v_tile[2][KEYS * STRIDE];
    __shared__ int key_pos[2][KEYS];
    __shared__ float rel_bias[T5_FLASH_REL_MAX];  // log2(e) * table[bucket_of[r], h], r = pos_k - pos_q + max_pos

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int h = blockIdx.y;
    const int row0 = tile_rows[blockIdx.x];
    const int start = seg_start[row0], keys = seg_keys[row0];
    const int seg_end = start + seg_rows[row0];
    const bool uniform = keys == 0;
    const int n = uniform ? seg_end - start : keys;  // key slots of the segment
    const long ld = ld_in, ldo = (long)heads * D;
    const float log2e = 1.4426950408889634f;
    const float scale_log2 = scale * log2e;
    const bool bias = table != nullptr && !uniform;
    const bf16* k_head = k + (long)start * ld + (long)h * D;
    const bf16* v_head = v + (long)start * ld + (long)h * D;

    // Issues tile `tile`'s K and V copies (and its keys' positions, plain loads) into buffer `buf`.
    auto load_tile = [&](int tile, int buf) {
        copy_kv_tile_async<D, KEYS, STRIDE, THREADS>(k_tile[buf], v_tile[buf], k_head, v_head, ld, tile, n);
        if (bias) {
            for (int kk = tid; kk < KEYS; kk += THREADS) {
                const int key = tile * KEYS + kk;
                key_pos[buf][kk] = key < n ? positions[start + key] : 0;
            }
        }
    };
    const int tiles = (n + KEYS - 1) / KEYS;  // >= 1: n >= 1 for every segment
    load_tile(0, 0);  // in flight while the bias and q are read
    if (bias) {
        for (int r = tid; r <= 2 * max_pos; r += THREADS) rel_bias[r] = table[(long)bucket_of[r] * heads + h] * log2e;
    }

    // q's A fragments: rows g and g + 8 of this warp's 16 (zeros past the tile's segment), and their positions.
    const int r0 = row0 + warp * 16 + g, r1 = r0 + 8;
    const int row_end = min(row0 + T5_FLASH_ROWS, seg_end);
    const bool in0 = r0 < row_end, in1 = r1 < row_end;
    const int pos0 = bias && in0 ? positions[r0] : 0, pos1 = bias && in1 ? positions[r1] : 0;
    unsigned q_frag[KSTEPS][4];
    {
        const bf16* q0 = q + (long)r0 * ld + (long)h * D;
        const bf16* q1 = q + (long)r1 * ld + (long)h * D;
#pragma unroll
        for (int ks = 0; ks < KSTEPS; ++ks) {
            const int c = ks * 16 + 2 * t;
            q_frag[ks][0] = in0 ? *reinterpret_cast<const unsigned*>(q0 + c) : 0u;
            q_frag[ks][1] = in1 ? *reinterpret_cast<const unsigned*>(q1 + c) : 0u;
            q_frag[ks][2] = in0 ? *reinterpret_cast<const unsigned*>(q0 + c + 8) : 0u;
            q_frag[ks][3] = in1 ? *reinterpret_cast<const unsigned*>(q1 + c + 8) : 0u;
        }
    }

    float o[DTILES][4];
#pragma unroll
    for (int i = 0; i < DTILES; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.0f, l1 = 0.0f;  // running maxima (log2 domain), this thread's share of the sums

    // ldmatrix row addresses (element offsets in a tile), as attention2.cu: K matrices (d 0-7, 8-15, 16-23, 24-31) of
    // 8 keys (x4: two k-steps; x2: one, lanes 0-15), V (.trans) matrices (keys 0-7, 8-15) x (d 0-7, 8-15).
    const int k_lane = (lane & 7) * STRIDE + (lane >> 3) * 8;
    const int k_lane2 = (lane & 7) * STRIDE + ((lane >> 3) & 1) * 8;
    const int v_lane = ((lane & 7) + (lane & 8)) * STRIDE + (lane >> 4) * 8;

    for (int tile = 0; tile < tiles; ++tile) {
        const int buf = tile & 1;
        if (tile + 1 < tiles) {
            load_tile(tile + 1, buf ^ 1);  // the other buffer is free: the barrier at the end of the last step
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();  // this tile's copies, its positions (and, the first time, rel_bias) are visible
        const bf16* ks_tile = k_tile[buf];
        const bf16* vs_tile = v_tile[buf];

        float s[NTILES][4];
#pragma unroll
        for (int nt = 0; nt < NTILES; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
        if (!uniform) {
#pragma unroll
            for (int nt = 0; nt < NTILES; ++nt) {
#pragma unroll
                for (int kp = 0; kp < KSTEPS / 2; ++kp) {
                    unsigned bk[4];
                    ldmatrix_x4(bk, ks_tile + nt * 8 * STRIDE + kp * 32 + k_lane);
                    mma_bf16_16816(s[nt], q_frag[2 * kp][0], q_frag[2 * kp][1], q_frag[2 * kp][2], q_frag[2 * kp][3], bk[0], bk[1]);
                    mma_bf16_16816(s[nt], q_frag[2 * kp + 1][0], q_frag[2 * kp + 1][1], q_frag[2 * kp + 1][2], q_frag[2 * kp + 1][3], bk[2], bk[3]);
                }
                if (KSTEPS % 2) {
                    constexpr int ks = KSTEPS - 1;
                    unsigned bk[2];
                    ldmatrix_x2(bk, ks_tile + nt * 8 * STRIDE + ks * 16 + k_lane2);
                    mma_bf16_16816(s[nt], q_frag[ks][0], q_frag[ks][1], q_frag[ks][2], q_frag[ks][3], bk[0], bk[1]);
                }
            }
        }

        // Scores in the log2 domain: scale * log2(e) * q.k + the staged bias (0 for a uniform segment); -inf past n.
        const int key0 = tile * KEYS;
#pragma unroll
        for (int nt = 0; nt < NTILES; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int kk = nt * 8 + 2 * t + (e & 1);
                float x = s[nt][e] * scale_log2;
                if (bias) x += rel_bias[key_pos[buf][kk] - (e < 2 ? pos0 : pos1) + max_pos];
                s[nt][e] = key0 + kk < n ? x : NEG_INF;
            }

        // Online softmax per row (the 4 threads of a quad share rows g and g + 8).
        float top0 = m0, top1 = m1;
#pragma unroll
        for (int nt = 0; nt < NTILES; ++nt) {
            top0 = fmaxf(top0, fmaxf(s[nt][0], s[nt][1]));
            top1 = fmaxf(top1, fmaxf(s[nt][2], s[nt][3]));
        }
        top0 = fmaxf(top0, __shfl_xor_sync(FULL_MASK, top0, 1));
        top0 = fmaxf(top0, __shfl_xor_sync(FULL_MASK, top0, 2));
        top1 = fmaxf(top1, __shfl_xor_sync(FULL_MASK, top1, 1));
        top1 = fmaxf(top1, __shfl_xor_sync(FULL_MASK, top1, 2));
        // The tile holds a valid key (tile < tiles), so top0/top1 are finite; the first correction is exp2(-inf) = 0.
        const float c0 = exp2f(m0 - top0), c1 = exp2f(m1 - top1);
        m0 = top0;
        m1 = top1;
        float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
        for (int nt = 0; nt < NTILES; ++nt) {
            s[nt][0] = exp2f(s[nt][0] - top0);
            s[nt][1] = exp2f(s[nt][1] - top0);
            s[nt][2] = exp2f(s[nt][2] - top1);
            s[nt][3] = exp2f(s[nt][3] - top1);
            sum0 += s[nt][0] + s[nt][1];
            sum1 += s[nt][2] + s[nt][3];
        }
        l0 = l0 * c0 + sum0;
        l1 = l1 * c1 + sum1;
#pragma unroll
        for (int dt = 0; dt < DTILES; ++dt) {
            o[dt][0] *= c0;
            o[dt][1] *= c0;
            o[dt][2] *= c1;
            o[dt][3] *= c1;
        }

        // o += p v over 16-key steps; p's A fragment is score tiles 2 ks and 2 ks + 1, rounded to bf16.
#pragma unroll
        for (int ks = 0; ks < KEYS / 16; ++ks) {
            const unsigned p0 = pack_bf16x2(s[2 * ks][0], s[2 * ks][1]), p1 = pack_bf16x2(s[2 * ks][2], s[2 * ks][3]);
            const unsigned p2 = pack_bf16x2(s[2 * ks + 1][0], s[2 * ks + 1][1]), p3 = pack_bf16x2(s[2 * ks + 1][2], s[2 * ks + 1][3]);
#pragma unroll
            for (int dp = 0; dp < DTILES / 2; ++dp) {
                unsigned bv[4];
                ldmatrix_x4_trans(bv, vs_tile + ks * 16 * STRIDE + dp * 16 + v_lane);
                mma_bf16_16816(o[2 * dp], p0, p1, p2, p3, bv[0], bv[1]);
                mma_bf16_16816(o[2 * dp + 1], p0, p1, p2, p3, bv[2], bv[3]);
            }
        }
        __syncthreads();  // every warp is done with this buffer before the next step's copies overwrite it
    }

    // Each row's sum over its quad (> 0: the row's largest score contributes 1), normalise, store two bf16 at a time.
    l0 += __shfl_xor_sync(FULL_MASK, l0, 1);
    l0 += __shfl_xor_sync(FULL_MASK, l0, 2);
    l1 += __shfl_xor_sync(FULL_MASK, l1, 1);
    l1 += __shfl_xor_sync(FULL_MASK, l1, 2);
    const float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
    bf16* out0 = out + (long)r0 * ldo + (long)h * D;
    bf16* out1 = out + (long)r1 * ldo + (long)h * D;
#pragma unroll
    for (int dt = 0; dt < DTILES; ++dt) {
        const int c = dt * 8 + 2 * t;
        if (in0) *reinterpret_cast<unsigned*>(out0 + c) = pack_bf16x2(o[dt][0] * inv0, o[dt][1] * inv0);
        if (in1) *reinterpret_cast<unsigned*>(out1 + c) = pack_bf16x2(o[dt][2] * inv1, o[dt][3] * inv1);
    }
}

extern "C" __global__ void __launch_bounds__(128)
t5_flash_attention_bf16_d16(bf16* out, const bf16* q, const bf16* k, const bf16* v, int ld_in, const int* tile_rows,
                             const int* seg_start, const int* seg_keys, const int* seg_rows, const int* positions,
                             const int* bucket_of, int max_pos, const float* table, int heads, float scale) {
    t5_flash_attention_body<16, 64>(out, q, k, v, ld_in, tile_rows, seg_start, seg_keys, seg_rows, positions, bucket_of, max_pos,
                                    table, heads, scale);
}

extern "C" __global__ void __launch_bounds__(128)
t5_flash_attention_bf16_d32(bf16* out, const bf16* q, const bf16* k, const bf16* v, int ld_in, const int* tile_rows,
                             const int* seg_start, const int* seg_keys, const int* seg_rows, const int* positions,
                             const int* bucket_of, int max_pos, const float* table, int heads, float scale) {
    t5_flash_attention_body<32, 64>(out, q, k, v, ld_in, tile_rows, seg_start, seg_keys, seg_rows, positions, bucket_of, max_pos,
                                    table, heads, scale);
}

extern "C" __global__ void __launch_bounds__(128)
t5_flash_attention_bf16_d64(bf16* out, const bf16* q, const bf16* k, const bf16* v, int ld_in, const int* tile_rows,
                             const int* seg_start, const int* seg_keys, const int* seg_rows, const int* positions,
                             const int* bucket_of, int max_pos, const float* table, int heads, float scale) {
    t5_flash_attention_body<64, 64>(out, q, k, v, ld_in, tile_rows, seg_start, seg_keys, seg_rows, positions, bucket_of, max_pos,
                                    table, heads, scale);
}

extern "C" __global__ void __launch_bounds__(128)
t5_flash_attention_bf16_d80(bf16* out, const bf16* q, const bf16* k, const bf16* v, int ld_in, const int* tile_rows,
                             const int* seg_start, const int* seg_keys, const int* seg_rows, const int* positions,
                             const int* bucket_of, int max_pos, const float* table, int heads, float scale) {
    t5_flash_attention_body<80, 32>(out, q, k, v, ld_in, tile_rows, seg_start, seg_keys, seg_rows, positions, bucket_of, max_pos,
                                    table, heads, scale);
}
