import Foundation
import XCTest
import WanKit
import WanTensor

/// The CPU's bf16 products (`CPUBackend.products == .bf16`): each product equals the float64 product of its operands
/// rounded to bf16 (f32 accumulation is the only other error), whatever form the weights are stored in; the bf16
/// attention stays within bf16's error of the float64 attention on both softmax paths; `.float32` matrices keep f32.
final class CPUBF16Tests: XCTestCase {
    typealias Rng = CompactWeightsTests.Rng

    static func rounded(_ v: Float) -> Double { Double(BFloat16.float(BFloat16.from(v))) }

    /// max |bf16 product - float64 product of the bf16-rounded operands| <= 1e-5 · max |reference| for each storage.
    func testProductsAreTheProductsOfTheRoundedOperands() throws {
        try XCTSkipUnless(GEMM.supportsBF16, "oneDNN has no bf16 products on this CPU (AVX2 only)")
        let rows = 300, cols = 256, m = 37
        var rng = Rng(state: 5)
        let x = Tensor(shape: [m, cols], values: (0..<(m * cols)).map { _ in rng.float() })
        let bias = Tensor(shape: [rows], values: (0..<rows).map { _ in rng.float() })
        let x16 = BFloat16.buffer(count: m * cols)
        BFloat16.pack(x.data, into: x16.values, count: m * cols)
        let forms: [(String, LinearWeight)] = [
            ("f32", LinearWeight(CompactWeightsTests.makeStored(.dtype(.f32), rows: rows, cols: cols, seed: 1).float32())),
            ("bf16 in place", LinearWeight(CompactWeightsTests.makeStored(.dtype(.bf16), rows: rows, cols: cols, seed: 2))),
            ("f16", LinearWeight(CompactWeightsTests.makeStored(.dtype(.f16), rows: rows, cols: cols, seed: 3))),
            ("q8_0", LinearWeight(CompactWeightsTests.makeStored(.ggml(.q8_0), rows: rows, cols: cols, seed: 4))),
        ]
        for (name, w) in forms {
            let dense = w.dequantized()
            for (withBias, epilogue) in [(true, Epilogue.none), (false, .geluTanh)] {
                let out = Tensor(zeros: [m, rows])
                withExtendedLifetime(x16.owner) {
                    w.linearBF16(m: m, src: x16.values, bias: withBias ? UnsafePointer(bias.data) : nil, dst: out.data, epilogue: epilogue)
                }
                var maxDiff = 0.0, maxRef = 0.0
                for i in 0..<m {
                    for o in 0..<rows {
                        var acc = withBias ? Double(bias.data[o]) : 0
                        for j in 0..<cols { acc += Self.rounded(x.data[i * cols + j]) * Self.rounded(dense.data[o * cols + j]) }
                        if epilogue == .geluTanh { acc = 0.5 * acc * (1 + tanh(0.7978845608028654 * (acc + 0.044715 * acc * acc * acc))) }
                        maxDiff = max(maxDiff, abs(Double(out.data[i * rows + o]) - acc)); maxRef = max(maxRef, abs(acc))
                    }
                }
                XCTAssertGreaterThan(maxRef, 0)
                XCTAssertLessThanOrEqual(maxDiff, 1e-5 * maxRef, "\(name) bias=\(withBias) \(epilogue): \(maxDiff) of \(maxRef)")
            }
        }
    }

    /// Float64 attention of one head block, with a per-key bias.
    static func reference(q: Tensor, k: Tensor, v: Tensor, queries: Int, keys: Int, heads: Int, d: Int, scale: Double,
                          bias: [Float]?) -> [Double] {
        var out = [Double](repeating: 0, count: queries * heads * d)
        let w = heads * d
        for h in 0..<heads {
            for i in 0..<queries {
                var s = [Double](repeating: 0, count: keys)
                for j in 0..<keys {
                    var dot = 0.0
                    for c in 0..<d { dot += Double(q.data[i * w + h * d + c]) * Double(k.data[j * w + h * d + c]) }
                    s[j] = dot * scale + Double(bias?[j] ?? 0)
                }
                let m = s.max()!
                let e = s.map { Foundation.exp($0 - m) }, sum = e.reduce(0, +)
                for c in 0..<d {
                    var acc = 0.0
                    for j in 0..<keys { acc += e[j] * Double(v.data[j * w + h * d + c]) }
                    out[i * w + h * d + c] = acc / sum
                }
            }
        }
        return out
    }

    /// Several key tiles (keys > keyTile, the last one partial), a key bias, accumulation: rel_l2 against float64
    /// within bf16's rounding, on the AVX-512 softmax (where the CPU has it) and on the portable loops.
    func testAttentionMatchesFloat64OnBothSoftmaxPaths() throws {
        try XCTSkipUnless(GEMM.supportsBF16, "oneDNN has no bf16 products on this CPU (AVX2 only)")
        let queries = 70, keys = 1100, heads = 2, d = 64, w = heads * d
        var rng = Rng(state: 9)
        func random(_ n: Int, _ a: Float) -> Tensor { Tensor(shape: [n / w, w], values: (0..<n).map { _ in a * rng.float() }) }
        let q = random(queries * w, 2), k = random(keys * w, 2), v = random(keys * w, 1)
        let bias = (0..<keys).map { $0 % 7 == 0 ? Float(log(3.0)) : 0 }
        let scale = 1 / Float(d).squareRoot()
        let saved = Attention.avx512BF16
        defer { Attention.avx512BF16 = saved }
        let paths = saved ? [true, false] : [false]
        for avx in paths {
            Attention.avx512BF16 = avx
            for withBias in [false, true] {
                let ref = Self.reference(q: q, k: k, v: v, queries: queries, keys: keys, heads: heads, d: d, scale: Double(scale),
                                         bias: withBias ? bias : nil)
                let out = Tensor(zeros: [queries, w])
                for i in 0..<out.count { out.data[i] = 0.25 }
                bias.withUnsafeBufferPointer { b in
                    Attention.run(.bf16, q: q.data, ldq: w, queries: queries, k: k.data, ldk: w, v: v.data, ldv: w, keys: keys, heads: heads,
                                  headDim: d, scale: scale, out: out.data, ldo: w, accumulate: true, keyBias: withBias ? b.baseAddress : nil)
                }
                var num = 0.0, den = 0.0
                for i in 0..<ref.count { let e = Double(out.data[i]) - 0.25 - ref[i]; num += e * e; den += ref[i] * ref[i] }
                let rel = (num / den).squareRoot()
                XCTAssertLessThan(rel, 8e-3, "avx512 \(avx) bias \(withBias): rel_l2 \(rel)")
                XCTAssertGreaterThan(rel, 0, "bf16 rounding must show")
            }
        }
    }

    /// `.float32` matrices (the DiT's patch embedding, time embedding, head) run in f32 on a bf16 backend; the others
    /// in bf16.
    func testFloat32KindKeepsF32Products() throws {
        try XCTSkipUnless(GEMM.supportsBF16, "oneDNN has no bf16 products on this CPU (AVX2 only)")
        var rng = Rng(state: 3)
        let linear = Linear(weight: Tensor(shape: [48, 64], values: (0..<(48 * 64)).map { _ in rng.float() }), bias: nil)
        let f32 = CPUBackend(), bf16 = CPUBackend(products: .bf16)
        XCTAssertEqual(bf16.description, "cpu (bf16 products)")
        let x = Tensor(shape: [5, 64], values: (0..<320).map { _ in rng.float() + 1e-3 })
        func run(_ b: CPUBackend, _ kind: MatrixKind) throws -> [Float] {
            let m = try b.matrix(linear, kind: kind)
            let y = try b.tensor(rows: 5, cols: 48, type: .f32)
            try b.linear(m, try b.upload(x, rows: 5, cols: 64), into: y, activation: .none)
            return try b.download(y).array
        }
        let exact = try run(f32, .activation)
        XCTAssertEqual(try run(bf16, .float32), exact)
        let rounded = try run(bf16, .activation)
        XCTAssertNotEqual(rounded, exact)
        let worst = zip(rounded, exact).map { abs($0 - $1) }.max()!
        XCTAssertLessThan(worst, 0.1)
    }
}
