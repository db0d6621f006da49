import Foundation
import XCTest
import WanCUDA
import WanModels
import WanTensor
import WanWeights

/// The umT5 encoder on the GPU (`CUDAUMT5`) against the CPU `UMT5Encoder`, run on `CUDAEmulator` (the host side:
/// upload, the per-row segment arrays, the relative-position buckets, launch shapes, the order of operations).
final class CUDAUMT5Tests: XCTestCase {
    static let golden = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("shared/golden").path

    func testUMT5OnTheEmulatorMatchesTheCPUEncoder() throws {
        do { _ = try NVRTC.load() } catch { throw XCTSkip("NVRTC not available (the emulator compiles the kernels): \(error)") }
        let path = Self.golden + "/weights/t5.safetensors"
        guard FileManager.default.fileExists(atPath: path) else { throw XCTSkip("golden data not found at \(Self.golden)") }
        CUDAEmulator.install()
        defer { CUDAEmulator.uninstall() }
        CUDAEmulator.refusals = []
        let weights = try openT5Weights(path: path)
        let cpu = try UMT5Encoder(weights: weights.source, arguments: weights.arguments ?? [:])
        let vocab = cpu.config.vocab
        // Two prompts of different lengths; a padded batch with one all-padding sample (uniform attention).
        let prompts = [[5, 17, 300, 2, 1], Array((0..<37).map { ($0 * 13 + 7) % vocab })]
        let ids = Tensor(shape: [3, 9], values: (0..<27).map { Float(($0 * 29 + 3) % vocab) })
        var maskValues = [Float](repeating: 0, count: 27)
        for j in 0..<6 { maskValues[j] = 1 }
        for j in 9..<18 { maskValues[j] = 1 }
        let mask = Tensor(shape: [3, 9], values: maskValues)
        let expectedTokens = try cpu.encode(tokens: prompts)
        let expectedForward = try cpu.forward(ids: ids, mask: mask)
        for (precision, tolerance) in [(CUDAPrecision.f32, 1e-5), (.bf16, 2e-2)] {
            let gpu = try CUDAUMT5(weights: weights.source, arguments: weights.arguments ?? [:], precision: precision)
            XCTAssertEqual(gpu.config, cpu.config)
            let got = try gpu.encode(tokens: prompts)
            XCTAssertEqual(got.map(\.shape), expectedTokens.map(\.shape))
            for (g, e) in zip(got, expectedTokens) {
                let c = Comparison(got: UnsafeBufferPointer(g.buffer), expected: UnsafeBufferPointer(e.buffer))
                XCTAssertLessThanOrEqual(c.relL2, tolerance, "\(precision) tokens: \(c)")
            }
            let forward = try gpu.forward(ids: ids, mask: mask)
            XCTAssertEqual(forward.shape, [3, 9, cpu.config.dim])
            let c = Comparison(got: UnsafeBufferPointer(forward.buffer), expected: UnsafeBufferPointer(expectedForward.buffer))
            XCTAssertLessThanOrEqual(c.relL2, tolerance, "\(precision) forward: \(c)")
            XCTAssertThrowsError(try gpu.encode(tokens: [[vocab]]))
        }
        XCTAssertEqual(CUDAEmulator.refusals, [], "launches the emulator refused")
    }
}
