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
