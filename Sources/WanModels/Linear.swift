import WanTensor
import WanWeights

/// The weight matrix [out, in] of a `Linear`, in one of two forms behind one interface:
/// - float32 in memory (a view into the mapping when the file stores aligned float32, or an owned tensor): the GEMM
///   reads it in place;
/// - compact, as stored in the mapping (f16, bf16, fp8 e4m3fn/e5m2 with an optional scale, ggml blocks Q4_0…Q8_0 and
///   K-quants, unaligned f32): the GEMM dequantises tiles of output rows into a per-worker scratch just before using
///   them (`GEMM.linear(m:k:n:src:weightRows:…)`), so resident memory stays near the file's size.
public struct LinearWeight: @unchecked Sendable {
    /// float32 weights used in place, nil for compact ones.
    public let float32: Tensor?
    /// The stored tensor of compact weights, nil for float32 ones.
    public let stored: StoredTensor?
    public let rows: Int
    public let cols: Int
    /// The tensor as bound from the file (also for float32 weights used in place), for `releaseMappedPages`.
    let source: StoredTensor?

    /// float32 weights [rows, cols…] (the trailing dims are flattened).
    public init(_ tensor: Tensor) {
        float32 = tensor; stored = nil; source = nil
        rows = tensor.shape.first ?? 1
        cols = tensor.shape.first == nil ? 1 : tensor.shape.dropFirst().reduce(1, *)
    }

    /// Weights as stored: aligned float32 without a scale becomes a view (zero-copy), anything else stays compact.
    public init(_ s: StoredTensor) {
        source = s
        rows = s.shape.first ?? 1
        cols = s.shape.first == nil ? 1 : s.shape.dropFirst().reduce(1, *)
        if (s.type == .dtype(.f32) || s.type == .ggml(.f32)), s.scale == nil, Int(bitPattern: s.data) % 4 == 0, s.owner != nil {
            float32 = s.float32(); stored = nil
        } else {
            float32 = nil; stored = s
        }
    }

    /// Hands the weights' pages in the file mapping back to the kernel (read again from the page cache on the next
    /// use): keeps a layer-by-layer encoder's resident set near one layer.
    public func releaseMappedPages() { source?.releaseMappedPages() }

    /// Whether the weights stay compact (dequantised tile by tile).
    public var isCompact: Bool { stored != nil }
    /// How the weights are held: "F32" for float32 in memory, else the stored type.
    public var storageDescription: String {
        guard let s = stored else { return "F32" }
        return s.type.description + (s.scale != nil ? " (scaled)" : "")
    }
    /// Bytes the weights occupy (in the mapping for compact ones).
    public var byteCount: Int { stored?.byteCount ?? rows * cols * 4 }

    /// Rows `r` as float32 into `dst` (`r.count * cols` values).
    public func dequantizeRows(_ r: Range<Int>, into dst: UnsafeMutablePointer<Float>) {
        if let f = float32 { dst.update(from: f.data + r.lowerBound * cols, count: r.count * cols); return }
        stored!.dequantize(elements: r.lowerBound * cols ..< r.upperBound * cols, into: dst)
    }

    /// The whole matrix as float32 in its bound shape: the tensor itself for float32 weights, a full copy for
    /// compact ones.
    public func dequantized() -> Tensor {
        if let f = float32 { return f }
        return stored!.float32()
    }

    /// `dst[m, rows] = src[m, cols] · Wᵀ (+ bias)`, then the epilogue. `dst` rows are `ldDst` apart (default rows).
    public func linear(m: Int, src: UnsafePointer<Float>, bias: UnsafePointer<Float>?, dst: UnsafeMutablePointer<Float>,
                       ldDst: Int? = nil, epilogue: Epilogue = .none) {
        if let f = float32 {
            GEMM.shared.linear(m: m, k: cols, n: rows, src: src, weight: f.data, bias: bias, dst: dst, ldDst: ldDst, epilogue: epilogue)
        } else {
            let s = stored!, k = cols
            GEMM.shared.linear(m: m, k: k, n: rows, src: src, weightRows: { r, out in
                s.dequantize(elements: r.lowerBound * k ..< r.upperBound * k, into: out)
            }, bias: bias, dst: dst, ldDst: ldDst, epilogue: epilogue)
        }
    }
}

extension LinearWeight {
    /// bfloat16 weights usable in place (stored bf16, 2-byte aligned, no scale), else nil.
    var storedBF16: UnsafePointer<UInt16>? {
        guard let s = stored, s.type == .dtype(.bf16), s.scale == nil, Int(bitPattern: s.data) % 2 == 0 else { return nil }
        return s.data.assumingMemoryBound(to: UInt16.self)
    }

    /// `dst[m, rows] = src[m, cols] · Wᵀ (+ bias)`, then the epilogue, with bfloat16 inputs (`src` already rounded to
    /// bf16; W used in place when stored as bf16, else rounded to bf16 a tile of rows at a time), float32 accumulation
    /// and output.
    public func linearBF16(m: Int, src: UnsafePointer<UInt16>, bias: UnsafePointer<Float>?, dst: UnsafeMutablePointer<Float>,
                           ldDst: Int? = nil, epilogue: Epilogue = .none) {
        let k = cols
        if let w = storedBF16 {
            GEMM.shared.linearBF16(m: m, k: k, n: rows, src: src, weight: w, bias: bias, dst: dst, ldDst: ldDst, epilogue: epilogue)
        } else if let f = float32 {
            GEMM.shared.linearBF16(m: m, k: k, n: rows, src: src, weightRows: { r, out in
                BFloat16.pack(f.data + r.lowerBound * k, into: out, count: r.count * k)
            }, bias: bias, dst: dst, ldDst: ldDst, epilogue: epilogue)
        } else {
            let s = stored!
            GEMM.shared.linearBF16(m: m, k: k, n: rows, src: src, weightRows: { r, out in
                let tile = Tensor(uninitialized: [r.count * k])
                s.dequantize(elements: r.lowerBound * k ..< r.upperBound * k, into: tile.data)
                BFloat16.pack(tile.data, into: out, count: r.count * k)
            }, bias: bias, dst: dst, ldDst: ldDst, epilogue: epilogue)
        }
    }
}

/// `nn.Linear`: weight [out, in] as stored, optional bias [out]. Bound from a source, the weight stays in the
/// mapping in its stored type (see `LinearWeight`); biases are float32.
public struct Linear: Sendable {
    public let matrix: LinearWeight
    public let bias: Tensor?
    public var inFeatures: Int { matrix.cols }
    public var outFeatures: Int { matrix.rows }
    /// The weight as float32 [out, in]: the tensor itself when held as float32, a full dequantised copy otherwise
    /// (for small matrices and tests; the products never need it).
    public var weight: Tensor { matrix.dequantized() }

    /// Binds `<prefix>.weight` [out, in] (kept as stored) and `<prefix>.bias` [out] (float32).
    public init(_ binder: WeightBinder, _ prefix: String, in inFeatures: Int, out outFeatures: Int, bias hasBias: Bool = true) throws {
        matrix = LinearWeight(try binder.stored(prefix + ".weight", [outFeatures, inFeatures]))
        bias = hasBias ? try binder.tensor(prefix + ".bias", [outFeatures]) : nil
    }

    public init(weight: Tensor, bias: Tensor?) { matrix = LinearWeight(weight); self.bias = bias }

    public init(_ matrix: LinearWeight, bias: Tensor?) { self.matrix = matrix; self.bias = bias }

    /// out[rows, out] = x[rows, in] · Wᵀ + b, then `epilogue`.
    public func callAsFunction(_ x: UnsafePointer<Float>, rows: Int, into out: UnsafeMutablePointer<Float>, epilogue: Epilogue = .none) {
        matrix.linear(m: rows, src: x, bias: bias.map { UnsafePointer($0.data) }, dst: out, epilogue: epilogue)
    }

    /// Convenience: a new [rows, out] tensor.
    public func callAsFunction(_ x: Tensor, epilogue: Epilogue = .none) -> Tensor {
        let rows = x.count / inFeatures
        let out = Tensor(uninitialized: [rows, outFeatures])
        self(x.data, rows: rows, into: out.data, epilogue: epilogue)
        return out
    }
}

/// LayerNorm parameters (affine weight and bias) with its epsilon.
public struct LayerNormParams: Sendable {
    public let weight: Tensor?
    public let bias: Tensor?
    public let eps: Float
    public let dim: Int

    public init(_ binder: WeightBinder, _ prefix: String, dim: Int, eps: Float) throws {
        weight = try binder.tensor(prefix + ".weight", [dim])
        bias = try binder.tensor(prefix + ".bias", [dim])
        self.eps = eps
        self.dim = dim
    }

    public init(dim: Int, eps: Float) { weight = nil; bias = nil; self.eps = eps; self.dim = dim }

    public func callAsFunction(_ x: UnsafePointer<Float>, rows: Int, into out: UnsafeMutablePointer<Float>,
                               scale: UnsafePointer<Float>? = nil, shift: UnsafePointer<Float>? = nil) {
        Kernels.layerNorm(x, rows: rows, dim: dim, eps: eps, weight: weight.map { UnsafePointer($0.data) },
                          bias: bias.map { UnsafePointer($0.data) }, scale: scale, shift: shift, out: out)
    }
}
