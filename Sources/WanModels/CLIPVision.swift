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
    public var mlpDim: Int { Int(Double(dim) * mlpRatio) }
    public var headDim: Int { dim / numHeads }

    public var description: String {
        "CLIP ViT(\(imageSize) px, patch \(patchSize), dim \(dim), \(numHeads) heads, \(numLayers) layers, mlp \(mlpDim), \(activation))"
    }

    public mutating func apply(officialArguments a: [String: Any]) {
        func int(_ k: String) -> Int? { (a[k] as? NSNumber)?.intValue }
        if let v = int("image_size") { imageSize = v }
        if let v = int("patch_size") { patchSize = v }
        if let v = int("dim") ?? int("vision_dim") { dim = v }
        if let v = (a["mlp_ratio"] as? NSNumber)?.doubleValue ?? (a["vision_mlp_ratio"] as? NSNumber)?.doubleValue { mlpRatio = v }
        if let v = int("out_dim") ?? int("embed_dim") { outDim = v }
        if let v = int("num_heads") ?? int("vision_heads") { numHeads = v }
        if let v = int("num_layers") ?? int("vision_layers") { numLayers = v }
        if let v = a["activation"] as? String { activation = v }
        if let v = (a["norm_eps"] as? NSNumber)?.floatValue { normEps = v }
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
        if let s = source.info("transformer.0.mlp.0.weight")?.shape, s.count == 2, c.dim > 0 { c.mlpRatio = Double(s[0]) / Double(c.dim) }
        if let s = source.info("head")?.shape, s.count == 2 { c.outDim = s[0] == c.dim ? s[1] : s[0] }
        var layers = 0
        for n in source.names where n.hasPrefix("transformer.") {
            if let i = Int(n.dropFirst(12).prefix { $0 != "." }) { layers = max(layers, i + 1) }
        }
        if layers > 0 { c.numLayers = layers }
        if c.dim != 1280 { c.numHeads = max(1, c.dim / 64) }
        c.apply(officialArguments: arguments)
        return c
    }
}

/// The CLIP image encoder of Wan I2V / FLF2V: `CLIPModel.visual` of wan/modules/clip.py. Preprocessing (bicubic
/// resize to 224x224 as `F.interpolate(mode='bicubic', align_corners=False)`, [-1,1] → [0,1], CLIP mean/std), then
/// the official `VisionTransformer` (patch conv without bias, class token, position embedding, pre-norm, pre-LN
/// blocks with fused-qkv attention and an exact-GELU MLP) run through all blocks but the last (`use_31_block=True`),
/// no post-norm. Weights stay as stored and are converted a slice at a time just before use.
public final class CLIPVision: CLIPImageEncoder, @unchecked Sendable {
    public let config: CLIPVisionConfig

    struct Block {
        let norm1: LayerNormParams, norm2: LayerNormParams
        let qkv: StoredMatrix, qkvBias: Tensor
        let proj: StoredMatrix, projBias: Tensor
        let fc1: StoredMatrix, fc1Bias: Tensor
        let fc2: StoredMatrix, fc2Bias: Tensor
    }

    let patchWeight: Tensor  // [dim, 3*p*p]
    let patchBias: Tensor?
    let cls: Tensor
    let pos: Tensor
    let preNorm: LayerNormParams
    let blocks: [Block]  // the ones that run: numLayers - 1

    /// Binds a vision tower under the official names (`openCLIPWeights(path:).source`).
    public convenience init(weights: WeightSource, arguments: [String: Any] = [:]) throws {
        try self.init(config: CLIPVisionConfig.inferred(from: weights, arguments: arguments), weights: weights)
    }

    public init(config: CLIPVisionConfig, weights: WeightSource) throws {
        guard config.numHeads > 0, config.dim % config.numHeads == 0, config.numLayers >= 1, config.patchSize > 0 else {
            throw WeightError.badConfig(source: weights.label, detail: "dim \(config.dim) is not a multiple of num_heads \(config.numHeads) (or no layers)")
        }
        guard config.activation == "gelu" || config.activation == "quick_gelu" else {
            throw WeightError.badConfig(source: weights.label, detail: "activation '\(config.activation)' is not supported (gelu, quick_gelu)")
        }
        self.config = config
        let b = WeightBinder(weights)
        let d = config.dim, p = config.patchSize, m = config.mlpDim, eps = config.normEps
        let pw = try b.tensor("patch_embedding.weight", [d, 3, p, p])
        patchWeight = Tensor(borrowing: pw.data, shape: [d, 3 * p * p], owner: pw)
        // pre_norm=True builds the patch conv without bias; accept one when a checkpoint has it.
        patchBias = b.has("patch_embedding.bias") ? try b.tensor("patch_embedding.bias", [d]) : nil
        cls = try b.tensor("cls_embedding", b.shape("cls_embedding")?.count == 1 ? [d] : [1, 1, d])
        pos = try b.tensor("pos_embedding", b.shape("pos_embedding")?.count == 2 ? [config.tokens, d] : [1, config.tokens, d])
        preNorm = try LayerNormParams(b, "pre_norm", dim: d, eps: eps)
        var blocks: [Block] = []
        // The last block is checked, not loaded (checkUnusedTensors): use_31_block never runs it.
        for i in 0..<(config.numLayers - 1) {
            let n = "transformer.\(i)."
            blocks.append(Block(
                norm1: try LayerNormParams(b, n + "norm1", dim: d, eps: eps), norm2: try LayerNormParams(b, n + "norm2", dim: d, eps: eps),
                qkv: try StoredMatrix(b, n + "attn.to_qkv.weight", [3 * d, d]), qkvBias: try b.tensor(n + "attn.to_qkv.bias", [3 * d]),
                proj: try StoredMatrix(b, n + "attn.proj.weight", [d, d]), projBias: try b.tensor(n + "attn.proj.bias", [d]),
                fc1: try StoredMatrix(b, n + "mlp.0.weight", [m, d]), fc1Bias: try b.tensor(n + "mlp.0.bias", [m]),
                fc2: try StoredMatrix(b, n + "mlp.2.weight", [d, m]), fc2Bias: try b.tensor(n + "mlp.2.bias", [d])))
        }
        self.blocks = blocks
        try Self.checkUnusedTensors(b, config: config)
        try b.finish()
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
        let c = config
        let d = c.dim, L = c.tokens, m = c.mlpDim
        // Every image's tokens go through each linear layer together (one pass over the weights per batch).
        let x = try Self.embed(pixels: pixels, config: c, patchWeight: patchWeight, patchBias: patchBias, cls: cls, pos: pos)
        let n = pixels.shape[0], rows = n * L
        let h = Tensor(uninitialized: [rows, d])
        let qkv = Tensor(uninitialized: [rows, 3 * d]), attn = Tensor(uninitialized: [rows, d])
        let hidden = Tensor(uninitialized: [rows, m]), delta = Tensor(uninitialized: [rows, d])
        let activation: SliceActivation = c.activation == "quick_gelu" ? .quickGELU : .geluErf
        let scale = 1 / Float(c.headDim).squareRoot()
        preNorm(x.data, rows: rows, into: h.data)
        x.data.update(from: h.data, count: rows * d)
        for block in blocks {
            block.norm1(x.data, rows: rows, into: h.data)
            block.qkv.linear(h.data, rows: rows, into: qkv.data, bias: block.qkvBias.data)
            for img in 0..<n {
                let q = qkv.data + img * L * 3 * d
                Attention.run(q: q, ldq: 3 * d, queries: L, k: q + d, ldk: 3 * d, v: q + 2 * d, ldv: 3 * d,
                              keys: L, heads: c.numHeads, headDim: c.headDim, scale: scale, out: attn.data + img * L * d, ldo: d)
            }
            block.proj.linear(attn.data, rows: rows, into: delta.data, bias: block.projBias.data)
            Kernels.addGated(x.data, delta.data, rows: rows, dim: d, gate: nil)
            block.norm2(x.data, rows: rows, into: h.data)
            block.fc1.linear(h.data, rows: rows, into: hidden.data, bias: block.fc1Bias.data, activation: activation)
            block.fc2.linear(hidden.data, rows: rows, into: delta.data, bias: block.fc2Bias.data)
            Kernels.addGated(x.data, delta.data, rows: rows, dim: d, gate: nil)
        }
        return Tensor(borrowing: x.data, shape: [n, L, d], owner: x)
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
