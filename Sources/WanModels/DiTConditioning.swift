import Foundation
import WanTensor
import WanWeights

/// The weights a Wan DiT runs its conditioning through (text embedding, each block's cross-attention keys and
/// values, MLPProj of the CLIP features), as a backend holds them.
public struct DiTConditioningWeights<B: ComputeBackend> {
    public struct Block {
        public var k, v: B.Matrix
        public var normK: B.Vector?
        public var kImg, vImg: B.Matrix?
        public var normKImg: B.Vector?
        public init(k: B.Matrix, v: B.Matrix, normK: B.Vector?, kImg: B.Matrix?, vImg: B.Matrix?, normKImg: B.Vector?) {
            self.k = k; self.v = v; self.normK = normK; self.kImg = kImg; self.vImg = vImg; self.normKImg = normKImg
        }
    }

    /// MLPProj (LayerNorm, Linear, GELU (erf), Linear, LayerNorm) and FLF2V's position embedding (added on the host).
    public struct ImageProjection {
        public var norm0Weight, norm0Bias: B.Vector
        public var fc1, fc2: B.Matrix
        public var norm4Weight, norm4Bias: B.Vector
        public var posEmbedding: Tensor?
        public init(norm0Weight: B.Vector, norm0Bias: B.Vector, fc1: B.Matrix, fc2: B.Matrix, norm4Weight: B.Vector, norm4Bias: B.Vector,
                    posEmbedding: Tensor?) {
            self.norm0Weight = norm0Weight; self.norm0Bias = norm0Bias; self.fc1 = fc1; self.fc2 = fc2
            self.norm4Weight = norm4Weight; self.norm4Bias = norm4Bias; self.posEmbedding = posEmbedding
        }
    }

    public var textEmbedding0, textEmbedding2: B.Matrix
    public var blocks: [Block]
    public var image: ImageProjection?

    public init(textEmbedding0: B.Matrix, textEmbedding2: B.Matrix, blocks: [Block], image: ImageProjection?) {
        self.textEmbedding0 = textEmbedding0; self.textEmbedding2 = textEmbedding2; self.blocks = blocks; self.image = image
    }
}

/// Everything a Wan DiT derives from the text (and image) conditioning alone, written once against
/// `ComputeBackend` (`DiTContext` on the CPU, `CUDADiTContext` on a GPU): the embedded text and every block's
/// cross-attention keys and values (and for i2v/flf2v the image tokens with theirs). It does not depend on the latent
/// or the timestep, so a sampling loop prepares it once per prompt; only the model that prepared it can use it.
///
/// The official model zero-pads the text to text_len rows before the embedding, so every padded row embeds to the
/// same vector. Where the backend's attention takes a per-key bias (`collapsesPaddedText`: the CPU) the padded rows
/// are kept once with log(count) added to their score, which is the same softmax as attending to every copy; else
/// (the GPU) the text is embedded at its full length, padded rows included.
public final class PreparedDiTConditioning<B: ComputeBackend>: DiTConditioning {
    public let model: AnyObject
    /// Real text rows, and how many zero rows the official model appends to reach text_len.
    public let textRows: Int
    public let padCount: Int
    /// The embedded text [keys, dim] in the activation type: the real rows, then one row standing for every padded
    /// row (collapsed) or every padded row (full length).
    public let embedded: BackendTensor<B>
    /// Per text key, added to its attention score (the collapsed form with padding: log(padCount) on the last row).
    public let keyBias: Tensor?
    /// Each block's cross-attention keys (normalised) and values of the text, [keys, dim].
    public let text: [(k: BackendTensor<B>, v: BackendTensor<B>)]
    /// The image tokens (MLPProj of the CLIP features) [n·257, dim] in f32, for i2v/flf2v.
    public let imageTokens: BackendTensor<B>?
    /// Each block's keys and values of the image tokens (empty without an image).
    public let image: [(k: BackendTensor<B>, v: BackendTensor<B>)]

    /// Text keys each block attends to.
    public var textKeys: Int { embedded.rows }
    public var imageRows: Int { imageTokens?.rows ?? 0 }

    /// `WanModel.forward`'s conditioning part: text_embedding of the zero-padded text, then per block k (+ norm_k)
    /// and v of the cross-attention; for image models MLPProj of the CLIP features and per block k_img (+ norm_k_img)
    /// and v_img. `text` [L, text_dim], L <= text_len; `clipFeatures` [n, 257, 1280].
    public init(model: AnyObject, backend be: B, config c: WanDiTConfig, weights w: DiTConditioningWeights<B>, text: Tensor,
                clipFeatures: Tensor?) throws {
        guard text.rank == 2, text.shape[1] == c.textDim else {
            throw DiTInputError(description: "context must be [L, \(c.textDim)], got \(text.shape)")
        }
        let rows = text.shape[0]
        guard rows <= c.textLen else { throw DiTInputError(description: "context has \(rows) rows, more than text_len \(c.textLen)") }
        if c.hasImageInput && clipFeatures == nil { throw DiTInputError(description: "this \(c.modelType) model needs CLIP features") }
        if !c.hasImageInput && clipFeatures != nil { throw DiTInputError(description: "this t2v model takes no CLIP features") }
        self.model = model
        textRows = rows
        padCount = c.textLen - rows
        let act = be.activationType, d = c.dim
        let collapsed = be.collapsesPaddedText
        let keys = c.textKeys(textRows: rows, collapsed: collapsed)
        if collapsed && padCount > 0 {
            let bias = Tensor(zeros: [keys])
            bias.data[keys - 1] = Foundation.log(Float(padCount))
            keyBias = bias
        } else {
            keyBias = nil
        }

        /// An f32 tensor as the input of products in the activation type (itself under f32).
        func activationInput(_ x: BackendTensor<B>) throws -> BackendTensor<B> {
            if act == .f32 { return x }
            let y = try be.tensor(rows: x.rows, cols: x.cols, type: act)
            try be.convert(x, into: y)
            return y
        }
        func project(_ m: B.Matrix, _ x: BackendTensor<B>, norm: B.Vector?) throws -> BackendTensor<B> {
            let y = try be.tensor(rows: x.rows, cols: d, type: act)
            try be.linear(m, x, into: y, activation: .none)
            if let norm { try be.rmsNorm(y, into: y, weight: norm, eps: c.eps) }
            return y
        }

        // text_embedding: Linear, GELU(tanh), Linear.
        let padded = Tensor(zeros: [keys, c.textDim])
        padded.data.update(from: text.data, count: text.count)
        let hidden = try be.tensor(rows: keys, cols: d, type: act)
        try be.linear(w.textEmbedding0, try activationInput(try be.upload(padded, rows: keys, cols: c.textDim)), into: hidden, activation: .geluTanh)
        embedded = try be.tensor(rows: keys, cols: d, type: act)
        try be.linear(w.textEmbedding2, hidden, into: embedded, activation: .none)

        // MLPProj of the CLIP features; the tokens stay f32, the input of k_img / v_img is in the activation type.
        var imageInput: BackendTensor<B>? = nil
        if let clip = clipFeatures {
            guard let p = w.image else { throw DiTInputError(description: "this \(c.modelType) model takes no image features") }
            let width = WanDiTConfig.clipDim
            let x = try WanDiT.clipRows(clip, posEmbedding: p.posEmbedding)
            let n = x.shape[0]
            let features = try be.upload(x, rows: n, cols: width)
            let normed = try be.tensor(rows: n, cols: width, type: act)
            try be.layerNorm(features, into: normed, weight: p.norm0Weight, bias: p.norm0Bias, eps: 1e-5)
            let h1 = try be.tensor(rows: n, cols: width, type: act)
            try be.linear(p.fc1, normed, into: h1, activation: .geluErf)
            let h2 = try be.tensor(rows: n, cols: d, type: .f32)
            try be.linear(p.fc2, h1, into: h2, activation: .none)
            let tokens = try be.tensor(rows: n, cols: d, type: .f32)
            try be.layerNorm(h2, into: tokens, weight: p.norm4Weight, bias: p.norm4Bias, eps: 1e-5)
            imageTokens = tokens
            imageInput = try activationInput(tokens)
        } else {
            imageTokens = nil
        }

        var textKV: [(k: BackendTensor<B>, v: BackendTensor<B>)] = []
        var imageKV: [(k: BackendTensor<B>, v: BackendTensor<B>)] = []
        for block in w.blocks {
            textKV.append((try project(block.k, embedded, norm: block.normK), try project(block.v, embedded, norm: nil)))
            if let x = imageInput, let kImg = block.kImg, let vImg = block.vImg {
                imageKV.append((try project(kImg, x, norm: block.normKImg), try project(vImg, x, norm: nil)))
            }
        }
        self.text = textKV
        image = imageKV
    }

    /// The embedded text as the official model holds it: [text_len, dim], padded rows repeated.
    public func paddedEmbedding(on be: B) throws -> Tensor {
        let e = try be.download(embedded)
        if e.shape[0] == textRows + padCount { return e }
        let d = e.shape[1]
        let out = Tensor(uninitialized: [textRows + padCount, d])
        out.data.update(from: e.data, count: textRows * d)
        for r in 0..<padCount { (out.data + (textRows + r) * d).update(from: e.data + textRows * d, count: d) }
        return out
    }
}
