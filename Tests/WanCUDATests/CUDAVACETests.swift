import Foundation
import XCTest
import WanCUDA
import WanModels
import WanTensor
import WanWeights

/// The VACE DiT on the GPU (`CUDAVACE`) against the CPU `WanVACEDiT`, through the CPU emulator of libcuda and
/// cuBLASLt: f32 at the CPU path's precision, bf16 within 2e-2, every trace the CPU model gives (the hints included).
final class CUDAVACETests: XCTestCase {
    static let golden = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../../shared/golden").standardized.path

    func emulator() throws -> (context: CUDAContext, compiler: KernelCompiler, cache: String) {
        do { _ = try NVRTC.load() } catch { throw XCTSkip("NVRTC not available (the emulator still compiles the kernels): \(error)") }
        CUDAEmulator.install()
        CUDAEmulator.refusals = []
        let cache = FileManager.default.temporaryDirectory.appendingPathComponent("wankit-vace-emulator-cache-\(getpid())").path
        return (try CUDAContext(ordinal: 0), try KernelCompiler(cacheDirectory: cache), cache)
    }

    /// Runs `cpu` and `CUDAVACE` (f32 and bf16) on one input and compares the outputs and every CPU trace.
    func compare(_ cpu: WanVACEDiT, _ weights: WeightSource, x: Tensor, t: Float, context text: Tensor, vaceContext: Tensor, scale: Float,
                 f32Tolerance: Double, label: String) throws {
        let (context, compiler, cache) = try emulator()
        defer { CUDAEmulator.uninstall(); try? FileManager.default.removeItem(atPath: cache) }
        var expectedTrace: [String: Tensor] = [:]
        let expected = try cpu.forward(x: x, t: t, context: text, vaceContext: vaceContext, scale: scale) { expectedTrace[$0] = $1 }
        let hints = expectedTrace.keys.filter { $0.hasPrefix("vace_hint") }
        XCTAssertEqual(hints.count, Set(cpu.config.vaceLayers).count, "\(label): \(hints.sorted())")
        XCTAssertNotNil(expectedTrace["vace_patch_tokens"])
        XCTAssertNotNil(expectedTrace["vace_block0_self_attn"])
        for (precision, tolerance) in [(CUDAPrecision.f32, f32Tolerance), (.bf16, 2e-2)] {
            let gpu = try CUDAVACE(config: cpu.config, weights: weights, precision: precision, context: context, compiler: compiler)
            // The pre-flight counts the weights as uploaded (both models, the shared tensors once, the projections).
            let p = cpu.config.dit.patchSize
            let tokens = (x.shape[1] / p[0]) * (x.shape[2] / p[1]) * (x.shape[3] / p[2])
            let memory = CUDAVACEMemory(config: cpu.config, precision: precision, tokens: tokens, weights: weights)
            XCTAssertEqual(memory.weights, gpu.weightBytes, "\(label) \(precision)")
            XCTAssertGreaterThan(memory.workspace, 0)
            var trace: [String: Tensor] = [:]
            let got = try gpu.forward(x: x, t: t, context: text, vaceContext: vaceContext, scale: scale) { trace[$0] = $1 }
            XCTAssertEqual(got.shape, expected.shape)
            let cmp = Comparison(got: UnsafeBufferPointer(got.buffer), expected: UnsafeBufferPointer(expected.buffer))
            XCTAssertLessThanOrEqual(cmp.relL2, tolerance, "\(label) \(precision): \(cmp)")
            for (name, e) in expectedTrace {
                guard let g = trace[name] else { XCTFail("\(label) \(precision): no trace \(name)"); continue }
                XCTAssertEqual(g.count, e.count, name)
                guard g.count == e.count else { continue }
                let c = Comparison(got: UnsafeBufferPointer(g.buffer), expected: UnsafeBufferPointer(e.buffer))
                XCTAssertLessThanOrEqual(c.relL2, tolerance, "\(label) \(precision) \(name): \(c)")
            }
            // A prepared conditioning is reusable: the same output again, through the VACEDenoiser seam too.
            let prepared = try gpu.prepareConditioning(text: text)
            let again = try gpu.velocity(x: x, t: t, conditioning: prepared, vaceContext: vaceContext, scale: scale)
            XCTAssertEqual(Array(again.buffer), Array(got.buffer), "\(label) \(precision)")
            XCTAssertThrowsError(try gpu.velocity(x: x, t: t, conditioning: try cpu.prepareConditioning(text: text), vaceContext: vaceContext, scale: scale))
            gpu.releaseActivations()
        }
        XCTAssertEqual(CUDAEmulator.refusals, [], "launches or products the emulator refused")
    }

    /// The golden dit_vace model (2 layers, vace_layers [0]) on the dit_vace_scale input (scale 0.5).
    func testCUDAVACEOnTheEmulatorMatchesTheCPUOnTheGoldenModel() throws {
        let weightsPath = Self.golden + "/weights/dit_vace.safetensors"
        guard FileManager.default.fileExists(atPath: weightsPath) else { throw XCTSkip("golden data not found at \(Self.golden)") }
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Self.golden + "/weights/dit_vace.json"))) as! [String: Any]
        let source = try SafetensorsSource(path: weightsPath)
        let cpu = try WanVACEDiT(weights: source, arguments: json["config"] as? [String: Any])
        let inputs = try SafetensorsSource(path: Self.golden + "/cases/dit_vace_scale.safetensors")
        try compare(cpu, source, x: try inputs.float32("in.x"), t: try inputs.float32("in.t").data[0], context: try inputs.float32("in.context"),
                    vaceContext: try inputs.float32("in.vace_context"), scale: 0.5, f32Tolerance: 1e-5, label: "golden")
    }

    /// Random weights with three main blocks and vace_layers [0, 2, 1] (hint 1 is made at block 1 and waits for
    /// block 2), head_dim 64.
    func testCUDAVACEOnTheEmulatorMatchesTheCPUWithHintsOutOfOrder() throws {
        var dit = WanDiTConfig(modelType: "vace", textLen: 16, inDim: 16, dim: 128, ffnDim: 256, freqDim: 256, textDim: 64, numHeads: 2, numLayers: 3)
        dit.modelType = "vace"
        let config = WanVACEConfig(dit: dit, vaceLayers: [0, 2, 1], vaceInDim: 24)
        var vaceDiT = dit
        vaceDiT.modelType = "t2v"; vaceDiT.numLayers = 3; vaceDiT.inDim = 24
        var shapes = dit.parameterShapes()
        for (name, shape) in vaceDiT.parameterShapes() {
            if name.hasPrefix("blocks.") { shapes.append(("vace_" + name, shape)) }
            if name.hasPrefix("patch_embedding.") { shapes.append(("vace_" + name, shape)) }
        }
        for k in 0..<3 {
            if config.vaceLayers[k] == 0 {
                shapes += [("vace_blocks.\(k).before_proj.weight", [128, 128]), ("vace_blocks.\(k).before_proj.bias", [128])]
            }
            shapes += [("vace_blocks.\(k).after_proj.weight", [128, 128]), ("vace_blocks.\(k).after_proj.bias", [128])]
        }
        let weights = RandomWeights(shapes: shapes, seed: 11)
        let cpu = try WanVACEDiT(config: config, weights: weights)
        let rand = RandomWeights(shapes: [("x", [16, 2, 4, 6]), ("v", [24, 2, 4, 6]), ("c", [5, 64])], seed: 5)
        try compare(cpu, weights, x: try rand.float32("x"), t: 613, context: try rand.float32("c"), vaceContext: try rand.float32("v"),
                    scale: 0.75, f32Tolerance: 1e-5, label: "random")
    }
}
