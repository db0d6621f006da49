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

    /// Fresh buffers from the backend for `tokens` tokens (the FFN in chunks of `ffnChunkRows` rows).
    public init(backend be: B, config c: WanDiTConfig, tokens L: Int, grid: (f: Int, h: Int, w: Int), e0: BackendTensor<B>,
                ffnChunkRows: Int) throws {
        let act = be.activationType, d = c.dim
        func matrix() throws -> BackendTensor<B> { try be.tensor(rows: L, cols: d, type: act) }
        self.init(grid: grid, normed: try matrix(), q: try matrix(), k: try matrix(), v: try matrix(),
                  hidden: try be.tensor(rows: min(L, ffnChunkRows), cols: c.ffnDim, type: act), e0: e0,
                  mod: try be.tensor(rows: 1, cols: 6 * d, type: .f32))
    }
}

/// `WanAttentionBlock.forward` (wan/modules/model.py), written once against `ComputeBackend`: on the residual stream
/// `x` [L, dim] (f32, in place), with the block's modulation m = modulation + e0:
/// self-attention on LN(x)·(1 + m1) + m0 (q, k RMS-normed, 3-D RoPE), x += o(·)·m2; cross-attention on norm3(x)
/// to the text (i2v/flf2v: and to the image tokens, summed before the projection), x += o(·); the FFN (GELU tanh) on
/// LN(x)·(1 + m4) + m3 in chunks of rows, x += ffn(·)·m5. Traces block0_self_attn, block0_cross_attn, block0_ffn for
/// block 0 and block{index}_out.
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
    if index == 0, let trace { trace("block0_self_attn", try snapshot(proj)) }
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
    if index == 0, let trace { trace("block0_cross_attn", try snapshot(proj)) }
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
    if index == 0, let trace { trace("block0_ffn", try snapshot(proj)) }
    try be.addResidual(x, proj, gate: m(5))
    if let trace { trace("block\(index)_out", try snapshot(x)) }
}
