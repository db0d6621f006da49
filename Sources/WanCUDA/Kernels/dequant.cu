// Weight dequantisation into bf16, just before a product (weight-only quantisation: matrices stay on the GPU in
// their stored form and are expanded into one reused bf16 scratch matrix before each cuBLASLt product, which then
// runs on bf16 as for bf16 checkpoints). Launch: any grid (grid-stride loops), e.g. 256 threads x min(blocks, 65535).
//
// Every kernel computes, element by element, exactly what the host computes when it dequantises the stored tensor to
// float32 (StoredTensor.dequantize: FloatConversion for fp8, GGMLDequant for the ggml blocks, then `* scale`) and
// packs it to bf16 (BFloat16.from, round to nearest even), so the bf16 matrix is the same bit for bit as the one the
// host would upload: bf16(float(stored) * scale). Products and sums are written with __fmul_rn/__fadd_rn/__fsub_rn so that
// NVRTC cannot contract them into FMAs (the host rounds each operation). The one difference: a NaN in the stored
// weights comes out as some NaN (the payload may differ from the host's).
//
//   dequant_fp8_e4m3_bf16:  1 byte per element, float8 e4m3fn (bias 7, no infinities, S.1111.111 is NaN)
//   dequant_fp8_e5m2_bf16:  1 byte per element, float8 e5m2 (the top byte of an IEEE half)
//   dequant_q8_0_bf16:      blocks of 32: f16 d, int8 q[32]                      y = q * d
//   dequant_q4_0_bf16:      blocks of 32: f16 d, u8 qs[16]                       y = (nibble - 8) * d
//                           (element j < 16: low nibble of qs[j]; j >= 16: high nibble of qs[j - 16])
//   dequant_q4_1_bf16:      blocks of 32: f16 d, f16 m, u8 qs[16]                y = nibble * d + m
//                           (nibbles as Q4_0)
//   dequant_q5_0_bf16:      blocks of 32: f16 d, u8 qh[4], u8 qs[16]             y = ((nibble | bit << 4) - 16) * d + 0
//   dequant_q5_1_bf16:      blocks of 32: f16 d, f16 m, u8 qh[4], u8 qs[16]      y = (nibble | bit << 4) * d + m
//                           (nibbles as Q4_0; the fifth bit of element j is bit j of qh read as a little-endian u32;
//                           Q5_0's "+ 0" is the host's: it turns -0 into +0)
//   dequant_q2_k_bf16:      super-blocks of 256: u8 scales[16], u8 qs[64], f16 d, f16 dmin
//                           y = (d * (sc & 15)) * q - dmin * (sc >> 4), q 2 bits, sc = scales[j / 16]
//   dequant_q3_k_bf16:      super-blocks of 256: u8 hmask[32], u8 qs[64], u8 scales[12] (16 packed 6-bit), f16 d
//                           y = (d * (scale - 32)) * (q - (hmask bit ? 0 : 4)), q 2 bits
//   dequant_q4_k_bf16:      super-blocks of 256: f16 d, f16 dmin, u8 scales[12], u8 qs[128]
//   dequant_q5_k_bf16:      super-blocks of 256: f16 d, f16 dmin, u8 scales[12], u8 qh[32], u8 qs[128]
//   dequant_q6_k_bf16:      super-blocks of 256: u8 ql[128], u8 qh[64], int8 scales[16], f16 d
// (ggml-quants.c dequantize_row_*; the block structs are packed, so fields are read byte by byte.)
//
// out: n bf16 values (row-major [out, in], as the stored matrix); w: the stored bytes; n: a whole number of blocks.
#include "common.cuh"

typedef unsigned char u8;

// IEEE half -> float, exact (subnormals included).
__device__ __forceinline__ float half_to_float(unsigned h) {
    const unsigned sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0) {
        const float v = (float)man * 5.9604644775390625e-8f;  // man * 2^-24, exact
        return sign ? -v : v;
    }
    if (exp == 31) return __uint_as_float(sign | 0x7f800000u | (man << 13));
    return __uint_as_float(sign | ((exp + 112u) << 23) | (man << 13));
}

__device__ __forceinline__ float load_half(const u8* p) { return half_to_float((unsigned)p[0] | ((unsigned)p[1] << 8)); }

__device__ __forceinline__ float fp8_e4m3_to_float(unsigned b) {
    const unsigned sign = (b & 0x80u) << 24, exp = (b >> 3) & 0xfu, man = b & 0x7u;
    if (exp == 15 && man == 7) return __uint_as_float(0x7fc00000u);
    if (exp == 0) {
        const float v = (float)man * 0.001953125f;  // man/8 * 2^-6, exact
        return sign ? -v : v;
    }
    return __uint_as_float(sign | ((exp + 120u) << 23) | (man << 20));  // (1 + man/8) * 2^(exp - 7)
}

__device__ __forceinline__ float fp8_e5m2_to_float(unsigned b) { return half_to_float(b << 8); }

extern "C" __global__ void dequant_fp8_e4m3_bf16(bf16* out, const u8* w, float scale, long n) {
    FOR_EACH_INDEX(i, n) out[i] = float_to_bf16(__fmul_rn(fp8_e4m3_to_float(w[i]), scale));
}

extern "C" __global__ void dequant_fp8_e5m2_bf16(bf16* out, const u8* w, float scale, long n) {
    FOR_EACH_INDEX(i, n) out[i] = float_to_bf16(__fmul_rn(fp8_e5m2_to_float(w[i]), scale));
}

extern "C" __global__ void dequant_q8_0_bf16(bf16* out, const u8* w, float scale, long n) {
    FOR_EACH_INDEX(i, n) {
        const u8* b = w + (i >> 5) * 34;
        const int j = (int)(i & 31);
        const float q = (float)(signed char)b[2 + j];
        out[i] = float_to_bf16(__fmul_rn(__fmul_rn(q, load_half(b)), scale));
    }
}

extern "C" __global__ void dequant_q4_0_bf16(bf16* out, const u8* w, float scale, long n) {
    FOR_EACH_INDEX(i, n) {
        const u8* b = w + (i >> 5) * 18;
        const int j = (int)(i & 31);
        const unsigned byte = b[2 + (j & 15)];
        const int q = (int)(j < 16 ? (byte & 0xfu) : (byte >> 4)) - 8;
        out[i] = float_to_bf16(__fmul_rn(__fmul_rn((float)q, load_half(b)), scale));
    }
}

// Q4_1: element j < 16 takes the low nibble of qs[j], j >= 16 the high nibble of qs[j - 16].  y = q * d + m.
extern "C" __global__ void dequant_q4_1_bf16(bf16* out, const u8* w, float scale, long n) {
    FOR_EACH_INDEX(i, n) {
        const u8* b = w + (i >> 5) * 20;
        const int j = (int)(i & 31);
        const unsigned byte = b[4 + (j & 15)];
        const unsigned q = j < 16 ? (byte & 0xfu) : (byte >> 4);
        const float y = __fadd_rn(__fmul_rn((float)q, load_half(b)), load_half(b + 2));
        out[i] = float_to_bf16(__fmul_rn(y, scale));
    }
}

// Q5_0 (with_min = false: f16 d, qh, qs; q - 16, m = 0) and Q5_1 (with_min = true: f16 d, f16 m, qh, qs): the nibble
// of element j as Q4_0, its fifth bit bit j of qh (byte j / 8, bit j % 8).  y = q * d + m (m = 0 added too, as the host
// does: -0 comes out +0).
template <bool with_min>
__device__ __forceinline__ void dequant_q5_01(bf16* out, const u8* w, float scale, long n) {
    const int block_bytes = with_min ? 24 : 22, qh_at = with_min ? 4 : 2;
    FOR_EACH_INDEX(i, n) {
        const u8* b = w + (i >> 5) * block_bytes;
        const int j = (int)(i & 31);
        const unsigned byte = b[qh_at + 4 + (j & 15)];
        const unsigned fifth = (b[qh_at + (j >> 3)] >> (j & 7)) & 1u;
        const int q = (int)((j < 16 ? (byte & 0xfu) : (byte >> 4)) | (fifth << 4)) - (with_min ? 0 : 16);
        const float m = with_min ? load_half(b + 2) : 0.0f;
        const float y = __fadd_rn(__fmul_rn((float)q, load_half(b)), m);
        out[i] = float_to_bf16(__fmul_rn(y, scale));
    }
}

extern "C" __global__ void dequant_q5_0_bf16(bf16* out, const u8* w, float scale, long n) { dequant_q5_01<false>(out, w, scale, n); }

extern "C" __global__ void dequant_q5_1_bf16(bf16* out, const u8* w, float scale, long n) { dequant_q5_01<true>(out, w, scale, n); }

// Q2_K: element e of a super-block lies in half h = e / 128 and, within it, in quarter k = (e / 32) % 4; it takes bits
// 2k..2k+1 of qs[32 h + e % 32], and scales[e / 16] (low nibble: scale, high nibble: min).
// y = (d * (sc & 15)) * q - dmin * (sc >> 4).
extern "C" __global__ void dequant_q2_k_bf16(bf16* out, const u8* w, float scale, long n) {
    FOR_EACH_INDEX(i, n) {
        const u8* b = w + (i >> 8) * 84;
        const int e = (int)(i & 255);
        const unsigned sc = b[e >> 4];
        const unsigned q = (b[16 + 32 * (e >> 7) + (e & 31)] >> (2 * ((e >> 5) & 3))) & 3u;
        const float d = load_half(b + 80), dmin = load_half(b + 82);
        const float dl = __fmul_rn(d, (float)(sc & 0xfu)), ml = __fmul_rn(dmin, (float)(sc >> 4));
        out[i] = float_to_bf16(__fmul_rn(__fsub_rn(__fmul_rn(dl, (float)q), ml), scale));
    }
}

// Q3_K: element e takes, as Q2_K, bits 2k..2k+1 of qs[32 h + e % 32] (h = e / 128, k = (e / 32) % 4), minus 4 unless
// bit 4h + k of hmask[e % 32] is set; its 6-bit scale j = e / 16 has the low 4 bits in scales[j] (j < 8, low nibble) or
// scales[j - 8] (high nibble) and the high 2 bits at bit 2 (j / 4) of scales[8 + j % 4].  y = (d * (scale - 32)) * q.
extern "C" __global__ void dequant_q3_k_bf16(bf16* out, const u8* w, float scale, long n) {
    FOR_EACH_INDEX(i, n) {
        const u8* b = w + (i >> 8) * 110;
        const int e = (int)(i & 255), j = e >> 4, h = e >> 7, k = (e >> 5) & 3, l = e & 31;
        const u8* sc = b + 96;
        const unsigned low = j < 8 ? (sc[j] & 0xfu) : (sc[j - 8] >> 4);
        const unsigned high = (sc[8 + (j & 3)] >> (2 * (j >> 2))) & 3u;
        const float s = (float)((int)(low | (high << 4)) - 32);
        const int q = (int)((b[32 + 32 * h + l] >> (2 * k)) & 3u) - (((b[l] >> (4 * h + k)) & 1u) ? 0 : 4);
        const float dl = __fmul_rn(load_half(b + 108), s);
        out[i] = float_to_bf16(__fmul_rn(__fmul_rn(dl, (float)q), scale));
    }
}

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K super-block (get_scale_min_k4).
__device__ __forceinline__ void scale_min_k4(int j, const u8* q, float* scale, float* min) {
    if (j < 4) {
        *scale = (float)(q[j] & 63);
        *min = (float)(q[j + 4] & 63);
    } else {
        *scale = (float)((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4));
        *min = (float)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

// Q4_K (five = false) and Q5_K (five = true): element e of a super-block lies in 64-value group g = e / 64; its
// first 32 values take the low nibbles of qs[32 g ..], with sub-block 2 g, the next 32 the high nibbles with
// sub-block 2 g + 1; Q5_K adds bit (2 g) (low half) or bit (2 g + 1) (high half) of qh[l] as the fifth bit.
// y = (d * scale) * q - (dmin * min).
template <bool five>
__device__ __forceinline__ void dequant_k45(bf16* out, const u8* w, float scale, long n) {
    const int block_bytes = five ? 176 : 144;
    FOR_EACH_INDEX(i, n) {
        const u8* b = w + (i >> 8) * block_bytes;
        const int e = (int)(i & 255), g = e >> 6, within = e & 63, l = within & 31, high = within >> 5;
        const float d = load_half(b), dmin = load_half(b + 2);
        float sc, mn;
        scale_min_k4(2 * g + high, b + 4, &sc, &mn);
        const u8* qs = b + (five ? 48 : 16) + 32 * g;
        unsigned q = high ? (qs[l] >> 4) : (qs[l] & 0xfu);
        if (five && (b[16 + l] & (1u << (2 * g + high)))) q |= 16u;
        const float y = __fsub_rn(__fmul_rn(__fmul_rn(d, sc), (float)q), __fmul_rn(dmin, mn));
        out[i] = float_to_bf16(__fmul_rn(y, scale));
    }
}

extern "C" __global__ void dequant_q4_k_bf16(bf16* out, const u8* w, float scale, long n) { dequant_k45<false>(out, w, scale, n); }

extern "C" __global__ void dequant_q5_k_bf16(bf16* out, const u8* w, float scale, long n) { dequant_k45<true>(out, w, scale, n); }

// Q6_K: each half h (128 values) of a super-block uses ql[64 h ..], qh[32 h ..], scales[8 h ..]; within a half,
// quarter k = 0..3 of 32 values at l = 0..31 takes the low (k < 2) or high (k >= 2) nibble of ql[l + 32 (k & 1)]
// and bits 2k..2k+1 of qh[l], minus 32, with scale scales[8 h + l / 16 + 2 k].  y = (d * scale) * q.
extern "C" __global__ void dequant_q6_k_bf16(bf16* out, const u8* w, float scale, long n) {
    FOR_EACH_INDEX(i, n) {
        const u8* b = w + (i >> 8) * 210;
        const int e = (int)(i & 255), h = e >> 7, k = (e >> 5) & 3, l = e & 31;
        const u8* ql = b + 64 * h;
        const u8* qh = b + 128 + 32 * h;
        const signed char s = (signed char)b[192 + 8 * h + (l >> 4) + 2 * k];
        const unsigned low = ql[l + 32 * (k & 1)];
        const int q = (int)(((k >> 1) ? (low >> 4) : (low & 0xfu)) | (((qh[l] >> (2 * k)) & 3u) << 4)) - 32;
        const float d = load_half(b + 208);
        out[i] = float_to_bf16(__fmul_rn(__fmul_rn(__fmul_rn(d, (float)s), (float)q), scale));
    }
}
