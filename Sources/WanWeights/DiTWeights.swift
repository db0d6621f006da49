import Foundation
import WanTensor

/// A DiT checkpoint opened whatever its layout: a source under the official names, the official constructor
/// arguments its files state (config.json; nil when there is none: infer them from the shapes) and the layout.
public struct DiTWeights {
    public let source: WeightSource
    /// Official `WanModel` constructor arguments (snake_case) found beside the weights; nil when none.
    public let arguments: [String: Any]?
    /// "official", "comfy-prefix", "comfy-fp8-scaled", "official-sharded", "diffusers" or "gguf".
    public let layout: String

    public init(source: WeightSource, arguments: [String: Any]?, layout: String) {
        self.source = source; self.arguments = arguments; self.layout = layout
    }

    /// Every layout `openDiTWeights` tells apart.
    public static let layouts: Set<String> = ["official", "comfy-prefix", "comfy-fp8-scaled", "official-sharded", "diffusers", "gguf"]
}

/// Opens a Wan DiT checkpoint from a file or folder, detecting its layout:
/// - a `.gguf` file (city96 layout; F32/F16/BF16, Q4_0…Q8_0 and K-quants);
/// - a `.safetensors` file: official names, ComfyUI's `model.diffusion_model.` prefix, ComfyUI fp8_scaled, or
///   diffusers names (config.json beside it is read when present);
/// - a folder with `diffusion_pytorch_model.safetensors.index.json` and its shards (+ config.json);
/// - a diffusers folder (one holding `transformer/`, or one whose config.json has `_class_name`
///   WanTransformer3DModel);
/// - a folder with `diffusion_pytorch_model.safetensors` + config.json, or holding a single .safetensors/.gguf.
public func openDiTWeights(path: String) throws -> DiTWeights {
    let fm = FileManager.default
    var isDir: ObjCBool = false
    guard fm.fileExists(atPath: path, isDirectory: &isDir) else {
        throw LayoutError.notFound(path: path, expected: "a DiT checkpoint: a .safetensors or .gguf file, or a model folder")
    }
    if isDir.boolValue { return try DiTLayouts.openFolder(path) }
    return try DiTLayouts.openFile(path)
}

/// Opens several files as one checkpoint (e.g. the official FLF2V pair, whose second file holds only
/// `img_emb.emb_pos`). A tensor present in two of them is an error.
public func openDiTWeights(paths: [String]) throws -> DiTWeights {
    guard let first = paths.first else { throw LayoutError.notFound(path: "", expected: "at least one weight file or folder") }
    if paths.count == 1 { return try openDiTWeights(path: first) }
    let parts = try paths.map { try openDiTWeights(path: $0) }
    var args: [String: Any]? = nil
    for p in parts { if let a = p.arguments { args = (args ?? [:]).merging(a) { old, _ in old } } }
    return DiTWeights(source: try MergedSource(parts.map(\.source)), arguments: args, layout: parts[0].layout)
}

/// Several sources as one; a name in two of them is an error.
public final class MergedSource: WeightSource, @unchecked Sendable {
    public let sources: [WeightSource]
    private var index: [String: Int] = [:]

    public init(_ sources: [WeightSource]) throws {
        self.sources = sources
        for (i, s) in sources.enumerated() {
            for n in s.names {
                if let j = index[n] { throw WeightError.duplicateKey(key: n, first: sources[j].label, second: s.label) }
                index[n] = i
            }
        }
    }

    public var label: String { sources.map(\.label).joined(separator: " + ") }
    public var names: [String] { Array(index.keys) }
    public func info(_ name: String) -> TensorInfo? { index[name].flatMap { sources[$0].info(name) } }
    public func float32(_ name: String) throws -> Tensor {
        guard let i = index[name] else { throw WeightError.missingKey(source: label, key: name, expectedShape: nil) }
        return try sources[i].float32(name)
    }
    public func stored(_ name: String) throws -> StoredTensor {
        guard let i = index[name] else { throw WeightError.missingKey(source: label, key: name, expectedShape: nil) }
        return try sources[i].stored(name)
    }
}

enum DiTLayouts {
    static func isDirectory(_ p: String) -> Bool {
        var d: ObjCBool = false
        return FileManager.default.fileExists(atPath: p, isDirectory: &d) && d.boolValue
    }

    static func magic(_ path: String) -> [UInt8] {
        guard let h = FileHandle(forReadingAtPath: path) else { return [] }
        defer { try? h.close() }
        return [UInt8](h.readData(ofLength: 4))
    }

    /// Official constructor arguments of a config.json (keys starting with "_" dropped), or the diffusers ones
    /// translated.
    static func arguments(config path: String) throws -> [String: Any]? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        return try arguments(try readJSONObject(path, what: "config.json"), path: path)
    }

    /// The same for a config already read from `path`.
    static func arguments(_ c: [String: Any], path: String) throws -> [String: Any] {
        if isDiffusers(c) { return try DiffusersWan.officialArguments(c, path: path) }
        return c.filter { !$0.key.hasPrefix("_") }
    }

    static func isDiffusers(_ c: [String: Any]) -> Bool {
        (c["_class_name"] as? String).map(DiffusersWan.classNames.contains) ?? false || c["num_attention_heads"] != nil
    }

    static func openFile(_ path: String) throws -> DiTWeights {
        let name = (path as NSString).lastPathComponent
        let folder = (path as NSString).deletingLastPathComponent
        if magic(path) == Array("GGUF".utf8) {
            return DiTWeights(source: try GGUFSource(path: path), arguments: nil, layout: "gguf")
        }
        if name.hasSuffix(".index.json") {
            let base = try ShardedSafetensors.open(indexPath: path)
            return try classify(base, arguments: try arguments(config: (folder as NSString).appendingPathComponent("config.json")), layout: "official-sharded")
        }
        if name == "config.json" { return try openFolder(folder) }
        let ext = (name as NSString).pathExtension.lowercased()
        if ext == "gguf" { throw GGUFError.notGGUF(path: path) }
        if ["pth", "pt", "ckpt", "bin"].contains(ext) {
            throw LayoutError.unknownLayout(path: path, detail: "PyTorch pickle checkpoints are not read; use the .safetensors release of the model")
        }
        guard ext == "safetensors" || ext == "sft" else {
            throw LayoutError.unknownLayout(path: path, detail: "the file is neither GGUF nor .safetensors")
        }
        let base = try SafetensorsSource(path: path)
        // The config.json beside the file (a Wan-AI or diffusers folder's file named on its own) holds what the
        // shapes cannot show (num_heads, eps): read it when it is a WanModel / diffusers one.
        var args: [String: Any]? = nil
        let configPath = (folder as NSString).appendingPathComponent("config.json")
        if FileManager.default.fileExists(atPath: configPath) {
            let c = try readJSONObject(configPath, what: "config.json")
            if isDiffusers(c) || (c["_class_name"] as? String).map(["WanModel", "VaceWanModel"].contains) ?? false
                || (c["dim"] != nil && c["num_heads"] != nil) {
                args = try arguments(c, path: configPath)
            }
        }
        return try classify(base, arguments: args, layout: nil)
    }

    /// Names the layout of a safetensors source and wraps it: fp8_scaled, diffusers names, ComfyUI prefix.
    static func classify(_ base: SafetensorsSource, arguments: [String: Any]?, layout: String?) throws -> DiTWeights {
        let raw = base.files.flatMap { $0.tensors.keys }
        let prefix = commonWeightPrefix(raw)
        var source: WeightSource = base
        var detected = layout ?? "official"
        // A prefix SafetensorsSource left in place (it only strips when every key has it, markers included).
        if !prefix.isEmpty && base.names.contains(where: { $0.hasPrefix(prefix) }) {
            source = try RenamedSource(wrapping: base) { $0.hasPrefix(prefix) ? String($0.dropFirst(prefix.count)) : $0 }
        }
        if layout == nil && !prefix.isEmpty { detected = "comfy-prefix" }
        if ScaledFP8Source.detect(source.names) {
            source = try ScaledFP8Source(wrapping: source)
            if layout == nil { detected = "comfy-fp8-scaled" }
        } else if DiffusersWan.detect(source.names) {
            source = try RenamedSource(wrapping: source, rename: DiffusersWan.officialName)
            detected = "diffusers"
        }
        return DiTWeights(source: source, arguments: arguments, layout: detected)
    }

    static func openFolder(_ folder: String) throws -> DiTWeights {
        let fm = FileManager.default
        let transformer = (folder as NSString).appendingPathComponent("transformer")
        if isDirectory(transformer) { return try openFolder(transformer) }
        let configPath = (folder as NSString).appendingPathComponent("config.json")
        if fm.fileExists(atPath: configPath) {
            let c = try readJSONObject(configPath, what: "config.json")
            if isDiffusers(c) {
                let (source, args) = try DiffusersWan.open(folder: folder)
                return DiTWeights(source: source, arguments: args, layout: "diffusers")
            }
        }
        let args = try arguments(config: configPath)
        if let index = ShardedSafetensors.indexFile(in: folder) {
            return try classify(try ShardedSafetensors.open(indexPath: index), arguments: args, layout: "official-sharded")
        }
        let single = (folder as NSString).appendingPathComponent("diffusion_pytorch_model.safetensors")
        if fm.fileExists(atPath: single) {
            let w = try classify(try SafetensorsSource(path: single), arguments: args, layout: nil)
            return w
        }
        let entries = ((try? fm.contentsOfDirectory(atPath: folder)) ?? []).sorted()
        let candidates = entries.filter { $0.hasSuffix(".safetensors") || $0.hasSuffix(".gguf") }
        if candidates.count == 1 {
            let w = try openFile((folder as NSString).appendingPathComponent(candidates[0]))
            return DiTWeights(source: w.source, arguments: w.arguments ?? args, layout: w.layout)
        }
        if candidates.isEmpty {
            throw LayoutError.unknownLayout(path: folder, detail: "the folder holds no .safetensors, .safetensors.index.json or .gguf file and no transformer/ folder")
        }
        throw LayoutError.unknownLayout(path: folder, detail: "the folder holds \(candidates.count) weight files (\(candidates.prefix(4).joined(separator: ", "))) but no diffusion_pytorch_model.safetensors.index.json saying how they fit together; pass one file")
    }
}
