// bf16 flash attention, second version (FlashAttention-2's techniques): softmax(q k^T * scale) v on the tensor cores,
// beside attention.cu's flash_attention_bf16_d* (same arguments, same layout, same results up to rounding order).
//
// Layout: q [B, Lq, H, D], k and v [B, Lk, H, D], out [B, Lq, H, D] (bf16); k_lens (int32 [B], may be null): sample b
// attends to its first min(k_lens[b], Lk) keys; a row with no key gets zeros; rows >= Lq are not written. scale > 0.
//
//   flash_attention_bf16_v2_d64   4 warps, each owns 32 query rows (two m16 tiles: every K/V fragment read from shared
//                                 memory feeds two mma's); 64-key tiles.
//                                 Launch: grid (ceil(Lq / 128), H, B), block 128.
//   flash_attention_bf16_v2_d128  8 warps, each owns 16 query rows; 32-key tiles.
//                                 Launch: grid (ceil(Lq / 128), H, B), block 256.
//
// Both take 128 query rows per block (half the K/V traffic of the 64-row kernel) and differ where registers decide:
// at D 128 a warp owning 32 rows would hold 64 registers of q fragments, 128 of output accumulators and 32-64 of
// scores per thread, past the 255 a thread has (spills), so d128 splits the 128 rows over 8 warps of 16 rows
// (~32 + 64 + 32 live registers). Static shared memory is capped at 48 KB: K and V double-buffered take
// 4 * KEYS * (D + 8) * 2 bytes = 36 KB (d64, 64 keys) and 34 KB (d128, 32 keys).
//
// Per key tile: the block issues the *next* tile's K and V with cp.async (16 bytes a thread and copy, zero-filled
// past kv_len, so the shared tiles never hold garbage that 0 * NaN would spread), waits for the current tile's group,
// and computes on it while the next one is in flight (double buffering, cp.async.commit_group / wait_group 1).
// K fragments come from ldmatrix.x4 (one instruction: the B fragments of two k-steps), V fragments from
// ldmatrix.x4.trans (B of two 8-wide output tiles; .trans turns v's key-major rows into the column-major B that
// mma's .col wants). Scores stay raw f32; the softmax runs in the log2 domain, exp2(s * scale*log2(e) - m * scale*log2(e))
// one FFMA and one exp2 per score. The scores of two neighbouring 8-key tiles, rounded to bf16, are the A fragment of
// P for P v (see attention.cu for the mma.m16n8k16 fragment layouts).
#include "common.cuh"

#define FA2_ROWS 128  // query rows per block
#define FA2_PAD 8     // shared row padding (bf16): rows 16 bytes apart mod 128, so ldmatrix's 8 rows hit 32 banks

// d (+)= a * b on the tensor cores (mma.sync.m16n8k16, bf16 in, f32 accumulators).
__device__ __forceinline__ void fa2_mma(float* d, const unsigned* a, unsigned b0, unsigned b1) {
    mma_bf16_16816(d, a[0], a[1], a[2], a[3], b0, b1);
}

// D: head_dim; WARPS: warps per block; MT: m16 row tiles per warp (WARPS * 16 * MT = FA2_ROWS); KEYS: keys per tile.
template <int D, int WARPS, int MT, int KEYS>
__device__ __forceinline__ void flash_attention_bf16_v2_body(bf16* out, const bf16* q, const bf16* k, const bf16* v,
                                                             const int* k_lens, int Lq, int Lk, int H, float scale) {
    static_assert(WARPS * 16 * MT == FA2_ROWS, "a block takes FA2_ROWS query rows");
    static_assert(D % 32 == 0 && KEYS % 16 == 0, "ldmatrix.x4 takes two k-steps of K and two 8-wide tiles of V");
    constexpr int THREADS = WARPS * 32;
    constexpr int KSTEPS = D / 16;      // k-steps of q k^T
    constexpr int DTILES = D / 8;       // 8-wide output column tiles
    constexpr int NTILES = KEYS / 8;    // 8-key score tiles
    constexpr int STRIDE = D + FA2_PAD; // shared row length (bf16)
    constexpr int CHUNKS = D / 8;       // 16-byte chunks of a key row
    static_assert((KEYS * CHUNKS) % THREADS == 0, "every thread copies the same number of chunks");
    __shared__ __align__(16) bf16 k_tile[2][KEYS * STRIDE];
    __shared__ __align__(16) bf16 v_tile[2][KEYS * STRIDE];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int h = blockIdx.y, b = blockIdx.z;
    const int kv_len = k_lens ? min(k_lens[b], Lk) : Lk;
    const long token_stride = (long)H * D;
    const float scale_log2 = scale * 1.4426950408889634f;  // exp(x * scale) = exp2(x * scale * log2(e))
    const bf16* k_head = k + (long)b * Lk * token_stride + (long)h * D;
    const bf16* v_head = v + (long)b * Lk * token_stride + (long)h * D;

    // Issues tile `tile`'s K and V copies into buffer `buf` and commits them as one group.
    auto load_tile = [&](int tile, int buf) {
        copy_kv_tile_async<D, KEYS, STRIDE, THREADS>(k_tile[buf], v_tile[buf], k_head, v_head, token_stride, tile, kv_len);
    };
    const int tiles = (kv_len + KEYS - 1) / KEYS;
    if (tiles > 0) load_tile(0, 0);  // in flight while q is read

    // q's A fragments (rows past Lq are zeros), read once from global memory: rows g and g + 8 of each m16 tile.
    unsigned q_frag[MT][KSTEPS][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        const int r0 = blockIdx.x * FA2_ROWS + (warp * MT + mt) * 16 + g, r1 = r0 + 8;
        const bf16* q0 = q + ((long)b * Lq + r0) * token_stride + (long)h * D;
        const bf16* q1 = q + ((long)b * Lq + r1) * token_stride + (long)h * D;
#pragma unroll
        for (int ks = 0; ks < KSTEPS; ++ks) {
            const int c = ks * 16 + 2 * t;
            q_frag[mt][ks][0] = r0 < Lq ? *reinterpret_cast<const unsigned*>(q0 + c) : 0u;
            q_frag[mt][ks][1] = r1 < Lq ? *reinterpret_cast<const unsigned*>(q1 + c) : 0u;
            q_frag[mt][ks][2] = r0 < Lq ? *reinterpret_cast<const unsigned*>(q0 + c + 8) : 0u;
            q_frag[mt][ks][3] = r1 < Lq ? *reinterpret_cast<const unsigned*>(q1 + c + 8) : 0u;
        }
    }

    float o[MT][DTILES][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int i = 0; i < DTILES; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.0f;
    float m[MT][2], l[MT][2];  // raw running maxima of rows g, g + 8; this thread's share of the running sums
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) m[mt][0] = m[mt][1] = NEG_INF, l[mt][0] = l[mt][1] = 0.0f;

    // ldmatrix row addresses (element offsets in a tile): lane l addresses row l % 8 of matrix l / 8.
    //   K, matrices (d 0-7, 8-15, 16-23, 24-31) of 8 keys: B fragments b0, b1 of k-step 2j and of 2j + 1.
    //   V (.trans), matrices (keys 0-7, 8-15) x (d 0-7, 8-15) of a 16-key step: b0, b1 of two output tiles.
    const int k_lane = (lane & 7) * STRIDE + (lane >> 3) * 8;
    const int v_lane = ((lane & 7) + (lane & 8)) * STRIDE + (lane >> 4) * 8;

    for (int tile = 0; tile < tiles; ++tile) {
        const int buf = tile & 1;
        // The next tile into the other buffer (free: the barrier at the end of the last step), then wait for this one.
        if (tile + 1 < tiles) {
            load_tile(tile + 1, buf ^ 1);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();  // every thread's copies of this tile have landed
        const bf16* ks_tile = k_tile[buf];
        const bf16* vs_tile = v_tile[buf];

        // s = q k^T: MT x NTILES tiles of 16 rows x 8 keys.
        float s[MT][NTILES][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < NTILES; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.0f;
#pragma unroll
        for (int nt = 0; nt < NTILES; ++nt) {
#pragma unroll
            for (int kp = 0; kp < KSTEPS / 2; ++kp) {
                unsigned bk[4];
                ldmatrix_x4(bk, ks_tile + nt * 8 * STRIDE + kp * 32 + k_lane);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    fa2_mma(s[mt][nt], q_frag[mt][2 * kp], bk[0], bk[1]);
                    fa2_mma(s[mt][nt], q_frag[mt][2 * kp + 1], bk[2], bk[3]);
                }
            }
        }

        // Keys past kv_len (only in the last tile) score -inf.
        const int key0 = tile * KEYS;
        if (key0 + KEYS > kv_len) {
#pragma unroll
            for (int nt = 0; nt < NTILES; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    if (key0 + nt * 8 + 2 * t + (e & 1) >= kv_len)
#pragma unroll
                        for (int mt = 0; mt < MT; ++mt) s[mt][nt][e] = NEG_INF;
        }

        // Online softmax per row (the 4 threads of a quad share rows g and g + 8).
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            float top0 = m[mt][0], top1 = m[mt][1];
#pragma unroll
            for (int nt = 0; nt < NTILES; ++nt) {
                top0 = fmaxf(top0, fmaxf(s[mt][nt][0], s[mt][nt][1]));
                top1 = fmaxf(top1, fmaxf(s[mt][nt][2], s[mt][nt][3]));
            }
            top0 = fmaxf(top0, __shfl_xor_sync(FULL_MASK, top0, 1));
            top0 = fmaxf(top0, __shfl_xor_sync(FULL_MASK, top0, 2));
            top1 = fmaxf(top1, __shfl_xor_sync(FULL_MASK, top1, 1));
            top1 = fmaxf(top1, __shfl_xor_sync(FULL_MASK, top1, 2));
            // The tile holds a valid key (tile < tiles), so top0/top1 are finite; the first tile's correction is
            // exp2(-inf) = 0.
            const float c0 = exp2f((m[mt][0] - top0) * scale_log2), c1 = exp2f((m[mt][1] - top1) * scale_log2);
            m[mt][0] = top0;
            m[mt][1] = top1;
            const float shift0 = top0 * scale_log2, shift1 = top1 * scale_log2;
            float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
            for (int nt = 0; nt < NTILES; ++nt) {
                s[mt][nt][0] = exp2f(fmaf(s[mt][nt][0], scale_log2, -shift0));
                s[mt][nt][1] = exp2f(fmaf(s[mt][nt][1], scale_log2, -shift0));
                s[mt][nt][2] = exp2f(fmaf(s[mt][nt][2], scale_log2, -shift1));
                s[mt][nt][3] = exp2f(fmaf(s[mt][nt][3], scale_log2, -shift1));
                sum0 += s[mt][nt][0] + s[mt][nt][1];
                sum1 += s[mt][nt][2] + s[mt][nt][3];
            }
            l[mt][0] = l[mt][0] * c0 + sum0;
            l[mt][1] = l[mt][1] * c1 + sum1;
#pragma unroll
            for (int dt = 0; dt < DTILES; ++dt) {
                o[mt][dt][0] *= c0;
                o[mt][dt][1] *= c0;
                o[mt][dt][2] *= c1;
                o[mt][dt][3] *= c1;
            }
        }

        // o += p v over k-steps of 16 keys; p's A fragment is the score tiles 2 ks and 2 ks + 1, rounded to bf16.
#pragma unroll
        for (int ks = 0; ks < KEYS / 16; ++ks) {
            unsigned p[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                p[mt][0] = pack_bf16x2(s[mt][2 * ks][0], s[mt][2 * ks][1]);
                p[mt][1] = pack_bf16x2(s[mt][2 * ks][2], s[mt][2 * ks][3]);
                p[mt][2] = pack_bf16x2(s[mt][2 * ks + 1][0], s[mt][2 * ks + 1][1]);
                p[mt][3] = pack_bf16x2(s[mt][2 * ks + 1][2], s[mt][2 * ks + 1][3]);
            }
#pragma unroll
            for (int dp = 0; dp < DTILES / 2; ++dp) {
                unsigned bv[4];
                ldmatrix_x4_trans(bv, vs_tile + ks * 16 * STRIDE + dp * 16 + v_lane);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    fa2_mma(o[mt][2 * dp], p[mt], bv[0], bv[1]);
                    fa2_mma(o[mt][2 * dp + 1], p[mt], bv[2], bv[3]);
                }
            }
        }
        __syncthreads();  // every warp is done with this buffer before the next step's copies overwrite it
    }

    // Each row's sum over its quad, normalise, store two bf16 at a time (rows >= Lq are not written).
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        float l0 = l[mt][0], l1 = l[mt][1];
        l0 += __shfl_xor_sync(FULL_MASK, l0, 1);
        l0 += __shfl_xor_sync(FULL_MASK, l0, 2);
        l1 += __shfl_xor_sync(FULL_MASK, l1, 1);
        l1 += __shfl_xor_sync(FULL_MASK, l1, 2);
        const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
        const int r0 = blockIdx.x * FA2_ROWS + (warp * MT + mt) * 16 + g, r1 = r0 + 8;
        bf16* out0 = out + ((long)b * Lq + r0) * token_stride + (long)h * D;
        bf16* out1 = out + ((long)b * Lq + r1) * token_stride + (long)h * D;
#pragma unroll
        for (int dt = 0; dt < DTILES; ++dt) {
            const int c = dt * 8 + 2 * t;
            if (r0 < Lq) *reinterpret_cast<unsigned*>(out0 + c) = pack_bf16x2(o[mt][dt][0] * inv0, o[mt][dt][1] * inv0);
            if (r1 < Lq) *reinterpret_cast<unsigned*>(out1 + c) = pack_bf16x2(o[mt][dt][2] * inv1, o[mt][dt][3] * inv1);
        }
    }
}

extern "C" __global__ void __launch_bounds__(128)
flash_attention_bf16_v2_d64(bf16* out, const bf16* q, const bf16* k, const bf16* v, const int* k_lens, int Lq, int Lk,
                            int H, float scale) {
    flash_attention_bf16_v2_body<64, 4, 2, 64>(out, q, k, v, k_lens, Lq, Lk, H, scale);
}

extern "C" __global__ void __launch_bounds__(256)
flash_attention_bf16_v2_d128(bf16* out, const bf16* q, const bf16* k, const bf16* v, const int* k_lens, int Lq, int Lk,
                             int H, float scale) {
    flash_attention_bf16_v2_body<128, 8, 1, 32>(out, q, k, v, k_lens, Lq, Lk, H, scale);
}
