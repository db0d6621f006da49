import Foundation
import WanTensor
import WanWeights

/// The weights of one `WanAttentionBlock` as a backend holds them (the cross-attention's keys and values live in
/// `DiTConditioningWeights`: they only ever see the conditioning).
public struct DiTBlockWeights<B: ComputeBackend> {
    /// modulation [6 · dim] (f32)
    public var modulation: B.Vector
    public var q, k, v, o: B.Matrix
    public var normQ, normK: B.Vector?
    /// norm3 (cross_attn_norm), absent when the model has none.
    public var norm3Weight, norm3Bias: B.Vector?
    public var crossQ, crossO: B.Matrix
    public var crossNormQ: B.Vector?
    public var ffnIn, ffnOut: B.Matrix

    public init(modulation: B.Vector, q: B.Matrix, k: B.Matrix, v: B.Matrix, o: B.Matrix, normQ: B.Vector?, normK: B.Vector?,
                norm3Weight: B.Vector?, norm3Bias: B.Vector?, crossQ: B.Matrix, crossO: B.Matrix, crossNormQ: B.Vector?,
                ffnIn: B.Matrix, ffnOut: B.Matrix) {
        self.modulation = modulation; self.q = q; self.k = k; self.v = v; self.o = o; self.normQ = normQ; self.normK = normK
        self.norm3Weight = norm3Weight; self.norm3Bias = norm3Bias; self.crossQ = crossQ; self.crossO = crossO
        self.crossNormQ = crossNormQ; self.ffnIn = ffnIn; self.ffnOut = ffnOut
    }
}

/// The buffers every block of one forward pass runs on, beside the residual stream: four [L, dim] matrices in the
/// activation type (`normed` also takes the attention's output once q, k, v are made, and `k` the projections'
/// outputs once the self-attention has run, so the activations stay at about five copies of x), the FFN's hidden
/// layer for a chunk of rows, the time projection e0 and the block's modulation ([1, 6 · dim] f32), and the grid.
public struct DiTBlockScratch<B: ComputeBackend> {
    public let grid: (f: Int, h: Int, w: Int)
    public let normed, q, k, v: BackendTensor<B>
    public let hidden: BackendTensor<B>
    public let e0, mod: BackendTensor<B>
    public var tokens: Int { q.rows }

    public init(grid: (f: Int, h: Int, w: Int), normed: BackendTensor<B>, q: BackendTensor<B>, k: BackendTensor<B>, v: BackendTensor<B>,
                hidden: BackendTensor<B>, e0: BackendTensor<B>, mod: BackendTensor<B>) {
        self.grid = grid; self.normed = normed; self.q = q; self.k = k; self.v = v; self.hidden = hidden; self.e0 = e0; self.mod = mod
    }

}

/// The large buffers of one DiT forward pass, laid out before anything is allocated: what a backend's `ditBuffers`
/// makes (the CPU: a fresh tensor per region; a GPU: views of one workspace holding every region) and what the memory
/// pre-flights count, so the two cannot drift apart. Regions: the residual stream x [L, dim] f32; normed [L, dim],
/// sized for f32 (the blocks' normalised input and attention output in the activation type, then the head's f32
/// LayerNorm output); q, k, v [L, dim] in the activation type; the FFN's hidden layer [ffnChunkRows, ffn_dim]; the
/// patches [L, patch length] f32; the head's output [L, out · patch volume] f32; e0 and the block's modulation
/// [1, 6 · dim] f32.
public struct DiTForwardLayout: Equatable, Sendable {
    public enum Buffer: String, CaseIterable, Sendable {
        case x, normed, q, k, v, hidden, patches, head, e0, mod
    }
    /// One buffer of a layout (the DiT's, or a model's beside it such as VACE's stream): name, shape and type.
    public struct Region: Equatable, Sendable {
        public let name: String
        public let rows: Int, cols: Int
        public let type: ElementType
        public var bytes: Int { rows * cols * type.size }
        public init(name: String, rows: Int, cols: Int, type: ElementType) { self.name = name; self.rows = rows; self.cols = cols; self.type = type }
    }

    public let tokens: Int
    public let activation: ElementType
    public let ffnChunkRows: Int
    public let regions: [Region]

    /// `ffnChunkRows`: rows of the FFN's hidden layer held at once (at most `tokens`).
    public init(config c: WanDiTConfig, tokens L: Int, patchLength: Int, activation act: ElementType, ffnChunkRows: Int) {
        tokens = L
        activation = act
        self.ffnChunkRows = max(1, min(L, ffnChunkRows))
        let d = c.dim
        func region(_ b: Buffer, _ rows: Int, _ cols: Int, _ type: ElementType) -> Region { Region(name: b.rawValue, rows: rows, cols: cols, type: type) }
        regions = [
            region(.x, L, d, .f32), region(.normed, L, d, .f32),
            region(.q, L, d, act), region(.k, L, d, act), region(.v, L, d, act),
            region(.hidden, self.ffnChunkRows, c.ffnDim, act),
            region(.patches, L, patchLength, .f32), region(.head, L, c.outDim * c.patchSize.reduce(1, *), .f32),
            region(.e0, 1, 6 * d, .f32), region(.mod, 1, 6 * d, .f32),
        ]
    }

    /// Bytes of every region (without alignment).
    public var bytes: Int { regions.reduce(0) { $0 + $1.bytes } }

    /// The forward's buffers, each region made by `make` (a fresh tensor, or a view of a planned workspace): normed
    /// serves as the blocks' buffer in the activation type and as the head's f32 input.
    public func buffers<B: ComputeBackend>(grid: (f: Int, h: Int, w: Int), make: (Region) throws -> BackendTensor<B>) rethrows -> DiTForwardBuffers<B> {
        var made: [String: BackendTensor<B>] = [:]
        for r in regions { made[r.name] = try make(r) }
        func m(_ b: Buffer) -> BackendTensor<B> { made[b.rawValue]! }
        let normed = m(.normed)
        let scratch = DiTBlockScratch<B>(grid: grid, normed: normed.reinterpreted(rows: tokens, cols: normed.cols, type: activation),
                                         q: m(.q), k: m(.k), v: m(.v), hidden: m(.hidden), e0: m(.e0), mod: m(.mod))
        return DiTForwardBuffers(x: m(.x), patches: m(.patches), headNormed: normed, headOut: m(.head), scratch: scratch)
    }
}

/// `WanAttentionBlock.forward` (wan/modules/model.py), written once against `ComputeBackend`: on the residual stream
/// `x` [L, dim] (f32, in place), with the block's modulation m = modulation + e0:
/// self-attention on LN(x)·(1 + m1) + m0 (q, k RMS-normed, 3-D RoPE), x += o(·)·m2; cross-attention on norm3(x)
/// to the text (i2v/flf2v: and to the image tokens, summed before the projection), x += o(·); the FFN (GELU tanh) on
/// LN(x)·(1 + m4) + m3 in chunks of rows, x += ffn(·)·m5. Traces block{index}_self_attn, _cross_attn and _ffn (the
/// module outputs before their gates) and block{index}_out.
public func runDiTBlock<B: ComputeBackend>(_ be: B, config c: WanDiTConfig, weights w: DiTBlockWeights<B>, index: Int,
                                           x: BackendTensor<B>, scratch s: DiTBlockScratch<B>, context: PreparedDiTConditioning<B>,
                                           trace: ((String, Tensor) -> Void)?) throws {
    let d = c.dim, L = s.tokens, heads = c.numHeads, hd = c.headDim, eps = c.eps
    let scale = 1 / Float(hd).squareRoot()
    try be.addVector(w.modulation, s.e0, into: s.mod)
    func m(_ i: Int) -> BackendTensor<B> { s.mod.columns((i * d)..<((i + 1) * d)) }
    // A trace keeps a copy (the CPU's download is the buffer itself, which later steps overwrite).
    func snapshot(_ t: BackendTensor<B>) throws -> Tensor { let h = try be.download(t); return h.reshaped(h.shape) }

    // Self-attention on LN(x)*(1+m1)+m0.
    try be.modulatedLayerNorm(x, into: s.normed, shift: m(0), scale: m(1), eps: eps)
    try be.linear(w.q, s.normed, into: s.q, activation: .none)
    try be.linear(w.k, s.normed, into: s.k, activation: .none)
    try be.linear(w.v, s.normed, into: s.v, activation: .none)
    if let n = w.normQ { try be.rmsNorm(s.q, into: s.q, weight: n, eps: eps) }
    if let n = w.normK { try be.rmsNorm(s.k, into: s.k, weight: n, eps: eps) }
    try be.rope(s.q, heads: heads, headDim: hd, grid: s.grid)
    try be.rope(s.k, heads: heads, headDim: hd, grid: s.grid)
    let attn = s.normed  // free once q, k, v are made
    try be.fullAttention(q: s.q, k: s.k, v: s.v, out: attn, keyBias: nil, accumulate: false, heads: heads, headDim: hd, scale: scale)
    let proj = s.k  // free once the self-attention has run
    try be.linear(w.o, attn, into: proj, activation: .none)
    if let trace { trace("block\(index)_self_attn", try snapshot(proj)) }
    try be.addResidual(x, proj, gate: m(2))

    // Cross-attention on norm3(x), no modulation, no gate.
    if let n3 = w.norm3Weight {
        try be.layerNorm(x, into: s.normed, weight: n3, bias: w.norm3Bias, eps: eps)
    } else {
        try be.convert(x, into: s.normed)
    }
    try be.linear(w.crossQ, s.normed, into: s.q, activation: .none)
    if let n = w.crossNormQ { try be.rmsNorm(s.q, into: s.q, weight: n, eps: eps) }
    let text = context.text[index]
    if !context.image.isEmpty {
        // WanI2VCrossAttention: attention to the image tokens and to the text, summed before the projection.
        let image = context.image[index]
        try be.fullAttention(q: s.q, k: image.k, v: image.v, out: attn, keyBias: nil, accumulate: false, heads: heads, headDim: hd, scale: scale)
        try be.fullAttention(q: s.q, k: text.k, v: text.v, out: attn, keyBias: context.keyBias, accumulate: true, heads: heads,
                             headDim: hd, scale: scale)
    } else {
        try be.fullAttention(q: s.q, k: text.k, v: text.v, out: attn, keyBias: context.keyBias, accumulate: false, heads: heads,
                             headDim: hd, scale: scale)
    }
    try be.linear(w.crossO, attn, into: proj, activation: .none)
    if let trace { trace("block\(index)_cross_attn", try snapshot(proj)) }
    try be.addResidual(x, proj, gate: nil)

    // FFN on LN(x)*(1+m4)+m3, gated by m5, in chunks of rows.
    try be.modulatedLayerNorm(x, into: s.normed, shift: m(3), scale: m(4), eps: eps)
    var r0 = 0
    while r0 < L {
        let n = min(s.hidden.rows, L - r0)
        let hidden = s.hidden.rows(0..<n)
        try be.linear(w.ffnIn, s.normed.rows(r0..<(r0 + n)), into: hidden, activation: .geluTanh)
        try be.linear(w.ffnOut, hidden, into: proj.rows(r0..<(r0 + n)), activation: .none)
        r0 += n
    }
    if let trace { trace("block\(index)_ffn", try snapshot(proj)) }
    try be.addResidual(x, proj, gate: m(5))
    if let trace { trace("block\(index)_out", try snapshot(x)) }
}

/// The parts of a Wan DiT around its blocks, as a backend holds them (all f32 products, as the official code runs
/// them under autocast): the patch embedding (its Conv3d as a product over flattened patches), the time embedding
/// and projection, the head's modulation [2 · dim] and projection.
public struct DiTOuterWeights<B: ComputeBackend> {
    public var patchEmbedding, timeEmbedding0, timeEmbedding2, timeProjection, head: B.Matrix
    public var headModulation: B.Vector

    public init(patchEmbedding: B.Matrix, timeEmbedding0: B.Matrix, timeEmbedding2: B.Matrix, timeProjection: B.Matrix, head: B.Matrix,
                headModulation: B.Vector) {
        self.patchEmbedding = patchEmbedding; self.timeEmbedding0 = timeEmbedding0; self.timeEmbedding2 = timeEmbedding2
        self.timeProjection = timeProjection; self.head = head; self.headModulation = headModulation
    }
}

/// The large buffers of one forward pass (where they live is the model's choice: fresh tensors on the CPU, views
/// of one planned workspace on a GPU): the residual stream x [L, dim] f32, the patches [L, patch length] f32, the
/// blocks' scratch, the head's normalised input [L, dim] f32 and output [L, out · patch volume] f32.
public struct DiTForwardBuffers<B: ComputeBackend> {
    public var x, patches, headNormed, headOut: BackendTensor<B>
    public var scratch: DiTBlockScratch<B>
    public init(x: BackendTensor<B>, patches: BackendTensor<B>, headNormed: BackendTensor<B>, headOut: BackendTensor<B>,
                scratch: DiTBlockScratch<B>) {
        self.x = x; self.patches = patches; self.headNormed = headNormed; self.headOut = headOut; self.scratch = scratch
    }
}

/// Called with the residual stream [L, dim] after the patch embedding (stage -1) and after each block i (stage i),
/// with the blocks' scratch: how VACE runs its vace blocks and adds its hints.
public typealias DiTBlockHook<B: ComputeBackend> = (_ stage: Int, _ x: BackendTensor<B>, _ scratch: DiTBlockScratch<B>) throws -> Void

/// The shape of one DiT input: x [C, F, H, W] with y [C', F, H, W] beside it for i2v/flf2v, checked against the
/// model: the token grid, the token count and the patch length.
public func ditInputShape(_ c: WanDiTConfig, x: Tensor, y: Tensor?) throws -> (grid: (f: Int, h: Int, w: Int), tokens: Int, patchLength: Int) {
    if c.hasImageInput && y == nil { throw DiTInputError(description: "this \(c.modelType) model needs y (mask + image latent) besides x") }
    guard x.rank == 4 else { throw DiTInputError(description: "x must be [C, F, H, W], got \(x.shape)") }
    var channels = x.shape[0]
    if let y {
        guard y.rank == 4, Array(y.shape[1...]) == Array(x.shape[1...]) else {
            throw DiTInputError(description: "y \(y.shape) must match x \(x.shape) in F, H, W")
        }
        channels += y.shape[0]
    }
    guard channels == c.inDim else {
        throw DiTInputError(description: "the model takes \(c.inDim) input channels, got \(channels)" + (c.hasImageInput && y == nil ? " (this \(c.modelType) model needs y and CLIP features)" : ""))
    }
    let (pt, ph, pw) = (c.patchSize[0], c.patchSize[1], c.patchSize[2])
    let grid = (f: x.shape[1] / pt, h: x.shape[2] / ph, w: x.shape[3] / pw)
    let L = grid.f * grid.h * grid.w
    guard L > 0 else { throw DiTInputError(description: "x \(x.shape) is smaller than one patch \(c.patchSize)") }
    return (grid, L, channels * pt * ph * pw)
}

/// `WanModel.forward` for one video (wan/modules/model.py), written once against `ComputeBackend`: the patch
/// embedding of x (and y) on channels, the sinusoidal time embedding (float64 on the host) through time_embedding
/// and time_projection, every block (`runDiTBlock`, `hook` between them), the head LN(x)·(1 + (m1 + e)) + (m0 + e)
/// and its projection, unpatchified to [out, F, H, W] on the host. `buffers` makes the large buffers once the shape
/// is known. Traces the official modules' intermediates when `trace` is given.
public func runDiTForward<B: ComputeBackend>(_ be: B, config c: WanDiTConfig, outer w: DiTOuterWeights<B>, blocks: [DiTBlockWeights<B>],
                                             x inputX: Tensor, y inputY: Tensor?, t: Float, context: PreparedDiTConditioning<B>,
                                             buffers make: (_ grid: (f: Int, h: Int, w: Int), _ tokens: Int, _ patchLength: Int) throws -> DiTForwardBuffers<B>,
                                             trace: ((String, Tensor) -> Void)?, hook: DiTBlockHook<B>?) throws -> Tensor {
    let (grid, L, patchLen) = try ditInputShape(c, x: inputX, y: inputY)
    let d = c.dim
    let buffers = try make(grid, L, patchLen)
    let x = buffers.x, s = buffers.scratch
    func snapshot(_ t: BackendTensor<B>, _ shape: [Int]) throws -> Tensor { try be.download(t).reshaped(shape) }

    // Patch embedding (x and y concatenated on channels): the Conv3d with stride = kernel as a product over patches.
    try be.write(WanDiT.patchRows(inputX, inputY, patchSize: c.patchSize, grid: grid), into: buffers.patches)
    try be.linear(w.patchEmbedding, buffers.patches, into: x, activation: .none)
    if let trace { trace("patch_tokens", try snapshot(x, [L, d])) }

    // Time embedding (the sinusoid in float64, as the official code), SiLU, Linear; projection of SiLU(e).
    let sinusoid = Tensor(shape: [c.freqDim], values: WanDiT.timestepSinusoid(t, dim: c.freqDim))
    trace?("time_sinusoid", sinusoid)
    let eHidden = try be.tensor(rows: 1, cols: d, type: .f32), e = try be.tensor(rows: 1, cols: d, type: .f32)
    let eSilu = try be.tensor(rows: 1, cols: d, type: .f32)
    try be.linear(w.timeEmbedding0, try be.upload(sinusoid, rows: 1, cols: c.freqDim), into: eHidden, activation: .none)
    try be.silu(eHidden, into: eHidden)
    try be.linear(w.timeEmbedding2, eHidden, into: e, activation: .none)
    if let trace { trace("e", try snapshot(e, [d])) }
    try be.silu(e, into: eSilu)
    try be.linear(w.timeProjection, eSilu, into: s.e0, activation: .none)
    if let trace {
        trace("e0", try snapshot(s.e0, [6, d]))
        trace("context_embedded", try context.paddedEmbedding(on: be))
        if let tokens = context.imageTokens { trace("context_clip", try snapshot(tokens, [tokens.rows, d])) }
    }

    // Blocks.
    try hook?(-1, x, s)
    for i in blocks.indices {
        try runDiTBlock(be, config: c, weights: blocks[i], index: i, x: x, scratch: s, context: context, trace: trace)
        try hook?(i, x, s)
    }

    // Head, in f32: LN(x)*(1+(m1+e))+(m0+e), then the projection to patches.
    let headMod = try be.tensor(rows: 2, cols: d, type: .f32)
    try be.addVector(w.headModulation, e, into: headMod)
    try be.modulatedLayerNorm(x, into: buffers.headNormed, shift: headMod.rows(0..<1), scale: headMod.rows(1..<2), eps: c.eps)
    try be.linear(w.head, buffers.headNormed, into: buffers.headOut, activation: .none)
    let out = try snapshot(buffers.headOut, [L, buffers.headOut.cols])
    trace?("head_out", out)
    return WanDiT.unpatchify(out, outDim: c.outDim, patchSize: c.patchSize, grid: grid)
}
