// Normalisations of the Wan DiT, one thread block per row (launch: grid = rows, block = 256 threads).
//
//   WanRMSNorm:   y = x * rsqrt(mean(x^2) + eps) * weight            (q/k norms over the full model width)
//   WanLayerNorm: y = (x - mean) * rsqrt(var + eps) [* weight + bias]  (norm1/norm2 have no affine, norm3 has)
//   modulation:   y = y * (1 + scale[b]) + shift[b]                  (adaLN: e[1]/e[0] before self-attention,
//                                                                      e[4]/e[3] before the FFN)
// Statistics are accumulated in float whatever the storage type. The modulation vectors are rows of the per-sample
// tensor e [B, 6, dim]: `mod_stride` is the distance between two samples' rows (6 * dim), and row r of x belongs to
// sample r / rows_per_batch.
#include "common.cuh"

template <typename TIn, typename TOut>
__device__ __forceinline__ void rms_norm_row(TOut* out, const TIn* x, const float* weight, int rows, int dim, float eps) {
    __shared__ float scratch[32];
    const int row = blockIdx.x;
    if (row >= rows) return;
    const TIn* xr = x + (long)row * dim;
    TOut* yr = out + (long)row * dim;
    float sum_sq = 0.0f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        const float v = load_float(xr, c);
        sum_sq += v * v;
    }
    const float inv_rms = rsqrtf(block_sum(sum_sq, scratch) / (float)dim + eps);
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        const float w = weight ? weight[c] : 1.0f;
        store_float(yr, c, load_float(xr, c) * inv_rms * w);
    }
}

// out may equal x (in place).
extern "C" __global__ void __launch_bounds__(256)
rms_norm_f32(float* out, const float* x, const float* weight, int rows, int dim, float eps) {
    rms_norm_row(out, x, weight, rows, dim, eps);
}

extern "C" __global__ void __launch_bounds__(256)
rms_norm_bf16(bf16* out, const bf16* x, const float* weight, int rows, int dim, float eps) {
    rms_norm_row(out, x, weight, rows, dim, eps);
}

// LayerNorm (two passes over the row: mean, then the variance of x - mean) with optional affine parameters and
// optional modulation. Null pointers switch a part off: weight/bias (norm3 has them), shift/scale (norm1/norm2).
template <typename TOut>
__device__ __forceinline__ void layer_norm_row(TOut* out, const float* x, const float* weight, const float* bias,
                                               const float* shift, const float* scale, int mod_stride, int rows,
                                               int rows_per_batch, int dim, float eps) {
    __shared__ float scratch[32];
    const int row = blockIdx.x;
    if (row >= rows) return;
    const float* xr = x + (long)row * dim;
    TOut* yr = out + (long)row * dim;

    float sum = 0.0f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) sum += xr[c];
    const float mean = block_sum(sum, scratch) / (float)dim;
    float sum_sq = 0.0f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        const float d = xr[c] - mean;
        sum_sq += d * d;
    }
    const float inv_std = rsqrtf(block_sum(sum_sq, scratch) / (float)dim + eps);

    const long sample = row / rows_per_batch;
    const float* shift_b = shift ? shift + sample * mod_stride : nullptr;
    const float* scale_b = scale ? scale + sample * mod_stride : nullptr;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        float y = (xr[c] - mean) * inv_std;
        if (weight) y *= weight[c];
        if (bias) y += bias[c];
        if (scale_b) y *= 1.0f + scale_b[c];
        if (shift_b) y += shift_b[c];
        store_float(yr, c, y);
    }
}

// f32 out (the precise path); out may equal x.
extern "C" __global__ void __launch_bounds__(256)
layer_norm_modulate_f32(float* out, const float* x, const float* weight, const float* bias, const float* shift,
                        const float* scale, int mod_stride, int rows, int rows_per_batch, int dim, float eps) {
    layer_norm_row(out, x, weight, bias, shift, scale, mod_stride, rows, rows_per_batch, dim, eps);
}

// bf16 out: the residual stream stays f32 (as the official code keeps it), the normalised activations feed the
// bf16 matrix products.
extern "C" __global__ void __launch_bounds__(256)
layer_norm_modulate_bf16(bf16* out, const float* x, const float* weight, const float* bias, const float* shift,
                         const float* scale, int mod_stride, int rows, int rows_per_batch, int dim, float eps) {
    layer_norm_row(out, x, weight, bias, shift, scale, mod_stride, rows, rows_per_batch, dim, eps);
}
