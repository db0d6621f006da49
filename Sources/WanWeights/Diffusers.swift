import Foundation
import WanTensor

/// diffusers' `WanTransformer3DModel` (transformer_wan.py) and `WanVACETransformer3DModel` (transformer_wan_vace.py)
/// seen under the official `WanModel` / `VaceWanModel` names, and their config.json turned into the official
/// constructor arguments.
public enum DiffusersWan {
    public static let className = "WanTransformer3DModel"
    public static let vaceClassName = "WanVACETransformer3DModel"
    /// The diffusers model classes whose folders this reads.
    public static let classNames: Set<String> = [className, vaceClassName]

    /// Whether the names are diffusers Wan names.
    public static func detect(_ names: [String]) -> Bool {
        names.contains { $0.hasPrefix("condition_embedder.") || $0.contains(".attn1.to_q.") || $0 == "proj_out.weight" }
    }

    private static let topLevel: [(String, String)] = [
        ("condition_embedder.time_embedder.linear_1.", "time_embedding.0."),
        ("condition_embedder.time_embedder.linear_2.", "time_embedding.2."),
        ("condition_embedder.time_proj.", "time_projection.1."),
        ("condition_embedder.text_embedder.linear_1.", "text_embedding.0."),
        ("condition_embedder.text_embedder.linear_2.", "text_embedding.2."),
        ("condition_embedder.image_embedder.norm1.", "img_emb.proj.0."),
        ("condition_embedder.image_embedder.ff.net.0.proj.", "img_emb.proj.1."),
        ("condition_embedder.image_embedder.ff.net.2.", "img_emb.proj.3."),
        ("condition_embedder.image_embedder.norm2.", "img_emb.proj.4."),
        ("proj_out.", "head.head."),
    ]
    private static let inBlock: [(String, String)] = [
        ("attn1.to_q.", "self_attn.q."), ("attn1.to_k.", "self_attn.k."), ("attn1.to_v.", "self_attn.v."),
        ("attn1.to_out.0.", "self_attn.o."), ("attn1.norm_q.", "self_attn.norm_q."), ("attn1.norm_k.", "self_attn.norm_k."),
        ("attn2.to_q.", "cross_attn.q."), ("attn2.to_k.", "cross_attn.k."), ("attn2.to_v.", "cross_attn.v."),
        ("attn2.to_out.0.", "cross_attn.o."), ("attn2.norm_q.", "cross_attn.norm_q."), ("attn2.norm_k.", "cross_attn.norm_k."),
        ("attn2.add_k_proj.", "cross_attn.k_img."), ("attn2.add_v_proj.", "cross_attn.v_img."),
        ("attn2.norm_added_k.", "cross_attn.norm_k_img."),
        ("norm2.", "norm3."),
        ("ffn.net.0.proj.", "ffn.0."), ("ffn.net.2.", "ffn.2."),
    ]
    /// A VACE block's extra projections (official before_proj on the first, after_proj on all).
    private static let inVACEBlock: [(String, String)] = [("proj_in.", "before_proj."), ("proj_out.", "after_proj.")]

    /// The official name of a diffusers name; names without a rule are returned unchanged (the strict binder then
    /// reports them).
    public static func officialName(_ name: String) -> String {
        if name == "scale_shift_table" { return "head.modulation" }
        if name == "condition_embedder.image_embedder.pos_embed" { return "img_emb.emb_pos" }
        for (d, o) in topLevel where name.hasPrefix(d) { return o + name.dropFirst(d.count) }
        for (list, rules) in [("blocks.", inBlock), ("vace_blocks.", inBlock + inVACEBlock)] where name.hasPrefix(list) {
            let afterList = name.dropFirst(list.count)
            guard let dot = afterList.firstIndex(of: ".") else { return name }
            let head = list + afterList[..<dot] + "."
            let rest = String(afterList[afterList.index(after: dot)...])
            if rest == "scale_shift_table" { return head + "modulation" }
            for (d, o) in rules where rest.hasPrefix(d) { return head + o + rest.dropFirst(d.count) }
        }
        return name
    }

    /// The official `WanModel` constructor arguments equivalent to a diffusers config. `model_type` is left to the
    /// weights (img_emb / emb_pos tell i2v and flf2v apart exactly).
    public static func officialArguments(_ c: [String: Any], path: String) throws -> [String: Any] {
        func int(_ k: String) -> Int? { (c[k] as? NSNumber)?.intValue }
        var a: [String: Any] = [:]
        let heads = int("num_attention_heads"), headDim = int("attention_head_dim")
        if let heads, let headDim {
            let (dim, overflow) = heads.multipliedReportingOverflow(by: headDim)
            guard heads > 0, headDim > 0, !overflow else {
                throw LayoutError.badDiffusersConfig(path: path, detail: "num_attention_heads \(heads) and attention_head_dim \(headDim) must be positive and of a sensible size (Wan2.1: 12 or 40 heads of 128)")
            }
            a["dim"] = dim
        }
        if let heads { a["num_heads"] = heads }
        if let v = int("in_channels") { a["in_dim"] = v }
        if let v = int("out_channels") { a["out_dim"] = v }
        for k in ["ffn_dim", "num_layers", "text_dim", "freq_dim"] { if let v = int(k) { a[k] = v } }
        if let v = c["patch_size"] as? [Any] { a["patch_size"] = v }
        if let v = c["cross_attn_norm"] as? Bool { a["cross_attn_norm"] = v }
        if c.keys.contains("qk_norm") {
            if let s = c["qk_norm"] as? String {
                guard s == "rms_norm_across_heads" else {
                    throw LayoutError.badDiffusersConfig(path: path, detail: "qk_norm '\(s)' is not supported (Wan2.1 uses 'rms_norm_across_heads')")
                }
                a["qk_norm"] = true
            } else if c["qk_norm"] is NSNull {
                a["qk_norm"] = false
            }
        }
        if let v = c["eps"] as? NSNumber { a["eps"] = v }
        if let v = c["vace_layers"] as? [Any] { a["vace_layers"] = v }
        if let v = int("vace_in_channels") { a["vace_in_dim"] = v }
        a["text_len"] = 512
        return a
    }

    /// Opens a diffusers transformer folder (config.json + diffusion_pytorch_model.safetensors or its shards).
    public static func open(folder: String) throws -> (source: WeightSource, arguments: [String: Any]) {
        let configPath = (folder as NSString).appendingPathComponent("config.json")
        let config = try readJSONObject(configPath, what: "the diffusers config.json of a WanTransformer3DModel or WanVACETransformer3DModel")
        let base: SafetensorsSource
        if let index = ShardedSafetensors.indexFile(in: folder) {
            base = try ShardedSafetensors.open(indexPath: index)
        } else {
            let file = (folder as NSString).appendingPathComponent("diffusion_pytorch_model.safetensors")
            guard FileManager.default.fileExists(atPath: file) else {
                throw LayoutError.notFound(path: file, expected: "diffusion_pytorch_model.safetensors or diffusion_pytorch_model.safetensors.index.json and its shards beside config.json")
            }
            base = try SafetensorsSource(path: file)
        }
        let source = try RenamedSource(wrapping: base, rename: officialName)
        return (source, try officialArguments(config, path: configPath))
    }
}

/// Reads a JSON object from a file, with typed errors.
func readJSONObject(_ path: String, what: String) throws -> [String: Any] {
    guard FileManager.default.fileExists(atPath: path) else { throw LayoutError.notFound(path: path, expected: what) }
    let data: Data
    do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
        throw LayoutError.badJSON(path: path, detail: "unreadable: \(error.localizedDescription)")
    }
    guard let obj = try? JSONSerialization.jsonObject(with: data), let dict = obj as? [String: Any] else {
        throw LayoutError.badJSON(path: path, detail: "not a JSON object")
    }
    return dict
}

/// A transformers / diffusers component folder: the first of `subfolders` that holds a config.json (else the folder
/// itself), its config.json (nil when absent) and its safetensors weights (sharded with an index, or plain files).
struct ComponentFolder {
    let folder: String
    let config: [String: Any]?
    let weights: SafetensorsSource

    init(_ path: String, subfolders: [String], noWeights: String) throws {
        let fm = FileManager.default
        var folder = path
        for sub in subfolders {
            let s = (path as NSString).appendingPathComponent(sub)
            if fm.fileExists(atPath: (s as NSString).appendingPathComponent("config.json")) { folder = s; break }
        }
        self.folder = folder
        let configPath = (folder as NSString).appendingPathComponent("config.json")
        config = fm.fileExists(atPath: configPath) ? try readJSONObject(configPath, what: "config.json") : nil
        let entries = ((try? fm.contentsOfDirectory(atPath: folder)) ?? []).sorted()
        if let index = entries.first(where: { $0.hasSuffix(".safetensors.index.json") }) {
            weights = try ShardedSafetensors.open(indexPath: (folder as NSString).appendingPathComponent(index))
        } else {
            let files = entries.filter { $0.hasSuffix(".safetensors") }
            guard !files.isEmpty else { throw LayoutError.unknownLayout(path: folder, detail: "the folder holds no .safetensors file; " + noWeights) }
            weights = try SafetensorsSource(paths: files.map { (folder as NSString).appendingPathComponent($0) })
        }
    }
}
