import Foundation
import WanTensor
import WanModels
import WanSampling
import WanText
import WanWeights

/// Settings of one text-to-video (or text-to-image: frames = 1) generation, as `WanT2V.generate` takes them.
public struct GenerationSettings: Sendable, Equatable {
    public var width = 832
    public var height = 480
    /// 4n + 1 frames (1 = text-to-image).
    public var frames = 81
    public var steps = 50
    public var shift = 5.0
    public var guideScale: Float = 5.0
    public var seed: UInt64 = 0
    public var solver: FlowSolverKind = .unipc
    /// Empty means the task's default negative prompt (official `sample_neg_prompt`).
    public var negativePrompt = ""

    public init() {}

    /// The latent shape [16, 1 + (F-1)/4, H/8, W/8].
    public var latentShape: [Int] { [16, (frames - 1) / 4 + 1, height / 8, width / 8] }

    /// Checks what the models need, with messages that say what to change.
    public func validate() throws {
        try GenerationSettings.validateSampling(frames: frames, minimumFrames: 1, steps: steps, shift: shift, guideScale: guideScale)
        guard width > 0, height > 0, width % 16 == 0, height % 16 == 0 else {
            throw GenerationError.invalidSettings("size \(width)x\(height) must be multiples of 16 (the VAE's 8 times the DiT's 2x2 patches); the official sizes are 832x480, 480x832, 1280x720, 720x1280")
        }
    }

    /// The checks every task's settings share: frames 4n+1 from `minimumFrames`, steps, shift, guide scale.
    static func validateSampling(frames: Int, minimumFrames: Int, steps: Int, shift: Double, guideScale: Float) throws {
        guard frames >= minimumFrames, (frames - 1) % 4 == 0 else {
            throw GenerationError.invalidSettings("frames must be 4n+1 (\(minimumFrames == 1 ? "1, " : "")5, 9, …, 81), got \(frames)")
        }
        guard steps >= 1, steps <= 1000 else { throw GenerationError.invalidSettings("steps must be 1…1000, got \(steps)") }
        guard shift > 0, shift.isFinite else { throw GenerationError.invalidSettings("shift must be positive, got \(shift)") }
        guard guideScale.isFinite else { throw GenerationError.invalidSettings("guide scale must be a finite number") }
    }
}

/// Errors of a generation that say what to do.
public enum GenerationError: Error, CustomStringConvertible, Equatable {
    case invalidSettings(String)
    case cancelled
    case modelMismatch(String)
    /// The part cannot run on the chosen device (yet); the text says which device to use.
    case unsupportedOnDevice(String)

    public var description: String {
        switch self {
        case .invalidSettings(let s): return "invalid settings: \(s)"
        case .cancelled: return "generation cancelled"
        case .modelMismatch(let s): return "the models do not fit together: \(s)"
        case .unsupportedOnDevice(let s): return s
        }
    }
}

/// Where a generation is, for progress displays.
public struct GenerationProgress: Sendable {
    /// `encodingVideo`: the VAE encoding of the conditioning video(s) (VACE, video-to-video).
    public enum Stage: String, Sendable { case encodingText = "text", encodingVideo = "encode", denoising = "denoise", decoding = "decode" }
    public var stage: Stage
    /// 1-based step (denoising) or frame (decoding) and the total.
    public var step: Int
    public var total: Int
    /// Seconds of the last step and the estimated seconds left in this stage.
    public var secondsPerStep: Double
    public var secondsLeft: Double
}

/// The official default negative prompts (wan/configs/shared_config.py).
public enum NegativePrompts {
    public static let textToVideo = "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
}

/// umT5 text conditioning as `T5EncoderModel` does it: Wan's prompt cleaning, the tokenizer padded to 512 with the
/// mask, the encoder, and the hidden states of the real tokens.
public final class TextConditioner: @unchecked Sendable {
    public let tokenizer: UMT5Tokenizer
    /// umT5 on its backend: `UMT5Encoder` (CPU) or `CUDAUMT5` (GPU); nil once released (`prepare(_:releasingEncoder:)`),
    /// when only the prepared prompts can be encoded.
    public private(set) var encoder: (any UMT5TextEncoder)?
    /// The encoder's configuration (kept when the encoder is released).
    public let encoderConfig: UMT5Config
    public let textLength: Int
    private var prepared: [String: (ids: [Int], embedding: Tensor)] = [:]

    public init(tokenizer: UMT5Tokenizer, encoder: any UMT5TextEncoder, textLength: Int = 512) {
        self.tokenizer = tokenizer; self.encoder = encoder; self.encoderConfig = encoder.config; self.textLength = textLength
    }

    /// Encodes `prompts` now and keeps their embeddings (`encode` then returns them); with `releasingEncoder`, the
    /// encoder is dropped afterwards, with its memory (the GPU's, for `CUDAUMT5`): the CLI encodes its two prompts
    /// this way before the DiT is loaded, so umT5 and the DiT never hold the GPU at the same time.
    public func prepare(_ prompts: [String], releasingEncoder: Bool = false) throws {
        for prompt in prompts where prepared[prompt] == nil { prepared[prompt] = try encodeNow(prompt) }
        if releasingEncoder { encoder = nil }
    }

    /// The tokens of a prompt after Wan's cleaning, </s> included, before truncation to `textLength`.
    public func tokenCount(_ prompt: String) -> Int { tokenizer.encode(WanPromptCleaner.clean(prompt)).count }

    /// Token ids (</s> included) and the embedding [tokens, dim] of a prompt.
    public func encode(_ prompt: String) throws -> (ids: [Int], embedding: Tensor) {
        if let done = prepared[prompt] { return done }
        return try encodeNow(prompt)
    }

    private func encodeNow(_ prompt: String) throws -> (ids: [Int], embedding: Tensor) {
        guard let encoder else {
            throw GenerationError.invalidSettings("the text encoder was released after preparing other prompts; prepare this prompt too, or keep the encoder")
        }
        let cleaned = WanPromptCleaner.clean(prompt)
        let (ids, mask) = tokenizer.encodePadded(cleaned, length: textLength)
        let count = mask.reduce(0, +)
        let real = Array(ids.prefix(count))
        for id in real where id < 0 || id >= encoder.config.vocab {
            throw GenerationError.modelMismatch("the tokenizer produced id \(id) but the text encoder has a vocabulary of \(encoder.config.vocab): use the tokenizer that belongs to the encoder")
        }
        let embedding = try encoder.encode(tokens: [real])[0]
        return (real, embedding)
    }
}

/// Text-to-video and text-to-image (official `WanT2V.generate`): umT5 conditioning, seed-for-seed PyTorch noise,
/// the flow-matching sampler around the DiT with classifier-free guidance, then the streamed VAE decode.
public final class TextToVideo: DecodingPipeline, @unchecked Sendable {
    public let text: TextConditioner
    /// The DiT on its backend: `WanDiT` (CPU) or `CUDADiT` (GPU).
    public let dit: any DiTDenoiser
    /// The VAE on its backend: `WanVAE` (CPU) or `CUDAVAE` (GPU).
    public let vae: any VAECoding

    /// What a caller may observe along the way (for tests and parity checks).
    public enum Event {
        case prompts(ids: [Int], negativeIds: [Int], context: Tensor, negativeContext: Tensor)
        case timesteps([Double])
        case latentAfterStep(Int, Tensor)
    }

    public init(text: TextConditioner, dit: any DiTDenoiser, vae: any VAECoding) throws {
        guard dit.config.textDim == text.encoderConfig.dim else {
            throw GenerationError.modelMismatch("the DiT takes text embeddings of width \(dit.config.textDim) but the text encoder makes \(text.encoderConfig.dim)")
        }
        guard dit.config.modelType == "t2v" else {
            throw GenerationError.modelMismatch("this DiT's model_type is \(dit.config.modelType); text-to-video needs model_type t2v")
        }
        guard dit.config.inDim == vae.config.zDim, dit.config.outDim == vae.config.zDim else {
            throw GenerationError.modelMismatch("the DiT works on \(dit.config.inDim)-channel latents, the VAE on \(vae.config.zDim)")
        }
        self.text = text; self.dit = dit; self.vae = vae
    }

    /// The noise the official code starts from: `torch.randn(latent shape, generator=Generator('cpu').manual_seed(seed))`.
    public static func initialNoise(shape: [Int], seed: UInt64) -> Tensor {
        var g = TorchRandom(seed: seed)
        return g.randnTensor(shape: shape)
    }

    /// Runs the sampling loop and returns the final latent [16, F', H/8, W/8].
    public func sample(prompt: String, settings s: GenerationSettings, noise: Tensor? = nil,
                       progress: ((GenerationProgress) -> Void)? = nil, isCancelled: (() -> Bool)? = nil,
                       observe: ((Event) -> Void)? = nil) throws -> Tensor {
        try s.validate()
        let latents = try PipelineCore.startingNoise(noise, shape: s.latentShape, seed: s.seed)
        return try denoise(prompt: prompt, settings: s, from: latents, startStep: 0, progress: progress, isCancelled: isCancelled, observe: observe)
    }

    /// The prompts, then the sampling loop from `latents` at step `startStep` (shared with `VideoToVideo`).
    func denoise(prompt: String, settings s: GenerationSettings, from latents: Tensor, startStep: Int,
                 progress: ((GenerationProgress) -> Void)?, isCancelled: (() -> Bool)?, observe: ((Event) -> Void)?) throws -> Tensor {
        let (cond, uncond) = try PipelineCore.encodePrompts(text, prompt: prompt, negativePrompt: s.negativePrompt,
                                                            defaultNegative: GenerationTask.textToVideo.defaultNegativePrompt, progress: progress)
        observe?(.prompts(ids: cond.ids, negativeIds: uncond.ids, context: cond.embedding, negativeContext: uncond.embedding))
        let condContext = try dit.prepareConditioning(text: cond.embedding, clipFeatures: nil)
        let uncondContext = try dit.prepareConditioning(text: uncond.embedding, clipFeatures: nil)
        return try PipelineCore.denoise(dit: dit, noise: latents, y: nil, cond: condContext, uncond: uncondContext,
                                        solver: s.solver, steps: s.steps, shift: s.shift, guideScale: s.guideScale, startStep: startStep,
                                        progress: progress, isCancelled: isCancelled,
                                        onTimesteps: { observe?(.timesteps($0)) },
                                        afterStep: { observe?(.latentAfterStep($0, $1)) })
    }

    /// Hands the DiT's activations back before the decode (`DecodingPipeline`).
    public func releaseDenoiser() { dit.releaseActivations() }

    /// The whole job: the video [3, F, H, W] in [-1, 1].
    public func generate(prompt: String, settings: GenerationSettings, progress: ((GenerationProgress) -> Void)? = nil,
                         isCancelled: (() -> Bool)? = nil) throws -> Tensor {
        let latent = try sample(prompt: prompt, settings: settings, progress: progress, isCancelled: isCancelled)
        return try decodeVideo(latent, progress: progress, isCancelled: isCancelled)
    }
}


/// A pipeline whose latent the VAE decodes (text-, image-, first-last-frame-to-video, VACE): the decode is the same
/// for all of them.
public protocol DecodingPipeline {
    /// The VAE on its backend: `WanVAE` (CPU) or `CUDAVAE` (GPU).
    var vae: any VAECoding { get }
    /// Hands the denoiser's activations back (called before the decode).
    func releaseDenoiser()
}

extension DecodingPipeline {
    /// Decodes a latent, streaming chunks of frames ([3, n, H, W] in [-1, 1], index of the first frame).
    public func decode(_ latent: Tensor, progress: ((GenerationProgress) -> Void)? = nil, isCancelled: (() -> Bool)? = nil,
                       onFrames: (Tensor, Int) throws -> Void) throws {
        releaseDenoiser()
        try PipelineCore.decode(vae: vae, latent, progress: progress, isCancelled: isCancelled, onFrames: onFrames)
    }

    /// The whole decoded video [3, F, H, W] in [-1, 1].
    func decodeVideo(_ latent: Tensor, progress: ((GenerationProgress) -> Void)?, isCancelled: (() -> Bool)?) throws -> Tensor {
        var chunks: [Tensor] = []
        try decode(latent, progress: progress, isCancelled: isCancelled) { chunk, _ in chunks.append(chunk) }
        return concatenateFrames(chunks)
    }
}

/// The steps every Wan pipeline's `generate()` shares (text2video.py, image2video.py, first_last_frame2video.py):
/// one implementation serves TextToVideo, ImageToVideo and FirstLastFrameToVideo.
enum PipelineCore {
    typealias Encoded = (ids: [Int], embedding: Tensor)

    /// The initial latent: the caller's `noise` (checked against `shape`) or the seed's PyTorch-exact noise.
    static func startingNoise(_ noise: Tensor?, shape: [Int], seed: UInt64, what: String = "the settings") throws -> Tensor {
        guard let noise else { return TextToVideo.initialNoise(shape: shape, seed: seed) }
        guard noise.shape == shape else { throw GenerationError.invalidSettings("noise has shape \(noise.shape), \(what) need \(shape)") }
        return noise
    }

    /// The prompt and the negative prompt (the task's default when empty) through the same text encoder.
    static func encodePrompts(_ text: TextConditioner, prompt: String, negativePrompt: String, defaultNegative: String,
                              progress: ((GenerationProgress) -> Void)?) throws -> (cond: Encoded, uncond: Encoded) {
        progress?(GenerationProgress(stage: .encodingText, step: 0, total: 2, secondsPerStep: 0, secondsLeft: 0))
        let cond = try text.encode(prompt)
        let uncond = try text.encode(negativePrompt.isEmpty ? defaultNegative : negativePrompt)
        return (cond, uncond)
    }

    /// The sampling loop: per timestep two separate model calls (`velocity(x, t, true)` with the prompt,
    /// `velocity(x, t, false)` with the negative prompt), CFG = uncond + guide * (cond - uncond), one solver step.
    /// Sampling starts at `startStep` of the schedule (0 for every official pipeline; video-to-video starts later).
    /// `afterStep(i, latent)` sees the latent entering step i + 2 (not called after the last step).
    static func denoise(noise: Tensor, solver kind: FlowSolverKind, steps: Int, shift: Double, guideScale: Float, startStep: Int = 0,
                        progress: ((GenerationProgress) -> Void)?, isCancelled: (() -> Bool)?,
                        onTimesteps: ([Double]) -> Void, afterStep: (Int, Tensor) -> Void,
                        velocity: (Tensor, Float, Bool) throws -> Tensor) throws -> Tensor {
        var latents = noise
        let solver = makeFlowSolver(kind, steps: steps, shift: shift)
        let timesteps = solver.schedule.timesteps
        onTimesteps(timesteps)
        solver.begin(at: startStep)
        let total = timesteps.count - startStep
        var stepSeconds: [Double] = []
        for i in startStep..<timesteps.count {
            let t = timesteps[i]
            if isCancelled?() == true { throw GenerationError.cancelled }
            let start = DispatchTime.now().uptimeNanoseconds
            let vCond = try velocity(latents, Float(t), true)
            let vUncond = try velocity(latents, Float(t), false)
            let guided = classifierFreeGuidance(cond: vCond, uncond: vUncond, scale: guideScale)
            latents = solver.step(modelOutput: guided, timestep: t, sample: latents)
            if i < timesteps.count - 1 { afterStep(i, latents) }
            stepSeconds.append(Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9)
            let recent = stepSeconds.suffix(3)
            let per = recent.reduce(0, +) / Double(recent.count)
            let done = i - startStep + 1
            progress?(GenerationProgress(stage: .denoising, step: done, total: total, secondsPerStep: per,
                                         secondsLeft: per * Double(total - done)))
        }
        return latents
    }

    /// `denoise` around a DiT on any backend (t2v, i2v, flf2v): `y` is fed to both passes.
    static func denoise(dit: any DiTDenoiser, noise: Tensor, y: Tensor?, cond: DiTConditioning, uncond: DiTConditioning,
                        solver kind: FlowSolverKind, steps: Int, shift: Double, guideScale: Float, startStep: Int = 0,
                        progress: ((GenerationProgress) -> Void)?, isCancelled: (() -> Bool)?,
                        onTimesteps: ([Double]) -> Void, afterStep: (Int, Tensor) -> Void) throws -> Tensor {
        try denoise(noise: noise, solver: kind, steps: steps, shift: shift, guideScale: guideScale, startStep: startStep,
                    progress: progress, isCancelled: isCancelled, onTimesteps: onTimesteps, afterStep: afterStep) { x, t, conditional in
            try dit.velocity(x: x, y: y, t: t, conditioning: conditional ? cond : uncond)
        }
    }

    /// The streamed VAE decode with progress and cancellation. The weight mappings' resident pages (the DiT's, the
    /// text encoder's) are handed back first: they are not read while decoding, and the VAE's state needs the room
    /// (they come back from the page cache if the models run again).
    static func decode(vae: any VAECoding, _ latent: Tensor, progress: ((GenerationProgress) -> Void)?, isCancelled: (() -> Bool)?,
                       onFrames: (Tensor, Int) throws -> Void) throws {
        MappedFile.releaseAllResidentPages()
        var total = latent.shape[1]
        var done = 0
        var last = DispatchTime.now().uptimeNanoseconds
        func step() throws {
            if isCancelled?() == true { throw GenerationError.cancelled }
            done += 1
            let now = DispatchTime.now().uptimeNanoseconds
            let per = Double(now - last) * 1e-9
            last = now
            progress?(GenerationProgress(stage: .decoding, step: done, total: total, secondsPerStep: per, secondsLeft: per * Double(total - done)))
        }
        // The exact decode holds the causal state of the whole frame (`decodeStateBytes`); only when that cannot fit
        // in the memory available now does the CPU decode go tile by tile (not bit-exact, see `decodeTiled`).
        let (h, w, sf) = (latent.shape[2], latent.shape[3], vae.config.spatialFactor)
        let need = vae.config.decodeStateBytes(width: w * sf, height: h * sf)
        if let vae = vae as? WanVAE, let available = MemoryEstimate.availableBytes(), need > available / 4 * 3 {
            let tiles = vae.config.decodeTiles(latentHeight: h, latentWidth: w, stateBudget: available / 2)
            if tiles.rows * tiles.columns > 1 {
                total *= tiles.rows * tiles.columns
                try vae.decodeTiled(latent, tileHeight: tiles.height, tileWidth: tiles.width, afterTileFrame: step, onFrames: onFrames)
                return
            }
        }
        try vae.decode(latent) { chunk, first in
            if isCancelled?() == true { throw GenerationError.cancelled }
            try onFrames(chunk, first)
            try step()
        }
    }
}
