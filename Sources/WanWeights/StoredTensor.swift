import Foundation
import WanTensor

/// ggml tensor types (ggml.h `enum ggml_type`). Only the storage formats WanKit can dequantise have `canDequantize`;
/// the others are listed so that a file using them gets a clear "not supported" rather than "unknown".
public enum GGMLType: UInt32, Sendable, CaseIterable, CustomStringConvertible {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q8_1 = 9
    case q2_K = 10, q3_K = 11, q4_K = 12, q5_K = 13, q6_K = 14, q8_K = 15
    case iq2_xxs = 16, iq2_xs = 17, iq3_xxs = 18, iq1_s = 19, iq4_nl = 20, iq3_s = 21, iq2_s = 22, iq4_xs = 23
    case i8 = 24, i16 = 25, i32 = 26, i64 = 27, f64 = 28, iq1_m = 29, bf16 = 30, tq1_0 = 34, tq2_0 = 35, mxfp4 = 39

    public var description: String {
        switch self {
        case .f32: return "F32"
        case .f16: return "F16"
        case .q4_0: return "Q4_0"
        case .q4_1: return "Q4_1"
        case .q5_0: return "Q5_0"
        case .q5_1: return "Q5_1"
        case .q8_0: return "Q8_0"
        case .q8_1: return "Q8_1"
        case .q2_K: return "Q2_K"
        case .q3_K: return "Q3_K"
        case .q4_K: return "Q4_K"
        case .q5_K: return "Q5_K"
        case .q6_K: return "Q6_K"
        case .q8_K: return "Q8_K"
        case .iq2_xxs: return "IQ2_XXS"
        case .iq2_xs: return "IQ2_XS"
        case .iq3_xxs: return "IQ3_XXS"
        case .iq1_s: return "IQ1_S"
        case .iq4_nl: return "IQ4_NL"
        case .iq3_s: return "IQ3_S"
        case .iq2_s: return "IQ2_S"
        case .iq4_xs: return "IQ4_XS"
        case .i8: return "I8"
        case .i16: return "I16"
        case .i32: return "I32"
        case .i64: return "I64"
        case .f64: return "F64"
        case .iq1_m: return "IQ1_M"
        case .bf16: return "BF16"
        case .tq1_0: return "TQ1_0"
        case .tq2_0: return "TQ2_0"
        case .mxfp4: return "MXFP4"
        }
    }

    /// Elements per block.
    public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16, .f64, .i8, .i16, .i32, .i64: return 1
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q8_1, .iq4_nl, .mxfp4: return 32
        default: return 256
        }
    }

    /// Bytes per block (ggml's `type_size`).
    public var typeSize: Int {
        switch self {
        case .f32, .i32: return 4
        case .f16, .bf16, .i16: return 2
        case .f64, .i64: return 8
        case .i8: return 1
        case .q4_0: return 18
        case .q4_1: return 20
        case .q5_0: return 22
        case .q5_1: return 24
        case .q8_0: return 34
        case .q8_1: return 36
        case .q2_K: return 84
        case .q3_K: return 110
        case .q4_K: return 144
        case .q5_K: return 176
        case .q6_K: return 210
        case .q8_K: return 292
        case .iq2_xxs: return 66
        case .iq2_xs: return 74
        case .iq3_xxs: return 98
        case .iq1_s: return 50
        case .iq4_nl: return 18
        case .iq3_s: return 110
        case .iq2_s: return 82
        case .iq4_xs: return 136
        case .iq1_m: return 56
        case .tq1_0: return 54
        case .tq2_0: return 66
        case .mxfp4: return 17
        }
    }

    /// Whether `GGMLDequant` implements this type.
    public var canDequantize: Bool {
        switch self {
        case .f32, .f16, .bf16, .f64, .i8, .i16, .i32, .i64, .q4_0, .q4_1, .q5_0, .q5_1, .q8_0,
             .q2_K, .q3_K, .q4_K, .q5_K, .q6_K, .q8_K: return true
        default: return false
        }
    }

    public static let dequantizable: [GGMLType] = allCases.filter(\.canDequantize)
}

/// How a tensor is stored in its file.
public enum StorageType: Sendable, Equatable, Hashable, CustomStringConvertible {
    /// A plain element type (safetensors dtypes; GGUF F32/F16/BF16 are reported as these too).
    case dtype(DType)
    /// A ggml block-quantised type.
    case ggml(GGMLType)

    public var description: String {
        switch self {
        case .dtype(let d): return d.rawValue
        case .ggml(let g): return g.description
        }
    }
}

/// A tensor as stored, without conversion: its type, its logical (PyTorch-order) shape, a pointer into the mapping
/// and an optional per-tensor scale (ComfyUI fp8_scaled). The owner keeps the mapping alive.
///
/// Rows are the last dimension: for a Linear weight [out, in] one row is one output feature. ggml blocks run along
/// rows (GGUF's fastest dim), so for valid files a row range covers whole blocks; other ranges work too, through a
/// scratch block at each end.
public struct StoredTensor: @unchecked Sendable {
    public let name: String
    public let type: StorageType
    public let shape: [Int]
    public let data: UnsafeRawPointer
    public let byteCount: Int
    /// Multiplies every dequantised value (fp8_scaled `scale_weight`), nil for none.
    public let scale: Float?
    public let owner: AnyObject?

    public init(name: String, type: StorageType, shape: [Int], data: UnsafeRawPointer, byteCount: Int, scale: Float? = nil, owner: AnyObject?) {
        self.name = name; self.type = type; self.shape = shape; self.data = data; self.byteCount = byteCount
        self.scale = scale; self.owner = owner
    }

    public var elementCount: Int { shape.reduce(1, *) }
    public var rowLength: Int { shape.last ?? 1 }
    public var rowCount: Int { rowLength == 0 ? 0 : elementCount / rowLength }
    /// Bytes one row occupies (for block types, when rows hold whole blocks).
    public var bytesPerRow: Int {
        switch type {
        case .dtype(let d): return rowLength * d.byteSize
        case .ggml(let g): return rowLength / g.blockSize * g.typeSize
        }
    }

    /// Dequantises rows [rows] (each `rowLength` values) into `dst` as float32.
    public func dequantizeRows(_ rows: Range<Int>, into dst: UnsafeMutablePointer<Float>) {
        dequantize(elements: rows.lowerBound * rowLength ..< rows.upperBound * rowLength, into: dst)
    }

    /// Dequantises the flat element range into `dst`.
    public func dequantize(elements r: Range<Int>, into dst: UnsafeMutablePointer<Float>) {
        precondition(r.lowerBound >= 0 && r.upperBound <= elementCount, "elements \(r) outside \(name) of \(elementCount)")
        if r.isEmpty { return }
        switch type {
        case .dtype(let d):
            StoredTensor.convert(data + r.lowerBound * d.byteSize, dtype: d, count: r.count, into: dst)
        case .ggml(let g):
            let bs = g.blockSize, ts = g.typeSize
            var start = r.lowerBound
            var out = dst
            // Leading partial block.
            if start % bs != 0 {
                let b = start / bs
                let scratch = UnsafeMutablePointer<Float>.allocate(capacity: bs)
                defer { scratch.deallocate() }
                GGMLDequant.blocks(g, data + b * ts, count: 1, into: scratch)
                let n = min(r.upperBound, (b + 1) * bs) - start
                out.update(from: scratch + (start - b * bs), count: n)
                out += n; start += n
            }
            let fullEnd = r.upperBound / bs * bs
            if fullEnd > start {
                let nb = (fullEnd - start) / bs
                GGMLDequant.blocks(g, data + (start / bs) * ts, count: nb, into: out)
                out += fullEnd - start; start = fullEnd
            }
            if start < r.upperBound {
                let b = start / bs
                let scratch = UnsafeMutablePointer<Float>.allocate(capacity: bs)
                defer { scratch.deallocate() }
                GGMLDequant.blocks(g, data + b * ts, count: 1, into: scratch)
                out.update(from: scratch, count: r.upperBound - start)
            }
        }
        if let s = scale, s != 1 {
            for i in 0..<r.count { dst[i] *= s }
        }
    }

    /// The whole tensor as a float32 tensor of the logical shape (a view into the mapping when stored as aligned
    /// float32 without a scale).
    public func float32() -> Tensor {
        if type == .dtype(.f32) || type == .ggml(.f32), scale == nil, Int(bitPattern: data) % 4 == 0, let owner {
            return Tensor(borrowing: UnsafeMutablePointer(mutating: data.assumingMemoryBound(to: Float.self)), shape: shape, owner: owner)
        }
        let t = Tensor(uninitialized: shape)
        let n = elementCount
        // Large tensors convert on every core, in whole rows (and whole blocks).
        let unit: Int
        switch type {
        case .ggml(let g): unit = g.blockSize
        case .dtype: unit = 1
        }
        let chunk = max(unit, (1 << 16) / unit * unit)
        if n >= 4 * chunk {
            let chunks = (n + chunk - 1) / chunk
            Parallel.forEach(chunks) { c in
                let lo = c * chunk, hi = min(n, lo + chunk)
                self.dequantize(elements: lo..<hi, into: t.data + lo)
            }
        } else if n > 0 {
            dequantize(elements: 0..<n, into: t.data)
        }
        return t
    }

    /// Plain element types to float32 (f16 through the hardware conversion where available).
    static func convert(_ src: UnsafeRawPointer, dtype: DType, count: Int, into dst: UnsafeMutablePointer<Float>) {
        switch dtype {
        case .f16:
            #if arch(x86_64) || arch(arm64)
            for i in 0..<count { dst[i] = Float(Float16(bitPattern: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
            #else
            FloatConversion.toF32(src, dtype: dtype, count: count, into: dst)
            #endif
        default:
            FloatConversion.toF32(src, dtype: dtype, count: count, into: dst)
        }
    }
}

/// ggml's reference dequantisation (ggml-quants.c `dequantize_row_*`), block by block.
public enum GGMLDequant {
    @inline(__always) static func h(_ p: UnsafePointer<UInt8>, _ o: Int) -> Float {
        let bits = UInt16(p[o]) | (UInt16(p[o + 1]) << 8)
        #if arch(x86_64) || arch(arm64)
        return Float(Float16(bitPattern: bits))
        #else
        return FloatConversion.f16(bits)
        #endif
    }

    /// The 6-bit scale and min of sub-block j of a Q4_K/Q5_K super-block (`get_scale_min_k4`).
    @inline(__always) static func scaleMinK4(_ j: Int, _ q: UnsafePointer<UInt8>) -> (Float, Float) {
        if j < 4 { return (Float(q[j] & 63), Float(q[j + 4] & 63)) }
        let d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4)
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4)
        return (Float(d), Float(m))
    }

    /// Dequantises `count` consecutive blocks of `type` at `src` into `count * blockSize` floats at `dst`.
    public static func blocks(_ type: GGMLType, _ src: UnsafeRawPointer, count nb: Int, into dst: UnsafeMutablePointer<Float>) {
        let base = src.assumingMemoryBound(to: UInt8.self)
        let ts = type.typeSize
        switch type {
        case .f32, .f16, .bf16, .f64, .i8, .i16, .i32, .i64:
            let d: DType
            switch type {
            case .f32: d = .f32
            case .f16: d = .f16
            case .bf16: d = .bf16
            case .f64: d = .f64
            case .i8: d = .i8
            case .i16: d = .i16
            case .i32: d = .i32
            default: d = .i64
            }
            StoredTensor.convert(src, dtype: d, count: nb, into: dst)
        case .q8_0:
            for i in 0..<nb {
                let b = base + i * ts, y = dst + i * 32
                let d = h(b, 0)
                let q = UnsafeRawPointer(b + 2).assumingMemoryBound(to: Int8.self)
                for j in 0..<32 { y[j] = Float(q[j]) * d }
            }
        case .q4_0:
            for i in 0..<nb {
                let b = base + i * ts, y = dst + i * 32
                let d = h(b, 0)
                let q = b + 2
                for j in 0..<16 {
                    y[j] = Float(Int(q[j] & 0x0F) - 8) * d
                    y[j + 16] = Float(Int(q[j] >> 4) - 8) * d
                }
            }
        case .q4_1:
            for i in 0..<nb {
                let b = base + i * ts, y = dst + i * 32
                let d = h(b, 0), m = h(b, 2)
                let q = b + 4
                for j in 0..<16 {
                    y[j] = Float(q[j] & 0x0F) * d + m
                    y[j + 16] = Float(q[j] >> 4) * d + m
                }
            }
        case .q5_0, .q5_1:
            let hasMin = type == .q5_1
            for i in 0..<nb {
                let b = base + i * ts, y = dst + i * 32
                let d = h(b, 0)
                let m: Float = hasMin ? h(b, 2) : 0
                let o = hasMin ? 4 : 2
                let qh = UInt32(b[o]) | (UInt32(b[o + 1]) << 8) | (UInt32(b[o + 2]) << 16) | (UInt32(b[o + 3]) << 24)
                let q = b + o + 4
                let off = hasMin ? 0 : 16
                for j in 0..<16 {
                    let h0 = Int(((qh >> UInt32(j)) << 4) & 0x10)
                    let h1 = Int((qh >> UInt32(j + 12)) & 0x10)
                    y[j] = Float((Int(q[j] & 0x0F) | h0) - off) * d + m
                    y[j + 16] = Float((Int(q[j] >> 4) | h1) - off) * d + m
                }
            }
        case .q8_K:
            for i in 0..<nb {
                let b = base + i * ts, y = dst + i * 256
                let d = UnsafeRawPointer(b).loadUnaligned(as: Float.self)
                let q = UnsafeRawPointer(b + 4).assumingMemoryBound(to: Int8.self)
                for j in 0..<256 { y[j] = d * Float(q[j]) }
            }
        case .q2_K:
            // block_q2_K: scales[16], qs[64], d, dmin
            for i in 0..<nb {
                let b = base + i * ts
                var y = dst + i * 256
                let sc = b, d = h(b, 80), dmin = h(b, 82)
                var q = b + 16
                var s = 0
                for _ in 0..<2 {
                    var shift: UInt8 = 0
                    for _ in 0..<4 {
                        for half in 0..<2 {
                            let v = sc[s]; s += 1
                            let dl = d * Float(v & 0xF), ml = dmin * Float(v >> 4)
                            let qq = q + 16 * half
                            for l in 0..<16 { y[l] = dl * Float((qq[l] >> shift) & 3) - ml }
                            y += 16
                        }
                        shift += 2
                    }
                    q += 32
                }
            }
        case .q3_K:
            // block_q3_K: hmask[32], qs[64], scales[12], d
            let scales = UnsafeMutablePointer<Float>.allocate(capacity: 16)
            defer { scales.deallocate() }
            for i in 0..<nb {
                let b = base + i * ts
                var y = dst + i * 256
                let hm = b, sc = b + 96, dAll = h(b, 108)
                for j in 0..<16 {
                    let low = j < 8 ? sc[j] & 0xF : sc[j - 8] >> 4
                    let high = (sc[8 + j % 4] >> UInt8(2 * (j / 4))) & 3
                    scales[j] = Float(Int(low | (high << 4)) - 32)
                }
                var q = b + 32
                var s = 0
                var m: UInt8 = 1
                for _ in 0..<2 {
                    var shift: UInt8 = 0
                    for _ in 0..<4 {
                        for half in 0..<2 {
                            let dl = dAll * scales[s]; s += 1
                            let qq = q + 16 * half, hh = hm + 16 * half
                            for l in 0..<16 {
                                let v = Int((qq[l] >> shift) & 3) - ((hh[l] & m) != 0 ? 0 : 4)
                                y[l] = dl * Float(v)
                            }
                            y += 16
                        }
                        shift += 2
                        m = m &<< 1
                    }
                    q += 32
                }
            }
        case .q4_K, .q5_K:
            // block_q4_K: d, dmin, scales[12], qs[128]; block_q5_K: d, dmin, scales[12], qh[32], qs[128]
            let five = type == .q5_K
            for i in 0..<nb {
                let b = base + i * ts
                var y = dst + i * 256
                let d = h(b, 0), dmin = h(b, 2)
                let sc = b + 4
                let qh = b + 16
                var q = five ? b + 48 : b + 16
                var u1: UInt8 = 1, u2: UInt8 = 2
                for jj in 0..<4 {
                    let (s1, m1) = scaleMinK4(2 * jj, sc), (s2, m2) = scaleMinK4(2 * jj + 1, sc)
                    let d1 = d * s1, mm1 = dmin * m1, d2 = d * s2, mm2 = dmin * m2
                    if five {
                        for l in 0..<32 { y[l] = d1 * Float((q[l] & 0xF) | ((qh[l] & u1) != 0 ? 16 : 0)) - mm1 }
                        for l in 0..<32 { y[l + 32] = d2 * Float((q[l] >> 4) | ((qh[l] & u2) != 0 ? 16 : 0)) - mm2 }
                    } else {
                        for l in 0..<32 { y[l] = d1 * Float(q[l] & 0xF) - mm1 }
                        for l in 0..<32 { y[l + 32] = d2 * Float(q[l] >> 4) - mm2 }
                    }
                    y += 64; q += 32
                    u1 = u1 &<< 2; u2 = u2 &<< 2
                }
            }
        case .q6_K:
            // block_q6_K: ql[128], qh[64], scales[16] (int8), d
            for i in 0..<nb {
                let b = base + i * ts
                var y = dst + i * 256
                let d = h(b, 208)
                var ql = b, qh = b + 128
                var sc = UnsafeRawPointer(b + 192).assumingMemoryBound(to: Int8.self)
                for _ in 0..<2 {
                    for s in 0..<2 {
                      let d1 = d * Float(sc[s]), d2 = d * Float(sc[s + 2]), d3 = d * Float(sc[s + 4]), d4 = d * Float(sc[s + 6])
                      for l in (16 * s)..<(16 * s + 16) {
                        let q1 = Int((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32
                        let q2 = Int((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32
                        let q3 = Int((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32
                        let q4 = Int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32
                        y[l] = d1 * Float(q1)
                        y[l + 32] = d2 * Float(q2)
                        y[l + 64] = d3 * Float(q3)
                        y[l + 96] = d4 * Float(q4)
                      }
                    }
                    y += 128; ql += 64; qh += 32; sc += 8
                }
            }
        default:
            preconditionFailure("ggml type \(type) cannot be dequantised (rejected when the file was opened)")
        }
    }
}

extension StoredTensor {
    /// Hands the pages of this tensor in a read-only file mapping back to the kernel (they are read again from the page
    /// cache on the next use). Does nothing for a tensor that is not in a mapping.
    public func releaseMappedPages() {
        guard let owner else { return }
        let file: MappedFile?
        if let f = owner as? MappedFile { file = f } else if let s = owner as? SafetensorsFile { file = s.file } else { file = nil }
        guard let file, file.size > 0 else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let lo = Int(bitPattern: data), hi = lo + byteCount
        let base = Int(bitPattern: file.base)
        guard lo >= base, hi <= base + file.size else { return }
        let start = (lo + page - 1) / page * page, end = hi / page * page
        if end > start { _ = madvise(UnsafeMutableRawPointer(bitPattern: start), end - start, Int32(MADV_DONTNEED)) }
    }
}
