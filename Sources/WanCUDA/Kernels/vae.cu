// Kernels of the Wan-VAE on the GPU (CUDAVAE). Activations are single frames, channels-last [H, W, C], f32; the
// convolutions are products (cuBLASLt) over the columns `vae_im2col_f32` gathers.
//
//   vae_im2col_f32/_bf16: the columns of a conv for a range of output pixels of one frame, over 1-3 input frames
//                     (a causal conv's history and the new frame, or the three frames of the temporal downsampler),
//                     with zero padding, stride and an optional nearest-2x upsampling of the input folded in; in f32
//                     or rounded to bf16 (the bf16 products).
//   vae_rms_norm_f32: the official RMS_norm over channels, y = x / max(||x||, 1e-12) * sqrt(C) * gamma, then SiLU
//                     when `silu` is 1 (the residual blocks and the head); out may equal x.
//   vae_softmax_f32:  softmax(scale * s) along each row, in place (the per-frame attention's scores).
#include "common.cuh"

// col [rows, frames * kh * kw * C]: col[r, ((t * kh + ky) * kw + kx) * C + c] = X_t[iy, ix, c] for output pixel
// p = row0 + r of an out_w-wide output frame (oy = p / out_w, ox = p % out_w), iy = oy * stride - pad_top + ky,
// ix = ox * stride - pad_left + kx, and 0 where (iy, ix) lies outside the input. X_t is frame t of (f0, f1, f2), the
// oldest first; only the first `frames` pointers are read. With up = 1 the input is the nearest-2x upsampling of the
// stored src_h x src_w frame (input size 2 src_h x 2 src_w, X(iy, ix) = src(iy / 2, ix / 2)); with up = 0 it is the
// stored frame. C % 4 == 0 moves four channels per thread (frames 16-byte and col 16 (f32) / 8 (bf16) byte aligned,
// as device buffers are). The frames are f32; `vae_im2col_bf16` writes the columns rounded to bf16 (to nearest even)
// for the bf16 products. The host keeps rows * frames * kh * kw * C below 2^31. Launch: any grid (grid-stride loop),
// e.g. 256 threads.
__device__ __forceinline__ void store4(float* dst, float4 v) { *reinterpret_cast<float4*>(dst) = v; }
__device__ __forceinline__ void store4(bf16* dst, float4 v) {
    *reinterpret_cast<uint2*>(dst) = make_uint2(pack_bf16x2(v.x, v.y), pack_bf16x2(v.z, v.w));
}

template <typename T>
__device__ __forceinline__ void im2col_body(T* col, const float* f0, const float* f1, const float* f2, int frames,
                                            int src_h, int src_w, int channels, int up, int out_w, int kh, int kw,
                                            int stride, int pad_top, int pad_left, long row0, long rows) {
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
        const float* f = t == 0 ? f0 : (t == 1 ? f1 : f2);
        T* dst = col + (long)r * width + (long)tap * channels + (long)g * vec;
        const bool inside = iy >= 0 && iy < in_h && ix >= 0 && ix < in_w;
        const long src = inside ? ((long)(iy >> up) * src_w + (ix >> up)) * channels + (long)g * vec : 0;
        if (vec == 4u) {
            store4(dst, inside ? *reinterpret_cast<const float4*>(f + src) : make_float4(0.0f, 0.0f, 0.0f, 0.0f));
        } else {
            store_float(dst, 0, inside ? f[src] : 0.0f);
        }
    }
}

extern "C" __global__ void __launch_bounds__(256)
vae_im2col_f32(float* col, const float* f0, const float* f1, const float* f2, int frames, int src_h, int src_w,
               int channels, int up, int out_w, int kh, int kw, int stride, int pad_top, int pad_left, long row0,
               long rows) {
    im2col_body(col, f0, f1, f2, frames, src_h, src_w, channels, up, out_w, kh, kw, stride, pad_top, pad_left, row0, rows);
}

extern "C" __global__ void __launch_bounds__(256)
vae_im2col_bf16(bf16* col, const float* f0, const float* f1, const float* f2, int frames, int src_h, int src_w,
                int channels, int up, int out_w, int kh, int kw, int stride, int pad_top, int pad_left, long row0,
                long rows) {
    im2col_body(col, f0, f1, f2, frames, src_h, src_w, channels, up, out_w, kh, kw, stride, pad_top, pad_left, row0, rows);
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

// Maximum over the whole block (blockDim.x a multiple of 32); every thread receives it. As block_sum: `scratch` is
// 32 floats of shared memory, the leading barrier lets one scratch serve consecutive calls.
__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : NEG_INF;
    return warp_max(v);
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
