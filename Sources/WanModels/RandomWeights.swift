import Foundation
import WanTensor
import WanWeights

extension WanDiTConfig {
    /// Every tensor of the official checkpoint for this configuration: (name, shape).
    public func parameterShapes() -> [(name: String, shape: [Int])] {
        let d = dim
        var list: [(String, [Int])] = [
            ("patch_embedding.weight", [d, inDim] + patchSize), ("patch_embedding.bias", [d]),
            ("text_embedding.0.weight", [d, textDim]), ("text_embedding.0.bias", [d]),
            ("text_embedding.2.weight", [d, d]), ("text_embedding.2.bias", [d]),
            ("time_embedding.0.weight", [d, freqDim]), ("time_embedding.0.bias", [d]),
            ("time_embedding.2.weight", [d, d]), ("time_embedding.2.bias", [d]),
            ("time_projection.1.weight", [6 * d, d]), ("time_projection.1.bias", [6 * d]),
        ]
        for i in 0..<numLayers {
            let p = "blocks.\(i)."
            list.append((p + "modulation", [1, 6, d]))
            var attn = ["self_attn", "cross_attn"].flatMap { a in ["q", "k", "v", "o"].map { "\(a).\($0)" } }
            if hasImageInput { attn += ["cross_attn.k_img", "cross_attn.v_img"] }
            for a in attn { list += [(p + a + ".weight", [d, d]), (p + a + ".bias", [d])] }
            if qkNorm {
                var norms = ["self_attn.norm_q", "self_attn.norm_k", "cross_attn.norm_q", "cross_attn.norm_k"]
                if hasImageInput { norms.append("cross_attn.norm_k_img") }
                for n in norms { list.append((p + n + ".weight", [d])) }
            }
            if crossAttnNorm { list += [(p + "norm3.weight", [d]), (p + "norm3.bias", [d])] }
            list += [(p + "ffn.0.weight", [ffnDim, d]), (p + "ffn.0.bias", [ffnDim]),
                     (p + "ffn.2.weight", [d, ffnDim]), (p + "ffn.2.bias", [d])]
        }
        list += [("head.modulation", [1, 2, d]), ("head.head.weight", [outDim * patchSize.reduce(1, *), d]),
                 ("head.head.bias", [outDim * patchSize.reduce(1, *)])]
        if hasImageInput {
            let c = WanDiTConfig.clipDim
            list += [("img_emb.proj.0.weight", [c]), ("img_emb.proj.0.bias", [c]),
                     ("img_emb.proj.1.weight", [c, c]), ("img_emb.proj.1.bias", [c]),
                     ("img_emb.proj.3.weight", [d, c]), ("img_emb.proj.3.bias", [d]),
                     ("img_emb.proj.4.weight", [d]), ("img_emb.proj.4.bias", [d])]
            if modelType == "flf2v" { list.append(("img_emb.emb_pos", [1, 514, c])) }
        }
        return list
    }

    /// Number of parameters.
    public var parameterCount: Int { parameterShapes().reduce(0) { $0 + $1.shape.reduce(1, *) } }

    /// Text keys each block attends to for `textRows` real rows: the real rows and one row standing for the padding
    /// (`collapsed`: the CPU backend), or text_len rows (see `PreparedDiTConditioning`).
    public func textKeys(textRows: Int, collapsed: Bool) -> Int {
        collapsed ? textRows + (textRows < textLen ? 1 : 0) : textLen
    }

    /// Bytes one `PreparedDiTConditioning` keeps: the embedded text and each block's text keys and values ([textKeys,
    /// dim] in `activation`), and for image rows the image tokens ([imageRows, dim] f32) and each block's image keys
    /// and values.
    public func conditioningBytes(textKeys: Int, imageRows: Int = 0, activation: ElementType) -> Int {
        let t = activation.size
        var total = t * textKeys * dim * (1 + 2 * numLayers)
        if imageRows > 0 { total += 4 * imageRows * dim + t * imageRows * dim * 2 * numLayers }
        return total
    }

    /// How the model runs the product `prefix` (`prefix.weight`, `prefix.bias`): the patch embedding, time embedding,
    /// time projection and head in f32 (as the official code runs them under autocast), MLPProj's second Linear with
    /// an f32 output (the image tokens stay f32), every other product in the activation type. The model binds its
    /// matrices with it, and the GPU memory plan counts them with it.
    public func matrixKind(_ prefix: String) -> MatrixKind {
        switch prefix {
        case "patch_embedding", "time_embedding.0", "time_embedding.2", "time_projection.1", "head.head": return .float32
        case "img_emb.proj.3": return .activationToFloat32
        default: return .activation
        }
    }
}

/// Random weights in the real shapes of a configuration, made in memory on request (for benchmarks and memory
/// tests: real Wan weights cannot be downloaded everywhere). Matrices are uniform in ±1/sqrt(fan_in) like
/// PyTorch's default init; norm weights are 1; everything else small.
public final class RandomWeights: SynthesizingWeightSource, @unchecked Sendable {
    private let shapes: [String: [Int]]
    private let seed: UInt64
    public let label: String

    public init(shapes: [(name: String, shape: [Int])], seed: UInt64 = 0, label: String = "random weights") {
        var s: [String: [Int]] = [:]
        for (n, sh) in shapes { s[n] = sh }
        self.shapes = s
        self.seed = seed
        self.label = label
    }

    public var names: [String] { Array(shapes.keys) }
    public func info(_ name: String) -> TensorInfo? {
        guard let s = shapes[name] else { return nil }
        return TensorInfo(name: name, dtype: .f32, shape: s, offset: 0, byteCount: s.reduce(1, *) * 4)
    }

    /// Random weights for whatever a model asks (no list of names needed): `WeightBinder` synthesises each tensor
    /// with the shape the model expects.
    public convenience init(synthesizingWithSeed seed: UInt64, label: String = "random weights") {
        self.init(shapes: [], seed: seed, label: label)
    }

    public func synthesize(_ name: String, shape: [Int]) throws -> Tensor { fill(name, shape) }

    public func float32(_ name: String) throws -> Tensor {
        guard let shape = shapes[name] else { throw WeightError.missingKey(source: label, key: name, expectedShape: nil) }
        return fill(name, shape)
    }

    func fill(_ name: String, _ shape: [Int]) -> Tensor {
        let t = Tensor(uninitialized: shape)
        let isNorm = name.hasSuffix("norm_q.weight") || name.hasSuffix("norm_k.weight") || name.hasSuffix("norm_k_img.weight")
            || (name.contains("norm") && name.hasSuffix(".weight") && shape.count == 1) || name.hasPrefix("img_emb.proj.0.weight")
            || name.hasPrefix("img_emb.proj.4.weight") || name.hasSuffix(".gamma")
        if isNorm {
            t.buffer.update(repeating: 1)
            return t
        }
        let bound: Float = shape.count >= 2 ? 1 / Float(shape.dropFirst().reduce(1, *)).squareRoot() : 0.02
        var h = seed ^ 0x9E37_79B9_7F4A_7C15
        for u in name.utf8 { h = (h ^ UInt64(u)) &* 0x100_0000_01B3 }
        let base = h
        Parallel.forRanges(t.count, grain: 1 << 16) { range in
            var state = base &+ UInt64(range.lowerBound) &* 0x9E37_79B9_7F4A_7C15
            for i in range {
                state = state &* 6364136223846793005 &+ 1442695040888963407
                let bits = UInt32(truncatingIfNeeded: state >> 40)  // 24 random bits
                t.data[i] = (Float(bits) * (2.0 / 16777216.0) - 1) * bound
            }
        }
        return t
    }
}
