// Flash attention forward: softmax(q k^T * scale) v without ever forming the Lq x Lk score matrix. Keys are visited
// in tiles; each query row keeps its running maximum m, its running sum l of exp(s - m) and its unnormalised output
// o, rescaling both by exp(m_old - m_new) when a tile raises the maximum (the online softmax), and divides by l at
// the end.
//
// Layout (the DiT's, after the q/k/v projections are viewed as heads): q [B, Lq, H, D], k and v [B, Lk, H, D],
// out [B, Lq, H, D]. k_lens (int32 [B], may be null) masks keys: sample b attends to its first k_lens[b] keys only
// (the official self-attention length mask and the text-context mask). A row with no key gets zeros.
//
//   flash_attention_f32       f32 in/out, any D up to 128. CUDA cores; the precise path (--precision f32).
//                             Launch: grid (ceil(Lq / 4), H, B), block 128 (one warp per query row).
//   flash_attention_bf16_any  the same kernel with bf16 in/out (f32 inside): bf16 at a head_dim that has no
//                             tensor-core kernel below (any D up to 128; the same launch).
//   flash_attention_bf16_d32  (head_dim 32: the small models of the golden cases)
//   flash_attention_bf16_d64  bf16 in/out, f32 accumulation and softmax, tensor cores (mma.sync m16n8k16, sm_80+).
//   flash_attention_bf16_d128 Launch: grid (ceil(Lq / 64), H, B), block 128 (each warp owns 16 query rows).
#include "common.cuh"

// ---------------------------------------------------------------------------------------------------------------
// CUDA cores: one warp per query row, 32 keys per tile staged in shared memory by the whole block. T is the storage
// type of q, k, v and out (float or bf16); everything inside is f32.

#define F32_ROWS 4      // query rows (warps) per block
#define F32_KEYS 32     // keys per tile: lane i scores key i of the tile
#define F32_MAX_D 128

template <typename T>
__device__ __forceinline__ void flash_attention_rows(T* out, const T* q, const T* k, const T* v, const int* k_lens,
                                                     int Lq, int Lk, int H, int D, float scale) {
    __shared__ float k_tile[F32_KEYS][F32_MAX_D + 1];  // +1: lane i reads row i without bank conflicts
    __shared__ float v_tile[F32_KEYS][F32_MAX_D];
    __shared__ float q_rows[F32_ROWS][F32_MAX_D];

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int h = blockIdx.y, b = blockIdx.z;
    const int row = blockIdx.x * F32_ROWS + warp;
    const bool active = row < Lq;
    const int kv_len = k_lens ? min(k_lens[b], Lk) : Lk;
    const long token_stride = (long)H * D;

    // The scale is folded into q once.
    const long q_at = ((long)b * Lq + (active ? row : 0)) * token_stride + (long)h * D;
    for (int d = lane; d < D; d += 32) q_rows[warp][d] = active ? load_float(q, q_at + d) * scale : 0.0f;

    float o[F32_MAX_D / 32];  // lane owns output dims lane, lane + 32, ...
#pragma unroll
    for (int i = 0; i < F32_MAX_D / 32; ++i) o[i] = 0.0f;
    float m = NEG_INF, l = 0.0f;

    for (int key0 = 0; key0 < kv_len; key0 += F32_KEYS) {
        __syncthreads();  // every warp is done with the previous tile (and q_rows is written, first time round)
        for (int i = threadIdx.x; i < F32_KEYS * D; i += blockDim.x) {
            const int kk = i / D, d = i - kk * D;
            const int key = key0 + kk;
            float kv = 0.0f, vv = 0.0f;  // masked keys are zeros, never garbage: 0 * NaN would poison the sum
            if (key < kv_len) {
                const long at = ((long)b * Lk + key) * token_stride + (long)h * D + d;
                kv = load_float(k, at);
                vv = load_float(v, at);
            }
            k_tile[kk][d] = kv;
            v_tile[kk][d] = vv;
        }
        __syncthreads();

        const bool valid = key0 + lane < kv_len;
        float s = NEG_INF;
        if (valid) {
            s = 0.0f;
            for (int d = 0; d < D; ++d) s += q_rows[warp][d] * k_tile[lane][d];
        }
        // key0 < kv_len, so the tile holds at least one valid key and m_new is finite.
        const float m_new = fmaxf(m, warp_max(s));
        const float p = valid ? expf(s - m_new) : 0.0f;
        const float correction = expf(m - m_new);  // 0 on the first tile (m = -inf)
        l = l * correction + warp_sum(p);
#pragma unroll
        for (int i = 0; i < F32_MAX_D / 32; ++i) o[i] *= correction;
        for (int kk = 0; kk < F32_KEYS; ++kk) {
            const float pk = __shfl_sync(FULL_MASK, p, kk);
#pragma unroll
            for (int i = 0; i < F32_MAX_D / 32; ++i)
                if (lane + 32 * i < D) o[i] += pk * v_tile[kk][lane + 32 * i];
        }
        m = m_new;
    }

    if (!active) return;
    const float inv_l = l > 0.0f ? 1.0f / l : 0.0f;
    const long out_at = ((long)b * Lq + row) * token_stride + (long)h * D;
#pragma unroll
    for (int i = 0; i < F32_MAX_D / 32; ++i)
        if (lane + 32 * i < D) store_float(out, out_at + lane + 32 * i, o[i] * inv_l);
}

extern "C" __global__ void __launch_bounds__(128)
flash_attention_f32(float* out, const float* q, const float* k, const float* v, const int* k_lens, int Lq, int Lk,
                    int H, int D, float scale) {
    flash_attention_rows(out, q, k, v, k_lens, Lq, Lk, H, D, scale);
}

extern "C" __global__ void __launch_bounds__(128)
flash_attention_bf16_any(bf16* out, const bf16* q, const bf16* k, const bf16* v, const int* k_lens, int Lq, int Lk,
                         int H, int D, float scale) {
    flash_attention_rows(out, q, k, v, k_lens, Lq, Lk, H, D, scale);
}

// ---------------------------------------------------------------------------------------------------------------
// bf16 on tensor cores: FlashAttention-2's scheme with mma.sync.m16n8k16 (bf16 x bf16 -> f32), portable to every
// GPU from sm_80 on. A block of 4 warps takes 64 query rows; each warp keeps its 16 rows' q fragments, scores,
// softmax state and output in registers, and the block stages 64 keys of k and v in shared memory per step.
//
// Fragment layouts of mma.m16n8k16 (PTX ISA, "Matrix fragments for mma.m16n8k16"), with g = lane / 4 and
// t = lane % 4, two bf16 per 32-bit register with the lower column (or row, for B) in the low half:
//   A (16x16, row-major): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..2t+1], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   B (16x8, k x n):      b0 = B[2t..2t+1][g],  b1 = B[2t+8..2t+9][g]
//   C (16x8, f32):        c0, c1 = C[g][2t], C[g][2t+1];  c2, c3 = C[g+8][2t], C[g+8][2t+1]
// So the score accumulators of two neighbouring 8-key tiles are, once rounded to bf16, exactly the A fragment of
// P for the P v product: no shuffle between the two products.

#define TC_ROWS 64    // query rows per block (16 per warp)
#define TC_KEYS 64    // keys per shared-memory tile
#define TC_PAD 8      // row padding (bf16) that spreads a fragment's rows over all 32 banks

// Two consecutive bf16 (4-byte aligned) as one register.
__device__ __forceinline__ unsigned load_bf16x2(const bf16* p) { return *reinterpret_cast<const unsigned*>(p); }

template <int D>
__device__ __forceinline__ void flash_attention_bf16_body(bf16* out, const bf16* q, const bf16* k, const bf16* v,
                                                          const int* k_lens, int Lq, int Lk, int H, float scale) {
    static_assert(D % 16 == 0 && D <= 128, "head_dim must be a multiple of 16, at most 128");
    constexpr int KSTEPS = D / 16;     // k-steps of q k^T
    constexpr int DTILES = D / 8;      // 8-wide output column tiles
    constexpr int NTILES = TC_KEYS / 8;
    constexpr int STRIDE = D + TC_PAD; // shared-memory row length in bf16
    __shared__ __align__(16) bf16 k_tile[TC_KEYS * STRIDE];
    __shared__ __align__(16) bf16 v_tile[TC_KEYS * STRIDE];

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int h = blockIdx.y, b = blockIdx.z;
    const int kv_len = k_lens ? min(k_lens[b], Lk) : Lk;
    const long token_stride = (long)H * D;
    // exp(x) = exp2(x * log2(e)): the scale and log2(e) are applied to the f32 scores.
    const float scale_log2 = scale * 1.4426950408889634f;

    // This thread's two query rows: g and g + 8 of the warp's 16.
    const int row0 = blockIdx.x * TC_ROWS + warp * 16 + g;
    const int row1 = row0 + 8;
    const bf16* q0 = q + ((long)b * Lq + row0) * token_stride + (long)h * D;
    const bf16* q1 = q + ((long)b * Lq + row1) * token_stride + (long)h * D;

    unsigned q_frag[KSTEPS][4];  // A fragments of q, loaded once from global memory (rows past Lq are zeros)
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
        const int c = ks * 16 + 2 * t;
        q_frag[ks][0] = row0 < Lq ? load_bf16x2(q0 + c) : 0u;
        q_frag[ks][1] = row1 < Lq ? load_bf16x2(q1 + c) : 0u;
        q_frag[ks][2] = row0 < Lq ? load_bf16x2(q0 + c + 8) : 0u;
        q_frag[ks][3] = row1 < Lq ? load_bf16x2(q1 + c + 8) : 0u;
    }

    float o[DTILES][4];
#pragma unroll
    for (int i = 0; i < DTILES; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m0 = NEG_INF, m1 = NEG_INF;  // running maxima (scaled, log2 domain) of rows g and g + 8
    float l0 = 0.0f, l1 = 0.0f;        // this thread's share of the running sums (summed over the quad at the end)

    for (int key0 = 0; key0 < kv_len; key0 += TC_KEYS) {
        // Stage k and v: 16 bytes (8 bf16) per thread and step; keys past kv_len are zeros.
        __syncthreads();
        constexpr int CHUNKS = D / 8;
        for (int i = threadIdx.x; i < TC_KEYS * CHUNKS; i += blockDim.x) {
            const int kk = i / CHUNKS, c = (i - kk * CHUNKS) * 8;
            const int key = key0 + kk;
            uint4 kv = make_uint4(0u, 0u, 0u, 0u), vv = make_uint4(0u, 0u, 0u, 0u);
            if (key < kv_len) {
                const long at = ((long)b * Lk + key) * token_stride + (long)h * D + c;
                kv = *reinterpret_cast<const uint4*>(k + at);
                vv = *reinterpret_cast<const uint4*>(v + at);
            }
            *reinterpret_cast<uint4*>(&k_tile[kk * STRIDE + c]) = kv;
            *reinterpret_cast<uint4*>(&v_tile[kk * STRIDE + c]) = vv;
        }
        __syncthreads();

        // s = q k^T for this warp's 16 rows and the tile's 64 keys: 8 tiles of 8 keys.
        float s[NTILES][4];
#pragma unroll
        for (int nt = 0; nt < NTILES; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
            const bf16* key_row = &k_tile[(nt * 8 + g) * STRIDE];  // B[d][key] = k[key][d]: column g is key nt*8+g
#pragma unroll
            for (int ks = 0; ks < KSTEPS; ++ks) {
                const unsigned b0 = load_bf16x2(key_row + ks * 16 + 2 * t);
                const unsigned b1 = load_bf16x2(key_row + ks * 16 + 2 * t + 8);
                mma_bf16_16816(s[nt], q_frag[ks][0], q_frag[ks][1], q_frag[ks][2], q_frag[ks][3], b0, b1);
            }
        }

        // Scale, mask, and the tile's row maxima (over the 4 threads of a quad, which share rows g and g + 8).
        float tile_max0 = NEG_INF, tile_max1 = NEG_INF;
#pragma unroll
        for (int nt = 0; nt < NTILES; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = key0 + nt * 8 + 2 * t + (e & 1);
                s[nt][e] = key < kv_len ? s[nt][e] * scale_log2 : NEG_INF;
            }
            tile_max0 = fmaxf(tile_max0, fmaxf(s[nt][0], s[nt][1]));
            tile_max1 = fmaxf(tile_max1, fmaxf(s[nt][2], s[nt][3]));
        }
        tile_max0 = fmaxf(tile_max0, __shfl_xor_sync(FULL_MASK, tile_max0, 1));
        tile_max0 = fmaxf(tile_max0, __shfl_xor_sync(FULL_MASK, tile_max0, 2));
        tile_max1 = fmaxf(tile_max1, __shfl_xor_sync(FULL_MASK, tile_max1, 1));
        tile_max1 = fmaxf(tile_max1, __shfl_xor_sync(FULL_MASK, tile_max1, 2));
        // key0 < kv_len: every row has a valid key in this tile, so the new maxima are finite.
        const float m0_new = fmaxf(m0, tile_max0), m1_new = fmaxf(m1, tile_max1);
        const float correction0 = exp2f(m0 - m0_new), correction1 = exp2f(m1 - m1_new);  // 0 on the first tile
        m0 = m0_new;
        m1 = m1_new;

        // p = exp2(s - m) (masked keys: exp2(-inf) = 0), the running sums, and the rescaled output.
        float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
        for (int nt = 0; nt < NTILES; ++nt) {
            s[nt][0] = exp2f(s[nt][0] - m0);
            s[nt][1] = exp2f(s[nt][1] - m0);
            s[nt][2] = exp2f(s[nt][2] - m1);
            s[nt][3] = exp2f(s[nt][3] - m1);
            sum0 += s[nt][0] + s[nt][1];
            sum1 += s[nt][2] + s[nt][3];
        }
        l0 = l0 * correction0 + sum0;
        l1 = l1 * correction1 + sum1;
#pragma unroll
        for (int dt = 0; dt < DTILES; ++dt) {
            o[dt][0] *= correction0;
            o[dt][1] *= correction0;
            o[dt][2] *= correction1;
            o[dt][3] *= correction1;
        }

        // o += p v: 4 k-steps of 16 keys; the A fragment of p is the score tiles 2*ks and 2*ks + 1, rounded.
#pragma unroll
        for (int ks = 0; ks < TC_KEYS / 16; ++ks) {
            const unsigned a0 = pack_bf16x2(s[2 * ks][0], s[2 * ks][1]);
            const unsigned a1 = pack_bf16x2(s[2 * ks][2], s[2 * ks][3]);
            const unsigned a2 = pack_bf16x2(s[2 * ks + 1][0], s[2 * ks + 1][1]);
            const unsigned a3 = pack_bf16x2(s[2 * ks + 1][2], s[2 * ks + 1][3]);
            const bf16* v_rows = &v_tile[(ks * 16 + 2 * t) * STRIDE];  // B[key][d] = v[key][d], keys 2t, 2t+1, +8
#pragma unroll
            for (int dt = 0; dt < DTILES; ++dt) {
                const int c = dt * 8 + g;
                const unsigned b0 = (unsigned)v_rows[c] | ((unsigned)v_rows[STRIDE + c] << 16);
                const unsigned b1 = (unsigned)v_rows[8 * STRIDE + c] | ((unsigned)v_rows[9 * STRIDE + c] << 16);
                mma_bf16_16816(o[dt], a0, a1, a2, a3, b0, b1);
            }
        }
    }

    // Sum each row's l over its quad, normalise, store two bf16 at a time.
    l0 += __shfl_xor_sync(FULL_MASK, l0, 1);
    l0 += __shfl_xor_sync(FULL_MASK, l0, 2);
    l1 += __shfl_xor_sync(FULL_MASK, l1, 1);
    l1 += __shfl_xor_sync(FULL_MASK, l1, 2);
    const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    bf16* out0 = out + ((long)b * Lq + row0) * token_stride + (long)h * D;
    bf16* out1 = out + ((long)b * Lq + row1) * token_stride + (long)h * D;
#pragma unroll
    for (int dt = 0; dt < DTILES; ++dt) {
        const int c = dt * 8 + 2 * t;
        if (row0 < Lq) *reinterpret_cast<unsigned*>(out0 + c) = pack_bf16x2(o[dt][0] * inv0, o[dt][1] * inv0);
        if (row1 < Lq) *reinterpret_cast<unsigned*>(out1 + c) = pack_bf16x2(o[dt][2] * inv1, o[dt][3] * inv1);
    }
}

extern "C" __global__ void __launch_bounds__(128)
flash_attention_bf16_d32(bf16* out, const bf16* q, const bf16* k, const bf16* v, const int* k_lens, int Lq, int Lk,
                         int H, float scale) {
    flash_attention_bf16_body<32>(out, q, k, v, k_lens, Lq, Lk, H, scale);
}

extern "C" __global__ void __launch_bounds__(128)
flash_attention_bf16_d64(bf16* out, const bf16* q, const bf16* k, const bf16* v, const int* k_lens, int Lq, int Lk,
                         int H, float scale) {
    flash_attention_bf16_body<64>(out, q, k, v, k_lens, Lq, Lk, H, scale);
}

extern "C" __global__ void __launch_bounds__(128)
flash_attention_bf16_d128(bf16* out, const bf16* q, const bf16* k, const bf16* v, const int* k_lens, int Lq, int Lk,
                          int H, float scale) {
    flash_attention_bf16_body<128>(out, q, k, v, k_lens, Lq, Lk, H, scale);
}
