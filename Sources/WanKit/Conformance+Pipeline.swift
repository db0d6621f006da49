import Foundation
import WanTensor
import WanModels
import WanText

extension ConformanceRunner {
    /// Golden cases of component `pipeline`: the whole `WanT2V.generate` with tiny models.
    func runPipeline(_ c: GoldenCase) throws -> CaseResult {
        let task = c.config["task"] as? String ?? "?"
        guard task == "t2v" || task == "t2i" else { return .skip(c.name, "pipeline task '\(task)' is not implemented yet") }
        guard let t5Name = c.config["t5"] as? String, let ditName = c.config["dit"] as? String, let vaeName = c.config["vae"] as? String,
              let tokenizerPath = c.config["tokenizer"] as? String else {
            return .fail(c.name, "case config must name t5, dit, vae and tokenizer")
        }
        guard let dit = try dit(ditName), let vae = try vae(vaeName) else { return .skip(c.name, "a model layout is not implemented") }
        let tokenizer = try UMT5Tokenizer(file: (root as NSString).appendingPathComponent(tokenizerPath))
        let pipeline = try TextToVideo(text: TextConditioner(tokenizer: tokenizer, encoder: try t5(t5Name)), dit: dit, vae: vae)
        var s = GenerationSettings()
        if let size = c.config["size"] as? [NSNumber], size.count == 2 { s.width = size[0].intValue; s.height = size[1].intValue }
        if let v = (c.config["frame_num"] as? NSNumber)?.intValue { s.frames = v }
        if let v = (c.config["sampling_steps"] as? NSNumber)?.intValue { s.steps = v }
        if let v = (c.config["shift"] as? NSNumber)?.doubleValue { s.shift = v }
        if let v = (c.config["guide_scale"] as? NSNumber)?.floatValue { s.guideScale = v }
        if let v = (c.config["seed"] as? NSNumber)?.uint64Value { s.seed = v }
        if let v = c.config["n_prompt"] as? String { s.negativePrompt = v }
        if let v = c.config["sample_solver"] as? String {
            guard let kind = FlowSolverKind(rawValue: v) else { return .fail(c.name, "unknown solver \(v)") }
            s.solver = kind
        }
        guard let prompt = c.inputs["prompt"] as? String else { return .fail(c.name, "case has no prompt") }

        // The noise comes from our own PyTorch-exact generator; the case's noise input must equal it.
        let noise = TextToVideo.initialNoise(shape: s.latentShape, seed: s.seed)
        if c.hasInput("noise") {
            let given = try c.input("noise")
            guard given.count == noise.count, (0..<noise.count).allSatisfy({ given.data[$0] == noise.data[$0] }) else {
                return .fail(c.name, "the seed-\(s.seed) noise differs from the case's noise input")
            }
        }
        var got: [String: Tensor] = [:]
        var afterSteps: [Tensor] = []
        let latent = try pipeline.sample(prompt: prompt, settings: s, noise: noise) { event in
            switch event {
            case .prompts(let ids, let negativeIds, let context, let negativeContext):
                got["token_ids"] = Tensor(shape: [ids.count], values: ids.map(Float.init))
                got["neg_token_ids"] = Tensor(shape: [negativeIds.count], values: negativeIds.map(Float.init))
                got["context"] = context
                got["context_null"] = negativeContext
            case .timesteps(let t):
                got["timesteps"] = Tensor(shape: [t.count], values: t.map(Float.init))
            case .latentAfterStep(_, let l):
                afterSteps.append(l.reshaped(l.shape))
            }
        }
        if !afterSteps.isEmpty {
            let per = afterSteps[0].count
            let stacked = Tensor(uninitialized: [afterSteps.count] + afterSteps[0].shape)
            for (i, l) in afterSteps.enumerated() { (stacked.data + i * per).update(from: l.data, count: per) }
            got["latents_before_step"] = stacked
        }
        var chunks: [Tensor] = []
        try pipeline.decode(latent) { chunk, _ in chunks.append(chunk) }
        got["video"] = concatenateFrames(chunks)
        return compare(c, got)
    }
}
