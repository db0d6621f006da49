import Foundation
import XCTest
import WanCUDA
import WanTensor

/// The DiT's and the text encoders' kernels run from their CUDA source on the CPU (KernelSourcesOnTheCPU: every thread
/// of a block a std::thread, the warp's shuffles and mma.sync exchanges among its lanes, AddressSanitizer where the
/// compiler has it), with CUDAOps' grids and blocks, against float64 references on awkward shapes; and again under
/// ThreadSanitizer on fewer, smaller cases (the drivers' `race_check`), so a missing barrier fails.
///
/// attention.cu: `flash_attention_f32` (D 24, 64, 80, 128), `flash_attention_bf16_any` (D 24, 80, 128) and `flash_attention_bf16_d32/d64/d128` on q [B, Lq, H, D], k/v
/// [B, Lk, H, D], batch 2 and 2-3 heads, Lq and Lk not multiples of the tiles (f32: 4 rows x 32 keys, bf16: 64 x 64),
/// Lk under one tile, k_lens shorter than Lk for one sample, longer than Lk (clamped), on a tile edge, and 0 (zeros).
/// Tolerances of rel_l2: f32 1e-5 (measured ~3e-7); bf16 5e-3 against softmax(scale q kᵀ) v of the same bf16 inputs
/// (p and the output are rounded to bf16, 2^-9 relative each: measured ~2e-3), and no element off by more than 4x
/// that of the largest |reference|. Indexing slips (a mask on Lk, a B fragment one key off, a missing rescale) cost
/// 40x to 4e4x the tolerance, a row past Lq written is an AddressSanitizer stop.
///
/// norm.cu, rope.cu (against WanTensor's Rope3D), elementwise.cu and t5.cu (`t5_attention` reading q/k/v as column
/// views of one fused qkv buffer, ld_in = 3 heads head_dim): see the driver's cases and tolerances.
final class DiTKernelSourcesOnTheCPUTests: XCTestCase {
    static let attentionDriver = #"""
        // Runs flash_attention_f32, flash_attention_bf16_any and flash_attention_bf16_d32/d64/d128 of Kernels/attention.cu, compiled for the CPU, with
        // CUDAOps.attention's launch (f32: grid (ceil(Lq / 4), H, B), block 128; bf16: grid (ceil(Lq / 64), H, B), block
        // 128) on q [B, Lq, H, D], k/v [B, Lk, H, D], against softmax(scale q k^T) v in float64 (bf16: of the same
        // bf16-rounded inputs). Prints one line per case; "max_rel <worst rel_l2 / tolerance>" last (<= 1 passes).
        #include "kernel_host.h"
        #include <string>
        extern "C" void flash_attention_f32(float*, const float*, const float*, const float*, const int*, int, int, int, int, float);
        extern "C" void flash_attention_bf16_any(bf16*, const bf16*, const bf16*, const bf16*, const int*, int, int, int, int, float);
        extern "C" void flash_attention_bf16_d32(bf16*, const bf16*, const bf16*, const bf16*, const int*, int, int, int, float);
        extern "C" void flash_attention_bf16_d64(bf16*, const bf16*, const bf16*, const bf16*, const int*, int, int, int, float);
        extern "C" void flash_attention_bf16_d128(bf16*, const bf16*, const bf16*, const bf16*, const int*, int, int, int, float);

        // Tolerances of rel_l2 (and of the largest error of one element, relative to the largest |reference|): f32 sums a
        // few hundred f32 products and exponentials (~1e-7 each); bf16 rounds p to bf16 for p v and the output to bf16
        // (2^-9 relative each, ~1e-3 rms together), so 5e-3 leaves room while an indexing slip costs O(1).
        static const double f32_tolerance = 1e-5, bf16_tolerance = 5e-3;

        // One case: `lens` empty = no key mask (a null k_lens), else k_lens[b]. `any`: bf16 through the CUDA-core kernel
        // (flash_attention_bf16_any, any head_dim), launched as the f32 one.
        static double attention_case(bool half, int B, int Lq, int Lk, int H, int D, std::vector<int> lens, bool any = false) {
            const long token = (long)H * D;
            std::vector<float> q(B * Lq * token), k(B * Lk * token), v(B * Lk * token);
            for (auto& x : q) x = 2 * rnd();
            for (auto& x : k) x = 2 * rnd();
            for (auto& x : v) x = rnd();
            if (half) for (auto* t : {&q, &k, &v}) for (auto& x : *t) x = rounded(x);
            const float scale = 1.0f / std::sqrt((float)D);
            // Device-like buffers: exactly the tensor's size (ASan, where built with it, sees a read past the end), 16-byte aligned.
            std::vector<float> qf = q, kf = k, vf = v, of(q.size(), NAN);
            std::vector<bf16> qh(q.size()), kh(k.size()), vh(v.size()), oh(q.size(), 0x7fc0);
            for (size_t i = 0; i < q.size(); ++i) qh[i] = float_to_bf16(q[i]);
            for (size_t i = 0; i < k.size(); ++i) { kh[i] = float_to_bf16(k[i]); vh[i] = float_to_bf16(v[i]); }
            const int* k_lens = lens.empty() ? nullptr : lens.data();
            if (any) {
                launch({(unsigned)(Lq + 3) / 4, (unsigned)H, (unsigned)B}, 128,
                       [&] { flash_attention_bf16_any(oh.data(), qh.data(), kh.data(), vh.data(), k_lens, Lq, Lk, H, D, scale); });
            } else if (half) {
                auto kernel = D == 32 ? flash_attention_bf16_d32 : D == 64 ? flash_attention_bf16_d64 : flash_attention_bf16_d128;
                launch({(unsigned)(Lq + 63) / 64, (unsigned)H, (unsigned)B}, 128,
                       [&] { kernel(oh.data(), qh.data(), kh.data(), vh.data(), k_lens, Lq, Lk, H, scale); });
            } else {
                launch({(unsigned)(Lq + 3) / 4, (unsigned)H, (unsigned)B}, 128,
                       [&] { flash_attention_f32(of.data(), qf.data(), kf.data(), vf.data(), k_lens, Lq, Lk, H, D, scale); });
            }
            std::vector<double> got(q.size());
            for (size_t i = 0; i < q.size(); ++i) got[i] = half ? bf(oh[i]) : of[i];
            const std::vector<double> want = reference_attention(q, k, v, lens, B, Lq, Lk, H, D, scale);
            const double max_rel = max_abs_over_max_ref(got, want);
            char what[200];
            std::snprintf(what, sizeof what, "flash_attention_%s B %d Lq %d Lk %d H %d D %d k_lens %s (max_abs/max|ref| %.3e)",
                          any ? "bf16_any" : half ? (D == 32 ? "bf16_d32" : D == 64 ? "bf16_d64" : "bf16_d128") : "f32", B, Lq, Lk, H, D,
                          lens.empty() ? "null" : (std::to_string(lens[0]) + "," + std::to_string(lens[1])).c_str(), max_rel);
            const double rel = report(what, got, want);
            const double tolerance = half ? bf16_tolerance : f32_tolerance;
            // Folded into one number: <= 1 passes (rel_l2 within tolerance, no element off by more than 4x that of the largest).
            return std::fmax(rel / tolerance, max_rel / (4 * tolerance));
        }

        int main() {
            double worst = 0;
            if (race_check) {  // ThreadSanitizer: small cases, several key tiles each
                worst = std::fmax(worst, attention_case(false, 2, 5, 40, 2, 64, {0, 40}));
                worst = std::fmax(worst, attention_case(false, 1, 7, 70, 1, 128, {50, 0}));
                worst = std::fmax(worst, attention_case(true, 2, 33, 77, 2, 64, {0, 77}));
                worst = std::fmax(worst, attention_case(true, 1, 19, 150, 1, 128, {130, 0}));
                worst = std::fmax(worst, attention_case(true, 1, 40, 90, 1, 32, {}));
                worst = std::fmax(worst, attention_case(true, 1, 9, 70, 2, 24, {50, 0}, true));
                std::printf("max_rel %.3e\n", worst);
                return 0;
            }
            // f32: 4 query rows and 32 keys a block step.
            worst = std::fmax(worst, attention_case(false, 2, 13, 45, 3, 64, {45, 20}));    // Lq, Lk ragged; sample 1 masked to 20
            worst = std::fmax(worst, attention_case(false, 2, 7, 19, 2, 128, {}));          // Lk < one tile, no mask
            worst = std::fmax(worst, attention_case(false, 2, 10, 70, 2, 128, {100, 33}));  // k_lens > Lk clamps; mask in tile 2
            worst = std::fmax(worst, attention_case(false, 2, 5, 40, 2, 64, {0, 40}));      // a sample with no key: zeros
            worst = std::fmax(worst, attention_case(false, 2, 11, 50, 3, 24, {50, 17}));    // head dims that are not multiples of 32
            worst = std::fmax(worst, attention_case(false, 2, 6, 33, 2, 80, {}));
            // bf16 at head dims without a tensor-core kernel: the CUDA-core kernel on bf16 storage.
            worst = std::fmax(worst, attention_case(true, 2, 13, 45, 3, 24, {45, 20}, true));
            worst = std::fmax(worst, attention_case(true, 2, 5, 70, 2, 80, {0, 70}, true));
            worst = std::fmax(worst, attention_case(true, 1, 6, 40, 2, 128, {}, true));
            // bf16 on the tensor cores: 64 query rows and 64 keys a block step.
            worst = std::fmax(worst, attention_case(true, 2, 70, 100, 3, 64, {100, 37}));   // ragged; sample 1 masked inside tile 1
            worst = std::fmax(worst, attention_case(true, 2, 19, 23, 2, 128, {}));          // Lq, Lk < one tile
            worst = std::fmax(worst, attention_case(true, 2, 130, 150, 2, 128, {200, 70})); // 3 row blocks, 3 key tiles, mask in tile 2
            worst = std::fmax(worst, attention_case(true, 2, 33, 77, 2, 64, {0, 77}));      // a sample with no key: zeros
            worst = std::fmax(worst, attention_case(true, 2, 40, 90, 3, 32, {90, 64}));     // d32; mask on the tile edge
            std::printf("max_rel %.3e\n", worst);
            return 0;
        }
        """#

    static let smallKernelsDriver = #"""
        // Runs the small kernels of the DiT and the text encoders, compiled for the CPU from norm.cu, rope.cu, elementwise.cu and
        // t5.cu with CUDAOps' launches (norms: a block of 256 per row; elementwise: 3 blocks of 256, so the grid-stride loops
        // go round; t5_attention: grid (rows, heads), block 128) against float64 references (bf16: of the same bf16-rounded
        // inputs); rope_3d against WanTensor's Rope3D (rope_<D>_x.bin / rope_<D>_want.bin, written by the Swift test). One
        // line per case, "max_rel <worst rel_l2 / tolerance>" last (<= 1 passes).
        #include "kernel_host.h"
        #include <functional>
        #include <string>
        extern "C" {
        void rms_norm_f32(float*, const float*, const float*, int, int, float);
        void rms_norm_bf16(bf16*, const bf16*, const float*, int, int, float);
        void layer_norm_modulate_f32(float*, const float*, const float*, const float*, const float*, const float*, int, int, int, int, float);
        void layer_norm_modulate_bf16(bf16*, const float*, const float*, const float*, const float*, const float*, int, int, int, int, float);
        void rope_3d_f32(float*, const int*, int, int, int, int, float);
        void rope_3d_bf16(bf16*, const int*, int, int, int, int, float);
        void gelu_tanh_f32(float*, const float*, long);
        void gelu_tanh_bf16(bf16*, const bf16*, long);
        void silu_f32(float*, const float*, long);
        void silu_bf16(bf16*, const bf16*, long);
        void gelu_erf_f32(float*, const float*, long);
        void gelu_erf_bf16(bf16*, const bf16*, long);
        void add_f32(float*, const float*, const float*, long);
        void add_bf16(bf16*, const bf16*, const bf16*, long);
        void gated_residual_f32(float*, const float*, const float*, int, long, int, int);
        void gated_residual_bf16(float*, const bf16*, const float*, int, long, int, int);
        void modulation_add_f32(float*, const float*, const float*, int, int);
        void convert_f32_to_bf16(bf16*, const float*, long);
        void convert_bf16_to_f32(float*, const bf16*, long);
        void bias_act_f32(float*, const float*, long, int, int);
        void bias_act_bf16(bf16*, const bf16*, long, int, int);
        void t5_attention_f32(float*, const float*, const float*, const float*, int, const int*, const int*, const int*, const int*, const int*, int,
                              const float*, int, int, float);
        void t5_attention_bf16(bf16*, const bf16*, const bf16*, const bf16*, int, const int*, const int*, const int*, const int*, const int*, int,
                               const float*, int, int, float);
        void t5_gelu_mul_f32(float*, const float*, const float*, long);
        void t5_gelu_mul_bf16(bf16*, const bf16*, const bf16*, long);
        }

        // f32 results carry a few float roundings (1e-6 leaves room for libm's last bit and the block sums' order); bf16
        // results are rounded to bf16 at the end (2^-9 relative, ~1e-3 rms), compared with the unrounded reference: 5e-3.
        // LayerNorm of rows with mean 40 and deviation ~1: the f32 mean is off by ~ulp(40) = 4e-6 absolute, which every
        // centred value carries: 1e-5.
        static const double f32_tolerance = 1e-6, bf16_tolerance = 5e-3, layer_norm_f32_tolerance = 1e-5;
        static double worst = 0;

        static void check(const std::string& what, const std::vector<double>& got, const std::vector<double>& want, double tolerance) {
            char label[300];
            std::snprintf(label, sizeof label, "%s (tolerance %.0e)", what.c_str(), tolerance);
            const double rel = report(label, got, want);
            worst = std::fmax(worst, rel / tolerance);
        }
        static std::vector<float> randoms(size_t n, float scale = 1, float offset = 0, bool bf16_exact = false) {
            std::vector<float> x(n);
            for (auto& v : x) { v = rnd() * scale + offset; if (bf16_exact) v = rounded(v); }
            return x;
        }
        static std::vector<bf16> to_bf16(const std::vector<float>& x) { std::vector<bf16> h(x.size()); for (size_t i = 0; i < x.size(); ++i) h[i] = float_to_bf16(x[i]); return h; }
        static std::vector<double> widen(const std::vector<float>& x) { return std::vector<double>(x.begin(), x.end()); }
        static std::vector<double> widen(const std::vector<bf16>& x) { std::vector<double> d(x.size()); for (size_t i = 0; i < x.size(); ++i) d[i] = bf(x[i]); return d; }
        static double gelu_tanh_ref(double x) { return 0.5 * x * (1 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }

        static void norms() {
            for (int half = 0; half < 2; ++half) for (auto [rows, dim, weighted] : {std::tuple{5, 1000, 1}, std::tuple{3, 96, 0}, std::tuple{2, 5120, 1}}) {
                auto x = randoms((size_t)rows * dim, 3, 0.5f, half), w = randoms(dim);
                std::vector<float> out(x.size(), NAN);
                std::vector<bf16> xh = to_bf16(x), oh(x.size(), 0x7fc0);
                const float* wp = weighted ? w.data() : nullptr;
                // f32 in place (out == x, as the DiT's q/k norms may run).
                if (half) launch({(unsigned)rows, 1, 1}, 256, [&] { rms_norm_bf16(oh.data(), xh.data(), wp, rows, dim, 1e-6f); });
                else { out = x; launch({(unsigned)rows, 1, 1}, 256, [&] { rms_norm_f32(out.data(), out.data(), wp, rows, dim, 1e-6f); }); }
                std::vector<double> want;
                for (int r = 0; r < rows; ++r) {
                    double ss = 0;
                    for (int c = 0; c < dim; ++c) ss += (double)x[r * dim + c] * x[r * dim + c];
                    const double inv = 1 / std::sqrt(ss / dim + 1e-6);
                    for (int c = 0; c < dim; ++c) want.push_back(x[r * dim + c] * inv * (weighted ? w[c] : 1.0));
                }
                check(std::string("rms_norm_") + (half ? "bf16" : "f32 (in place)") + " " + std::to_string(rows) + " rows x " + std::to_string(dim) +
                      (weighted ? "" : " no weight"), half ? widen(oh) : widen(out), want, half ? bf16_tolerance : f32_tolerance);
            }
            // LayerNorm with modulation rows of e [B, 6, dim] (shift e[b][0], scale e[b][1]; 2 samples of 3 rows), and the affine
            // norm3 (weight, bias, no modulation). A mean far from 0 tests the two passes.
            for (int half = 0; half < 2; ++half) for (int affine = 0; affine < 2; ++affine) {
                const int rows = 6, per = 3, dim = affine ? 1000 : 300, stride = 6 * dim;
                auto x = randoms((size_t)rows * dim, 2, 40), w = randoms(dim), b = randoms(dim), e = randoms((size_t)2 * stride);
                const float *wp = affine ? w.data() : nullptr, *bp = affine ? b.data() : nullptr;
                const float *shift = affine ? nullptr : e.data(), *scale = affine ? nullptr : e.data() + dim;
                std::vector<float> out = x;
                std::vector<bf16> oh(x.size(), 0x7fc0);
                if (half) launch({(unsigned)rows, 1, 1}, 256, [&] { layer_norm_modulate_bf16(oh.data(), x.data(), wp, bp, shift, scale, stride, rows, per, dim, 1e-6f); });
                else launch({(unsigned)rows, 1, 1}, 256, [&] { layer_norm_modulate_f32(out.data(), out.data(), wp, bp, shift, scale, stride, rows, per, dim, 1e-6f); });
                std::vector<double> want;
                for (int r = 0; r < rows; ++r) {
                    double mean = 0, var = 0;
                    for (int c = 0; c < dim; ++c) mean += x[r * dim + c];
                    mean /= dim;
                    for (int c = 0; c < dim; ++c) var += (x[r * dim + c] - mean) * (x[r * dim + c] - mean);
                    const double inv = 1 / std::sqrt(var / dim + 1e-6);
                    const int s = r / per;
                    for (int c = 0; c < dim; ++c) {
                        double y = (x[r * dim + c] - mean) * inv;
                        if (affine) y = y * w[c] + b[c];
                        else y = y * (1 + e[s * stride + dim + c]) + e[s * stride + c];
                        want.push_back(y);
                    }
                }
                check(std::string("layer_norm_modulate_") + (half ? "bf16" : "f32 (in place)") + " " + std::to_string(rows) + " rows x " + std::to_string(dim) +
                      (affine ? " weight+bias" : " shift/scale of 2 samples"), half ? widen(oh) : widen(out), want, half ? bf16_tolerance : layer_norm_f32_tolerance);
            }
        }

        // rope_3d on [B 2, L 26, heads 3, D] with grids (2, 3, 4) and (1, 5, 5) (both with padding tokens) against Rope3D.
        static void rope(int D) {
            const int B = 2, L = 26, heads = 3, grid[6] = {2, 3, 4, 1, 5, 5};
            const size_t n = (size_t)B * L * heads * D;
            std::vector<float> x(n), want(n);
            FILE* fx = std::fopen(("rope_" + std::to_string(D) + "_x.bin").c_str(), "rb");
            FILE* fw = std::fopen(("rope_" + std::to_string(D) + "_want.bin").c_str(), "rb");
            if (!fx || !fw || std::fread(x.data(), 4, n, fx) != n || std::fread(want.data(), 4, n, fw) != n) { std::printf("rope_3d: no input files\n"); worst = INFINITY; return; }
            std::fclose(fx); std::fclose(fw);
            std::vector<float> out = x;
            std::vector<bf16> oh = to_bf16(x);  // x is bf16-exact: the bf16 kernel reads the same values
            launch({3, 1, 1}, 256, [&] { rope_3d_f32(out.data(), grid, B, L, heads, D, 10000.0f); });
            launch({3, 1, 1}, 256, [&] { rope_3d_bf16(oh.data(), grid, B, L, heads, D, 10000.0f); });
            // Both rotate in float64 and round to f32 (the bf16 kernel then to bf16): the same numbers but for libm's sincos
            // against sin and cos; 1e-7 (f32), 1e-4 for bf16 against Rope3D's result rounded to bf16 (a rounding that flips
            // in one element of 20k costs 3e-5).
            check("rope_3d_f32 B 2 L 26 heads 3 D " + std::to_string(D) + " vs Rope3D", widen(out), widen(want), 1e-7);
            check("rope_3d_bf16 B 2 L 26 heads 3 D " + std::to_string(D) + " vs Rope3D rounded to bf16", widen(oh), widen(to_bf16(want)), 1e-4);
        }

        static void elementwise() {
            const long n = 2000;  // > 3 blocks x 256 threads: every thread goes round the grid-stride loop
            auto x = randoms(n, 4), y = randoms(n, 2), xb = randoms(n, 4, 0, true), yb = randoms(n, 2, 0, true);
            const std::vector<bf16> xh = to_bf16(xb), yh = to_bf16(yb);
            struct Unary { const char* name; void (*f32)(float*, const float*, long); void (*half)(bf16*, const bf16*, long); double (*ref)(double); };
            const Unary unary[] = {
                {"gelu_tanh", gelu_tanh_f32, gelu_tanh_bf16, gelu_tanh_ref},
                {"silu", silu_f32, silu_bf16, [](double v) { return v / (1 + std::exp(-v)); }},
                {"gelu_erf", gelu_erf_f32, gelu_erf_bf16, [](double v) { return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0))); }},
            };
            for (const auto& u : unary) {
                std::vector<float> out = x;
                std::vector<bf16> oh = xh;
                launch(3, 1, [&] { u.f32(out.data(), out.data(), n); });  // in place
                launch(3, 1, [&] { u.half(oh.data(), oh.data(), n); });
                std::vector<double> want, want_b;
                for (long i = 0; i < n; ++i) { want.push_back(u.ref(x[i])); want_b.push_back(u.ref(xb[i])); }
                check(std::string(u.name) + "_f32 n 2000 in place", widen(out), want, f32_tolerance);
                check(std::string(u.name) + "_bf16 n 2000 in place", widen(oh), want_b, bf16_tolerance);
            }
            {
                std::vector<float> out(n, NAN);
                std::vector<bf16> oh(n, 0x7fc0);
                launch(3, 1, [&] { add_f32(out.data(), x.data(), y.data(), n); });
                launch(3, 1, [&] { add_bf16(oh.data(), xh.data(), yh.data(), n); });
                std::vector<double> want, want_b;
                for (long i = 0; i < n; ++i) { want.push_back((double)x[i] + y[i]); want_b.push_back((double)xb[i] + yb[i]); }
                check("add_f32 n 2000", widen(out), want, f32_tolerance);
                check("add_bf16 n 2000", widen(oh), want_b, bf16_tolerance);
            }
            // gated_residual: x [rows 10, dim 200] += y * gate (rows of e [2, 6, 200], 5 rows a sample), and a null gate.
            for (int half = 0; half < 2; ++half) for (int gated = 0; gated < 2; ++gated) {
                const int rows = 10, dim = 200, per = 5, stride = 6 * dim;
                auto res = randoms(rows * dim), e = randoms(2 * stride);
                const auto& yy = half ? yb : y;
                const std::vector<bf16> yyh = to_bf16(yy);
                std::vector<float> out = res;
                const float* gate = gated ? e.data() + 2 * dim : nullptr;
                if (half) launch(3, 1, [&] { gated_residual_bf16(out.data(), yyh.data(), gate, stride, rows, per, dim); });
                else launch(3, 1, [&] { gated_residual_f32(out.data(), yy.data(), gate, stride, rows, per, dim); });
                std::vector<double> want;
                for (int i = 0; i < rows * dim; ++i) want.push_back(res[i] + (double)yy[i] * (gated ? e[(i / dim / per) * stride + 2 * dim + i % dim] : 1.0));
                check(std::string("gated_residual_") + (half ? "bf16" : "f32") + (gated ? " gate of 2 samples" : " null gate"), widen(out), want, f32_tolerance);
            }
            {
                auto e = randoms(2 * 600), mod = randoms(600);
                std::vector<float> out(e.size(), NAN);
                launch(3, 1, [&] { modulation_add_f32(out.data(), e.data(), mod.data(), 2, 600); });
                std::vector<double> want;
                for (int i = 0; i < 1200; ++i) want.push_back((double)e[i] + mod[i % 600]);
                check("modulation_add_f32 2 x 600", widen(out), want, f32_tolerance);
            }
            // Conversions: exact. f32 -> bf16 rounds to nearest, ties to even (the reference picks the nearer of the two bf16
            // neighbours by value), overflows to inf past the largest bf16, keeps inf and NaN.
            {
                std::vector<float> v = x;
                const float special[] = {0.0f, -0.0f, INFINITY, -INFINITY, 3.0e38f, -3.4e38f, 1.0f + 1.0f / 256, 1.0f + 3.0f / 256, 1e-40f, -1e-45f};
                for (float s : special) v.push_back(s);
                for (int i = 0; i < 64; ++i) v.push_back(__uint_as_float((__float_as_uint(x[i]) & 0xffff0000u) | 0x8000u));  // ties
                std::vector<bf16> oh(v.size() + 1, 0x7fc0);
                v.push_back(NAN);
                launch(3, 1, [&] { convert_f32_to_bf16(oh.data(), v.data(), (long)v.size()); });
                long bad = 0;
                for (size_t i = 0; i < v.size(); ++i) {
                    const unsigned u = __float_as_uint(v[i]), lo = u >> 16, hi = lo + 1;
                    // The upper neighbour of the largest bf16 is the overflow to infinity: 2^128 for the comparison.
                    auto value = [](unsigned bits) { return (bits & 0x7fffu) == 0x7f80u ? std::copysign(std::ldexp(1.0, 128), bf(bits)) : (double)bf(bits); };
                    unsigned expect;
                    if (std::isnan(v[i])) expect = std::isnan(bf(oh[i])) ? oh[i] : 0xffffffffu;
                    else if (std::isinf(v[i])) expect = lo;
                    else {
                        const double dl = std::fabs((double)v[i] - value(lo)), dh = std::fabs((double)v[i] - value(hi));
                        expect = dl < dh ? lo : dh < dl ? hi : (lo & 1 ? hi : lo);
                    }
                    if (oh[i] != (expect & 0xffff)) { if (bad++ < 5) std::printf("  convert_f32_to_bf16(%a) = %04x, want %04x\n", v[i], oh[i], expect & 0xffff); }
                }
                std::vector<float> back(xh.size(), NAN);
                launch(3, 1, [&] { convert_bf16_to_f32(back.data(), xh.data(), n); });
                for (long i = 0; i < n; ++i) bad += back[i] != xb[i];
                std::printf("convert_f32_to_bf16 (%zu values: random, ties, specials), convert_bf16_to_f32: %ld wrong\n", v.size(), bad);
                worst = std::fmax(worst, bad ? INFINITY : 0.0);
            }
            // bias_act on [rows 7, cols 300]: bias + GELU(tanh), bias alone, GELU alone (null bias).
            for (int half = 0; half < 2; ++half) for (auto [biased, act] : {std::pair{1, 1}, std::pair{1, 0}, std::pair{0, 1}}) {
                const int rows = 7, cols = 300;
                auto m = randoms(rows * cols, 3, 0, half), bias = randoms(cols, 1, 0, half);
                std::vector<float> out = m;
                std::vector<bf16> oh = to_bf16(m), bh = to_bf16(bias);
                if (half) launch(3, 1, [&] { bias_act_bf16(oh.data(), biased ? bh.data() : nullptr, rows, cols, act); });
                else launch(3, 1, [&] { bias_act_f32(out.data(), biased ? bias.data() : nullptr, rows, cols, act); });
                std::vector<double> want;
                for (int i = 0; i < rows * cols; ++i) { const double v = (double)m[i] + (biased ? bias[i % cols] : 0.0); want.push_back(act ? gelu_tanh_ref(v) : v); }
                check(std::string("bias_act_") + (half ? "bf16" : "f32") + " 7 x 300 bias " + std::to_string(biased) + " act " + std::to_string(act),
                      half ? widen(oh) : widen(out), want, half ? bf16_tolerance : f32_tolerance);
            }
        }

        // t5_attention over 20 rows in three segments (7 rows with 5 keys, 4 padded rows with no key: uniform over the 4, 9
        // rows with 9 keys), q/k/v the column views of one fused [rows, 3 * heads * head_dim] qkv product (ld_in = 3 * heads *
        // head_dim); with a relative-position bias table (umT5) or none (CLIP); head_dim 64 (two keys' groups a thread
        // block), 80 (one group) and 160 (none: every thread loops over all keys).
        static void t5(bool half, int heads, int head_dim, bool with_table, float scale) {
            const int rows = 20, width = heads * head_dim, ld = 3 * width, max_pos = 10, buckets = 8;
            const int seg_start_of[3] = {0, 7, 11}, seg_keys_of[3] = {5, 0, 9}, seg_rows_of[3] = {7, 4, 9};
            std::vector<int> seg_start(rows), seg_keys(rows), seg_rows(rows), positions(rows), bucket_of(2 * max_pos + 1);
            for (int r = 0; r < rows; ++r) {
                const int s = r < 7 ? 0 : r < 11 ? 1 : 2;
                seg_start[r] = seg_start_of[s]; seg_keys[r] = seg_keys_of[s]; seg_rows[r] = seg_rows_of[s]; positions[r] = r - seg_start_of[s];
            }
            for (auto& bkt : bucket_of) bkt = (int)((rnd() + 1) * 0.5f * buckets) % buckets;
            auto qkv = randoms((size_t)rows * ld, 1, 0, half), table = randoms(buckets * heads, 2);
            const std::vector<bf16> qkvh = to_bf16(qkv);
            std::vector<float> out(rows * width, NAN);
            std::vector<bf16> oh(rows * width, 0x7fc0);
            const float* tp = with_table ? table.data() : nullptr;
            if (half) launch({rows, (unsigned)heads, 1}, 128, [&] {
                t5_attention_bf16(oh.data(), qkvh.data(), qkvh.data() + width, qkvh.data() + 2 * width, ld, seg_start.data(), seg_keys.data(),
                                  seg_rows.data(), positions.data(), bucket_of.data(), max_pos, tp, heads, head_dim, scale);
            });
            else launch({rows, (unsigned)heads, 1}, 128, [&] {
                t5_attention_f32(out.data(), qkv.data(), qkv.data() + width, qkv.data() + 2 * width, ld, seg_start.data(), seg_keys.data(),
                                 seg_rows.data(), positions.data(), bucket_of.data(), max_pos, tp, heads, head_dim, scale);
            });
            std::vector<double> want(rows * width);
            for (int r = 0; r < rows; ++r) for (int h = 0; h < heads; ++h) {
                const int start = seg_start[r], n = seg_keys[r] ? seg_keys[r] : seg_rows[r];
                std::vector<double> p(n);
                double top = -INFINITY, total = 0;
                for (int j = 0; j < n; ++j) {
                    double s = 0;
                    if (seg_keys[r]) {
                        for (int d = 0; d < head_dim; ++d) s += (double)qkv[r * ld + h * head_dim + d] * qkv[(start + j) * ld + width + h * head_dim + d];
                        s *= scale;
                        if (with_table) s += table[bucket_of[positions[start + j] - positions[r] + max_pos] * heads + h];
                    }
                    top = std::fmax(top, p[j] = s);
                }
                for (auto& v : p) total += (v = std::exp(v - top));
                for (int d = 0; d < head_dim; ++d) {
                    double o = 0;
                    for (int j = 0; j < n; ++j) o += p[j] * qkv[(start + j) * ld + 2 * width + h * head_dim + d];
                    want[r * width + h * head_dim + d] = o / total;
                }
            }
            check(std::string("t5_attention_") + (half ? "bf16" : "f32") + " 20 rows (3 segments, one with no key) heads " + std::to_string(heads) + " head_dim " +
                  std::to_string(head_dim) + " ld_in " + std::to_string(ld) + (with_table ? " with bias table" : " no table"), half ? widen(oh) : widen(out), want,
                  half ? bf16_tolerance : f32_tolerance);
        }

        static void t5_gelu_mul() {
            const long n = 2000;
            auto g = randoms(n, 4), u = randoms(n, 2), gb = randoms(n, 4, 0, true), ub = randoms(n, 2, 0, true);
            std::vector<float> out = g;
            std::vector<bf16> gh = to_bf16(gb), uh = to_bf16(ub);
            launch(3, 1, [&] { t5_gelu_mul_f32(out.data(), out.data(), u.data(), n); });  // out aliases gate
            launch(3, 1, [&] { t5_gelu_mul_bf16(uh.data(), gh.data(), uh.data(), n); });  // out aliases up
            std::vector<double> want, want_b;
            for (long i = 0; i < n; ++i) { want.push_back(gelu_tanh_ref(g[i]) * u[i]); want_b.push_back((double)rounded((float)gelu_tanh_ref(gb[i])) * ub[i]); }
            check("t5_gelu_mul_f32 n 2000 (out = gate)", widen(out), want, f32_tolerance);
            check("t5_gelu_mul_bf16 n 2000 (out = up; GELU rounded to bf16 first)", widen(uh), want_b, bf16_tolerance);
        }

        int main() {
            norms();
            rope(128);
            rope(40);
            elementwise();
            for (int half = 0; half < 2 - race_check; ++half) {  // ThreadSanitizer: f32 (the same body as bf16)
                t5(half, 3, 64, true, 1.0f);
                t5(half, 2, 80, false, 1.0f / std::sqrt(80.0f));
                t5(half, 1, 160, true, 1.0f);
            }
            t5_gelu_mul();
            std::printf("max_rel %.3e\n", worst);
            return 0;
        }
        """#

    func testAttentionKernelsMatchFloat64References() throws {
        let output = try KernelSourcesOnTheCPU.buildAndRun(modules: ["attention.cu"], driver: Self.attentionDriver)
        XCTAssertLessThanOrEqual(KernelSourcesOnTheCPU.maxRel(output), 1, output)
    }

    /// The attention driver under ThreadSanitizer (`race_check`: five small cases of several key tiles): no race on the
    /// kernels' shared K/V tiles and score exchanges.
    func testAttentionKernelsHaveNoRaces() throws {
        let output = try KernelSourcesOnTheCPU.buildAndRun(modules: ["attention.cu"], driver: Self.attentionDriver, sanitizer: .thread)
        XCTAssertLessThanOrEqual(KernelSourcesOnTheCPU.maxRel(output), 1, output)
    }

    /// rope_3d's expectations come from WanTensor's Rope3D: x (bf16-exact values, so the bf16 kernel reads the same
    /// numbers) and Rope3D's result for [B 2, L 26, heads 3, D] with grids (2, 3, 4) and (1, 5, 5), as the driver reads them.
    static func ropeFiles() -> [String: Data] {
        var state: UInt64 = 0x9E3779B97F4A7C15
        func next() -> Float {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            let v = Float(state >> 40) / Float(1 << 24) * 4 - 2
            let u = v.bitPattern &+ 0x7fff &+ ((v.bitPattern >> 16) & 1)  // to bf16, nearest even
            return Float(bitPattern: u & 0xffff0000)
        }
        var files: [String: Data] = [:]
        for headDim in [128, 40] {
            let (batch, length, heads) = (2, 26, 3), grids = [(f: 2, h: 3, w: 4), (f: 1, h: 5, w: 5)]
            let x = (0..<batch * length * heads * headDim).map { _ in next() }
            var want = x
            want.withUnsafeMutableBufferPointer { buffer in
                for b in 0..<batch {
                    Rope3D(headDim: headDim).apply(buffer.baseAddress! + b * length * heads * headDim, ld: heads * headDim, heads: heads, grid: grids[b])
                }
            }
            files["rope_\(headDim)_x.bin"] = x.withUnsafeBufferPointer { Data(buffer: $0) }
            files["rope_\(headDim)_want.bin"] = want.withUnsafeBufferPointer { Data(buffer: $0) }
        }
        return files
    }

    func testNormRopeElementwiseAndT5KernelsMatchReferences() throws {
        let output = try KernelSourcesOnTheCPU.buildAndRun(modules: ["norm.cu", "rope.cu", "elementwise.cu", "t5.cu"], driver: Self.smallKernelsDriver,
                                                           files: Self.ropeFiles())
        XCTAssertLessThanOrEqual(KernelSourcesOnTheCPU.maxRel(output), 1, output)
    }

    /// The small kernels' driver under ThreadSanitizer (`race_check`: t5_attention in f32 only): no race on the norms'
    /// block sums or t5_attention's shared scores.
    func testNormRopeElementwiseAndT5KernelsHaveNoRaces() throws {
        let output = try KernelSourcesOnTheCPU.buildAndRun(modules: ["norm.cu", "rope.cu", "elementwise.cu", "t5.cu"], driver: Self.smallKernelsDriver,
                                                           files: Self.ropeFiles(), sanitizer: .thread)
        XCTAssertLessThanOrEqual(KernelSourcesOnTheCPU.maxRel(output), 1, output)
    }
}
