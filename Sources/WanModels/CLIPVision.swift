import Foundation
import WanTensor
import WanWeights

/// Constructor arguments of the official `VisionTransformer` (wan/modules/clip.py) as `clip_xlm_roberta_vit_h_14`
/// configures the image tower (ViT-H/14: 1280 wide, 32 blocks of 16 heads, pool 'token', pre_norm, exact GELU).
public struct CLIPVisionConfig: Sendable, Equatable, CustomStringConvertible {
    public var imageSize = 224
    public var patchSize = 14
    public var dim = 1280
    public var mlpRatio: Double = 4
    /// The MLP's hidden width where a checkpoint states it (transformers' `intermediate_size`, or the shape of
    /// mlp.0): it wins over `mlpRatio`, whose `int(dim * mlp_ratio)` cannot give every width back (448 * (1952 / 448)
    /// is 1951.99…).
    public var mlpWidth: Int? = nil
    public var outDim = 1024
    public var numHeads = 16
    public var numLayers = 32
    /// "gelu" (exact erf) or "quick_gelu".
    public var activation = "gelu"
    public var normEps: Float = 1e-5
    /// The official default for Wan: features of all blocks but the last (`use_31_block=True`).
    public var mean: [Float] = [0.48145466, 0.4578275, 0.40821073]
    public var std: [Float] = [0.26862954, 0.26130258, 0.27577711]

    /// The vision tower of open-clip-xlm-roberta-large-vit-huge-14 (Wan2.1 I2V / FLF2V).
    public static let vitH14 = CLIPVisionConfig()
    public init() {}

    public var grid: Int { imageSize / patchSize }
    public var tokens: Int { grid * grid + 1 }
    /// The official `int(dim * mlp_ratio)`, or the width the checkpoint states.
    public var mlpDim: Int { mlpWidth ?? Int(Double(dim) * mlpRatio) }
    public var headDim: Int { dim / numHeads }

    public var description: String {
        "CLIP ViT(\(imageSize) px, patch \(patchSize), dim \(dim), \(numHeads) heads, \(numLayers) layers, mlp \(mlpDim), \(activation))"
    }

    public mutating func apply(officialArguments a: [String: Any]) {
        func int(_ k: String) -> Int? { (a[k] as? NSNumber)?.intValue }
        if let v = int("image_size") { imageSize = v }
        if let v = int("patch_size") { patchSize = v }
        if let v = int("dim") ?? int("vision_dim") { dim = v }
        if let v = (a["mlp_ratio"] as? NSNumber)?.doubleValue ?? (a["vision_mlp_ratio"] as? NSNumber)?.doubleValue {
            mlpRatio = v
            mlpWidth = nil
        }
        if let v = int("mlp_dim") { mlpWidth = v }  // WanKit's own key: an exact width (from intermediate_size)
        if let v = int("out_dim") ?? int("embed_dim") { outDim = v }
        if let v = int("num_heads") ?? int("vision_heads") { numHeads = v }
        if let v = int("num_layers") ?? int("vision_layers") { numLayers = v }
        if let v = a["activation"] as? String { activation = v }
        if let v = (a["norm_eps"] as? NSNumber)?.floatValue { normEps = v }
    }

    /// Throws `WeightError.badConfig` for sizes no vision tower has (a hostile or damaged config.json), before any of
    /// them is used in arithmetic: image and patch sizes, widths, the MLP ratio, the layer count.
    public func validate(source: String) throws {
        func fail(_ what: String) -> WeightError { .impossibleConfig(source: source, part: "CLIP", what) }
        guard (1...8192).contains(imageSize) else { throw fail("image_size \(imageSize), not an integer from 1 to 8192") }
        guard (1...imageSize).contains(patchSize) else { throw fail("patch_size \(patchSize), not an integer from 1 to image_size \(imageSize)") }
        for (name, v) in [("dim", dim), ("out_dim", outDim), ("num_heads", numHeads)] where !(1...65536).contains(v) {
            throw fail("\(name) \(v), not an integer from 1 to 65536")
        }
        guard dim % numHeads == 0 else { throw fail("dim \(dim), which is not a multiple of num_heads \(numHeads)") }
        guard (1...1024).contains(numLayers) else { throw fail("num_layers \(numLayers), not an integer from 1 to 1024") }
        guard mlpRatio.isFinite, mlpRatio > 0, mlpRatio <= 64, Double(dim) * mlpRatio >= 1 else {
            throw fail("mlp_ratio \(mlpRatio), not a ratio above 0 and up to 64 (ViT-H/14: 4)")
        }
        if let w = mlpWidth, !(1...(64 * dim)).contains(w) {
            throw fail("MLP width (intermediate_size) \(w), not an integer from 1 to 64 times dim \(dim)")
        }
        guard normEps.isFinite, normEps >= 0 else { throw fail("norm_eps \(normEps)") }
    }

    /// The configuration of a checkpoint: the ViT-H/14 preset, corrected by the tensor shapes, then by `arguments`.
    /// (The head count cannot be read from shapes: 16 for the 1280-wide tower, else dim/64 unless stated.)
    public static func inferred(from source: WeightSource, arguments: [String: Any] = [:]) -> CLIPVisionConfig {
        var c = CLIPVisionConfig.vitH14
        if let s = source.info("patch_embedding.weight")?.shape, s.count == 4 { c.dim = s[0]; c.patchSize = s[2] }
        if let s = source.info("pos_embedding")?.shape, s.count >= 2 {
            let g = Int(Double(s[s.count - 2] - 1).squareRoot().rounded())
            if g * g + 1 == s[s.count - 2] { c.imageSize = g * c.patchSize }
        }
        if let s = source.info("transformer.0.mlp.0.weight")?.shape, s.count == 2 { c.mlpWidth = s[0] }
        if let s = source.info("head")?.shape, s.count == 2 { c.outDim = s[0] == c.dim ? s[1] : s[0] }
        var layers = 0
        for n in source.names where n.hasPrefix("transformer.") {
            if let i = Int(n.dropFirst(12).prefix { $0 != "." }), i < 1 << 20 { layers = max(layers, i + 1) }  // an absurd index: binding reports the name
        }
        if layers > 0 { c.numLayers = layers }
        if c.dim != 1280 { c.numHeads = max(1, c.dim / 64) }
        c.apply(officialArguments: arguments)
        return c
    }
}

/// The CLIP image encoder of Wan I2V / FLF2V: `CLIPModel.visual` of wan/modules/clip.py, written once against
/// `ComputeBackend` (`CLIPVision` on the CPU, `CUDACLIP` on a GPU). Preprocessing (bicubic resize to 224x224 as
/// `F.interpolate(mode='bicubic', align_corners=False)`, [-1,1] → [0,1], CLIP mean/std) and the patch embedding
/// (patch conv without bias, class token, position embedding) on the host, then the official `VisionTransformer`
/// (pre-norm, pre-LN blocks with fused-qkv attention and an exact-GELU MLP) run through all blocks but the last
/// (`use_31_block=True`), no post-norm, on the backend. The residual stream is f32; products and attention run in
/// the backend's activation type.
public final class VisionTransformer<B: ComputeBackend>: CLIPImageEncoder, @unchecked Sendable {
    public let config: CLIPVisionConfig
    public let backend: B

    struct Block {
        let norm1Weight: B.Vector, norm1Bias: B.Vector, norm2Weight: B.Vector, norm2Bias: B.Vector
        let qkv: B.Matrix, proj: B.Matrix, fc1: B.Matrix, fc2: B.Matrix
        var matrices: [B.Matrix] { [qkv, proj, fc1, fc2] }
    }

    let patchWeight: Tensor  // [dim, 3*p*p], host
    let patchBias: Tensor?
    let cls: Tensor
    let pos: Tensor
    let preNormWeight: B.Vector, preNormBias: B.Vector
    let blocks: [Block]  // the ones that run: numLayers - 1

    /// Binds a vision tower under the official names (`openCLIPWeights(path:).source`) onto `backend`.
    public init(config: CLIPVisionConfig, weights: WeightSource, backend: B) throws {
        try config.validate(source: weights.label)
        guard config.activation == "gelu" || config.activation == "quick_gelu" else {
            throw WeightError.badConfig(source: weights.label, detail: "activation '\(config.activation)' is not supported (gelu, quick_gelu)")
        }
        self.config = config
        self.backend = backend
        let b = WeightBinder(weights)
        let d = config.dim, p = config.patchSize, m = config.mlpDim
        let pw = try b.tensor("patch_embedding.weight", [d, 3, p, p])
        patchWeight = Tensor(borrowing: pw.data, shape: [d, 3 * p * p], owner: pw)
        // pre_norm=True builds the patch conv without bias; accept one when a checkpoint has it.
        patchBias = b.has("patch_embedding.bias") ? try b.tensor("patch_embedding.bias", [d]) : nil
        cls = try b.tensor("cls_embedding", b.shape("cls_embedding")?.count == 1 ? [d] : [1, 1, d])
        pos = try b.tensor("pos_embedding", b.shape("pos_embedding")?.count == 2 ? [config.tokens, d] : [1, config.tokens, d])
        func vector(_ name: String) throws -> B.Vector { try backend.vector(try b.tensor(name, [d])) }
        func linear(_ name: String, in i: Int, out o: Int) throws -> B.Matrix { try backend.matrix(b, name, in: i, out: o, bias: true) }
        preNormWeight = try vector("pre_norm.weight")
        preNormBias = try vector("pre_norm.bias")
        var blocks: [Block] = []
        // The last block is checked, not loaded (checkUnusedTensors): use_31_block never runs it.
        for i in 0..<(config.numLayers - 1) {
            let n = "transformer.\(i)."
            blocks.append(Block(
                norm1Weight: try vector(n + "norm1.weight"), norm1Bias: try vector(n + "norm1.bias"),
                norm2Weight: try vector(n + "norm2.weight"), norm2Bias: try vector(n + "norm2.bias"),
                qkv: try linear(n + "attn.to_qkv", in: d, out: 3 * d), proj: try linear(n + "attn.proj", in: d, out: d),
                fc1: try linear(n + "mlp.0", in: d, out: m), fc2: try linear(n + "mlp.2", in: m, out: d)))
        }
        self.blocks = blocks
        try Self.checkUnusedTensors(b, config: config)
        try b.finish()
        try backend.weightsLoaded()
    }

    /// The tensors of the official tower that Wan's features never use, checked (shape) and marked as read: the last
    /// block (use_31_block never runs it), post_norm (always built) and head (pool 'token'; transformers'
    /// CLIPVisionModel has none, CLIPVisionModelWithProjection stores it transposed).
    public static func checkUnusedTensors(_ b: WeightBinder, config: CLIPVisionConfig) throws {
        let d = config.dim, m = config.mlpDim
        let n = "transformer.\(config.numLayers - 1)."
        let shapes: [(String, [Int])] = [
            ("norm1.weight", [d]), ("norm1.bias", [d]), ("norm2.weight", [d]), ("norm2.bias", [d]),
            ("attn.to_qkv.weight", [3 * d, d]), ("attn.to_qkv.bias", [3 * d]), ("attn.proj.weight", [d, d]), ("attn.proj.bias", [d]),
            ("mlp.0.weight", [m, d]), ("mlp.0.bias", [m]), ("mlp.2.weight", [d, m]), ("mlp.2.bias", [d]),
        ]
        for (s, shape) in shapes { try check(b, n + s, shape) }
        if b.has("post_norm.weight") { try check(b, "post_norm.weight", [d]) }
        if b.has("post_norm.bias") { try check(b, "post_norm.bias", [d]) }
        if let s = b.shape("head") {
            guard s.count == 2, s.contains(d) else { throw WeightError.shapeMismatch(source: b.source.label, key: "head", expected: [d, config.outDim], found: s) }
            b.ignore("head")
        }
    }

    static func check(_ b: WeightBinder, _ name: String, _ shape: [Int]) throws {
        guard let s = b.shape(name) else { throw WeightError.missingKey(source: b.source.label, key: name, expectedShape: shape) }
        guard s == shape else { throw WeightError.shapeMismatch(source: b.source.label, key: name, expected: shape, found: s) }
        b.ignore(name)
    }

    // MARK: preprocessing

    /// `F.interpolate(x, size=(outH, outW), mode='bicubic', align_corners=False)` (no antialias) of planes
    /// [planes, inH, inW]: PyTorch's cubic convolution with A = -0.75, source index scale*(i+0.5)-0.5, border taps
    /// clamped to the edge.
    public static func resizeBicubic(_ src: UnsafePointer<Float>, planes: Int, height inH: Int, width inW: Int,
                                     toHeight outH: Int, width outW: Int, into dst: UnsafeMutablePointer<Float>) {
        func taps(_ inSize: Int, _ outSize: Int) -> (idx: [Int], w: [Float]) {
            let scale = Float(inSize) / Float(outSize)
            var idx = [Int](repeating: 0, count: 4 * outSize), w = [Float](repeating: 0, count: 4 * outSize)
            let a: Float = -0.75
            func c1(_ x: Float) -> Float { ((a + 2) * x - (a + 3)) * x * x + 1 }
            func c2(_ x: Float) -> Float { ((a * x - 5 * a) * x + 8 * a) * x - 4 * a }
            for o in 0..<outSize {
                let real = scale * (Float(o) + 0.5) - 0.5
                let i0 = Int(real.rounded(.down))
                let t = real - Float(i0)
                let ws: [Float] = [c2(t + 1), c1(t), c1(1 - t), c2(2 - t)]
                for j in 0..<4 {
                    idx[4 * o + j] = min(max(i0 - 1 + j, 0), inSize - 1)
                    w[4 * o + j] = ws[j]
                }
            }
            return (idx, w)
        }
        let (yi, yw) = taps(inH, outH), (xi, xw) = taps(inW, outW)
        Parallel.forRanges(planes * outH, grain: 16) { range in
            for r in range {
                let p = r / outH, oy = r % outH
                let plane = src + p * inH * inW
                let out = dst + (p * outH + oy) * outW
                for ox in 0..<outW {
                    var acc: Float = 0
                    for jy in 0..<4 {
                        let row = plane + yi[4 * oy + jy] * inW
                        var h: Float = 0
                        for jx in 0..<4 { h += row[xi[4 * ox + jx]] * xw[4 * ox + jx] }
                        acc += h * yw[4 * oy + jy]
                    }
                    out[ox] = acc
                }
            }
        }
    }

    /// `VisionTransformer.forward(pixels, use_31_block=True)` on normalised pixels [N, 3, S, S]: [N, tokens, dim].
    public func forward(pixels: Tensor) throws -> Tensor {
        let c = config, be = backend, act = be.activationType
        let d = c.dim, L = c.tokens, m = c.mlpDim, eps = c.normEps
        // Every image's tokens go through each product together (one pass over the weights per batch).
        let embedded = try Self.embed(pixels: pixels, config: c, patchWeight: patchWeight, patchBias: patchBias, cls: cls, pos: pos)
        let n = pixels.shape[0], rows = n * L
        let x = try be.upload(embedded, rows: rows, cols: d)
        let h = try be.tensor(rows: rows, cols: d, type: act), qkv = try be.tensor(rows: rows, cols: 3 * d, type: act)
        let attn = try be.tensor(rows: rows, cols: d, type: act), delta = try be.tensor(rows: rows, cols: d, type: act)
        let hidden = try be.tensor(rows: rows, cols: m, type: act)
        let segments = try be.segments(.uniform(count: n, length: L), buckets: nil)
        let activation: LinearActivation = c.activation == "quick_gelu" ? .quickGELU : .geluErf
        let scale = 1 / Float(c.headDim).squareRoot()
        try be.layerNorm(x, into: x, weight: preNormWeight, bias: preNormBias, eps: eps)
        for block in blocks {
            try be.layerNorm(x, into: h, weight: block.norm1Weight, bias: block.norm1Bias, eps: eps)
            try be.linear(block.qkv, h, into: qkv, activation: .none)
            try be.attention(q: qkv.columns(0..<d), k: qkv.columns(d..<(2 * d)), v: qkv.columns((2 * d)..<(3 * d)), out: attn,
                             segments: segments, table: nil, heads: c.numHeads, headDim: c.headDim, scale: scale)
            try be.linear(block.proj, attn, into: delta, activation: .none)
            try be.addResidual(x, delta)
            try be.layerNorm(x, into: h, weight: block.norm2Weight, bias: block.norm2Bias, eps: eps)
            try be.linear(block.fc1, h, into: hidden, activation: activation)
            try be.linear(block.fc2, hidden, into: delta, activation: .none)
            try be.addResidual(x, delta)
            be.layerFinished(block.matrices)
        }
        let out = try be.download(x)
        return Tensor(borrowing: out.data, shape: [n, L, d], owner: out)
    }

    /// The token rows [N * tokens, dim] before pre_norm: the patch embedding (a stride-p conv = GEMM of the unfolded
    /// patches, (c, ky, kx) order, with [dim, 3*p*p]), the class token first, plus the position embedding, of
    /// normalised pixels [N, 3, S, S].
    public static func embed(pixels: Tensor, config c: CLIPVisionConfig, patchWeight: Tensor, patchBias: Tensor?, cls: Tensor,
                             pos: Tensor) throws -> Tensor {
        let s = c.imageSize, p = c.patchSize, g = c.grid, d = c.dim, L = c.tokens
        guard pixels.rank == 4, pixels.shape[1] == 3, pixels.shape[2] == s, pixels.shape[3] == s else {
            throw EncoderInputError("pixels must be [N, 3, \(s), \(s)], got \(pixels.shape)")
        }
        let n = pixels.shape[0]
        let x = Tensor(uninitialized: [n * L, d])
        let patches = Tensor(uninitialized: [g * g, 3 * p * p])
        for img in 0..<n {
            let px = pixels.data + img * 3 * s * s
            for py in 0..<g {
                for pxi in 0..<g {
                    let row = patches.data + (py * g + pxi) * 3 * p * p
                    for ch in 0..<3 {
                        for ky in 0..<p {
                            (row + (ch * p + ky) * p).update(from: px + (ch * s + py * p + ky) * s + pxi * p, count: p)
                        }
                    }
                }
            }
            let xi = x.data + img * L * d
            GEMM.shared.linear(m: g * g, k: 3 * p * p, n: d, src: patches.data, weight: patchWeight.data,
                               bias: patchBias.map { UnsafePointer($0.data) }, dst: xi + d)
            xi.update(from: cls.data, count: d)
            for i in 0..<(L * d) { xi[i] += pos.data[i] }
        }
        return x
    }
}

/// The CLIP image tower on the CPU.
public typealias CLIPVision = VisionTransformer<CPUBackend>

extension VisionTransformer where B == CPUBackend {
    /// Binds a vision tower under the official names (`openCLIPWeights(path:).source`); the configuration is
    /// inferred from the shapes, then `arguments`.
    public convenience init(weights: WeightSource, arguments: [String: Any] = [:], products: ProductType = .f32) throws {
        try self.init(config: CLIPVisionConfig.inferred(from: weights, arguments: arguments), weights: weights, products: products)
    }

    public convenience init(config: CLIPVisionConfig, weights: WeightSource, products: ProductType = .f32) throws {
        try self.init(config: config, weights: weights, backend: CPUBackend(products: products))
    }
}

/// The CLIP image tower whichever backend runs it (`CLIPVision` on the CPU, `CUDACLIP` on a GPU): a backend runs
/// `forward(pixels:)`; the official preprocessing and `visual` are shared here.
public protocol CLIPImageEncoder: AnyObject {
    var config: CLIPVisionConfig { get }
    /// `VisionTransformer.forward(pixels, use_31_block=True)` on normalised pixels [N, 3, S, S]: [N, tokens, dim].
    func forward(pixels: Tensor) throws -> Tensor
}

extension CLIPImageEncoder {
    /// `CLIPModel.visual`'s preprocessing of one video/image [3, F, H, W] in [-1, 1]: [F, 3, S, S] normalised pixels.
    public func preprocess(_ image: Tensor) throws -> Tensor {
        guard image.rank == 4 || image.rank == 3, image.shape[0] == 3 else {
            throw EncoderInputError("image must be [3, F, H, W] (or [3, H, W]) in [-1, 1], got \(image.shape)")
        }
        let frames = image.rank == 4 ? image.shape[1] : 1
        let h = image.shape[image.rank - 2], w = image.shape[image.rank - 1]
        guard h > 0, w > 0 else { throw EncoderInputError("empty image \(image.shape)") }
        let s = config.imageSize
        // u.transpose(0, 1): [F, 3, H, W].
        let planes = Tensor(uninitialized: [frames, 3, h, w])
        for f in 0..<frames {
            for c in 0..<3 {
                (planes.data + (f * 3 + c) * h * w).update(from: image.data + (c * frames + f) * h * w, count: h * w)
            }
        }
        let out = Tensor(uninitialized: [frames, 3, s, s])
        CLIPVision.resizeBicubic(planes.data, planes: frames * 3, height: h, width: w, toHeight: s, width: s, into: out.data)
        for f in 0..<frames {
            for c in 0..<3 {
                let p = out.data + (f * 3 + c) * s * s
                let mean = config.mean[c], std = config.std[c]
                for i in 0..<(s * s) { p[i] = ((p[i] * 0.5 + 0.5) - mean) / std }
            }
        }
        return out
    }

    // MARK: encoding

    /// `CLIPModel.visual([image])`: image [3, F, H, W] in [-1, 1] → features [F, 257, dim] (all blocks but the last).
    public func visual(_ image: Tensor) throws -> Tensor {
        try forward(pixels: try preprocess(image))
    }

    /// `CLIPModel.visual(videos)` for several images (FLF2V passes first and last frame): features concatenated
    /// along the first dim, [sum F, 257, dim].
    public func visual(_ images: [Tensor]) throws -> Tensor {
        let parts = try images.map { try preprocess($0) }
        let s = config.imageSize
        let n = parts.reduce(0) { $0 + $1.shape[0] }
        let all = Tensor(uninitialized: [n, 3, s, s])
        var o = 0
        for p in parts { (all.data + o).update(from: p.data, count: p.count); o += p.count }
        return try forward(pixels: all)
    }

}
