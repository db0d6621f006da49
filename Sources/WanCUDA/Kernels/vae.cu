// Kernels of the Wan-VAE on the GPU (CUDAVAE). Activations are single frames, channels-last [H, W, C], f32; the
// convolutions are products (cuBLASLt) over the columns `vae_im2col_f32` gathers.
//
//   vae_im2col_f32/_bf16: the columns of a conv for a range of output pixels of one frame, over 1-3 input frames
//                     (a causal conv's history and the new frame, or the three frames of the temporal downsampler),
//                     with zero padding, stride and an optional nearest-2x upsampling of the input folded in; in f32
//                     or rounded to bf16 (the bf16 products). Any input frame may be stored in bf16 (`bf16_frames`:
//                     the causal state at bf16 precision).
//   vae_rms_norm_f32: the official RMS_norm over channels, y = x / max(||x||, 1e-12) * sqrt(C) * gamma, then SiLU
//                     when `silu` is 1 (the residual blocks and the head); out may equal x.
//   vae_softmax_f32:  softmax(scale * s) along each row, in place (the per-frame attention's scores).
//   vae_conv_bf16:    a whole conv as an implicit GEMM on the tensor cores (the bf16 columns never written), an
//                     alternative to vae_im2col_bf16 + cuBLASLt for channel counts that are multiples of 32.
#include "common.cuh"

// col [rows, frames * kh * kw * C]: col[r, ((t * kh + ky) * kw + kx) * C + c] = X_t[iy, ix, c] for output pixel
// p = row0 + r of an out_w-wide output frame (oy = p / out_w, ox = p % out_w), iy = oy * stride - pad_top + ky,
// ix = ox * stride - pad_left + kx, and 0 where (iy, ix) lies outside the input. X_t is frame t of (f0, f1, f2), the
// oldest first; only the first `frames` pointers are read. With up = 1 the input is the nearest-2x upsampling of the
// stored src_h x src_w frame (input size 2 src_h x 2 src_w, X(iy, ix) = src(iy / 2, ix / 2)); with up = 0 it is the
// stored frame. X_t is stored in f32, or in bf16 where bit t of `bf16_frames` is set (exact: a bf16 value is a
// float). C % 4 == 0 moves four channels per thread (frames 16-byte and col 16 (f32) / 8 (bf16) byte aligned, as
// device buffers are). `vae_im2col_bf16` writes the columns rounded to bf16 (to nearest even) for the bf16 products.
// The host keeps rows * frames * kh * kw * C below 2^31. Launch: any grid (grid-stride loop), e.g. 256 threads.
__device__ __forceinline__ void store4(float* dst, float4 v) { *reinterpret_cast<float4*>(dst) = v; }
__device__ __forceinline__ void store4(bf16* dst, float4 v) {
    *reinterpret_cast<uint2*>(dst) = make_uint2(pack_bf16x2(v.x, v.y), pack_bf16x2(v.z, v.w));
}

// Element i of frame f (i a multiple of 4 for load4), stored in bf16 (`half`) or f32, as floats.
__device__ __forceinline__ float4 load4(const void* f, bool half, long i) {
    if (!half) return *reinterpret_cast<const float4*>(static_cast<const float*>(f) + i);
    const uint2 u = *reinterpret_cast<const uint2*>(static_cast<const bf16*>(f) + i);
    return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
                       __uint_as_float(u.y & 0xffff0000u));
}
__device__ __forceinline__ float load1(const void* f, bool half, long i) {
    return half ? load_float(static_cast<const bf16*>(f), i) : load_float(static_cast<const float*>(f), i);
}

template <typename T>
__device__ __forceinline__ void im2col_body(T* col, const void* f0, const void* f1, const void* f2, int frames,
                                            int src_h, int src_w, int channels, int up, int out_w, int kh, int kw,
                                            int stride, int pad_top, int pad_left, long row0, long rows,
                                            int bf16_frames) {
    const unsigned vec = (channels & 3) == 0 ? 4u : 1u;
    const unsigned groups = (unsigned)channels / vec;
    const unsigned window = (unsigned)(kh * kw);
    const unsigned taps = (unsigned)frames * window;
    const unsigned n = (unsigned)rows * taps * groups;
    const int in_h = src_h << up, in_w = src_w << up;
    const long width = (long)taps * channels;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const unsigned g = i % groups;
        const unsigned rest = i / groups;
        const unsigned tap = rest % taps;
        const unsigned r = rest / taps;
        const long p = row0 + r;
        const int oy = (int)(p / out_w), ox = (int)(p - (long)oy * out_w);
        const unsigned t = tap / window, k = tap - t * window;
        const int ky = (int)(k / (unsigned)kw), kx = (int)(k - (unsigned)ky * (unsigned)kw);
        const int iy = oy * stride - pad_top + ky, ix = ox * stride - pad_left + kx;
        const void* f = t == 0 ? f0 : (t == 1 ? f1 : f2);
        const bool half = (bf16_frames >> t) & 1;
        T* dst = col + (long)r * width + (long)tap * channels + (long)g * vec;
        const bool inside = iy >= 0 && iy < in_h && ix >= 0 && ix < in_w;
        const long src = inside ? ((long)(iy >> up) * src_w + (ix >> up)) * channels + (long)g * vec : 0;
        if (vec == 4u) {
            store4(dst, inside ? load4(f, half, src) : make_float4(0.0f, 0.0f, 0.0f, 0.0f));
        } else {
            store_float(dst, 0, inside ? load1(f, half, src) : 0.0f);
        }
    }
}

extern "C" __global__ void __launch_bounds__(256)
vae_im2col_f32(float* col, const void* f0, const void* f1, const void* f2, int frames, int src_h, int src_w,
               int channels, int up, int out_w, int kh, int kw, int stride, int pad_top, int pad_left, long row0,
               long rows, int bf16_frames) {
    im2col_body(col, f0, f1, f2, frames, src_h, src_w, channels, up, out_w, kh, kw, stride, pad_top, pad_left, row0, rows,
                bf16_frames);
}

extern "C" __global__ void __launch_bounds__(256)
vae_im2col_bf16(bf16* col, const void* f0, const void* f1, const void* f2, int frames, int src_h, int src_w,
                int channels, int up, int out_w, int kh, int kw, int stride, int pad_top, int pad_left, long row0,
                long rows, int bf16_frames) {
    im2col_body(col, f0, f1, f2, frames, src_h, src_w, channels, up, out_w, kh, kw, stride, pad_top, pad_left, row0, rows,
                bf16_frames);
}

// x, out: [rows, channels]; gamma: [channels]. One warp per row (grid-stride over rows): launch 256 threads (8 rows
// per block), any grid.
extern "C" __global__ void __launch_bounds__(256)
vae_rms_norm_f32(float* out, const float* x, const float* gamma, long rows, int channels, int silu) {
    const int lane = threadIdx.x & 31;
    const long warps_per_block = blockDim.x >> 5;
    const float scale = sqrtf((float)channels);
    for (long row = (long)blockIdx.x * warps_per_block + (threadIdx.x >> 5); row < rows; row += (long)gridDim.x * warps_per_block) {
        const float* xr = x + row * channels;
        float* yr = out + row * channels;
        float sum_sq = 0.0f;
        for (int c = lane; c < channels; c += 32) {
            const float v = xr[c];
            sum_sq += v * v;
        }
        const float inv = 1.0f / fmaxf(sqrtf(warp_sum(sum_sq)), 1e-12f);
        for (int c = lane; c < channels; c += 32) {
            float v = ((xr[c] * inv) * scale) * gamma[c];
            if (silu) v = v / (1.0f + expf(-v));
            yr[c] = v;
        }
    }
}

// s: [rows, cols], in place. One block of 256 threads per row (grid-stride over rows), any grid.
extern "C" __global__ void __launch_bounds__(256)
vae_softmax_f32(float* s, long rows, int cols, float scale) {
    __shared__ float scratch[32];
    for (long row = blockIdx.x; row < rows; row += gridDim.x) {
        float* r = s + row * cols;
        float top = NEG_INF;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) top = fmaxf(top, r[c] * scale);
        top = block_max(top, scratch);
        float sum = 0.0f;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            const float e = expf(r[c] * scale - top);
            r[c] = e;
            sum += e;
        }
        const float inv = 1.0f / block_sum(sum, scratch);
        for (int c = threadIdx.x; c < cols; c += blockDim.x) r[c] *= inv;
    }
}

// Implicit-GEMM convolution on the tensor cores (bf16 x bf16 -> f32, mma.sync m16n8k16, sm_80+): the product of
// vae_im2col_bf16's columns and a conv's bf16 weights without writing the columns to memory:
//   y[p, o] = bias[o] + sum over (t, ky, kx, c) of bf16(X_t[iy, ix, c]) * w[o * ldw + ((t * kh + ky) * kw + kx) * C + c]
//             (+ y[p, o] when accumulate = 1)
// with p, (iy, ix), X_t (f32, or bf16 where bit t of `bf16_frames` is set) and `up` as in vae_im2col_f32; w holds
// out_channels rows, `ldw` apart, whose first frames * kh * kw * C entries are the taps of the frames given (a suffix
// of the conv's [Cout, kt, kh, kw, Cin] rows); y: [out_h * out_w, out_channels] f32. Requires channels % 32 == 0 and
// ldw % 8 == 0, frames and w 16-byte aligned.
// Tile: 128 pixels x 64 output channels per block of 256 threads (8 warps as 4 x 2, each 32 pixels x 32 channels =
// 2 x 4 mma tiles), K in steps of 32 channels of one tap staged through shared memory, the next step's loads in
// flight during this step's products (fragment layouts as in attention.cu). Launch: grid (ceil(out_h * out_w / 128), ceil(out_channels / 64)), block 256.
#define CV_BM 128
#define CV_BN 64
#define CV_BK 32
#define CV_STRIDE (CV_BK + 8)  // bf16 per shared row: the padding spreads a fragment's 8 rows over all 32 banks

__device__ __forceinline__ unsigned lds_bf16x2(const bf16* p) { return *reinterpret_cast<const unsigned*>(p); }

// Eight f32 (the raw bits of a, then b) rounded to eight bf16.
__device__ __forceinline__ uint4 pack_bf16x8(uint4 a, uint4 b) {
    return make_uint4(pack_bf16x2(__uint_as_float(a.x), __uint_as_float(a.y)), pack_bf16x2(__uint_as_float(a.z), __uint_as_float(a.w)),
                      pack_bf16x2(__uint_as_float(b.x), __uint_as_float(b.y)), pack_bf16x2(__uint_as_float(b.z), __uint_as_float(b.w)));
}

extern "C" __global__ void __launch_bounds__(256)
vae_conv_bf16(float* y, const void* f0, const void* f1, const void* f2, const bf16* w, const float* bias, int frames,
              int src_h, int src_w, int channels, int up, int out_h, int out_w, int kh, int kw, int stride, int pad_top,
              int pad_left, int out_channels, int ldw, int accumulate, int bf16_frames) {
    __shared__ __align__(16) bf16 a_tile[CV_BM * CV_STRIDE];
    __shared__ __align__(16) bf16 b_tile[CV_BN * CV_STRIDE];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t4 = lane & 3;
    const int wm = warp >> 1, wn = warp & 1;  // this warp's 32-pixel row block and 32-channel column block
    const long pixels = (long)out_h * out_w;
    const long p0 = (long)blockIdx.x * CV_BM;
    const int o0 = blockIdx.y * CV_BN;
    const int in_h = src_h << up, in_w = src_w << up;

    // Staging: each thread brings 16 channels of one pixel (A) and 8 k of one output channel's weights (B).
    const int a_row = tid >> 1, a_col = (tid & 1) * 16;
    const long ap = p0 + a_row;
    const bool a_pixel = ap < pixels;
    const int aoy = a_pixel ? (int)(ap / out_w) : 0;
    const int aox = a_pixel ? (int)(ap - (long)aoy * out_w) : 0;
    const int b_row = tid >> 2, b_col = (tid & 3) * 8;
    const bool b_channel = o0 + b_row < out_channels;
    const bf16* w_row = w + (long)(b_channel ? o0 + b_row : 0) * ldw + b_col;

    float acc[2][4][4];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.0f;

    // K steps: (tap, 32-channel chunk) pairs. The next step's global loads are issued before this step's products
    // (kept in registers, stored to shared memory after the barrier), so their latency overlaps the mma work.
    const int window = kh * kw, chunks = channels / CV_BK, steps = frames * window * chunks;
    // The loads land in registers as they are (the 16 pixels' raw bits: 4 x 4 f32, or 2 x 8 bf16 from a bf16 frame;
    // bf16 weights); rounding f32 pixels to bf16 waits for the next store, so nothing between the loads and the
    // products depends on them.
    uint4 va[4];
    bool va_bf16 = false;
    uint4 bv;
    auto fetch = [&](int step) {
        const int tap = step / chunks, c0 = (step - tap * chunks) * CV_BK;
        const int t = tap / window, k = tap - t * window;
        const int ky = k / kw, kx = k - ky * kw;
        const void* f = t == 0 ? f0 : (t == 1 ? f1 : f2);
        va_bf16 = (bf16_frames >> t) & 1;
        const int iy = aoy * stride - pad_top + ky, ix = aox * stride - pad_left + kx;
        if (a_pixel && iy >= 0 && iy < in_h && ix >= 0 && ix < in_w) {
            const long at = ((long)(iy >> up) * src_w + (ix >> up)) * channels + a_col + c0;
            const uint4* s = va_bf16 ? reinterpret_cast<const uint4*>(static_cast<const bf16*>(f) + at)
                                     : reinterpret_cast<const uint4*>(static_cast<const float*>(f) + at);
            const int loads = va_bf16 ? 2 : 4;  // 16 channels: 32 bytes of bf16 or 64 of f32
#pragma unroll
            for (int j = 0; j < 4; ++j)
                if (j < loads) va[j] = s[j];
        } else {
#pragma unroll
            for (int j = 0; j < 4; ++j) va[j] = make_uint4(0u, 0u, 0u, 0u);
        }
        bv = b_channel ? *reinterpret_cast<const uint4*>(w_row + (long)tap * channels + c0) : make_uint4(0u, 0u, 0u, 0u);
    };
    fetch(0);
    for (int step = 0; step < steps; ++step) {
        uint4* a_dst = reinterpret_cast<uint4*>(&a_tile[a_row * CV_STRIDE + a_col]);
        a_dst[0] = va_bf16 ? va[0] : pack_bf16x8(va[0], va[1]);
        a_dst[1] = va_bf16 ? va[1] : pack_bf16x8(va[2], va[3]);
        *reinterpret_cast<uint4*>(&b_tile[b_row * CV_STRIDE + b_col]) = bv;
        __syncthreads();
        if (step + 1 < steps) fetch(step + 1);
#pragma unroll
        for (int ks = 0; ks < CV_BK; ks += 16) {
            unsigned a[2][4];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) {
                const bf16* r = &a_tile[(wm * 32 + mi * 16 + g) * CV_STRIDE + ks + 2 * t4];
                a[mi][0] = lds_bf16x2(r);                      // A[g][2t..]
                a[mi][1] = lds_bf16x2(r + 8 * CV_STRIDE);      // A[g + 8][2t..]
                a[mi][2] = lds_bf16x2(r + 8);                  // A[g][2t + 8..]
                a[mi][3] = lds_bf16x2(r + 8 * CV_STRIDE + 8);  // A[g + 8][2t + 8..]
            }
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
                // B[k][n] = w[n][k]: column g of this 8-channel tile, k = 2t.. and 2t + 8..
                const bf16* r = &b_tile[(wn * 32 + ni * 8 + g) * CV_STRIDE + ks + 2 * t4];
                const unsigned b0 = lds_bf16x2(r), b1 = lds_bf16x2(r + 8);
#pragma unroll
                for (int mi = 0; mi < 2; ++mi) mma_bf16_16816(acc[mi][ni], a[mi][0], a[mi][1], a[mi][2], a[mi][3], b0, b1);
            }
        }
        __syncthreads();
    }

    // C fragments: acc[.][.][0..1] = C[g][2t..2t+1], acc[.][.][2..3] = C[g + 8][2t..2t+1].
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const long p = p0 + wm * 32 + mi * 16 + g + half * 8;
            if (p >= pixels) continue;
            float* yr = y + p * out_channels;
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    const int o = o0 + wn * 32 + ni * 8 + 2 * t4 + j;
                    if (o < out_channels) {
                        float v = acc[mi][ni][half * 2 + j] + bias[o];
                        if (accumulate) v += yr[o];
                        yr[o] = v;
                    }
                }
            }
        }
    }
}
