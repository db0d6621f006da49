import Foundation
import WanTensor

/// A umT5 encoder checkpoint opened whatever its layout, under the official `T5Encoder` names of
/// wan/modules/t5.py (`token_embedding.weight`, `blocks.N.attn.q.weight`, `blocks.N.ffn.gate.0.weight`, …).
public struct T5Weights {
    public let source: WeightSource
    /// Official `T5Encoder` constructor arguments (vocab, dim, dim_attn, dim_ffn, num_heads, num_layers, num_buckets,
    /// shared_pos; plus eps and max_dist when a config states them) found beside the weights; nil when none.
    public let arguments: [String: Any]?
    /// "official", "official-pth", "hf-transformers" or "comfy-fp8-scaled".
    public let layout: String

    public init(source: WeightSource, arguments: [String: Any]?, layout: String) {
        self.source = source; self.arguments = arguments; self.layout = layout
    }
}

/// transformers' `UMT5EncoderModel` names (also ComfyUI's umt5 files) mapped to the official `T5Encoder` ones.
public enum HFUMT5 {
    public static let className = "UMT5EncoderModel"

    public static func detect(_ names: [String]) -> Bool {
        names.contains { $0.hasPrefix("encoder.block.") || $0 == "shared.weight" || $0 == "encoder.embed_tokens.weight" }
    }

    /// The renaming of a checkpoint with these HF names: `officialName`, except that a relative-position table
    /// held by block 0 alone in a model of several blocks (transformers' `T5EncoderModel`: only the first layer
    /// has one, the others reuse it) is the official shared `pos_embedding` (`T5Encoder(shared_pos=True)`).
    public static func renamer(for names: [String]) -> (String) -> String? {
        let first = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        let tables = names.filter { $0.hasSuffix(".SelfAttention.relative_attention_bias.weight") }
        let shared = tables == [first] && names.contains { $0.hasPrefix("encoder.block.1.") }
        return { name in shared && name == first ? "pos_embedding.embedding.weight" : officialName(name) }
    }

    /// The official name of an HF name; nil for tensors that are not weights of the encoder (the tokenizer blob
    /// some ComfyUI files carry). Names it does not know come back unchanged, so strict binding reports them.
    public static func officialName(_ name: String) -> String? {
        if name == "spiece_model" || name.hasSuffix(".spiece_model") { return nil }
        if name == "shared.weight" || name == "encoder.embed_tokens.weight" { return "token_embedding.weight" }
        if name == "encoder.final_layer_norm.weight" { return "norm.weight" }
        let p = name.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        // encoder.block.N.layer.L.<module>...
        guard p.count >= 6, p[0] == "encoder", p[1] == "block", let n = Int(p[2]), p[3] == "layer", let l = Int(p[4]) else { return name }
        let rest = p[5...].joined(separator: ".")
        let b = "blocks.\(n)."
        if l == 0 {
            switch rest {
            case "layer_norm.weight": return b + "norm1.weight"
            case "SelfAttention.q.weight": return b + "attn.q.weight"
            case "SelfAttention.k.weight": return b + "attn.k.weight"
            case "SelfAttention.v.weight": return b + "attn.v.weight"
            case "SelfAttention.o.weight": return b + "attn.o.weight"
            case "SelfAttention.relative_attention_bias.weight": return b + "pos_embedding.embedding.weight"
            default: return name
            }
        }
        if l == 1 {
            switch rest {
            case "layer_norm.weight": return b + "norm2.weight"
            case "DenseReluDense.wi_0.weight": return b + "ffn.gate.0.weight"
            case "DenseReluDense.wi_1.weight": return b + "ffn.fc1.weight"
            case "DenseReluDense.wo.weight": return b + "ffn.fc2.weight"
            default: return name
            }
        }
        return name
    }

    /// Official `T5Encoder` arguments of a transformers config.json (shared_pos is left to the weights: `renamer`).
    /// An encoder whose feed-forward is not gated GELU (T5 v1.0's `relu`, …) is refused: the official T5Encoder, and
    /// so WanKit, only has umT5's.
    public static func officialArguments(_ c: [String: Any], path: String = "config.json") throws -> [String: Any] {
        if let ff = c["feed_forward_proj"] as? String, ff != "gated-gelu" {
            throw LayoutError.unknownLayout(path: path, detail: "feed_forward_proj '\(ff)' is not umT5's gated-gelu: this is not the text encoder of Wan2.1 (umT5-XXL)")
        }
        var a: [String: Any] = [:]
        func int(_ k: String) -> Int? { (c[k] as? NSNumber)?.intValue }
        if let v = int("vocab_size") { a["vocab"] = v }
        if let v = int("d_model") { a["dim"] = v }
        if let v = int("d_ff") { a["dim_ffn"] = v }
        if let v = int("num_heads") { a["num_heads"] = v }
        if let v = int("num_layers") { a["num_layers"] = v }
        if let v = int("relative_attention_num_buckets") { a["num_buckets"] = v }
        if let v = int("relative_attention_max_distance") { a["max_dist"] = v }
        if let v = (c["layer_norm_epsilon"] as? NSNumber)?.doubleValue { a["eps"] = v }
        if let kv = int("d_kv"), let h = int("num_heads") {
            let (product, overflow) = kv.multipliedReportingOverflow(by: h)
            a["dim_attn"] = overflow ? Int.max : product  // an overflow is refused with the other absurd sizes
        }
        return a
    }
}

/// llama.cpp's T5 encoder GGUF (`general.architecture` t5encoder or t5; city96's umt5-xxl-encoder-*.gguf that
/// ComfyUI-GGUF users run with Wan): `token_embd`, `enc.blk.N.attn_q|k|v|o`, `attn_rel_b`, `attn_norm`, `ffn_gate`
/// (wi_0), `ffn_up` (wi_1), `ffn_down` (wo), `ffn_norm`, `enc.output_norm`, read under the transformers names and from
/// there the official ones; the configuration from the file's metadata.
public enum GGUFUMT5 {
    public static func detect(_ names: [String]) -> Bool {
        names.contains { $0.hasPrefix("enc.blk.") || $0 == "enc.output_norm.weight" }
    }

    private static let blockParts: [(String, String)] = [
        ("attn_q.", "layer.0.SelfAttention.q."), ("attn_k.", "layer.0.SelfAttention.k."), ("attn_v.", "layer.0.SelfAttention.v."),
        ("attn_o.", "layer.0.SelfAttention.o."), ("attn_rel_b.", "layer.0.SelfAttention.relative_attention_bias."),
        ("attn_norm.", "layer.0.layer_norm."), ("ffn_gate.", "layer.1.DenseReluDense.wi_0."),
        ("ffn_up.", "layer.1.DenseReluDense.wi_1."), ("ffn_down.", "layer.1.DenseReluDense.wo."), ("ffn_norm.", "layer.1.layer_norm."),
    ]

    /// The transformers name of a llama.cpp name (unknown names unchanged).
    public static func transformersName(_ name: String) -> String {
        if name.hasPrefix("token_embd.") { return "shared." + name.dropFirst("token_embd.".count) }
        if name.hasPrefix("enc.output_norm.") { return "encoder.final_layer_norm." + name.dropFirst("enc.output_norm.".count) }
        guard name.hasPrefix("enc.blk.") else { return name }
        let rest = name.dropFirst("enc.blk.".count)
        guard let dot = rest.firstIndex(of: "."), let n = Int(rest[..<dot]) else { return name }
        let part = rest[rest.index(after: dot)...]
        for (l, h) in blockParts where part.hasPrefix(l) { return "encoder.block.\(n).\(h)" + part.dropFirst(l.count) }
        return name
    }

    /// The official `T5Encoder` arguments in the file's metadata (`<arch>.embedding_length`, `.feed_forward_length`,
    /// `.block_count`, `.attention.head_count`, `.attention.key_length`, `.attention.relative_buckets_count`,
    /// `.attention.layer_norm_epsilon`); what is absent is left to the tensor shapes.
    public static func officialArguments(_ metadata: [String: GGUFValue]) -> [String: Any] {
        let arch = metadata["general.architecture"]?.string ?? "t5encoder"
        func int(_ k: String) -> Int? { metadata["\(arch).\(k)"]?.int }
        var a: [String: Any] = [:]
        if let v = int("embedding_length") { a["dim"] = v }
        if let v = int("feed_forward_length") { a["dim_ffn"] = v }
        if let v = int("block_count") { a["num_layers"] = v }
        if let v = int("attention.head_count") { a["num_heads"] = v }
        if let v = int("attention.relative_buckets_count") { a["num_buckets"] = v }
        if let v = metadata["\(arch).attention.layer_norm_epsilon"]?.double ?? metadata["\(arch).attention.layer_norm_rms_epsilon"]?.double {
            a["eps"] = v
        }
        if let kv = int("attention.key_length"), let h = int("attention.head_count") {
            let (product, overflow) = kv.multipliedReportingOverflow(by: h)
            a["dim_attn"] = overflow ? Int.max : product  // refused with the other absurd sizes
        }
        return a
    }
}

/// Opens a umT5 encoder from a file or folder, detecting its layout:
/// - the official `models_t5_umt5-xxl-enc-bf16.pth` (torch zip; tensors stay in the mapping, bf16);
/// - a `.safetensors` file with the official names, or the transformers / ComfyUI names (`encoder.block.N…`,
///   `shared.weight`), possibly ComfyUI fp8_scaled;
/// - a transformers `UMT5EncoderModel` folder (config.json + model.safetensors or shards with an index);
/// - a llama.cpp T5 encoder GGUF (`GGUFUMT5`; quantised matrices stay packed).
public func openT5Weights(path: String) throws -> T5Weights {
    let fm = FileManager.default
    var isDir: ObjCBool = false
    guard fm.fileExists(atPath: path, isDirectory: &isDir) else {
        throw LayoutError.notFound(path: path, expected: "a umT5 encoder: models_t5_umt5-xxl-enc-bf16.pth, a .safetensors file or a transformers folder")
    }
    if isDir.boolValue {
        let c = try ComponentFolder(path, subfolders: ["text_encoder", "text_encoder_2"],
                                    noWeights: "pass models_t5_umt5-xxl-enc-bf16.pth or a transformers UMT5EncoderModel folder")
        let arguments = try c.config.map { try HFUMT5.officialArguments($0, path: (c.folder as NSString).appendingPathComponent("config.json")) }
        let base = c.weights
        let w = try T5Layouts.classify(base)
        return T5Weights(source: w.source, arguments: arguments, layout: w.layout)
    }
    let ext = (path as NSString).pathExtension.lowercased()
    if DiTLayouts.magic(path) == Array("GGUF".utf8) {
        let gguf = try GGUFSource(path: path)
        guard GGUFUMT5.detect(gguf.names) else {
            throw LayoutError.unknownLayout(path: path, detail: "a GGUF file without llama.cpp's T5 encoder tensors (enc.blk.N.*): not a umT5 text encoder")
        }
        let hfNames = gguf.names.map(GGUFUMT5.transformersName)
        let official = HFUMT5.renamer(for: hfNames)
        let source = try LayoutSource(wrapping: gguf) { official(GGUFUMT5.transformersName($0)) }
        return T5Weights(source: source, arguments: GGUFUMT5.officialArguments(gguf.file.metadata), layout: "gguf")
    }
    if ["pth", "pt", "ckpt", "bin"].contains(ext) {
        let source = try MappedCheckpointSource(try TorchCheckpoint(path: path))
        if HFUMT5.detect(source.names) {
            return T5Weights(source: try LayoutSource(wrapping: source, rename: HFUMT5.renamer(for: source.names)), arguments: nil, layout: "hf-transformers")
        }
        return T5Weights(source: source, arguments: nil, layout: "official-pth")
    }
    let w = try T5Layouts.classify(try SafetensorsSource(path: path))
    let configPath = ((path as NSString).deletingLastPathComponent as NSString).appendingPathComponent("config.json")
    var arguments: [String: Any]? = nil
    if w.layout != "official", fm.fileExists(atPath: configPath),
       let c = try? readJSONObject(configPath, what: "config.json"), (c["model_type"] as? String)?.contains("t5") == true {
        arguments = try HFUMT5.officialArguments(c, path: configPath)
    }
    return T5Weights(source: w.source, arguments: arguments, layout: w.layout)
}

enum T5Layouts {
    /// Strips a common prefix in front of the HF names (`text_encoders.umt5xxl.transformer.` and the like), unwraps
    /// fp8_scaled, renames HF names.
    static func classify(_ base: WeightSource) throws -> (source: WeightSource, layout: String) {
        var source: WeightSource = base
        let names = base.names
        var prefix = ""
        if !names.contains(where: { $0.hasPrefix("encoder.") || $0.hasPrefix("shared.") || $0.hasPrefix("blocks.") || $0.hasPrefix("token_embedding.") }),
           let probe = names.first(where: { $0.contains(".encoder.block.") || $0.contains(".blocks.0.") }) {
            let marker = probe.contains(".encoder.block.") ? ".encoder.block." : ".blocks.0."
            let cut = probe.range(of: marker)!.lowerBound
            prefix = String(probe[..<probe.index(after: cut)])
        }
        if !prefix.isEmpty {
            source = try LayoutSource(wrapping: source) { n in
                if n.hasPrefix(prefix) { return String(n.dropFirst(prefix.count)) }
                // Other tensors of a bundled checkpoint (the tokenizer blob, markers) are not the encoder's.
                return n == ScaledFP8Source.marker || n.hasSuffix("spiece_model") ? n : nil
            }
        }
        var layout = "official"
        if ScaledFP8Source.detect(source.names) {
            source = try ScaledFP8Source(wrapping: source)
            layout = "comfy-fp8-scaled"
        }
        if HFUMT5.detect(source.names) {
            source = try LayoutSource(wrapping: source, rename: HFUMT5.renamer(for: source.names))
            if layout == "official" { layout = "hf-transformers" }
        }
        return (source, layout)
    }
}

/// A torch checkpoint whose `stored` tensors point into the mapping (bf16 stays bf16 until a model converts it), so
/// a 5.7B-parameter encoder costs its file size, not twice that in float32.
public final class MappedCheckpointSource: WeightSource, @unchecked Sendable {
    public let checkpoint: TorchCheckpoint
    public init(_ checkpoint: TorchCheckpoint) { self.checkpoint = checkpoint }
    public var label: String { checkpoint.label }
    public var names: [String] { checkpoint.names }
    public func info(_ name: String) -> TensorInfo? { checkpoint.info(name) }
    public func float32(_ name: String) throws -> Tensor { try checkpoint.float32(name) }
    public func stored(_ name: String) throws -> StoredTensor {
        guard let info = checkpoint.info(name) else { throw WeightError.missingKey(source: label, key: name, expectedShape: nil) }
        guard info.dtype.isFloat || info.dtype == .i8 || info.dtype == .u8 else {
            throw WeightError.unsupportedDType(source: label, key: name, dtype: info.dtype.rawValue)
        }
        let file = checkpoint.archive.file
        return StoredTensor(name: name, type: .dtype(info.dtype), shape: info.shape, data: file.base + info.offset,
                            byteCount: info.byteCount, scale: nil, owner: file)
    }
}

/// A source under official names built from another: each official name is one base tensor (a rename) or several
/// base tensors concatenated along their first dim (transformers' q/k/v projections fused into one `to_qkv`).
/// `rename` returning nil drops a base name that is known not to be a weight; unknown names should be returned
/// unchanged so that strict binding reports them.
public final class LayoutSource: WeightSource, @unchecked Sendable {
    public let base: WeightSource
    /// official name → base names (one, or the parts of a concatenation in order).
    public let mapping: [String: [String]]
    private let lock = NSLock()
    private var fused: [String: StoredTensor] = [:]

    public init(wrapping base: WeightSource, rename: (String) -> String?) throws {
        var m: [String: [String]] = [:]
        for n in base.names.sorted() {
            guard let official = rename(n) else { continue }
            if let other = m[official] {
                // Tied copies of one tensor (HF `shared.weight` and `encoder.embed_tokens.weight`) count once.
                if let a = base.info(other[0]), let b = base.info(n), a.shape == b.shape, a.dtype == b.dtype, Self.sameBytes(base, other[0], n) { continue }
                throw WeightError.duplicateKey(key: official, first: other[0], second: n)
            }
            m[official] = [n]
        }
        self.base = base
        mapping = m
    }

    /// Explicit mapping (official name → base names to concatenate along dim 0).
    public init(wrapping base: WeightSource, mapping: [String: [String]]) throws {
        for (official, parts) in mapping {
            guard !parts.isEmpty else { throw WeightError.badConfig(source: base.label, detail: "no tensors for \(official)") }
            for p in parts where base.info(p) == nil { throw WeightError.missingKey(source: base.label, key: p, expectedShape: nil) }
            if parts.count > 1 {
                let infos = parts.map { base.info($0)! }
                let tail = Array(infos[0].shape.dropFirst())
                for (p, i) in zip(parts, infos) where Array(i.shape.dropFirst()) != tail || i.shape.isEmpty {
                    throw WeightError.shapeMismatch(source: base.label, key: p, expected: [i.shape.first ?? 0] + tail, found: i.shape)
                }
            }
        }
        self.base = base
        self.mapping = mapping
    }

    static func sameBytes(_ s: WeightSource, _ a: String, _ b: String) -> Bool {
        guard let x = try? s.stored(a), let y = try? s.stored(b), x.byteCount == y.byteCount, x.scale == y.scale else { return false }
        return memcmp(x.data, y.data, x.byteCount) == 0
    }

    public var label: String { base.label }
    public var names: [String] { Array(mapping.keys) }

    public func info(_ name: String) -> TensorInfo? {
        guard let parts = mapping[name] else { return nil }
        if parts.count == 1 {
            guard var i = base.info(parts[0]) else { return nil }
            i.name = name
            return i
        }
        let infos = parts.compactMap { base.info($0) }
        guard infos.count == parts.count else { return nil }
        let rows = infos.reduce(0) { $0 + ($1.shape.first ?? 0) }
        let shape = [rows] + infos[0].shape.dropFirst()
        let sameType = infos.allSatisfy { $0.dtype == infos[0].dtype }
        let dtype = sameType ? infos[0].dtype : .f32
        return TensorInfo(name: name, dtype: dtype, shape: shape, offset: 0, byteCount: shape.reduce(1, *) * dtype.byteSize)
    }

    public func stored(_ name: String) throws -> StoredTensor {
        guard let parts = mapping[name] else { throw WeightError.missingKey(source: label, key: name, expectedShape: nil) }
        if parts.count == 1 {
            let s = try base.stored(parts[0])
            return StoredTensor(name: name, type: s.type, shape: s.shape, data: s.data, byteCount: s.byteCount, scale: s.scale, owner: s.owner)
        }
        lock.lock(); defer { lock.unlock() }
        if let f = fused[name] { return f }
        let pieces = try parts.map { try base.stored($0) }
        let rows = pieces.reduce(0) { $0 + ($1.shape.first ?? 0) }
        let shape = [rows] + pieces[0].shape.dropFirst()
        let plain = pieces.allSatisfy { if case .dtype = $0.type { return $0.type == pieces[0].type && $0.scale == pieces[0].scale } else { return false } }
        let result: StoredTensor
        if plain, case .dtype(let d) = pieces[0].type {
            // Same element type and scale: concatenate the stored bytes.
            let bytes = pieces.reduce(0) { $0 + $1.byteCount }
            let buffer = OwnedBytes(count: bytes)
            var o = 0
            for p in pieces { buffer.pointer.advanced(by: o).copyMemory(from: p.data, byteCount: p.byteCount); o += p.byteCount }
            result = StoredTensor(name: name, type: .dtype(d), shape: shape, data: UnsafeRawPointer(buffer.pointer), byteCount: bytes,
                                  scale: pieces[0].scale, owner: buffer)
        } else {
            let t = Tensor(uninitialized: shape)
            var o = 0
            for p in pieces { p.dequantize(elements: 0..<p.elementCount, into: t.data + o); o += p.elementCount }
            result = StoredTensor(name: name, type: .dtype(.f32), shape: shape, data: UnsafeRawPointer(t.data), byteCount: t.count * 4, scale: nil, owner: t)
        }
        fused[name] = result
        return result
    }

    public func float32(_ name: String) throws -> Tensor {
        guard let parts = mapping[name] else { throw WeightError.missingKey(source: label, key: name, expectedShape: nil) }
        if parts.count == 1 { return try base.float32(parts[0]) }
        return try stored(name).float32()
    }
}

/// Bytes allocated here (64-byte aligned), freed with the object.
final class OwnedBytes: @unchecked Sendable {
    let pointer: UnsafeMutableRawPointer
    init(count: Int) { pointer = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: 64) }
    deinit { pointer.deallocate() }
}
