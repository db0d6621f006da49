// Shared helpers of WanKit's CUDA kernels.
//
// Compiled by NVRTC at run time with no include path: nothing here includes a toolkit header. bfloat16 values are
// carried as their 16 raw bits (`bf16`), converted by hand; tensor-core instructions are written as inline PTX.
// Every tensor is row-major and contiguous unless a kernel says otherwise; indices that can exceed 2^31 are `long`.
#pragma once

typedef unsigned short bf16;  // the upper 16 bits of an IEEE float32

#define FULL_MASK 0xffffffffu
#define NEG_INF __int_as_float(0xff800000)

// bf16 -> f32 is exact: the bits become the upper half of the float.
__device__ __forceinline__ float bf16_to_float(bf16 x) { return __uint_as_float(((unsigned)x) << 16); }

// f32 -> bf16 with round-to-nearest-even (as PyTorch's .to(torch.bfloat16)); NaN stays a (quiet) NaN.
__device__ __forceinline__ bf16 float_to_bf16(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}

// Two floats as one 32-bit register of two bf16: `lo` in the low half (the lower index in memory and in the
// tensor-core fragment layouts).
__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
    return (unsigned)float_to_bf16(lo) | ((unsigned)float_to_bf16(hi) << 16);
}

// Typed loads/stores that compute in float: one kernel body serves the f32 and the bf16 variants.
__device__ __forceinline__ float load_float(const float* p, long i) { return p[i]; }
__device__ __forceinline__ float load_float(const bf16* p, long i) { return bf16_to_float(p[i]); }
__device__ __forceinline__ void store_float(float* p, long i, float v) { p[i] = v; }
__device__ __forceinline__ void store_float(bf16* p, long i, float v) { p[i] = float_to_bf16(v); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(FULL_MASK, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32); every thread receives the total. `scratch` is 32 floats
// of shared memory; the leading barrier lets one scratch serve consecutive calls.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
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

#ifndef __CUDA_ARCH__
// The kernel files compiled as C++ for the CPU (Tests/WanCUDATests, every thread of a block simulated) do the warp's
// mma from the fragments all 32 lanes hand over, as the PTX ISA lays them out.
void mma_bf16_16816_host(float* d, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1);
#endif

// d (+)= a * b on the tensor cores: mma.sync.m16n8k16, bf16 A (16x16, row) and B (16x8, col) fragments, f32
// accumulators (fragment layouts: see attention.cu).
__device__ __forceinline__ void mma_bf16_16816(float* d, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0,
                                               unsigned b1) {
#ifdef __CUDA_ARCH__
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
    mma_bf16_16816_host(d, a0, a1, a2, a3, b0, b1);
#endif
}

// Shared-memory tiles for the tensor cores (ldmatrix) and asynchronous copies into them (cp.async, sm_80+). On the
// CPU (Tests/WanCUDATests) the harness's *_host functions stand in: ldmatrix as a warp exchange, cp.async queued per
// thread and completed by the wait that must.
#ifndef __CUDA_ARCH__
void ldmatrix_host(unsigned* r, int count, const void* row, bool trans);
void cp_async_16_host(void* dst, const void* src, int src_bytes);
void cp_async_commit_host();
void cp_async_wait_host(int n);
#endif
#ifdef __CUDA_ARCH__
// A shared-memory address as the 32-bit offset that ldmatrix and cp.async take.
__device__ __forceinline__ unsigned smem_address(const void* p) {
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }\n" : "=r"(a) : "l"(p));
    return a;
}
#endif

// ldmatrix.x4: lane l hands over the address of row l % 8 of 8x8 matrix l / 8 (16 bytes); r[i] receives row l / 4,
// columns 2(l % 4), 2(l % 4) + 1 of matrix i (.trans: column l / 4, rows 2(l % 4), 2(l % 4) + 1).
__device__ __forceinline__ void ldmatrix_x4(unsigned* r, const bf16* row) {
#ifdef __CUDA_ARCH__
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_address(row)));
#else
    ldmatrix_host(r, 4, row, false);
#endif
}

// ldmatrix.x2: two 8x8 matrices (lanes 0-15 hand over the rows; the others' addresses are ignored).
__device__ __forceinline__ void ldmatrix_x2(unsigned* r, const bf16* row) {
#ifdef __CUDA_ARCH__
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(smem_address(row)));
#else
    ldmatrix_host(r, 2, row, false);
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(unsigned* r, const bf16* row) {
#ifdef __CUDA_ARCH__
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_address(row)));
#else
    ldmatrix_host(r, 4, row, true);
#endif
}

// 16 bytes global -> shared, asynchronous (L2 only: .cg); `valid` false writes 16 zero bytes and reads nothing.
__device__ __forceinline__ void cp_async_16(bf16* dst, const bf16* src, bool valid) {
#ifdef __CUDA_ARCH__
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(dst)), "l"(src), "r"(valid ? 16 : 0));
#else
    cp_async_16_host(dst, src, valid ? 16 : 0);
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifdef __CUDA_ARCH__
    asm volatile("cp.async.commit_group;\n" ::);
#else
    cp_async_commit_host();
#endif
}

// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef __CUDA_ARCH__
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#else
    cp_async_wait_host(N);
#endif
}

// The flash kernels' K/V tile copy: keys [tile * KEYS, tile * KEYS + KEYS) of one head, D bf16 each, rows `stride`
// elements apart from k_head / v_head, into k_tile / v_tile (rows STRIDE elements apart), by the block's THREADS
// threads 16 bytes a copy; keys >= n are zero-filled (so 0 * garbage never spreads NaN) and read nothing. The copies
// are committed as one cp.async group.
template <int D, int KEYS, int STRIDE, int THREADS>
__device__ __forceinline__ void copy_kv_tile_async(bf16* k_tile, bf16* v_tile, const bf16* k_head, const bf16* v_head, long stride,
                                                   int tile, int n) {
    constexpr int CHUNKS = D / 8;  // 16-byte chunks of a key row
#pragma unroll
    for (int i = threadIdx.x; i < KEYS * CHUNKS; i += THREADS) {
        const int kk = i / CHUNKS, c = (i - kk * CHUNKS) * 8;
        const int key = tile * KEYS + kk;
        const bool valid = key < n;
        const long at = (long)(valid ? key : 0) * stride + c;  // a valid address even where nothing is read
        cp_async_16(&k_tile[kk * STRIDE + c], k_head + at, valid);
        cp_async_16(&v_tile[kk * STRIDE + c], v_head + at, valid);
    }
    cp_async_commit();
}

// Grid-stride loop over [0, n).
#define FOR_EACH_INDEX(i, n) \
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long)gridDim.x * blockDim.x)
