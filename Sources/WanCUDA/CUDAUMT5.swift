import Foundation
import WanTensor
import WanWeights
import WanModels

/// The umT5 text encoder (official `T5Encoder`, encoder only) on an NVIDIA GPU: the one `T5Encoder` model on
/// `CUDAComputeBackend`. The token embedding stays on the host (rows of the stored table dequantised, only those of
/// the tokens); per layer T5LayerNorm (f32, then rounded to the activation type), q/k/v, T5 attention with the
/// layer's relative-position bias (`t5_attention_f32`: no scaling, the segment's keys only; q, k, v from bf16 products
/// written in f32), o, residual; T5LayerNorm, the gated-GELU FFN fc2(fc1(x) * gelu_tanh(gate(x))), residual; a final
/// T5LayerNorm. The residual stream stays f32; the products run in the activation type (bf16 as the official encoder
/// computes, or f32). (The tensor-core `t5_flash_attention_bf16_d*` serves CLIP's bf16 attention.)
/// `weightBytes` leaves out the token embedding.
public typealias CUDAUMT5 = T5Encoder<CUDAComputeBackend>

extension T5Encoder where B == CUDAComputeBackend {
    public convenience init(config: UMT5Config, weights source: WeightSource, precision: CUDAPrecision = .bf16,
                            context: CUDAContext? = nil, compiler: KernelCompiler? = nil) throws {
        try self.init(config: config, weights: source,
                      backend: try CUDAComputeBackend(precision: precision, context: context, compiler: compiler))
    }

    /// Loads an encoder from a weight source (`openT5Weights(path:).source`), the configuration inferred as
    /// `UMT5Encoder` infers it.
    public convenience init(weights source: WeightSource, arguments: [String: Any] = [:], precision: CUDAPrecision = .bf16,
                            context: CUDAContext? = nil, compiler: KernelCompiler? = nil) throws {
        try self.init(config: UMT5Config.inferred(from: source, arguments: arguments), weights: source, precision: precision,
                      context: context, compiler: compiler)
    }
}

extension CUDAOps {
    /// T5 self-attention (t5.cu): grid (rows, heads), 128 threads; the per-row segment arrays and buckets are device
    /// int32 arrays, `table` the layer's [buckets, heads] f32 bias (0: none, with positions and buckets unused);
    /// scores are scale * q·k (T5: 1).
    public func t5Attention(_ type: DeviceDType, out: UInt64, q: UInt64, k: UInt64, v: UInt64, ld: Int? = nil, segStart: UInt64, segKeys: UInt64,
                            segRows: UInt64, positions: UInt64, bucketOf: UInt64, maxPos: Int, table: UInt64,
                            rows: Int, heads: Int, headDim: Int, scale: Float = 1) throws {
        guard rows > 0 else { return }
        try go("t5_attention_\(type == .f32 ? "f32" : "bf16")", grid: (rows, heads, 1), block: (128, 1, 1),
               [.pointer(out), .pointer(q), .pointer(k), .pointer(v), .int32(Int32(ld ?? heads * headDim)), .pointer(segStart), .pointer(segKeys), .pointer(segRows),
                .pointer(positions), .pointer(bucketOf), .int32(Int32(maxPos)), .pointer(table), .int32(Int32(heads)), .int32(Int32(headDim)),
                .float(scale)])
    }

    /// Query rows per block of `t5_flash_attention_bf16_d*` (T5_FLASH_ROWS): the tile list's step within a segment.
    public static let t5FlashRows = 64
    /// Head dims with a `t5_flash_attention_bf16_d*` kernel.
    public static let t5FlashHeadDims: Set<Int> = [16, 32, 64, 80]

    /// Whether `t5FlashAttention` takes this layout: a head dim it has, rows `ld` elements apart with ld % 8 == 0 and
    /// 16-byte aligned pointers (its 16-byte cp.async copies), and relative positions within the staged bias
    /// (2 maxPos + 1 <= T5_FLASH_REL_MAX 2048; 0 without a table).
    public static func t5FlashTakes(headDim: Int, ld: Int, maxPos: Int, pointers: [UInt64]) -> Bool {
        t5FlashHeadDims.contains(headDim) && ld % 8 == 0 && 2 * maxPos + 1 <= 2048 && pointers.allSatisfy { $0 % 16 == 0 }
    }

    /// t5_attention_bf16's semantics on the tensor cores (t5.cu's t5_flash_attention_bf16_d*): grid (tiles, heads),
    /// 128 threads; `tileRows` the first row of each query tile (`CUDAComputeBackend.Segments`), the rest as
    /// `t5Attention`. The caller checks `t5FlashTakes`.
    public func t5FlashAttention(out: UInt64, q: UInt64, k: UInt64, v: UInt64, ld: Int, tileRows: UInt64, tiles: Int, segStart: UInt64,
                                 segKeys: UInt64, segRows: UInt64, positions: UInt64, bucketOf: UInt64, maxPos: Int, table: UInt64,
                                 heads: Int, headDim: Int, scale: Float = 1) throws {
        guard tiles > 0 else { return }
        try go("t5_flash_attention_bf16_d\(headDim)", grid: (tiles, heads, 1), block: (128, 1, 1),
               [.pointer(out), .pointer(q), .pointer(k), .pointer(v), .int32(Int32(ld)), .pointer(tileRows), .pointer(segStart),
                .pointer(segKeys), .pointer(segRows), .pointer(positions), .pointer(bucketOf), .int32(Int32(maxPos)), .pointer(table),
                .int32(Int32(heads)), .float(scale)])
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

    /// Activation bytes of one encode of `rows` tokens (the residual stream, norms, q/k/v/attention in f32, the
    /// attention again in the activation type as o's input, the FFN).
    public static func activationBytes(_ c: UMT5Config, precision: CUDAPrecision, rows: Int) -> Int {
        let t = precision.activation.size
        let attention = 16 * c.dimAttn + (t == 4 ? 0 : t * c.dimAttn)
        return rows * (8 * c.dim + attention + t * (c.dim + 2 * c.dimFfn + c.dim)) + 4 * (6 * rows + 1)
    }
}
