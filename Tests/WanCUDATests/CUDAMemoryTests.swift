import Foundation
import XCTest
import WanCUDA
import WanModels

/// The GPU memory pre-flight of a DiT job (`CUDADiTMemory`): what it counts, the budgets, the refusal.
final class CUDAMemoryTests: XCTestCase {
    func testFourteenB720PStepFitsIn40GiB() {
        // 1280x720x81: 21 x 45 x 80 = 75600 tokens; bf16 weights (28.6 GB) + activations + two conditionings.
        let m = CUDADiTMemory(config: .t2v14B, precision: .bf16, tokens: 75600)
        XCTAssertEqual(m.weights, CUDADiTPlan.weightBytes(.t2v14B, precision: .bf16))
        XCTAssertGreaterThan(m.weights, 28_000_000_000)
        XCTAssertEqual(m.workspace, CUDADiTPlan(config: .t2v14B, tokens: 75600, patchLength: 64, precision: .bf16).workspace.totalBytes)
        XCTAssertLessThan(m.total, 40 << 30, "\(m)")
        // The 1.3B at 832x480x81 (32760 tokens) within 8 GiB.
        let small = CUDADiTMemory(config: .t2v1_3B, precision: .bf16, tokens: 32760)
        XCTAssertLessThan(small.total, 8 << 30, "\(small)")
        for (name, plan) in [("14B 1280x720x81", m), ("14B 832x480x81", CUDADiTMemory(config: .t2v14B, precision: .bf16, tokens: 32760)),
                             ("1.3B 832x480x81", small)] {
            print(String(format: "DiT job %@ bf16 planned: %.2f GiB (%@)", name, Double(plan.total) / 1_073_741_824, plan.description))
        }
        // f32 about doubles the weights (the few matrices the official code keeps in f32 are f32 in both); image
        // tasks add the CLIP tokens' keys and values.
        let f32 = CUDADiTMemory(config: .t2v1_3B, precision: .f32, tokens: 32760).weights
        XCTAssertEqual(f32, 4 * WanDiTConfig.t2v1_3B.parameterShapes().reduce(0) { $0 + $1.1.reduce(1, *) })
        XCTAssertLessThan(small.weights, f32 * 51 / 100)
        XCTAssertGreaterThan(CUDADiTMemory(config: .i2v14B, precision: .bf16, tokens: 32760, imageRows: 257).conditioning,
                             CUDADiTMemory(config: .t2v14B, precision: .bf16, tokens: 32760).conditioning)
        // fp8 products quantise each product's input: the largest is [L, dim] at 1280x720 (387 MB, one byte each), the
        // FFN chunk's [ffnChunkRows, ffn_dim] at the 1.3B's 480P.
        let fp8 = CUDADiTMemory(config: .t2v14B, precision: .bf16, tokens: 75600, fp8Products: true)
        XCTAssertEqual(fp8.workspace - m.workspace, 75600 * 5120)
        let plan = CUDADiTPlan(config: .t2v1_3B, tokens: 32760, patchLength: 64, precision: .bf16)
        XCTAssertEqual(CUDADiTMemory(config: .t2v1_3B, precision: .bf16, tokens: 32760, fp8Products: true).workspace - small.workspace,
                       max(32760 * 1536, plan.ffnChunkRows * 8960))
    }

    func testAJobThatCannotFitIsRefusedNamingNeededAndFree() throws {
        do { _ = try NVRTC.load() } catch { throw XCTSkip("NVRTC not available (the emulated context needs it): \(error)") }
        CUDAEmulator.install()
        defer { CUDAEmulator.uninstall() }
        let context = try CUDAContext()
        // The emulated GPU has 80 GiB: 14B at f32 over 400k tokens cannot fit, the 1.3B at 480P can.
        XCTAssertNoThrow(try CUDADiTMemory(config: .t2v1_3B, precision: .bf16, tokens: 32760).check(on: context))
        let huge = CUDADiTMemory(config: .t2v14B, precision: .f32, tokens: 400_000)
        XCTAssertThrowsError(try huge.check(on: context)) { error in
            guard case CUDAError.outOfMemory(let needed, let free, _) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(needed, huge.total)
            XCTAssertLessThan(free, needed)
            XCTAssertTrue("\(error)".contains("out of GPU memory: needs"), "\(error)")
        }
    }
}
