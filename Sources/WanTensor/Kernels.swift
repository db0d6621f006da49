import Foundation

/// Elementwise and row-wise kernels on float32 rows. Each is written once and parallel over rows.
public typealias Vec = SIMD16<Float>
let vecWidth = 16

@inline(__always) func load(_ p: UnsafePointer<Float>) -> Vec { UnsafeRawPointer(p).loadUnaligned(as: Vec.self) }
@inline(__always) func store(_ v: Vec, _ p: UnsafeMutablePointer<Float>) { UnsafeMutableRawPointer(p).storeBytes(of: v, as: Vec.self) }

/// exp on 16 lanes: Cephes-style range reduction to [-ln2/2, ln2/2] and a degree-6 polynomial (rel. error ~1e-7).
@inline(__always) public func vexp(_ x: Vec) -> Vec {
    let x = x.clamped(lowerBound: Vec(repeating: -87.0), upperBound: Vec(repeating: 88.0))
    let shifter = Vec(repeating: 12582912.0)  // 1.5 * 2^23: adding it rounds to the nearest integer
    let t = x * 1.44269504088896341 + shifter
    let n = t - shifter
    var r = x - n * 0.693359375
    r = r + n * 2.12194440e-4
    var p = Vec(repeating: 1.9875691500e-4)
    p = p * r + 1.3981999507e-3
    p = p * r + 8.3334519073e-3
    p = p * r + 4.1665795894e-2
    p = p * r + 1.6666665459e-1
    p = p * r + 5.0000001201e-1
    p = p * (r * r) + r + 1
    let bits = SIMD16<UInt32>(truncatingIfNeeded: t.bitPattern(as: UInt32.self)) &- 0x4B40_0000 &+ 127
    return p * Vec(bitPattern: bits &<< 23)
}

extension SIMD16 where Scalar == Float {
    @inline(__always) func bitPattern(as: UInt32.Type) -> SIMD16<UInt32> { unsafeBitCast(self, to: SIMD16<UInt32>.self) }
    @inline(__always) init(bitPattern b: SIMD16<UInt32>) { self = unsafeBitCast(b, to: SIMD16<Float>.self) }
}

/// Sum and sum of squares of a row, accumulated in SIMD lanes (float32, as PyTorch's vectorised reductions do).
@inline(__always) func rowSum(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
    var acc = Vec(repeating: 0)
    var i = 0
    while i + vecWidth <= n { acc += load(p + i); i += vecWidth }
    var s = acc.sum()
    while i < n { s += p[i]; i += 1 }
    return s
}

public enum Kernels {
    /// LayerNorm over the last dim of `x` [rows, dim] into `out`, optionally `* (1 + scale) + shift` (the DiT
    /// modulation) and/or the affine `* weight + bias`. Statistics in float64 for robustness (PyTorch uses float32
    /// Welford; the difference is far below the tolerances).
    public static func layerNorm(_ x: UnsafePointer<Float>, rows: Int, dim: Int, eps: Float,
                                 weight: UnsafePointer<Float>? = nil, bias: UnsafePointer<Float>? = nil,
                                 scale: UnsafePointer<Float>? = nil, shift: UnsafePointer<Float>? = nil,
                                 out: UnsafeMutablePointer<Float>) {
        Parallel.forRanges(rows, grain: 8) { range in
            for r in range {
                let src = x + r * dim, dst = out + r * dim
                let mean = rowSum(src, dim) / Float(dim)
                var acc = Vec(repeating: 0)
                let mv = Vec(repeating: mean)
                var i = 0
                while i + vecWidth <= dim { let d = load(src + i) - mv; acc += d * d; i += vecWidth }
                var v = acc.sum()
                while i < dim { let d = src[i] - mean; v += d * d; i += 1 }
                let rstd = 1 / (v / Float(dim) + eps).squareRoot()
                for j in 0..<dim {
                    var y = (src[j] - mean) * rstd
                    if let weight { y = y * weight[j] }
                    if let bias { y = y + bias[j] }
                    if let scale { y = y * (1 + scale[j]) }
                    if let shift { y = y + shift[j] }
                    dst[j] = y
                }
            }
        }
    }

    /// RMS norm over the last dim (WanRMSNorm / T5LayerNorm): `x * rsqrt(mean(x²) + eps) * weight`, in place.
    public static func rmsNorm(_ x: UnsafeMutablePointer<Float>, rows: Int, dim: Int, eps: Float, weight: UnsafePointer<Float>) {
        Parallel.forRanges(rows, grain: 8) { range in
            for r in range {
                let p = x + r * dim
                var acc = Vec(repeating: 0)
                var i = 0
                while i + vecWidth <= dim { let v = load(p + i); acc += v * v; i += vecWidth }
                var s = acc.sum()
                while i < dim { s += p[i] * p[i]; i += 1 }
                let k = 1 / (s / Float(dim) + eps).squareRoot()
                for j in 0..<dim { p[j] = (p[j] * k) * weight[j] }
            }
        }
    }

    /// `x[r, :] += y[r, :] * gate[:]` (gated residual of the DiT blocks); gate nil means plain addition.
    public static func addGated(_ x: UnsafeMutablePointer<Float>, _ y: UnsafePointer<Float>, rows: Int, dim: Int, gate: UnsafePointer<Float>?) {
        Parallel.forRanges(rows, grain: 16) { range in
            for r in range {
                let xp = x + r * dim, yp = y + r * dim
                if let gate {
                    for j in 0..<dim { xp[j] += yp[j] * gate[j] }
                } else {
                    for j in 0..<dim { xp[j] += yp[j] }
                }
            }
        }
    }

    /// SiLU, in place (small vectors only: the time embedding).
    public static func silu(_ x: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { x[i] = x[i] / (1 + Foundation.exp(-x[i])) }
    }
}
