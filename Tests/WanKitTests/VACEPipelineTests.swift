import Foundation
import XCTest
import WanKit

/// The VACE pipeline (official WanVace: prepare_source, vace_encode_frames, vace_encode_masks, vace_latent, the
/// sampling with vace_context) step by step on small tensors against hand-computed values, then on the tiny models;
/// and video-to-video (WanKit's own): the strength → start step mapping, strength 1 = text-to-video.
final class VACEPipelineTests: XCTestCase {
    static var weights: String { (goldenDirectory as NSString).appendingPathComponent("weights") }

    func tensor(_ shape: [Int], _ values: [Float]) -> Tensor {
        let t = Tensor(zeros: shape)
        precondition(values.count == t.count)
        for (i, v) in values.enumerated() { t.data[i] = v }
        return t
    }

    // MARK: steps on small tensors

    func testInactiveReactiveSplitThresholdsTheMaskAtOneHalf() {
        // video [3, 1, 1, 4], mask [1, 1, 1, 4] = 0.2, 0.5, 0.51, 1: m = where(mask > 0.5) = 0, 0, 1, 1.
        let video = tensor([3, 1, 1, 4], [1, 2, 3, 4, -1, -2, -3, -4, 0.5, 0.25, -0.5, -0.25])
        let mask = tensor([1, 1, 1, 4], [0.2, 0.5, 0.51, 1])
        let (inactive, reactive) = VACEConditioning.inactiveReactive(video: video, mask: mask)
        XCTAssertEqual(inactive.array, [1, 2, 0, 0, -1, -2, 0, 0, 0.5, 0.25, 0, 0])
        XCTAssertEqual(reactive.array, [0, 0, 3, 4, 0, 0, -3, -4, 0, 0, -0.5, -0.25])
    }

    func testMaskUnshuffleAndNearestExactTimeResize() {
        // mask [1, F = 5, 16, 16] with value f*1000 + y*16 + x → [64, (5+3)//4 = 2, 2, 2].
        let (F, H, W) = (5, 16, 16)
        var values: [Float] = []
        for f in 0..<F { for y in 0..<H { for x in 0..<W { values.append(Float(f * 1000 + y * 16 + x)) } } }
        let m = VACEConditioning.encodeMasks(tensor([1, F, H, W], values), referenceCount: 0)
        XCTAssertEqual(m.shape, [64, 2, 2, 2])
        // nearest-exact, scale 5/2: latent frame 0 ← floor(0.5*2.5) = 1, frame 1 ← floor(1.5*2.5) = 3.
        // Channel p*8+q at (i, j) is pixel (8i + p, 8j + q).
        func at(_ c: Int, _ d: Int, _ i: Int, _ j: Int) -> Float { m.data[((c * 2 + d) * 2 + i) * 2 + j] }
        XCTAssertEqual(at(0, 0, 0, 0), 1000)
        XCTAssertEqual(at(0, 1, 0, 0), 3000)
        XCTAssertEqual(at(1, 0, 0, 0), 1001)                       // q = 1: next column
        XCTAssertEqual(at(8, 0, 0, 0), 1016)                       // p = 1: next row
        XCTAssertEqual(at(3 * 8 + 5, 1, 1, 0), 3000 + 11 * 16 + 5) // p 3, q 5, cell (1, 0)
        XCTAssertEqual(at(63, 0, 1, 1), 1000 + 15 * 16 + 15)
        // 9 frames → 3 latent frames from 1, 4, 7 (scale 3); two references → two zero frames in front.
        var nine: [Float] = []
        for f in 0..<9 { nine += [Float](repeating: Float(f + 1), count: H * W) }
        let r = VACEConditioning.encodeMasks(tensor([1, 9, H, W], nine), referenceCount: 2)
        XCTAssertEqual(r.shape, [64, 5, 2, 2])
        for c in [0, 17, 63] {
            XCTAssertEqual((0..<5).map { r.data[(c * 5 + $0) * 4 + 3] }, [0, 0, 2, 5, 8])
        }
    }

    func testEncodeFramesConcatenatesHalvesAndPrependsReferencesWithZeroReactive() throws {
        // A stand-in encoder [3, F, H, W] → [2, F, 1, 1]: channel 0 = sum over the picture, channel 1 = its max
        // (enough to tell the halves, the frames and the references apart).
        func encode(_ x: Tensor) -> Tensor {
            let (F, plane) = (x.shape[1], x.shape[2] * x.shape[3])
            let out = Tensor(zeros: [2, F, 1, 1])
            for f in 0..<F {
                var sum: Float = 0, mx = -Float.infinity
                for c in 0..<3 { for p in 0..<plane { let v = x.data[(c * F + f) * plane + p]; sum += v; mx = max(mx, v) } }
                out.data[f] = sum; out.data[F + f] = mx
            }
            return out
        }
        let video = tensor([3, 2, 1, 2], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
        let mask = tensor([1, 2, 1, 2], [0, 1, 1, 0])
        let ref = tensor([3, 1, 2], [-1, -1, -1, -1, -1, -0.5])
        let z = try VACEConditioning.encodeFrames(video: video, mask: mask, references: [ref], encode: encode)
        XCTAssertEqual(z.shape, [4, 3, 1, 1])
        // frame 0 keeps pixel 0 inactive (1, 5, 9) and pixel 1 reactive (2, 6, 10); frame 1 the other way round.
        XCTAssertEqual(z.array, [
            -5.5, 15, 24,      // inactive sum: ref, frame 0 = 1+5+9, frame 1 = 4+8+12
            -0.5, 9, 12,       // inactive max
            0, 18, 21,         // reactive sum: zeros for the reference, 2+6+10, 3+7+11
            0, 10, 11,         // reactive max
        ])
    }

    func testPrepareSourceDefaultsAndMaskConversion() {
        // No video: zeros video and an all-ones mask, whatever mask is passed.
        let none = VACEConditioning.prepareSource(video: nil, mask: nil, references: [], frames: 5, height: 16, width: 32)
        XCTAssertEqual(none.video.shape, [3, 5, 16, 32])
        XCTAssertTrue(none.video.array.allSatisfy { $0 == 0 })
        XCTAssertEqual(none.mask.shape, [1, 5, 16, 32])
        XCTAssertTrue(none.mask.array.allSatisfy { $0 == 1 })
        // A video without a mask: all ones; with a mask video (read in [-1, 1]): clamp((R + 1) / 2, 0, 1).
        let video = tensor([3, 1, 1, 2], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
        XCTAssertEqual(VACEConditioning.prepareSource(video: video, mask: nil, references: [], frames: 1, height: 1, width: 2).mask.array, [1, 1])
        let maskVideo = tensor([3, 1, 1, 2], [-1, 0.5, 9, 9, 9, 9])
        let p = VACEConditioning.prepareSource(video: video, mask: maskVideo, references: [], frames: 1, height: 1, width: 2)
        XCTAssertEqual(p.mask.array, [0, 0.75])
        XCTAssertEqual(p.video.array, video.array)
    }

    func testReferenceOfAnotherSizeIsFittedOnAWhiteCanvas() {
        // bilinear 2x2 → 4x4 (align_corners False): a row [0, 1] becomes [0, 0.25, 0.75, 1].
        let small = tensor([1, 2, 2], [0, 1, 2, 3])
        let up = VACEConditioning.resizeBilinear(small, height: 4, width: 4)
        XCTAssertEqual(Array(up.array.prefix(4)), [0, 0.25, 0.75, 1])
        XCTAssertEqual(Array(up.array.suffix(4)), [2, 2.25, 2.75, 3])
        XCTAssertEqual(up.array[4], 0.5)    // row 1 = 0.75*row0 + 0.25*row1 at x 0
        // A 2x2 reference on a 4x8 canvas: scale min(4/2, 8/2) = 2 → 4x4 at left (8-4)//2 = 2, the rest white (1).
        let ref = tensor([3, 2, 2], [Float](repeating: -1, count: 12))
        let prepared = VACEConditioning.prepareSource(video: nil, mask: nil, references: [ref], frames: 1, height: 4, width: 8)
        let canvas = prepared.references[0]
        XCTAssertEqual(canvas.shape, [3, 4, 8])
        for c in 0..<3 { for y in 0..<4 {
            XCTAssertEqual(Array(canvas.array[((c * 4 + y) * 8)..<((c * 4 + y) * 8 + 8)]), [1, 1, -1, -1, -1, -1, 1, 1])
        } }
        // A reference of the video's size is used as it is.
        let same = tensor([3, 4, 8], (0..<96).map { Float($0) / 96 })
        XCTAssertEqual(VACEConditioning.prepareSource(video: nil, mask: nil, references: [same], frames: 1, height: 4, width: 8).references[0].array, same.array)
    }

    // MARK: tiny models

    static func arguments(_ model: String) throws -> [String: Any] {
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: weights + "/\(model).json"))) as! [String: Any]
        return json["config"] as? [String: Any] ?? [:]
    }

    func tinyModels() throws -> (text: TextConditioner, vae: WanVAE) {
        guard FileManager.default.fileExists(atPath: Self.weights + "/dit_vace.safetensors") else { throw XCTSkip("golden data not found") }
        let t5 = try openT5Weights(path: Self.weights + "/pipe_t5.safetensors")
        let tokenizer = try UMT5Tokenizer(file: (goldenDirectory as NSString).appendingPathComponent("tokenizer/"))
        let text = TextConditioner(tokenizer: tokenizer, encoder: try UMT5Encoder(weights: t5.source, arguments: try Self.arguments("pipe_t5")))
        let v = try openVAEWeights(path: Self.weights + "/pipe_vae.safetensors")
        return (text, try WanVAE(weights: v.source, arguments: try Self.arguments("pipe_vae")))
    }

    func video(frames: Int, width: Int, height: Int, seed: Int) throws -> RGBVideo {
        try RGBVideo(frames: (0..<frames).map { f in
            var px: [UInt8] = []
            for y in 0..<height { for x in 0..<width { for c in 0..<3 { px.append(UInt8((x * 9 + y * 5 + c * 70 + f * 17 + seed * 41) % 256)) } } }
            return try RGBImage(width: width, height: height, pixels: px)
        })
    }

    func testVACEOnTheTinyModelsShapesReferencesAndContextScale() throws {
        let (text, vae) = try tinyModels()
        let w = try openDiTWeights(path: Self.weights + "/dit_vace.safetensors")
        let dit = try WanVACEDiT(weights: w.source)
        let pipeline = try VACEPipeline(text: text, dit: dit, vae: vae)
        var s = GenerationSettings()
        s.width = 32; s.height = 32; s.frames = 5; s.steps = 2; s.seed = 3
        let ref = try RGBImage(width: 16, height: 24, pixels: (0..<(16 * 24 * 3)).map { UInt8($0 % 251) })
        var noiseShape: [Int] = [], contextShape: [Int] = [], masks: Tensor? = nil
        let inputs = VACEInputs(video: try video(frames: 9, width: 32, height: 32, seed: 1), referenceImages: [ref])
        let latent = try pipeline.sample(prompt: "a red ball", inputs: inputs, settings: s) { e in
            if case .noise(let n) = e { noiseShape = n.shape }
            if case .conditioning(_, _, let refs, let z0, let m0, let z) = e {
                XCTAssertEqual(refs[0].shape, [3, 32, 32])
                XCTAssertEqual(z0.shape, [32, 3, 4, 4])
                masks = m0; contextShape = z.shape
            }
        }
        // The noise has the reference's latent frame; the result has it dropped.
        XCTAssertEqual(noiseShape, [16, 3, 4, 4])
        XCTAssertEqual(contextShape, [96, 3, 4, 4])
        XCTAssertEqual(latent.shape, [16, 2, 4, 4])
        // A video without a mask: all-ones mask; the reference's mask frame is zero.
        let m = try XCTUnwrap(masks)
        for c in [0, 63] { XCTAssertEqual((0..<3).map { m.data[(c * 3 + $0) * 16] }, [0, 1, 1]) }

        // context_scale weighs the hints: at 0 the source video cannot change the result, at 1 it does.
        func run(_ seed: Int, scale: Float) throws -> [Float] {
            try pipeline.sample(prompt: "a red ball", inputs: VACEInputs(video: try video(frames: 5, width: 32, height: 32, seed: seed)),
                                settings: s, contextScale: scale).array
        }
        XCTAssertEqual(try run(1, scale: 0), try run(2, scale: 0))
        XCTAssertNotEqual(try run(1, scale: 1), try run(2, scale: 1))
        // No inputs at all (zeros video, all-ones mask) runs as the official default.
        XCTAssertEqual(try pipeline.sample(prompt: "x", inputs: VACEInputs(), settings: s).shape, [16, 2, 4, 4])
        XCTAssertThrowsError(try pipeline.sample(prompt: "x", inputs: VACEInputs(mask: try video(frames: 5, width: 32, height: 32, seed: 0)), settings: s))
    }

    // MARK: video-to-video

    func testStrengthPicksTheStartStep() throws {
        XCTAssertEqual(try VideoToVideo.startStep(strength: 1, steps: 50), 0)
        XCTAssertEqual(try VideoToVideo.startStep(strength: 0.6, steps: 50), 20)
        XCTAssertEqual(try VideoToVideo.startStep(strength: 0.5, steps: 5), 2)   // round(2.5) = 2 (half to even)
        XCTAssertEqual(try VideoToVideo.startStep(strength: 0.3, steps: 5), 4)   // round(3.5) = 4
        XCTAssertEqual(try VideoToVideo.startStep(strength: 0.02, steps: 40), 39)
        for bad in [0, -0.5, 1.01, Double.nan] { XCTAssertThrowsError(try VideoToVideo.startStep(strength: bad, steps: 10)) }
        XCTAssertThrowsError(try VideoToVideo.startStep(strength: 0.05, steps: 5))  // round(4.75) = 5: no step left
    }

    func testStrengthOneIsTextToVideoAndLowerStrengthStartsLater() throws {
        let (text, vae) = try tinyModels()
        let w = try openDiTWeights(path: Self.weights + "/pipe_dit_t2v.safetensors")
        let dit = try WanDiT(weights: w.source, arguments: try Self.arguments("pipe_dit_t2v"))
        let t2v = try TextToVideo(text: text, dit: dit, vae: vae)
        let v2v = try VideoToVideo(text: text, dit: dit, vae: vae)
        var s = GenerationSettings()
        s.width = 48; s.height = 32; s.frames = 5; s.steps = 4; s.seed = 11
        let source = try video(frames: 5, width: 48, height: 32, seed: 4)
        let expected = try t2v.sample(prompt: "a boat", settings: s).array
        XCTAssertEqual(try v2v.sample(prompt: "a boat", video: source, strength: 1, settings: s).array, expected)

        var denoised: [Int] = [], encoded = 0
        let half = try v2v.sample(prompt: "a boat", video: source, strength: 0.5, settings: s, progress: { p in
            if p.stage == .denoising { denoised.append(p.total) }
            if p.stage == .encodingVideo { encoded += 1 }
        })
        XCTAssertEqual(denoised, [2, 2])     // steps 2 and 3 of 4
        XCTAssertEqual(encoded, 2)
        XCTAssertNotEqual(half.array, expected)
        // The source matters below strength 1.
        let other = try v2v.sample(prompt: "a boat", video: try video(frames: 5, width: 48, height: 32, seed: 9), strength: 0.5, settings: s)
        XCTAssertNotEqual(half.array, other.array)
    }
}
