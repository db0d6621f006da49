import Foundation
import WanModels
import WanTensor

/// The self-test cases of Kernels/t5.cu against float64 references of their documented semantics: two segments of
/// different lengths in one batch (one with padded rows), one segment without keys (uniform attention), relative
/// positions past max_pos's exact range, head_dim 64 (two key groups per block) and 96 (one, partly idle); the
/// tensor-core t5_flash_attention_bf16_d64/d80 on the same segments (tiles of 64 rows: 3 + 1 + 1; 140 keys over
/// 3 or 5 key tiles), and d80 as CLIP calls it.
extension KernelSelfTest {
    func t5SelfTestCases() -> [(String, Double, () throws -> (gpu: [Double], reference: [Double]))] {
        [
            ("t5_attention_f32 (head_dim 64, padded and empty segments)", 1e-5, { try self.t5Attention(bf16: false, headDim: 64) }),
            ("t5_attention_f32 (head_dim 96)", 1e-5, { try self.t5Attention(bf16: false, headDim: 96) }),
            ("t5_attention_bf16 (head_dim 64)", 1e-2, { try self.t5Attention(bf16: true, headDim: 64) }),
            ("t5_attention_f32 (CLIP: head_dim 80, scale, no bias, q/k/v views of one qkv product)", 1e-5, { try self.t5Attention(bf16: false, headDim: 80, bias: false) }),
            ("t5_flash_attention_bf16_d64 (umT5: bias, padded and empty segments, tiles of 64 rows)", 1e-2,
             { try self.t5Attention(bf16: true, headDim: 64, flash: true) }),
            ("t5_flash_attention_bf16_d80 (CLIP: scale, no bias, q/k/v views of one qkv product)", 1e-2,
             { try self.t5Attention(bf16: true, headDim: 80, bias: false, flash: true) }),
            ("t5_flash_attention_bf16_d80 (bias, padded and empty segments)", 1e-2, { try self.t5Attention(bf16: true, headDim: 80, flash: true) }),
            ("t5_gelu_mul_f32", 1e-6, { try self.t5GeluMul() }),
        ]
    }

    /// `flash`: t5_flash_attention_bf16_d<hd> (bf16 only) on the query tiles `CUDAComputeBackend.segments` makes.
    private func t5Attention(bf16: Bool, headDim hd: Int, bias: Bool = true, flash: Bool = false) throws -> ([Double], [Double]) {
        let scale: Float = bias ? 1 : 1 / Float(hd).squareRoot()
        let heads = 3, buckets = 32
        // Segments: 150 rows with 140 keys (10 padded rows), 37 rows with 37 keys, 5 rows with no key.
        let segments: [(rows: Int, keys: Int)] = [(150, 140), (37, 37), (5, 0)]
        let rows = segments.reduce(0) { $0 + $1.rows }
        var segStart: [Int32] = [], segKeys: [Int32] = [], segRows: [Int32] = [], positions: [Int32] = []
        var first = 0
        for s in segments {
            for i in 0..<s.rows {
                segStart.append(Int32(first)); segKeys.append(Int32(s.keys)); segRows.append(Int32(s.rows))
                positions.append(Int32(i < s.keys ? i : s.keys + (s.rows - 1 - i)))  // padded rows in another order
            }
            first += s.rows
        }
        let maxPos = Int(positions.max()!)
        let bucketOf = (-maxPos...maxPos).map {
            Int32(UMT5Encoder.relativePositionBucket($0, numBuckets: buckets, bidirectional: true, maxDistance: 128))
        }
        let ld = heads * hd
        var q = Self.values(rows * ld, seed: 3), k = Self.values(rows * ld, seed: 5), v = Self.values(rows * ld, seed: 7)
        let table = Self.values(buckets * heads, seed: 11, scale: 2)
        if bf16 {
            // The reference reads the values the kernel reads.
            q = q.map { BFloat16.float(BFloat16.from($0)) }; k = k.map { BFloat16.float(BFloat16.from($0)) }; v = v.map { BFloat16.float(BFloat16.from($0)) }
        }
        func device(_ x: [Float]) throws -> DeviceBuffer { bf16 ? try upload(x.map(BFloat16.from)) : try upload(x) }
        // Without a bias table (CLIP) q, k and v are column views of one [rows, 3 ld] product, rows 3 ld apart.
        let fused = !bias, ldIn = fused ? 3 * ld : ld, size = bf16 ? 2 : 4
        var qkv: [Float] = []
        if fused {
            for r in 0..<rows {
                let part = (r * ld)..<((r + 1) * ld)
                qkv.append(contentsOf: q[part]); qkv.append(contentsOf: k[part]); qkv.append(contentsOf: v[part])
            }
        }
        let buffers = fused ? [try device(qkv)] : [try device(q), try device(k), try device(v)]
        let (qb, kb, vb) = fused ? (buffers[0].pointer, buffers[0].pointer + UInt64(ld * size), buffers[0].pointer + UInt64(2 * ld * size))
                                 : (buffers[0].pointer, buffers[1].pointer, buffers[2].pointer)
        let out = try context.allocate(bytes: rows * ld * (bf16 ? 2 : 4))
        let ints = [try upload(segStart), try upload(segKeys), try upload(segRows), try upload(positions), try upload(bucketOf)]
        let tableBuffer = try upload(table)
        let module = try compiler.load(module: "t5.cu", on: context)
        if flash {
            var tileRows: [Int32] = []
            first = 0
            for s in segments {
                tileRows += stride(from: first, to: first + s.rows, by: CUDAOps.t5FlashRows).map { Int32($0) }
                first += s.rows
            }
            let tiles = try upload(tileRows)
            try module.function("t5_flash_attention_bf16_d\(hd)").launch(
                grid: (tileRows.count, heads, 1), block: (128, 1, 1),
                [.buffer(out), .pointer(qb), .pointer(kb), .pointer(vb), .int32(Int32(ldIn)), .buffer(tiles), .buffer(ints[0]), .buffer(ints[1]),
                 .buffer(ints[2]), .buffer(ints[3]), .buffer(ints[4]), .int32(Int32(maxPos)), bias ? .buffer(tableBuffer) : .pointer(0),
                 .int32(Int32(heads)), .float(scale)])
            try context.synchronize()
            withExtendedLifetime(tiles) {}
        } else {
            try module.function(bf16 ? "t5_attention_bf16" : "t5_attention_f32").launch(
                grid: (rows, heads, 1), block: (128, 1, 1),
                [.buffer(out), .pointer(qb), .pointer(kb), .pointer(vb), .int32(Int32(ldIn)), .buffer(ints[0]), .buffer(ints[1]), .buffer(ints[2]),
                 .buffer(ints[3]), .buffer(ints[4]), .int32(Int32(maxPos)), bias ? .buffer(tableBuffer) : .pointer(0), .int32(Int32(heads)),
                 .int32(Int32(hd)), .float(scale)])
        }
        try context.synchronize()
        withExtendedLifetime(buffers) {}
        let gpu = bf16 ? try bf16s(out, rows * ld) : try floats(out, rows * ld)
        var reference = [Double](repeating: 0, count: rows * ld)
        for row in 0..<rows {
            let start = Int(segStart[row]), keys = Int(segKeys[row]), n = keys == 0 ? Int(segRows[row]) : keys
            for h in 0..<heads {
                var scores = [Double](repeating: 0, count: n)
                if keys > 0 {
                    for j in 0..<n {
                        var s = 0.0
                        for d in 0..<hd { s += Double(q[row * ld + h * hd + d]) * Double(k[(start + j) * ld + h * hd + d]) }
                        let rel = Int(positions[start + j]) - Int(positions[row]) + maxPos
                        scores[j] = s * Double(scale) + (bias ? Double(table[Int(bucketOf[rel]) * heads + h]) : 0)
                    }
                }
                let m = scores.max()!
                let e = scores.map { exp($0 - m) }
                let sum = e.reduce(0, +)
                for d in 0..<hd {
                    var acc = 0.0
                    for j in 0..<n { acc += e[j] * Double(v[(start + j) * ld + h * hd + d]) }
                    reference[row * ld + h * hd + d] = acc / sum
                }
            }
        }
        return (gpu, reference)
    }

    private func t5GeluMul() throws -> ([Double], [Double]) {
        let n = 10_007
        let gate = Self.values(n, seed: 13, scale: 4), up = Self.values(n, seed: 17, scale: 3)
        let (g, u) = (try upload(gate), try upload(up))
        let out = try context.allocate(bytes: n * 4)
        let f = try compiler.load(module: "t5.cu", on: context).function("t5_gelu_mul_f32")
        try f.launch(grid: (min((n + 255) / 256, 65535), 1, 1), block: (256, 1, 1), [.buffer(out), .buffer(g), .buffer(u), .int64(Int64(n))])
        let gpu = try floats(out, n)
        let reference = (0..<n).map { i -> Double in
            let x = Double(gate[i])
            return 0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))) * Double(up[i])
        }
        return (gpu, reference)
    }
}
