import Foundation
import WanTensor

/// A set of named tensors, whatever the files behind it. Names are canonical (the official Wan checkpoint names);
/// a layout (ComfyUI prefix, diffusers names, …) is a `WeightSource` that renames another one.
public protocol WeightSource: AnyObject, Sendable {
    /// What to call the source in messages (file path or folder).
    var label: String { get }
    /// Every canonical tensor name.
    var names: [String] { get }
    func info(_ name: String) -> TensorInfo?
    /// The tensor as float32: a view into the mapping when it is stored as aligned float32, else a converted copy.
    func float32(_ name: String) throws -> Tensor
    /// The tensor as stored (type, logical shape, pointer into the mapping, optional scale), not converted: for
    /// dequantising weight tiles just before a GEMM. The default converts with `float32` and wraps the result.
    func stored(_ name: String) throws -> StoredTensor
}

extension WeightSource {
    public func stored(_ name: String) throws -> StoredTensor {
        let t = try float32(name)
        return StoredTensor(name: name, type: .dtype(.f32), shape: t.shape, data: UnsafeRawPointer(t.data),
                            byteCount: t.count * 4, scale: nil, owner: t)
    }
}

/// One or more safetensors files seen as one state dict (a model split over files, or the official FLF2V pair).
public final class SafetensorsSource: WeightSource, @unchecked Sendable {
    public let files: [SafetensorsFile]
    private var index: [String: (file: SafetensorsFile, info: TensorInfo)] = [:]
    private let prefix: String

    /// Opens the files; a key present in two of them is an error. Keys starting with `stripPrefix` are seen
    /// without it (ComfyUI's `model.diffusion_model.`).
    public init(paths: [String], stripPrefix: String? = nil) throws {
        files = try paths.map { try SafetensorsFile(path: $0) }
        var detected = stripPrefix ?? ""
        if stripPrefix == nil {
            let comfy = "model.diffusion_model."
            let all = files.flatMap { $0.tensors.keys }
            if !all.isEmpty && all.allSatisfy({ $0.hasPrefix(comfy) }) { detected = comfy }
        }
        prefix = detected
        for f in files {
            for (key, info) in f.tensors {
                let name = key.hasPrefix(prefix) ? String(key.dropFirst(prefix.count)) : key
                if let other = index[name] { throw WeightError.duplicateKey(key: key, first: other.file.path, second: f.path) }
                index[name] = (f, info)
            }
        }
    }

    public convenience init(path: String) throws { try self.init(paths: [path]) }

    public var label: String { files.map(\.path).joined(separator: " + ") }
    public var names: [String] { Array(index.keys) }
    public func info(_ name: String) -> TensorInfo? { index[name]?.info }

    /// The file and header entry holding `name`, nil when absent.
    public func location(_ name: String) -> (file: SafetensorsFile, info: TensorInfo)? { index[name] }

    public func stored(_ name: String) throws -> StoredTensor {
        guard let (file, info) = index[name] else { throw WeightError.missingKey(source: label, key: name, expectedShape: nil) }
        // Integer tensors convert too (exact below 2^24): token ids and timesteps in golden cases.
        return StoredTensor(name: name, type: .dtype(info.dtype), shape: info.shape, data: file.pointer(info),
                            byteCount: info.byteCount, scale: nil, owner: file)
    }

    public func float32(_ name: String) throws -> Tensor {
        guard let (file, info) = index[name] else { throw WeightError.missingKey(source: label, key: name, expectedShape: nil) }
        // Integer tensors convert too (exact below 2^24): token ids and timesteps in golden cases.
        let src = file.pointer(info)
        if info.dtype == .f32 && Int(bitPattern: src) % 4 == 0 {
            return Tensor(borrowing: UnsafeMutablePointer(mutating: src.assumingMemoryBound(to: Float.self)), shape: info.shape, owner: file)
        }
        let t = Tensor(uninitialized: info.shape)
        FloatConversion.toF32(src, dtype: info.dtype, count: info.elementCount, into: t.data)
        return t
    }
}

/// A source that makes any tensor a model asks for (random weights for benchmarks): the binder asks it for
/// names it does not list, with the shape the model expects.
public protocol SynthesizingWeightSource: WeightSource {
    func synthesize(_ name: String, shape: [Int]) throws -> Tensor
}

/// Strict binding of a source to a model: every tensor the model asks for must exist with the expected shape, and
/// every tensor of the source must be asked for (checked by `finish()`).
public final class WeightBinder {
    public let source: WeightSource
    private var used = Set<String>()

    public init(_ source: WeightSource) { self.source = source }

    public func has(_ name: String) -> Bool { source.info(name) != nil }
    public func shape(_ name: String) -> [Int]? { source.info(name)?.shape }

    /// The tensor `name`, which must have `shape` (element count equal and dims equal).
    public func tensor(_ name: String, _ shape: [Int]) throws -> Tensor {
        guard let info = source.info(name) else {
            if let synth = source as? SynthesizingWeightSource { return try synth.synthesize(name, shape: shape) }
            throw WeightError.missingKey(source: source.label, key: name, expectedShape: shape)
        }
        guard info.shape == shape else { throw WeightError.shapeMismatch(source: source.label, key: name, expected: shape, found: info.shape) }
        used.insert(name)
        return try source.float32(name)
    }

    /// Marks names that the model knowingly ignores (markers, buffers).
    public func ignore(_ name: String) { if has(name) { used.insert(name) } }

    /// Throws when the source holds tensors the model never used.
    public func finish() throws {
        let extra = source.names.filter { !used.contains($0) }.sorted()
        if !extra.isEmpty { throw WeightError.unexpectedKeys(source: source.label, keys: extra) }
    }
}
