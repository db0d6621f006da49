import Foundation

/// Multi-head scaled dot-product attention, tiled with an online softmax (FlashAttention's recurrence):
/// it never holds more than a [queryTile, keyTile] block of scores, and runs in parallel over heads × query tiles.
/// Score and value products are oneDNN SGEMMs on the tiles; exp is a 16-lane polynomial.
public enum Attention {
    public static var queryTile = 256
    public static var keyTile = 512

    /// For each head h: `out[:, h] = softmax(q[:, h] · k[:, h]ᵀ · scale) · v[:, h]` over keys 0..<keys (later keys
    /// are masked out simply by not being passed). Rows of q/k/v/out are `ld*` floats apart; head h occupies
    /// columns h*headDim ..< (h+1)*headDim. With `accumulate`, the result is added to `out` instead of stored.
    /// `keyBias` (one value per key, may be nil) is added to every score of that key: log(n) there makes one key
    /// count as n identical keys.
    public static func run(q: UnsafePointer<Float>, ldq: Int, queries: Int,
                           k: UnsafePointer<Float>, ldk: Int, v: UnsafePointer<Float>, ldv: Int, keys: Int,
                           heads: Int, headDim d: Int, scale: Float,
                           out: UnsafeMutablePointer<Float>, ldo: Int, accumulate: Bool = false, keyBias: UnsafePointer<Float>? = nil) {
        precondition(keys > 0, "attention over zero keys")
        Profile.measure("attention") {
            runUnprofiled(q: q, ldq: ldq, queries: queries, k: k, ldk: ldk, v: v, ldv: ldv, keys: keys, heads: heads, headDim: d,
                          scale: scale, out: out, ldo: ldo, accumulate: accumulate, keyBias: keyBias)
        }
    }

    static func runUnprofiled(q: UnsafePointer<Float>, ldq: Int, queries: Int,
                              k: UnsafePointer<Float>, ldk: Int, v: UnsafePointer<Float>, ldv: Int, keys: Int,
                              heads: Int, headDim d: Int, scale: Float,
                              out: UnsafeMutablePointer<Float>, ldo: Int, accumulate: Bool, keyBias: UnsafePointer<Float>?) {
        let tq = queryTile, tk = min(keyTile, keys)
        let qTiles = (queries + tq - 1) / tq
        Parallel.forEach(heads * qTiles) { task in
            let h = task % heads, q0 = (task / heads) * tq
            let rows = min(tq, queries - q0)
            let scores = UnsafeMutablePointer<Float>.allocate(capacity: tq * tk)
            let acc = UnsafeMutablePointer<Float>.allocate(capacity: tq * d)
            let runMax = UnsafeMutablePointer<Float>.allocate(capacity: tq)
            let runSum = UnsafeMutablePointer<Float>.allocate(capacity: tq)
            defer { scores.deallocate(); acc.deallocate(); runMax.deallocate(); runSum.deallocate() }
            runMax.initialize(repeating: -.infinity, count: rows)
            runSum.initialize(repeating: 0, count: rows)
            let qh = q + q0 * ldq + h * d
            var k0 = 0
            while k0 < keys {
                let kn = min(tk, keys - k0)
                GEMM.sgemm(transA: false, transB: true, m: rows, n: kn, k: d, alpha: scale,
                           a: qh, lda: ldq, b: k + k0 * ldk + h * d, ldb: ldk, beta: 0, c: scores, ldc: tk)
                for r in 0..<rows {
                    let s = scores + r * tk
                    if let keyBias { for j in 0..<kn { s[j] += keyBias[k0 + j] } }
                    let newMax = max(runMax[r], rowMax(s, kn))
                    let sum = expInPlace(s, kn, minus: newMax)
                    if k0 > 0 {
                        let alpha = Foundation.exp(runMax[r] - newMax)
                        runSum[r] = runSum[r] * alpha + sum
                        scaleInPlace(acc + r * d, d, by: alpha)
                    } else {
                        runSum[r] = sum
                    }
                    runMax[r] = newMax
                }
                GEMM.sgemm(transA: false, transB: false, m: rows, n: d, k: kn, alpha: 1,
                           a: scores, lda: tk, b: v + k0 * ldv + h * d, ldb: ldv, beta: k0 == 0 ? 0 : 1, c: acc, ldc: d)
                k0 += kn
            }
            for r in 0..<rows {
                let inv = 1 / runSum[r]
                let o = out + (q0 + r) * ldo + h * d, a = acc + r * d
                if accumulate {
                    for j in 0..<d { o[j] += a[j] * inv }
                } else {
                    for j in 0..<d { o[j] = a[j] * inv }
                }
            }
        }
    }

}
