import Foundation

/// Rotary position embedding over a 3-D (frame, height, width) patch grid, as Wan's `rope_params`/`rope_apply`:
/// head_dim d is split into d - 4*(d/6) frame dims and 2*(d/6) height and width dims; pairs of consecutive
/// channels are rotated as complex numbers by pos / 10000^(2i/axisDim). Angles and the rotation run in float64.
public struct Rope3D: Sendable {
    public let headDim: Int
    public let theta: Double
    public init(headDim: Int, theta: Double = 10000) {
        precondition(headDim % 2 == 0, "RoPE needs an even head dim, got \(headDim)")
        self.headDim = headDim
        self.theta = theta
    }

    /// Number of complex pairs given to each axis.
    public var axisPairs: (frame: Int, height: Int, width: Int) {
        let c = headDim / 2
        return (c - 2 * (c / 3), c / 3, c / 3)
    }

    /// Per-axis inverse frequencies (float64), `1 / theta^(2i/axisDim)`.
    func inverseFrequencies(pairs: Int) -> [Double] {
        let axisDim = Double(2 * pairs)
        return (0..<pairs).map { 1.0 / Foundation.pow(theta, Double(2 * $0) / axisDim) }
    }

    /// Rotates `x` [grid tokens, heads * headDim] (rows `ld` apart) in place; tokens are ordered (f, h, w).
    public func apply(_ x: UnsafeMutablePointer<Float>, ld: Int, heads: Int, grid: (f: Int, h: Int, w: Int)) {
        Profile.measure("rope") { applyUnprofiled(x, ld: ld, heads: heads, grid: grid) }
    }

    func applyUnprofiled(_ x: UnsafeMutablePointer<Float>, ld: Int, heads: Int, grid: (f: Int, h: Int, w: Int)) {
        let (pf, ph, pw) = axisPairs
        let invF = inverseFrequencies(pairs: pf), invH = inverseFrequencies(pairs: ph), invW = inverseFrequencies(pairs: pw)
        let half = headDim / 2
        // Precompute cos/sin per axis position (float64).
        func table(_ n: Int, _ inv: [Double]) -> (cos: [Double], sin: [Double]) {
            var c = [Double](repeating: 0, count: n * inv.count), s = c
            for p in 0..<n { for i in 0..<inv.count { let a = Double(p) * inv[i]; c[p * inv.count + i] = Foundation.cos(a); s[p * inv.count + i] = Foundation.sin(a) } }
            return (c, s)
        }
        let tf = table(grid.f, invF), th = table(grid.h, invH), tw = table(grid.w, invW)
        let tokens = grid.f * grid.h * grid.w
        Parallel.forRanges(tokens, grain: 16) { range in
            var cosRow = [Double](repeating: 0, count: half), sinRow = cosRow
            for t in range {
                let fi = t / (grid.h * grid.w), hi = (t / grid.w) % grid.h, wi = t % grid.w
                for i in 0..<pf { cosRow[i] = tf.cos[fi * pf + i]; sinRow[i] = tf.sin[fi * pf + i] }
                for i in 0..<ph { cosRow[pf + i] = th.cos[hi * ph + i]; sinRow[pf + i] = th.sin[hi * ph + i] }
                for i in 0..<pw { cosRow[pf + ph + i] = tw.cos[wi * pw + i]; sinRow[pf + ph + i] = tw.sin[wi * pw + i] }
                let row = x + t * ld
                for h in 0..<heads {
                    let p = row + h * headDim
                    for i in 0..<half {
                        let re = Double(p[2 * i]), im = Double(p[2 * i + 1])
                        p[2 * i] = Float(re * cosRow[i] - im * sinRow[i])
                        p[2 * i + 1] = Float(re * sinRow[i] + im * cosRow[i])
                    }
                }
            }
        }
    }
}
