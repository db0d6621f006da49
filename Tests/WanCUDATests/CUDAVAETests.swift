import Foundation
import XCTest
import WanCUDA
import WanModels
import WanTensor
import WanWeights

/// The CUDA Wan-VAE against the CPU `WanVAE`: on the CPU emulator of libcuda and cuBLASLt (host side: weight
/// reordering, im2col arguments and chunks, cuBLASLt strides and accumulation, the causal state), and on a GPU where
/// one exists (a visible skip elsewhere).
final class CUDAVAETests: XCTestCase {
    /// A tiny VAE with attention at every level's scale 0.5 besides the middle blocks (so the encoder and decoder
    /// both run attention blocks inside their samplers), random weights.
    func tinyVAE(dim: Int = 8) throws -> (WanVAEConfig, RandomWeights, WanVAE) {
        var config = WanVAEConfig()
        config.dim = dim
        config.attnScales = [0.5]
        let weights = RandomWeights(synthesizingWithSeed: 11)
        return (config, weights, try WanVAE(config: config, weights: weights))
    }

    func random(_ shape: [Int], seed: UInt64, scale: Float) throws -> Tensor {
        let t = try RandomWeights(shapes: [("t", shape)], seed: seed).float32("t")
        // RandomWeights fills 1-D-like tensors in ±1/sqrt(fan_in): rescale to ±scale.
        var top: Float = 0
        for i in 0..<t.count { top = max(top, abs(t.data[i])) }
        for i in 0..<t.count { t.data[i] *= scale / max(top, 1e-12) }
        return t
    }

    func emulatorOrSkip() throws -> (CUDAContext, KernelCompiler, String) {
        do { _ = try NVRTC.load() } catch { throw XCTSkip("NVRTC not available (the emulator still compiles the kernels): \(error)") }
        CUDAEmulator.install()
        CUDAEmulator.refusals = []
        let context = try CUDAContext(ordinal: 0)
        XCTAssertTrue(context.info.name.contains("emulator"), context.info.name)
        let cache = FileManager.default.temporaryDirectory.appendingPathComponent("wankit-vae-emulator-cache-\(getpid())").path
        return (context, try KernelCompiler(cacheDirectory: cache), cache)
    }

    func assertClose(_ got: Tensor, _ expected: Tensor, _ tolerance: Double, _ what: String) {
        XCTAssertEqual(got.shape, expected.shape, what)
        guard got.shape == expected.shape else { return }
        let cmp = Comparison(got: UnsafeBufferPointer(got.buffer), expected: UnsafeBufferPointer(expected.buffer))
        var norm = 0.0
        for v in expected.buffer { norm += Double(v) * Double(v) }
        print("CUDAVAE \(what): \(cmp) (reference rms \(String(format: "%.3f", (norm / Double(expected.count)).squareRoot())))")
        XCTAssertLessThanOrEqual(cmp.relL2, tolerance, "\(what): \(cmp)")
    }

    /// Decode and encode on the emulator equal the CPU VAE at f32 (1e-5), with the columns whole and in many small
    /// chunks, and with cuBLASLt's bias epilogue and with the bias_act fallback; bf16 (columns and weights of the
    /// 3x3/temporal convs rounded to bf16) within 2e-2, as the DiT's bf16 path.
    func testCUDAVAEOnTheEmulatorMatchesTheCPUVAE() throws {
        let (context, compiler, cache) = try emulatorOrSkip()
        defer { CUDAEmulator.uninstall(); CUDAEmulator.refuseFusedEpilogues = false; try? FileManager.default.removeItem(atPath: cache) }
        let (config, weights, cpu) = try tinyVAE()
        let latent = try random([16, 3, 4, 6], seed: 3, scale: 3)
        let video = try random([3, 9, 32, 48], seed: 4, scale: 1)
        let expectedVideo = try cpu.decode(latent)
        let expectedLatent = try cpu.encode(video)
        for (precision, tolerance, budget, refuse) in [(CUDAPrecision.f32, 1e-5, 512 << 20, false), (.f32, 1e-5, 6000, true), (.bf16, 2e-2, 512 << 20, false),
                                                       (.bf16, 2e-2, 5000, true)] {
            CUDAEmulator.refuseFusedEpilogues = refuse
            let gpu = try CUDAVAE(config: config, weights: weights, precision: precision, context: context, compiler: compiler)
            gpu.columnBudgetBytes = budget
            assertClose(try gpu.decode(latent), expectedVideo, tolerance, "\(precision) decode (columns \(budget) B, fused bias \(!refuse))")
            assertClose(try gpu.encode(video), expectedLatent, tolerance, "\(precision) encode (columns \(budget) B, fused bias \(!refuse))")
        }
        XCTAssertEqual(CUDAEmulator.refusals, [], "launches or products the emulator refused")
    }

    /// The implicit-GEMM conv kernel (bf16, channels multiples of 32) in place of im2col + cuBLASLt gives the same
    /// VAE (the same bf16 roundings, another summation order) on a VAE whose stages have 32, 64 and 128 channels.
    func testImplicitConvolutionEqualsTheColumnsPath() throws {
        let (context, compiler, cache) = try emulatorOrSkip()
        defer { CUDAEmulator.uninstall(); try? FileManager.default.removeItem(atPath: cache) }
        var config = WanVAEConfig()
        config.dim = 32
        config.dimMult = [1, 2, 4]
        config.temporalDownsample = [true, true]
        let weights = RandomWeights(synthesizingWithSeed: 12)
        let cpu = try WanVAE(config: config, weights: weights)
        let columns = try CUDAVAE(config: config, weights: weights, precision: .bf16, context: context, compiler: compiler)
        let implicit = try CUDAVAE(config: config, weights: weights, precision: .bf16, context: context, compiler: compiler)
        implicit.implicitConvolution = true
        let latent = try random([16, 3, 2, 3], seed: 7, scale: 3)
        let video = try random([3, 9, 8, 12], seed: 8, scale: 1)
        let viaColumns = try columns.decode(latent), viaColumnsLatent = try columns.encode(video)
        assertClose(try implicit.decode(latent), viaColumns, 1e-5, "implicit vs columns decode (bf16)")
        assertClose(try implicit.encode(video), viaColumnsLatent, 1e-5, "implicit vs columns encode (bf16)")
        assertClose(try implicit.decode(latent), try cpu.decode(latent), 2e-2, "implicit bf16 decode vs CPU")
        XCTAssertEqual(CUDAEmulator.refusals, [])
    }

    /// Streaming: chunks come per latent frame (1, then 4 frames) and equal the whole decode; the device memory in
    /// use stops growing after the first frames (the state is the causal history, not the video); the streaming
    /// encode reads frames one at a time with bounded memory too.
    func testCUDAVAEStreamsWithBoundedState() throws {
        let (context, compiler, cache) = try emulatorOrSkip()
        defer { CUDAEmulator.uninstall(); try? FileManager.default.removeItem(atPath: cache) }
        let (config, weights, _) = try tinyVAE(dim: 4)
        let gpu = try CUDAVAE(config: config, weights: weights, context: context, compiler: compiler)
        let latent = try random([16, 7, 2, 3], seed: 5, scale: 3)
        var chunks: [(Tensor, Int)] = []
        var inUse: [Int] = []
        try gpu.decode(latent) { chunk, first in
            chunks.append((chunk, first))
            inUse.append(CUDAEmulator.allocatedBytes)
        }
        XCTAssertEqual(chunks.map { $0.1 }, [0, 1, 5, 9, 13, 17, 21])
        XCTAssertEqual(chunks.map { $0.0.shape[1] }, [1, 4, 4, 4, 4, 4, 4])
        XCTAssertEqual(concatenateFrames(chunks.map { $0.0 }).array, try gpu.decode(latent).array)
        XCTAssertEqual(Set(inUse[3...]).count, 1, "device memory grows with the frames: \(inUse)")

        var reads: [Int] = []
        var encodeInUse: [Int] = []
        let video = try random([3, 17, 16, 24], seed: 6, scale: 1)
        let (T, H, W) = (17, 16, 24)
        let streamed = try gpu.encode(frames: T, height: H, width: W) { index, planar in
            reads.append(index)
            encodeInUse.append(CUDAEmulator.allocatedBytes)
            for ch in 0..<3 { (planar + ch * H * W).update(from: video.data + (ch * T + index) * H * W, count: H * W) }
        }
        XCTAssertEqual(reads, Array(0..<T))
        XCTAssertEqual(Set(encodeInUse[9...]).count, 1, "device memory grows with the frames: \(encodeInUse)")
        XCTAssertEqual(streamed.array, try gpu.encode(video).array)
        XCTAssertEqual(streamed.shape, [16, 5, 2, 3])
        XCTAssertEqual(CUDAEmulator.refusals, [])
    }

    /// At bf16 the causal state is kept in bf16: between latent frames (the pool keeping nothing free) the device
    /// holds about half the bytes it holds at f32, and at most `decodeStateBytes` with the state's size per value.
    func testBF16KeepsTheCausalStateInBF16() throws {
        let (context, compiler, cache) = try emulatorOrSkip()
        defer { CUDAEmulator.uninstall(); try? FileManager.default.removeItem(atPath: cache) }
        let (config, weights, _) = try tinyVAE(dim: 4)
        let latent = try random([16, 4, 6, 8], seed: 9, scale: 3)
        var held: [CUDAPrecision: Int] = [:]
        for precision in [CUDAPrecision.f32, .bf16] {
            let gpu = try CUDAVAE(config: config, weights: weights, precision: precision, context: context, compiler: compiler)
            gpu.pool.keepFreeBytes = 0
            var most = 0
            try gpu.decode(latent) { _, _ in most = max(most, gpu.pool.allocatedBytes) }
            let estimate = config.decodeStateBytes(width: 64, height: 48, stateValueBytes: CUDAVAE.stateType(precision).size)
            print("CUDAVAE \(precision) decode 64x48: \(most) bytes held between latent frames, estimate \(estimate)")
            XCTAssertLessThanOrEqual(most, estimate, "\(precision)")
            held[precision] = most
        }
        XCTAssertLessThan(Double(held[.bf16]!), 0.55 * Double(held[.f32]!), "\(held)")
        XCTAssertEqual(CUDAEmulator.refusals, [])
    }

    /// Bad inputs are refused with WanVAE's messages; the emulated im2col refuses launches past its 32-bit range and the
    /// emulated cuBLASLt pointers less aligned than promised.
    func testCUDAVAERefusesBadInputs() throws {
        let (context, compiler, cache) = try emulatorOrSkip()
        defer { CUDAEmulator.uninstall(); try? FileManager.default.removeItem(atPath: cache) }
        let (config, weights, _) = try tinyVAE(dim: 4)
        let gpu = try CUDAVAE(config: config, weights: weights, context: context, compiler: compiler)
        XCTAssertThrowsError(try gpu.encode(Tensor(zeros: [3, 0, 32, 32]))) { XCTAssertTrue("\($0)".contains("no frames"), "\($0)") }
        XCTAssertThrowsError(try gpu.encode(Tensor(zeros: [3, 5, 4, 32]))) { XCTAssertTrue("\($0)".contains("at least 8x8"), "\($0)") }
        XCTAssertThrowsError(try gpu.decode(Tensor(zeros: [8, 1, 4, 4]))) { XCTAssertTrue("\($0)".contains("[16"), "\($0)") }
        let col = try context.allocate(bytes: 64), x = try context.allocate(bytes: 64)
        XCTAssertThrowsError(try gpu.ops.function("vae_im2col_f32").launch(grid: (1, 1, 1), block: (256, 1, 1), [
            .buffer(col), .buffer(x), .pointer(0), .pointer(0), .int32(1), .int32(2), .int32(2), .int32(4), .int32(0), .int32(2),
            .int32(3), .int32(3), .int32(1), .int32(1), .int32(1), .int64(0), .int64(1 << 27), .int32(0)]))
        XCTAssertEqual(CUDAEmulator.refusals.count, 1, "\(CUDAEmulator.refusals)")
        // The emulated cuBLASLt holds pointers to the alignment the heuristic was told (256 bytes unless told less).
        let gemm = try CUDAMatmul(context: context)
        let buffer = try context.allocate(bytes: 4 * 1024)
        XCTAssertThrowsError(try gemm.linear(m: 8, n: 8, k: 8, x: buffer.pointer + 4, w: buffer.pointer + 1024, bias: 0, y: buffer.pointer + 2048,
                                             input: .f32, output: .f32))
        XCTAssertEqual(CUDAEmulator.refusals.count, 2, "\(CUDAEmulator.refusals)")
        XCTAssertTrue(CUDAEmulator.refusals.last?.contains("B is not aligned to the 256 bytes") == true, "\(CUDAEmulator.refusals)")
    }

    /// The parameter count of the architecture walk equals the golden VAE file's (dim 8), checked at every layer kind;
    /// the device estimate at 832x480 is the f32 weights (0.5 GB) + columns + the middle attention's 6240² scores.
    func testParameterCountAndDeviceEstimate() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../../shared/golden/weights/vae.safetensors").standardized.path
        guard FileManager.default.fileExists(atPath: path) else { throw XCTSkip("no golden VAE at \(path)") }
        let file = try SafetensorsFile(path: path)
        let stored = file.tensors.values.reduce(0) { $0 + $1.shape.reduce(1, *) }
        var tiny = WanVAEConfig()
        tiny.dim = 8
        XCTAssertEqual(tiny.parameterCount, stored)
        XCTAssertEqual(WanVAEConfig.wan21.parameterCount, 126_892_531)
        XCTAssertEqual(WanVAEConfig.wan21.attentionPixelFactors, [1, 1])  // the middle blocks only
        let latent = (480 / 8) * (832 / 8)
        let f32 = CUDAVAE.fixedDeviceBytes(config: .wan21, latentPixels: latent, precision: .f32)
        XCTAssertEqual(f32, 126_892_531 * 4 + (512 << 20) + 4 * latent * latent + (32 << 20))
        XCTAssertGreaterThan(CUDAVAE.fixedDeviceBytes(config: .wan21, latentPixels: latent, precision: .bf16), f32)
        // Attention at scale 0.5 too: the encoder's two at 1/2 resolution (16x the latent's pixels), the middle
        // blocks, the decoder's three at 1/4 resolution.
        var c = WanVAEConfig()
        c.attnScales = [0.5]
        XCTAssertEqual(c.attentionPixelFactors, [16, 16, 1, 1, 4, 4, 4])
    }

    // MARK: on a GPU

    func testCUDAVAEMatchesTheCPUVAE() throws {
        let context: CUDAContext
        do {
            guard case .cuda(let gpu, _, _) = try ComputeDevice.cuda.resolve() else { throw XCTSkip("no GPU") }
            context = try CUDAContext(ordinal: gpu.ordinal)
        } catch let error as CUDAError {
            throw XCTSkip("no usable GPU, this GPU check did not run: \(ComputeDevice.shortReason(error))")
        }
        let (config, weights, cpu) = try tinyVAE(dim: 32)
        let latent = try random([16, 3, 6, 10], seed: 3, scale: 3)
        let video = try random([3, 9, 48, 80], seed: 4, scale: 1)
        let expectedVideo = try cpu.decode(latent), expectedLatent = try cpu.encode(video)
        for (precision, implicit, tolerance) in [(CUDAPrecision.f32, false, 1e-4), (.bf16, false, 2e-2), (.bf16, true, 2e-2)] {
            let gpu = try CUDAVAE(config: config, weights: weights, precision: precision, context: context)
            gpu.implicitConvolution = implicit
            assertClose(try gpu.decode(latent), expectedVideo, tolerance, "GPU \(precision)\(implicit ? " implicit" : "") decode")
            assertClose(try gpu.encode(video), expectedLatent, tolerance, "GPU \(precision)\(implicit ? " implicit" : "") encode")
        }
    }
}
