import Foundation

/// Elementwise and row-wise kernels on float32 rows. Each is written once, as plain loops that LLVM vectorises
/// (the package builds with AVX2/FMA enabled), and runs parallel over rows.

/// exp(x - shift) for one float: Cephes-style range reduction to [-ln2/2, ln2/2] and a degree-6 polynomial
/// (relative error ~1e-7). Branch-free, so loops over it vectorise.
@inline(__always) public func fastExp(_ x0: Float) -> Float {
    let x = min(max(x0, -87.0), 88.0)
    let t = x * 1.44269504088896341 + 12582912.0  // adding 1.5*2^23 rounds to the nearest integer
    let n = t - 12582912.0
    var r = x - n * 0.693359375
    r = r + n * 2.12194440e-4
    var p: Float = 1.9875691500e-4
    p = p * r + 1.3981999507e-3
    p = p * r + 8.3334519073e-3
    p = p * r + 4.1665795894e-2
    p = p * r + 1.6666665459e-1
    p = p * r + 5.0000001201e-1
    p = p * (r * r) + r + 1
    return p * Float(bitPattern: (t.bitPattern &- 0x4B40_0000 &+ 127) &<< 23)
}

/// Sum of a row with 8 independent accumulators (vectorisable; float32 like PyTorch's reductions).
@inline(__always) func rowSum(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
    var s0: Float = 0, s1: Float = 0, s2: Float = 0, s3: Float = 0, s4: Float = 0, s5: Float = 0, s6: Float = 0, s7: Float = 0
    var i = 0
    while i + 8 <= n {
        s0 += p[i]; s1 += p[i + 1]; s2 += p[i + 2]; s3 += p[i + 3]
        s4 += p[i + 4]; s5 += p[i + 5]; s6 += p[i + 6]; s7 += p[i + 7]
        i += 8
    }
    var s = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    while i < n { s += p[i]; i += 1 }
    return s
}

/// Sum of (p[i] - c)² with 8 independent accumulators.
@inline(__always) func rowSquares(_ p: UnsafePointer<Float>, _ n: Int, minus c: Float) -> Float {
    var s0: Float = 0, s1: Float = 0, s2: Float = 0, s3: Float = 0, s4: Float = 0, s5: Float = 0, s6: Float = 0, s7: Float = 0
    var i = 0
    while i + 8 <= n {
        let d0 = p[i] - c, d1 = p[i + 1] - c, d2 = p[i + 2] - c, d3 = p[i + 3] - c
        let d4 = p[i + 4] - c, d5 = p[i + 5] - c, d6 = p[i + 6] - c, d7 = p[i + 7] - c
        s0 += d0 * d0; s1 += d1 * d1; s2 += d2 * d2; s3 += d3 * d3
        s4 += d4 * d4; s5 += d5 * d5; s6 += d6 * d6; s7 += d7 * d7
        i += 8
    }
    var s = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    while i < n { let d = p[i] - c; s += d * d; i += 1 }
    return s
}

/// Maximum of a row with 8 independent accumulators.
@inline(__always) func rowMax(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
    var m0 = -Float.infinity, m1 = m0, m2 = m0, m3 = m0, m4 = m0, m5 = m0, m6 = m0, m7 = m0
    var i = 0
    while i + 8 <= n {
        m0 = max(m0, p[i]); m1 = max(m1, p[i + 1]); m2 = max(m2, p[i + 2]); m3 = max(m3, p[i + 3])
        m4 = max(m4, p[i + 4]); m5 = max(m5, p[i + 5]); m6 = max(m6, p[i + 6]); m7 = max(m7, p[i + 7])
        i += 8
    }
    var m = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
    while i < n { m = max(m, p[i]); i += 1 }
    return m
}

/// p[i] = exp(p[i] - shift) in place; returns the sum.
@inline(__always) func expInPlace(_ p: UnsafeMutablePointer<Float>, _ n: Int, minus shift: Float) -> Float {
    for i in 0..<n { p[i] = fastExp(p[i] - shift) }
    return rowSum(p, n)
}

/// p[i] = exp(scale · p[i] - shift), out[i] = bf16(p[i]); returns the sum of the unrounded exponentials. (Three plain
/// loops: each vectorises, where one fused loop did not.)
@inline(__always) func expToBF16(_ p: UnsafeMutablePointer<Float>, _ n: Int, scale: Float, minus shift: Float,
                                 into out: UnsafeMutablePointer<UInt16>) -> Float {
    for i in 0..<n { p[i] = fastExp(p[i] * scale - shift) }
    for i in 0..<n { out[i] = BFloat16.from(p[i]) }
    return rowSum(p, n)
}

/// p[i] *= k.
@inline(__always) func scaleInPlace(_ p: UnsafeMutablePointer<Float>, _ n: Int, by k: Float) {
    for i in 0..<n { p[i] *= k }
}

public enum Kernels {
    /// LayerNorm over the last dim of `x` [rows, dim] into `out`, optionally `* (1 + scale) + shift` (the DiT
    /// modulation) and/or the affine `* weight + bias`. Statistics in float64 for robustness (PyTorch uses float32
    /// Welford; the difference is far below the tolerances).
    public static func layerNorm(_ x: UnsafePointer<Float>, rows: Int, dim: Int, eps: Float,
                                 weight: UnsafePointer<Float>? = nil, bias: UnsafePointer<Float>? = nil,
                                 scale: UnsafePointer<Float>? = nil, shift: UnsafePointer<Float>? = nil,
                                 out: UnsafeMutablePointer<Float>) {
        Profile.measure("layernorm") {
        Parallel.forRanges(rows, grain: 8) { range in
            for r in range {
                let src = x + r * dim, dst = out + r * dim
                let mean = rowSum(src, dim) / Float(dim)
                let rstd = 1 / (rowSquares(src, dim, minus: mean) / Float(dim) + eps).squareRoot()
                for j in 0..<dim { dst[j] = (src[j] - mean) * rstd }
                if let weight { for j in 0..<dim { dst[j] *= weight[j] } }
                if let bias { for j in 0..<dim { dst[j] += bias[j] } }
                if let scale { for j in 0..<dim { dst[j] *= 1 + scale[j] } }
                if let shift { for j in 0..<dim { dst[j] += shift[j] } }
            }
        }
        }
    }

    /// RMS norm over the last dim (WanRMSNorm / T5LayerNorm): `x * rsqrt(mean(x²) + eps) * weight`, in place.
    public static func rmsNorm(_ x: UnsafeMutablePointer<Float>, rows: Int, dim: Int, eps: Float, weight: UnsafePointer<Float>) {
        Profile.measure("rmsnorm") {
        Parallel.forRanges(rows, grain: 8) { range in
            for r in range {
                let p = x + r * dim
                let s = rowSquares(p, dim, minus: 0)
                let k = 1 / (s / Float(dim) + eps).squareRoot()
                for j in 0..<dim { p[j] = (p[j] * k) * weight[j] }
            }
        }
        }
    }

    /// `x[r, :] += y[r, :] * gate[:]` (gated residual of the DiT blocks); gate nil means plain addition.
    public static func addGated(_ x: UnsafeMutablePointer<Float>, _ y: UnsafePointer<Float>, rows: Int, dim: Int, gate: UnsafePointer<Float>?) {
        Profile.measure("residual") {
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
    }

    /// GELU, tanh approximation, in place: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) = x / (1 + exp(-2u)).
    public static func geluTanh(_ x: UnsafeMutablePointer<Float>, count: Int) {
        Profile.measure("gelu") {
            Parallel.forRanges(count, grain: 1 << 14) { range in
                let p = x + range.lowerBound
                for i in 0..<range.count {
                    let v = p[i]
                    let u = 0.7978845608028654 * (v + 0.044715 * v * v * v)
                    p[i] = v / (1 + fastExp(-2 * u))
                }
            }
        }
    }

    /// SiLU, in place (small vectors only: the time embedding).
    public static func silu(_ x: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { x[i] = x[i] / (1 + Foundation.exp(-x[i])) }
    }
}
