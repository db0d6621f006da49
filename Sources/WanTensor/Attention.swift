import CWanCPU
import Foundation

/// Multi-head scaled dot-product attention, tiled with an online softmax (FlashAttention's recurrence):
/// it never holds more than a [queryTile, keyTile] block of scores, and runs in parallel over heads × query tiles.
/// Score and value products are oneDNN SGEMMs on the tiles; exp is a 16-lane polynomial.
public enum Attention {
    public static var queryTile = 256
    public static var keyTile = 512
    /// Whether the bf16 attention's softmax runs the AVX-512 kernel (`wk_softmax_tile_bf16`), else the Swift loops.
    public static var avx512BF16 = wk_has_avx512_bf16() != 0

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
        tiled(queries: queries, keys: keys, heads: heads, headDim: d, out: out, ldo: ldo, accumulate: accumulate) { h, q0, rows, k0, kn, t in
            GEMM.sgemm(transA: false, transB: true, m: rows, n: kn, k: d, alpha: scale,
                       a: q + q0 * ldq + h * d, lda: ldq, b: k + k0 * ldk + h * d, ldb: ldk, beta: 0, c: t.scores, ldc: t.ld)
            for r in 0..<rows {
                let s = t.scores + r * t.ld
                if let keyBias { for j in 0..<kn { s[j] += keyBias[k0 + j] } }
                let newMax = max(t.runMax[r], rowMax(s, kn))
                let sum = expInPlace(s, kn, minus: newMax)
                t.update(row: r, k0: k0, newMax: newMax, sum: sum)
            }
            GEMM.sgemm(transA: false, transB: false, m: rows, n: d, k: kn, alpha: 1,
                       a: t.scores, lda: t.ld, b: v + k0 * ldv + h * d, ldb: ldv, beta: k0 == 0 ? 0 : 1, c: t.acc, ldc: d)
        }
    }

    /// One task's scratch of the tiled attention: scores [rows, ld], the running max and sum per row, the output
    /// accumulator [rows, headDim] (and, for bf16, the probabilities [rows, ld] and each row's rescale factor).
    struct Tile {
        let scores: UnsafeMutablePointer<Float>, acc: UnsafeMutablePointer<Float>
        let runMax: UnsafeMutablePointer<Float>, runSum: UnsafeMutablePointer<Float>, alpha: UnsafeMutablePointer<Float>
        let probs: UnsafeMutablePointer<UInt16>
        let ld: Int, d: Int

        /// The online softmax's bookkeeping for row r after a key tile whose maximum brought the row's to `newMax`
        /// and whose exponentials sum to `sum`: the earlier sum and accumulator are rescaled.
        @inline(__always) func update(row r: Int, k0: Int, newMax: Float, sum: Float) {
            if k0 > 0 {
                let a = Foundation.exp(runMax[r] - newMax)
                runSum[r] = runSum[r] * a + sum
                scaleInPlace(acc + r * d, d, by: a)
            } else {
                runSum[r] = sum
            }
            runMax[r] = newMax
        }
    }

    /// The skeleton of both attentions: tasks over heads × query tiles on the pool, each with its `Tile`; `step` runs
    /// one key tile (scores, softmax bookkeeping, values into `acc`); the rows are then normalised into `out`.
    private static func tiled(queries: Int, keys: Int, heads: Int, headDim d: Int, out: UnsafeMutablePointer<Float>, ldo: Int,
                              accumulate: Bool,
                              step: (_ head: Int, _ q0: Int, _ rows: Int, _ k0: Int, _ kn: Int, _ tile: Tile) -> Void) {
        let tq = queryTile, tk = min(keyTile, keys)
        let qTiles = (queries + tq - 1) / tq
        Parallel.forEach(heads * qTiles) { task in
            let h = task % heads, q0 = (task / heads) * tq
            let rows = min(tq, queries - q0)
            let t = Tile(scores: .allocate(capacity: tq * tk), acc: .allocate(capacity: tq * d), runMax: .allocate(capacity: tq),
                         runSum: .allocate(capacity: tq), alpha: .allocate(capacity: tq), probs: .allocate(capacity: tq * tk), ld: tk, d: d)
            defer {
                t.scores.deallocate(); t.acc.deallocate(); t.runMax.deallocate(); t.runSum.deallocate(); t.alpha.deallocate()
                t.probs.deallocate()
            }
            t.runMax.initialize(repeating: -.infinity, count: rows)
            t.runSum.initialize(repeating: 0, count: rows)
            var k0 = 0
            while k0 < keys {
                let kn = min(tk, keys - k0)
                step(h, q0, rows, k0, kn, t)
                k0 += kn
            }
            for r in 0..<rows {
                let inv = 1 / t.runSum[r]
                let o = out + (q0 + r) * ldo + h * d, a = t.acc + r * d
                if accumulate {
                    for j in 0..<d { o[j] += a[j] * inv }
                } else {
                    for j in 0..<d { o[j] = a[j] * inv }
                }
            }
        }
    }

    /// `run` with the products' inputs in `type`: for bf16, q, k and v (heads · headDim columns of their rows) are
    /// rounded to dense bf16 copies first, then `runBF16`.
    public static func run(_ type: ProductType, q: UnsafePointer<Float>, ldq: Int, queries: Int,
                           k: UnsafePointer<Float>, ldk: Int, v: UnsafePointer<Float>, ldv: Int, keys: Int,
                           heads: Int, headDim d: Int, scale: Float,
                           out: UnsafeMutablePointer<Float>, ldo: Int, accumulate: Bool = false, keyBias: UnsafePointer<Float>? = nil) {
        if type == .f32 {
            run(q: q, ldq: ldq, queries: queries, k: k, ldk: ldk, v: v, ldv: ldv, keys: keys, heads: heads, headDim: d, scale: scale,
                out: out, ldo: ldo, accumulate: accumulate, keyBias: keyBias)
            return
        }
        let width = heads * d
        let qb = BFloat16.buffer(count: queries * width), kb = BFloat16.buffer(count: keys * width), vb = BFloat16.buffer(count: keys * width)
        withExtendedLifetime((qb.owner, kb.owner, vb.owner)) {
            BFloat16.pack(rows: queries, cols: width, q, ld: ldq, into: qb.values)
            BFloat16.pack(rows: keys, cols: width, k, ld: ldk, into: kb.values)
            BFloat16.pack(rows: keys, cols: width, v, ld: ldv, into: vb.values)
            runBF16(q: qb.values, ldq: width, queries: queries, k: kb.values, ldk: width, v: vb.values, ldv: width, keys: keys,
                    heads: heads, headDim: d, scale: scale, out: out, ldo: ldo, accumulate: accumulate, keyBias: keyBias)
        }
    }

    /// The same attention on bfloat16 q, k, v (raw bf16 bits, rows `ld*` apart): the score and value products on
    /// oneDNN's bf16 kernels with f32 accumulation, the scale, key bias and online softmax in f32, the probabilities
    /// rounded to bf16 for the value product (as FlashAttention computes under bf16). Output f32.
    public static func runBF16(q: UnsafePointer<UInt16>, ldq: Int, queries: Int,
                               k: UnsafePointer<UInt16>, ldk: Int, v: UnsafePointer<UInt16>, ldv: Int, keys: Int,
                               heads: Int, headDim d: Int, scale: Float,
                               out: UnsafeMutablePointer<Float>, ldo: Int, accumulate: Bool = false, keyBias: UnsafePointer<Float>? = nil) {
        precondition(keys > 0, "attention over zero keys")
        Profile.measure("attention") {
            let gemm = GEMM.shared
            tiled(queries: queries, keys: keys, heads: heads, headDim: d, out: out, ldo: ldo, accumulate: accumulate) { h, q0, rows, k0, kn, t in
                gemm.matmul(.bf16, m: rows, n: kn, k: d, a: q + q0 * ldq + h * d, lda: ldq, b: k + k0 * ldk + h * d, ldb: ldk,
                            transposed: true, c: t.scores, ldc: t.ld, accumulate: false)
                if avx512BF16 {
                    wk_softmax_tile_bf16(t.scores, Int32(t.ld), Int32(rows), Int32(kn), scale, keyBias.map { $0 + k0 }, t.runMax, t.runSum,
                                         t.alpha, t.probs, Int32(t.ld))
                    if k0 > 0 { for r in 0..<rows { scaleInPlace(t.acc + r * d, d, by: t.alpha[r]) } }
                } else {
                    for r in 0..<rows {
                        let s = t.scores + r * t.ld
                        // Scores are scaled inside the exponential (scale > 0 keeps the maximum's position); with a key
                        // bias they are scaled first.
                        var f = scale
                        if let keyBias {
                            for j in 0..<kn { s[j] = s[j] * scale + keyBias[k0 + j] }
                            f = 1
                        }
                        let newMax = max(t.runMax[r], f * rowMax(s, kn))
                        let sum = expToBF16(s, kn, scale: f, minus: newMax, into: t.probs + r * t.ld)
                        t.update(row: r, k0: k0, newMax: newMax, sum: sum)
                    }
                }
                gemm.matmul(.bf16, m: rows, n: d, k: kn, a: t.probs, lda: t.ld, b: v + k0 * ldv + h * d, ldb: ldv, transposed: false,
                            c: t.acc, ldc: d, accumulate: k0 > 0)
            }
        }
    }
}
