import Foundation
import WanWeights

/// Constructor arguments of the official `WanModel` (wan/modules/model.py).
public struct WanDiTConfig: Codable, Sendable, Equatable, CustomStringConvertible {
    /// "t2v", "i2v" or "flf2v".
    public var modelType: String
    public var patchSize: [Int]
    public var textLen: Int
    public var inDim: Int
    public var dim: Int
    public var ffnDim: Int
    public var freqDim: Int
    public var textDim: Int
    public var outDim: Int
    public var numHeads: Int
    public var numLayers: Int
    public var qkNorm: Bool
    public var crossAttnNorm: Bool
    public var eps: Float

    public var headDim: Int { dim / numHeads }
    public var hasImageInput: Bool { modelType == "i2v" || modelType == "flf2v" }
    /// Width of the CLIP features the image projection takes.
    public static let clipDim = 1280

    public init(modelType: String = "t2v", patchSize: [Int] = [1, 2, 2], textLen: Int = 512, inDim: Int = 16, dim: Int,
                ffnDim: Int, freqDim: Int = 256, textDim: Int = 4096, outDim: Int = 16, numHeads: Int, numLayers: Int,
                qkNorm: Bool = true, crossAttnNorm: Bool = true, eps: Float = 1e-6) {
        self.modelType = modelType; self.patchSize = patchSize; self.textLen = textLen; self.inDim = inDim; self.dim = dim
        self.ffnDim = ffnDim; self.freqDim = freqDim; self.textDim = textDim; self.outDim = outDim; self.numHeads = numHeads
        self.numLayers = numLayers; self.qkNorm = qkNorm; self.crossAttnNorm = crossAttnNorm; self.eps = eps
    }

    /// Wan2.1-T2V-1.3B.
    public static let t2v1_3B = WanDiTConfig(dim: 1536, ffnDim: 8960, numHeads: 12, numLayers: 30)
    /// Wan2.1-T2V-14B.
    public static let t2v14B = WanDiTConfig(dim: 5120, ffnDim: 13824, numHeads: 40, numLayers: 40)
    /// Wan2.1-I2V-14B-480P / 720P.
    public static let i2v14B = WanDiTConfig(modelType: "i2v", inDim: 36, dim: 5120, ffnDim: 13824, numHeads: 40, numLayers: 40)
    /// Wan2.1-FLF2V-14B-720P.
    public static let flf2v14B = WanDiTConfig(modelType: "flf2v", inDim: 36, dim: 5120, ffnDim: 13824, numHeads: 40, numLayers: 40)

    public static let presets: [String: WanDiTConfig] = ["t2v-1.3B": .t2v1_3B, "t2v-14B": .t2v14B, "i2v-14B": .i2v14B, "flf2v-14B": .flf2v14B]

    public var description: String {
        "\(modelType) dim \(dim), \(numLayers) layers, \(numHeads) heads of \(headDim), ffn \(ffnDim), in \(inDim), out \(outDim), text \(textDim)"
    }

    /// Applies the official constructor arguments found in a config.json or golden model JSON (snake_case keys);
    /// keys it does not hold keep their current (inferred) values.
    public mutating func apply(officialArguments a: [String: Any]) {
        func int(_ k: String) -> Int? { (a[k] as? NSNumber)?.intValue ?? (a[k] as? Int) }
        if let v = a["model_type"] as? String { modelType = v }
        if let v = a["patch_size"] as? [Any] { patchSize = v.compactMap { ($0 as? NSNumber)?.intValue } }
        if let v = int("text_len") { textLen = v }
        if let v = int("in_dim") { inDim = v }
        if let v = int("dim") { dim = v }
        if let v = int("ffn_dim") { ffnDim = v }
        if let v = int("freq_dim") { freqDim = v }
        if let v = int("text_dim") { textDim = v }
        if let v = int("out_dim") { outDim = v }
        if let v = int("num_heads") { numHeads = v }
        if let v = int("num_layers") { numLayers = v }
        if let v = a["qk_norm"] as? Bool { qkNorm = v }
        if let v = a["cross_attn_norm"] as? Bool { crossAttnNorm = v }
        if let v = (a["eps"] as? NSNumber)?.floatValue { eps = v }
    }

    /// Infers the configuration from tensor shapes (the official names). The head count is not visible in the
    /// weights: every published Wan2.1 DiT uses heads of 128, which is assumed unless a config says otherwise.
    public init(inferringFrom source: WeightSource) throws {
        func shape(_ k: String) throws -> [Int] {
            guard let s = source.info(k)?.shape else { throw WeightError.missingKey(source: source.label, key: k, expectedShape: nil) }
            return s
        }
        /// A Linear weight [out, in].
        func matrix(_ k: String) throws -> [Int] {
            let s = try shape(k)
            guard s.count == 2 else { throw WeightError.badConfig(source: source.label, detail: "\(k) has shape \(s), expected 2 dims [out, in] (corrupt file or not a Wan DiT)") }
            return s
        }
        let pe = try shape("patch_embedding.weight")
        guard pe.count == 5 else { throw WeightError.badConfig(source: source.label, detail: "patch_embedding.weight has shape \(pe), expected 5 dims [dim, in_dim, 1, 2, 2]") }
        let dim = pe[0]
        let layers = Set(source.names.compactMap { name -> Int? in
            guard name.hasPrefix("blocks.") else { return nil }
            return Int(name.dropFirst(7).prefix { $0 != "." })
        })
        guard !layers.isEmpty else { throw WeightError.badConfig(source: source.label, detail: "no blocks.N.* tensors: not a Wan DiT file") }
        let patch = Array(pe[2...4])
        guard patch.allSatisfy({ (1...Self.maxPatch).contains($0) }) else {
            throw WeightError.badConfig(source: source.label, detail: "patch_embedding.weight has shape \(pe): a patch of \(patch) is not a Wan patch (1 to \(Self.maxPatch) per axis; Wan2.1 uses [1, 2, 2])")
        }
        let head = try matrix("head.head.weight")
        let type: String
        if source.info("img_emb.emb_pos") != nil { type = "flf2v" } else if source.info("img_emb.proj.1.weight") != nil { type = "i2v" } else { type = "t2v" }
        self.init(modelType: type, patchSize: patch, inDim: pe[1], dim: dim,
                  ffnDim: try matrix("blocks.0.ffn.0.weight")[0], freqDim: try matrix("time_embedding.0.weight")[1],
                  textDim: try matrix("text_embedding.0.weight")[1], outDim: head[0] / patch.reduce(1, *),
                  numHeads: max(1, dim / 128), numLayers: layers.count,
                  qkNorm: source.info("blocks.0.self_attn.norm_q.weight") != nil,
                  crossAttnNorm: source.info("blocks.0.norm3.weight") != nil)
    }

    /// The largest patch extent per axis and the largest width (dim, ffn_dim, …) and layer count a configuration
    /// may state: far above any Wan model (patch [1, 2, 2], dim 5120, ffn 13824, 40 layers), far below sizes whose
    /// products overflow.
    public static let maxPatch = 64
    public static let maxWidth = 1 << 20
    public static let maxLayers = 10_000

    /// Throws a `WeightError.badConfig` naming `source` when a value (inferred from the shapes, or stated by a
    /// config.json) cannot describe a model: a width, head or layer count that is not positive or absurdly large,
    /// a patch that is not three positive extents, heads that do not divide dim into even halves.
    public func validate(source: String) throws {
        func fail(_ what: String) -> WeightError { .impossibleConfig(source: source, part: "model", what) }
        for (name, v) in [("dim", dim), ("in_dim", inDim), ("out_dim", outDim), ("ffn_dim", ffnDim), ("freq_dim", freqDim),
                          ("text_dim", textDim), ("text_len", textLen), ("num_heads", numHeads)] where !(1...Self.maxWidth).contains(v) {
            throw fail("\(name) \(v), not an integer from 1 to \(Self.maxWidth)")
        }
        guard (1...Self.maxLayers).contains(numLayers) else { throw fail("num_layers \(numLayers), not an integer from 1 to \(Self.maxLayers)") }
        guard patchSize.count == 3, patchSize.allSatisfy({ (1...Self.maxPatch).contains($0) }) else {
            throw fail("patch_size \(patchSize), not three integers from 1 to \(Self.maxPatch)")
        }
        guard dim % numHeads == 0, (dim / numHeads) % 2 == 0 else {
            throw fail("dim \(dim) and num_heads \(numHeads): dim does not split into \(numHeads) heads of even size")
        }
        guard freqDim % 2 == 0 else { throw fail("freq_dim \(freqDim), which is not even") }
        guard eps.isFinite, eps >= 0, eps < 1 else { throw fail("eps \(eps), not a small non-negative number (Wan2.1: 1e-6)") }
    }
}
