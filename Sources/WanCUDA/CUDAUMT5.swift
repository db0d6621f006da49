import Foundation
import WanTensor
import WanWeights
import WanModels

/// The umT5 text encoder (official `T5Encoder`, encoder only) on an NVIDIA GPU, step for step as `UMT5Encoder` runs
/// it on the CPU: token embedding (rows of the stored table dequantised on the host, only those of the tokens),
/// then per layer T5LayerNorm (RMS, no mean, no bias), q/k/v, T5 attention with the layer's relative-position bias
/// (`t5_attention`: no scaling, the segment's keys only), o, residual; T5LayerNorm, the gated-GELU FFN
/// fc2(fc1(x) * gelu_tanh(gate(x))), residual; a final T5LayerNorm. The residual stream stays f32; products and
/// attention run in the activation type (bf16 as the official encoder computes, or f32). Weights upload once as
/// `CUDADiT`'s do (`WeightUploader`); `weightBytes` leaves out the token embedding (it stays on the host).
public final class CUDAUMT5: CUDAEncoderModel, UMT5TextEncoder {
    public let config: UMT5Config

    struct Block {
        let norm1, norm2: DeviceBuffer  // [dim] f32
        let q, k, v, o, gate, fc1, fc2: DeviceLinear
        let posTable: DeviceBuffer?     // [buckets, heads] f32
    }

    /// The token embedding as stored (rows read for the prompt's tokens only).
    let embedding: LinearWeight
    let sharedPosTable: DeviceBuffer?
    let blocks: [Block]
    let finalNorm: DeviceBuffer

    /// Keys per segment the attention kernel takes (T5_MAX_KEYS in t5.cu).
    public static let maxKeys = 4096

    public init(config c: UMT5Config, weights source: WeightSource, precision: CUDAPrecision = .bf16,
                context: CUDAContext? = nil, compiler: KernelCompiler? = nil) throws {
        guard c.numHeads > 0, c.dimAttn % c.numHeads == 0, c.numBuckets >= 2 else {
            throw WeightError.badConfig(source: source.label, detail: "dim_attn \(c.dimAttn) is not a multiple of num_heads \(c.numHeads) (or num_buckets \(c.numBuckets) < 2)")
        }
        config = c
        let context = try context ?? CUDAContext()
        let act = precision.activation
        let uploader = WeightUploader(context: context)
        let b = WeightBinder(source)
        let d = c.dim, a = c.dimAttn, f = c.dimFfn
        func linear(_ name: String, in i: Int, out o: Int) throws -> DeviceLinear {
            try uploader.linear(try Linear(b, name, in: i, out: o, bias: false), weightType: act, outputType: act)
        }
        func vector(_ name: String, _ shape: [Int]) throws -> DeviceBuffer { try uploader.f32(try b.tensor(name, shape)) }
        embedding = try Linear(b, "token_embedding", in: d, out: c.vocab, bias: false).matrix
        sharedPosTable = c.sharedPos ? try vector("pos_embedding.embedding.weight", [c.numBuckets, c.numHeads]) : nil
        var blocks: [Block] = []
        for i in 0..<c.numLayers {
            let p = "blocks.\(i)."
            blocks.append(Block(
                norm1: try vector(p + "norm1.weight", [d]), norm2: try vector(p + "norm2.weight", [d]),
                q: try linear(p + "attn.q", in: d, out: a), k: try linear(p + "attn.k", in: d, out: a),
                v: try linear(p + "attn.v", in: d, out: a), o: try linear(p + "attn.o", in: a, out: d),
                gate: try linear(p + "ffn.gate.0", in: d, out: f), fc1: try linear(p + "ffn.fc1", in: d, out: f),
                fc2: try linear(p + "ffn.fc2", in: f, out: d),
                posTable: c.sharedPos ? nil : try vector(p + "pos_embedding.embedding.weight", [c.numBuckets, c.numHeads])))
        }
        self.blocks = blocks
        finalNorm = try vector("norm.weight", [d])
        try b.finish()
        try super.init(precision: precision, context: context, compiler: compiler, uploader: uploader)
    }

    /// Loads an encoder from a weight source (`openT5Weights(path:).source`), the configuration inferred as
    /// `UMT5Encoder` infers it.
    public convenience init(weights source: WeightSource, arguments: [String: Any] = [:], precision: CUDAPrecision = .bf16,
                            context: CUDAContext? = nil, compiler: KernelCompiler? = nil) throws {
        try self.init(config: UMT5Config.inferred(from: source, arguments: arguments), weights: source, precision: precision,
                      context: context, compiler: compiler)
    }

    /// Every segment through the encoder together; the hidden states of all their rows, stacked [rows, dim] (f32).
    public func run(_ segments: [UMT5Segment]) throws -> Tensor {
        let c = config, d = c.dim, a = c.dimAttn, f = c.dimFfn
        let rows = segments.reduce(0) { $0 + $1.ids.count }
        if rows == 0 { return Tensor(zeros: [0, d]) }
        if let long = segments.first(where: { $0.ids.count > Self.maxKeys }) {
            throw EncoderInputError("a sequence of \(long.ids.count) tokens is longer than the GPU encoder takes (\(Self.maxKeys)); the official text length is 512")
        }
        // Token embedding on the host, then the residual stream x (f32) on the device.
        let x = try embedTokens(segments) { id, row in embedding.dequantizeRows(id..<(id + 1), into: row) }
        // Per row: its segment's first row, key count and row count, and its token position; the bucket of every
        // relative position that occurs.
        var segStart: [Int32] = [], segKeys: [Int32] = [], segRows: [Int32] = [], positions: [Int32] = []
        var first = 0
        for seg in segments {
            for p in seg.positions {
                segStart.append(Int32(first)); segKeys.append(Int32(seg.keys)); segRows.append(Int32(seg.ids.count)); positions.append(Int32(p))
            }
            first += seg.ids.count
        }
        let (buckets, maxPos) = relativeBuckets(segments)

        let t = act.size
        var buffers: [DeviceBuffer] = []
        defer { for b in buffers { pool.release(b) } }
        func take(_ bytes: Int) throws -> UInt64 { let b = try pool.acquire(bytes: bytes); buffers.append(b); return b.pointer }
        let xs = try take(4 * rows * d)
        let normed32 = try take(4 * rows * d)                     // the norm's f32 output
        let normed = act == .f32 ? normed32 : try take(t * rows * d)
        let q = try take(t * rows * a), k = try take(t * rows * a), v = try take(t * rows * a), attn = try take(t * rows * a)
        let gate = try take(t * rows * f), up = try take(t * rows * f)
        let delta = try take(t * rows * d)
        let intArrays = try take(4 * (4 * rows + buckets.count))
        try context.copy(toDevice: xs, from: UnsafeRawPointer(x.data), bytes: 4 * rows * d)
        let arrays = segStart + segKeys + segRows + positions + buckets.map(Int32.init)
        try arrays.withUnsafeBytes { try context.copy(toDevice: intArrays, from: $0.baseAddress!, bytes: $0.count) }
        func at(_ i: Int) -> UInt64 { intArrays + UInt64(4 * i * rows) }

        func norm(_ weight: DeviceBuffer) throws {
            // T5LayerNorm in f32, then (bf16) rounded to the activation type for the products.
            try ops.rmsNorm(.f32, out: normed32, x: xs, weight: weight.pointer, rows: rows, dim: d, eps: c.eps)
            if act != .f32 { try ops.convertToBF16(out: normed, x: normed32, count: rows * d) }
        }
        for block in blocks {
            try norm(block.norm1)
            try run(block.q, rows: rows, x: normed, y: q)
            try run(block.k, rows: rows, x: normed, y: k)
            try run(block.v, rows: rows, x: normed, y: v)
            let table = block.posTable ?? sharedPosTable!
            try ops.t5Attention(act, out: attn, q: q, k: k, v: v, segStart: at(0), segKeys: at(1), segRows: at(2), positions: at(3),
                                bucketOf: at(4), maxPos: maxPos, table: table.pointer, rows: rows, heads: c.numHeads, headDim: c.headDim)
            try run(block.o, rows: rows, x: attn, y: delta)
            try ops.gatedResidual(act, x: xs, y: delta, gate: 0, modStride: 0, rows: rows, rowsPerBatch: rows, dim: d)
            try norm(block.norm2)
            try run(block.gate, rows: rows, x: normed, y: gate)
            try run(block.fc1, rows: rows, x: normed, y: up)
            try ops.t5GeluMul(act, out: gate, gate: gate, up: up, count: rows * f)
            try run(block.fc2, rows: rows, x: gate, y: delta)
            try ops.gatedResidual(act, x: xs, y: delta, gate: 0, modStride: 0, rows: rows, rowsPerBatch: rows, dim: d)
        }
        try ops.rmsNorm(.f32, out: xs, x: xs, weight: finalNorm.pointer, rows: rows, dim: d, eps: c.eps)
        try context.copy(toHost: UnsafeMutableRawPointer(x.data), from: xs, bytes: 4 * rows * d)
        return x
    }
}

extension CUDAOps {
    /// T5 self-attention (t5.cu): grid (rows, heads), 128 threads; the per-row segment arrays and buckets are device
    /// int32 arrays, `table` the layer's [buckets, heads] f32 bias (0: none, with positions and buckets unused);
    /// scores are scale * q·k (T5: 1).
    public func t5Attention(_ type: DeviceDType, out: UInt64, q: UInt64, k: UInt64, v: UInt64, segStart: UInt64, segKeys: UInt64,
                            segRows: UInt64, positions: UInt64, bucketOf: UInt64, maxPos: Int, table: UInt64,
                            rows: Int, heads: Int, headDim: Int, scale: Float = 1) throws {
        guard rows > 0 else { return }
        try go("t5_attention_\(type == .f32 ? "f32" : "bf16")", grid: (rows, heads, 1), block: (128, 1, 1),
               [.pointer(out), .pointer(q), .pointer(k), .pointer(v), .pointer(segStart), .pointer(segKeys), .pointer(segRows),
                .pointer(positions), .pointer(bucketOf), .int32(Int32(maxPos)), .pointer(table), .int32(Int32(heads)), .int32(Int32(headDim)),
                .float(scale)])
    }

    /// out = gelu_tanh(gate) * up (out may alias either).
    public func t5GeluMul(_ type: DeviceDType, out: UInt64, gate: UInt64, up: UInt64, count: Int) throws {
        try go("t5_gelu_mul_\(type == .f32 ? "f32" : "bf16")", grid: (Self.blocks(count), 1, 1), block: (256, 1, 1),
               [.pointer(out), .pointer(gate), .pointer(up), .int64(Int64(count))])
    }
}

extension CUDAUMT5 {
    /// Device bytes `CUDAUMT5` uploads for `config` at most: every matrix in the activation type (compact fp8 /
    /// ggml-block matrices take less), norms and relative-position tables in f32; the token embedding stays on the host.
    public static func weightBytes(_ c: UMT5Config, precision: CUDAPrecision) -> Int {
        c.parameterShapes().reduce(0) { total, p in
            if p.name == "token_embedding.weight" { return total }
            let count = p.shape.reduce(1, *)
            let matrix = p.shape.count == 2 && !p.name.contains("pos_embedding")
            return total + count * (matrix ? precision.activation.size : 4)
        }
    }

    /// Activation bytes of one encode of `rows` tokens (the residual stream, norms, q/k/v/attention, the FFN).
    public static func activationBytes(_ c: UMT5Config, precision: CUDAPrecision, rows: Int) -> Int {
        let t = precision.activation.size
        return rows * (8 * c.dim + t * (c.dim + 4 * c.dimAttn + 2 * c.dimFfn + c.dim)) + 4 * (6 * rows + 1)
    }
}
