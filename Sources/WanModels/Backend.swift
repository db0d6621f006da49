import Foundation
import WanTensor
import WanWeights

/// Element types of backend tensors.
public enum ElementType: String, Sendable, Codable, CaseIterable {
    case f32, bf16
    public var size: Int { self == .f32 ? 4 : 2 }
}

/// A matrix of `rows` x `cols` elements (rows `ld` elements apart) in a backend's memory: the tensor knows its
/// device through its backend type and its storage. A view (`columns`) shares the storage.
public struct BackendTensor<B: ComputeBackend> {
    public let storage: B.Storage
    /// Elements from the start of the storage.
    public let offset: Int
    public let rows: Int, cols: Int, ld: Int
    public let type: ElementType

    public init(storage: B.Storage, offset: Int = 0, rows: Int, cols: Int, ld: Int? = nil, type: ElementType) {
        self.storage = storage; self.offset = offset; self.rows = rows; self.cols = cols; self.ld = ld ?? cols; self.type = type
    }

    /// Columns `c` of every row (the same storage, rows `ld` apart).
    public func columns(_ c: Range<Int>) -> BackendTensor {
        precondition(c.lowerBound >= 0 && c.upperBound <= cols)
        return BackendTensor(storage: storage, offset: offset + c.lowerBound, rows: rows, cols: c.count, ld: ld, type: type)
    }

    /// Rows `r` (the same storage).
    public func rows(_ r: Range<Int>) -> BackendTensor {
        precondition(r.lowerBound >= 0 && r.upperBound <= rows)
        return BackendTensor(storage: storage, offset: offset + r.lowerBound * ld, rows: r.count, cols: cols, ld: ld, type: type)
    }

    /// Whether the rows follow one another (ld == cols).
    public var isDense: Bool { ld == cols }

    /// The same storage from the same byte, read as a dense rows x cols matrix of `type` (one workspace region
    /// serving as buffers of different types at different times).
    public func reinterpreted(rows: Int, cols: Int, type newType: ElementType) -> BackendTensor {
        precondition((offset * type.size) % newType.size == 0)
        return BackendTensor(storage: storage, offset: offset * type.size / newType.size, rows: rows, cols: cols, type: newType)
    }
}

/// What follows a product (after the bias).
public enum LinearActivation: Sendable, Equatable {
    case none
    /// nn.GELU(approximate='tanh')
    case geluTanh
    /// nn.GELU() (erf)
    case geluErf
    /// x · sigmoid(1.702 x) (open_clip's QuickGELU)
    case quickGELU
}

/// The types a product of a model runs in (what a GPU backend uploads the weight as): the activation type in and
/// out (most products), f32 in and out (the DiT's patch embedding, time embedding and head, as the official code
/// runs them under autocast), or the activation type in and f32 out. The CPU computes all of them in f32.
public enum MatrixKind: Sendable {
    case activation, float32, activationToFloat32

    /// The weight's type and the output's (the bias's) type of a product of this kind under `activation`.
    public func types(activation act: ElementType) -> (weight: ElementType, output: ElementType) {
        switch self {
        case .activation: return (act, act)
        case .float32: return (.f32, .f32)
        case .activationToFloat32: return (act, .f32)
        }
    }
}

/// How the rows of a self-attention are grouped: segment s is `rows[s]` consecutive rows (in order) that attend to
/// the segment's first `keys[s]` rows (its real tokens; later rows are queries only), or uniformly to all its rows
/// when `keys[s]` is 0 (torch's softmax over a row of equal `finfo.min` scores). `positions`, one per row, are the
/// token positions a relative-position bias reads (nil: no bias).
public struct AttentionSegments: Sendable, Equatable {
    public var rows: [Int]
    public var keys: [Int]
    public var positions: [Int]?

    public init(rows: [Int], keys: [Int], positions: [Int]? = nil) {
        precondition(rows.count == keys.count)
        self.rows = rows; self.keys = keys; self.positions = positions
    }

    /// `count` segments of `length` rows, every row a key (CLIP's images).
    public static func uniform(count: Int, length: Int) -> AttentionSegments {
        AttentionSegments(rows: [Int](repeating: length, count: count), keys: [Int](repeating: length, count: count))
    }

    public var totalRows: Int { rows.reduce(0, +) }
}

/// The relative-position bias of a T5 attention: `bucketOf[relative + maxPos]` is the bucket of a relative position
/// (key position minus query position, within ±maxPos); a layer's table is [buckets, heads].
public struct RelativeBuckets: Sendable, Equatable {
    public var bucketOf: [Int]
    public var maxPos: Int
    public init(bucketOf: [Int], maxPos: Int) { self.bucketOf = bucketOf; self.maxPos = maxPos }
}

/// The operations the models are written against, once: a backend holds weights in its own form (`Matrix`,
/// `Vector`), hands out tensors in its memory, and runs each operation on them. `CPUBackend` (oneDNN, float32) and
/// the CUDA backend (WanCUDA: cuBLASLt and Kernels/*.cu, bf16 or f32) implement it; `VisionTransformer` and
/// `T5Encoder` are written against it and run on either.
///
/// Conventions: residual streams are f32; `activationType` is the type the products, attention and their inputs and
/// outputs use (f32 on the CPU; bf16 under the official autocast on a GPU, or f32); norms read f32 and write the
/// type of their output tensor; an output may be its input where an operation says so.
public protocol ComputeBackend: AnyObject {
    associatedtype Storage
    /// A `Linear` (weight [out, in] and optional bias) as the backend holds it.
    associatedtype Matrix
    /// A float32 parameter vector (norm weights and biases, relative-position tables).
    associatedtype Vector
    /// `AttentionSegments` (and the relative buckets) as the attention reads them, made once per forward pass.
    associatedtype Segments

    var activationType: ElementType { get }
    /// Whether attention takes a per-key bias, so the DiT keeps the official zero-padded text rows once with
    /// log(count) added to their score (the same softmax); else the text is embedded at its full length.
    var collapsesPaddedText: Bool { get }

    /// Where the models run, for logs: "cpu", "cuda:0 NVIDIA H100 (bf16)".
    var description: String { get }
    /// Why the attention cannot take heads of `headDim` (nil: it can).
    func unsupportedHeadDim(_ headDim: Int) -> String?

    // MARK: weights

    /// A bound `Linear` in the backend's form, its product run as `kind` says.
    func matrix(_ linear: Linear, kind: MatrixKind) throws -> Matrix
    func vector(_ tensor: Tensor) throws -> Vector
    /// Called once a model bound all its weights.
    func weightsLoaded() throws
    /// Called after a layer's matrices were used in a forward pass (the CPU may hand their mapped pages back).
    func layerFinished(_ matrices: [Matrix])

    // MARK: memory

    func tensor(rows: Int, cols: Int, type: ElementType) throws -> BackendTensor<Self>
    /// A float32 host tensor's elements as a rows x cols f32 backend tensor.
    func upload(_ host: Tensor, rows: Int, cols: Int) throws -> BackendTensor<Self>
    /// An f32 backend tensor as a host tensor [rows, cols].
    func download(_ x: BackendTensor<Self>) throws -> Tensor
    func segments(_ s: AttentionSegments, buckets: RelativeBuckets?) throws -> Segments
    /// The large buffers of one DiT forward pass for `tokens` tokens (`runDiTForward`).
    func ditBuffers(config: WanDiTConfig, tokens: Int, grid: (f: Int, h: Int, w: Int), patchLength: Int) throws -> DiTForwardBuffers<Self>
    /// Hands back the memory of forward passes' activations (the weights stay).
    func releaseActivations()

    // MARK: operations

    /// y = activation(x · Wᵀ + b).
    func linear(_ m: Matrix, _ x: BackendTensor<Self>, into y: BackendTensor<Self>, activation: LinearActivation) throws
    /// y = gelu_tanh(x · gateᵀ) * (x · upᵀ): the first half of T5's gated FFN.
    func gatedGELU(gate: Matrix, up: Matrix, _ x: BackendTensor<Self>, into y: BackendTensor<Self>) throws
    /// LayerNorm over each row of f32 `x` (weight and bias optional); y may be x.
    func layerNorm(_ x: BackendTensor<Self>, into y: BackendTensor<Self>, weight: Vector?, bias: Vector?, eps: Float) throws
    /// y = x in y's type (an f32 tensor as the input of products in the activation type).
    func convert(_ x: BackendTensor<Self>, into y: BackendTensor<Self>) throws
    /// RMSNorm (T5LayerNorm, WanRMSNorm: no mean, no bias) of each row of `x`, times `weight`: x f32 (y of any type),
    /// or x of y's type; y may be x.
    func rmsNorm(_ x: BackendTensor<Self>, into y: BackendTensor<Self>, weight: Vector, eps: Float) throws
    /// x (f32) += delta (· gate, a [1, cols] f32 row, when given).
    func addResidual(_ x: BackendTensor<Self>, _ delta: BackendTensor<Self>, gate: BackendTensor<Self>?) throws
    /// y[r, c] = v[r · cols + c] + x[0, c] (f32): a parameter vector of y's size plus one row of x over every row
    /// (a block's modulation + e0, the head's modulation + e).
    func addVector(_ v: Vector, _ x: BackendTensor<Self>, into y: BackendTensor<Self>) throws
    /// y = x · sigmoid(x) (f32); y may be x.
    func silu(_ x: BackendTensor<Self>, into y: BackendTensor<Self>) throws
    /// Host f32 values into a dense f32 tensor of the same size.
    func write(_ host: Tensor, into y: BackendTensor<Self>) throws
    /// LayerNorm without affine of each row of f32 `x`, then · (1 + scale) + shift ([1, cols] f32 rows): adaLN.
    func modulatedLayerNorm(_ x: BackendTensor<Self>, into y: BackendTensor<Self>, shift: BackendTensor<Self>, scale: BackendTensor<Self>,
                            eps: Float) throws
    /// The 3-D rotary embedding in place on [tokens (f, h, w order), heads · headDim] (official `rope_apply`).
    func rope(_ x: BackendTensor<Self>, heads: Int, headDim: Int, grid: (f: Int, h: Int, w: Int)) throws
    /// softmax(scale · q kᵀ (+ keyBias per key)) v over all rows of k, per head; `accumulate` adds to `out`.
    func fullAttention(q: BackendTensor<Self>, k: BackendTensor<Self>, v: BackendTensor<Self>, out: BackendTensor<Self>, keyBias: Tensor?,
                       accumulate: Bool, heads: Int, headDim: Int, scale: Float) throws
    /// Per segment and head: softmax(scale · q kᵀ (+ table[bucket(pos_k - pos_q), head])) v over the segment's keys.
    /// q, k, v, out: [rows, heads · headDim] (q, k, v may be column views of one tensor); `table` [buckets, heads].
    func attention(q: BackendTensor<Self>, k: BackendTensor<Self>, v: BackendTensor<Self>, out: BackendTensor<Self>,
                   segments: Segments, table: Vector?, heads: Int, headDim: Int, scale: Float) throws
}

extension ComputeBackend {
    /// Binds `<prefix>.weight` [out, in] (and `<prefix>.bias` [out] when `bias`) from `binder`, for products in the
    /// activation type.
    public func matrix(_ binder: WeightBinder, _ prefix: String, in inFeatures: Int, out outFeatures: Int, bias: Bool) throws -> Matrix {
        try matrix(try Linear(binder, prefix, in: inFeatures, out: outFeatures, bias: bias), kind: .activation)
    }

    /// x (f32) += delta.
    public func addResidual(_ x: BackendTensor<Self>, _ delta: BackendTensor<Self>) throws { try addResidual(x, delta, gate: nil) }
}

// MARK: - CPU

/// The CPU backend: float32 tensors in host memory, products through oneDNN as the DiT's `Linear` runs them (weights
/// stay as stored in the file mapping; compact ones are converted a tile of rows at a time just before their
/// product, in per-worker scratch), the kernels of WanTensor.
///
/// `products` is the type of the products' and attention's inputs: f32 (the golden tolerances), or bf16 (inputs
/// rounded to bf16 as the official code's autocast rounds them, f32 accumulation and outputs; bf16 weights used in
/// place; norms, modulation, softmax and the residual stream stay f32): about twice the rate on CPUs with AVX512-BF16
/// (`GEMM.nativeBF16`). Matrices of kind `.float32` (the DiT's patch embedding, time embedding and head) always run in
/// f32, as on the GPU.
public final class CPUBackend: ComputeBackend, @unchecked Sendable {
    public typealias Storage = Tensor
    public typealias Vector = Tensor
    public typealias Segments = CPUSegments

    /// A `Linear` and the type its product runs in.
    public struct Matrix {
        public let linear: Linear
        public let type: ProductType
    }

    public struct CPUSegments {
        let segments: AttentionSegments
        let buckets: RelativeBuckets?
    }

    /// After each layer, hand the pages of its weights in the file mapping back to the kernel (they stay in the page
    /// cache; the next pass maps them again): keeps the resident set near one layer instead of the whole file.
    public var releasesMappedPages = false

    public let products: ProductType

    /// bf16 `products` where oneDNN cannot run them on this CPU (`GEMM.supportsBF16` false: AVX2-only CPUs) are f32.
    public init(products: ProductType = .f32) { self.products = GEMM.supportsBF16 ? products : .f32 }

    public var activationType: ElementType { .f32 }
    public var collapsesPaddedText: Bool { true }
    public var description: String { products == .f32 ? "cpu" : "cpu (bf16 products)" }
    public func unsupportedHeadDim(_ headDim: Int) -> String? { nil }

    public func matrix(_ linear: Linear, kind: MatrixKind) throws -> Matrix {
        Matrix(linear: linear, type: kind == .float32 ? .f32 : products)
    }

    /// Rows of the DiT's FFN per chunk: whole up to 4096 tokens (every single-frame 480P/720P case), else 4096.
    public static let ditFFNChunkRows = 4096

    /// Fresh tensors (large ones come back from the buffer pool).
    public func ditBuffers(config c: WanDiTConfig, tokens L: Int, grid: (f: Int, h: Int, w: Int), patchLength: Int) throws -> DiTForwardBuffers<CPUBackend> {
        try Self.ditLayout(config: c, tokens: L, patchLength: patchLength).buffers(grid: grid) { r in
            try tensor(rows: r.rows, cols: r.cols, type: r.type)
        }
    }

    /// The CPU's DiT forward buffers (f32, the FFN in chunks of `ditFFNChunkRows`).
    public static func ditLayout(config c: WanDiTConfig, tokens L: Int, patchLength: Int) -> DiTForwardLayout {
        DiTForwardLayout(config: c, tokens: L, patchLength: patchLength, activation: .f32, ffnChunkRows: ditFFNChunkRows)
    }

    public func releaseActivations() {}

    public func vector(_ tensor: Tensor) throws -> Tensor { tensor }
    public func weightsLoaded() throws {}

    public func layerFinished(_ matrices: [Matrix]) {
        if releasesMappedPages { for m in matrices { m.linear.matrix.releaseMappedPages() } }
    }

    public func tensor(rows: Int, cols: Int, type: ElementType) throws -> BackendTensor<CPUBackend> {
        precondition(type == .f32, "the CPU backend computes in f32")
        return BackendTensor(storage: Tensor(uninitialized: [rows, cols]), rows: rows, cols: cols, type: .f32)
    }

    public func upload(_ host: Tensor, rows: Int, cols: Int) throws -> BackendTensor<CPUBackend> {
        precondition(host.count == rows * cols)
        return BackendTensor(storage: host, rows: rows, cols: cols, type: .f32)
    }

    public func download(_ x: BackendTensor<CPUBackend>) throws -> Tensor {
        if x.offset == 0, x.isDense, x.storage.count == x.rows * x.cols { return x.storage }
        let out = Tensor(uninitialized: [x.rows, x.cols])
        for r in 0..<x.rows { (out.data + r * x.cols).update(from: Self.pointer(x) + r * x.ld, count: x.cols) }
        return out
    }

    public func segments(_ s: AttentionSegments, buckets: RelativeBuckets?) throws -> CPUSegments {
        CPUSegments(segments: s, buckets: buckets)
    }

    static func pointer(_ x: BackendTensor<CPUBackend>) -> UnsafeMutablePointer<Float> { x.storage.data + x.offset }

    /// y = x · Wᵀ (+ b) then `epilogue`, in the matrix's product type (x rounded to bf16 once for bf16, `x16` when
    /// the caller already has it).
    private func product(_ m: Matrix, _ x: BackendTensor<CPUBackend>, _ x16: UnsafePointer<UInt16>?, into y: UnsafeMutablePointer<Float>,
                         epilogue: Epilogue) {
        let l = m.linear, bias = l.bias.map { UnsafePointer($0.data) }
        if m.type == .f32 {
            l(Self.pointer(x), rows: x.rows, into: y, epilogue: epilogue)
        } else if let x16 {
            l.matrix.linearBF16(m: x.rows, src: x16, bias: bias, dst: y, epilogue: epilogue)
        } else {
            let packed = Self.packBF16(x)
            withExtendedLifetime(packed.owner) {
                l.matrix.linearBF16(m: x.rows, src: packed.values, bias: bias, dst: y, epilogue: epilogue)
            }
        }
    }

    /// A dense f32 tensor rounded to a bf16 buffer from the pool.
    static func packBF16(_ x: BackendTensor<CPUBackend>) -> (owner: Tensor, values: UnsafeMutablePointer<UInt16>) {
        let b = BFloat16.buffer(count: x.rows * x.cols)
        BFloat16.pack(rows: x.rows, cols: x.cols, pointer(x), ld: x.ld, into: b.values)
        return b
    }

    public func linear(_ m: Matrix, _ x: BackendTensor<CPUBackend>, into y: BackendTensor<CPUBackend>, activation: LinearActivation) throws {
        precondition(x.isDense && y.isDense && x.cols == m.linear.inFeatures && y.cols == m.linear.outFeatures && x.rows == y.rows)
        let epilogue: Epilogue = activation == .geluErf ? .geluErf : activation == .geluTanh ? .geluTanh : .none
        product(m, x, nil, into: Self.pointer(y), epilogue: epilogue)
        if activation == .quickGELU {
            let p = Self.pointer(y)
            Parallel.forRanges(y.rows * y.cols, grain: 1 << 14) { r in for i in r { p[i] = p[i] / (1 + fastExp(-1.702 * p[i])) } }
        }
    }

    public func gatedGELU(gate: Matrix, up: Matrix, _ x: BackendTensor<CPUBackend>, into y: BackendTensor<CPUBackend>) throws {
        precondition(x.isDense && y.isDense)
        let u = Tensor(uninitialized: [y.rows, y.cols])
        let packed = gate.type == .bf16 || up.type == .bf16 ? Self.packBF16(x) : nil
        withExtendedLifetime(packed?.owner) {
            product(gate, x, packed.map { UnsafePointer($0.values) }, into: Self.pointer(y), epilogue: .geluTanh)
            product(up, x, packed.map { UnsafePointer($0.values) }, into: u.data, epilogue: .none)
        }
        let p = Self.pointer(y), q = u.data
        Parallel.forRanges(y.rows * y.cols, grain: 1 << 14) { r in for i in r { p[i] *= q[i] } }
    }

    public func layerNorm(_ x: BackendTensor<CPUBackend>, into y: BackendTensor<CPUBackend>, weight: Tensor?, bias: Tensor?, eps: Float) throws {
        precondition(x.isDense && y.isDense && x.rows == y.rows && x.cols == y.cols)
        Kernels.layerNorm(Self.pointer(x), rows: x.rows, dim: x.cols, eps: eps, weight: weight.map { UnsafePointer($0.data) },
                          bias: bias.map { UnsafePointer($0.data) }, scale: nil, shift: nil, out: Self.pointer(y))
    }

    public func convert(_ x: BackendTensor<CPUBackend>, into y: BackendTensor<CPUBackend>) throws {
        precondition(x.isDense && y.isDense && x.rows == y.rows && x.cols == y.cols)
        if Self.pointer(x) != Self.pointer(y) { Self.pointer(y).update(from: Self.pointer(x), count: x.rows * x.cols) }
    }

    public func rmsNorm(_ x: BackendTensor<CPUBackend>, into y: BackendTensor<CPUBackend>, weight: Tensor, eps: Float) throws {
        precondition(x.isDense && y.isDense && x.rows == y.rows && x.cols == y.cols)
        let out = Self.pointer(y)
        if out != Self.pointer(x) { out.update(from: Self.pointer(x), count: x.rows * x.cols) }
        Kernels.rmsNorm(out, rows: x.rows, dim: x.cols, eps: eps, weight: weight.data)
    }

    public func addResidual(_ x: BackendTensor<CPUBackend>, _ delta: BackendTensor<CPUBackend>, gate: BackendTensor<CPUBackend>?) throws {
        precondition(x.isDense && delta.isDense && x.rows == delta.rows && x.cols == delta.cols)
        Kernels.addGated(Self.pointer(x), Self.pointer(delta), rows: x.rows, dim: x.cols, gate: gate.map { UnsafePointer(Self.pointer($0)) })
    }

    public func addVector(_ v: Tensor, _ x: BackendTensor<CPUBackend>, into y: BackendTensor<CPUBackend>) throws {
        let n = y.cols, a = v.data, b = Self.pointer(x), out = Self.pointer(y)
        precondition(v.count == y.rows * n && x.cols == n && y.isDense)
        for r in 0..<y.rows { for j in 0..<n { out[r * n + j] = a[r * n + j] + b[j] } }
    }

    public func silu(_ x: BackendTensor<CPUBackend>, into y: BackendTensor<CPUBackend>) throws {
        try convert(x, into: y)
        Kernels.silu(Self.pointer(y), count: y.rows * y.cols)
    }

    public func write(_ host: Tensor, into y: BackendTensor<CPUBackend>) throws {
        precondition(y.isDense && host.count == y.rows * y.cols)
        Self.pointer(y).update(from: host.data, count: host.count)
    }

    public func modulatedLayerNorm(_ x: BackendTensor<CPUBackend>, into y: BackendTensor<CPUBackend>, shift: BackendTensor<CPUBackend>,
                                   scale: BackendTensor<CPUBackend>, eps: Float) throws {
        precondition(x.isDense && y.isDense && x.rows == y.rows && x.cols == y.cols && shift.cols == x.cols && scale.cols == x.cols)
        Kernels.layerNorm(Self.pointer(x), rows: x.rows, dim: x.cols, eps: eps, scale: Self.pointer(scale), shift: Self.pointer(shift),
                          out: Self.pointer(y))
    }

    private var ropes: [Int: Rope3D] = [:]
    private let ropeLock = NSLock()

    public func rope(_ x: BackendTensor<CPUBackend>, heads: Int, headDim: Int, grid: (f: Int, h: Int, w: Int)) throws {
        ropeLock.lock()
        let r = ropes[headDim] ?? Rope3D(headDim: headDim)
        ropes[headDim] = r
        ropeLock.unlock()
        r.apply(Self.pointer(x), ld: x.ld, heads: heads, grid: grid)
    }

    public func fullAttention(q: BackendTensor<CPUBackend>, k: BackendTensor<CPUBackend>, v: BackendTensor<CPUBackend>,
                              out: BackendTensor<CPUBackend>, keyBias: Tensor?, accumulate: Bool, heads: Int, headDim: Int,
                              scale: Float) throws {
        precondition(keyBias == nil || keyBias!.count == k.rows)
        Attention.run(products, q: Self.pointer(q), ldq: q.ld, queries: q.rows, k: Self.pointer(k), ldk: k.ld, v: Self.pointer(v), ldv: v.ld,
                      keys: k.rows, heads: heads, headDim: headDim, scale: scale, out: Self.pointer(out), ldo: out.ld,
                      accumulate: accumulate, keyBias: keyBias.map { UnsafePointer($0.data) })
    }

    public func attention(q: BackendTensor<CPUBackend>, k: BackendTensor<CPUBackend>, v: BackendTensor<CPUBackend>,
                          out: BackendTensor<CPUBackend>, segments: CPUSegments, table: Tensor?, heads: Int, headDim: Int, scale: Float) throws {
        let s = segments.segments
        precondition(q.ld == k.ld && k.ld == v.ld && out.isDense && out.cols == heads * headDim)
        var start = 0
        for (n, keys) in zip(s.rows, s.keys) {
            defer { start += n }
            if n == 0 { continue }
            let qp = Self.pointer(q) + start * q.ld, kp = Self.pointer(k) + start * k.ld, vp = Self.pointer(v) + start * v.ld
            let op = Self.pointer(out) + start * out.ld
            if table == nil, keys > 0 {
                // The tiled online softmax (no scores matrix).
                Attention.run(products, q: qp, ldq: q.ld, queries: n, k: kp, ldk: k.ld, v: vp, ldv: v.ld, keys: keys, heads: heads,
                              headDim: headDim, scale: scale, out: op, ldo: out.ld)
            } else {
                let positions = s.positions.map { Array($0[start..<(start + n)]) } ?? Array(0..<n)
                Self.scoredAttention(q: qp, k: kp, v: vp, ld: q.ld, out: op, ldo: out.ld, rows: n, keys: keys, positions: positions,
                                     heads: heads, headDim: headDim, scale: scale, table: table?.data, buckets: segments.buckets)
            }
        }
    }

    /// Attention of one segment with its whole scores matrix per query tile: scale · q·kᵀ (+ table[bucket(pos_j -
    /// pos_i), head]) over keys [0, keys), softmax, · v. With no key at all every row is a key with equal weight.
    static func scoredAttention(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, ld: Int,
                                out: UnsafeMutablePointer<Float>, ldo: Int, rows: Int, keys keyCount: Int, positions: [Int],
                                heads: Int, headDim hd: Int, scale: Float, table: UnsafePointer<Float>?, buckets: RelativeBuckets?) {
        if rows == 0 { return }
        let uniform = keyCount == 0
        let keys = uniform ? rows : keyCount
        let tile = 64
        let tiles = (rows + tile - 1) / tile
        let bucketOf = buckets?.bucketOf ?? [], bucketOffset = buckets?.maxPos ?? 0
        positions.withUnsafeBufferPointer { pos in
        bucketOf.withUnsafeBufferPointer { bk in
            Parallel.forEach(heads * tiles) { task in
                let hIndex = task % heads, q0 = (task / heads) * tile
                let n = min(tile, rows - q0)
                let scores = UnsafeMutablePointer<Float>.allocate(capacity: n * keys)
                defer { scores.deallocate() }
                if uniform {
                    let inv = 1 / Float(keys)
                    scores.update(repeating: inv, count: n * keys)
                } else {
                    GEMM.sgemm(transA: false, transB: true, m: n, n: keys, k: hd, alpha: scale, a: q + q0 * ld + hIndex * hd, lda: ld,
                               b: k + hIndex * hd, ldb: ld, beta: 0, c: scores, ldc: keys)
                    for i in 0..<n {
                        let s = scores + i * keys
                        if let table {
                            let pi = pos[q0 + i]
                            for j in 0..<keys { s[j] += table[bk[pos[j] - pi + bucketOffset] * heads + hIndex] }
                        }
                        var m = -Float.infinity
                        for j in 0..<keys { m = max(m, s[j]) }
                        var sum: Float = 0
                        for j in 0..<keys { let e = fastExp(s[j] - m); s[j] = e; sum += e }
                        let inv = 1 / sum
                        for j in 0..<keys { s[j] *= inv }
                    }
                }
                GEMM.sgemm(transA: false, transB: false, m: n, n: hd, k: keys, alpha: 1, a: scores, lda: keys,
                           b: v + hIndex * hd, ldb: ld, beta: 0, c: out + q0 * ldo + hIndex * hd, ldc: ldo)
            }
        }
        }
    }
}
