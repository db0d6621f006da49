import Foundation
import XCTest
import WanCUDA
import WanModels
import WanTensor
import WanWeights

/// t5.cu's `t5_flash_attention_bf16_d16/d32/d64/d80` (umT5's and CLIP's attention on the tensor cores: query tiles of
/// 64 rows that never straddle a segment, keys tiled through shared memory with an online softmax, the relative-position
/// bias staged per head) run from their CUDA source on the CPU (KernelSourcesOnTheCPU) with CUDAOps' launch (grid
/// (tiles, heads), block 128, the tile list `CUDAComputeBackend.segments` builds) against t5_attention's semantics in
/// float64 of the same bf16 inputs: stacked segments of different row and key counts (padded rows, row counts not a
/// multiple of 64, keys under one key tile, on a tile edge, many tiles, a segment with keys == 0: uniform over its
/// rows), with the umT5 bias table (bidirectional buckets, positions of padded rows out of order) and without (CLIP:
/// scale 1/sqrt(D), q/k/v column views of one fused [rows, 3 heads D] product, ld > heads D). Tolerance as
/// FlashAttention2SourcesOnTheCPUTests: rel_l2 5e-3 (p and the output rounded to bf16) and no element off by more than
/// 4x that of the largest |reference|; ASan with exact-size buffers (a row past its segment written, or read past the
/// end, stops the run), and a ThreadSanitizer build on two small cases.
final class T5FlashAttentionSourcesOnTheCPUTests: XCTestCase {
    static let driver = #"""
        #include "kernel_host.h"
        #include <string>
        typedef void (*t5_flash)(bf16*, const bf16*, const bf16*, const bf16*, int, const int*, const int*, const int*, const int*,
                                 const int*, const int*, int, const float*, int, float);
        extern "C" void t5_flash_attention_bf16_d16(bf16*, const bf16*, const bf16*, const bf16*, int, const int*, const int*, const int*, const int*, const int*, const int*, int, const float*, int, float);
        extern "C" void t5_flash_attention_bf16_d32(bf16*, const bf16*, const bf16*, const bf16*, int, const int*, const int*, const int*, const int*, const int*, const int*, int, const float*, int, float);
        extern "C" void t5_flash_attention_bf16_d64(bf16*, const bf16*, const bf16*, const bf16*, int, const int*, const int*, const int*, const int*, const int*, const int*, int, const float*, int, float);
        extern "C" void t5_flash_attention_bf16_d80(bf16*, const bf16*, const bf16*, const bf16*, int, const int*, const int*, const int*, const int*, const int*, const int*, int, const float*, int, float);

        static const double bf16_tolerance = 5e-3;

        // umT5's bidirectional relative-position bucket (UMT5Encoder.relativePositionBucket, 32 buckets, max distance 128).
        static int bucket(int rel) {
            const int nb = 16, max_exact = 8;
            const int base = rel > 0 ? nb : 0, a = std::abs(rel);
            if (a < max_exact) return base + a;
            const int large = max_exact + (int)(std::log((double)a / max_exact) / std::log(128.0 / max_exact) * (nb - max_exact));
            return base + std::min(large, nb - 1);
        }

        struct Segment { int rows, keys; };

        // One case: segments stacked; `bias` the umT5 table (scale 1), else CLIP (scale 1/sqrt(D), q/k/v column views of
        // one [rows, 3 heads D] product).
        static double flash_case(int D, int H, std::vector<Segment> segs, bool bias) {
            int rows = 0;
            for (auto s : segs) rows += s.rows;
            std::vector<int> seg_start, seg_keys, seg_rows, positions, tile_rows;
            for (auto s : segs) {
                const int first = (int)seg_start.size();
                for (int i = 0; i < s.rows; ++i) {
                    seg_start.push_back(first); seg_keys.push_back(s.keys); seg_rows.push_back(s.rows);
                    positions.push_back(i < s.keys ? i : s.keys + (s.rows - 1 - i));  // padded rows in another order
                }
                for (int r = first; r < first + s.rows; r += 64) tile_rows.push_back(r);
            }
            int max_pos = 0;
            for (int p : positions) max_pos = std::max(max_pos, p);
            std::vector<int> bucket_of(2 * max_pos + 1);
            for (int r = -max_pos; r <= max_pos; ++r) bucket_of[r + max_pos] = bucket(r);
            const int buckets = 32;
            std::vector<float> table(buckets * H);
            for (auto& x : table) x = 2 * rnd();
            const long width = (long)H * D, ld = bias ? width : 3 * width;
            const float scale = bias ? 1.0f : 1.0f / std::sqrt((float)D);
            const float amplitude = bias ? 0.5f : 2.0f;  // T5's unscaled scores: smaller inputs keep the softmax soft
            std::vector<float> q(rows * width), k(rows * width), v(rows * width);
            for (auto& x : q) x = rounded(amplitude * rnd());
            for (auto& x : k) x = rounded(amplitude * rnd());
            for (auto& x : v) x = rounded(rnd());
            // Device-like buffers of exactly their size: separate q, k, v (ld = H D) or one fused qkv (ld = 3 H D).
            std::vector<bf16> qh(bias ? rows * width : 0), kh(bias ? rows * width : 0), vh(bias ? rows * width : 0);
            std::vector<bf16> qkv(bias ? 0 : rows * 3 * width), oh(rows * width, 0x7fc0);
            for (long r = 0; r < rows; ++r) for (long c = 0; c < width; ++c) {
                const long i = r * width + c;
                if (bias) { qh[i] = float_to_bf16(q[i]); kh[i] = float_to_bf16(k[i]); vh[i] = float_to_bf16(v[i]); }
                else { qkv[r * ld + c] = float_to_bf16(q[i]); qkv[r * ld + width + c] = float_to_bf16(k[i]); qkv[r * ld + 2 * width + c] = float_to_bf16(v[i]); }
            }
            const bf16* qp = bias ? qh.data() : qkv.data();
            const bf16* kp = bias ? kh.data() : qkv.data() + width;
            const bf16* vp = bias ? vh.data() : qkv.data() + 2 * width;
            t5_flash kernel = D == 16 ? t5_flash_attention_bf16_d16 : D == 32 ? t5_flash_attention_bf16_d32
                            : D == 64 ? t5_flash_attention_bf16_d64 : t5_flash_attention_bf16_d80;
            launch({(unsigned)tile_rows.size(), (unsigned)H, 1}, 128, [&] {
                kernel(oh.data(), qp, kp, vp, (int)ld, tile_rows.data(), seg_start.data(), seg_keys.data(), seg_rows.data(),
                       bias ? positions.data() : nullptr, bias ? bucket_of.data() : nullptr, max_pos, bias ? table.data() : nullptr, H, scale);
            });
            // The reference: t5_attention's semantics (t5.cu's header) in float64.
            std::vector<double> got(oh.size()), want(oh.size());
            for (size_t i = 0; i < oh.size(); ++i) got[i] = bf(oh[i]);
            for (int row = 0; row < rows; ++row) for (int h = 0; h < H; ++h) {
                const int start = seg_start[row], keys = seg_keys[row], n = keys == 0 ? seg_rows[row] : keys;
                std::vector<double> s(n, 0.0);
                double top = -INFINITY, total = 0;
                for (int j = 0; j < n; ++j) {
                    if (keys > 0) {
                        double dot = 0;
                        for (int d = 0; d < D; ++d) dot += (double)q[row * width + h * D + d] * k[(start + j) * width + h * D + d];
                        s[j] = dot * scale + (bias ? table[bucket_of[positions[start + j] - positions[row] + max_pos] * H + h] : 0.0);
                    }
                    top = std::fmax(top, s[j]);
                }
                for (int j = 0; j < n; ++j) total += (s[j] = std::exp(s[j] - top));
                for (int d = 0; d < D; ++d) {
                    double o = 0;
                    for (int j = 0; j < n; ++j) o += s[j] * v[(start + j) * width + h * D + d];
                    want[row * width + h * D + d] = o / total;
                }
            }
            std::string shape;
            for (auto s : segs) shape += (shape.empty() ? "" : ",") + std::to_string(s.rows) + "/" + std::to_string(s.keys);
            const double max_rel = max_abs_over_max_ref(got, want);
            char what[300];
            std::snprintf(what, sizeof what, "t5_flash_attention_bf16_d%d H %d segments (rows/keys) %s %s, %zu tiles (max_abs/max|ref| %.3e)", D, H,
                          shape.c_str(), bias ? "bias table" : "no table, ld 3HD", tile_rows.size(), max_rel);
            const double rel = report(what, got, want);
            return std::fmax(rel / bf16_tolerance, max_rel / (4 * bf16_tolerance));
        }

        int main() {
            double worst = 0;
            if (race_check) {  // ThreadSanitizer: a few blocks, several key tiles (both buffers refilled), staged bias
                worst = std::fmax(worst, flash_case(64, 1, {{90, 70}, {80, 0}}, true));
                worst = std::fmax(worst, flash_case(80, 1, {{100, 100}}, false));
                std::printf("max_rel %.3e\n", worst);
                return 0;
            }
            // umT5 (bias, scale 1): padded rows, a uniform segment, keys on a key-tile edge, row counts not multiples of 64.
            worst = std::fmax(worst, flash_case(64, 2, {{150, 140}, {37, 37}, {5, 0}, {128, 64}, {65, 1}}, true));
            worst = std::fmax(worst, flash_case(64, 1, {{300, 257}, {70, 0}}, true));       // 5 key tiles; a uniform segment over 2 tiles
            worst = std::fmax(worst, flash_case(80, 2, {{150, 140}, {37, 37}, {5, 0}}, true));
            worst = std::fmax(worst, flash_case(16, 3, {{40, 33}, {64, 64}, {3, 0}}, true));
            worst = std::fmax(worst, flash_case(32, 2, {{100, 90}, {17, 17}}, true));
            // CLIP (no table, scale 1/sqrt(D), q/k/v views of one fused product: ld = 3 H D): images of 257 tokens.
            worst = std::fmax(worst, flash_case(80, 2, {{257, 257}, {257, 257}}, false));
            worst = std::fmax(worst, flash_case(80, 1, {{33, 20}, {9, 0}}, false));
            worst = std::fmax(worst, flash_case(64, 2, {{257, 257}, {10, 0}}, false));
            worst = std::fmax(worst, flash_case(16, 4, {{257, 257}}, false));
            std::printf("max_rel %.3e\n", worst);
            return 0;
        }
        """#

    static let golden = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("shared/golden").path

    /// On the CPU emulator, the bf16 CLIP vision tower (the golden `clip_visual` weights, 257 tokens an image) runs
    /// t5_flash_attention_bf16_d*, its features agreeing with t5_attention_bf16's (`flashSegmentAttention`
    /// false) to bf16 rounding; f32 stays on t5_attention_f32. The bf16 umT5 encoder hands the segment attention f32
    /// q/k/v, so it runs t5_attention_f32 (two prompts, and a padded batch with an all-padding sample).
    func testEncodersRunTheirSegmentAttentionKernelsOnTheEmulator() throws {
        do { _ = try NVRTC.load() } catch { throw XCTSkip("NVRTC not available (the emulator compiles the kernels): \(error)") }
        let clipPath = Self.golden + "/weights/clip_visual.safetensors", t5Path = Self.golden + "/weights/t5.safetensors"
        guard FileManager.default.fileExists(atPath: clipPath) else { throw XCTSkip("golden data not found at \(Self.golden)") }
        CUDAEmulator.install()
        defer { CUDAEmulator.uninstall() }
        CUDAEmulator.refusals = []
        let clipWeights = try openCLIPWeights(path: clipPath)
        let images = [Tensor(shape: [3, 1, 40, 56], values: (0..<(3 * 40 * 56)).map { Float(sin(Double($0) * 0.037)) })]
        var results: [[Float]] = []
        for (precision, flash) in [(CUDAPrecision.bf16, true), (.bf16, false), (.f32, true)] {
            let gpu = try CUDACLIP(weights: clipWeights.source, arguments: clipWeights.arguments ?? [:], precision: precision)
            gpu.backend.flashSegmentAttention = flash
            var values: [Float] = []
            let report = try gpu.profile {
                let features = try gpu.visual(images)
                values = Array(features.buffer)
            }.joined(separator: "\n")
            XCTAssertEqual(report.contains("t5_flash_attention_bf16_d"), precision == .bf16 && flash, report)
            XCTAssertEqual(report.contains("t5_attention_"), !(precision == .bf16 && flash), report)
            results.append(values)
        }
        let c = results[0].withUnsafeBufferPointer { got in results[1].withUnsafeBufferPointer { Comparison(got: got, expected: $0) } }
        print("CLIP bf16 on the emulator, flash against t5_attention_bf16: \(c)")
        XCTAssertLessThanOrEqual(c.relL2, 1e-2, "\(c)")

        let t5Weights = try openT5Weights(path: t5Path)
        let t5 = try CUDAUMT5(weights: t5Weights.source, arguments: t5Weights.arguments ?? [:], precision: .bf16)
        let ids = Tensor(shape: [2, 9], values: (0..<18).map { Float(($0 * 29 + 3) % 512) })
        let mask = Tensor(shape: [2, 9], values: (0..<18).map { Float($0 < 6 ? 1 : 0) })
        let report = try t5.backend.profile {
            _ = try t5.encode(tokens: [[5, 17, 300, 2, 1], Array((0..<70).map { ($0 * 13 + 7) % 512 })])
            _ = try t5.forward(ids: ids, mask: mask)  // an all-padding sample: a uniform segment
        }.joined(separator: "\n")
        XCTAssertTrue(report.contains("t5_attention_f32") && !report.contains("t5_flash_attention"), report)
        XCTAssertEqual(CUDAEmulator.refusals, [], "launches the emulator refused")
    }

    /// ptxas' resource report through NVRTC (--ptxas-options=-v): the four kernels compile for sm_80 and sm_90 without
    /// spills (128 threads a block; d16 on sm_80 may spill one word). Prints registers and shared memory.
    func testT5FlashAttentionCompilesWithoutSpills() throws {
        let nvrtc: NVRTC
        do { nvrtc = try NVRTC.load() } catch { throw XCTSkip("NVRTC not available: \(error)") }
        let sources = try KernelSources.load()
        let text = try XCTUnwrap(sources.modules["t5.cu"])
        for architecture in ["sm_80", "sm_90"] {
            let compiled = try nvrtc.compile(source: text, name: "t5.cu", architecture: architecture, headers: sources.headers,
                                             options: ["--ptxas-options=-v"])
            let lines = compiled.log.split(separator: "\n").map(String.init)
            for kernel in ["t5_flash_attention_bf16_d16", "t5_flash_attention_bf16_d32", "t5_flash_attention_bf16_d64", "t5_flash_attention_bf16_d80"] {
                guard let start = lines.firstIndex(where: { $0.contains("Compiling entry function '\(kernel)'") }) else {
                    throw XCTSkip("NVRTC \(nvrtc.version) printed no ptxas report for \(kernel) (\(architecture))")
                }
                let report = lines[start..<min(start + 4, lines.count)].joined(separator: " ")
                print("\(kernel) \(architecture): \(report.replacingOccurrences(of: "ptxas info    : ", with: ""))")
                // d16 (the golden test models' heads only) may spill a word on sm_80 (NVRTC 13.0: 4 bytes); the real
                // models' d64 / d80 and d32 must not spill at all.
                let clean = report.contains("0 bytes spill stores, 0 bytes spill loads")
                XCTAssertTrue(clean || (kernel.hasSuffix("d16") && report.contains(" 4 bytes spill stores")), "\(kernel) (\(architecture)) spills: \(report)")
            }
        }
    }

    func testT5FlashAttentionMatchesFloat64Reference() throws {
        let output = try KernelSourcesOnTheCPU.buildAndRun(modules: ["t5.cu"], driver: Self.driver)
        XCTAssertLessThanOrEqual(KernelSourcesOnTheCPU.maxRel(output), 1, output)
    }

    /// The same driver under ThreadSanitizer (`race_check`: d64 with the bias over a uniform and a padded segment, d80
    /// without, 2-4 key tiles): no race on the K/V tiles, the keys' positions or the staged bias.
    func testT5FlashAttentionHasNoRaces() throws {
        let output = try KernelSourcesOnTheCPU.buildAndRun(modules: ["t5.cu"], driver: Self.driver, sanitizer: .thread)
        XCTAssertLessThanOrEqual(KernelSourcesOnTheCPU.maxRel(output), 1, output)
    }
}
