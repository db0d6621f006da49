import Foundation
import WanTensor
import WanWeights
import WanModels

extension ConformanceRunner {
    /// The VACE DiT of a model JSON (class `VaceWanModel`) on the runner's backend (`vaceFactory`'s, else the CPU
    /// `WanVACEDiT`), nil for a layout the loader does not read.
    func vaceDiT(_ model: String) throws -> VACEDenoiser? {
        if let m = vaceDiTs[model] { return m }
        guard let weights = try ditWeights(model, classes: ["VaceWanModel"]) else { return nil }
        let dit: VACEDenoiser
        if let factory = vaceFactory {
            var config = try WanVACEConfig(inferringFrom: weights.source)
            config.apply(officialArguments: weights.arguments)
            dit = try factory(config, weights.source)
        } else {
            dit = try WanVACEDiT(weights: weights.source, arguments: weights.arguments)
        }
        vaceDiTs[model] = dit
        return dit
    }

    /// `VaceWanModel.forward(x=[x], t, vace_context=[vace_context], context=[context], seq_len, vace_context_scale)`
    /// as wan/vace.py calls it; lists as x0, x1, … (with vace_context0, context0, …) for several videos.
    func runVACE(_ c: GoldenCase, model: String) throws -> CaseResult {
        guard let dit = try vaceDiT(model) else {
            let json = try modelJSON(model)
            return .skip(c.name, "VaceWanModel with layout '\(json["layout"] ?? "?")' is not implemented yet")
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
}
