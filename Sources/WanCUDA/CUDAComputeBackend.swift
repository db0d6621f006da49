import Foundation
import WanTensor
import WanWeights
import WanModels

/// The GPU backend of the models written against `ComputeBackend` (`VisionTransformer`, `T5Encoder`): weights
/// uploaded once (`WeightUploader`: matrices in the activation type, fp8 / ggml-block matrices kept compact under
/// bf16 and expanded into one bf16 scratch before each product; vectors f32), tensors from a `DeviceMemoryPool`
/// (handed back when the last view of them goes), products through cuBLASLt (f32 accumulation), the rest through
/// Kernels/*.cu. Work runs in order on the context's stream; `download` waits for it.
public final class CUDAComputeBackend: ComputeBackend {
    public typealias Matrix = DeviceLinear
    public typealias Vector = DeviceBuffer

    /// A pool allocation, handed back to the pool when the last tensor viewing it goes.
    public final class Storage {
        public let buffer: DeviceBuffer
        let pool: DeviceMemoryPool?
        init(_ buffer: DeviceBuffer, pool: DeviceMemoryPool) { self.buffer = buffer; self.pool = pool }
        /// A view of a buffer someone else holds (a model's planned workspace): not handed back.
        public init(borrowing buffer: DeviceBuffer) { self.buffer = buffer; pool = nil }
        deinit { pool?.release(buffer) }
    }

    /// The attention's per-row int32 arrays on the device (t5.cu): segment start, key count, row count, token
    /// position, then the bucket of every relative position.
    /// The device arrays of `segments(_:buckets:)`: per row seg_start, seg_keys, seg_rows (`at(0...2)`), positions
    /// (`at(3)`), bucket_of (`at(4)`), then the first row of each `CUDAOps.t5FlashRows`-row query tile that
    /// `t5_flash_attention` takes (`tileRows`, `tiles` of them; a segment's tiles never reach into the next).
    public struct Segments {
        let arrays: Storage
        let rows: Int
        let maxPos: Int
        let hasPositions: Bool
        let tiles: Int
        let tileOffset: Int
        func at(_ i: Int) -> UInt64 { arrays.buffer.pointer + UInt64(4 * i * rows) }
        var tileRows: UInt64 { arrays.buffer.pointer + UInt64(4 * tileOffset) }
    }

    public let precision: CUDAPrecision
    /// Products whose weight is stored as e4m3 run as cuBLASLt fp8 matmuls (the activation quantised to e4m3 on the
    /// device: `FP8Products`) instead of on the weight's bf16 expansion; bf16 and compute capability 8.9+ only.
    public let fp8Products: Bool
    public let context: CUDAContext
    public let ops: CUDAOps
    public let gemm: CUDAMatmul
    public let pool: DeviceMemoryPool
    let uploader: WeightUploader
    /// Device bytes of the uploaded weights, the expansion scratch included (set by `weightsLoaded`).
    public private(set) var weightBytes = 0
    private var dequantScratch: DeviceBuffer?

    /// Rows per attention segment the t5.cu kernel takes (T5_MAX_KEYS).
    public static let maxSegmentRows = 4096

    /// The segment attention in bf16 (CLIP's; umT5 hands it f32 q/k/v) runs `t5_flash_attention_bf16_d*` (tensor cores)
    /// where it takes the head dim and layout (`CUDAOps.t5FlashTakes`), else `t5_attention_bf16`; f32 always runs
    /// `t5_attention_f32`.
    /// False, or $WANKIT_T5_ATTENTION=scalar: always `t5_attention` (a comparison on the GPU).
    public var flashSegmentAttention = ProcessInfo.processInfo.environment["WANKIT_T5_ATTENTION"]?.lowercased() != "scalar"

    /// `fp8Products`: see the property; throws (naming the GPU's compute capability and the fix) where it cannot run.
    public init(precision: CUDAPrecision = .bf16, context: CUDAContext? = nil, compiler: KernelCompiler? = nil, fp8Products: Bool = false) throws {
        self.precision = precision
        let context = try context ?? CUDAContext()
        if fp8Products { try FP8Products.check(context.info, precision: precision) }
        self.fp8Products = fp8Products
        self.context = context
        ops = try CUDAOps(context: context, compiler: compiler)
        gemm = try CUDAMatmul(context: context)
        pool = DeviceMemoryPool(context: context)
        uploader = WeightUploader(context: context)
        let ops = self.ops
        gemm.unfusedEpilogue = { type, y, bias, rows, cols, act in
            try ops.biasAct(type, y: y, bias: bias, rows: rows, cols: cols, act: act)
        }
        ops.workspacePool = pool  // cuDNN's attention workspace, when that attention is chosen
    }

    public var activationType: ElementType { precision.activation }
    /// The GPU attention kernels take no per-key bias: the DiT's text is embedded at its full length.
    public var collapsesPaddedText: Bool { false }

    // MARK: weights

    /// A bound `Linear` uploaded with its weight in `weight` and its bias in `output` (the DiT runs its time embedding,
    /// patch embedding and head in f32 whatever the precision).
    public func upload(_ linear: Linear, weight: ElementType, output: ElementType) throws -> DeviceLinear {
        try uploader.linear(linear, weightType: weight, outputType: output)
    }

    public func matrix(_ linear: Linear, kind: MatrixKind) throws -> DeviceLinear {
        let types = kind.types(activation: activationType)
        return try upload(linear, weight: types.weight, output: types.output)
    }

    public var description: String { "cuda:\(context.info.ordinal) \(context.info.name) (\(precision.rawValue))" }

    public func unsupportedHeadDim(_ headDim: Int) -> String? {
        guard headDim > CUDAOps.maxHeadDim else { return nil }
        return "head_dim \(headDim): the GPU attention kernels take head dims up to \(CUDAOps.maxHeadDim); use --device cpu"
    }

    public func vector(_ tensor: Tensor) throws -> DeviceBuffer { try uploader.f32(tensor) }

    /// Called once a model's weights are up (models may share a backend: `CUDAVACE`'s two DiTs): the bf16 scratch
    /// compact matrices are expanded into grows to the largest of them; `weightBytes` counts everything uploaded.
    public func weightsLoaded() throws {
        if 2 * uploader.largestCompactElements > dequantScratchBytes {
            dequantScratch = nil
            dequantScratch = try uploader.makeScratch()
        }
        weightBytes = uploader.uploadedBytes + dequantScratchBytes
        try context.synchronize()
    }

    /// Device bytes of the bf16 scratch compact matrices are expanded into (0 when none is compact).
    public var dequantScratchBytes: Int { dequantScratch?.bytes ?? 0 }
    /// Matrices kept compact on the device, by format.
    public var compactMatrices: [CompactWeightFormat: Int] { uploader.compactMatrices }

    /// y = x · wᵀ (+ bias), then the epilogue, of an uploaded `Linear` on device addresses (a compact weight is
    /// expanded into the scratch first; with `fp8Products` an e4m3 weight runs as an fp8 matmul where cuBLASLt takes it).
    public func product(_ l: DeviceLinear, rows: Int, x: UInt64, y: UInt64, epilogue: MatmulEpilogue = .none) throws {
        if fp8Products && l.compact == .fp8E4M3,
           try gemm.fp8Linear(l, rows: rows, x: x, y: y, epilogue: epilogue, ops: ops, pool: pool) { return }
        try gemm.linear(l, rows: rows, x: x, y: y, epilogue: epilogue, ops: ops, scratch: dequantScratch)
    }

    public func layerFinished(_ matrices: [DeviceLinear]) {}

    // MARK: memory

    static func pointer(_ x: BackendTensor<CUDAComputeBackend>) -> UInt64 {
        x.storage.buffer.pointer + UInt64(x.offset * x.type.size)
    }

    public func tensor(rows: Int, cols: Int, type: ElementType) throws -> BackendTensor<CUDAComputeBackend> {
        BackendTensor(storage: Storage(try pool.acquire(bytes: max(rows * cols * type.size, 1)), pool: pool), rows: rows, cols: cols, type: type)
    }

    public func upload(_ host: Tensor, rows: Int, cols: Int) throws -> BackendTensor<CUDAComputeBackend> {
        precondition(host.count == rows * cols)
        let x = try tensor(rows: rows, cols: cols, type: .f32)
        try context.copy(toDevice: Self.pointer(x), from: UnsafeRawPointer(host.data), bytes: 4 * rows * cols)
        return x
    }

    /// A dense tensor as a host f32 tensor (bf16 widened); waits for the queued work.
    public func download(_ x: BackendTensor<CUDAComputeBackend>) throws -> Tensor {
        precondition(x.isDense, "download takes a dense tensor")
        let count = x.rows * x.cols
        let out = Tensor(uninitialized: [x.rows, x.cols])
        if x.type == .f32 {
            try context.copy(toHost: UnsafeMutableRawPointer(out.data), from: Self.pointer(x), bytes: 4 * count)
        } else {
            var bits = [UInt16](repeating: 0, count: count)
            try bits.withUnsafeMutableBytes { try context.copy(toHost: $0.baseAddress!, from: Self.pointer(x), bytes: 2 * count) }
            bits.withUnsafeBufferPointer { BFloat16.unpack($0.baseAddress!, into: out.data, count: count) }
        }
        return out
    }

    public func segments(_ s: AttentionSegments, buckets: RelativeBuckets?) throws -> Segments {
        if let long = s.rows.max(), long > Self.maxSegmentRows {
            throw EncoderInputError("a sequence of \(long) tokens is longer than the GPU attention takes (\(Self.maxSegmentRows)); the official text length is 512")
        }
        let rows = s.totalRows
        var start: [Int32] = [], keys: [Int32] = [], count: [Int32] = []
        var first = 0
        for (n, k) in zip(s.rows, s.keys) {
            start += [Int32](repeating: Int32(first), count: n)
            keys += [Int32](repeating: Int32(k), count: n)
            count += [Int32](repeating: Int32(n), count: n)
            first += n
        }
        let positions = (s.positions ?? []).map { Int32($0) }
        let bucketOf = (buckets?.bucketOf ?? []).map { Int32($0) }
        var tileRows: [Int32] = []
        first = 0
        for n in s.rows {
            tileRows += stride(from: first, to: first + n, by: CUDAOps.t5FlashRows).map { Int32($0) }
            first += n
        }
        let head = start + keys + count + positions + bucketOf
        let arrays = head + tileRows
        let storage = Storage(try pool.acquire(bytes: max(4 * arrays.count, 4)), pool: pool)
        try arrays.withUnsafeBytes { try context.copy(toDevice: storage.buffer.pointer, from: $0.baseAddress!, bytes: $0.count) }
        return Segments(arrays: storage, rows: rows, maxPos: buckets?.maxPos ?? 0, hasPositions: s.positions != nil && buckets != nil,
                        tiles: tileRows.count, tileOffset: head.count)
    }

    // MARK: the DiT's workspace

    /// The planned workspace of the last DiT token count (kept between forward passes of that shape).
    private var ditWorkspace: (plan: CUDADiTPlan, buffer: DeviceBuffer)?

    /// Views of one planned workspace (`CUDADiTPlan`, kept between calls with the same plan), one per region of the
    /// model's `DiTForwardLayout`.
    public func ditBuffers(config c: WanDiTConfig, tokens L: Int, grid: (f: Int, h: Int, w: Int), patchLength: Int) throws -> DiTForwardBuffers<CUDAComputeBackend> {
        let plan = CUDADiTPlan(config: c, tokens: L, patchLength: patchLength, precision: precision)
        if let w = ditWorkspace, w.plan != plan { pool.release(w.buffer); ditWorkspace = nil }
        if ditWorkspace == nil { ditWorkspace = (plan, try pool.acquire(bytes: plan.workspace.totalBytes)) }
        let space = Storage(borrowing: ditWorkspace!.buffer)
        return plan.layout.buffers(grid: grid) { r in
            BackendTensor(storage: space, offset: plan.workspace.offset(r.name)! / r.type.size, rows: r.rows, cols: r.cols, type: r.type)
        }
    }

    /// Hands the DiT workspace back to the pool.
    public func releaseDiTWorkspace() {
        if let w = ditWorkspace { pool.release(w.buffer); ditWorkspace = nil }
    }

    /// The DiT workspace and every free pooled buffer go back to the driver.
    public func releaseActivations() {
        releaseDiTWorkspace()
        pool.trim()
    }

    // MARK: operations

    public func linear(_ m: DeviceLinear, _ x: BackendTensor<CUDAComputeBackend>, into y: BackendTensor<CUDAComputeBackend>,
                       activation: LinearActivation) throws {
        precondition(x.isDense && y.isDense && x.rows == y.rows && x.cols == m.inFeatures && y.cols == m.outFeatures)
        precondition(x.type == m.weightType && y.type == m.outputType)
        if activation == .quickGELU {
            throw CUDAError.callFailed(call: "linear", code: -1, message: "QuickGELU has no GPU kernel; use --device cpu")
        }
        // GELU(tanh) inside cuBLASLt's epilogue under bf16; in f32 by the kernel (exactly the official formula).
        let fused = activation == .geluTanh && precision == .bf16
        try product(m, rows: x.rows, x: Self.pointer(x), y: Self.pointer(y), epilogue: fused ? .geluTanh : .none)
        let count = y.rows * y.cols
        if activation == .geluErf { try ops.geluErf(y.type, out: Self.pointer(y), x: Self.pointer(y), count: count) }
        if activation == .geluTanh && !fused { try ops.geluTanh(y.type, out: Self.pointer(y), x: Self.pointer(y), count: count) }
    }

    public func gatedGELU(gate: DeviceLinear, up: DeviceLinear, _ x: BackendTensor<CUDAComputeBackend>, into y: BackendTensor<CUDAComputeBackend>) throws {
        let u = try tensor(rows: y.rows, cols: y.cols, type: y.type)
        try linear(gate, x, into: y, activation: .none)
        try linear(up, x, into: u, activation: .none)
        try ops.t5GeluMul(y.type, out: Self.pointer(y), gate: Self.pointer(y), up: Self.pointer(u), count: y.rows * y.cols)
    }

    public func layerNorm(_ x: BackendTensor<CUDAComputeBackend>, into y: BackendTensor<CUDAComputeBackend>, weight: DeviceBuffer?,
                          bias: DeviceBuffer?, eps: Float) throws {
        precondition(x.type == .f32 && x.isDense && y.isDense && x.rows == y.rows && x.cols == y.cols)
        try ops.layerNorm(y.type, out: Self.pointer(y), x: Self.pointer(x), weight: weight?.pointer ?? 0, bias: bias?.pointer ?? 0,
                          rows: x.rows, dim: x.cols, eps: eps)
    }

    public func convert(_ x: BackendTensor<CUDAComputeBackend>, into y: BackendTensor<CUDAComputeBackend>) throws {
        precondition(x.type == .f32 && x.isDense && y.isDense && x.rows == y.rows && x.cols == y.cols)
        if y.type == .bf16 {
            try ops.convertToBF16(out: Self.pointer(y), x: Self.pointer(x), count: x.rows * x.cols)
        } else if Self.pointer(x) != Self.pointer(y) {
            try context.copy(onDevice: Self.pointer(y), from: Self.pointer(x), bytes: 4 * x.rows * x.cols)
        }
    }

    public func rmsNorm(_ x: BackendTensor<CUDAComputeBackend>, into y: BackendTensor<CUDAComputeBackend>, weight: DeviceBuffer, eps: Float) throws {
        precondition(x.isDense && y.isDense && x.rows == y.rows && x.cols == y.cols)
        if x.type == y.type {
            try ops.rmsNorm(y.type, out: Self.pointer(y), x: Self.pointer(x), weight: weight.pointer, rows: x.rows, dim: x.cols, eps: eps)
            return
        }
        precondition(x.type == .f32)
        // The norm in f32, then (bf16) rounded to the output type.
        let f = try tensor(rows: y.rows, cols: y.cols, type: .f32)
        try ops.rmsNorm(.f32, out: Self.pointer(f), x: Self.pointer(x), weight: weight.pointer, rows: x.rows, dim: x.cols, eps: eps)
        try ops.convertToBF16(out: Self.pointer(y), x: Self.pointer(f), count: y.rows * y.cols)
    }

    public func addResidual(_ x: BackendTensor<CUDAComputeBackend>, _ delta: BackendTensor<CUDAComputeBackend>,
                            gate: BackendTensor<CUDAComputeBackend>?) throws {
        precondition(x.type == .f32 && x.isDense && delta.isDense && x.rows == delta.rows && x.cols == delta.cols)
        precondition(gate == nil || gate!.type == .f32)
        try ops.gatedResidual(delta.type, x: Self.pointer(x), y: Self.pointer(delta), gate: gate.map(Self.pointer) ?? 0, modStride: 0,
                              rows: x.rows, rowsPerBatch: x.rows, dim: x.cols)
    }

    public func addVector(_ v: DeviceBuffer, _ x: BackendTensor<CUDAComputeBackend>, into y: BackendTensor<CUDAComputeBackend>) throws {
        precondition(x.type == .f32 && y.type == .f32 && x.cols == y.cols && y.isDense && v.bytes >= 4 * y.rows * y.cols)
        // modulation_add: out[r, c] = e[r, c] + modulation[c], with e the vector and modulation x's row.
        try ops.modulationAdd(out: Self.pointer(y), e: v.pointer, modulation: Self.pointer(x), batch: y.rows, n: y.cols)
    }

    public func silu(_ x: BackendTensor<CUDAComputeBackend>, into y: BackendTensor<CUDAComputeBackend>) throws {
        precondition(x.type == .f32 && y.type == .f32 && x.isDense && y.isDense && x.rows * x.cols == y.rows * y.cols)
        try ops.silu(out: Self.pointer(y), x: Self.pointer(x), count: x.rows * x.cols)
    }

    public func write(_ host: Tensor, into y: BackendTensor<CUDAComputeBackend>) throws {
        precondition(y.type == .f32 && y.isDense && host.count == y.rows * y.cols)
        try context.copy(toDevice: Self.pointer(y), from: UnsafeRawPointer(host.data), bytes: 4 * host.count)
    }

    public func modulatedLayerNorm(_ x: BackendTensor<CUDAComputeBackend>, into y: BackendTensor<CUDAComputeBackend>,
                                   shift: BackendTensor<CUDAComputeBackend>, scale: BackendTensor<CUDAComputeBackend>, eps: Float) throws {
        precondition(x.type == .f32 && shift.type == .f32 && scale.type == .f32 && x.isDense && y.isDense && x.rows == y.rows)
        try ops.layerNorm(y.type, out: Self.pointer(y), x: Self.pointer(x), shift: Self.pointer(shift), scale: Self.pointer(scale),
                          modStride: 0, rows: x.rows, dim: x.cols, eps: eps)
    }

    /// The grid of the last rope (3 x int32 on the device), kept while the grid stays.
    private var ropeGrid: (grid: [Int32], storage: Storage)?

    public func rope(_ x: BackendTensor<CUDAComputeBackend>, heads: Int, headDim: Int, grid: (f: Int, h: Int, w: Int)) throws {
        precondition(x.isDense && x.cols == heads * headDim)
        let sizes: [Int32] = [Int32(grid.f), Int32(grid.h), Int32(grid.w)]
        if ropeGrid?.grid != sizes {
            let storage = Storage(try pool.acquire(bytes: 12), pool: pool)
            try sizes.withUnsafeBytes { try context.copy(toDevice: storage.buffer.pointer, from: $0.baseAddress!, bytes: 12) }
            ropeGrid = (sizes, storage)
        }
        try ops.rope(x.type, x: Self.pointer(x), grid: ropeGrid!.storage.buffer.pointer, batch: 1, seqLen: x.rows, heads: heads, headDim: headDim)
    }

    public func fullAttention(q: BackendTensor<CUDAComputeBackend>, k: BackendTensor<CUDAComputeBackend>, v: BackendTensor<CUDAComputeBackend>,
                              out: BackendTensor<CUDAComputeBackend>, keyBias: Tensor?, accumulate: Bool, heads: Int, headDim: Int,
                              scale: Float) throws {
        precondition(keyBias == nil, "the GPU attention takes no key bias (collapsesPaddedText is false)")
        precondition(q.isDense && k.isDense && v.isDense && out.isDense && q.cols == heads * headDim)
        let target = accumulate ? try tensor(rows: out.rows, cols: out.cols, type: out.type) : out
        try ops.attention(out.type, out: Self.pointer(target), q: Self.pointer(q), k: Self.pointer(k), v: Self.pointer(v), lq: q.rows,
                          lk: k.rows, heads: heads, headDim: headDim, scale: scale)
        if accumulate {
            try ops.add(out.type, out: Self.pointer(out), a: Self.pointer(out), b: Self.pointer(target), count: out.rows * out.cols)
        }
    }

    public func attention(q: BackendTensor<CUDAComputeBackend>, k: BackendTensor<CUDAComputeBackend>, v: BackendTensor<CUDAComputeBackend>,
                          out: BackendTensor<CUDAComputeBackend>, segments: Segments, table: DeviceBuffer?, heads: Int, headDim: Int,
                          scale: Float) throws {
        precondition(q.ld == k.ld && k.ld == v.ld && out.isDense && out.cols == heads * headDim && q.rows == segments.rows)
        let bias = table != nil && segments.hasPositions
        if flashSegmentAttention && out.type == .bf16
            && CUDAOps.t5FlashTakes(headDim: headDim, ld: q.ld, maxPos: bias ? segments.maxPos : 0,
                                    pointers: [Self.pointer(q), Self.pointer(k), Self.pointer(v), Self.pointer(out)]) {
            try ops.t5FlashAttention(out: Self.pointer(out), q: Self.pointer(q), k: Self.pointer(k), v: Self.pointer(v), ld: q.ld,
                                     tileRows: segments.tileRows, tiles: segments.tiles, segStart: segments.at(0), segKeys: segments.at(1),
                                     segRows: segments.at(2), positions: bias ? segments.at(3) : 0, bucketOf: bias ? segments.at(4) : 0,
                                     maxPos: segments.maxPos, table: bias ? table!.pointer : 0, heads: heads, headDim: headDim, scale: scale)
            return
        }
        try ops.t5Attention(out.type, out: Self.pointer(out), q: Self.pointer(q), k: Self.pointer(k), v: Self.pointer(v), ld: q.ld,
                            segStart: segments.at(0), segKeys: segments.at(1), segRows: segments.at(2),
                            positions: bias ? segments.at(3) : 0, bucketOf: bias ? segments.at(4) : 0, maxPos: segments.maxPos,
                            table: bias ? table!.pointer : 0, rows: q.rows, heads: heads, headDim: headDim, scale: scale)
    }

    /// Runs `body` with every kernel and product timed alone (each synchronised: slower than a plain run); the
    /// report's lines.
    public func profile(_ body: () throws -> Void) throws -> [String] {
        let timings = CUDATimings()
        ops.timings = timings
        gemm.timings = timings
        defer { ops.timings = nil; gemm.timings = nil }
        try body()
        return timings.report()
    }
}
