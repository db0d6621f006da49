import Foundation
import XCTest
import WanCUDA

/// The kernels of Kernels/vae.cu themselves, compiled as C++ for this CPU and run with one thread per CUDA thread of a
/// block (blocks one after another): `__syncthreads` is a barrier of the block's 256 threads, `__shared__` arrays are
/// shared by them, `__shfl_xor_sync` and the warp's `mma.sync.m16n8k16` are exchanges among the 32 lanes (the mma's
/// fragments laid out as the PTX ISA documents them, the layout attention.cu uses). Against float64 references on
/// awkward shapes: `vae_conv_bf16` (partial tiles, +=, stride 2, 2x up, a weight-row suffix, frames stored in bf16; same
/// bf16-rounded inputs and weights: 1e-5), `vae_im2col_f32`/`_bf16` (exact, 3 blocks for a longer grid-stride loop,
/// frames stored in bf16), `vae_rms_norm_f32`
/// and `vae_softmax_f32` (1e-6). This checks the CUDA source's indexing, staging, software pipelining, barriers,
/// reductions and epilogues without a GPU (the mma fragment layout itself is taken from the ISA). Needs a C++20
/// compiler (a visible skip otherwise).
final class VAEKernelSourcesOnTheCPUTests: XCTestCase {
    static let shim = """
        // CUDA built-ins for running Kernels/vae.cu on the CPU: one std::thread per CUDA thread of a block, blocks one after
        // another; __syncthreads is a barrier of the block, __shfl_xor_sync and mma.sync warp-collective exchanges.
        #include <barrier>
        #include <cmath>
        #include <cstring>
        #include <cstdint>
        #define __global__
        #define __device__
        #define __forceinline__ inline
        #define __launch_bounds__(...)
        #define __shared__ static
        #define __align__(n) __attribute__((aligned(n)))
        struct HostDim3 { unsigned x, y, z; };
        extern HostDim3 blockIdx, blockDim, gridDim;
        extern thread_local HostDim3 threadIdx;
        struct alignas(16) float4 { float x, y, z, w; };
        struct alignas(16) uint4 { unsigned x, y, z, w; };
        struct alignas(8) uint2 { unsigned x, y; };
        static inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
        static inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
        static inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
        static inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
        static inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
        static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
        float __shfl_xor_sync(unsigned mask, float v, int offset);
        void __syncthreads();
        void vae_mma_bf16_host(float* d, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1);

        """

    static let driver = """
        // Runs the kernels of Kernels/vae.cu compiled for the CPU on small awkward shapes against float64 references (the
        // conv: of the same bf16-rounded inputs and weights; im2col: exact); prints one line per case, "max_rel <value>" last.
        #include "shim.h"
        #include "common.cuh"
        #include <cstdio>
        #include <memory>
        #include <thread>
        #include <vector>
        typedef unsigned short bf16;
        HostDim3 blockIdx, blockDim, gridDim;
        thread_local HostDim3 threadIdx;
        static std::unique_ptr<std::barrier<>> block_barrier;
        static std::unique_ptr<std::barrier<>> warp_barriers[8];
        static unsigned exchange[8][32][6];
        static float shuffled[8][32];
        void __syncthreads() { block_barrier->arrive_and_wait(); }
        float __shfl_xor_sync(unsigned, float v, int offset) {
            const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
            shuffled[warp][lane] = v;
            warp_barriers[warp]->arrive_and_wait();
            const float r = shuffled[warp][lane ^ offset];
            warp_barriers[warp]->arrive_and_wait();
            return r;
        }

        // Runs `body` as every thread of a grid of blocks of 256 threads, one block after another.
        template <typename Body> static void launch(unsigned gx, unsigned gy, Body body) {
            blockDim = {256, 1, 1};
            gridDim = {gx, gy, 1};
            for (unsigned by = 0; by < gy; ++by) for (unsigned bx = 0; bx < gx; ++bx) {
                blockIdx = {bx, by, 0};
                block_barrier = std::make_unique<std::barrier<>>(256);
                for (auto& b : warp_barriers) b = std::make_unique<std::barrier<>>(32);
                std::vector<std::thread> threads;
                for (unsigned tid = 0; tid < 256; ++tid) threads.emplace_back([&, tid] { threadIdx = {tid, 0, 0}; body(); });
                for (auto& th : threads) th.join();
            }
        }
        static float bf(unsigned bits16) { return __uint_as_float(bits16 << 16); }
        void vae_mma_bf16_host(float* d, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) {
            const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
            unsigned* mine = exchange[warp][lane];
            mine[0] = a0; mine[1] = a1; mine[2] = a2; mine[3] = a3; mine[4] = b0; mine[5] = b1;
            warp_barriers[warp]->arrive_and_wait();
            // PTX ISA m16n8k16 (.bf16): g = lane / 4, t = lane % 4, low half = lower column (A) or row (B).
            float A[16][16], B[16][8];
            for (int l = 0; l < 32; ++l) {
                const int g = l / 4, t = l % 4;
                const unsigned* e = exchange[warp][l];
                for (int h = 0; h < 2; ++h) {
                    A[g][2 * t + h] = bf((e[0] >> (16 * h)) & 0xffff);
                    A[g + 8][2 * t + h] = bf((e[1] >> (16 * h)) & 0xffff);
                    A[g][2 * t + 8 + h] = bf((e[2] >> (16 * h)) & 0xffff);
                    A[g + 8][2 * t + 8 + h] = bf((e[3] >> (16 * h)) & 0xffff);
                    B[2 * t + h][g] = bf((e[4] >> (16 * h)) & 0xffff);
                    B[2 * t + 8 + h][g] = bf((e[5] >> (16 * h)) & 0xffff);
                }
            }
            const int g = lane / 4, t = lane % 4;
            const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
            for (int i = 0; i < 4; ++i) {
                float s = d[i];
                for (int k = 0; k < 16; ++k) s += A[rows[i]][k] * B[k][cols[i]];
                d[i] = s;
            }
            warp_barriers[warp]->arrive_and_wait();
        }
        extern "C" void vae_conv_bf16(float*, const void*, const void*, const void*, const bf16*, const float*, int, int, int, int,
                                      int, int, int, int, int, int, int, int, int, int, int, int);
        extern "C" void vae_im2col_f32(float*, const void*, const void*, const void*, int, int, int, int, int, int, int, int, int, int, int, long, long, int);
        extern "C" void vae_im2col_bf16(bf16*, const void*, const void*, const void*, int, int, int, int, int, int, int, int, int, int, int, long, long, int);
        extern "C" void vae_rms_norm_f32(float*, const float*, const float*, long, int, int);
        extern "C" void vae_softmax_f32(float*, long, int, float);


        static unsigned long long seed = 88172645463325252ull;
        static float rnd() { seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17; return (float)((seed >> 11) * (1.0 / 9007199254740992.0)) * 2 - 1; }
        static float rounded(float v) { return bf(float_to_bf16(v)); }

        // Input frame t of `frames`: random values, stored 16-byte aligned as device memory is, in bf16 where bit t of
        // bf16_frames is set (the values then rounded to bf16, as the references read them), else in f32.
        struct Frames {
            std::vector<float> in[3];
            std::vector<float4> buf[3];
            const void* ptr[3] = {nullptr, nullptr, nullptr};
            Frames(int frames, size_t count, int bf16_frames) {
                for (int t = 0; t < frames; ++t) {
                    const bool half = (bf16_frames >> t) & 1;
                    in[t].resize(count);
                    for (auto& v : in[t]) v = half ? rounded(rnd()) : rnd();
                    buf[t].resize((count * 4 + 15) / 16);
                    if (half) for (size_t i = 0; i < count; ++i) ((bf16*)buf[t].data())[i] = float_to_bf16(in[t][i]);
                    else std::memcpy(buf[t].data(), in[t].data(), count * 4);
                    ptr[t] = buf[t].data();
                }
            }
        };

        static double run_case(int frames, int src_h, int src_w, int c, int up, int out_h, int out_w, int k, int stride, int pad, int cout,
                               int skipped_taps, int accumulate, int bf16_frames = 0) {
            const Frames input(frames, (size_t)src_h * src_w * c, bf16_frames);
            const std::vector<float>* in = input.in;
            const int width = frames * k * k * c, ldw = skipped_taps * k * k * c + width;
            std::vector<bf16> w(cout * ldw);
            for (auto& v : w) v = float_to_bf16(rnd() * 0.05f);
            std::vector<float> bias(cout), y(out_h * out_w * cout);
            for (auto& v : bias) v = rnd();
            for (auto& v : y) v = rnd();
            std::vector<float> y0 = y;
            const void* const* fp = input.ptr;
            std::vector<uint4> wbuf((w.size() * 2 + 15) / 16);
            std::memcpy(wbuf.data(), w.data(), w.size() * 2);
            const bf16* wp = (const bf16*)wbuf.data() + (ldw - width);
            launch((out_h * out_w + 127) / 128, (cout + 63) / 64, [&] {
                vae_conv_bf16(y.data(), fp[0], fp[1], fp[2], wp, bias.data(), frames, src_h, src_w, c, up, out_h, out_w, k, k, stride, pad, pad,
                              cout, ldw, accumulate, bf16_frames);
            });
            double diff = 0, norm = 0;
            for (int p = 0; p < out_h * out_w; ++p) {
                const int oy = p / out_w, ox = p % out_w;
                for (int o = 0; o < cout; ++o) {
                    double s = bias[o] + (accumulate ? y0[p * cout + o] : 0.0);
                    int kk = 0;
                    for (int t = 0; t < frames; ++t) for (int ky = 0; ky < k; ++ky) for (int kx = 0; kx < k; ++kx) {
                        const int iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
                        const bool inside = iy >= 0 && iy < (src_h << up) && ix >= 0 && ix < (src_w << up);
                        for (int ch = 0; ch < c; ++ch, ++kk) {
                            if (inside) s += (double)rounded(in[t][((iy >> up) * src_w + (ix >> up)) * c + ch]) * (double)bf(w[o * ldw + (ldw - width) + kk]);
                        }
                    }
                    const double d = y[p * cout + o] - s;
                    diff += d * d;
                    norm += s * s;
                }
            }
            const double rel = std::sqrt(diff / norm);
            std::printf("frames %d %dx%d C %d up %d -> %dx%d x %d (k %d stride %d pad %d, skipped %d, acc %d, bf16 frames %d): rel_l2 %.3e\\n", frames,
                        src_h, src_w, c, up, out_h, out_w, cout, k, stride, pad, skipped_taps, accumulate, bf16_frames, rel);
            return rel;
        }

        static double report(const char* what, const std::vector<double>& got, const std::vector<double>& want) {
            double diff = 0, norm = 0;
            for (size_t i = 0; i < got.size(); ++i) { diff += (got[i] - want[i]) * (got[i] - want[i]); norm += want[i] * want[i]; }
            const double rel = got.size() == want.size() ? std::sqrt(diff / (norm > 0 ? norm : 1)) : INFINITY;
            std::printf("%s: rel_l2 %.3e\\n", what, rel);
            return rel;
        }

        // im2col over `frames` frames for output rows [row0, row0 + rows) with 3 blocks (the grid-stride loop does the rest).
        static double im2col_case(bool to_bf16, int frames, int src_h, int src_w, int c, int up, int out_w, int k, int stride, int pad, long row0, long rows,
                                  int bf16_frames = 0) {
            const Frames input(frames, (size_t)src_h * src_w * c, bf16_frames);
            const std::vector<float>* in = input.in;
            const void* const* fp = input.ptr;
            const long width = (long)frames * k * k * c;
            std::vector<float4> col((rows * width + 3) / 4 + 1);
            launch(3, 1, [&] {
                if (to_bf16) vae_im2col_bf16((bf16*)col.data(), fp[0], fp[1], fp[2], frames, src_h, src_w, c, up, out_w, k, k, stride, pad, pad, row0, rows,
                                             bf16_frames);
                else vae_im2col_f32((float*)col.data(), fp[0], fp[1], fp[2], frames, src_h, src_w, c, up, out_w, k, k, stride, pad, pad, row0, rows,
                                    bf16_frames);
            });
            std::vector<double> got, want;
            for (long r = 0; r < rows; ++r) {
                const long p = row0 + r;
                const int oy = p / out_w, ox = p % out_w;
                for (int t = 0; t < frames; ++t) for (int ky = 0; ky < k; ++ky) for (int kx = 0; kx < k; ++kx) {
                    const int iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
                    const bool inside = iy >= 0 && iy < (src_h << up) && ix >= 0 && ix < (src_w << up);
                    for (int ch = 0; ch < c; ++ch) {
                        const float v = inside ? in[t][((iy >> up) * src_w + (ix >> up)) * c + ch] : 0.0f;
                        want.push_back(to_bf16 ? rounded(v) : v);
                    }
                }
            }
            for (long i = 0; i < rows * width; ++i) got.push_back(to_bf16 ? bf(((const bf16*)col.data())[i]) : ((const float*)col.data())[i]);
            char what[160];
            std::snprintf(what, sizeof what, "vae_im2col_%s frames %d %dx%d C %d up %d k %d stride %d rows %ld+%ld bf16 frames %d", to_bf16 ? "bf16" : "f32",
                          frames, src_h, src_w, c, up, k, stride, row0, rows, bf16_frames);
            // Exact: any difference is a failure.
            return report(what, got, want) == 0 ? 0 : 1;
        }

        static double rms_case(int rows, int c, int silu) {
            std::vector<float> x(rows * c), gamma(c), out(rows * c);
            for (auto& v : x) v = rnd() * 3;
            for (auto& v : gamma) v = rnd();
            launch(2, 1, [&] { vae_rms_norm_f32(out.data(), x.data(), gamma.data(), rows, c, silu); });
            std::vector<double> got(out.begin(), out.end()), want;
            for (int r = 0; r < rows; ++r) {
                double ss = 0;
                for (int j = 0; j < c; ++j) ss += (double)x[r * c + j] * x[r * c + j];
                const double inv = 1 / std::fmax(std::sqrt(ss), 1e-12);
                for (int j = 0; j < c; ++j) {
                    double v = x[r * c + j] * inv * std::sqrt((double)c) * gamma[j];
                    want.push_back(silu ? v / (1 + std::exp(-v)) : v);
                }
            }
            char what[80];
            std::snprintf(what, sizeof what, "vae_rms_norm_f32 %d rows x %d (silu %d)", rows, c, silu);
            return report(what, got, want) <= 1e-6 ? 0 : 1;
        }

        static double softmax_case(int rows, int cols, float scale) {
            std::vector<float> s(rows * cols);
            for (auto& v : s) v = rnd() * 30;
            std::vector<float> orig = s;
            launch(2, 1, [&] { vae_softmax_f32(s.data(), rows, cols, scale); });
            std::vector<double> got(s.begin(), s.end()), want;
            for (int r = 0; r < rows; ++r) {
                double top = -INFINITY, total = 0;
                for (int j = 0; j < cols; ++j) top = std::fmax(top, (double)orig[r * cols + j] * scale);
                for (int j = 0; j < cols; ++j) total += std::exp((double)orig[r * cols + j] * scale - top);
                for (int j = 0; j < cols; ++j) want.push_back(std::exp((double)orig[r * cols + j] * scale - top) / total);
            }
            char what[80];
            std::snprintf(what, sizeof what, "vae_softmax_f32 %d rows x %d", rows, cols);
            return report(what, got, want) <= 1e-6 ? 0 : 1;
        }

        int main() {
            double worst = 0;
            worst = std::fmax(worst, run_case(3, 9, 15, 32, 0, 9, 15, 3, 1, 1, 40, 0, 1));
            worst = std::fmax(worst, run_case(1, 10, 12, 64, 0, 5, 6, 3, 2, 0, 72, 0, 0));
            worst = std::fmax(worst, run_case(1, 4, 6, 32, 1, 8, 12, 3, 1, 1, 16, 0, 0));
            worst = std::fmax(worst, run_case(2, 7, 20, 96, 0, 7, 20, 1, 1, 0, 96, 1, 0));
            worst = std::fmax(worst, run_case(3, 9, 15, 64, 0, 9, 15, 3, 1, 1, 40, 0, 1, 0b011));  // the causal state in bf16
            // The other kernels: pass/fail folded into worst (1 = failed).
            worst = std::fmax(worst, im2col_case(false, 3, 5, 7, 12, 0, 7, 3, 1, 1, 4, 29));
            worst = std::fmax(worst, im2col_case(true, 3, 5, 7, 16, 0, 7, 3, 1, 1, 2, 31));
            worst = std::fmax(worst, im2col_case(false, 1, 6, 10, 3, 0, 5, 3, 2, 0, 0, 15));
            worst = std::fmax(worst, im2col_case(true, 1, 3, 4, 3, 1, 8, 3, 1, 1, 0, 48));
            worst = std::fmax(worst, im2col_case(false, 2, 3, 5, 20, 0, 5, 1, 1, 0, 0, 15));
            worst = std::fmax(worst, im2col_case(false, 3, 5, 7, 12, 0, 7, 3, 1, 1, 4, 29, 0b011));  // the causal state in bf16
            worst = std::fmax(worst, im2col_case(false, 2, 5, 7, 3, 0, 7, 3, 1, 1, 0, 35, 0b01));
            worst = std::fmax(worst, im2col_case(true, 3, 5, 7, 16, 0, 7, 3, 1, 1, 2, 31, 0b011));
            worst = std::fmax(worst, rms_case(37, 96, 0));
            worst = std::fmax(worst, rms_case(21, 384, 1));
            worst = std::fmax(worst, rms_case(9, 3, 1));
            worst = std::fmax(worst, softmax_case(9, 1000, 0.05f));
            worst = std::fmax(worst, softmax_case(5, 37, 1.0f));
            std::printf("max_rel %.3e\\n", worst);
            return 0;
        }

        """

    func compiler() -> String? {
        let paths = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
        for name in ["g++", "clang++", "c++"] {
            for dir in paths where FileManager.default.isExecutableFile(atPath: dir + "/" + name) { return dir + "/" + name }
        }
        return nil
    }

    /// Runs a program; its stdout and stderr together.
    func run(_ executable: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: output, as: UTF8.self))
    }

    func testVAEKernelSourcesMatchFloat64References() throws {
        guard let cxx = compiler() else { throw XCTSkip("no C++ compiler (g++, clang++, c++) on PATH: vae.cu was not run on the CPU") }
        let sources = try KernelSources.load()
        let kernel = try XCTUnwrap(sources.modules["vae.cu"])
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("wankit-vaeconv-host-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        for (name, text) in sources.headers { try text.write(to: dir.appendingPathComponent(name), atomically: true, encoding: .utf8) }
        try Self.shim.write(to: dir.appendingPathComponent("shim.h"), atomically: true, encoding: .utf8)
        try ("#include \"shim.h\"\n" + kernel).write(to: dir.appendingPathComponent("vae_host.cpp"), atomically: true, encoding: .utf8)
        try Self.driver.write(to: dir.appendingPathComponent("driver.cpp"), atomically: true, encoding: .utf8)
        let binary = dir.appendingPathComponent("vae_conv_host").path
        let build = try run(cxx, ["-std=c++20", "-O2", "-ffp-contract=off", "-pthread", "-Wno-unknown-pragmas", "-I", dir.path, "-o", binary,
                                  dir.appendingPathComponent("vae_host.cpp").path, dir.appendingPathComponent("driver.cpp").path])
        guard build.status == 0 else {
            if build.output.contains("barrier") { throw XCTSkip("\(cxx) has no C++20 std::barrier: vae.cu was not run on the CPU") }
            return XCTFail("\(cxx) could not build vae.cu for the CPU:\n\(build.output)")
        }
        let result = try run(binary, [])
        print(result.output)
        XCTAssertEqual(result.status, 0, result.output)
        let last = result.output.split(separator: "\n").last.map(String.init) ?? ""
        let worst = Double(last.replacingOccurrences(of: "max_rel ", with: "")) ?? .infinity
        XCTAssertTrue(last.hasPrefix("max_rel"), result.output)
        XCTAssertLessThanOrEqual(worst, 1e-5, result.output)
    }
}
