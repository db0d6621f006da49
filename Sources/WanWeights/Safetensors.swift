import Foundation
import WanTensor

/// Where one stored tensor lives.
public struct TensorInfo: Sendable, Equatable {
    public var name: String
    public var dtype: DType
    public var shape: [Int]
    /// Byte offset from the start of the file.
    public var offset: Int
    public var byteCount: Int
    public var elementCount: Int { shape.reduce(1, *) }
    public init(name: String, dtype: DType, shape: [Int], offset: Int, byteCount: Int) {
        self.name = name; self.dtype = dtype; self.shape = shape; self.offset = offset; self.byteCount = byteCount
    }
}

/// A safetensors file (https://github.com/huggingface/safetensors format): 8-byte little-endian header length,
/// a JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {...}}, then the data. Mapped with mmap;
/// every header field is validated before any tensor is read.
public final class SafetensorsFile: @unchecked Sendable {
    public let path: String
    public let file: MappedFile
    public let tensors: [String: TensorInfo]
    public let metadata: [String: String]
    /// The safetensors format caps the header at 100 MB.
    public static let maxHeaderBytes: UInt64 = 100_000_000

    public init(path: String) throws {
        self.path = path
        let file = try MappedFile(path: path)
        self.file = file
        guard file.size >= 8 else { throw WeightError.truncated(path: path, detail: "the file has \(file.size) bytes, fewer than the 8-byte header length") }
        let headerLength = UInt64(littleEndian: file.base.loadUnaligned(as: UInt64.self))
        guard headerLength <= UInt64(file.size - 8) else {
            throw WeightError.headerTooLarge(path: path, headerBytes: headerLength, fileBytes: file.size)
        }
        guard headerLength <= Self.maxHeaderBytes else {
            throw WeightError.headerNotJSON(path: path, detail: "header of \(headerLength) bytes exceeds the 100 MB limit of the format")
        }
        let header = Data(bytes: file.base + 8, count: Int(headerLength))
        let json: Any
        do { json = try JSONSerialization.jsonObject(with: header) } catch {
            // JSONSerialization's own words ("Unexpected end of file around character 1234."), else its summary.
            let ns = error as NSError
            throw WeightError.headerNotJSON(path: path, detail: (ns.userInfo[NSDebugDescriptionErrorKey] as? String) ?? ns.localizedDescription)
        }
        guard let dict = json as? [String: Any] else { throw WeightError.headerNotJSON(path: path, detail: "the header is not a JSON object") }
        let dataStart = 8 + Int(headerLength)
        let dataBytes = file.size - dataStart
        var tensors: [String: TensorInfo] = [:]
        var metadata: [String: String] = [:]
        var spans: [(begin: Int, end: Int, name: String)] = []
        for (key, value) in dict {
            if key == "__metadata__" {
                if let m = value as? [String: Any] { for (k, v) in m { metadata[k] = "\(v)" } }
                continue
            }
            guard let entry = value as? [String: Any] else { throw WeightError.badEntry(path: path, key: key, detail: "entry is not an object") }
            guard let dtypeName = entry["dtype"] as? String else { throw WeightError.badEntry(path: path, key: key, detail: "missing dtype") }
            guard let dtype = DType(rawValue: dtypeName) else { throw WeightError.unknownDType(path: path, key: key, dtype: dtypeName) }
            guard let shapeAny = entry["shape"] as? [Any] else { throw WeightError.badEntry(path: path, key: key, detail: "missing shape") }
            var shape: [Int] = []
            var elements = 1
            for d in shapeAny {
                guard let n = Self.integer(d), n >= 0 else { throw WeightError.badEntry(path: path, key: key, detail: "shape \(shapeAny) has a dimension that is not a non-negative integer") }
                shape.append(n)
                let (p, o) = elements.multipliedReportingOverflow(by: n)
                guard !o, p <= Int(Int32.max) * 64 else { throw WeightError.badEntry(path: path, key: key, detail: "shape \(shapeAny) is impossibly large") }
                elements = p
            }
            guard let offs = entry["data_offsets"] as? [Any], offs.count == 2,
                  let begin = Self.integer(offs[0]), let end = Self.integer(offs[1]) else {
                throw WeightError.badEntry(path: path, key: key, detail: "data_offsets must be two integers")
            }
            guard begin >= 0, end >= begin, end <= dataBytes else {
                throw WeightError.offsetsOutOfRange(path: path, key: key, begin: begin, end: end, dataBytes: dataBytes)
            }
            let expected = elements * dtype.byteSize
            guard expected == end - begin else {
                throw WeightError.byteCountMismatch(path: path, key: key, shape: shape, dtype: dtypeName, expectedBytes: expected, foundBytes: end - begin)
            }
            tensors[key] = TensorInfo(name: key, dtype: dtype, shape: shape, offset: dataStart + begin, byteCount: end - begin)
            if end > begin { spans.append((begin, end, key)) }
        }
        spans.sort { $0.begin < $1.begin }
        for i in spans.indices.dropFirst() where spans[i].begin < spans[i - 1].end {
            throw WeightError.overlapping(path: path, first: spans[i - 1].name, second: spans[i].name)
        }
        self.tensors = tensors
        self.metadata = metadata
    }

    private static func integer(_ v: Any) -> Int? {
        if let n = v as? Int { return n }
        return nil
    }

    /// Raw bytes of a tensor inside the mapping.
    public func pointer(_ info: TensorInfo) -> UnsafeRawPointer { file.base + info.offset }
}
