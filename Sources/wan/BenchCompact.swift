import Foundation
import WanKit
#if canImport(Glibc)
import Glibc
#endif

/// GEMM rate of the first FFN layer (`blocks.0.ffn.0`, [ffn, dim]) with `m` token rows, on the file's stored weights
/// (dequantised tile by tile) and on a float32 copy of the same weights: the cost of computing on compact weights.
func compactGEMMReport(_ source: WeightSource, config c: WanDiTConfig, m: Int) throws -> [String] {
    let name = "blocks.0.ffn.0"
    let binder = WeightBinder(source)
    let compact = try Linear(binder, name, in: c.dim, out: c.ffnDim)
    let plain = Linear(weight: compact.matrix.dequantized(), bias: compact.bias)
    let x = try RandomWeights(shapes: [("x", [m, c.dim])], seed: 5).float32("x")
    let out = Tensor(uninitialized: [m, c.ffnDim])
    func rate(_ l: Linear) -> Double {
        var best = 0.0
        for _ in 0..<3 {
            let t = now()
            l(x.data, rows: m, into: out.data, epilogue: .geluTanh)
            best = max(best, 2 * Double(m) * Double(c.dim) * Double(c.ffnDim) / (now() - t) / 1e9)
        }
        return best
    }
    let r32 = rate(plain), rc = rate(compact)
    return [String(format: "gemm %@ [%d x %d] x [%d x %d]^T: %@ weights %.1f GFLOP/s, float32 copy %.1f GFLOP/s (%.0f%%)",
                   name, m, c.dim, c.ffnDim, c.dim, compact.matrix.storageDescription, rc, r32, 100 * rc / r32)]
}
