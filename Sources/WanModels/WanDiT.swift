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

/// The Wan2.1 diffusion transformer (official `WanModel`, wan/modules/model.py) for t2v, i2v and flf2v.
/// Every video of a batch is independent in the official model (padding tokens are masked as keys and dropped),
/// so each runs on its real tokens only.
public final class WanDiT: @unchecked Sendable {
    public let config: WanDiTConfig

    struct SelfAttention {
        let q, k, v, o: Linear
        let normQ, normK: Tensor?
    }
    struct CrossAttention {
        let q, k, v, o: Linear
        let normQ, normK: Tensor?
        let kImg, vImg: Linear?
        let normKImg: Tensor?
    }
    struct Block {
        let modulation: Tensor  // [6, dim]
        let selfAttn: SelfAttention
        let norm3: LayerNormParams?
        let crossAttn: CrossAttention
        let ffnIn, ffnOut: Linear
    }
    struct ImageProjection {  // MLPProj
        let norm0: LayerNormParams
        let fc1, fc2: Linear
        let norm4: LayerNormParams
        let posEmbedding: Tensor?  // [1, 514, 1280] for flf2v
    }

    let patchEmbedding: Linear  // weight viewed [dim, in*pt*ph*pw]
    let textEmbedding0, textEmbedding2: Linear
    let timeEmbedding0, timeEmbedding2: Linear
    let timeProjection: Linear
    let blocks: [Block]
    let headModulation: Tensor  // [2, dim]
    let head: Linear
    let imageProjection: ImageProjection?
    let backend = CPUBackend()
    /// Each block's weights as `runDiTBlock` runs them.
    let blockWeights: [DiTBlockWeights<CPUBackend>]
    /// The conditioning's weights as `PreparedDiTConditioning` runs them.
    var conditioningWeights: DiTConditioningWeights<CPUBackend> {
        DiTConditioningWeights(
            textEmbedding0: textEmbedding0, textEmbedding2: textEmbedding2,
            blocks: blocks.map { .init(k: $0.crossAttn.k, v: $0.crossAttn.v, normK: $0.crossAttn.normK, kImg: $0.crossAttn.kImg,
                                       vImg: $0.crossAttn.vImg, normKImg: $0.crossAttn.normKImg) },
            image: imageProjection.map { .init(norm0Weight: $0.norm0.weight!, norm0Bias: $0.norm0.bias!, fc1: $0.fc1, fc2: $0.fc2,
                                               norm4Weight: $0.norm4.weight!, norm4Bias: $0.norm4.bias!, posEmbedding: $0.posEmbedding) })
    }

    /// Binds the model to weights by the official names. Strict: a missing, unexpected or misshapen tensor throws.
    public init(config c: WanDiTConfig, weights source: WeightSource) throws {
        guard c.dim % c.numHeads == 0, c.headDim % 2 == 0 else {
            throw WeightError.badConfig(source: source.label, detail: "dim \(c.dim) is not divisible into \(c.numHeads) heads of even size")
        }
        guard c.patchSize.count == 3 else { throw WeightError.badConfig(source: source.label, detail: "patch_size must have 3 entries") }
        config = c
        let b = WeightBinder(source)
        let d = c.dim
        let patchVolume = c.patchSize.reduce(1, *)
        let pe = try b.tensor("patch_embedding.weight", [d, c.inDim] + c.patchSize)
        patchEmbedding = Linear(weight: pe, bias: try b.tensor("patch_embedding.bias", [d]))
        _ = patchVolume
        textEmbedding0 = try Linear(b, "text_embedding.0", in: c.textDim, out: d)
        textEmbedding2 = try Linear(b, "text_embedding.2", in: d, out: d)
        timeEmbedding0 = try Linear(b, "time_embedding.0", in: c.freqDim, out: d)
        timeEmbedding2 = try Linear(b, "time_embedding.2", in: d, out: d)
        timeProjection = try Linear(b, "time_projection.1", in: d, out: 6 * d)
        var blocks: [Block] = []
        for i in 0..<c.numLayers {
            let p = "blocks.\(i)."
            func norm(_ name: String) throws -> Tensor? { c.qkNorm ? try b.tensor(p + name + ".weight", [d]) : nil }
            let sa = SelfAttention(q: try Linear(b, p + "self_attn.q", in: d, out: d), k: try Linear(b, p + "self_attn.k", in: d, out: d),
                                   v: try Linear(b, p + "self_attn.v", in: d, out: d), o: try Linear(b, p + "self_attn.o", in: d, out: d),
                                   normQ: try norm("self_attn.norm_q"), normK: try norm("self_attn.norm_k"))
            let img = c.hasImageInput
            let ca = CrossAttention(q: try Linear(b, p + "cross_attn.q", in: d, out: d), k: try Linear(b, p + "cross_attn.k", in: d, out: d),
                                    v: try Linear(b, p + "cross_attn.v", in: d, out: d), o: try Linear(b, p + "cross_attn.o", in: d, out: d),
                                    normQ: try norm("cross_attn.norm_q"), normK: try norm("cross_attn.norm_k"),
                                    kImg: img ? try Linear(b, p + "cross_attn.k_img", in: d, out: d) : nil,
                                    vImg: img ? try Linear(b, p + "cross_attn.v_img", in: d, out: d) : nil,
                                    normKImg: img ? try norm("cross_attn.norm_k_img") : nil)
            blocks.append(Block(modulation: try b.tensor(p + "modulation", [1, 6, d]), selfAttn: sa,
                                norm3: c.crossAttnNorm ? try LayerNormParams(b, p + "norm3", dim: d, eps: c.eps) : nil,
                                crossAttn: ca,
                                ffnIn: try Linear(b, p + "ffn.0", in: d, out: c.ffnDim), ffnOut: try Linear(b, p + "ffn.2", in: c.ffnDim, out: d)))
        }
        self.blocks = blocks
        blockWeights = blocks.map { k in
            DiTBlockWeights(modulation: k.modulation, q: k.selfAttn.q, k: k.selfAttn.k, v: k.selfAttn.v, o: k.selfAttn.o,
                            normQ: k.selfAttn.normQ, normK: k.selfAttn.normK, norm3Weight: k.norm3?.weight, norm3Bias: k.norm3?.bias,
                            crossQ: k.crossAttn.q, crossO: k.crossAttn.o, crossNormQ: k.crossAttn.normQ, ffnIn: k.ffnIn, ffnOut: k.ffnOut)
        }
        headModulation = try b.tensor("head.modulation", [1, 2, d])
        head = try Linear(b, "head.head", in: d, out: c.outDim * patchVolume)
        if c.hasImageInput {
            let clip = WanDiTConfig.clipDim
            imageProjection = ImageProjection(
                norm0: try LayerNormParams(b, "img_emb.proj.0", dim: clip, eps: 1e-5),
                fc1: try Linear(b, "img_emb.proj.1", in: clip, out: clip),
                fc2: try Linear(b, "img_emb.proj.3", in: clip, out: d),
                norm4: try LayerNormParams(b, "img_emb.proj.4", dim: d, eps: 1e-5),
                posEmbedding: c.modelType == "flf2v" ? try b.tensor("img_emb.emb_pos", [1, 514, clip]) : nil)
        } else {
            imageProjection = nil
        }
        try b.finish()
    }

    /// Loads a DiT from a weight source, inferring the configuration from its shapes; `arguments` (the official
    /// constructor arguments, e.g. from config.json) override what was inferred.
    public convenience init(weights source: WeightSource, arguments: [String: Any]? = nil) throws {
        var config = try WanDiTConfig(inferringFrom: source)
        if let arguments { config.apply(officialArguments: arguments) }
        try self.init(config: config, weights: source)
    }

    // MARK: context

    /// Everything the model derives from the text (and image) conditioning alone (`PreparedDiTConditioning`: the
    /// padded text rows kept once with log(count) on their score): prepare once per prompt, reuse for every step.
    public func prepare(context: Tensor, clipFeatures: Tensor? = nil) throws -> DiTContext {
        try DiTContext(model: self, backend: backend, config: config, weights: conditioningWeights, text: context, clipFeatures: clipFeatures)
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

    /// One video through the model. `trace` receives named intermediates (official module outputs) when given.
    public func forward(_ input: DiTInput, trace: ((String, Tensor) -> Void)? = nil) throws -> Tensor {
        try forward(x: input.x, y: input.y, t: input.t, context: try prepare(context: input.context, clipFeatures: input.clipFeatures), trace: trace)
    }

    /// One video through the model with a prepared context (reused across the steps of a sampling loop).
    public func forward(x inputX: Tensor, y inputY: Tensor? = nil, t: Float, context prepared: DiTContext,
                        trace: ((String, Tensor) -> Void)? = nil) throws -> Tensor {
        try forward(x: inputX, y: inputY, t: t, context: prepared, trace: trace, blockHook: nil)
    }

    /// Called on the token rows [L, dim] before the first block (stage -1) and after each block i (stage i), with the
    /// block scratch (grid and e0 in it): how variants (VACE) add to the residual stream between blocks.
    typealias BlockHook = DiTBlockHook<CPUBackend>

    /// Rows of the FFN per chunk: whole up to 4096 tokens (every single-frame 480P/720P case), else 4096.
    static let ffnChunkRows = 4096

    /// Block `index` of this model on the token rows `x` [L, dim] (`runDiTBlock`).
    func runBlock(_ index: Int, x: Tensor, scratch: DiTBlockScratch<CPUBackend>, context: DiTContext,
                  trace: ((String, Tensor) -> Void)?) throws {
        try runDiTBlock(backend, config: config, weights: blockWeights[index], index: index,
                        x: try backend.upload(x, rows: x.count / config.dim, cols: config.dim), scratch: scratch, context: context, trace: trace)
    }

    /// The patch embedding, time embedding and head as `runDiTForward` runs them.
    var outerWeights: DiTOuterWeights<CPUBackend> {
        DiTOuterWeights(patchEmbedding: patchEmbedding, timeEmbedding0: timeEmbedding0, timeEmbedding2: timeEmbedding2,
                        timeProjection: timeProjection, head: head, headModulation: headModulation)
    }

    func forward(x inputX: Tensor, y inputY: Tensor?, t: Float, context prepared: DiTContext,
                 trace: ((String, Tensor) -> Void)?, blockHook: BlockHook?) throws -> Tensor {
        guard prepared.model === self else { throw DiTInputError(description: "the context was prepared by another model") }
        let c = config, d = c.dim, be = backend
        return try runDiTForward(be, config: c, outer: outerWeights, blocks: blockWeights, x: inputX, y: inputY, t: t, context: prepared,
                                 buffers: { grid, L, patchLen in
            func f32(_ rows: Int, _ cols: Int) throws -> BackendTensor<CPUBackend> { try be.tensor(rows: rows, cols: cols, type: .f32) }
            return DiTForwardBuffers(
                x: try f32(L, d), patches: try f32(L, patchLen), headNormed: try f32(L, d),
                headOut: try f32(L, c.outDim * c.patchSize.reduce(1, *)),
                scratch: try DiTBlockScratch(backend: be, config: c, tokens: L, grid: grid, e0: try f32(1, 6 * d), ffnChunkRows: Self.ffnChunkRows))
        }, trace: trace, hook: blockHook)
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
}

/// A prepared conditioning of a `WanDiT` (see `PreparedDiTConditioning`): reuse it for every step with the same prompt.
public typealias DiTContext = PreparedDiTConditioning<CPUBackend>
