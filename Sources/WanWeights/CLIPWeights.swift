import Foundation
import WanTensor

/// A CLIP vision tower opened whatever its layout, under the official `VisionTransformer` names of
/// wan/modules/clip.py without the `visual.` prefix (`patch_embedding.weight`, `cls_embedding`, `pos_embedding`,
/// `pre_norm.*`, `transformer.N.attn.to_qkv.*`, `transformer.N.mlp.0.*`, `post_norm.*`, `head`).
public struct CLIPWeights {
    public let source: WeightSource
    /// Official `VisionTransformer` arguments (image_size, patch_size, dim, mlp_ratio, out_dim, num_heads,
    /// num_layers, activation, norm_eps) stated beside the weights; nil when none.
    public let arguments: [String: Any]?
    /// "official", "official-pth" or "hf-transformers".
    public let layout: String

    public init(source: WeightSource, arguments: [String: Any]?, layout: String) {
        self.source = source; self.arguments = arguments; self.layout = layout
    }
}

/// transformers' `CLIPVisionModel` / `CLIPVisionModelWithProjection` names (ComfyUI's clip_vision_h) mapped to the
/// official ones; q/k/v projections are fused into `to_qkv` by concatenation (q rows, then k, then v).
public enum HFCLIPVision {
    public static let className = "CLIPVisionModel"

    public static func detect(_ names: [String]) -> Bool {
        names.contains { $0.hasPrefix("vision_model.") }
    }

    /// official name → HF names. Names that are not weights (`position_ids` buffers) are left out; names it does not
    /// know are kept unchanged so strict binding reports them.
    public static func mapping(_ names: [String]) -> [String: [String]] {
        var m: [String: [String]] = [:]
        let set = Set(names)
        for n in names {
            if n.hasSuffix("position_ids") { continue }
            switch n {
            case "vision_model.embeddings.class_embedding": m["cls_embedding"] = [n]; continue
            case "vision_model.embeddings.patch_embedding.weight": m["patch_embedding.weight"] = [n]; continue
            case "vision_model.embeddings.patch_embedding.bias": m["patch_embedding.bias"] = [n]; continue
            case "vision_model.embeddings.position_embedding.weight": m["pos_embedding"] = [n]; continue
            case "vision_model.pre_layrnorm.weight": m["pre_norm.weight"] = [n]; continue
            case "vision_model.pre_layrnorm.bias": m["pre_norm.bias"] = [n]; continue
            case "vision_model.post_layernorm.weight": m["post_norm.weight"] = [n]; continue
            case "vision_model.post_layernorm.bias": m["post_norm.bias"] = [n]; continue
            case "visual_projection.weight": m["head"] = [n]; continue
            default: break
            }
            let p = n.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
            guard p.count >= 6, p[0] == "vision_model", p[1] == "encoder", p[2] == "layers", let i = Int(p[3]) else { m[n] = [n]; continue }
            let b = "transformer.\(i)."
            let layer = "vision_model.encoder.layers.\(i)."
            let rest = p[4...].joined(separator: ".")
            let leaf = p.last!
            switch rest {
            case "self_attn.q_proj.weight", "self_attn.q_proj.bias":
                let parts = ["q_proj", "k_proj", "v_proj"].map { layer + "self_attn.\($0).\(leaf)" }
                if parts.allSatisfy(set.contains) { m[b + "attn.to_qkv.\(leaf)"] = parts } else { m[n] = [n] }
            case "self_attn.k_proj.weight", "self_attn.k_proj.bias", "self_attn.v_proj.weight", "self_attn.v_proj.bias":
                let q = layer + "self_attn.q_proj.\(leaf)"
                let parts = ["q_proj", "k_proj", "v_proj"].map { layer + "self_attn.\($0).\(leaf)" }
                if !(set.contains(q) && parts.allSatisfy(set.contains)) { m[n] = [n] }
            case "self_attn.out_proj.weight", "self_attn.out_proj.bias": m[b + "attn.proj.\(leaf)"] = [n]
            case "layer_norm1.weight", "layer_norm1.bias": m[b + "norm1.\(leaf)"] = [n]
            case "layer_norm2.weight", "layer_norm2.bias": m[b + "norm2.\(leaf)"] = [n]
            case "mlp.fc1.weight", "mlp.fc1.bias": m[b + "mlp.0.\(leaf)"] = [n]
            case "mlp.fc2.weight", "mlp.fc2.bias": m[b + "mlp.2.\(leaf)"] = [n]
            default: m[n] = [n]
            }
        }
        return m
    }

    /// Official `VisionTransformer` arguments of a transformers config.json (a CLIPVisionConfig, or a CLIPConfig
    /// holding one under `vision_config`).
    public static func officialArguments(_ json: [String: Any]) -> [String: Any] {
        let c = json["vision_config"] as? [String: Any] ?? json
        var a: [String: Any] = [:]
        func int(_ k: String) -> Int? { (c[k] as? NSNumber)?.intValue }
        if let v = int("hidden_size") { a["dim"] = v }
        if let v = int("image_size") { a["image_size"] = v }
        if let v = int("patch_size") { a["patch_size"] = v }
        if let v = int("num_attention_heads") { a["num_heads"] = v }
        if let v = int("num_hidden_layers") { a["num_layers"] = v }
        if let v = int("projection_dim") ?? (json["projection_dim"] as? NSNumber)?.intValue { a["out_dim"] = v }
        if let v = int("intermediate_size") { a["mlp_dim"] = v }
        if let v = (c["layer_norm_eps"] as? NSNumber)?.doubleValue { a["norm_eps"] = v }
        if let v = c["hidden_act"] as? String { a["activation"] = v == "quick_gelu" ? "quick_gelu" : "gelu" }
        return a
    }
}

/// Opens a CLIP vision tower from a file or folder, detecting its layout:
/// - the official `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth` (torch zip; the `visual.*` tensors are
///   used, the text tower's `textual.*` and `log_scale` are left out);
/// - a `.safetensors` file with the official names (with or without `visual.`), or transformers names
///   (`vision_model.…`, ComfyUI's clip_vision_h.safetensors);
/// - a transformers `CLIPVisionModel` folder (config.json + model.safetensors).
public func openCLIPWeights(path: String) throws -> CLIPWeights {
    let fm = FileManager.default
    var isDir: ObjCBool = false
    guard fm.fileExists(atPath: path, isDirectory: &isDir) else {
        throw LayoutError.notFound(path: path, expected: "a CLIP vision tower: models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth, a .safetensors file or a transformers folder")
    }
    if isDir.boolValue {
        let c = try ComponentFolder(path, subfolders: ["image_encoder", "vision_model"],
                                    noWeights: "pass the official CLIP .pth or a transformers CLIPVisionModel folder")
        let arguments = c.config.map(HFCLIPVision.officialArguments)
        let base = c.weights
        let w = try CLIPLayouts.classify(base)
        return CLIPWeights(source: w.source, arguments: arguments, layout: w.layout)
    }
    let ext = (path as NSString).pathExtension.lowercased()
    if ["pth", "pt", "ckpt", "bin"].contains(ext) {
        let w = try CLIPLayouts.classify(MappedCheckpointSource(try TorchCheckpoint(path: path)))
        return CLIPWeights(source: w.source, arguments: nil, layout: w.layout == "official" ? "official-pth" : w.layout)
    }
    let w = try CLIPLayouts.classify(try SafetensorsSource(path: path))
    var arguments: [String: Any]? = nil
    let configPath = ((path as NSString).deletingLastPathComponent as NSString).appendingPathComponent("config.json")
    if w.layout == "hf-transformers", fm.fileExists(atPath: configPath), let c = try? readJSONObject(configPath, what: "config.json"),
       ((c["model_type"] as? String)?.contains("clip") == true || c["vision_config"] != nil) {
        arguments = HFCLIPVision.officialArguments(c)
    }
    return CLIPWeights(source: w.source, arguments: arguments, layout: w.layout)
}

enum CLIPLayouts {
    static func classify(_ base: WeightSource) throws -> (source: WeightSource, layout: String) {
        let names = base.names
        if HFCLIPVision.detect(names) {
            // A full CLIPModel also holds the text tower (`text_model.*`, `text_projection`, `logit_scale`).
            let vision = names.filter { !$0.hasPrefix("text_model.") && $0 != "text_projection.weight" && $0 != "logit_scale" }
            return (try LayoutSource(wrapping: base, mapping: HFCLIPVision.mapping(vision)), "hf-transformers")
        }
        // The official XLMRobertaCLIP state dict: `visual.*` (the image tower), `textual.*`, `log_scale`.
        for prefix in ["visual.", "model.visual.", "clip.visual."] where names.contains(where: { $0.hasPrefix(prefix) }) {
            let textual = prefix.replacingOccurrences(of: "visual.", with: "textual.")
            let logScale = prefix.replacingOccurrences(of: "visual.", with: "log_scale")
            let source = try LayoutSource(wrapping: base) { n in
                if n.hasPrefix(prefix) { return String(n.dropFirst(prefix.count)) }
                if n.hasPrefix(textual) || n == logScale { return nil }
                return n
            }
            return (source, "official")
        }
        return (base, "official")
    }
}
