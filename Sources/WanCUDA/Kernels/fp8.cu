// Activation quantisation for the fp8 products (CUDAMatmul's fp8 path, opt-in: `CUDAComputeBackend.fp8Products`,
// `--fp8-products`; compute capability 8.9+): a product whose weight is stored as float8 e4m3 (ComfyUI fp8_scaled)
// runs as a cuBLASLt fp8 matmul, its bf16 activation quantised here to e4m3 with one per-tensor scale:
//
//   amax = max |x|,  s = amax / 448 (1 where amax is 0 or not finite, or s would underflow),  q[i] = e4m3(x[i] / s)
//
// and cuBLASLt computes D = (s_w · s) · (W_q · q) from the scale pointers (scales[1] = s_w, the weight's
// scale_weight, as A's; scales[0] = s as B's). Two launches, no atomics and no memset:
//
//   fp8_amax_bf16(partial, x, n):  grid G (1..FP8_MAX_PARTIALS) x 256 threads; block b writes partial[b], the max
//       |x[i]| over the groups of 8 it visits (grid-stride), so max(partial[0..G)) = amax. NaNs are ignored.
//   fp8_quantize_e4m3_bf16(out, scales, x, partial, partials, weight_scale, n):  any grid x 256 threads; every block
//       reduces partial[0..partials) to amax, block 0 writes scales[0] = s and scales[1] = weight_scale, and every
//       value is quantised: out[i] = e4m3(x[i] / s) (an IEEE division, as the host reference computes it).
//
// x: n bf16 values, 16-byte aligned; out: n bytes, 8-byte aligned; n a multiple of 8 (the fp8 products have k a
// multiple of 16, so every m x k activation qualifies).
//
// float -> e4m3 is done on the bits (NVRTC has no cuda_fp8.h here; the PTX cvt.rn.satfinite.e4m3x2.f32 of sm_89+
// does the same): round to nearest even, saturating to ±448 (the largest finite e4m3, "satfinite": larger values and
// infinities become ±448), NaN -> 0x7f with the sign, values below the smallest subnormal (2^-9) rounding to ±0.
// e4m3fn: bias 7, no infinities, S.1111.111 is NaN; subnormals m · 2^-9 (m = 1..7), 2^-6 the smallest normal.
#include "common.cuh"

typedef unsigned char u8;

#define FP8_MAX_PARTIALS 256

__device__ __forceinline__ unsigned float_to_e4m3(float f) {
    const unsigned u = __float_as_uint(f);
    const unsigned sign = (u >> 24) & 0x80u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7fu;     // NaN
    if (a >= 0x43e00000u) return sign | 0x7eu;    // |f| >= 448 (infinity included): saturate
    if (a >= 0x3c800000u) {                       // |f| >= 2^-6: a normal e4m3
        // Exponent rebiased (127 -> 7, i.e. minus 120 << 3 in the code) and the mantissa cut to 3 bits; the 20
        // dropped bits round to nearest even. A carry runs into the exponent, which is right (at most 448).
        unsigned code = (a >> 20) - (120u << 3);
        const unsigned rest = a & 0xfffffu;
        if (rest > 0x80000u || (rest == 0x80000u && (code & 1u))) code += 1;
        return sign | code;
    }
    // |f| < 2^-6: the subnormal m = round_even(|f| · 2^9) in 0..8 (8 is the code of 2^-6, the smallest normal).
    const int e = (int)(a >> 23) - 127;  // f = 1.mant · 2^e (float subnormals, e = -127, are far below 2^-10)
    if (e < -11) return sign;            // |f| < 2^-11: |f| · 2^9 < 1/4 rounds to 0
    const unsigned mant = (a & 0x7fffffu) | 0x800000u;
    const int shift = 14 - e;            // |f| · 2^9 = mant · 2^(e - 14), shift in 21..25
    unsigned m = mant >> shift;
    const unsigned rest = mant & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rest > half || (rest == half && (m & 1u))) m += 1;
    return sign | m;
}

__device__ __forceinline__ float abs_bf16(unsigned bits) { return __uint_as_float((bits & 0x7fffu) << 16); }

extern "C" __global__ void fp8_amax_bf16(float* partial, const bf16* x, long n) {
    __shared__ float scratch[32];
    const uint4* x8 = (const uint4*)x;
    float m = 0.0f;
    FOR_EACH_INDEX(g, n >> 3) {
        const uint4 v = x8[g];
        const unsigned w[4] = {v.x, v.y, v.z, v.w};
        for (int j = 0; j < 4; ++j) m = fmaxf(m, fmaxf(abs_bf16(w[j] & 0xffffu), abs_bf16(w[j] >> 16)));  // fmaxf drops NaN
    }
    m = block_max(m, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = m;
}

extern "C" __global__ void fp8_quantize_e4m3_bf16(u8* out, float* scales, const bf16* x, const float* partial, int partials,
                                                  float weight_scale, long n) {
    __shared__ float scratch[32];
    float m = 0.0f;
    for (int i = threadIdx.x; i < partials; i += blockDim.x) m = fmaxf(m, partial[i]);
    const float amax = block_max(m, scratch);
    const float q = amax / 448.0f;
    const float s = q > 0.0f && q <= 3.4028234663852886e38f ? q : 1.0f;
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        scales[0] = s;
        scales[1] = weight_scale;
    }
    const uint4* x8 = (const uint4*)x;
    uint2* out8 = (uint2*)out;
    FOR_EACH_INDEX(g, n >> 3) {
        const uint4 v = x8[g];
        const unsigned w[4] = {v.x, v.y, v.z, v.w};
        unsigned packed[2] = {0u, 0u};
        for (int j = 0; j < 4; ++j) {
            const unsigned lo = float_to_e4m3(bf16_to_float((bf16)(w[j] & 0xffffu)) / s);
            const unsigned hi = float_to_e4m3(bf16_to_float((bf16)(w[j] >> 16)) / s);
            packed[j >> 1] |= (lo | (hi << 8)) << (16 * (j & 1));
        }
        out8[g] = make_uint2(packed[0], packed[1]);
    }
}
