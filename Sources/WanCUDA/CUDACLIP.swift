import Foundation
import WanTensor
import WanWeights
import WanModels

/// The CLIP image tower of Wan I2V / FLF2V (official `VisionTransformer`, `use_31_block=True`) on an NVIDIA GPU, step
/// for step as `CLIPVision` runs it: the preprocessing and the patch embedding + class token + position embedding on
/// the host (`CLIPVision.embed`, a few MFLOP), then on the device pre_norm, every block but the last (LayerNorm, q/k/v
/// from the fused to_qkv weight, attention with 1/sqrt(head_dim) over each image's tokens through `t5_attention`
/// without a bias table, proj, residual; LayerNorm, fc1, exact GELU, fc2, residual), no post-norm. The residual stream
/// stays f32; products run in the activation type (bf16, or f32).
public final class CUDACLIP: CUDAEncoderModel, CLIPImageEncoder {
    public let config: CLIPVisionConfig

    struct Block {
        let norm1Weight, norm1Bias, norm2Weight, norm2Bias: DeviceBuffer
        let q, k, v, proj, fc1, fc2: DeviceLinear
    }

    let patchWeight: Tensor, patchBias: Tensor?, cls: Tensor, pos: Tensor  // host: the embedding
    let preNormWeight, preNormBias: DeviceBuffer
    let blocks: [Block]

    public init(config c: CLIPVisionConfig, weights source: WeightSource, precision: CUDAPrecision = .bf16,
                context: CUDAContext? = nil, compiler: KernelCompiler? = nil) throws {
        guard c.numHeads > 0, c.dim % c.numHeads == 0, c.numLayers >= 1, c.patchSize > 0 else {
            throw WeightError.badConfig(source: source.label, detail: "dim \(c.dim) is not a multiple of num_heads \(c.numHeads) (or no layers)")
        }
        guard c.activation == "gelu" else {
            throw WeightError.badConfig(source: source.label, detail: "activation '\(c.activation)': the GPU tower runs the exact GELU of ViT-H/14 only; use --device cpu")
        }
        config = c
        let context = try context ?? CUDAContext()
        let act = precision.activation
        let uploader = WeightUploader(context: context)
        let b = WeightBinder(source)
        let d = c.dim, p = c.patchSize, m = c.mlpDim
        let pw = try b.tensor("patch_embedding.weight", [d, 3, p, p])
        patchWeight = Tensor(borrowing: pw.data, shape: [d, 3 * p * p], owner: pw)
        patchBias = b.has("patch_embedding.bias") ? try b.tensor("patch_embedding.bias", [d]) : nil
        cls = try b.tensor("cls_embedding", b.shape("cls_embedding")?.count == 1 ? [d] : [1, 1, d])
        pos = try b.tensor("pos_embedding", b.shape("pos_embedding")?.count == 2 ? [c.tokens, d] : [1, c.tokens, d])
        func vector(_ name: String, _ n: Int) throws -> DeviceBuffer { try uploader.f32(try b.tensor(name, [n])) }
        func linear(_ name: String, in i: Int, out o: Int) throws -> DeviceLinear {
            try uploader.linear(try Linear(b, name, in: i, out: o), weightType: act, outputType: act)
        }
        preNormWeight = try vector("pre_norm.weight", d)
        preNormBias = try vector("pre_norm.bias", d)
        var blocks: [Block] = []
        for i in 0..<(c.numLayers - 1) {  // the last block is checked, not loaded (use_31_block)
            let n = "transformer.\(i)."
            // The fused to_qkv [3 dim, dim] as three products (q, k, v rows in that order).
            let qkv = try b.tensor(n + "attn.to_qkv.weight", [3 * d, d]), qkvBias = try b.tensor(n + "attn.to_qkv.bias", [3 * d])
            func part(_ j: Int) throws -> DeviceLinear {
                let w = Tensor(uninitialized: [d, d]), bias = Tensor(uninitialized: [d])
                w.data.update(from: qkv.data + j * d * d, count: d * d)
                bias.data.update(from: qkvBias.data + j * d, count: d)
                return try uploader.linear(Linear(weight: w, bias: bias), weightType: act, outputType: act)
            }
            blocks.append(Block(
                norm1Weight: try vector(n + "norm1.weight", d), norm1Bias: try vector(n + "norm1.bias", d),
                norm2Weight: try vector(n + "norm2.weight", d), norm2Bias: try vector(n + "norm2.bias", d),
                q: try part(0), k: try part(1), v: try part(2), proj: try linear(n + "attn.proj", in: d, out: d),
                fc1: try linear(n + "mlp.0", in: d, out: m), fc2: try linear(n + "mlp.2", in: m, out: d)))
        }
        self.blocks = blocks
        try CLIPVision.checkUnusedTensors(b, config: c)
        try b.finish()
        try super.init(precision: precision, context: context, compiler: compiler, uploader: uploader)
    }

    /// Loads a tower from a weight source (`openCLIPWeights(path:).source`), the configuration inferred as
    /// `CLIPVision` infers it.
    public convenience init(weights source: WeightSource, arguments: [String: Any] = [:], precision: CUDAPrecision = .bf16,
                            context: CUDAContext? = nil, compiler: KernelCompiler? = nil) throws {
        try self.init(config: CLIPVisionConfig.inferred(from: source, arguments: arguments), weights: source, precision: precision,
                      context: context, compiler: compiler)
    }

    public func forward(pixels: Tensor) throws -> Tensor {
        let c = config, d = c.dim, L = c.tokens, m = c.mlpDim, act = self.act, t = act.size
        let x = try CLIPVision.embed(pixels: pixels, config: c, patchWeight: patchWeight, patchBias: patchBias, cls: cls, pos: pos)
        let n = pixels.shape[0], rows = n * L
        var buffers: [DeviceBuffer] = []
        defer { for b in buffers { pool.release(b) } }
        func take(_ bytes: Int) throws -> UInt64 { let b = try pool.acquire(bytes: bytes); buffers.append(b); return b.pointer }
        let xs = try take(4 * rows * d), normed = try take(t * rows * d)
        let q = try take(t * rows * d), k = try take(t * rows * d), v = try take(t * rows * d), attn = try take(t * rows * d)
        let hidden = try take(t * rows * m), delta = try take(t * rows * d)
        // Each image is one segment of L keys (the attention's per-row arrays; no positions without a bias table).
        var segments: [Int32] = []
        for img in 0..<n { segments += [Int32](repeating: Int32(img * L), count: L) }
        segments += [Int32](repeating: Int32(L), count: rows) + [Int32](repeating: Int32(L), count: rows)
        let ints = try take(4 * 3 * rows)
        try segments.withUnsafeBytes { try context.copy(toDevice: ints, from: $0.baseAddress!, bytes: $0.count) }
        try context.copy(toDevice: xs, from: UnsafeRawPointer(x.data), bytes: 4 * rows * d)
        let eps = c.normEps, scale = 1 / Float(c.headDim).squareRoot()
        try ops.layerNorm(.f32, out: xs, x: xs, weight: preNormWeight.pointer, bias: preNormBias.pointer, rows: rows, dim: d, eps: eps)
        for block in blocks {
            try ops.layerNorm(act, out: normed, x: xs, weight: block.norm1Weight.pointer, bias: block.norm1Bias.pointer, rows: rows, dim: d, eps: eps)
            try run(block.q, rows: rows, x: normed, y: q)
            try run(block.k, rows: rows, x: normed, y: k)
            try run(block.v, rows: rows, x: normed, y: v)
            try ops.t5Attention(act, out: attn, q: q, k: k, v: v, segStart: ints, segKeys: ints + UInt64(4 * rows),
                                segRows: ints + UInt64(8 * rows), positions: 0, bucketOf: 0, maxPos: 0, table: 0,
                                rows: rows, heads: c.numHeads, headDim: c.headDim, scale: scale)
            try run(block.proj, rows: rows, x: attn, y: delta)
            try ops.gatedResidual(act, x: xs, y: delta, gate: 0, modStride: 0, rows: rows, rowsPerBatch: rows, dim: d)
            try ops.layerNorm(act, out: normed, x: xs, weight: block.norm2Weight.pointer, bias: block.norm2Bias.pointer, rows: rows, dim: d, eps: eps)
            try run(block.fc1, rows: rows, x: normed, y: hidden)
            try ops.geluErf(act, out: hidden, x: hidden, count: rows * m)
            try run(block.fc2, rows: rows, x: hidden, y: delta)
            try ops.gatedResidual(act, x: xs, y: delta, gate: 0, modStride: 0, rows: rows, rowsPerBatch: rows, dim: d)
        }
        let out = Tensor(uninitialized: [n, L, d])
        try context.copy(toHost: UnsafeMutableRawPointer(out.data), from: xs, bytes: 4 * rows * d)
        return out
    }
}
