// Elementwise kernels of the Wan DiT. Launch: any grid (grid-stride loops), e.g. 256 threads x min(blocks, 65535).
//
//   gelu_tanh:      y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))   (the FFN's nn.GELU(approximate='tanh'))
//   silu:           y = x / (1 + exp(-x))                                 (the time embedding)
//   gated_residual: x += y * gate[b]                                      (x = x + y * e[2], x = x + y * e[5]; a
//                                                                          null gate is a plain residual add)
//   modulation_add: out[b] = e[b] + modulation                            ((self.modulation + e), per block)
//   gelu_erf:       y = 0.5 x (1 + erf(x / sqrt(2)))                      (nn.GELU() of the image projection)
//   add:            out = a + b                                           (image + text cross-attention outputs)
//   bias_act:       y[r, c] = act(y[r, c] + bias[c])                       (the GEMM epilogue, where cuBLASLt
//                                                                          offers no fused one)
//   conversions between f32 and bf16 (round to nearest even).
// `out` may equal `x` in every kernel here.
#include "common.cuh"

__device__ __forceinline__ float gelu_tanh(float x) {
    const float k = 0.7978845608028654f;  // sqrt(2 / pi)
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

__device__ __forceinline__ float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f)); }

extern "C" __global__ void gelu_tanh_f32(float* out, const float* x, long n) {
    FOR_EACH_INDEX(i, n) out[i] = gelu_tanh(x[i]);
}

extern "C" __global__ void gelu_tanh_bf16(bf16* out, const bf16* x, long n) {
    FOR_EACH_INDEX(i, n) out[i] = float_to_bf16(gelu_tanh(bf16_to_float(x[i])));
}

extern "C" __global__ void silu_f32(float* out, const float* x, long n) {
    FOR_EACH_INDEX(i, n) out[i] = silu(x[i]);
}

extern "C" __global__ void silu_bf16(bf16* out, const bf16* x, long n) {
    FOR_EACH_INDEX(i, n) out[i] = float_to_bf16(silu(bf16_to_float(x[i])));
}

// x: [rows, dim] f32 (the residual stream); y: the block's output; gate: rows of e [B, 6, dim], sample b's row at
// gate + b * mod_stride; row r belongs to sample r / rows_per_batch.
template <typename T>
__device__ __forceinline__ void gated_residual_body(float* x, const T* y, const float* gate, int mod_stride, long rows,
                                                    int rows_per_batch, int dim) {
    const long n = rows * dim;
    FOR_EACH_INDEX(i, n) {
        const long row = i / dim;
        const int c = (int)(i - row * dim);
        const float g = gate ? gate[(row / rows_per_batch) * mod_stride + c] : 1.0f;
        x[i] += load_float(y, i) * g;
    }
}

extern "C" __global__ void gated_residual_f32(float* x, const float* y, const float* gate, int mod_stride, long rows,
                                              int rows_per_batch, int dim) {
    gated_residual_body(x, y, gate, mod_stride, rows, rows_per_batch, dim);
}

extern "C" __global__ void gated_residual_bf16(float* x, const bf16* y, const float* gate, int mod_stride, long rows,
                                               int rows_per_batch, int dim) {
    gated_residual_body(x, y, gate, mod_stride, rows, rows_per_batch, dim);
}

// out, e: [batch, n]; modulation: [n] (n = 6 * dim for a block's six vectors).
extern "C" __global__ void modulation_add_f32(float* out, const float* e, const float* modulation, int batch, int n) {
    FOR_EACH_INDEX(i, (long)batch * n) out[i] = e[i] + modulation[i % n];
}

extern "C" __global__ void convert_f32_to_bf16(bf16* out, const float* x, long n) {
    FOR_EACH_INDEX(i, n) out[i] = float_to_bf16(x[i]);
}

extern "C" __global__ void convert_bf16_to_f32(float* out, const bf16* x, long n) {
    FOR_EACH_INDEX(i, n) out[i] = bf16_to_float(x[i]);
}

extern "C" __global__ void gelu_erf_f32(float* out, const float* x, long n) {
    FOR_EACH_INDEX(i, n) out[i] = gelu_erf(x[i]);
}

extern "C" __global__ void gelu_erf_bf16(bf16* out, const bf16* x, long n) {
    FOR_EACH_INDEX(i, n) out[i] = float_to_bf16(gelu_erf(bf16_to_float(x[i])));
}

extern "C" __global__ void add_f32(float* out, const float* a, const float* b, long n) {
    FOR_EACH_INDEX(i, n) out[i] = a[i] + b[i];
}

extern "C" __global__ void add_bf16(bf16* out, const bf16* a, const bf16* b, long n) {
    FOR_EACH_INDEX(i, n) out[i] = float_to_bf16(bf16_to_float(a[i]) + bf16_to_float(b[i]));
}

// y: [rows, cols] in place; bias: [cols] of y's type (as cuBLASLt's bias epilogue takes it), may be null;
// act: 0 none, 1 GELU (tanh).
template <typename T>
__device__ __forceinline__ void bias_act_body(T* y, const T* bias, long rows, int cols, int act) {
    FOR_EACH_INDEX(i, rows * cols) {
        const int c = (int)(i % cols);
        float v = load_float(y, i) + (bias ? load_float(bias, c) : 0.0f);
        if (act == 1) v = gelu_tanh(v);
        store_float(y, i, v);
    }
}

extern "C" __global__ void bias_act_f32(float* y, const float* bias, long rows, int cols, int act) {
    bias_act_body(y, bias, rows, cols, act);
}

extern "C" __global__ void bias_act_bf16(bf16* y, const bf16* bias, long rows, int cols, int act) {
    bias_act_body(y, bias, rows, cols, act);
}
