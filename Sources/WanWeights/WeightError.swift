/// Everything that can be wrong with a weight file or its binding to a model. Each case names the file, the
/// tensor and what to do.
public enum WeightError: Error, CustomStringConvertible, Equatable {
    case fileNotFound(path: String)
    case cannotOpen(path: String, reason: String)
    case truncated(path: String, detail: String)
    case headerTooLarge(path: String, headerBytes: UInt64, fileBytes: Int)
    case headerNotJSON(path: String, detail: String)
    case badEntry(path: String, key: String, detail: String)
    case unknownDType(path: String, key: String, dtype: String)
    case offsetsOutOfRange(path: String, key: String, begin: Int, end: Int, dataBytes: Int)
    case overlapping(path: String, first: String, second: String)
    case byteCountMismatch(path: String, key: String, shape: [Int], dtype: String, expectedBytes: Int, foundBytes: Int)
    case duplicateKey(key: String, first: String, second: String)
    case missingKey(source: String, key: String, expectedShape: [Int]?)
    case unexpectedKeys(source: String, keys: [String])
    case shapeMismatch(source: String, key: String, expected: [Int], found: [Int])
    case unsupportedDType(source: String, key: String, dtype: String)
    case badConfig(source: String, detail: String)

    /// A `badConfig` for a configuration value no model of that kind has (`part`: "model", "VAE", …), saying where
    /// configurations come from and what to do about it.
    public static func impossibleConfig(source: String, part: String, _ what: String) -> WeightError {
        .badConfig(source: source, detail: "the \(part) configuration has \(what) (from the checkpoint's configuration (config.json beside it, or a GGUF file's metadata) or its shapes; fix or remove that configuration)")
    }

    public var description: String {
        switch self {
        case .fileNotFound(let p):
            return "weight file not found: \(p) (check the path; pass the .safetensors file or the model folder)"
        case .cannotOpen(let p, let r):
            return "cannot open \(p): \(r)"
        case .truncated(let p, let d):
            return "\(p) is truncated or not a safetensors file: \(d) (re-download the file)"
        case .headerTooLarge(let p, let h, let f):
            return "\(p): the safetensors header claims \(h) bytes but the file has only \(f) bytes (corrupt or not a safetensors file; re-download it)"
        case .headerNotJSON(let p, let d):
            return "\(p): the safetensors header is not valid JSON (\(d)); the file is corrupt or not a safetensors file"
        case .badEntry(let p, let k, let d):
            return "\(p): tensor '\(k)' has a malformed header entry: \(d)"
        case .unknownDType(let p, let k, let d):
            return "\(p): tensor '\(k)' has unknown dtype '\(d)' (supported: F32, F16, BF16, F8_E4M3, F8_E5M2, F64, I64, I32, I16, I8, U8, BOOL)"
        case .offsetsOutOfRange(let p, let k, let b, let e, let n):
            return "\(p): tensor '\(k)' has data_offsets [\(b), \(e)] outside the \(n)-byte data section (truncated or corrupt file; re-download it)"
        case .overlapping(let p, let a, let b):
            return "\(p): tensors '\(a)' and '\(b)' have overlapping data (corrupt or hostile file)"
        case .byteCountMismatch(let p, let k, let s, let d, let e, let f):
            return "\(p): tensor '\(k)' of shape \(s) and dtype \(d) needs \(e) bytes but its data_offsets span \(f) bytes (corrupt file)"
        case .duplicateKey(let k, let a, let b):
            return "tensor '\(k)' appears in both \(a) and \(b); pass only one of the files"
        case .missingKey(let s, let k, let shape):
            return "\(s): missing tensor '\(k)'" + (shape.map { " (expected shape \($0))" } ?? "") + "; is this the right model file for the task?"
        case .unexpectedKeys(let s, let keys):
            let shown = keys.prefix(5).joined(separator: ", ")
            return "\(s): \(keys.count) unexpected tensor(s) not used by the model: \(shown)\(keys.count > 5 ? ", …" : ""); the file is for another model or layout"
        case .shapeMismatch(let s, let k, let e, let f):
            return "\(s): tensor '\(k)' has shape \(f) but the model expects \(e); the file belongs to another model size"
        case .unsupportedDType(let s, let k, let d):
            return "\(s): tensor '\(k)' has dtype \(d), which cannot be used as model weights"
        case .badConfig(let s, let d):
            return "\(s): \(d)"
        }
    }
}
