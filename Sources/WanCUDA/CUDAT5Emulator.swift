import Foundation

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
            for row in 0..<rows {
                let start = segStart.int(row), keys = segKeys.int(row), n = keys == 0 ? segRows.int(row) : keys
                guard n <= 4096 else { return "\(n) keys, more than T5_MAX_KEYS" }
                guard start >= 0, start + n <= rows else { return "row \(row): segment \(start)+\(n) outside \(rows) rows" }
                let pq = hasTable ? positions.int(row) : 0
                for h in 0..<heads {
                    var scores = [Float](repeating: 0, count: n)
                    if keys > 0 {
                        for j in 0..<n {
                            var s: Float = 0
                            for d in 0..<hd { s += q[row * ld + h * hd + d] * k[(start + j) * ld + h * hd + d] }
                            scores[j] = s * scale
                            guard hasTable else { continue }
                            let rel = positions.int(start + j) - pq + maxPos
                            guard rel >= 0, rel <= 2 * maxPos else { return "relative position \(rel - maxPos) outside ±\(maxPos)" }
                            scores[j] += table[bucketOf.int(rel) * heads + h]
                        }
                    }
                    let m = scores.max() ?? 0
                    var sum: Float = 0
                    for j in 0..<n { scores[j] = exp(scores[j] - m); sum += scores[j] }
                    for d in 0..<hd {
                        var acc: Float = 0
                        for j in 0..<n { acc += scores[j] * v[(start + j) * ld + h * hd + d] }
                        out[row * ldo + h * hd + d] = acc / sum
                    }
                }
            }
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
}
