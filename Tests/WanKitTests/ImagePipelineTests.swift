import Foundation
import XCTest
import WanKit

/// The image-conditioned pipelines (official WanI2V / WanFLF2V.generate): the i2v golden case, FLF2V's geometry,
/// mask and y on tiny models against the official formulas, and the typed errors.
final class ImagePipelineTests: XCTestCase {
    static let runner = ConformanceRunner(goldenDirectory: goldenDirectory)
    static var weights: String { (goldenDirectory as NSString).appendingPathComponent("weights") }

    func requireGolden() throws {
        guard FileManager.default.fileExists(atPath: goldenDirectory) else { throw XCTSkip("golden data not found at \(goldenDirectory)") }
    }

    func testPipelineI2VTiny() throws {
        try requireGolden()
        let result = Self.runner.run(caseNamed: "pipeline_i2v_tiny")
        switch result {
        case .pass: break
        case .fail: XCTFail(result.description)
        case .skip: XCTFail("pipeline_i2v_tiny was skipped: \(result)")
        }
    }

    // MARK: tiny models

    static func arguments(_ model: String) throws -> [String: Any] {
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: weights + "/\(model).json"))) as! [String: Any]
        return json["config"] as? [String: Any] ?? [:]
    }

    static func text() throws -> TextConditioner {
        let t5 = try openT5Weights(path: weights + "/pipe_t5.safetensors")
        let tokenizer = try UMT5Tokenizer(file: (goldenDirectory as NSString).appendingPathComponent("tokenizer/"))
        return TextConditioner(tokenizer: tokenizer, encoder: try UMT5Encoder(weights: t5.source, arguments: try arguments("pipe_t5")))
    }

    static func dit(_ model: String, files: [String]) throws -> WanDiT {
        let w = try openDiTWeights(paths: files.map { weights + "/" + $0 })
        return try WanDiT(weights: w.source, arguments: try arguments(model))
    }

    static func vae() throws -> WanVAE {
        let w = try openVAEWeights(path: weights + "/pipe_vae.safetensors")
        return try WanVAE(weights: w.source, arguments: try arguments("pipe_vae"))
    }

    static func picture(width: Int, height: Int, seed: Int) throws -> RGBImage {
        var px: [UInt8] = []
        for y in 0..<height { for x in 0..<width { for c in 0..<3 { px.append(UInt8((x * 7 + y * 13 + c * 50 + seed * 31) % 256)) } } }
        return try RGBImage(width: width, height: height, pixels: px)
    }

    // MARK: formulas

    /// The official mask built literally: msk = ones(1, F, h, w); msk[:, 1:] = 0 (i2v) or msk[:, 1:-1] = 0 (flf2v);
    /// concat(repeat_interleave(msk[:, 0:1], 4), msk[:, 1:]); view(1, F'/4, 4, h, w).transpose(1, 2)[0].
    func officialMask(frames F: Int, h: Int, w: Int, last: Bool) -> [Float] {
        var msk = [Float](repeating: 1, count: F)
        for f in 1..<F where !(last && f == F - 1) { msk[f] = 0 }
        let seq = [msk[0], msk[0], msk[0], msk[0]] + msk[1...]
        let T = seq.count / 4
        var out: [Float] = []
        for c in 0..<4 { for t in 0..<T { out += [Float](repeating: seq[t * 4 + c], count: h * w) } }
        return out
    }

    func testMaskMatchesTheOfficialFormula() {
        for (F, last) in [(1, false), (5, false), (9, false), (81, false), (5, true), (9, true), (81, true)] {
            let m = ImageConditioning.mask(frames: F, latentHeight: 3, latentWidth: 2, lastFrame: last)
            XCTAssertEqual(m.shape, [4, (F - 1) / 4 + 1, 3, 2])
            XCTAssertEqual(m.array, officialMask(frames: F, h: 3, w: 2, last: last), "F \(F) last \(last)")
        }
        // FLF2V at 81 frames: the last latent frame has the last video frame in its 4th channel only.
        let m = ImageConditioning.mask(frames: 81, latentHeight: 1, latentWidth: 1, lastFrame: true)
        XCTAssertEqual((0..<4).map { m.data[$0 * 21 + 20] }, [0, 0, 0, 1])
        XCTAssertEqual((0..<4).map { m.data[$0 * 21] }, [1, 1, 1, 1])
    }

    func testLatentSizeFollowsMaxAreaAndAspect() {
        // sqrt(399360 * 480 / 832) = 479.99999999999994 (float64): 59 latent rows, 58 on the patch grid, as numpy gives.
        XCTAssertTrue(ImageConditioning.latentSize(imageHeight: 480, imageWidth: 832, maxArea: 480 * 832) == (58, 104))
        XCTAssertTrue(ImageConditioning.latentSize(imageHeight: 720, imageWidth: 1280, maxArea: 720 * 1280) == (90, 160))
        XCTAssertTrue(ImageConditioning.latentSize(imageHeight: 1024, imageWidth: 1024, maxArea: 480 * 832) == (78, 78))
        XCTAssertTrue(ImageConditioning.latentSize(imageHeight: 40, imageWidth: 56, maxArea: 32 * 48) == (4, 4))
        // Portrait: sqrt(399360 * 1.5) = 773.9 → 96 (rounded down to the patch grid), sqrt(399360 / 1.5) = 516.0 → 64.
        XCTAssertTrue(ImageConditioning.latentSize(imageHeight: 1200, imageWidth: 800, maxArea: 480 * 832) == (96, 64))
    }

    func testImageTensorAndCenterCrop() throws {
        let img = try RGBImage(width: 2, height: 1, pixels: [0, 128, 255, 1, 2, 3])
        let t = img.tensor
        XCTAssertEqual(t.shape, [3, 1, 2])
        XCTAssertEqual(t.array, [-1, (Float(1) / 255 - 0.5) / 0.5, (Float(128) / 255 - 0.5) / 0.5, (Float(2) / 255 - 0.5) / 0.5,
                                 (Float(255) / 255 - 0.5) / 0.5, (Float(3) / 255 - 0.5) / 0.5])
        // torchvision center_crop: odd padding puts the extra column right / row bottom; crop offset round half even.
        let src = Tensor(shape: [1, 2, 3], values: [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(ImageConditioning.centerCrop(src, height: 4, width: 4).array, [0, 0, 0, 0, 1, 2, 3, 0, 4, 5, 6, 0, 0, 0, 0, 0])
        XCTAssertEqual(ImageConditioning.centerCrop(src, height: 1, width: 2).array, [1, 2])  // top round(0.5) = 0, left round(0.5) = 0
        XCTAssertEqual(ImageConditioning.centerCrop(src, height: 2, width: 1).array, [2, 5])
        XCTAssertThrowsError(try RGBImage(width: 2, height: 2, pixels: [1, 2, 3]))
    }

    // MARK: FLF2V on tiny models

    func testFirstLastFramePipelineConditioning() throws {
        try requireGolden()
        let text = try Self.text(), vae = try Self.vae()
        let dit = try Self.dit("dit_flf2v", files: ["dit_i2v.safetensors", "dit_flf2v.safetensors"])
        XCTAssertEqual(dit.config.modelType, "flf2v")
        let pipeline = try FirstLastFrameToVideo(text: text, dit: dit, vae: vae)
        let first = try Self.picture(width: 56, height: 40, seed: 1)
        let last = try Self.picture(width: 40, height: 48, seed: 2)
        var s = ImageGenerationSettings.firstLastFrame
        XCTAssertEqual(s.steps, 50); XCTAssertEqual(s.shift, 16); XCTAssertEqual(s.guideScale, 5.5)
        s.maxArea = 32 * 48; s.frames = 5; s.steps = 2; s.shift = 3; s.seed = 11
        var g = TorchRandom(seed: 5)
        let clipFeatures = g.randnTensor(shape: [2, 257, 1280])

        var images: [Tensor] = [], mask: Tensor?, y: Tensor?, vaeInput: Tensor?, latentY: Tensor?, noise: Tensor?
        var negativeIds: [Int] = [], clipSeen: Tensor?, steps = 0, timesteps: [Double] = []
        let latent = try pipeline.sample(prompt: "A bird flies from the tree to the roof.", firstFrame: first, lastFrame: last,
                                         settings: s, clipFeatures: clipFeatures, observe: { event in
            switch event {
            case .images(let t): images = t
            case .conditioning(let vi, let l, let m, let yy): vaeInput = vi; latentY = l; mask = m; y = yy
            case .noise(let n): noise = n
            case .prompts(_, let neg, _, _): negativeIds = neg
            case .clipFeatures(let f): clipSeen = f
            case .timesteps(let t): timesteps = t
            case .latentAfterStep: steps += 1
            }
        })
        // Shapes: lat 4x4 (as pipeline_i2v_tiny's 56x40 image), T = 2.
        XCTAssertEqual(latent.shape, [16, 2, 4, 4])
        XCTAssertTrue(latent.array.allSatisfy(\.isFinite))
        XCTAssertEqual(timesteps.count, 2); XCTAssertEqual(steps, 1)
        XCTAssertEqual(noise?.array, TextToVideo.initialNoise(shape: [16, 2, 4, 4], seed: 11).array)
        XCTAssertEqual(clipSeen?.shape, [2, 257, 1280])

        // The last frame: PIL sizes (56, 40) vs (40, 48): ratio max(1.4, 0.833) = 1.4, size [56, 67] read by
        // center_crop as height 56, width 67: zero padding 4 top / 4 bottom, 13 left / 14 right.
        XCTAssertEqual(images.count, 2)
        XCTAssertEqual(images[0].array, first.tensor.array)
        let lastT = last.tensor
        XCTAssertEqual(images[1].shape, [3, 56, 67])
        var expectedLast = [Float](repeating: 0, count: 3 * 56 * 67)
        for c in 0..<3 { for yy in 0..<48 { for xx in 0..<40 { expectedLast[(c * 56 + yy + 4) * 67 + xx + 13] = lastT.data[(c * 48 + yy) * 40 + xx] } } }
        XCTAssertEqual(images[1].array, expectedLast)

        // vae input = [bicubic(first), zeros(3, F - 2), bicubic(last)] at (lat_h * 8, lat_w * 8).
        let vi = try XCTUnwrap(vaeInput)
        XCTAssertEqual(vi.shape, [3, 5, 32, 32])
        let r0 = ImageConditioning.resizeBicubic(images[0], height: 32, width: 32)
        let r1 = ImageConditioning.resizeBicubic(images[1], height: 32, width: 32)
        for c in 0..<3 {
            for f in 0..<5 {
                let plane = Array(UnsafeBufferPointer(start: vi.data + (c * 5 + f) * 1024, count: 1024))
                switch f {
                case 0: XCTAssertEqual(plane, Array(UnsafeBufferPointer(start: r0.data + c * 1024, count: 1024)))
                case 4: XCTAssertEqual(plane, Array(UnsafeBufferPointer(start: r1.data + c * 1024, count: 1024)))
                default: XCTAssertTrue(plane.allSatisfy { $0 == 0 })
                }
            }
        }
        // y = concat(mask, VAE(vae input)) on channels; the mask has the first and the last frame.
        let m = try XCTUnwrap(mask), yy = try XCTUnwrap(y), ly = try XCTUnwrap(latentY)
        XCTAssertEqual(m.array, officialMask(frames: 5, h: 4, w: 4, last: true))
        XCTAssertEqual(ly.array, try vae.encode(vi).array)
        XCTAssertEqual(yy.shape, [20, 2, 4, 4])
        XCTAssertEqual(yy.array, m.array + ly.array)

        // The flf2v default negative prompt: "镜头切换，" + i2v's ("镜头晃动，" + the shared one).
        XCTAssertTrue(NegativePrompts.firstLastFrameToVideo.hasPrefix("镜头切换，镜头晃动，色调艳丽"))
        XCTAssertTrue(NegativePrompts.imageToVideo.hasPrefix("镜头晃动，色调艳丽"))
        XCTAssertEqual(negativeIds, try text.encode(NegativePrompts.firstLastFrameToVideo).ids)

        // FLF2V needs the features of both pictures.
        XCTAssertThrowsError(try pipeline.sample(prompt: "x", firstFrame: first, lastFrame: last, settings: s,
                                                 clipFeatures: g.randnTensor(shape: [1, 257, 1280]))) { error in
            guard case GenerationError.invalidSettings(let m) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(m.contains("CLIP features"), m)
        }
        // And 4n+1 >= 5 frames (a first and a last frame).
        var one = s; one.frames = 1
        XCTAssertThrowsError(try pipeline.sample(prompt: "x", firstFrame: first, lastFrame: last, settings: one, clipFeatures: clipFeatures))
    }

    // MARK: errors

    func testTypedErrors() throws {
        try requireGolden()
        let text = try Self.text(), vae = try Self.vae()
        let t2v = try Self.dit("pipe_dit_t2v", files: ["pipe_dit_t2v.safetensors"])
        let i2v = try Self.dit("pipe_dit_i2v", files: ["pipe_dit_i2v.safetensors"])
        XCTAssertThrowsError(try ImageToVideo(text: text, dit: t2v, vae: vae)) { error in
            guard case GenerationError.modelMismatch(let m) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(m.contains("t2v") && m.contains("i2v"), m)
        }
        XCTAssertThrowsError(try FirstLastFrameToVideo(text: text, dit: i2v, vae: vae)) { error in
            guard case GenerationError.modelMismatch(let m) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(m.contains("flf2v"), m)
        }
        XCTAssertThrowsError(try TextToVideo(text: text, dit: i2v, vae: vae))

        let pipeline = try ImageToVideo(text: text, dit: i2v, vae: vae)
        var s = ImageGenerationSettings()
        s.maxArea = 32 * 48; s.frames = 5; s.steps = 1
        var g = TorchRandom(seed: 1)
        let clip = g.randnTensor(shape: [1, 257, 1280])
        // An image smaller than one latent pixel (8x8).
        XCTAssertThrowsError(try pipeline.sample(prompt: "x", image: try Self.picture(width: 7, height: 20, seed: 0), settings: s, clipFeatures: clip)) { error in
            guard case GenerationError.invalidSettings(let m) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(m.contains("smaller than one latent pixel"), m)
        }
        // max_area too small for one DiT patch.
        var tiny = s; tiny.maxArea = 100
        XCTAssertThrowsError(try pipeline.sample(prompt: "x", image: try Self.picture(width: 56, height: 40, seed: 0), settings: tiny, clipFeatures: clip)) { error in
            guard case GenerationError.invalidSettings(let m) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(m.contains("max_area"), m)
        }
        // No CLIP model and no features.
        XCTAssertThrowsError(try pipeline.sample(prompt: "x", image: try Self.picture(width: 56, height: 40, seed: 0), settings: s)) { error in
            guard case GenerationError.invalidSettings(let m) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(m.contains("CLIP"), m)
        }
        // Frames not 4n+1.
        var bad = s; bad.frames = 6
        XCTAssertThrowsError(try pipeline.sample(prompt: "x", image: try Self.picture(width: 56, height: 40, seed: 0), settings: bad, clipFeatures: clip))
        // Cancellation.
        XCTAssertThrowsError(try pipeline.sample(prompt: "x", image: try Self.picture(width: 56, height: 40, seed: 0), settings: s,
                                                 clipFeatures: clip, isCancelled: { true })) { error in
            XCTAssertEqual(error as? GenerationError, .cancelled)
        }
    }
}
