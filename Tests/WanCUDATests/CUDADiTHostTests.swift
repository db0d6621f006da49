import Foundation
import XCTest
import WanCUDA
import WanModels
import WanTensor
import WanWeights

/// Host-side logic of the CUDA DiT (no GPU needed): bf16 packing, the workspace plan, the memory estimates; and,
/// where a GPU exists, the CUDA DiT against the CPU WanDiT (a visible skip elsewhere).
final class CUDADiTHostTests: XCTestCase {
    func testBFloat16RoundsToNearestEven() {
        XCTAssertEqual(BFloat16.from(1.0), 0x3f80)
        XCTAssertEqual(BFloat16.from(-2.0), 0xc000)
        XCTAssertEqual(BFloat16.from(0), 0)
        // 1 + 2^-8 is halfway between 1 (0x3f80, even) and 1 + 2^-7 (0x3f81): to even.
        XCTAssertEqual(BFloat16.from(1 + 1.0 / 256), 0x3f80)
        // 1 + 3·2^-8 is halfway between 0x3f81 and 0x3f82 (even): up.
        XCTAssertEqual(BFloat16.from(1 + 3.0 / 256), 0x3f82)
        // Just above halfway rounds up.
        XCTAssertEqual(BFloat16.from(Float(bitPattern: 0x3f80_8001)), 0x3f81)
        XCTAssertEqual(BFloat16.from(.infinity), 0x7f80)
        XCTAssertEqual(BFloat16.from(-.infinity), 0xff80)
        XCTAssertEqual(BFloat16.from(.greatestFiniteMagnitude), 0x7f80)  // overflows to inf, as PyTorch does
        XCTAssertTrue(BFloat16.float(BFloat16.from(.nan)).isNaN)
        XCTAssertTrue(BFloat16.float(BFloat16.from(Float(bitPattern: 0x7f80_0001))).isNaN)  // a NaN whose top bits read inf
        for v: Float in [0.1, -3.14159, 1e-20, 65504, 1e30] {
            let r = BFloat16.float(BFloat16.from(v))
            XCTAssertLessThanOrEqual(abs(r - v), abs(v) / 256, "\(v) -> \(r)")
        }
        // The parallel pack equals the scalar conversion.
        let n = 200_003
        let values = (0..<n).map { Float(sin(Double($0) * 0.37)) * Float($0 % 97) }
        var packed = [UInt16](repeating: 0, count: n)
        values.withUnsafeBufferPointer { src in packed.withUnsafeMutableBufferPointer { BFloat16.pack(src.baseAddress!, into: $0.baseAddress!, count: n) } }
        XCTAssertEqual(packed, values.map(BFloat16.from))
    }

    func testWorkspacePlanAlignsAndNeverOverlaps() {
        var plan = WorkspacePlan()
        plan.add("a", bytes: 1)
        plan.add("b", bytes: 1000)
        plan.add("c", bytes: 0)
        plan.add("d", bytes: 513)
        XCTAssertEqual(plan.offset("a"), 0)
        XCTAssertEqual(plan.offset("b"), 256)
        XCTAssertEqual(plan.offset("c"), 1280)
        XCTAssertEqual(plan.offset("d"), 1280)
        XCTAssertEqual(plan.totalBytes, 1280 + 513)
        XCTAssertNil(plan.offset("e"))
        for r in plan.regions { XCTAssertEqual(r.offset % WorkspacePlan.alignment, 0, "\(r.name)") }
    }

    func testDiTPlanAt480PAnd720P() {
        // 1.3B at 832x480x81: 21 x 30 x 52 = 32760 tokens.
        let small = CUDADiTPlan(config: .t2v1_3B, tokens: 32760, patchLength: 64, precision: .bf16)
        XCTAssertEqual(small.ffnChunkRows, 29952)  // 512 MiB / (8960 x 2 bytes) = 29959 rows, down to a multiple of 256
        let w = small.workspace
        let regions = w.regions.sorted { $0.offset < $1.offset }
        for (a, b) in zip(regions, regions.dropFirst()) {
            XCTAssertLessThanOrEqual(a.offset + a.bytes, b.offset, "\(a.name) overlaps \(b.name)")
            XCTAssertEqual(b.offset % 256, 0)
        }
        XCTAssertEqual(w.bytes("x"), 4 * 32760 * 1536)
        XCTAssertEqual(w.bytes("q"), 2 * 32760 * 1536)
        XCTAssertEqual(w.bytes("hidden"), 2 * 29952 * 8960)
        XCTAssertEqual(w.bytes("head"), 4 * 32760 * 64)
        // x and normed in f32, q/k/v/attn in bf16, the FFN chunk: about 1.3 GB.
        XCTAssertLessThan(w.totalBytes, 1_400_000_000)
        XCTAssertGreaterThan(w.totalBytes, 1_200_000_000)
        // f32 doubles the activations but keeps the same chunk budget.
        let f32 = CUDADiTPlan(config: .t2v1_3B, tokens: 32760, patchLength: 64, precision: .f32)
        XCTAssertEqual(f32.ffnChunkRows, 14848)
        XCTAssertEqual(f32.workspace.bytes("q"), 4 * 32760 * 1536)
        // A short video runs its FFN whole.
        XCTAssertEqual(CUDADiTPlan(config: .t2v1_3B, tokens: 1560, patchLength: 64, precision: .bf16).ffnChunkRows, 1560)
        XCTAssertEqual(CUDADiTPlan.ffnChunkRows(tokens: 0, ffnDim: 10, elementSize: 2), 1)
        // 14B at 1280x720x81 (75600 tokens): weights + workspace + two contexts within the 40 GiB target.
        let big = CUDADiTPlan(config: .t2v14B, tokens: 75600, patchLength: 64, precision: .bf16)
        let weights = CUDADiTPlan.weightBytes(.t2v14B, precision: .bf16)
        let contexts = 2 * CUDADiTPlan.contextBytes(.t2v14B, precision: .bf16)
        let total = weights + big.workspace.totalBytes + contexts
        XCTAssertLessThan(Double(total) / 1_073_741_824, 40, "weights \(weights), workspace \(big.workspace.totalBytes), contexts \(contexts)")
        // The plan equals itself for the same shape (the forward keeps its workspace between steps) and differs otherwise.
        XCTAssertEqual(small, CUDADiTPlan(config: .t2v1_3B, tokens: 32760, patchLength: 64, precision: .bf16))
        XCTAssertNotEqual(small, CUDADiTPlan(config: .t2v1_3B, tokens: 32761, patchLength: 64, precision: .bf16))
    }

    func testWeightBytesCountF32WhereTheOfficialCodeKeepsF32() {
        let c = WanDiTConfig.t2v1_3B, d = c.dim
        let all = c.parameterCount
        XCTAssertEqual(CUDADiTPlan.weightBytes(c, precision: .f32), 4 * all)
        // f32 under bf16: patch embedding, time embedding and projection, head (weights and biases), head modulation;
        // per block the modulation, the four q/k norms and norm3's weight and bias.
        let f32Params = (d * 64 + d) + (d * c.freqDim + d) + (d * d + d) + (6 * d * d + 6 * d) + (64 * d + 64) + 2 * d
            + c.numLayers * (6 * d + 4 * d + 2 * d)
        XCTAssertEqual(CUDADiTPlan.weightBytes(c, precision: .bf16), 2 * all + 2 * f32Params)
        // The image projection: fc2's bias is f32 (an f32 output), emb_pos stays on the host.
        let i2v = CUDADiTPlan.weightBytes(.i2v14B, precision: .bf16), flf2v = CUDADiTPlan.weightBytes(.flf2v14B, precision: .bf16)
        XCTAssertEqual(flf2v, i2v)
    }

    func testDeviceMemoryPoolRoundsSizes() {
        XCTAssertEqual(DeviceMemoryPool.roundedSize(1), 256)
        XCTAssertEqual(DeviceMemoryPool.roundedSize(256), 256)
        XCTAssertEqual(DeviceMemoryPool.roundedSize(257), 512)
        XCTAssertEqual(DeviceMemoryPool.roundedSize((1 << 21) + 1), 2 << 21)
        XCTAssertEqual(DeviceMemoryPool.roundedSize(3 << 21), 3 << 21)
    }

    /// A two-layer DiT of `type` (t2v, i2v, flf2v) with random weights, its CPU model, and a random input for it:
    /// x [16, 3, height, width] at t = 731, 5 text rows, and for an image model y and the CLIP features of `images`
    /// images.
    func smallDiT(_ type: String, dim: Int, height: Int, width: Int, images: Int) throws
        -> (config: WanDiTConfig, weights: RandomWeights, cpu: WanDiT, input: DiTInput) {
        let config = WanDiTConfig(modelType: type, textLen: 16, inDim: type == "t2v" ? 16 : 36, dim: dim, ffnDim: 2 * dim, freqDim: 256,
                                  textDim: 64, numHeads: 2, numLayers: 2)
        let weights = RandomWeights(shapes: config.parameterShapes(), seed: 7)
        let cpu = try WanDiT(config: config, weights: weights)
        let rand = RandomWeights(shapes: [("x", [16, 3, height, width]), ("y", [20, 3, height, width]), ("c", [5, 64]),
                                          ("clip", [images, 257, 1280])], seed: 3)
        let input = DiTInput(x: try rand.float32("x"), t: 731, context: try rand.float32("c"),
                             y: type == "t2v" ? nil : try rand.float32("y"), clipFeatures: type == "t2v" ? nil : try rand.float32("clip"))
        return (config, weights, cpu, input)
    }

    // MARK: through the CPU emulator of libcuda and cuBLASLt

    /// The host side of CUDADiT (upload, workspace offsets, launch arguments and shapes, cuBLASLt layouts, the order
    /// of operations) run on `CUDAEmulator` against the CPU WanDiT: f32 exactly as the CPU path, bf16 within 2e-2,
    /// with cuBLASLt's fused epilogues and with the bias_act fallback.
    func testCUDADiTOnTheEmulatorMatchesTheCPUDiT() throws {
        do { _ = try NVRTC.load() } catch { throw XCTSkip("NVRTC not available (the emulator still compiles the kernels): \(error)") }
        CUDAEmulator.install()
        defer { CUDAEmulator.uninstall(); CUDAEmulator.refuseFusedEpilogues = false }
        CUDAEmulator.refusals = []
        guard case .cuda(let gpu, _, _) = try ComputeDevice.cuda.resolve() else { return XCTFail("the emulator is not seen as a GPU") }
        XCTAssertTrue(gpu.name.contains("emulator"), gpu.name)
        let context = try CUDAContext(ordinal: 0)
        let cache = FileManager.default.temporaryDirectory.appendingPathComponent("wankit-emulator-cache-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: cache) }
        let compiler = try KernelCompiler(cacheDirectory: cache)
        for type in ["t2v", "flf2v"] {
            let (config, weights, cpu, input) = try smallDiT(type, dim: 128, height: 4, width: 6, images: 2)
            var expectedTrace: [String: Tensor] = [:]
            let expected = try cpu.forward(input) { expectedTrace[$0] = $1 }
            for (precision, tolerance, refuse) in [(CUDAPrecision.f32, 1e-5, false), (.f32, 1e-5, true), (.bf16, 2e-2, false), (.bf16, 2e-2, true)] {
                CUDAEmulator.refuseFusedEpilogues = refuse
                let gpu = try CUDADiT(config: config, weights: weights, precision: precision, context: context, compiler: compiler)
                var trace: [String: Tensor] = [:]
                let got = try gpu.forward(input) { trace[$0] = $1 }
                XCTAssertEqual(got.shape, expected.shape)
                let cmp = Comparison(got: UnsafeBufferPointer(got.buffer), expected: UnsafeBufferPointer(expected.buffer))
                XCTAssertLessThanOrEqual(cmp.relL2, tolerance, "\(type) \(precision) fused epilogues \(!refuse): \(cmp)")
                // Every traced intermediate WanDiT gives (context_embedded: the padded official form on both).
                for (name, e) in expectedTrace {
                    guard let g = trace[name] else { XCTFail("\(type) \(precision): no trace \(name)"); continue }
                    XCTAssertEqual(g.count, e.count, name)
                    guard g.count == e.count else { continue }
                    let c = Comparison(got: UnsafeBufferPointer(g.buffer), expected: UnsafeBufferPointer(e.buffer))
                    XCTAssertLessThanOrEqual(c.relL2, tolerance, "\(type) \(precision) \(name): \(c)")
                }
                // The conditioning is reusable and a second forward with the same shapes reuses the workspace.
                let prepared = try gpu.prepare(context: input.context, clipFeatures: input.clipFeatures)
                let again = try gpu.forward(x: input.x, y: input.y, t: input.t, context: prepared)
                XCTAssertEqual(Array(again.buffer), Array(got.buffer))
                if refuse { XCTAssertEqual(gpu.gemm.isFused(m: 16, n: 128, k: 128, input: precision.activation, output: precision.activation, epilogue: .none, hasBias: true), false) }
            }
        }
        XCTAssertEqual(CUDAEmulator.refusals, [], "launches or products the emulator refused")
    }

    func testEmulatorRefusesLaunchesThatDoNotCoverTheWork() throws {
        do { _ = try NVRTC.load() } catch { throw XCTSkip("NVRTC not available: \(error)") }
        CUDAEmulator.install()
        defer { CUDAEmulator.uninstall() }
        CUDAEmulator.refusals = []
        let context = try CUDAContext(ordinal: 0)
        let cache = FileManager.default.temporaryDirectory.appendingPathComponent("wankit-emulator-cache2-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: cache) }
        let ops = try CUDAOps(context: context, compiler: try KernelCompiler(cacheDirectory: cache))
        let x = try context.allocate(bytes: 4 * 10 * 64)
        // rms_norm takes one block per row: 10 rows need 10 blocks.
        XCTAssertNoThrow(try ops.rmsNorm(.f32, out: x.pointer, x: x.pointer, weight: 0, rows: 10, dim: 64, eps: 1e-6) as Void)
        let norm = try ops.function("rms_norm_f32")
        XCTAssertThrowsError(try norm.launch(grid: (9, 1, 1), block: (256, 1, 1), [.buffer(x), .buffer(x), .pointer(0), .int32(10), .int32(64), .float(1e-6)]))
        XCTAssertEqual(CUDAEmulator.refusals.count, 1, "\(CUDAEmulator.refusals)")
        // A product whose layouts do not fit is refused by the emulated cuBLASLt too.
        let gemm = try CUDAMatmul(context: context)
        XCTAssertThrowsError(try gemm.linear(m: 10, n: 64, k: 64, x: x.pointer, w: x.pointer, bias: 0, y: x.pointer, input: .f32, output: .f32))  // w runs past x
    }

    // MARK: on a GPU

    /// A CUDA context, or a visible skip naming what is missing.
    func gpuOrSkip() throws -> CUDAContext {
        do {
            guard case .cuda(let gpu, _, _) = try ComputeDevice.cuda.resolve() else { throw XCTSkip("no GPU") }
            return try CUDAContext(ordinal: gpu.ordinal)
        } catch let error as CUDAError {
            throw XCTSkip("no usable GPU, this GPU check did not run: \(ComputeDevice.shortReason(error))")
        }
    }

    func testCUDADiTMatchesTheCPUDiT() throws {
        let context = try gpuOrSkip()
        for type in ["t2v", "i2v"] {
            let (config, weights, cpu, input) = try smallDiT(type, dim: 256, height: 6, width: 10, images: 1)
            let expected = try cpu.forward(input)
            for (precision, tolerance) in [(CUDAPrecision.f32, 1e-4), (.bf16, 2e-2)] {
                let gpu = try CUDADiT(config: config, weights: weights, precision: precision, context: context)
                let got = try gpu.forward(input)
                XCTAssertEqual(got.shape, expected.shape)
                let cmp = Comparison(got: UnsafeBufferPointer(got.buffer), expected: UnsafeBufferPointer(expected.buffer))
                print("CUDA DiT \(type) \(precision): \(cmp)")
                XCTAssertLessThanOrEqual(cmp.relL2, tolerance, "\(type) \(precision): \(cmp)")
            }
        }
    }

    func testMatmulAgainstTheCPU() throws {
        let context = try gpuOrSkip()
        let gemm = try CUDAMatmul(context: context)
        let ops = try CUDAOps(context: context)
        gemm.unfusedEpilogue = { type, y, bias, rows, cols, act in try ops.biasAct(type, y: y, bias: bias, rows: rows, cols: cols, act: act) }
        let (m, n, k) = (77, 96, 160)
        let rand = RandomWeights(shapes: [("x", [m, k]), ("w", [n, k]), ("b", [n])], seed: 5)
        let x = try rand.float32("x"), w = try rand.float32("w"), b = try rand.float32("b")
        for (type, epilogue, tolerance) in [(DeviceDType.f32, MatmulEpilogue.none, 1e-6), (.f32, .geluTanh, 1e-6), (.bf16, .none, 1e-2), (.bf16, .geluTanh, 1e-2)] {
            func upload(_ t: Tensor) throws -> DeviceBuffer {
                let buffer = try context.allocate(bytes: t.count * type.size)
                if type == .f32 { try buffer.upload(Array(UnsafeBufferPointer(t.buffer))) } else { try buffer.upload(t.buffer.map(BFloat16.from)) }
                return buffer
            }
            let dx = try upload(x), dw = try upload(w), db = try upload(b), dy = try context.allocate(bytes: m * n * type.size)
            try gemm.linear(m: m, n: n, k: k, x: dx.pointer, w: dw.pointer, bias: db.pointer, y: dy.pointer, input: type, output: type, epilogue: epilogue)
            if epilogue == .geluTanh && type == .f32 && gemm.isFused(m: m, n: n, k: k, input: type, output: type, epilogue: epilogue, hasBias: true) == false {
                print("cuBLASLt has no fused GELU+bias for f32 here: bias_act finished it")
            }
            try context.synchronize()
            let got: [Float] = type == .f32 ? try dy.download(count: m * n, as: Float.self) : try dy.download(count: m * n, as: UInt16.self).map(BFloat16.float)
            var diff = 0.0, norm = 0.0
            for i in 0..<m { for j in 0..<n {
                var s = Double(b.data[j])
                for kk in 0..<k { s += Double(x.data[i * k + kk]) * Double(w.data[j * k + kk]) }
                if epilogue == .geluTanh { s = 0.5 * s * (1 + tanh(0.7978845608028654 * (s + 0.044715 * s * s * s))) }
                diff += (Double(got[i * n + j]) - s) * (Double(got[i * n + j]) - s)
                norm += s * s
            } }
            let rel = (diff / norm).squareRoot()
            print("cuBLASLt \(type) \(epilogue): rel_l2 \(rel)")
            XCTAssertLessThanOrEqual(rel, tolerance, "\(type) \(epilogue)")
        }
    }
}
