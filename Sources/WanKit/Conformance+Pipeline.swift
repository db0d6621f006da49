import Foundation
import WanTensor
import WanModels
import WanText

extension ConformanceRunner {
    /// Golden cases of component `pipeline`: the whole `WanT2V.generate` with tiny models.
    /// The noise comes from our own PyTorch-exact generator; a case's noise input must equal it exactly.
    func checkNoise(_ c: GoldenCase, _ noise: Tensor, seed: UInt64) throws -> CaseResult? {
        guard c.hasInput("noise") else { return nil }
        let given = try c.input("noise")
        guard given.count == noise.count, (0..<noise.count).allSatisfy({ given.data[$0] == noise.data[$0] }) else {
            return .fail(c.name, "the seed-\(seed) noise differs from the case's noise input")
        }
        return nil
    }

    func runPipeline(_ c: GoldenCase) throws -> CaseResult {
        let task = c.config["task"] as? String ?? "?"
        if task == "i2v" || task == "flf2v" { return try runImagePipeline(c, task: task) }
        if task == "vace" { return try runVACEPipeline(c) }
        guard task == "t2v" || task == "t2i" else { return .skip(c.name, "pipeline task '\(task)' is not implemented yet") }
        guard let (t5Name, ditName, vaeName, tokenizerPath) = pipelineModels(c) else {
            return .fail(c.name, "case config must name t5, dit, vae and tokenizer")
        }
        guard let dit = try denoiser(ditName), let vae = try vae(vaeName) else { return .skip(c.name, "a model layout is not implemented") }
        let tokenizer = try UMT5Tokenizer(file: (root as NSString).appendingPathComponent(tokenizerPath))
        let pipeline = try TextToVideo(text: TextConditioner(tokenizer: tokenizer, encoder: try t5(t5Name)), dit: dit, vae: vae)
        var s = GenerationSettings()
        if let size = c.config["size"] as? [NSNumber], size.count == 2 { s.width = size[0].intValue; s.height = size[1].intValue }
        try CaseSampling(c).apply(to: &s)
        guard let prompt = c.inputs["prompt"] as? String else { return .fail(c.name, "case has no prompt") }

        let noise = TextToVideo.initialNoise(shape: s.latentShape, seed: s.seed)
        if let failure = try checkNoise(c, noise, seed: s.seed) { return failure }
        let got = PipelineOutputs()
        let latent = try pipeline.sample(prompt: prompt, settings: s, noise: noise, observe: { event in
            switch event {
            case .prompts(let ids, let negativeIds, let context, let negativeContext):
                got.prompts(ids: ids, negativeIds: negativeIds, context: context, negativeContext: negativeContext)
            case .timesteps(let t): got.timesteps(t)
            case .latentAfterStep(_, let l): got.afterStep(l)
            }
        })
        return compare(c, try got.finished { try pipeline.decode(latent, onFrames: $0) })
    }

    /// Golden cases of `WanI2V.generate` / `WanFLF2V.generate` with tiny models. Inputs: the prompt, the image(s) as
    /// uint8 [H, W, 3] (`image`; FLF2V `first_frame` / `last_frame`), optionally `clip_features` (used instead of a
    /// CLIP model; else config `clip` names one) and `noise`. Outputs: every tensor the pipeline observes.
    func runImagePipeline(_ c: GoldenCase, task: String) throws -> CaseResult {
        guard let (t5Name, ditName, vaeName, tokenizerPath) = pipelineModels(c) else {
            return .fail(c.name, "case config must name t5, dit, vae and tokenizer")
        }
        guard let dit = try denoiser(ditName), let vae = try vae(vaeName) else { return .skip(c.name, "a model layout is not implemented") }
        let tokenizer = try UMT5Tokenizer(file: (root as NSString).appendingPathComponent(tokenizerPath))
        let text = TextConditioner(tokenizer: tokenizer, encoder: try t5(t5Name))
        let clipModel = try (c.config["clip"] as? String).map { try clip($0) }
        let flf = task == "flf2v"
        var s = flf ? ImageGenerationSettings.firstLastFrame : ImageGenerationSettings()
        if let v = (c.config["max_area"] as? NSNumber)?.intValue { s.maxArea = v }
        try CaseSampling(c).apply(to: &s)
        guard let prompt = c.inputs["prompt"] as? String else { return .fail(c.name, "case has no prompt") }
        func image(_ names: [String]) throws -> RGBImage? {
            guard let name = names.first(where: { c.hasInput($0) }) else { return nil }
            return try rgbImage(try encoderIntegerInput(c, name), name)
        }
        let images: [RGBImage]
        if flf {
            guard let first = try image(["first_frame", "image", "first_image"]), let last = try image(["last_frame", "last_image"]) else {
                return .fail(c.name, "case has no first_frame / last_frame inputs")
            }
            images = [first, last]
        } else {
            guard let img = try image(["image", "img"]) else { return .fail(c.name, "case has no image input") }
            images = [img]
        }
        let clipFeatures = try ["clip_features", "clip_fea", "clip_context"].first(where: { c.hasInput($0) }).map { try c.input($0) }

        // The pipeline's size must be the case's.
        let stride = vae.config.spatialFactor
        let lat = ImageConditioning.latentSize(imageHeight: images[0].height, imageWidth: images[0].width, maxArea: s.maxArea,
                                               vaeStride: stride, patch: (dit.config.patchSize[1], dit.config.patchSize[2]))
        if let h = (c.config["lat_h"] as? NSNumber)?.intValue, let w = (c.config["lat_w"] as? NSNumber)?.intValue, (h, w) != lat {
            return .fail(c.name, "lat_h x lat_w = \(lat.height)x\(lat.width), the case has \(h)x\(w)")
        }
        let noise = TextToVideo.initialNoise(shape: [vae.config.zDim, (s.frames - 1) / 4 + 1, lat.height, lat.width], seed: s.seed)
        if let failure = try checkNoise(c, noise, seed: s.seed) { return failure }

        let got = PipelineOutputs()
        let observe: (ImagePipelineEvent) -> Void = { event in
            switch event {
            case .prompts(let ids, let negativeIds, let context, let negativeContext):
                got.prompts(ids: ids, negativeIds: negativeIds, context: context, negativeContext: negativeContext)
            case .images(let tensors):
                got["image_tensor"] = tensors[0]
                if flf { got["first_frame_tensor"] = tensors[0]; got["last_frame_tensor"] = tensors[1] }
            case .clipFeatures(let f):
                got["clip_features"] = f; got["clip_context"] = f
            case .noise(let n):
                got["noise"] = n
            case .conditioning(let vaeInput, let latent, let mask, let y):
                got["vae_input"] = vaeInput
                got["y_latent"] = latent
                got["mask"] = mask; got["msk"] = mask
                got["y"] = y
            case .timesteps(let t): got.timesteps(t)
            case .latentAfterStep(_, let l): got.afterStep(l)
            }
        }
        let latent: Tensor
        let decode: (Tensor, (Tensor, Int) throws -> Void) throws -> Void
        if flf {
            let pipeline = try FirstLastFrameToVideo(text: text, dit: dit, vae: vae, clip: clipModel)
            latent = try pipeline.sample(prompt: prompt, firstFrame: images[0], lastFrame: images[1], settings: s,
                                         clipFeatures: clipFeatures, noise: noise, observe: observe)
            decode = { try pipeline.decode($0, onFrames: $1) }
        } else {
            let pipeline = try ImageToVideo(text: text, dit: dit, vae: vae, clip: clipModel)
            latent = try pipeline.sample(prompt: prompt, image: images[0], settings: s, clipFeatures: clipFeatures, noise: noise,
                                         observe: observe)
            decode = { try pipeline.decode($0, onFrames: $1) }
        }
        got["latent"] = latent
        return compare(c, try got.finished { try decode(latent, $0) })
    }
}

/// What a pipeline case compares, gathered from the pipeline's events: the prompts' ids and embeddings, the timesteps,
/// the latent after each step (stacked as `latents_before_step`: the latent entering the next step), any other named
/// tensor, and the decoded video.
final class PipelineOutputs {
    private var tensors: [String: Tensor] = [:]
    private var afterSteps: [Tensor] = []

    subscript(name: String) -> Tensor? {
        get { tensors[name] }
        set { tensors[name] = newValue }
    }

    func prompts(ids: [Int], negativeIds: [Int], context: Tensor, negativeContext: Tensor) {
        tensors["token_ids"] = Tensor(shape: [ids.count], values: ids.map(Float.init))
        tensors["neg_token_ids"] = Tensor(shape: [negativeIds.count], values: negativeIds.map(Float.init))
        tensors["context"] = context
        tensors["context_null"] = negativeContext
    }

    func timesteps(_ t: [Double]) { tensors["timesteps"] = Tensor(shape: [t.count], values: t.map(Float.init)) }

    func afterStep(_ latent: Tensor) { afterSteps.append(latent.reshaped(latent.shape)) }

    /// Every tensor gathered, with `latents_before_step` and `video` (the frames `decode` hands over, in order).
    func finished(decode: ((Tensor, Int) throws -> Void) throws -> Void) throws -> [String: Tensor] {
        if let first = afterSteps.first {
            let stacked = Tensor(uninitialized: [afterSteps.count] + first.shape)
            for (i, l) in afterSteps.enumerated() { (stacked.data + i * first.count).update(from: l.data, count: first.count) }
            tensors["latents_before_step"] = stacked
        }
        var chunks: [Tensor] = []
        try decode { chunk, _ in chunks.append(chunk) }
        tensors["video"] = concatenateFrames(chunks)
        return tensors
    }
}

extension ConformanceRunner {
    /// The models a pipeline case's config names: t5, dit, vae and the tokenizer folder (nil when one is missing).
    func pipelineModels(_ c: GoldenCase) -> (t5: String, dit: String, vae: String, tokenizer: String)? {
        guard let t5 = c.config["t5"] as? String, let dit = c.config["dit"] as? String, let vae = c.config["vae"] as? String,
              let tokenizer = c.config["tokenizer"] as? String else { return nil }
        return (t5, dit, vae, tokenizer)
    }

    /// An image input, uint8 [H, W, 3] read exactly.
    func rgbImage(_ t: Tensor, _ name: String) throws -> RGBImage {
        guard t.rank == 3, t.shape[2] == 3 else { throw GenerationError.invalidSettings("input \(name) must be uint8 [H, W, 3], got \(t.shape)") }
        return try RGBImage(width: t.shape[1], height: t.shape[0], pixels: (0..<t.count).map { UInt8(max(0, min(255, t.data[$0].rounded()))) })
    }
}

/// The sampling settings both the text and the image pipelines take.
protocol CaseSamplingSettings {
    var frames: Int { get set }
    var steps: Int { get set }
    var shift: Double { get set }
    var guideScale: Float { get set }
    var seed: UInt64 { get set }
    var negativePrompt: String { get set }
    var solver: FlowSolverKind { get set }
}
extension GenerationSettings: CaseSamplingSettings {}
extension ImageGenerationSettings: CaseSamplingSettings {}

/// The generate() arguments a pipeline case's config names (WanT2V and WanI2V take the same ones).
struct CaseSampling {
    var frames: Int?, steps: Int?, shift: Double?, guideScale: Float?, seed: UInt64?, negativePrompt: String?
    var solver: FlowSolverKind?

    init(_ c: GoldenCase) throws {
        frames = (c.config["frame_num"] as? NSNumber)?.intValue
        steps = (c.config["sampling_steps"] as? NSNumber)?.intValue
        shift = (c.config["shift"] as? NSNumber)?.doubleValue
        guideScale = (c.config["guide_scale"] as? NSNumber)?.floatValue
        seed = (c.config["seed"] as? NSNumber)?.uint64Value
        negativePrompt = c.config["n_prompt"] as? String
        if let v = c.config["sample_solver"] as? String {
            guard let kind = FlowSolverKind(rawValue: v) else { throw GenerationError.invalidSettings("case \(c.name): unknown solver \(v)") }
            solver = kind
        }
    }

    /// The arguments the case names, over `s`'s defaults.
    func apply<S: CaseSamplingSettings>(to s: inout S) {
        frames.map { s.frames = $0 }; steps.map { s.steps = $0 }; shift.map { s.shift = $0 }
        guideScale.map { s.guideScale = $0 }; seed.map { s.seed = $0 }
        negativePrompt.map { s.negativePrompt = $0 }; solver.map { s.solver = $0 }
    }
}
