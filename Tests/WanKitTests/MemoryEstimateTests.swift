import Foundation
import XCTest
import WanKit
import WanModels

/// The memory pre-flight of each task: monotonic in frames and size, every conditioned task at least text-to-video,
/// the encoder state from the architecture, the refusal message.
final class MemoryEstimateTests: XCTestCase {
    let shapes: [DiTShape] = [DiTShape(WanDiTConfig.t2v14B), DiTShape(WanDiTConfig.t2v1_3B)]

    func settings(_ w: Int, _ h: Int, _ f: Int) -> GenerationSettings {
        var s = GenerationSettings()
        s.width = w; s.height = h; s.frames = f
        return s
    }

    func estimate(_ task: GenerationTask, _ s: GenerationSettings, _ shape: DiTShape) -> MemoryEstimate {
        var dit = shape
        if task == .vace { dit.vaceBlocks = shape.numLayers / 2 }
        if task == .imageToVideo || task == .firstLastFrame { dit.inDim = 36 }
        let source = task == .vace || task == .videoToVideo ? MemoryEstimate.Source(width: 1920, height: 1080, hasMask: task == .vace) : nil
        return MemoryEstimate.estimate(task, files: ModelFiles(), settings: s, dit: dit, source: source, references: task == .vace ? 1 : 0)
    }

    func testEveryTaskGrowsWithFramesAndSize() {
        for shape in shapes {
            for task in GenerationTask.allCases {
                // The peak may be the decoder's, which does not depend on the frame count; the denoising does.
                let frames = [5, 21, 41, 81].map { estimate(task, settings(832, 480, $0), shape) }
                XCTAssertEqual(frames.map(\.peakBytes), frames.map(\.peakBytes).sorted(), "\(task)")
                XCTAssertEqual(frames.map(\.denoiseBytes), frames.map(\.denoiseBytes).sorted(), "\(task)")
                XCTAssertLessThan(frames[0].denoiseBytes, frames[3].denoiseBytes, "\(task)")
                let sizes = [(416, 240), (832, 480), (1280, 720)].map { estimate(task, settings($0.0, $0.1, 81), shape).peakBytes }
                XCTAssertEqual(sizes, sizes.sorted(), "\(task)")
                XCTAssertLessThan(sizes[0], sizes[2], "\(task)")
            }
        }
    }

    func testConditionedTasksNeedAtLeastTextToVideo() {
        for shape in shapes {
            for (w, h, f) in [(832, 480, 81), (1280, 720, 81), (480, 832, 17), (64, 64, 1)] {
                let s = settings(w, h, f)
                let t2v = estimate(.textToVideo, s, shape)
                for task in GenerationTask.allCases where task != .textToVideo {
                    let e = estimate(task, s, shape)
                    XCTAssertGreaterThan(e.peakBytes, t2v.peakBytes, "\(task) at \(w)x\(h)x\(f)")
                    XCTAssertGreaterThanOrEqual(e.denoiseBytes, t2v.denoiseBytes, "\(task)")
                    XCTAssertGreaterThan(e.encodeBytes + e.inputsBytes, 0, "\(task)")
                }
                // FLF2V's two images: twice the image context rows of I2V.
                XCTAssertGreaterThan(estimate(.firstLastFrame, s, shape).denoiseBytes, estimate(.imageToVideo, s, shape).denoiseBytes)
            }
        }
        // VACE: a mask video, more references and a larger source each cost more.
        let s = settings(832, 480, 81), dit = DiTShape(WanVACEConfig.vace14B.dit, vaceBlocks: 8)
        func vace(_ source: MemoryEstimate.Source?, _ refs: Int) -> Int {
            MemoryEstimate.vace(files: ModelFiles(), settings: s, source: source, references: refs, dit: dit).peakBytes
        }
        XCTAssertLessThan(vace(.init(width: 832, height: 480), 0), vace(.init(width: 832, height: 480, hasMask: true), 0))
        XCTAssertLessThan(vace(.init(width: 832, height: 480), 0), vace(.init(width: 832, height: 480), 2))
        XCTAssertLessThan(vace(.init(width: 832, height: 480), 0), vace(.init(width: 1920, height: 1080), 0))
    }

    func testTheDiTActivationsFollowTheBlockScratch() {
        // 4 x [L, dim] of scratch + x, the patches, the head's output, a [4096, ffn] FFN chunk: the forward grows
        // linearly in L once L > 4096.
        let shape = DiTShape(WanDiTConfig.t2v14B)
        let a = estimate(.textToVideo, settings(832, 480, 41), shape).denoiseBytes   // L = 11 * 30 * 52 = 17160
        let b = estimate(.textToVideo, settings(832, 480, 81), shape).denoiseBytes   // L = 21 * 30 * 52 = 32760
        let c = estimate(.textToVideo, settings(832, 480, 121), shape).denoiseBytes  // L = 31 * 30 * 52 = 48360
        XCTAssertEqual(b - a, c - b)
        let perToken = Double(b - a) / Double(32760 - 17160)
        // (5 x 5120 + 64 + 64) floats of activations (the patches and the head's output: 16 channels x 4 pixels each),
        // 9 latents' share (16 x 4 floats each), and the bf16 products' rounded copies (q, k, v and a product's
        // [L, 5120] input: 4 x 5120 bf16 values) per token.
        XCTAssertEqual(perToken, Double((5 * 5120 + 64 + 64) * 4 + 9 * 16 * 4 * 4 + 4 * 5120 * 2), accuracy: 1)
    }

    func testEncoderStateFromTheArchitecture() {
        let vae = WanVAEConfig.wan21
        let small = vae.encodeStateBytes(width: 832, height: 480), large = vae.encodeStateBytes(width: 1664, height: 960)
        XCTAssertEqual(large, 4 * small)   // every stage's pixels scale by 4
        // Dominated by the full-resolution stage: two residual blocks' histories (2 x 2 x (96 + 96)) + conv1 (2 x 3) + frames in flight (4 x 96).
        XCTAssertGreaterThan(small, (768 + 6 + 384) * 832 * 480 * 4)
        XCTAssertLessThan(small, 2 * (768 + 6 + 384) * 832 * 480 * 4)
    }

    func testRefusalNamesWhatIsNeededWhatIsFreeAndTheFix() {
        let e = estimate(.vace, settings(832, 480, 81), DiTShape(WanDiTConfig.t2v14B))
        XCTAssertNil(e.refusal(availableBytes: e.peakBytes))
        let message = e.refusal(availableBytes: 2_000_000_000)
        XCTAssertNotNil(message)
        let text = message ?? ""
        XCTAssertTrue(text.contains(String(format: "needs about %.1f GB", Double(e.peakBytes) / 1e9)), text)
        XCTAssertTrue(text.contains("2.0 GB is available"), text)
        XCTAssertTrue(text.contains("this vace job"), text)
        for fix in ["fewer --frames", "smaller --size", "quantized DiT", "--no-memory-check"] { XCTAssertTrue(text.contains(fix), text) }
        XCTAssertTrue(text.contains("encoding") && text.contains("denoising") && text.contains("decoding"), text)
        XCTAssertFalse(text.contains("\n"))
    }

    func testDiTShapeIsReadFromTheCheckpointHeader() throws {
        let weights = goldenDirectory + "/weights"
        guard FileManager.default.fileExists(atPath: weights + "/dit_vace.safetensors") else { throw XCTSkip("golden data not found") }
        let vace = try XCTUnwrap(DiTShape.read(weights + "/dit_vace.safetensors"))
        XCTAssertTrue(vace.isVACE)
        let plain = try XCTUnwrap(DiTShape.read(weights + "/pipe_dit_i2v.safetensors"))
        XCTAssertFalse(plain.isVACE)
        XCTAssertEqual(plain.inDim, 36)
        XCTAssertNil(DiTShape.read(weights + "/missing.safetensors"))
    }
}
