import Foundation
import XCTest
import WanCUDA

/// The kernels of Kernels/vae.cu themselves, compiled as C++ for this CPU and run with one thread per CUDA thread of a
/// block (blocks one after another, KernelSourcesOnTheCPU): `__syncthreads` is a barrier of the block's 256 threads,
/// `__shared__` arrays are shared by them, `__shfl_xor_sync` and the warp's `mma.sync.m16n8k16` are exchanges among the
/// 32 lanes (the mma's fragments laid out as the PTX ISA documents them, the layout attention.cu uses). Against float64 references on
/// awkward shapes: `vae_conv_bf16` (partial tiles, +=, stride 2, 2x up, a weight-row suffix, frames stored in bf16; same
/// bf16-rounded inputs and weights: 1e-5), `vae_im2col_f32`/`_bf16` (exact, 3 blocks for a longer grid-stride loop,
/// frames stored in bf16), `vae_rms_norm_f32`
/// and `vae_softmax_f32` (1e-6). This checks the CUDA source's indexing, staging, software pipelining, barriers,
/// reductions and epilogues without a GPU (the mma fragment layout itself is taken from the ISA). Needs a C++20
/// compiler (a visible skip otherwise).
final class VAEKernelSourcesOnTheCPUTests: XCTestCase {
    static let driver = """
        // Runs the kernels of Kernels/vae.cu compiled for the CPU on small awkward shapes against float64 references (the
        // conv: of the same bf16-rounded inputs and weights; im2col: exact); prints one line per case, "max_rel <value>" last.
        #include "kernel_host.h"
        extern "C" void vae_conv_bf16(float*, const void*, const void*, const void*, const bf16*, const float*, int, int, int, int,
                                      int, int, int, int, int, int, int, int, int, int, int, int);
        extern "C" void vae_im2col_f32(float*, const void*, const void*, const void*, int, int, int, int, int, int, int, int, int, int, int, long, long, int);
        extern "C" void vae_im2col_bf16(bf16*, const void*, const void*, const void*, int, int, int, int, int, int, int, int, int, int, int, long, long, int);
        extern "C" void vae_rms_norm_f32(float*, const float*, const float*, long, int, int);
        extern "C" void vae_softmax_f32(float*, long, int, float);


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
            if (race_check) {  // ThreadSanitizer: the conv on one or two blocks (every K step staged), the other kernels as below
                worst = std::fmax(worst, run_case(1, 4, 6, 32, 1, 8, 12, 3, 1, 1, 16, 0, 0));
                worst = std::fmax(worst, run_case(2, 5, 7, 32, 0, 5, 7, 3, 1, 1, 16, 0, 1, 0b01));
                worst = std::fmax(worst, run_case(1, 6, 8, 32, 0, 3, 4, 3, 2, 0, 72, 1, 0));
            } else {
            worst = std::fmax(worst, run_case(3, 9, 15, 32, 0, 9, 15, 3, 1, 1, 40, 0, 1));
            worst = std::fmax(worst, run_case(1, 10, 12, 64, 0, 5, 6, 3, 2, 0, 72, 0, 0));
            worst = std::fmax(worst, run_case(1, 4, 6, 32, 1, 8, 12, 3, 1, 1, 16, 0, 0));
            worst = std::fmax(worst, run_case(2, 7, 20, 96, 0, 7, 20, 1, 1, 0, 96, 1, 0));
            worst = std::fmax(worst, run_case(3, 9, 15, 64, 0, 9, 15, 3, 1, 1, 40, 0, 1, 0b011));  // the causal state in bf16
            }
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

    func testVAEKernelSourcesMatchFloat64References() throws {
        let output = try KernelSourcesOnTheCPU.buildAndRun(modules: ["vae.cu"], driver: Self.driver)
        XCTAssertLessThanOrEqual(KernelSourcesOnTheCPU.maxRel(output), 1e-5, output)
    }

    /// The same driver under ThreadSanitizer (`race_check`: three small convs, the other kernels' cases as above): no
    /// race on the conv's staged tiles or the norms' and softmax's block reductions.
    func testVAEKernelSourcesHaveNoRaces() throws {
        let output = try KernelSourcesOnTheCPU.buildAndRun(modules: ["vae.cu"], driver: Self.driver, sanitizer: .thread)
        XCTAssertLessThanOrEqual(KernelSourcesOnTheCPU.maxRel(output), 1e-5, output)
    }
}
