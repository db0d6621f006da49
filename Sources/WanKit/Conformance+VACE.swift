import Foundation
import WanTensor
import WanWeights
import WanModels

extension ConformanceRunner {
    /// The VACE DiT of a model JSON (class `VaceWanModel` or diffusers' `WanVACETransformer3DModel`) on the runner's backend (`vaceFactory`'s, else the CPU
    /// `WanVACEDiT`), nil for a layout the loader does not read.
    func vaceDiT(_ model: String) throws -> VACEDenoiser? {
        if let m = vaceDiTs[model] { return m }
        guard let weights = try ditWeights(model, classes: Self.vaceClasses) else { return nil }
        let dit: VACEDenoiser
        if let factory = vaceFactory {
            dit = try factory(WanVACEConfig(inferringFrom: weights.source, arguments: weights.arguments), weights.source)
        } else {
            dit = try WanVACEDiT(weights: weights.source, arguments: weights.arguments, products: cpuProducts)
        }
        vaceDiTs[model] = dit
        return dit
    }

    /// `VaceWanModel.forward(x=[x], t, vace_context=[vace_context], context=[context], seq_len, vace_context_scale)`
    /// as wan/vace.py calls it; lists as x0, x1, … (with vace_context0, context0, …) for several videos.
    func runVACE(_ c: GoldenCase, model: String) throws -> CaseResult {
        guard let dit = try vaceDiT(model) else {
            let json = try modelJSON(model)
            return .skip(c.name, "\(json["class"] ?? "?") with layout '\(json["layout"] ?? "?")' is not implemented yet")
        }
        let batched = c.hasInput("x0")
        let count = batched ? (0..<64).prefix { c.hasInput("x\($0)") }.count : 1
        func item(_ base: String, _ i: Int) throws -> Tensor {
            try c.input(batched ? base + "\(i)" : base)
        }
        let t = try c.input("t")
        let scale = Float(c.double("vace_context_scale") ?? 1)
        let p = dit.config.dit.patchSize
        var got: [String: Tensor] = [:]
        let wanted = Set(c.outputNames)
        for i in 0..<count {
            let x = try item("x", i)
            if let seqLen = c.int("seq_len") {
                let tokens = (x.shape[1] / p[0]) * (x.shape[2] / p[1]) * (x.shape[3] / p[2])
                if tokens > seqLen { return .fail(c.name, "video \(i) has \(tokens) tokens, more than seq_len \(seqLen)") }
            }
            let out = try dit.forward(x: x, t: t.data[t.count == count ? i : 0], context: try item("context", i),
                                      vaceContext: try item("vace_context", i), scale: scale,
                                      trace: i == 0 ? { name, tensor in if wanted.contains(name) { got[name] = tensor } } : nil)
            if batched { got["y\(i)"] = out } else { got["y"] = out; got["out"] = out }
        }
        return compare(c, got)
    }

    /// Golden cases of `WanVace.prepare_source` + `WanVace.generate` (wan/vace.py) with tiny models. Config: t5, dit
    /// (a VaceWanModel), vae, tokenizer, size [W, H], frame_num, the sampling arguments and context_scale. Inputs: the
    /// prompt; optionally `video` and `mask` as uint8 [F, H, W, 3] and reference images `ref_image0`, `ref_image1`, …
    /// as uint8 [h, w, 3]. Outputs: every tensor the pipeline observes (vace_frames = z0, vace_masks = m0,
    /// vace_context = z, noise, latents_before_step) and the decoded video.
    func runVACEPipeline(_ c: GoldenCase) throws -> CaseResult {
        guard let (t5Name, ditName, vaeName, tokenizerPath) = pipelineModels(c) else {
            return .fail(c.name, "case config must name t5, dit, vae and tokenizer")
        }
        guard let dit = try vaceDiT(ditName), let vae = try vae(vaeName) else { return .skip(c.name, "a model layout is not implemented") }
        let tokenizer = try UMT5Tokenizer(file: (root as NSString).appendingPathComponent(tokenizerPath))
        let pipeline = try VACEPipeline(text: TextConditioner(tokenizer: tokenizer, encoder: try t5(t5Name)), dit: dit, vae: vae)
        var s = GenerationSettings()
        if let size = c.config["size"] as? [NSNumber], size.count == 2 { s.width = size[0].intValue; s.height = size[1].intValue }
        try CaseSampling(c).apply(to: &s)
        let contextScale = Float((c.config["context_scale"] as? NSNumber)?.doubleValue ?? 1)
        guard let prompt = c.inputs["prompt"] as? String else { return .fail(c.name, "case has no prompt") }

        func video(_ name: String) throws -> RGBVideo? {
            guard c.hasInput(name) else { return nil }
            let t = try encoderIntegerInput(c, name)
            guard t.rank == 4, t.shape[3] == 3 else { throw GenerationError.invalidSettings("input \(name) must be uint8 [F, H, W, 3], got \(t.shape)") }
            let frame = t.shape[1] * t.shape[2] * 3
            return try RGBVideo(frames: (0..<t.shape[0]).map { f in
                try rgbImage(Tensor(shape: [t.shape[1], t.shape[2], 3], values: Array(UnsafeBufferPointer(start: t.data + f * frame, count: frame))), name)
            })
        }
        let references = try (0..<64).prefix { c.hasInput("ref_image\($0)") }.map { try rgbImage(try encoderIntegerInput(c, "ref_image\($0)"), "ref_image\($0)") }
        let inputs = VACEInputs(video: try video("video"), mask: try video("mask"), referenceImages: references)

        let got = PipelineOutputs()
        let latent = try pipeline.sample(prompt: prompt, inputs: inputs, settings: s, contextScale: contextScale, observe: { event in
            switch event {
            case .prompts(let ids, let negativeIds, let context, let negativeContext):
                got.prompts(ids: ids, negativeIds: negativeIds, context: context, negativeContext: negativeContext)
            case .conditioning(_, _, _, let frames, let masks, let context):
                got["vace_frames"] = frames; got["vace_masks"] = masks; got["vace_context"] = context
            case .noise(let n): got["noise"] = n
            case .timesteps(let t): got.timesteps(t)
            case .latentAfterStep(_, let l): got.afterStep(l)
            }
        })
        return compare(c, try got.finished { try pipeline.decode(latent, onFrames: $0) })
    }
}
