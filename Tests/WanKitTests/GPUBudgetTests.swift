import Foundation
import XCTest
import WanCUDA
import WanModels
import WanKit

/// Issue #10, item 5: the 1.3B 480P pipeline within 8 GiB of GPU memory.
final class GPUBudgetTests: XCTestCase {
    /// The 1.3B t2v at 832x480x81 in bf16: the DiT's weights as uploaded and the VAE as `ModelLoader.vae(_:on:width:
    /// height:)` plans it beside them (`vaeDeviceBytes`: weights, columns, attention scores, cuBLASLt + the causal state
    /// in bf16, the larger of a decode and an encode; + the reserve) fit under 8 GiB. The state in bf16 is about half
    /// the f32 state.
    func testOneThreeBTextToVideoAt480PWithItsVAEFitsIn8GiB() {
        let (width, height) = (832, 480)
        let vae = WanVAEConfig.wan21
        let dit = CUDADiTPlan.weightBytes(.t2v1_3B, precision: .bf16)
        let planned = ModelLoader.vaeDeviceBytes(vae, width: width, height: height, precision: .bf16)
        let total = dit + planned.fixed + planned.state + CUDADiTMemory.reserveBytes
        let decodeF32 = vae.decodeStateBytes(width: width, height: height)
        let decodeBF16 = vae.decodeStateBytes(width: width, height: height, stateValueBytes: 2)
        let f32Planned = ModelLoader.vaeDeviceBytes(vae, width: width, height: height, precision: .f32)
        func gib(_ bytes: Int) -> String { String(format: "%.2f GiB (%.2f GB)", Double(bytes) / Double(1 << 30), Double(bytes) / 1e9) }
        print("""
            1.3B t2v 832x480x81 bf16 planned GPU memory:
              DiT weights as uploaded      \(gib(dit))
              VAE fixed (weights, columns, attention, cuBLASLt) \(gib(planned.fixed))
              VAE state (bf16; max of decode \(gib(decodeBF16)), encode)  \(gib(planned.state))
              reserve                      \(gib(CUDADiTMemory.reserveBytes))
              total                        \(gib(total))
            decode state f32 \(gib(decodeF32)) -> bf16 \(gib(decodeBF16)); VAE planned at f32 state \(gib(f32Planned.state))
            """)
        XCTAssertLessThan(total, 8 << 30)
        XCTAssertEqual(planned.state, decodeBF16)  // at 832x480 the decode holds more than the encode
        XCTAssertLessThan(Double(decodeBF16), 0.6 * Double(decodeF32))
        XCTAssertGreaterThan(dit + planned.fixed + f32Planned.state + CUDADiTMemory.reserveBytes, total + 1_500_000_000)
    }
}
