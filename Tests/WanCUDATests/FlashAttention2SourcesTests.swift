import Foundation
import XCTest
import WanCUDA
import WanTensor

/// attention2.cu (`flash_attention_bf16_v2_d64/d128`: 128 query rows a block, cp.async double buffering, ldmatrix /
/// ldmatrix.trans fragments) run from its CUDA source on the CPU (KernelSourcesOnTheCPU) with CUDAOps' launch (grid
/// (ceil(Lq / 128), H, B); block 128 for d64, 256 for d128) against softmax(scale q kᵀ) v in float64 of the same bf16
/// inputs, on the awkward shapes DiTKernelSourcesOnTheCPUTests gives the first bf16 kernel (ragged Lq and Lk, Lk under
/// one tile, k_lens shorter than Lk, longer than Lk, on a tile edge, 0) plus shapes for the v2 tiles (several row blocks,
/// a last block of one row, many key tiles so both buffers are reused). Tolerance as that test: rel_l2 5e-3 (measured
/// ~2e-3: p and the output rounded to bf16) and no element off by more than 4x that of the largest |reference|.
///
/// First the shim's own ldmatrix / ldmatrix.trans (x1, x2, x4) against the PTX ISA's fragment layout written out
/// independently (lane 4r + w receives word w of row r of each matrix; .trans the transposed matrix) and cp.async's
/// groups (a destination NaN until the wait_group that completes it) and zero fill, so a kernel bug and a shim bug do
/// not cancel.
final class FlashAttention2SourcesOnTheCPUTests: XCTestCase {
    static let driver = #"""
        #include "kernel_host.h"
        #include <string>
        extern "C" void flash_attention_bf16_v2_d64(bf16*, const bf16*, const bf16*, const bf16*, const int*, int, int, int, float);
        extern "C" void flash_attention_bf16_v2_d128(bf16*, const bf16*, const bf16*, const bf16*, const int*, int, int, int, float);

        static const double bf16_tolerance = 5e-3;

        // The shim: a 40 x 24 bf16 "shared" array with distinct values; lane l addresses row (3 l) % 40 + column 8 (l % 3)
        // chunk; every count and both forms checked element by element against the layout as the PTX ISA states it.
        static double shim_checks() {
            alignas(16) static unsigned short smem[40 * 24];
            for (int i = 0; i < 40 * 24; ++i) smem[i] = (unsigned short)(i * 7 + 1);
            long bad = 0;
            for (int count : {1, 2, 4}) for (int trans = 0; trans < 2; ++trans) {
                static unsigned got[32][4];
                launch({1, 1, 1}, 32, [&] {
                    const int l = threadIdx.x;
                    unsigned r[4] = {0, 0, 0, 0};
                    ldmatrix_host(r, count, &smem[((3 * l) % 40) * 24 + 8 * (l % 3)], trans);
                    for (int i = 0; i < 4; ++i) got[l][i] = r[i];
                });
                for (int i = 0; i < count; ++i) for (int row = 0; row < 8; ++row) for (int col = 0; col < 8; ++col) {
                    // Element (row, col) of matrix i as stored: lane 8 i + row's address, + col.
                    const int provider = 8 * i + row;
                    const unsigned short value = smem[((3 * provider) % 40) * 24 + 8 * (provider % 3) + col];
                    // Fragment: matrix M (M = stored, or its transpose) element (r, c) sits with lane 4 r + c / 2, half c % 2.
                    const int r = trans ? col : row, c = trans ? row : col;
                    const unsigned word = got[4 * r + c / 2][i];
                    bad += ((word >> (16 * (c % 2))) & 0xffff) != value;
                }
            }
            // cp.async: the destination 0xffff (NaN) from the issue until a wait completes the copy; wait_group 1 completes
            // all but the latest committed group, wait_group 0 the rest but not an uncommitted copy, wait_all that too;
            // src-size below 16 zero-fills.
            alignas(16) static unsigned short src[8], dst[3][8];
            for (int i = 0; i < 8; ++i) src[i] = (unsigned short)(100 + i);
            for (auto& row : dst) for (auto& x : row) x = 0;
            const int sizes[3] = {16, 0, 6};
            auto copied = [&](int j) { long wrong = 0; for (int i = 0; i < 8; ++i) wrong += dst[j][i] != (2 * i < sizes[j] ? src[i] : 0); return wrong; };
            auto pending = [&](int j) { long wrong = 0; for (int i = 0; i < 8; ++i) wrong += dst[j][i] != 0xffff; return wrong; };
            cp_async_16_host(dst[0], src, sizes[0]);
            cp_async_commit_host();
            cp_async_16_host(dst[1], src, sizes[1]);
            cp_async_16_host(dst[2], src, sizes[2]);
            cp_async_commit_host();
            bad += pending(0) + pending(1) + pending(2);
            cp_async_wait_host(1);
            bad += copied(0) + pending(1) + pending(2);
            cp_async_wait_host(0);
            bad += copied(0) + copied(1) + copied(2);
            cp_async_16_host(dst[0], src, sizes[0]);
            cp_async_wait_host(0);
            bad += pending(0);
            cp_async_wait_all_host();
            bad += copied(0);
            std::printf("shim: ldmatrix x1/x2/x4 (+ .trans), cp.async groups and zero fill: %ld wrong\n", bad);
            return bad ? INFINITY : 0.0;
        }

        // One case: `lens` empty = no key mask (a null k_lens), else k_lens[b].
        static double attention_case(int B, int Lq, int Lk, int H, int D, std::vector<int> lens) {
            const long token = (long)H * D;
            std::vector<float> q(B * Lq * token), k(B * Lk * token), v(B * Lk * token);
            for (auto& x : q) x = rounded(2 * rnd());
            for (auto& x : k) x = rounded(2 * rnd());
            for (auto& x : v) x = rounded(rnd());
            const float scale = 1.0f / std::sqrt((float)D);
            // Device-like buffers: exactly the tensor's size (ASan sees a read or write past the end).
            std::vector<bf16> qh(q.size()), kh(k.size()), vh(v.size()), oh(q.size(), 0x7fc0);
            for (size_t i = 0; i < q.size(); ++i) qh[i] = float_to_bf16(q[i]);
            for (size_t i = 0; i < k.size(); ++i) { kh[i] = float_to_bf16(k[i]); vh[i] = float_to_bf16(v[i]); }
            const int* k_lens = lens.empty() ? nullptr : lens.data();
            auto kernel = D == 64 ? flash_attention_bf16_v2_d64 : flash_attention_bf16_v2_d128;
            launch({(unsigned)(Lq + 127) / 128, (unsigned)H, (unsigned)B}, D == 64 ? 128 : 256,
                   [&] { kernel(oh.data(), qh.data(), kh.data(), vh.data(), k_lens, Lq, Lk, H, scale); });
            std::vector<double> got(q.size());
            for (size_t i = 0; i < q.size(); ++i) got[i] = bf(oh[i]);
            const std::vector<double> want = reference_attention(q, k, v, lens, B, Lq, Lk, H, D, scale);
            const double max_rel = max_abs_over_max_ref(got, want);
            char what[200];
            std::snprintf(what, sizeof what, "flash_attention_bf16_v2_d%d B %d Lq %d Lk %d H %d k_lens %s (max_abs/max|ref| %.3e)", D, B, Lq, Lk, H,
                          lens.empty() ? "null" : (std::to_string(lens[0]) + "," + std::to_string(lens[1])).c_str(), max_rel);
            const double rel = report(what, got, want);
            return std::fmax(rel / bf16_tolerance, max_rel / (4 * bf16_tolerance));
        }

        int main() {
            double worst = shim_checks();
            if (race_check) {  // ThreadSanitizer: one block each, 3-4 key tiles (both buffers refilled), a ragged last tile
                worst = std::fmax(worst, attention_case(1, 20, 150, 1, 64, {}));
                worst = std::fmax(worst, attention_case(1, 20, 100, 1, 128, {70, 0}));
                std::printf("max_rel %.3e\n", worst);
                return 0;
            }
            // The first bf16 kernel's shapes (DiTKernelSourcesOnTheCPUTests), then v2's tiles: 128 rows; d64 64 keys, d128 32 keys.
            worst = std::fmax(worst, attention_case(2, 70, 100, 3, 64, {100, 37}));    // ragged; sample 1 masked inside tile 1
            worst = std::fmax(worst, attention_case(2, 19, 23, 2, 128, {}));           // Lq, Lk < one tile
            worst = std::fmax(worst, attention_case(2, 130, 150, 2, 128, {200, 70}));  // 2 row blocks, 5 key tiles, mask in tile 3
            worst = std::fmax(worst, attention_case(2, 33, 77, 2, 64, {0, 77}));       // a sample with no key: zeros
            worst = std::fmax(worst, attention_case(2, 19, 23, 2, 64, {}));            // d64: Lq, Lk < one tile
            worst = std::fmax(worst, attention_case(2, 129, 300, 1, 64, {256, 64}));   // last block of one row; 5 tiles; masks on tile edges
            worst = std::fmax(worst, attention_case(2, 257, 200, 1, 128, {96, 0}));    // 3 row blocks; mask on a tile edge; no key
            worst = std::fmax(worst, attention_case(1, 40, 1, 2, 128, {}));            // a single key
            std::printf("max_rel %.3e\n", worst);
            return 0;
        }
        """#

    func testAttentionBackendKernel2() {
        XCTAssertEqual(AttentionBackend(rawValue: "kernel2"), .kernel2)
        XCTAssertEqual(AttentionBackend.environmentDefault == .kernel2, ProcessInfo.processInfo.environment["WANKIT_ATTENTION"]?.lowercased() == "kernel2",
                       "the default stays kernel unless $WANKIT_ATTENTION names another")
    }

    /// On the CPU emulator (its kernels are the float64 reference, launch shapes checked): `kernel2` runs
    /// flash_attention_bf16_v2_d64/d128 with grid (ceil(Lq / 128), H, B) and 128 / 256 threads, giving the kernel's
    /// result; head_dim 32 falls back to the first kernel; a launch with the first kernel's block on v2_d128 is refused.
    func testEmulatorRunsKernel2WithItsLaunch() throws {
        do { _ = try NVRTC.load() } catch { throw XCTSkip("NVRTC not available (the emulator compiles the kernels): \(error)") }
        CUDAEmulator.install()
        defer { CUDAEmulator.uninstall() }
        CUDAEmulator.refusals = []
        let context = try CUDAContext()
        let ops = try CUDAOps(context: context)
        func random(_ count: Int, seed: UInt64) -> [UInt16] {
            var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
            return (0..<count).map { _ in
                state ^= state << 13; state ^= state >> 7; state ^= state << 17
                return BFloat16.from((Float(state >> 40) / Float(1 << 24) * 2 - 1) * 2)
            }
        }
        for d in [64, 128, 32] {
            let (batch, lq, lk, heads) = (2, 137, 53, 2)
            let q = try context.allocate(bytes: 2 * batch * lq * heads * d), k = try context.allocate(bytes: 2 * batch * lk * heads * d)
            let v = try context.allocate(bytes: 2 * batch * lk * heads * d), kLens = try context.allocate(bytes: 4 * batch)
            try q.upload(random(batch * lq * heads * d, seed: 1))
            try k.upload(random(batch * lk * heads * d, seed: 2))
            try v.upload(random(batch * lk * heads * d, seed: 3))
            try kLens.upload([Int32(lk), 20])
            var outputs: [[UInt16]] = []
            for backend in [AttentionBackend.kernel, .kernel2] {
                ops.attentionBackend = backend
                let out = try context.allocate(bytes: 2 * batch * lq * heads * d)
                try ops.attention(.bf16, out: out.pointer, q: q.pointer, k: k.pointer, v: v.pointer, kLens: kLens.pointer, batch: batch,
                                  lq: lq, lk: lk, heads: heads, headDim: d, scale: 0.125)
                outputs.append(try out.download(count: batch * lq * heads * d, as: UInt16.self))
            }
            XCTAssertEqual(outputs[0], outputs[1], "d\(d): kernel2 on the emulator gives the kernel's result")
            XCTAssertEqual(ops.attentionUsed[CuDNNAttention.Shape(batch: batch, lq: lq, lk: lk, heads: heads, headDim: d, masked: true)],
                           d == 32 ? .kernel : .kernel2, "d\(d)")
        }
        XCTAssertEqual(CUDAEmulator.refusals, [], "launches the emulator refused")
        let x = try context.allocate(bytes: 2 * 200 * 128)
        let v2 = try ops.function("flash_attention_bf16_v2_d128")
        XCTAssertThrowsError(try v2.launch(grid: (2, 1, 1), block: (128, 1, 1), [.buffer(x), .buffer(x), .buffer(x), .buffer(x), .pointer(0),
                                                                                 .int32(200), .int32(200), .int32(1), .float(0.1)]))
        XCTAssertThrowsError(try v2.launch(grid: (1, 1, 1), block: (256, 1, 1), [.buffer(x), .buffer(x), .buffer(x), .buffer(x), .pointer(0),
                                                                                 .int32(200), .int32(200), .int32(1), .float(0.1)]))
        XCTAssertEqual(CUDAEmulator.refusals.count, 2, "\(CUDAEmulator.refusals)")
    }

    /// ptxas' resource report through NVRTC (--ptxas-options=-v, in the compile log): v2_d64 and v2_d128 compile for
    /// sm_80 and sm_90 without spills, within their blocks' register budgets (d64: 128 threads, d128: 256 threads, so
    /// at most 255 registers a thread), with 36 / 34 KB of static shared memory. Prints the report.
    func testKernel2CompilesWithoutSpills() throws {
        let nvrtc: NVRTC
        do { nvrtc = try NVRTC.load() } catch { throw XCTSkip("NVRTC not available: \(error)") }
        let sources = try KernelSources.load()
        let text = try XCTUnwrap(sources.modules["attention2.cu"])
        for architecture in ["sm_80", "sm_90"] {
            let compiled = try nvrtc.compile(source: text, name: "attention2.cu", architecture: architecture, headers: sources.headers,
                                             options: ["--ptxas-options=-v"])
            let lines = compiled.log.split(separator: "\n").map(String.init)
            print(lines.filter { $0.contains("Compiling entry") || $0.contains("spill") || $0.contains("registers") }.joined(separator: "\n"))
            for kernel in ["flash_attention_bf16_v2_d64", "flash_attention_bf16_v2_d128"] {
                guard let start = lines.firstIndex(where: { $0.contains("Compiling entry function '\(kernel)'") }) else {
                    throw XCTSkip("NVRTC \(nvrtc.version) printed no ptxas report for \(kernel) (\(architecture))")
                }
                let report = lines[start..<min(start + 4, lines.count)].joined(separator: " ")
                XCTAssertTrue(report.contains("0 bytes spill stores, 0 bytes spill loads"), "\(kernel) (\(architecture)) spills: \(report)")
                XCTAssertTrue(report.contains(kernel.hasSuffix("d64") ? "36864 bytes smem" : "34816 bytes smem"), report)
            }
        }
    }

    func testFlashAttentionV2MatchesFloat64Reference() throws {
        let output = try KernelSourcesOnTheCPU.buildAndRun(modules: ["attention2.cu"], driver: Self.driver)
        XCTAssertLessThanOrEqual(KernelSourcesOnTheCPU.maxRel(output), 1, output)
    }

    /// The same driver under ThreadSanitizer (`race_check`: one block of d64 and of d128 over 3-4 key tiles): no race on
    /// the K/V tiles (the cp.async refill of a buffer against the previous step's ldmatrix reads, a tile read before
    /// its group's wait and the barrier after it), results as above.
    func testFlashAttentionV2HasNoRaces() throws {
        let output = try KernelSourcesOnTheCPU.buildAndRun(modules: ["attention2.cu"], driver: Self.driver, sanitizer: .thread)
        XCTAssertLessThanOrEqual(KernelSourcesOnTheCPU.maxRel(output), 1, output)
    }
}
