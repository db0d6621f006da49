import Foundation
import XCTest
import WanCUDA
import WanModels
import WanTensor
import WanWeights

/// The CLIP tower on the GPU (`CUDACLIP`) against the CPU `CLIPVision`, run on `CUDAEmulator` (upload of the split
/// q/k/v, the per-image attention segments, launch shapes, the order of operations).
final class CUDACLIPTests: XCTestCase {
    func testCLIPOnTheEmulatorMatchesTheCPUTower() throws {
        do { _ = try NVRTC.load() } catch { throw XCTSkip("NVRTC not available (the emulator compiles the kernels): \(error)") }
        let path = CUDAUMT5Tests.golden + "/weights/clip_visual.safetensors"
        guard FileManager.default.fileExists(atPath: path) else { throw XCTSkip("golden data not found at \(CUDAUMT5Tests.golden)") }
        CUDAEmulator.install()
        defer { CUDAEmulator.uninstall() }
        CUDAEmulator.refusals = []
        let weights = try openCLIPWeights(path: path)
        let cpu = try CLIPVision(weights: weights.source, arguments: weights.arguments ?? [:])
        // Two images of different sizes (FLF2V's first and last frame), [3, 1, H, W] in [-1, 1].
        func image(_ h: Int, _ w: Int, seed: Int) -> Tensor {
            Tensor(shape: [3, 1, h, w], values: (0..<(3 * h * w)).map { Float(sin(Double($0 * seed) * 0.013)) })
        }
        let images = [image(40, 56, seed: 3), image(33, 29, seed: 7)]
        let expected = try cpu.visual(images)
        for (precision, tolerance) in [(CUDAPrecision.f32, 1e-5), (.bf16, 2e-2)] {
            let gpu = try CUDACLIP(weights: weights.source, arguments: weights.arguments ?? [:], precision: precision)
            XCTAssertEqual(gpu.config, cpu.config)
            let got = try gpu.visual(images)
            XCTAssertEqual(got.shape, expected.shape)
            let c = Comparison(got: UnsafeBufferPointer(got.buffer), expected: UnsafeBufferPointer(expected.buffer))
            XCTAssertLessThanOrEqual(c.relL2, tolerance, "\(precision): \(c)")
            XCTAssertThrowsError(try gpu.forward(pixels: Tensor(zeros: [1, 3, 8, 8])))
        }
        XCTAssertEqual(CUDAEmulator.refusals, [], "launches the emulator refused")
    }
}
