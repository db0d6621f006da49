import WanTensor
import WanWeights

/// `nn.Linear`: weight [out, in] as stored, optional bias [out].
public struct Linear: Sendable {
    public let weight: Tensor
    public let bias: Tensor?
    public var inFeatures: Int { weight.shape[1] }
    public var outFeatures: Int { weight.shape[0] }

    public init(_ binder: WeightBinder, _ prefix: String, in inFeatures: Int, out outFeatures: Int, bias hasBias: Bool = true) throws {
        weight = try binder.tensor(prefix + ".weight", [outFeatures, inFeatures])
        bias = hasBias ? try binder.tensor(prefix + ".bias", [outFeatures]) : nil
    }

    public init(weight: Tensor, bias: Tensor?) { self.weight = weight; self.bias = bias }

    /// out[rows, out] = x[rows, in] · Wᵀ + b, then `epilogue`.
    public func callAsFunction(_ x: UnsafePointer<Float>, rows: Int, into out: UnsafeMutablePointer<Float>, epilogue: Epilogue = .none) {
        GEMM.shared.linear(m: rows, k: inFeatures, n: outFeatures, src: x, weight: weight.data,
                           bias: bias.map { UnsafePointer($0.data) }, dst: out, epilogue: epilogue)
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
