import Foundation
import WanTensor

/// The kernels of Kernels/t5.cu re-done on the CPU for `CUDAEmulator` (see there), from the semantics the file
/// documents, reading the arguments as it declares them and refusing launches it would not run correctly.
enum EmulatedT5Kernels {
    static func gelu(_ x: Float) -> Float { 0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))) }

    /// Runs kernel `name`; returns why the launch is refused, or nil.
    static func run(_ name: String, grid: (Int, Int, Int), block: (Int, Int, Int), args a: EmulatedArgs) -> String? {
        let bf = name.hasSuffix("_bf16")
        func t(_ i: Int) -> EmulatedTensor { EmulatedTensor(a.address(i), bf16: bf) }
        let size = bf ? 2 : 4
        switch name {
        case "t5_attention_f32", "t5_attention_bf16":
            guard block == (128, 1, 1) else { return "block \(block): t5_attention runs 128 threads" }
            let rows = grid.0, heads = a.int32(12), hd = a.int32(13), maxPos = a.int32(10), scale = a.float(14), ld = a.int32(4)
            let hasTable = a.address(11) != 0
            guard grid.1 == heads, grid.2 == 1, heads > 0, hd > 0 else { return "grid \(grid) for \(heads) heads of \(hd)" }
            let ldo = heads * hd
            guard ld >= ldo else { return "ld \(ld) is less than heads * head_dim \(ldo)" }
            guard EmulatedDriver.inside(a.address(0), rows * ldo * size) else { return "out is not [\(rows), \(ldo)] in an allocation" }
            for i in [1, 2, 3] where !EmulatedDriver.inside(a.address(i), ((rows - 1) * ld + ldo) * size) {
                return "argument \(i) is not \(rows) rows of \(ldo), \(ld) apart, in an allocation"
            }
            for i in (hasTable ? [5, 6, 7, 8] : [5, 6, 7]) where !EmulatedDriver.inside(a.address(i), rows * 4) { return "argument \(i) is not \(rows) int32 values" }
            let out = t(0), q = t(1), k = t(2), v = t(3)
            let segStart = EmulatedTensor(a.address(5), bf16: false), segKeys = EmulatedTensor(a.address(6), bf16: false)
            let segRows = EmulatedTensor(a.address(7), bf16: false), positions = EmulatedTensor(a.address(8), bf16: false)
            let bucketOf = EmulatedTensor(a.address(9), bf16: false), table = EmulatedTensor(a.address(11), bf16: false)
            guard !hasTable || EmulatedDriver.inside(a.address(9), (2 * maxPos + 1) * 4) else { return "bucket_of is not \(2 * maxPos + 1) int32 values" }
            let rel = RelativeBias(positions: positions, bucketOf: bucketOf, table: hasTable ? table : nil, maxPos: maxPos, heads: heads)
            for row in 0..<rows {
                let start = segStart.int(row), keys = segKeys.int(row), n = keys == 0 ? segRows.int(row) : keys
                guard n <= 4096 else { return "\(n) keys, more than T5_MAX_KEYS" }
                guard start >= 0, start + n <= rows else { return "row \(row): segment \(start)+\(n) outside \(rows) rows" }
                if let refusal = attendRow(row, start: start, keys: keys, n: n, q: q, k: k, v: v, out: out, ld: ld, heads: heads, headDim: hd,
                                           scale: scale, bias: rel, roundP: false) { return refusal }
            }
        case _ where name.hasPrefix("t5_flash_attention_bf16_d"):
            return flashAttention(name, grid: grid, block: block, args: a)
        case "t5_gelu_mul_f32", "t5_gelu_mul_bf16":
            let n = a.int64(3)
            for i in [0, 1, 2] where !EmulatedDriver.inside(a.address(i), n * size) { return "argument \(i) is not \(n) values in an allocation" }
            let out = t(0), gate = t(1), up = t(2)
            for i in 0..<n {
                var g = gelu(gate[i])
                if bf { g = BFloat16.float(BFloat16.from(g)) }
                out[i] = g * up[i]
            }
        default:
            return "no emulation for \(name)"
        }
        return nil
    }

    /// t5_flash_attention_bf16_d{16,32,64,80}: t5_attention_bf16's semantics over the tiles of `tile_rows`, each
    /// row's p (exp(s - max)) rounded to bf16 for p v as the kernel rounds it (its sum in f32, unrounded). Refuses what
    /// the kernel would not run correctly: a block other than 128 threads, a head dim without a kernel, ld % 8 != 0 or
    /// pointers not 16-byte aligned (cp.async), more relative positions than T5_FLASH_REL_MAX stages, a tile that
    /// starts outside its segment, and a tile list that does not cover every row of the segments exactly once.
    static func flashAttention(_ name: String, grid: (Int, Int, Int), block: (Int, Int, Int), args a: EmulatedArgs) -> String? {
        guard let hd = Int(name.dropFirst("t5_flash_attention_bf16_d".count)), [16, 32, 64, 80].contains(hd) else { return "no kernel \(name)" }
        guard block == (128, 1, 1) else { return "block \(block): t5_flash_attention runs 128 threads" }
        let tiles = grid.0, heads = a.int32(13), maxPos = a.int32(11), scale = a.float(14), ld = a.int32(4)
        let hasTable = a.address(12) != 0
        guard grid.1 == heads, grid.2 == 1, heads > 0, tiles > 0 else { return "grid \(grid) for \(heads) heads" }
        let ldo = heads * hd
        guard ld >= ldo, ld % 8 == 0 else { return "ld \(ld): a multiple of 8, at least heads * head_dim \(ldo)" }
        for i in [0, 1, 2, 3] where a.address(i) % 16 != 0 { return "argument \(i) is not 16-byte aligned" }
        guard EmulatedDriver.inside(a.address(5), tiles * 4) else { return "tile_rows is not \(tiles) int32 values" }
        let tileRows = EmulatedTensor(a.address(5), bf16: false)
        let segStart = EmulatedTensor(a.address(6), bf16: false), segKeys = EmulatedTensor(a.address(7), bf16: false)
        let segRows = EmulatedTensor(a.address(8), bf16: false), positions = EmulatedTensor(a.address(9), bf16: false)
        let bucketOf = EmulatedTensor(a.address(10), bf16: false), table = EmulatedTensor(a.address(12), bf16: false)
        // The rows: up to the end of the last tile's segment; every per-row array holds that many.
        var rows = 0
        for t in 0..<tiles {
            let r = tileRows.int(t)
            guard r >= 0, EmulatedDriver.inside(a.address(6), (r + 1) * 4), EmulatedDriver.inside(a.address(8), (r + 1) * 4) else {
                return "tile \(t): row \(r) outside the segment arrays"
            }
            rows = max(rows, segStart.int(r) + segRows.int(r))
        }
        for i in (hasTable ? [6, 7, 8, 9] : [6, 7, 8]) where !EmulatedDriver.inside(a.address(i), rows * 4) { return "argument \(i) is not \(rows) int32 values" }
        guard EmulatedDriver.inside(a.address(0), rows * ldo * 2) else { return "out is not [\(rows), \(ldo)] in an allocation" }
        for i in [1, 2, 3] where !EmulatedDriver.inside(a.address(i), ((rows - 1) * ld + ldo) * 2) {
            return "argument \(i) is not \(rows) rows of \(ldo), \(ld) apart, in an allocation"
        }
        if hasTable {
            guard 2 * maxPos + 1 <= 2048 else { return "max_pos \(maxPos): more relative positions than T5_FLASH_REL_MAX (2048)" }
            guard EmulatedDriver.inside(a.address(10), (2 * maxPos + 1) * 4) else { return "bucket_of is not \(2 * maxPos + 1) int32 values" }
        }
        var covered = [Int](repeating: 0, count: rows)
        var work: [(row: Int, start: Int, keys: Int, n: Int)] = []
        for t in 0..<tiles {
            let r0 = tileRows.int(t), start = segStart.int(r0), end = start + segRows.int(r0), keys = segKeys.int(r0)
            guard r0 >= start, r0 < end else { return "tile \(t) starts at row \(r0), outside its segment \(start)..<\(end)" }
            for row in r0..<min(r0 + 64, end) {
                guard segStart.int(row) == start else { return "tile \(t) straddles segments at row \(row)" }
                covered[row] += 1
                work.append((row, start, keys, keys == 0 ? end - start : keys))
            }
        }
        if let row = covered.firstIndex(where: { $0 != 1 }) { return "the tiles cover row \(row) \(covered[row]) times" }
        let out = EmulatedTensor(a.address(0), bf16: true), q = EmulatedTensor(a.address(1), bf16: true)
        let k = EmulatedTensor(a.address(2), bf16: true), v = EmulatedTensor(a.address(3), bf16: true)
        let rel = RelativeBias(positions: positions, bucketOf: bucketOf, table: hasTable ? table : nil, maxPos: maxPos, heads: heads)
        for (row, start, keys, n) in work {
            if let refusal = attendRow(row, start: start, keys: keys, n: n, q: q, k: k, v: v, out: out, ld: ld, heads: heads, headDim: hd,
                                       scale: scale, bias: rel, roundP: true) { return refusal }
        }
        return nil
    }

    /// The relative-position bias of the t5 kernels: table[bucket_of[pos_k - pos_q + max_pos], head] (none without a table).
    struct RelativeBias {
        let positions, bucketOf: EmulatedTensor
        let table: EmulatedTensor?
        let maxPos, heads: Int
    }

    /// One query row of the segment attention, every head: scores scale·q·k (+ the bias) over the segment's n keys
    /// from row `start` (all 0 when keys == 0: uniform), softmax, times v, into out (rows heads·headDim wide). With
    /// `roundP` the exponentials are rounded to bf16 before p·v (the flash kernel's P fragments), the sum unrounded.
    static func attendRow(_ row: Int, start: Int, keys: Int, n: Int, q: EmulatedTensor, k: EmulatedTensor, v: EmulatedTensor,
                          out: EmulatedTensor, ld: Int, heads: Int, headDim hd: Int, scale: Float, bias: RelativeBias, roundP: Bool) -> String? {
        let ldo = heads * hd
        let pq = bias.table != nil ? bias.positions.int(row) : 0
        for h in 0..<heads {
            var scores = [Float](repeating: 0, count: n)
            if keys > 0 {
                for j in 0..<n {
                    var s: Float = 0
                    for d in 0..<hd { s += q[row * ld + h * hd + d] * k[(start + j) * ld + h * hd + d] }
                    scores[j] = s * scale
                    guard let table = bias.table else { continue }
                    let rel = bias.positions.int(start + j) - pq + bias.maxPos
                    guard rel >= 0, rel <= 2 * bias.maxPos else { return "relative position \(rel - bias.maxPos) outside ±\(bias.maxPos)" }
                    scores[j] += table[bias.bucketOf.int(rel) * bias.heads + h]
                }
            }
            let m = scores.max() ?? 0
            var sum: Float = 0
            for j in 0..<n {
                let e = exp(scores[j] - m)
                sum += e
                scores[j] = roundP ? BFloat16.float(BFloat16.from(e)) : e
            }
            for d in 0..<hd {
                var acc: Float = 0
                for j in 0..<n { acc += scores[j] * v[(start + j) * ld + h * hd + d] }
                out[row * ldo + h * hd + d] = acc / sum
            }
        }
        return nil
    }
}
