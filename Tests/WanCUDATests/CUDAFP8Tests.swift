import Foundation
import XCTest
import WanCUDA
import WanModels
import WanTensor
import WanWeights

/// The fp8 products (`CUDAComputeBackend.fp8Products`, `--fp8-products`): the activation quantised to e4m3 by
/// Kernels/fp8.cu (round to nearest even, saturation, per-tensor scale amax / 448), the product a cuBLASLt e4m3 matmul
/// with A/B scale pointers. Checked here: the e4m3 conversion byte for byte against a brute-force nearest-value
/// reference (every bf16 input, on the host and from fp8.cu's source compiled for the CPU), the kernels' launches on
/// the emulator, one product against float64 of the quantised operands, the fallbacks, the refusal below compute
/// capability 8.9, and a tiny DiT against the bf16 dequantisation path.
final class CUDAFP8Tests: XCTestCase {
    // MARK: e4m3 conversion

    /// The e4m3 byte of `f` by search: the nearest of the 127 non-negative finite codes (ties: the even code, i.e.
    /// an even mantissa), |f| >= 448 and infinities 448 ("satfinite"), NaN 0x7f; the sign bit copied.
    static func referenceE4M3(_ f: Float) -> UInt8 {
        let sign: UInt8 = f.sign == .minus ? 0x80 : 0
        if f.isNaN { return sign | 0x7f }
        let a = Double(f.magnitude)
        if a >= 448 { return sign | 0x7e }
        var low: UInt8 = 0
        while low < 0x7e && Double(FP8E4M3.decode(low + 1)) <= a { low += 1 }
        let lo = Double(FP8E4M3.decode(low))
        if lo == a { return sign | low }
        let hi = Double(FP8E4M3.decode(low + 1))
        if a - lo < hi - a { return sign | low }
        if hi - a < a - lo { return sign | (low + 1) }
        return sign | (low & 1 == 0 ? low : low + 1)
    }

    /// Values on and around the edges: ties between codes (normal and subnormal), the subnormal / normal boundary, the
    /// underflow to zero, the saturation at 448 and beyond, infinities, NaN, float subnormals, negative zero.
    static let edgeValues: [Float] = {
        var v: [Float] = [0, -0.0, 448, 449, 463.99, 464, 465, 479.9, 480, 1e30, .infinity, -.infinity, .nan, -Float.nan,
                          Float.leastNonzeroMagnitude, Float.leastNormalMagnitude, 1e-40,
                          0x1p-6, 0x1p-7, 0x1p-9, 0x1p-10, 0x1.8p-10, 0x3p-10, 0x5p-10, 0x7.8p-9, 0x1.fp-7, 0x1p-11, 0x1.000002p-10,
                          0x1.1p-6, 0x1.3p-6, 0x1.1p0, 0x1.3p0, 0x1.fp0, 0x1.ep7, 0x1.dp8, 0x1.d8p8, 0x1.e8p8, 447.99, 416, 432, 440]
        v += v.map { -$0 }
        // Every tie between two adjacent finite codes, and a hair either side.
        for code in 0..<0x7e {
            let mid = (FP8E4M3.decode(UInt8(code)) + FP8E4M3.decode(UInt8(code + 1))) / 2  // exact in float
            v += [mid, mid.nextUp, mid.nextDown, -mid]
        }
        return v
    }()

    func testE4M3EncodingIsNearestEvenWithSaturation() {
        var mismatches: [String] = []
        // Every bf16 value (the activations' type), then the edges.
        let inputs = (0..<65536).map { Float(bitPattern: UInt32($0) << 16) } + Self.edgeValues
        for f in inputs {
            let got = FP8E4M3.encode(f), want = Self.referenceE4M3(f)
            if got != want { mismatches.append("\(f) (0x\(String(f.bitPattern, radix: 16))): 0x\(String(got, radix: 16)), expected 0x\(String(want, radix: 16))") }
        }
        XCTAssertEqual(mismatches, [], "\(mismatches.count) mismatches")
        // decode(encode(x)) is x for every finite code; the named values.
        for code in 0..<256 where code & 0x7f != 0x7f {
            XCTAssertEqual(FP8E4M3.encode(FP8E4M3.decode(UInt8(code))), UInt8(code), "code \(code)")
        }
        XCTAssertEqual(FP8E4M3.decode(0x7e), 448)
        XCTAssertEqual(FP8E4M3.decode(0x08), 0x1p-6)
        XCTAssertEqual(FP8E4M3.decode(0x01), 0x1p-9)
        XCTAssertEqual(FP8E4M3.encode(0x1p-10), 0)        // half the smallest subnormal: the tie goes to 0 (even)
        XCTAssertEqual(FP8E4M3.encode(0x3p-10), 0x02)     // 1.5 · 2^-9: tie between 1 and 2 -> 2
        XCTAssertEqual(FP8E4M3.encode(0x7.8p-9), 0x08)    // 7.5 · 2^-9: tie between the last subnormal and 2^-6 -> 2^-6
        XCTAssertEqual(FP8E4M3.encode(464), 0x7e)         // beyond 448: saturated, not NaN
        XCTAssertEqual(FP8E4M3.encode(-.infinity), 0xfe)
        XCTAssertEqual(FP8E4M3.encode(.nan), 0x7f)
        XCTAssertEqual(FP8E4M3.activationScale(amax: 0), 1)
        XCTAssertEqual(FP8E4M3.activationScale(amax: .infinity), 1)
        XCTAssertEqual(FP8E4M3.activationScale(amax: 896), 2)
    }

    /// Kernels/fp8.cu compiled for the CPU (KernelSourcesOnTheCPU): fp8_amax_bf16 over several blocks, then
    /// fp8_quantize_e4m3_bf16, with CUDAOps.quantizeFP8's block size, against a brute-force float64 nearest-code
    /// search; bytes and scales must be equal.
    static let driver = #"""
        // Runs fp8_amax_bf16 and fp8_quantize_e4m3_bf16 of Kernels/fp8.cu on the CPU and compares every byte and the scales
        // with a reference that searches the nearest e4m3 code (ties to the even code, saturation at 448, NaN 0x7f).
        // Prints one line per case; "max_rel 0" last when everything matches (1 otherwise).
        #include "kernel_host.h"
        #include <string>
        extern "C" void fp8_amax_bf16(float*, const bf16*, long);
        extern "C" void fp8_quantize_e4m3_bf16(unsigned char*, float*, const bf16*, const float*, int, float, long);

        static double decode_e4m3(unsigned b) {
            const int e = (b >> 3) & 15, m = b & 7;
            const double v = e == 0 ? m * std::ldexp(1.0, -9) : (8 + m) * std::ldexp(1.0, e - 10);
            return (b & 0x80) ? -v : v;
        }
        static unsigned reference_e4m3(float f) {
            const unsigned sign = std::signbit(f) ? 0x80u : 0u;
            if (std::isnan(f)) return sign | 0x7fu;
            const double a = std::fabs((double)f);
            if (a >= 448) return sign | 0x7eu;
            unsigned low = 0;
            while (low < 0x7e && decode_e4m3(low + 1) <= a) ++low;
            const double lo = decode_e4m3(low), hi = decode_e4m3(low + 1);
            if (lo == a || a - lo < hi - a) return sign | low;
            if (hi - a < a - lo) return sign | (low + 1);
            return sign | ((low & 1) ? low + 1 : low);
        }

        static int failures = 0;
        // Quantises `values` (bf16 bits) with `amax_blocks` x 256 and `blocks` x 256 threads; checks bytes and scales.
        static void run_case(const char* what, const std::vector<bf16>& values, unsigned amax_blocks, unsigned blocks) {
            const long n = (long)values.size();
            std::vector<float> partial(amax_blocks, NAN), scales(2, NAN);
            std::vector<unsigned char> out(n, 0xaa);
            launch({amax_blocks, 1, 1}, 256, [&] { fp8_amax_bf16(partial.data(), values.data(), n); });
            launch({blocks, 1, 1}, 256, [&] { fp8_quantize_e4m3_bf16(out.data(), scales.data(), values.data(), partial.data(), (int)amax_blocks, 0.375f, n); });
            float amax = 0;
            for (bf16 v : values) { const float x = std::fabs(bf(v)); if (!std::isnan(x)) amax = std::fmax(amax, x); }
            const float q = amax / 448.0f;
            const float s = q > 0 && std::isfinite(q) ? q : 1.0f;
            long wrong = 0;
            for (long i = 0; i < n; ++i) {
                const unsigned want = reference_e4m3(bf(values[i]) / s);
                if (out[i] != want) {
                    if (wrong < 5) std::printf("  %s: x = %g (0x%04x) / %g -> 0x%02x, expected 0x%02x\n", what, bf(values[i]), values[i], s, out[i], want);
                    ++wrong;
                }
            }
            const bool scales_ok = scales[0] == s && scales[1] == 0.375f;
            std::printf("%s: %ld values, scale %g (%s), %ld bytes wrong\n", what, n, scales[0], scales_ok ? "ok" : "WRONG", wrong);
            if (wrong || !scales_ok) ++failures;
        }

        int main() {
            // 1. Every finite bf16 of magnitude <= 448 and 448 itself: amax 448, scale 1, so each byte is e4m3(x) exactly.
            std::vector<bf16> in_range;
            for (unsigned b = 0; b < 65536; ++b) if (std::fabs(bf(b)) <= 448) in_range.push_back((bf16)b);
            while (in_range.size() % 8) in_range.push_back(0x43e0);  // 448
            run_case("every bf16 in [-448, 448], scale 1", in_range, 7, 5);
            // 2. Everything else (beyond 448, infinities, NaNs) with an infinite amax: the scale falls back to 1, so
            //    saturation and NaN are checked.
            std::vector<bf16> beyond;
            for (unsigned b = 0; b < 65536; ++b) if (!(std::fabs(bf(b)) <= 448)) beyond.push_back((bf16)b);
            while (beyond.size() % 8) beyond.push_back(0x7f80);
            run_case("every bf16 beyond 448, inf, NaN (scale 1)", beyond, 3, 2);
            // 3. Random activations: scale amax / 448 from the data, awkward quotients.
            std::vector<bf16> random_values(8 * 3001);
            for (size_t i = 0; i < random_values.size(); ++i) random_values[i] = float_to_bf16(rnd() * (i % 7 == 0 ? 37.0f : 0.3f));
            run_case("random, scale from the data", random_values, 256, 9);
            // 4. All zeros: amax 0, scale 1, zero bytes.
            run_case("zeros", std::vector<bf16>(64, 0), 1, 1);
            std::printf("max_rel %d\n", failures ? 1 : 0);
            return 0;
        }
        """#

    func testFP8KernelSourceOnTheCPUMatchesTheReference() throws {
        let output = try KernelSourcesOnTheCPU.buildAndRun(modules: ["fp8.cu"], driver: Self.driver)
        XCTAssertEqual(KernelSourcesOnTheCPU.maxRel(output), 0, output)
    }

    // MARK: on the emulator

    func emulatedGPU() throws -> (CUDAContext, KernelCompiler, cleanup: () -> Void) {
        do { _ = try NVRTC.load() } catch { throw XCTSkip("NVRTC not available (the emulator still compiles the kernels): \(error)") }
        CUDAEmulator.install()
        CUDAEmulator.refusals = []
        let cache = FileManager.default.temporaryDirectory.appendingPathComponent("wankit-fp8-cache-\(getpid())").path
        let context = try CUDAContext(ordinal: 0)
        let compiler = try KernelCompiler(cacheDirectory: cache)
        return (context, compiler, {
            CUDAEmulator.uninstall()
            CUDAEmulator.computeCapability = (9, 0)
            try? FileManager.default.removeItem(atPath: cache)
        })
    }

    /// bf16-representable random values with a few large ones and exact zeros.
    static func activations(_ count: Int, seed: UInt64) -> [Float] {
        var stream = CUDACompactWeightTests.Stream(state: seed)
        return (0..<count).map { i in
            let v = stream.uniform(i % 17 == 0 ? 40 : 2)
            return i % 23 == 0 ? 0 : BFloat16.float(BFloat16.from(v))
        }
    }

    func testQuantizeLaunchesOnTheEmulator() throws {
        let (context, compiler, cleanup) = try emulatedGPU()
        defer { cleanup() }
        let ops = try CUDAOps(context: context, compiler: compiler)
        for (count, seed) in [(8, UInt64(1)), (8 * 1000, 2), (8 * 70_000, 3)] {  // one block, several, more than 256 partials
            let x = Self.activations(count, seed: seed)
            let dx = try context.allocate(bytes: 2 * count), out = try context.allocate(bytes: count), scratch = try context.allocate(bytes: 4 * 258)
            try dx.upload(x.map { BFloat16.from($0) })
            try ops.quantizeFP8(out: out.pointer, x: dx.pointer, count: count, weightScale: 0.25, scratch: scratch.pointer)
            let (want, scale) = FP8E4M3.quantize(x)
            XCTAssertEqual(try out.download(count: count, as: UInt8.self), want, "\(count) values")
            XCTAssertEqual(try scratch.download(count: 2, as: Float.self), [scale, 0.25])
        }
        XCTAssertEqual(CUDAEmulator.refusals, [])
    }

    /// Owns the bytes of a hand-made stored tensor.
    final class Bytes {
        let pointer: UnsafeMutablePointer<UInt8>
        init(_ values: [UInt8]) { pointer = .allocate(capacity: values.count); pointer.initialize(from: values, count: values.count) }
        deinit { pointer.deallocate() }
    }

    /// A Linear [n, k] stored as random e4m3 bytes (no NaN) with `scale`, and a random bias.
    static func fp8Linear(n: Int, k: Int, scale: Float, seed: UInt64) -> (Linear, [UInt8]) {
        var stream = CUDACompactWeightTests.Stream(state: seed)
        let bytes = (0..<(n * k)).map { _ -> UInt8 in let b = UInt8(truncatingIfNeeded: stream.next() >> 56); return b & 0x7f == 0x7f ? b ^ 1 : b }
        let owner = Bytes(bytes)
        let stored = StoredTensor(name: "fp8.weight", type: .dtype(.f8e4m3), shape: [n, k], data: UnsafeRawPointer(owner.pointer),
                                  byteCount: n * k, scale: scale, owner: owner)
        let bias = Tensor(uninitialized: [n])
        for i in 0..<n { bias.data[i] = stream.uniform(0.5) }
        return (Linear(LinearWeight(stored), bias: bias), bytes)
    }

    /// One product of each output type and epilogue through the backend's fp8 path against float64 of the operands
    /// cuBLASLt is given: the weight's bytes and x quantised as `FP8E4M3.quantize` does, times both scales, plus the
    /// bias (rounded to the output type), then GELU. bf16 output: within its rounding (rel_l2 <= 4e-3); f32: 1e-6.
    func testOneFP8ProductAgainstFloat64OfTheQuantisedOperands() throws {
        let (context, compiler, cleanup) = try emulatedGPU()
        defer { cleanup() }
        let backend = try CUDAComputeBackend(precision: .bf16, context: context, compiler: compiler, fp8Products: true)
        let (m, n, k) = (37, 48, 96)
        let x = Self.activations(m * k, seed: 9)
        let dx = try context.allocate(bytes: 2 * m * k)
        try dx.upload(x.map { BFloat16.from($0) })
        let (q, s) = FP8E4M3.quantize(x)
        var count = 0
        for (output, epilogue) in [(ElementType.bf16, MatmulEpilogue.none), (.bf16, .geluTanh), (.f32, .none)] {
            let (linear, w) = Self.fp8Linear(n: n, k: k, scale: 0.02, seed: 4)
            let l = try backend.upload(linear, weight: .bf16, output: output)
            try backend.weightsLoaded()
            let dy = try context.allocate(bytes: m * n * output.size)
            try backend.product(l, rows: m, x: dx.pointer, y: dy.pointer, epilogue: epilogue)
            count += 1
            XCTAssertEqual(backend.gemm.fp8ProductCount, count, "the fp8 path ran")
            let got: [Float] = output == .f32 ? try dy.download(count: m * n, as: Float.self)
                : try dy.download(count: m * n, as: UInt16.self).map { BFloat16.float($0) }
            var diff = 0.0, norm = 0.0
            for i in 0..<m {
                for j in 0..<n {
                    var sum = 0.0
                    for p in 0..<k { sum += Double(FP8E4M3.decode(q[i * k + p])) * Double(FP8E4M3.decode(w[j * k + p])) }
                    let b = output == .bf16 ? BFloat16.float(BFloat16.from(linear.bias!.data[j])) : linear.bias!.data[j]
                    var want = Double(s) * 0.02 * sum + Double(b)
                    if epilogue == .geluTanh { want = 0.5 * want * (1 + tanh(0.7978845608028654 * (want + 0.044715 * want * want * want))) }
                    diff += (Double(got[i * n + j]) - want) * (Double(got[i * n + j]) - want)
                    norm += want * want
                }
            }
            let rel = (diff / norm).squareRoot()
            print("fp8 product \(m)x\(n)x\(k) -> \(output) \(epilogue): rel_l2 \(rel) against float64 of the quantised operands")
            XCTAssertLessThan(rel, output == .f32 ? 1e-6 : 4e-3, "\(output) \(epilogue)")
        }
        XCTAssertEqual(backend.gemm.fp8Fallbacks, [])
        XCTAssertEqual(CUDAEmulator.refusals, [])
    }

    /// A product cuBLASLt's fp8 rules do not take (k not a multiple of 16) runs through the bf16 dequantisation: the
    /// same bits as without fp8 products, and the shape is named.
    func testProductsOutsideTheFP8RulesFallBackToTheDequantisation() throws {
        let (context, compiler, cleanup) = try emulatedGPU()
        defer { cleanup() }
        let (m, n, k) = (5, 32, 40)
        let x = Self.activations(m * k, seed: 3)
        var outputs: [[UInt16]] = []
        for fp8 in [true, false] {
            let backend = try CUDAComputeBackend(precision: .bf16, context: context, compiler: compiler, fp8Products: fp8)
            let l = try backend.upload(Self.fp8Linear(n: n, k: k, scale: 0.1, seed: 2).0, weight: .bf16, output: .bf16)
            try backend.weightsLoaded()
            let dx = try context.allocate(bytes: 2 * m * k), dy = try context.allocate(bytes: 2 * m * n)
            try dx.upload(x.map { BFloat16.from($0) })
            try backend.product(l, rows: m, x: dx.pointer, y: dy.pointer)
            outputs.append(try dy.download(count: m * n, as: UInt16.self))
            XCTAssertEqual(backend.gemm.fp8ProductCount, 0)
            XCTAssertEqual(backend.gemm.fp8Fallbacks, fp8 ? ["32x40"] : [])
        }
        XCTAssertEqual(outputs[0], outputs[1])
        XCTAssertEqual(CUDAEmulator.refusals, [])
    }

    func testFP8ProductsAreRefusedBelowComputeCapability89AndOutsideBF16() throws {
        let (_, compiler, cleanup) = try emulatedGPU()
        defer { cleanup() }
        CUDAEmulator.computeCapability = (8, 6)
        let ampere = try CUDAContext(ordinal: 0)
        XCTAssertFalse(FP8Products.supported(ampere.info))
        XCTAssertThrowsError(try CUDAComputeBackend(precision: .bf16, context: ampere, compiler: compiler, fp8Products: true)) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("compute capability 8.6") && text.contains("8.9") && text.contains("--fp8-products"), text)
        }
        XCTAssertNoThrow(try CUDAComputeBackend(precision: .bf16, context: ampere, compiler: compiler))
        // The self-test's fp8 cases say why they did not run; the quantise kernel runs on any GPU.
        let results = DeviceReport.selfTest(context: ampere, compiler: compiler) { $0.contains("fp8") && !$0.hasPrefix("dequant") }
        XCTAssertEqual(results.count, 3)
        for r in results {
            print("self-test at 8.6: \(r)")
            XCTAssertTrue(r.passed, "\(r)")
            XCTAssertEqual(r.skipped != nil, r.kernel.hasPrefix("cublasLt"), "\(r)")
            XCTAssertTrue("\(r)".contains("SKIP") == r.kernel.hasPrefix("cublasLt"), "\(r)")
        }
        CUDAEmulator.computeCapability = (9, 0)
        let hopper = try CUDAContext(ordinal: 0)
        XCTAssertThrowsError(try CUDAComputeBackend(precision: .f32, context: hopper, compiler: compiler, fp8Products: true)) { error in
            XCTAssertTrue("\(error)".contains("--precision bf16"), "\(error)")
        }
        for r in DeviceReport.selfTest(context: hopper, compiler: compiler, filter: { $0.contains("fp8") && !$0.hasPrefix("dequant") }) {
            print("self-test at 9.0: \(r)")
            XCTAssertTrue(r.passed && r.skipped == nil, "\(r)")
        }
        XCTAssertEqual(CUDAEmulator.refusals, [])
    }

    // MARK: a tiny DiT

    static func config(_ type: String, textDim: Int) -> WanDiTConfig {
        WanDiTConfig(modelType: type, textLen: 16, inDim: type == "t2v" ? 16 : 36, dim: 128, ffnDim: 256, freqDim: 256,
                     textDim: textDim, numHeads: 2, numLayers: 2)
    }

    static func input(_ config: WanDiTConfig) throws -> DiTInput {
        let image = config.hasImageInput
        let rand = RandomWeights(shapes: [("x", [16, 3, 4, 6]), ("y", [20, 3, 4, 6]), ("c", [5, config.textDim]), ("clip", [1, 257, 1280])], seed: 11)
        return DiTInput(x: try rand.float32("x"), t: 613, context: try rand.float32("c"),
                        y: image ? try rand.float32("y") : nil, clipFeatures: image ? try rand.float32("clip") : nil)
    }

    static func relL2(_ a: Tensor, _ b: Tensor) -> Double {
        var diff = 0.0, norm = 0.0
        for i in 0..<a.count { let d = Double(a.data[i]) - Double(b.data[i]); diff += d * d; norm += Double(b.data[i]) * Double(b.data[i]) }
        return (diff / norm).squareRoot()
    }

    /// The bound on the DiT's output, fp8 products against the bf16 dequantisation of the same weights (the weights
    /// are the same: only the activations are quantised). Quantising an activation to e4m3 keeps 3 mantissa bits: a
    /// relative error of at most 2^-4, about 2.5% rms over values spread across a binade; each product's output
    /// inherits about that (the weights are exact, the errors of the k terms average), and the blocks add their
    /// products to an f32 residual stream that the errors do not compound through fully. 0.08 is 3x the per-product
    /// error; a wrong scale, a lost bias or a transposed operand costs O(1).
    static let ditBound = 0.08

    /// Every 2-D matrix e4m3 (FP8ScaledSource over random weights: scale max|w| / 448 each), text_dim 72 so
    /// text_embedding.0 (k = 72) falls back: fp8 products against the same weights through the dequantisation.
    func testTinyDiTWithFP8ProductsAgainstTheDequantisedPath() throws {
        let (context, compiler, cleanup) = try emulatedGPU()
        defer { cleanup() }
        for type in ["t2v", "i2v"] {
            let config = Self.config(type, textDim: 72)
            let source = FP8ScaledSource(RandomWeights(shapes: config.parameterShapes(), seed: type == "t2v" ? 3 : 4))
            let input = try Self.input(config)
            let fp8 = try CUDADiT(config: config, weights: source, precision: .bf16, context: context, compiler: compiler, fp8Products: true)
            let bf16 = try CUDADiT(config: config, weights: source, precision: .bf16, context: context, compiler: compiler)
            let got = try fp8.forward(input), want = try bf16.forward(input)
            XCTAssertTrue(Array(got.buffer).allSatisfy(\.isFinite))
            let rel = Self.relL2(got, want)
            // Per block: self q/k/v/o, cross q/k/v/o (+ k_img/v_img), ffn.0/ffn.2; text_embedding.2; img_emb 1 and 3.
            let perBlock = type == "t2v" ? 10 : 12
            let expected = config.numLayers * perBlock + 1 + (type == "i2v" ? 2 : 0)
            print("tiny \(type) DiT, fp8 products vs bf16 dequantisation: rel_l2 \(String(format: "%.4f", rel)) (\(fp8.gemm.fp8ProductCount) fp8 products, fallbacks \(fp8.gemm.fp8Fallbacks))")
            XCTAssertEqual(fp8.gemm.fp8ProductCount, expected)
            XCTAssertEqual(fp8.gemm.fp8Fallbacks, ["128x72"])
            XCTAssertGreaterThan(rel, 1e-4, "the fp8 path changed nothing")
            XCTAssertLessThan(rel, Self.ditBound)
        }
        XCTAssertEqual(CUDAEmulator.refusals, [])
    }

    /// The same through a ComfyUI fp8_scaled file read by the loader (e4m3 matrices with scale_weight, the FFN's
    /// second matrices e5m2, which stay on the dequantisation path).
    func testFP8ScaledFileWithFP8Products() throws {
        let (context, compiler, cleanup) = try emulatedGPU()
        defer { cleanup() }
        let config = Self.config("t2v", textDim: 64)
        let path = try CUDACompactWeightTests.writeFP8Scaled(config, seed: 7)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let source = try openDiTWeights(path: path).source
        let input = try Self.input(config)
        let fp8 = try CUDADiT(config: config, weights: source, precision: .bf16, context: context, compiler: compiler, fp8Products: true)
        let bf16 = try CUDADiT(config: config, weights: source, precision: .bf16, context: context, compiler: compiler)
        let rel = Self.relL2(try fp8.forward(input), try bf16.forward(input))
        print("tiny t2v DiT from an fp8_scaled file, fp8 products vs bf16 dequantisation: rel_l2 \(String(format: "%.4f", rel)) (\(fp8.gemm.fp8ProductCount) fp8 products)")
        XCTAssertEqual(fp8.gemm.fp8ProductCount, config.numLayers * 9 + 2)  // every e4m3 matrix but ffn.2 (e5m2)
        XCTAssertEqual(fp8.gemm.fp8Fallbacks, [])
        XCTAssertGreaterThan(rel, 1e-4)
        XCTAssertLessThan(rel, Self.ditBound)
        XCTAssertEqual(CUDAEmulator.refusals, [])
    }
}
