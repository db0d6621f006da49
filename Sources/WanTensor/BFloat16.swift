import Foundation

/// float32 <-> bfloat16 on the host, as PyTorch's .to(torch.bfloat16) rounds (to nearest, ties to even; NaN stays a
/// quiet NaN): how weights are packed for a GPU upload and how the CPU's bf16 products take their inputs.
public enum BFloat16 {
    @inline(__always) public static func from(_ value: Float) -> UInt16 {
        let bits = value.bitPattern
        if bits & 0x7fff_ffff > 0x7f80_0000 { return UInt16(truncatingIfNeeded: bits >> 16) | 0x0040 }
        let rounded = bits &+ 0x7fff &+ ((bits >> 16) & 1)
        return UInt16(truncatingIfNeeded: rounded >> 16)
    }

    @inline(__always) public static func float(_ value: UInt16) -> Float { Float(bitPattern: UInt32(value) << 16) }

    /// Packs `count` floats (in parallel for large counts).
    public static func pack(_ source: UnsafePointer<Float>, into destination: UnsafeMutablePointer<UInt16>, count: Int) {
        Parallel.forRanges(count, grain: 1 << 16) { range in
            for i in range { destination[i] = from(source[i]) }
        }
    }

    public static func unpack(_ source: UnsafePointer<UInt16>, into destination: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { destination[i] = float(source[i]) }
    }
}

extension BFloat16 {
    /// Rows of a float32 matrix (rows `ld` apart) as a dense bfloat16 matrix [rows, cols], in parallel for large ones.
    public static func pack(rows: Int, cols: Int, _ source: UnsafePointer<Float>, ld: Int, into destination: UnsafeMutablePointer<UInt16>) {
        if ld == cols { pack(source, into: destination, count: rows * cols); return }
        Parallel.forRanges(rows, grain: max(1, (1 << 16) / max(cols, 1))) { range in
            for r in range {
                let s = source + r * ld, d = destination + r * cols
                for i in 0..<cols { d[i] = from(s[i]) }
            }
        }
    }

    /// A dense bfloat16 buffer of `count` values from the buffer pool (a float32 tensor of half the count holds it).
    public static func buffer(count: Int) -> (owner: Tensor, values: UnsafeMutablePointer<UInt16>) {
        let t = Tensor(uninitialized: [max(1, (count + 1) / 2)])
        return (t, UnsafeMutableRawPointer(t.data).assumingMemoryBound(to: UInt16.self))
    }
}
