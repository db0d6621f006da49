import Foundation
import WanTensor

/// A GGUF metadata value.
public indirect enum GGUFValue: Equatable, Sendable, CustomStringConvertible {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    case uint64(UInt64), int64(Int64), float32(Float), float64(Double), bool(Bool), string(String)
    case array([GGUFValue])

    /// The value as an integer when it is one (and fits).
    public var int: Int? {
        switch self {
        case .uint8(let v): return Int(v)
        case .int8(let v): return Int(v)
        case .uint16(let v): return Int(v)
        case .int16(let v): return Int(v)
        case .uint32(let v): return Int(v)
        case .int32(let v): return Int(v)
        case .uint64(let v): return v <= UInt64(Int.max) ? Int(v) : nil
        case .int64(let v): return Int(v)
        default: return nil
        }
    }
    /// The value as a floating-point number when it is one (or an integer).
    public var double: Double? {
        switch self {
        case .float32(let v): return Double(v)
        case .float64(let v): return v
        default: return int.map(Double.init)
        }
    }
    public var string: String? { if case .string(let s) = self { return s } else { return nil } }
    public var array: [GGUFValue]? { if case .array(let a) = self { return a } else { return nil } }

    public var description: String {
        switch self {
        case .uint8(let v): return "\(v)"
        case .int8(let v): return "\(v)"
        case .uint16(let v): return "\(v)"
        case .int16(let v): return "\(v)"
        case .uint32(let v): return "\(v)"
        case .int32(let v): return "\(v)"
        case .uint64(let v): return "\(v)"
        case .int64(let v): return "\(v)"
        case .float32(let v): return "\(v)"
        case .float64(let v): return "\(v)"
        case .bool(let v): return "\(v)"
        case .string(let s): return "\"\(s)\""
        case .array(let a):
            let shown = a.prefix(8).map(\.description).joined(separator: ", ")
            return "[\(shown)\(a.count > 8 ? ", … (\(a.count))" : "")]"
        }
    }
}

/// One tensor of a GGUF file.
public struct GGUFTensorInfo: Sendable, Equatable {
    public var name: String
    public var type: GGMLType
    /// Dims as stored, fastest-varying first (ggml `ne`).
    public var ne: [Int]
    /// Logical PyTorch-order shape: `ne` reversed, or `comfy.gguf.orig_shape.<name>` when present.
    public var shape: [Int]
    /// Byte offset from the start of the file.
    public var offset: Int
    public var byteCount: Int
    public var elementCount: Int { ne.reduce(1, *) }
}

/// A GGUF file (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md), v2 or v3, little-endian, mapped with
/// mmap. Every count, length and offset is checked against the bytes that remain before it is used.
public final class GGUFFile: @unchecked Sendable {
    public let path: String
    public let file: MappedFile
    public let version: UInt32
    public let alignment: Int
    /// File offset of the tensor data section.
    public let dataOffset: Int
    public let metadata: [String: GGUFValue]
    /// Metadata keys in file order.
    public let metadataKeys: [String]
    /// Tensors in file order.
    public let tensors: [GGUFTensorInfo]
    public let tensorIndex: [String: Int]

    /// The most dims a tensor may list (ggml has 4; converters write 5-D tensors such as Wan's patch embedding).
    public static let maxDims = 8
    /// Nesting limit of metadata arrays.
    static let maxArrayDepth = 4
    public static let origShapePrefix = "comfy.gguf.orig_shape."

    private struct Cursor {
        let path: String
        let base: UnsafeRawPointer
        let size: Int
        var pos: Int
        var remaining: Int { size - pos }

        mutating func need(_ n: Int, _ what: String) throws {
            if n < 0 || n > size - pos { throw GGUFError.truncated(path: path, what: what, offset: pos, need: n, fileBytes: size) }
        }
        mutating func read<T: FixedWidthInteger>(_: T.Type, _ what: String) throws -> T {
            try need(MemoryLayout<T>.size, what)
            let v = T(littleEndian: base.loadUnaligned(fromByteOffset: pos, as: T.self))
            pos += MemoryLayout<T>.size
            return v
        }
        mutating func string(_ what: String) throws -> String {
            let n = try read(UInt64.self, what + " length")
            guard n <= UInt64(remaining) else { throw GGUFError.stringTooLong(path: path, what: what, length: n, remainingBytes: remaining) }
            let bytes = UnsafeRawBufferPointer(start: base + pos, count: Int(n))
            pos += Int(n)
            return String(decoding: bytes, as: UTF8.self)
        }
    }

    public init(path: String) throws {
        self.path = path
        let file = try MappedFile(path: path)
        self.file = file
        var c = Cursor(path: path, base: file.base, size: file.size, pos: 0)
        guard file.size >= 4, file.base.loadUnaligned(as: UInt32.self) == UInt32(littleEndian: 0x4655_4747) else {
            throw GGUFError.notGGUF(path: path)
        }
        c.pos = 4
        version = try c.read(UInt32.self, "the version")
        guard version == 2 || version == 3 else { throw GGUFError.unsupportedVersion(path: path, version: version) }
        let tensorCount = try c.read(UInt64.self, "the tensor count")
        let kvCount = try c.read(UInt64.self, "the metadata count")
        // A metadata entry takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info 8 + 4 + 8 + 4 + 8.
        guard kvCount <= UInt64(c.remaining / 13) else {
            throw GGUFError.countTooLarge(path: path, what: "metadata entry", count: kvCount, remainingBytes: c.remaining)
        }
        var metadata: [String: GGUFValue] = [:]
        var keys: [String] = []
        for _ in 0..<Int(kvCount) {
            let key = try c.string("a metadata key")
            let type = try c.read(UInt32.self, "the type of '\(key)'")
            let value = try Self.value(&c, type: type, key: key, depth: 0)
            if metadata[key] != nil { throw GGUFError.duplicateKey(path: path, key: key) }
            metadata[key] = value
            keys.append(key)
        }
        self.metadata = metadata
        metadataKeys = keys
        var align = 32
        if let a = metadata["general.alignment"] {
            guard let v = a.int, v > 0, v <= 1 << 20, v & (v - 1) == 0 else { throw GGUFError.badAlignment(path: path, value: a.description) }
            align = v
        }
        alignment = align
        guard tensorCount <= UInt64(c.remaining / 32) else {
            throw GGUFError.countTooLarge(path: path, what: "tensor", count: tensorCount, remainingBytes: c.remaining)
        }
        struct Raw { var name: String; var ne: [Int]; var type: GGMLType; var offset: UInt64 }
        var raws: [Raw] = []
        raws.reserveCapacity(Int(tensorCount))
        for _ in 0..<Int(tensorCount) {
            let name = try c.string("a tensor name")
            let nd = try c.read(UInt32.self, "the dim count of '\(name)'")
            guard nd >= 1, nd <= UInt32(Self.maxDims) else {
                throw GGUFError.badDims(path: path, tensor: name, detail: "\(nd) dims (1 to \(Self.maxDims) allowed)")
            }
            var ne: [Int] = []
            var elements = 1
            for _ in 0..<Int(nd) {
                let d = try c.read(UInt64.self, "a dim of '\(name)'")
                // No tensor can have more elements than 8x the file's bytes (the densest type packs ~0.4 bytes/element).
                guard d <= UInt64(Int32.max) * 64 else { throw GGUFError.badDims(path: path, tensor: name, detail: "dimension \(d) is impossibly large") }
                let (p, o) = elements.multipliedReportingOverflow(by: Int(d))
                guard !o, p <= Int(Int32.max) * 64 else { throw GGUFError.badDims(path: path, tensor: name, detail: "\(ne + [Int(d)]) has too many elements") }
                elements = p
                ne.append(Int(d))
            }
            let rawType = try c.read(UInt32.self, "the type of '\(name)'")
            guard let type = GGMLType(rawValue: rawType) else { throw GGUFError.unknownType(path: path, tensor: name, type: rawType) }
            let offset = try c.read(UInt64.self, "the offset of '\(name)'")
            raws.append(Raw(name: name, ne: ne, type: type, offset: offset))
        }
        let dataStart = (c.pos + align - 1) / align * align
        let dataBytes = max(0, file.size - dataStart)
        if !raws.isEmpty && dataStart > file.size {
            throw GGUFError.truncated(path: path, what: "the tensor data", offset: c.pos, need: dataStart - c.pos, fileBytes: file.size)
        }
        dataOffset = dataStart
        var infos: [GGUFTensorInfo] = []
        var index: [String: Int] = [:]
        for r in raws {
            guard index[r.name] == nil else { throw GGUFError.duplicateTensor(path: path, tensor: r.name) }
            let bs = r.type.blockSize
            guard r.ne[0] % bs == 0 else {
                throw GGUFError.typeSizeMismatch(path: path, tensor: r.name, detail: "type \(r.type) stores blocks of \(bs) elements but the row length (first dim) is \(r.ne[0])")
            }
            let elements = r.ne.reduce(1, *)
            let bytes = elements / bs * r.type.typeSize
            guard r.offset <= UInt64(dataBytes), UInt64(bytes) <= UInt64(dataBytes) - r.offset else {
                throw GGUFError.offsetOutOfRange(path: path, tensor: r.name, offset: r.offset, bytes: bytes, dataBytes: dataBytes)
            }
            var shape = Array(r.ne.reversed())
            if let orig = metadata[Self.origShapePrefix + r.name] {
                guard let arr = orig.array else { throw GGUFError.badOrigShape(path: path, tensor: r.name, detail: "\(orig) is not an array") }
                var s: [Int] = []
                var n = 1
                for v in arr {
                    guard let d = v.int, d >= 0, d <= Int(Int32.max) * 64 else { throw GGUFError.badOrigShape(path: path, tensor: r.name, detail: "\(orig) holds a value that is not a dimension") }
                    let (p, o) = n.multipliedReportingOverflow(by: d)
                    guard !o else { throw GGUFError.badOrigShape(path: path, tensor: r.name, detail: "\(orig) is impossibly large") }
                    n = p; s.append(d)
                }
                guard n == elements, s.count <= Self.maxDims else {
                    throw GGUFError.badOrigShape(path: path, tensor: r.name, detail: "\(s) holds \(n) elements but the tensor stores \(elements) (dims \(r.ne))")
                }
                shape = s
            }
            index[r.name] = infos.count
            infos.append(GGUFTensorInfo(name: r.name, type: r.type, ne: r.ne, shape: shape, offset: dataStart + Int(r.offset), byteCount: bytes))
        }
        // Two tensors sharing bytes means a type claims more bytes than the writer gave it.
        let spans = infos.filter { $0.byteCount > 0 }.sorted { $0.offset < $1.offset }
        for i in spans.indices.dropFirst() where spans[i].offset < spans[i - 1].offset + spans[i - 1].byteCount {
            let a = spans[i - 1]
            throw GGUFError.typeSizeMismatch(path: path, tensor: a.name, detail: "as \(a.type) with dims \(a.ne) it needs \(a.byteCount) bytes, which run into tensor '\(spans[i].name)' at \(spans[i].offset - dataStart)")
        }
        tensors = infos
        tensorIndex = index
    }

    private static func value(_ c: inout Cursor, type: UInt32, key: String, depth: Int) throws -> GGUFValue {
        switch type {
        case 0: return .uint8(try c.read(UInt8.self, "'\(key)'"))
        case 1: return .int8(try c.read(Int8.self, "'\(key)'"))
        case 2: return .uint16(try c.read(UInt16.self, "'\(key)'"))
        case 3: return .int16(try c.read(Int16.self, "'\(key)'"))
        case 4: return .uint32(try c.read(UInt32.self, "'\(key)'"))
        case 5: return .int32(try c.read(Int32.self, "'\(key)'"))
        case 6: return .float32(Float(bitPattern: try c.read(UInt32.self, "'\(key)'")))
        case 7: return .bool(try c.read(UInt8.self, "'\(key)'") != 0)
        case 8: return .string(try c.string("'\(key)'"))
        case 9:
            guard depth < maxArrayDepth else { throw GGUFError.badValueType(path: c.path, key: key, type: type) }
            let elemType = try c.read(UInt32.self, "the element type of '\(key)'")
            let count = try c.read(UInt64.self, "the element count of '\(key)'")
            let minSize: Int
            switch elemType {
            case 0, 1, 7: minSize = 1
            case 2, 3: minSize = 2
            case 4, 5, 6: minSize = 4
            case 10, 11, 12: minSize = 8
            case 8: minSize = 8
            case 9: minSize = 12
            default: throw GGUFError.badValueType(path: c.path, key: key, type: elemType)
            }
            guard count <= UInt64(c.remaining / minSize) else {
                throw GGUFError.countTooLarge(path: c.path, what: "array '\(key)' element", count: count, remainingBytes: c.remaining)
            }
            var a: [GGUFValue] = []
            a.reserveCapacity(Int(count))
            for _ in 0..<Int(count) { a.append(try value(&c, type: elemType, key: key, depth: depth + 1)) }
            return .array(a)
        case 10: return .uint64(try c.read(UInt64.self, "'\(key)'"))
        case 11: return .int64(try c.read(Int64.self, "'\(key)'"))
        case 12: return .float64(Double(bitPattern: try c.read(UInt64.self, "'\(key)'")))
        default: throw GGUFError.badValueType(path: c.path, key: key, type: type)
        }
    }

    public func tensor(_ name: String) -> GGUFTensorInfo? { tensorIndex[name].map { tensors[$0] } }
}

/// A GGUF file as a weight source (city96's Wan GGUFs: official names, optionally under ComfyUI's prefix).
/// Quantised tensors dequantise to float32 on `float32`, or stay packed through `stored`.
public final class GGUFSource: WeightSource, @unchecked Sendable {
    public let file: GGUFFile
    private var index: [String: GGUFTensorInfo] = [:]

    public init(path: String) throws {
        file = try GGUFFile(path: path)
        let prefix = commonWeightPrefix(file.tensors.map(\.name))
        for t in file.tensors {
            guard t.type.canDequantize else { throw GGUFError.unsupportedType(path: path, tensor: t.name, type: t.type.description) }
            let name = t.name.hasPrefix(prefix) ? String(t.name.dropFirst(prefix.count)) : t.name
            if index[name] != nil { throw GGUFError.duplicateTensor(path: path, tensor: name) }
            index[name] = t
        }
    }

    public var label: String { file.path }
    public var names: [String] { Array(index.keys) }

    /// The dtype reported in `TensorInfo`: the element type for plain types, `.u8` (raw bytes) for block types;
    /// `stored(_:)` tells the real type.
    static func dtype(_ t: GGMLType) -> DType {
        switch t {
        case .f32: return .f32
        case .f16: return .f16
        case .bf16: return .bf16
        case .f64: return .f64
        case .i8: return .i8
        case .i16: return .i16
        case .i32: return .i32
        case .i64: return .i64
        default: return .u8
        }
    }

    public func info(_ name: String) -> TensorInfo? {
        guard let t = index[name] else { return nil }
        return TensorInfo(name: name, dtype: Self.dtype(t.type), shape: t.shape, offset: t.offset, byteCount: t.byteCount)
    }

    public func stored(_ name: String) throws -> StoredTensor {
        guard let t = index[name] else { throw WeightError.missingKey(source: label, key: name, expectedShape: nil) }
        let type: StorageType
        switch t.type {
        case .f32, .f16, .bf16, .f64, .i8, .i16, .i32, .i64: type = .dtype(Self.dtype(t.type))
        default: type = .ggml(t.type)
        }
        return StoredTensor(name: name, type: type, shape: t.shape, data: file.file.base + t.offset, byteCount: t.byteCount,
                            scale: nil, owner: file)
    }

    public func float32(_ name: String) throws -> Tensor { try stored(name).float32() }
}

/// The ComfyUI-style prefix every weight name shares ("model.diffusion_model." or "diffusion_model."), or "".
/// Marker tensors (`scaled_fp8`) are not counted.
func commonWeightPrefix(_ names: [String]) -> String {
    let weights = names.filter { $0 != "scaled_fp8" && !$0.hasSuffix(".scaled_fp8") }
    guard !weights.isEmpty else { return "" }
    for p in ["model.diffusion_model.", "diffusion_model."] where weights.allSatisfy({ $0.hasPrefix(p) }) { return p }
    return ""
}
