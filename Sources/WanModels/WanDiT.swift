import Foundation
import WanTensor
import WanWeights

/// One video's inputs to the DiT, as one element of the lists the official `WanModel.forward` takes.
public struct DiTInput {
    /// Noisy latent [in channels, F, H, W] (16 channels; for i2v/flf2v the 20 channels of `y` are appended).
    public var x: Tensor
    /// Timestep (the flow-matching t in [0, 1000]).
    public var t: Float
    /// Text embedding [L, text_dim], L <= text_len; zero-padded to text_len inside.
    public var context: Tensor
    /// I2V/FLF2V conditioning [20, F, H, W] (mask + VAE latent of the guide video).
    public var y: Tensor?
    /// CLIP features [n, 257, 1280]: n = 1 for i2v, 2 (first, last) for flf2v.
    public var clipFeatures: Tensor?

    public init(x: Tensor, t: Float, context: Tensor, y: Tensor? = nil, clipFeatures: Tensor? = nil) {
        self.x = x; self.t = t; self.context = context; self.y = y; self.clipFeatures = clipFeatures
    }
}

/// Errors of a DiT call with inputs that do not fit the model.
public struct DiTInputError: Error, CustomStringConvertible {
    public let description: String
    public init(description: String) { self.description = description }
}

/// The Wan2.1 diffusion transformer (official `WanModel`, wan/modules/model.py) for t2v, i2v and flf2v, written once
/// against `ComputeBackend`: `WanDiT` on the CPU, `CUDADiT` on an NVIDIA GPU. Weights are bound by the official names
/// from any `WeightSource`, strictly (a missing, unexpected or misshapen tensor throws), into the backend's own form;
/// the conditioning (`PreparedDiTConditioning`), the blocks (`runDiTBlock`) and the forward pass (`runDiTForward`)
/// are the same code on every backend. Every video of a batch is independent in the official model (padding tokens
/// are masked as keys and dropped), so each runs on its real tokens only.
public final class DiffusionTransformer<B: ComputeBackend>: DiTDenoiser, @unchecked Sendable {
    public let config: WanDiTConfig
    public let backend: B
    /// The patch embedding, time embedding and head (f32 products, as the official code runs them under autocast).
    public let outer: DiTOuterWeights<B>
    /// Each block's weights but the cross-attention's keys and values.
    public let blocks: [DiTBlockWeights<B>]
    /// The text embedding, each block's cross-attention keys and values, MLPProj.
    public let conditioning: DiTConditioningWeights<B>

    /// Tensors a model made with `sharing:` takes from the other model instead of binding them (the text and time
    /// embeddings and the head, which the vace branch of a VACE checkpoint shares with the main model).
    static var sharedPrefixes: [String] { ["text_embedding.", "time_embedding.", "time_projection.", "head."] }

    /// Binds the model to weights by the official names onto `backend`. `sharing`: a model on the same backend whose
    /// text and time embeddings and head this one uses (their names in `source` are not bound again).
    public init(config c: WanDiTConfig, weights source: WeightSource, backend: B, sharing shared: DiffusionTransformer<B>? = nil) throws {
        try c.validate(source: source.label)
        if let problem = backend.unsupportedHeadDim(c.headDim) { throw WeightError.badConfig(source: source.label, detail: problem) }
        if let shared {
            let s = shared.config
            guard shared.backend === backend, s.dim == c.dim, s.textDim == c.textDim, s.freqDim == c.freqDim, s.textLen == c.textLen,
                  s.outDim == c.outDim, s.patchSize == c.patchSize else {
                throw WeightError.badConfig(source: source.label, detail: "cannot share the embeddings and head of a model of another shape or backend")
            }
        }
        config = c
        self.backend = backend
        let b = WeightBinder(source)
        let d = c.dim
        func linear(_ prefix: String, in i: Int, out o: Int) throws -> B.Matrix {
            try backend.matrix(try Linear(b, prefix, in: i, out: o), kind: c.matrixKind(prefix))
        }
        func vector(_ name: String, _ shape: [Int]) throws -> B.Vector { try backend.vector(try b.tensor(name, shape)) }

        // The patch embedding's Conv3d weight [dim, in, pt, ph, pw] is a product over flattened patches.
        let pe = try b.tensor("patch_embedding.weight", [d, c.inDim] + c.patchSize)
        let patchEmbedding = try backend.matrix(Linear(weight: pe, bias: try b.tensor("patch_embedding.bias", [d])), kind: c.matrixKind("patch_embedding"))
        let textEmbedding0, textEmbedding2, timeEmbedding0, timeEmbedding2, timeProjection: B.Matrix
        if let shared {
            textEmbedding0 = shared.conditioning.textEmbedding0; textEmbedding2 = shared.conditioning.textEmbedding2
            timeEmbedding0 = shared.outer.timeEmbedding0; timeEmbedding2 = shared.outer.timeEmbedding2
            timeProjection = shared.outer.timeProjection
            for name in source.names where Self.sharedPrefixes.contains(where: { name.hasPrefix($0) }) { b.ignore(name) }
        } else {
            textEmbedding0 = try linear("text_embedding.0", in: c.textDim, out: d)
            textEmbedding2 = try linear("text_embedding.2", in: d, out: d)
            timeEmbedding0 = try linear("time_embedding.0", in: c.freqDim, out: d)
            timeEmbedding2 = try linear("time_embedding.2", in: d, out: d)
            timeProjection = try linear("time_projection.1", in: d, out: 6 * d)
        }
        var blocks: [DiTBlockWeights<B>] = []
        var crossBlocks: [DiTConditioningWeights<B>.Block] = []
        for i in 0..<c.numLayers {
            let p = "blocks.\(i)."
            func norm(_ name: String) throws -> B.Vector? { c.qkNorm ? try vector(p + name + ".weight", [d]) : nil }
            let img = c.hasImageInput
            let (q, k, v, o) = (try linear(p + "self_attn.q", in: d, out: d), try linear(p + "self_attn.k", in: d, out: d),
                                try linear(p + "self_attn.v", in: d, out: d), try linear(p + "self_attn.o", in: d, out: d))
            let (normQ, normK) = (try norm("self_attn.norm_q"), try norm("self_attn.norm_k"))
            let (cq, ck, cv, co) = (try linear(p + "cross_attn.q", in: d, out: d), try linear(p + "cross_attn.k", in: d, out: d),
                                    try linear(p + "cross_attn.v", in: d, out: d), try linear(p + "cross_attn.o", in: d, out: d))
            let (cNormQ, cNormK) = (try norm("cross_attn.norm_q"), try norm("cross_attn.norm_k"))
            crossBlocks.append(.init(k: ck, v: cv, normK: cNormK,
                                     kImg: img ? try linear(p + "cross_attn.k_img", in: d, out: d) : nil,
                                     vImg: img ? try linear(p + "cross_attn.v_img", in: d, out: d) : nil,
                                     normKImg: img ? try norm("cross_attn.norm_k_img") : nil))
            blocks.append(DiTBlockWeights(
                modulation: try vector(p + "modulation", [1, 6, d]), q: q, k: k, v: v, o: o, normQ: normQ, normK: normK,
                norm3Weight: c.crossAttnNorm ? try vector(p + "norm3.weight", [d]) : nil,
                norm3Bias: c.crossAttnNorm ? try vector(p + "norm3.bias", [d]) : nil,
                crossQ: cq, crossO: co, crossNormQ: cNormQ,
                ffnIn: try linear(p + "ffn.0", in: d, out: c.ffnDim), ffnOut: try linear(p + "ffn.2", in: c.ffnDim, out: d)))
        }
        self.blocks = blocks
        let headModulation: B.Vector, head: B.Matrix
        if let shared {
            headModulation = shared.outer.headModulation
            head = shared.outer.head
        } else {
            headModulation = try vector("head.modulation", [1, 2, d])
            head = try linear("head.head", in: d, out: c.outDim * c.patchSize.reduce(1, *))
        }
        var image: DiTConditioningWeights<B>.ImageProjection? = nil
        if c.hasImageInput {
            let clip = WanDiTConfig.clipDim
            image = .init(norm0Weight: try vector("img_emb.proj.0.weight", [clip]), norm0Bias: try vector("img_emb.proj.0.bias", [clip]),
                          fc1: try linear("img_emb.proj.1", in: clip, out: clip),
                          fc2: try linear("img_emb.proj.3", in: clip, out: d),
                          norm4Weight: try vector("img_emb.proj.4.weight", [d]), norm4Bias: try vector("img_emb.proj.4.bias", [d]),
                          posEmbedding: c.modelType == "flf2v" ? try b.tensor("img_emb.emb_pos", [1, 514, clip]) : nil)
        }
        outer = DiTOuterWeights(patchEmbedding: patchEmbedding, timeEmbedding0: timeEmbedding0, timeEmbedding2: timeEmbedding2,
                                timeProjection: timeProjection, head: head, headModulation: headModulation)
        conditioning = DiTConditioningWeights(textEmbedding0: textEmbedding0, textEmbedding2: textEmbedding2, blocks: crossBlocks, image: image)
        try b.finish()
        try backend.weightsLoaded()
    }

    // MARK: conditioning

    /// Everything the model derives from the text (and image) conditioning alone (`PreparedDiTConditioning`):
    /// prepare once per prompt, reuse for every step.
    public func prepare(context: Tensor, clipFeatures: Tensor? = nil) throws -> PreparedDiTConditioning<B> {
        try PreparedDiTConditioning(model: self, backend: backend, config: config, weights: conditioning, text: context, clipFeatures: clipFeatures)
    }

    // MARK: forward

    /// Sinusoidal timestep embedding in float64 ([cos | sin]), rounded to float32 (official `sinusoidal_embedding_1d`).
    public static func timestepSinusoid(_ t: Float, dim: Int) -> [Float] {
        let half = dim / 2
        var out = [Float](repeating: 0, count: dim)
        for i in 0..<half {
            let angle = Double(t) * Foundation.pow(10000.0, -Double(i) / Double(half))
            out[i] = Float(Foundation.cos(angle))
            out[half + i] = Float(Foundation.sin(angle))
        }
        return out
    }

    /// The patches of the patch embedding (a Conv3d with stride = kernel = `patchSize`, done as a product over
    /// them): `x` [C, F, H, W], with `y` [C', F, H, W] after it on channels when given, as rows
    /// [grid.f * grid.h * grid.w, (C + C') * pt * ph * pw], tokens in (f, h, w) order, each row channel by channel
    /// then (p, q, r) within the patch.
    public static func patchRows(_ x: Tensor, _ y: Tensor? = nil, patchSize: [Int], grid: (f: Int, h: Int, w: Int)) -> Tensor {
        let (pt, ph, pw) = (patchSize[0], patchSize[1], patchSize[2])
        let (F, H, W) = (x.shape[1], x.shape[2], x.shape[3])
        let channels = x.shape[0] + (y?.shape[0] ?? 0)
        let L = grid.f * grid.h * grid.w, patchLen = channels * pt * ph * pw
        let patches = Tensor(uninitialized: [L, patchLen])
        func source(_ ch: Int) -> (Tensor, Int) {
            ch < x.shape[0] ? (x, ch) : (y!, ch - x.shape[0])
        }
        Parallel.forRanges(L, grain: 16) { range in
            for tok in range {
                let fi = tok / (grid.h * grid.w), hi = (tok / grid.w) % grid.h, wi = tok % grid.w
                let row = patches.data + tok * patchLen
                var idx = 0
                for ch in 0..<channels {
                    let (t, cc) = source(ch)
                    let base = t.data + cc * F * H * W
                    for p in 0..<pt { for q in 0..<ph { for r in 0..<pw {
                        row[idx] = base[((fi * pt + p) * H + hi * ph + q) * W + wi * pw + r]
                        idx += 1
                    } } }
                }
            }
        }
        return patches
    }

    /// The input of MLPProj: CLIP features [n, 257, 1280] as a copy [n*257, 1280], with FLF2V's `posEmbedding`
    /// [1, 514, 1280] added when given (which then needs the features of exactly two images).
    public static func clipRows(_ clip: Tensor, posEmbedding: Tensor?) throws -> Tensor {
        let width = WanDiTConfig.clipDim
        guard clip.count % width == 0, clip.shape.last == width else {
            throw DiTInputError(description: "CLIP features must be [n, 257, 1280], got \(clip.shape)")
        }
        let rows = clip.count / width
        let x = Tensor(uninitialized: [rows, width])
        x.data.update(from: clip.data, count: clip.count)
        if let pos = posEmbedding {
            guard rows == pos.shape[1] else {
                throw DiTInputError(description: "FLF2V needs the CLIP features of two images ([2, 257, 1280]), got \(clip.shape)")
            }
            for i in 0..<x.count { x.data[i] += pos.data[i] }
        }
        return x
    }

    /// One video through the model (the conditioning prepared on the way). `trace` receives named intermediates
    /// (official module outputs) when given.
    public func forward(_ input: DiTInput, trace: ((String, Tensor) -> Void)? = nil) throws -> Tensor {
        try forward(x: input.x, y: input.y, t: input.t, context: try prepare(context: input.context, clipFeatures: input.clipFeatures), trace: trace)
    }

    /// One video through the model with a prepared context (reused across the steps of a sampling loop): x
    /// [C, F, H, W] (and y for i2v/flf2v) -> [out, F, H, W].
    public func forward(x inputX: Tensor, y inputY: Tensor? = nil, t: Float, context prepared: PreparedDiTConditioning<B>,
                        trace: ((String, Tensor) -> Void)? = nil) throws -> Tensor {
        try forward(x: inputX, y: inputY, t: t, context: prepared, trace: trace, hook: nil)
    }

    public typealias BlockHook = DiTBlockHook<B>

    /// `runDiTForward` on the backend's forward buffers, with `hook` between the blocks (VACE).
    public func forward(x inputX: Tensor, y inputY: Tensor?, t: Float, context prepared: PreparedDiTConditioning<B>,
                 trace: ((String, Tensor) -> Void)?, hook: BlockHook?) throws -> Tensor {
        guard prepared.model === self else { throw DiTInputError(description: "the context was prepared by another model") }
        let (c, be) = (config, backend)
        return try runDiTForward(be, config: c, outer: outer, blocks: blocks, x: inputX, y: inputY, t: t, context: prepared,
                                 buffers: { grid, L, patchLength in
            try be.ditBuffers(config: c, tokens: L, grid: grid, patchLength: patchLength)
        }, trace: trace, hook: hook)
    }

    /// Block `index` of this model on the token rows `x` [L, dim] with a forward pass's scratch (`runDiTBlock`).
    public func runBlock(_ index: Int, x: BackendTensor<B>, scratch: DiTBlockScratch<B>, context: PreparedDiTConditioning<B>,
                  trace: ((String, Tensor) -> Void)?) throws {
        try runDiTBlock(backend, config: config, weights: blocks[index], index: index, x: x, scratch: scratch, context: context, trace: trace)
    }

    /// The head's output rows [L, (p, q, r, c)] as the video latent [c, F, H, W] (official `unpatchify`).
    public static func unpatchify(_ out: Tensor, outDim C: Int, patchSize: [Int], grid: (f: Int, h: Int, w: Int)) -> Tensor {
        let (pt, ph, pw) = (patchSize[0], patchSize[1], patchSize[2])
        let (Fo, Ho, Wo) = (grid.f * pt, grid.h * ph, grid.w * pw)
        let video = Tensor(uninitialized: [C, Fo, Ho, Wo])
        let width = out.shape[1]
        for tok in 0..<(grid.f * grid.h * grid.w) {
            let fi = tok / (grid.h * grid.w), hi = (tok / grid.w) % grid.h, wi = tok % grid.w
            let row = out.data + tok * width
            var idx = 0
            for p in 0..<pt { for q in 0..<ph { for r in 0..<pw { for ch in 0..<C {
                video.data[((ch * Fo + fi * pt + p) * Ho + hi * ph + q) * Wo + wi * pw + r] = row[idx]
                idx += 1
            } } } }
        }
        return video
    }

    // MARK: DiTDenoiser

    public var backendDescription: String { backend.description }

    public func prepareConditioning(text: Tensor, clipFeatures: Tensor?) throws -> DiTConditioning {
        try prepare(context: text, clipFeatures: clipFeatures)
    }

    public func velocity(x: Tensor, y: Tensor?, t: Float, conditioning: DiTConditioning) throws -> Tensor {
        guard let prepared = conditioning as? PreparedDiTConditioning<B> else {
            throw DiTInputError(description: "the conditioning was prepared by another backend's model")
        }
        return try forward(x: x, y: y, t: t, context: prepared)
    }

    /// The forward pass's buffers and the backend's free pooled memory go back (the weights stay).
    public func releaseActivations() { backend.releaseActivations() }
}

/// The Wan DiT on the CPU.
public typealias WanDiT = DiffusionTransformer<CPUBackend>

extension DiffusionTransformer where B == CPUBackend {
    /// Binds the model to weights by the official names. Strict: a missing, unexpected or misshapen tensor throws.
    /// `products`: the type of the products' inputs (`CPUBackend.products`).
    public convenience init(config c: WanDiTConfig, weights source: WeightSource, products: ProductType = .f32) throws {
        try self.init(config: c, weights: source, backend: CPUBackend(products: products))
    }

    /// Loads a DiT from a weight source, inferring the configuration from its shapes; `arguments` (the official
    /// constructor arguments, e.g. from config.json) override what was inferred.
    public convenience init(weights source: WeightSource, arguments: [String: Any]? = nil, products: ProductType = .f32) throws {
        var config = try WanDiTConfig(inferringFrom: source)
        if let arguments { config.apply(officialArguments: arguments) }
        try self.init(config: config, weights: source, products: products)
    }
}

/// A prepared conditioning of a `WanDiT` (see `PreparedDiTConditioning`): reuse it for every step with the same prompt.
public typealias DiTContext = PreparedDiTConditioning<CPUBackend>
