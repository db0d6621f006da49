import Foundation
import WanTensor
import WanWeights
#if canImport(Glibc)
import Glibc
#endif

/// Constructor arguments of the official `T5Encoder` (wan/modules/t5.py) as `umt5_xxl(encoder_only=True)` builds it,
/// plus the two constants the official code fixes (T5LayerNorm eps 1e-6, relative max_dist 128).
public struct UMT5Config: Sendable, Equatable, CustomStringConvertible {
    public var vocab = 256384
    public var dim = 4096
    public var dimAttn = 4096
    public var dimFfn = 10240
    public var numHeads = 64
    public var numLayers = 24
    public var numBuckets = 32
    /// One relative-position table for all layers (T5) instead of one per layer (umT5: false).
    public var sharedPos = false
    public var maxDistance = 128
    public var eps: Float = 1e-6

    /// umT5-XXL's encoder, the text encoder of every Wan2.1 model.
    public static let umt5XXL = UMT5Config()
    public init() {}

    public var headDim: Int { dimAttn / numHeads }

    public var description: String {
        "umT5(vocab \(vocab), dim \(dim), dim_attn \(dimAttn), dim_ffn \(dimFfn), \(numHeads) heads, \(numLayers) layers, \(numBuckets) buckets\(sharedPos ? ", shared_pos" : ""))"
    }

    /// Applies official arguments (`vocab`, `dim`, `dim_attn`, `dim_ffn`, `num_heads`, `num_layers`, `num_buckets`,
    /// `shared_pos`; also `vocab_size`/`encoder_layers` as umt5_xxl's cfg names them, and `eps`, `max_dist`).
    public mutating func apply(officialArguments a: [String: Any]) {
        func int(_ k: String) -> Int? { (a[k] as? NSNumber)?.intValue }
        if let v = int("vocab") ?? int("vocab_size") { vocab = v }
        if let v = int("dim") { dim = v }
        if let v = int("dim_attn") { dimAttn = v }
        if let v = int("dim_ffn") { dimFfn = v }
        if let v = int("num_heads") { numHeads = v }
        if let v = int("num_layers") ?? int("encoder_layers") { numLayers = v }
        if let v = int("num_buckets") { numBuckets = v }
        if let v = a["shared_pos"] as? Bool { sharedPos = v }
        if let v = int("max_dist") { maxDistance = v }
        if let v = (a["eps"] as? NSNumber)?.floatValue { eps = v }
    }

    /// The configuration of a checkpoint: umT5-XXL's preset, then what the tensor shapes say, then `arguments`.
    public static func inferred(from source: WeightSource, arguments: [String: Any] = [:]) -> UMT5Config {
        var c = UMT5Config.umt5XXL
        if let s = source.info("token_embedding.weight")?.shape, s.count == 2 { c.vocab = s[0]; c.dim = s[1] }
        if let s = source.info("blocks.0.attn.q.weight")?.shape, s.count == 2 { c.dimAttn = s[0] }
        if let s = source.info("blocks.0.ffn.fc1.weight")?.shape, s.count == 2 { c.dimFfn = s[0] }
        if let s = source.info("pos_embedding.embedding.weight")?.shape, s.count == 2 {
            c.sharedPos = true; c.numBuckets = s[0]; c.numHeads = s[1]
        } else if let s = source.info("blocks.0.pos_embedding.embedding.weight")?.shape, s.count == 2 {
            c.sharedPos = false; c.numBuckets = s[0]; c.numHeads = s[1]
        }
        var layers = 0
        for n in source.names where n.hasPrefix("blocks.") {
            if let i = Int(n.dropFirst(7).prefix { $0 != "." }), i < 1 << 20 { layers = max(layers, i + 1) }  // an absurd index: binding reports the name
        }
        if layers > 0 { c.numLayers = layers }
        c.apply(officialArguments: arguments)
        return c
    }

    /// Every tensor of the official state dict: (name, shape).
    public func parameterShapes() -> [(name: String, shape: [Int])] {
        var list: [(String, [Int])] = [("token_embedding.weight", [vocab, dim])]
        if sharedPos { list.append(("pos_embedding.embedding.weight", [numBuckets, numHeads])) }
        for i in 0..<numLayers {
            let p = "blocks.\(i)."
            list += [(p + "norm1.weight", [dim]), (p + "attn.q.weight", [dimAttn, dim]), (p + "attn.k.weight", [dimAttn, dim]),
                     (p + "attn.v.weight", [dimAttn, dim]), (p + "attn.o.weight", [dim, dimAttn]), (p + "norm2.weight", [dim]),
                     (p + "ffn.gate.0.weight", [dimFfn, dim]), (p + "ffn.fc1.weight", [dimFfn, dim]), (p + "ffn.fc2.weight", [dim, dimFfn])]
            if !sharedPos { list.append((p + "pos_embedding.embedding.weight", [numBuckets, numHeads])) }
        }
        list.append(("norm.weight", [dim]))
        return list
    }

    public var parameterCount: Int { parameterShapes().reduce(0) { $0 + $1.shape.reduce(1, *) } }

    /// Throws a `WeightError.badConfig` naming `source` when a value (inferred from the shapes, or stated by a
    /// config.json) cannot describe an encoder: a width, head, layer or bucket count that is not positive or absurdly
    /// large, heads that do not divide dim_attn, a max_dist within the exact buckets (its log-spaced buckets would
    /// divide by log(1) or less).
    public func validate(source: String) throws {
        func fail(_ what: String) -> WeightError { .impossibleConfig(source: source, part: "text encoder", what) }
        let maxWidth = 1 << 20, maxVocab = 1 << 24
        guard (1...maxVocab).contains(vocab) else { throw fail("vocab \(vocab), not an integer from 1 to \(maxVocab)") }
        for (name, v) in [("dim", dim), ("dim_attn", dimAttn), ("dim_ffn", dimFfn), ("num_heads", numHeads)] where !(1...maxWidth).contains(v) {
            throw fail("\(name) \(v), not an integer from 1 to \(maxWidth)")
        }
        guard (1...10_000).contains(numLayers) else { throw fail("num_layers \(numLayers), not an integer from 1 to 10000") }
        guard dimAttn % numHeads == 0 else { throw fail("dim_attn \(dimAttn), which is not a multiple of num_heads \(numHeads)") }
        guard (4...maxWidth).contains(numBuckets) else { throw fail("num_buckets \(numBuckets), not an integer from 4 to \(maxWidth)") }
        guard maxDistance > numBuckets / 4, maxDistance <= maxWidth else {
            throw fail("max_dist \(maxDistance) for \(numBuckets) buckets (it must exceed the \(numBuckets / 4) exact ones, up to \(maxWidth))")
        }
        guard eps.isFinite, eps >= 0, eps < 1 else { throw fail("eps \(eps), not a small non-negative number (umT5: 1e-6)") }
    }
}

/// Errors of encoder calls with unusable inputs.
public struct EncoderInputError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// The umT5 text encoder (official `T5Encoder` of wan/modules/t5.py, encoder only), written once against
/// `ComputeBackend` (`UMT5Encoder` on the CPU, `CUDAUMT5` on a GPU): token embedding (rows of the stored table
/// converted on the host, only those of the tokens), then per layer T5LayerNorm (RMS, no mean, no bias), q/k/v, T5
/// attention with the layer's relative-position bias (no scaling, the segment's keys only), o, residual;
/// T5LayerNorm, the gated-GELU FFN fc2(fc1(x) * gelu_tanh(gate(x))), residual; a final T5LayerNorm. The residual
/// stream is f32; products run in the backend's activation type, except that q, k and v come out in f32 and the
/// attention runs in f32 (see `run`).
///
/// On the CPU the weights stay as stored (bf16 for the official checkpoint) in the file mapping; each product
/// converts its weight to float32 a slice of output features at a time, just before the slice's GEMM, into a small
/// per-worker scratch. So encoding with umT5-XXL (5.7B parameters) needs about the file size, not twice it in float32.
public final class T5Encoder<B: ComputeBackend>: UMT5TextEncoder, @unchecked Sendable {
    public let config: UMT5Config
    public let backend: B

    struct Block {
        let norm1: B.Vector, norm2: B.Vector
        let q: B.Matrix, k: B.Matrix, v: B.Matrix, o: B.Matrix
        let gate: B.Matrix, fc1: B.Matrix, fc2: B.Matrix
        let posTable: B.Vector?  // [numBuckets, numHeads]
        var matrices: [B.Matrix] { [q, k, v, o, gate, fc1, fc2] }
    }

    /// The token embedding as stored (host; rows read for the prompt's tokens only).
    let embedding: LinearWeight
    let sharedPosTable: B.Vector?
    let blocks: [Block]
    let finalNorm: B.Vector

    /// Binds a checkpoint under the official names (`openT5Weights(path:).source`) onto `backend`.
    public init(config: UMT5Config, weights: WeightSource, backend: B) throws {
        try config.validate(source: weights.label)
        self.config = config
        self.backend = backend
        let b = WeightBinder(weights)
        let d = config.dim, a = config.dimAttn, f = config.dimFfn
        func linear(_ name: String, in i: Int, out o: Int) throws -> B.Matrix { try backend.matrix(b, name, in: i, out: o, bias: false) }
        func vector(_ name: String, _ shape: [Int]) throws -> B.Vector { try backend.vector(try b.tensor(name, shape)) }
        embedding = LinearWeight(try b.stored("token_embedding.weight", [config.vocab, d]))
        sharedPosTable = config.sharedPos ? try vector("pos_embedding.embedding.weight", [config.numBuckets, config.numHeads]) : nil
        var blocks: [Block] = []
        for i in 0..<config.numLayers {
            let p = "blocks.\(i)."
            blocks.append(Block(
                norm1: try vector(p + "norm1.weight", [d]), norm2: try vector(p + "norm2.weight", [d]),
                q: try backend.matrix(try Linear(b, p + "attn.q", in: d, out: a, bias: false), kind: .activationToFloat32),
                k: try backend.matrix(try Linear(b, p + "attn.k", in: d, out: a, bias: false), kind: .activationToFloat32),
                v: try backend.matrix(try Linear(b, p + "attn.v", in: d, out: a, bias: false), kind: .activationToFloat32),
                o: try linear(p + "attn.o", in: a, out: d),
                gate: try linear(p + "ffn.gate.0", in: d, out: f), fc1: try linear(p + "ffn.fc1", in: d, out: f),
                fc2: try linear(p + "ffn.fc2", in: f, out: d),
                posTable: config.sharedPos ? nil : try vector(p + "pos_embedding.embedding.weight", [config.numBuckets, config.numHeads])))
        }
        self.blocks = blocks
        finalNorm = try vector("norm.weight", [d])
        try b.finish()
        try backend.weightsLoaded()
    }

    // MARK: relative positions

    /// The official `T5RelativeEmbedding._relative_position_bucket` for one relative position (key index minus query
    /// index): bidirectional halves of numBuckets/2, exact below half of that, log-spaced up to maxDistance, in float32
    /// with truncation toward zero as torch's `.long()`.
    public static func relativePositionBucket(_ relative: Int, numBuckets: Int, bidirectional: Bool = true, maxDistance: Int = 128) -> Int {
        umt5RelativePositionBucket(relative, numBuckets: numBuckets, bidirectional: bidirectional, maxDistance: maxDistance)
    }

    // MARK: encoding

    /// All segments through the encoder together (one pass over the weights for the whole batch): the hidden states
    /// of all their rows, stacked [rows, dim] (f32).
    public func run(_ segments: [UMT5Segment]) throws -> Tensor {
        let c = config, be = backend, act = be.activationType
        let d = c.dim, a = c.dimAttn, f = c.dimFfn
        let rows = segments.reduce(0) { $0 + $1.ids.count }
        if rows == 0 { return Tensor(zeros: [0, d]) }
        let layout = try be.segments(
            AttentionSegments(rows: segments.map { $0.ids.count }, keys: segments.map { $0.keys }, positions: segments.flatMap { $0.positions }),
            buckets: { let (b, m) = relativeBuckets(segments); return RelativeBuckets(bucketOf: b, maxPos: m) }())
        let embedded = try embedTokens(segments) { id, row in embedding.dequantizeRows(id..<(id + 1), into: row) }
        let x = try be.upload(embedded, rows: rows, cols: d)
        let h = try be.tensor(rows: rows, cols: d, type: act)
        let q = try be.tensor(rows: rows, cols: a, type: .f32), k = try be.tensor(rows: rows, cols: a, type: .f32)
        let v = try be.tensor(rows: rows, cols: a, type: .f32), attn = try be.tensor(rows: rows, cols: a, type: .f32)
        let attnAct = act == .f32 ? nil : try be.tensor(rows: rows, cols: a, type: act)  // o's input in the activation type
        let hidden = try be.tensor(rows: rows, cols: f, type: act), delta = try be.tensor(rows: rows, cols: d, type: act)
        for block in blocks {
            // Self-attention. q, k and v come out of their products in f32 and the attention runs in f32 whatever the
            // activation type: T5 scores are unscaled q·k, so bf16 q and k cost the most precision of the encoder
            // (over random inputs the bf16 encoder's rel_l2 to the f32 reference falls from 1.3e-2-1.9e-2 to
            // 1.2e-2-1.55e-2). The encoder runs twice a generation; the f32 attention costs little there.
            try be.rmsNorm(x, into: h, weight: block.norm1, eps: c.eps)
            try be.linear(block.q, h, into: q, activation: .none)
            try be.linear(block.k, h, into: k, activation: .none)
            try be.linear(block.v, h, into: v, activation: .none)
            try be.attention(q: q, k: k, v: v, out: attn, segments: layout, table: block.posTable ?? sharedPosTable!,
                             heads: c.numHeads, headDim: c.headDim, scale: 1)
            if let attnAct { try be.convert(attn, into: attnAct) }
            try be.linear(block.o, attnAct ?? attn, into: delta, activation: .none)
            try be.addResidual(x, delta)
            // Gated-GELU FFN.
            try be.rmsNorm(x, into: h, weight: block.norm2, eps: c.eps)
            try be.gatedGELU(gate: block.gate, up: block.fc1, h, into: hidden)
            try be.linear(block.fc2, hidden, into: delta, activation: .none)
            try be.addResidual(x, delta)
            be.layerFinished(block.matrices)
        }
        try be.rmsNorm(x, into: x, weight: finalNorm, eps: c.eps)
        return try be.download(x)
    }
}

/// umT5 on the CPU.
public typealias UMT5Encoder = T5Encoder<CPUBackend>

extension T5Encoder where B == CPUBackend {
    /// Binds a checkpoint under the official names (`openT5Weights(path:).source`); the configuration is umT5-XXL's
    /// preset corrected by the tensor shapes and then by `arguments` (official constructor arguments).
    public convenience init(weights: WeightSource, arguments: [String: Any] = [:], products: ProductType = .f32) throws {
        try self.init(config: UMT5Config.inferred(from: weights, arguments: arguments), weights: weights, products: products)
    }

    public convenience init(config: UMT5Config, weights: WeightSource, products: ProductType = .f32) throws {
        try self.init(config: config, weights: weights, backend: CPUBackend(products: products))
    }

    /// After each layer, hand the pages of its weights in the file mapping back to the kernel (`CPUBackend`).
    public var releasesMappedPages: Bool {
        get { backend.releasesMappedPages }
        set { backend.releasesMappedPages = newValue }
    }
}

/// `T5RelativeEmbedding._relative_position_bucket` (see `T5Encoder.relativePositionBucket`).
func umt5RelativePositionBucket(_ relative: Int, numBuckets: Int, bidirectional: Bool, maxDistance: Int) -> Int {
    var buckets = numBuckets
    var result = 0
    var rel = relative
    if bidirectional {
        buckets = numBuckets / 2
        if rel > 0 { result = buckets }
        rel = abs(rel)
    } else {
        rel = -min(rel, 0)
    }
    let maxExact = buckets / 2
    if rel < maxExact { return result + rel }
    let ratio = Float(rel) / Float(maxExact)
    let scaled = logf(ratio) / Float(log(Double(maxDistance) / Double(maxExact))) * Float(buckets - maxExact)
    let large = min(maxExact + Int(scaled), buckets - 1)
    return result + large
}

/// One sequence as the encoder's layers see it: rows `[0, keys)` are attended to (mask 1), later rows are queries
/// only (padding, computed but invisible); `positions` are the original token positions (relative bias).
public struct UMT5Segment: Sendable {
    public var ids: [Int]
    public var positions: [Int]
    public var keys: Int
    /// Source row of each segment row in the caller's [B, L] layout.
    public var sourceRows: [Int]

    public init(ids: [Int], positions: [Int], keys: Int, sourceRows: [Int]) {
        self.ids = ids; self.positions = positions; self.keys = keys; self.sourceRows = sourceRows
    }
}

/// The umT5 encoder on any backend (`UMT5Encoder` on the CPU, `CUDAUMT5` on a GPU): a backend runs segments
/// (`run`: the final hidden states of every segment row, stacked [rows, dim]); the official entry points that turn
/// ids, masks and token lists into segments and back are shared here.
public protocol UMT5TextEncoder: AnyObject {
    var config: UMT5Config { get }
    func run(_ segments: [UMT5Segment]) throws -> Tensor
}

extension UMT5TextEncoder {
    /// `T5EncoderModel.__call__`: the hidden states of each sample's real tokens (mask != 0), [count_b, dim] each.
    /// `ids` and `mask` are [B, L] (token ids as float values, mask 1 / 0).
    public func encode(ids: Tensor, mask: Tensor? = nil) throws -> [Tensor] {
        let (b, l) = try umt5BatchShape(ids, mask)
        var segments: [UMT5Segment] = []
        for s in 0..<b {
            var seg = UMT5Segment(ids: [], positions: [], keys: 0, sourceRows: [])
            for j in 0..<l where mask.map({ $0.data[s * l + j] != 0 }) ?? true {
                seg.ids.append(Int(ids.data[s * l + j])); seg.positions.append(j); seg.sourceRows.append(s * l + j)
            }
            seg.keys = seg.ids.count
            segments.append(seg)
        }
        return try hiddenStates(of: segments)
    }

    /// Runs the segments and splits the stacked output into one [tokens, dim] tensor per segment.
    func hiddenStates(of segments: [UMT5Segment]) throws -> [Tensor] {
        let out = try run(segments)
        var result: [Tensor] = []
        var row = 0
        for seg in segments {
            let t = Tensor(uninitialized: [seg.ids.count, config.dim])
            t.data.update(from: out.data + row * config.dim, count: seg.ids.count * config.dim)
            row += seg.ids.count
            result.append(t)
        }
        return result
    }

    /// Hidden states of token lists (each list is one prompt's real tokens, `</s>` included).
    public func encode(tokens: [[Int]]) throws -> [Tensor] {
        let segments = tokens.map { UMT5Segment(ids: $0, positions: Array(0..<$0.count), keys: $0.count, sourceRows: []) }
        return try hiddenStates(of: segments)
    }

    /// `T5Encoder.forward(ids, mask)`: [B, L, dim] for every position, padded ones included (their rows attend to the
    /// real tokens; a sample whose mask is all zero attends uniformly to all its positions, as torch's softmax over
    /// equal `finfo.min` scores does).
    public func forward(ids: Tensor, mask: Tensor? = nil) throws -> Tensor {
        let (b, l) = try umt5BatchShape(ids, mask)
        var segments: [UMT5Segment] = []
        for s in 0..<b {
            var real: [Int] = [], padded: [Int] = []
            for j in 0..<l { if mask.map({ $0.data[s * l + j] != 0 }) ?? true { real.append(j) } else { padded.append(j) } }
            let order = real + padded
            segments.append(UMT5Segment(ids: order.map { Int(ids.data[s * l + $0]) }, positions: order, keys: real.count,
                                        sourceRows: order.map { s * l + $0 }))
        }
        let out = try run(segments)
        let result = Tensor(uninitialized: [b, l, config.dim])
        var row = 0
        for seg in segments {
            for src in seg.sourceRows {
                (result.data + src * config.dim).update(from: out.data + row * config.dim, count: config.dim)
                row += 1
            }
        }
        return result
    }

    /// The token embedding of every segment row, stacked [rows, dim]: `row(id, destination)` writes the table's row
    /// `id` (ids outside the vocabulary are refused first).
    public func embedTokens(_ segments: [UMT5Segment], row: (Int, UnsafeMutablePointer<Float>) -> Void) throws -> Tensor {
        let d = config.dim, rows = segments.reduce(0) { $0 + $1.ids.count }
        let x = Tensor(uninitialized: [max(rows, 1), d])
        var r = 0
        for seg in segments {
            for id in seg.ids {
                guard id >= 0, id < config.vocab else { throw EncoderInputError("token id \(id) outside the vocabulary of \(config.vocab)") }
                row(id, x.data + r * d)
                r += 1
            }
        }
        return x
    }

    /// The relative-position bucket of every relative position that occurs in `segments` (-maxPos … maxPos, index
    /// relative + maxPos) and maxPos.
    public func relativeBuckets(_ segments: [UMT5Segment]) -> (buckets: [Int], maxPos: Int) {
        let maxPos = segments.flatMap(\.positions).max() ?? 0
        let buckets = (-maxPos...maxPos).map {
            UMT5Encoder.relativePositionBucket($0, numBuckets: config.numBuckets, bidirectional: true, maxDistance: config.maxDistance)
        }
        return (buckets, maxPos)
    }
}

func umt5BatchShape(_ ids: Tensor, _ mask: Tensor?) throws -> (Int, Int) {
    let shape = ids.shape.count == 1 ? [1, ids.shape[0]] : ids.shape
    guard shape.count == 2 else { throw EncoderInputError("ids must be [B, L], got \(ids.shape)") }
    if let mask, mask.count != ids.count { throw EncoderInputError("mask \(mask.shape) does not match ids \(ids.shape)") }
    return (shape[0], shape[1])
}
