/// Storage dtypes found in weight files. Compute is always float32.
public enum DType: String, Sendable, CaseIterable {
    case f64 = "F64", f32 = "F32", f16 = "F16", bf16 = "BF16"
    case f8e4m3 = "F8_E4M3", f8e5m2 = "F8_E5M2"
    case i64 = "I64", i32 = "I32", i16 = "I16", i8 = "I8", u8 = "U8", bool = "BOOL"

    public var byteSize: Int {
        switch self {
        case .f64, .i64: return 8
        case .f32, .i32: return 4
        case .f16, .bf16, .i16: return 2
        case .f8e4m3, .f8e5m2, .i8, .u8, .bool: return 1
        }
    }

    public var isFloat: Bool {
        switch self {
        case .f64, .f32, .f16, .bf16, .f8e4m3, .f8e5m2: return true
        default: return false
        }
    }
}

/// Conversions of stored floats to float32.
public enum FloatConversion {
    @inline(__always) public static func f16(_ h: UInt16) -> Float {
        let sign = UInt32(h & 0x8000) << 16
        let exp = Int((h >> 10) & 0x1F)
        let man = UInt32(h & 0x3FF)
        if exp == 0 {
            if man == 0 { return Float(bitPattern: sign) }
            // subnormal: value = man * 2^-24
            let v = Float(man) * (1.0 / 16777216.0)
            return sign != 0 ? -v : v
        }
        if exp == 31 { return Float(bitPattern: sign | 0x7F80_0000 | (man << 13)) }
        return Float(bitPattern: sign | (UInt32(exp + 112) << 23) | (man << 13))
    }

    @inline(__always) public static func bf16(_ b: UInt16) -> Float { Float(bitPattern: UInt32(b) << 16) }

    /// float8 e4m3fn (no infinities; 0x7F/0xFF are NaN), bias 7.
    @inline(__always) public static func f8e4m3(_ b: UInt8) -> Float {
        let sign: Float = (b & 0x80) != 0 ? -1 : 1
        let exp = Int((b >> 3) & 0xF), man = Int(b & 0x7)
        if exp == 15 && man == 7 { return .nan }
        if exp == 0 { return sign * Float(man) * 0.001953125 }  // man/8 * 2^-6
        return sign * (1 + Float(man) / 8) * Float(sign: .plus, exponent: exp - 7, significand: 1)
    }

    /// float8 e5m2 (IEEE-like, bias 15): the top byte of a float16.
    @inline(__always) public static func f8e5m2(_ b: UInt8) -> Float { f16(UInt16(b) << 8) }

    /// Converts `count` stored values at `src` of `dtype` into float32 at `dst`.
    public static func toF32(_ src: UnsafeRawPointer, dtype: DType, count: Int, into dst: UnsafeMutablePointer<Float>) {
        switch dtype {
        case .f32:
            UnsafeMutableRawPointer(dst).copyMemory(from: src, byteCount: count * 4)
        case .f16:
            for i in 0..<count { dst[i] = f16(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
        case .bf16:
            for i in 0..<count { dst[i] = bf16(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
        case .f64:
            for i in 0..<count { dst[i] = Float(src.loadUnaligned(fromByteOffset: 8 * i, as: Double.self)) }
        case .f8e4m3:
            let p = src.assumingMemoryBound(to: UInt8.self)
            for i in 0..<count { dst[i] = f8e4m3(p[i]) }
        case .f8e5m2:
            let p = src.assumingMemoryBound(to: UInt8.self)
            for i in 0..<count { dst[i] = f8e5m2(p[i]) }
        case .i64:
            for i in 0..<count { dst[i] = Float(src.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self)) }
        case .i32:
            for i in 0..<count { dst[i] = Float(src.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self)) }
        case .i16:
            for i in 0..<count { dst[i] = Float(src.loadUnaligned(fromByteOffset: 2 * i, as: Int16.self)) }
        case .i8:
            let p = src.assumingMemoryBound(to: Int8.self)
            for i in 0..<count { dst[i] = Float(p[i]) }
        case .u8, .bool:
            let p = src.assumingMemoryBound(to: UInt8.self)
            for i in 0..<count { dst[i] = Float(p[i]) }
        }
    }
}
