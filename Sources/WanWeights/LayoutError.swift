/// What can be wrong with a GGUF file. Every case names the file; hostile input ends here, never in a crash.
public enum GGUFError: Error, CustomStringConvertible, Equatable {
    case notGGUF(path: String)
    case unsupportedVersion(path: String, version: UInt32)
    /// A read of `need` bytes at `offset` runs past the end of the file.
    case truncated(path: String, what: String, offset: Int, need: Int, fileBytes: Int)
    /// A count (tensors, metadata entries, array elements) that cannot fit in the bytes that remain.
    case countTooLarge(path: String, what: String, count: UInt64, remainingBytes: Int)
    case stringTooLong(path: String, what: String, length: UInt64, remainingBytes: Int)
    case badValueType(path: String, key: String, type: UInt32)
    case badAlignment(path: String, value: String)
    case badDims(path: String, tensor: String, detail: String)
    case duplicateTensor(path: String, tensor: String)
    case duplicateKey(path: String, key: String)
    case unknownType(path: String, tensor: String, type: UInt32)
    case unsupportedType(path: String, tensor: String, type: String)
    /// The tensor's type does not fit its dims or the bytes between it and the next tensor.
    case typeSizeMismatch(path: String, tensor: String, detail: String)
    case offsetOutOfRange(path: String, tensor: String, offset: UInt64, bytes: Int, dataBytes: Int)
    case badOrigShape(path: String, tensor: String, detail: String)

    public var description: String {
        switch self {
        case .notGGUF(let p):
            return "\(p) is not a GGUF file (it does not start with the magic 'GGUF')"
        case .unsupportedVersion(let p, let v):
            return "\(p): GGUF version \(v) is not supported (WanKit reads little-endian GGUF v2 and v3; re-convert the file)"
        case .truncated(let p, let w, let o, let n, let f):
            return "\(p) is truncated: reading \(w) needs \(n) bytes at offset \(o) but the file has \(f) bytes (re-download it)"
        case .countTooLarge(let p, let w, let c, let r):
            return "\(p): \(w) count \(c) cannot fit in the \(r) bytes that remain (corrupt or hostile file)"
        case .stringTooLong(let p, let w, let l, let r):
            return "\(p): \(w) claims a string of \(l) bytes but only \(r) bytes remain (corrupt or hostile file)"
        case .badValueType(let p, let k, let t):
            return "\(p): metadata '\(k)' has unknown value type \(t) (corrupt file or a newer GGUF revision)"
        case .badAlignment(let p, let v):
            return "\(p): general.alignment \(v) is not a positive power of two (corrupt file)"
        case .badDims(let p, let t, let d):
            return "\(p): tensor '\(t)' has bad dimensions: \(d)"
        case .duplicateTensor(let p, let t):
            return "\(p): tensor '\(t)' is listed twice (corrupt file)"
        case .duplicateKey(let p, let k):
            return "\(p): metadata key '\(k)' is listed twice (corrupt file)"
        case .unknownType(let p, let t, let ty):
            return "\(p): tensor '\(t)' has unknown ggml type \(ty) (corrupt file or a newer ggml type)"
        case .unsupportedType(let p, let t, let ty):
            return "\(p): tensor '\(t)' is \(ty), which WanKit cannot dequantise (supported: \(GGMLType.dequantizable.map(\.description).joined(separator: ", ")); use another quantisation of the model)"
        case .typeSizeMismatch(let p, let t, let d):
            return "\(p): tensor '\(t)': \(d) (corrupt file)"
        case .offsetOutOfRange(let p, let t, let o, let n, let d):
            return "\(p): tensor '\(t)' at data offset \(o) with \(n) bytes lies outside the \(d)-byte data section (truncated or corrupt file; re-download it)"
        case .badOrigShape(let p, let t, let d):
            return "\(p): comfy.gguf.orig_shape of tensor '\(t)': \(d)"
        }
    }
}

/// What can be wrong with a model folder or a layout (sharded, diffusers, fp8_scaled).
public enum LayoutError: Error, CustomStringConvertible, Equatable {
    case notFound(path: String, expected: String)
    case unknownLayout(path: String, detail: String)
    case badJSON(path: String, detail: String)
    case missingShard(index: String, shard: String)
    case keyNotInShard(index: String, key: String, shard: String)
    case badScale(source: String, key: String, shape: [Int], detail: String)
    case orphanScale(source: String, key: String)
    case badDiffusersConfig(path: String, detail: String)

    public var description: String {
        switch self {
        case .notFound(let p, let e):
            return "\(p) does not exist; expected \(e)"
        case .unknownLayout(let p, let d):
            return "\(p): unknown weight layout: \(d). Expected a .safetensors file (official names, ComfyUI prefix or fp8_scaled), a .gguf file, a folder with diffusion_pytorch_model.safetensors(.index.json) + config.json, or a diffusers folder (transformer/ with a WanTransformer3DModel or WanVACETransformer3DModel config.json)"
        case .badJSON(let p, let d):
            return "\(p) is not valid: \(d)"
        case .missingShard(let i, let s):
            return "\(i) names shard \(s), which is not in the folder (an incomplete download? fetch every diffusion_pytorch_model-*-of-*.safetensors)"
        case .keyNotInShard(let i, let k, let s):
            return "\(i) says tensor '\(k)' is in \(s), but that shard does not hold it (mismatched index and shards; re-download the folder)"
        case .badScale(let s, let k, let shape, let d):
            return "\(s): scale tensor '\(k)' has shape \(shape): \(d)"
        case .orphanScale(let s, let k):
            return "\(s): scale tensor '\(k)' has no weight beside it (corrupt fp8_scaled file)"
        case .badDiffusersConfig(let p, let d):
            return "\(p): \(d)"
        }
    }
}
