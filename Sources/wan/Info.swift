import ArgumentParser
import Foundation
import WanKit

/// `wan info FILE_OR_FOLDER`: what a DiT checkpoint is, without loading it.
struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Describe a Wan2.1 model folder (its parts, what is missing) or DiT checkpoint: layout, storage types, parameter count, configuration and task.")
    @Argument(help: "A model folder, a .safetensors or .gguf file, a sharded or diffusers folder.") var path: String

    func run() throws {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue {
            // A model folder: which parts it holds and which are missing.
            let parts = try ModelFiles.discover(in: path)
            print("model folder: \(path)")
            for (name, found, expected) in [("dit", parts.dit, "diffusion_pytorch_model*.safetensors or transformer/"),
                                            ("t5", parts.t5, "models_t5_umt5-xxl-enc-bf16.pth or text_encoder/"),
                                            ("vae", parts.vae, "Wan2.1_VAE.pth or vae/"),
                                            ("tokenizer", parts.tokenizer, "google/umt5-xxl/tokenizer.json or tokenizer/"),
                                            ("clip", parts.clip, "models_clip_*.pth or image_encoder/ (image tasks only)")] {
                print("  \(name.padding(toLength: 10, withPad: " ", startingAt: 0)) \(found ?? "MISSING (\(expected))")")
            }
            guard let dit = parts.dit else { return }
            print("")
            try describeDiT(dit)
            return
        }
        try describeDiT(path)
    }

    func describeDiT(_ path: String) throws {
        let w = try openDiTWeights(path: path)
        let source = w.source
        print("source:     \(source.label)")
        print("layout:     \(w.layout)")
        if let g = source as? GGUFSource {
            let keys = ["general.architecture", "general.file_type", "general.quantization_version"]
            let meta = keys.compactMap { k in g.file.metadata[k].map { "\(k)=\($0)" } }
            print("gguf:       v\(g.file.version), \(g.file.tensors.count) tensors, alignment \(g.file.alignment)\(meta.isEmpty ? "" : ", " + meta.joined(separator: ", "))")
        }
        var mix: [String: (count: Int, bytes: Int, params: Int)] = [:]
        var params = 0
        for name in source.names {
            let s = try source.stored(name)
            let key = s.type.description + (s.scale != nil ? " (scaled)" : "")
            let e = s.elementCount
            var m = mix[key] ?? (0, 0, 0)
            m.count += 1; m.bytes += s.byteCount; m.params += e
            mix[key] = m
            params += e
        }
        print("tensors:    \(source.names.count), \(Self.count(params)) parameters")
        for (k, m) in mix.sorted(by: { $0.value.bytes > $1.value.bytes }) {
            let pad = k.padding(toLength: max(k.count, 18), withPad: " ", startingAt: 0)
            print("  \(pad) \(String(format: "%5d", m.count)) tensors  \(Self.bytes(m.bytes))  \(Self.count(m.params)) params")
        }
        var config = try WanDiTConfig(inferringFrom: source)
        if let a = w.arguments { config.apply(officialArguments: a) }
        try config.validate(source: source.label)
        print("config:     \(config)")
        print("            patch \(config.patchSize), freq_dim \(config.freqDim), text_len \(config.textLen), qk_norm \(config.qkNorm), cross_attn_norm \(config.crossAttnNorm), eps \(config.eps)")
        print("            heads \(w.arguments?["num_heads"] != nil ? "from config.json" : "assumed of 128 (not visible in the weights)")")
        var task: String
        switch config.modelType {
        case "t2v": task = "t2v (text to video)"
        case "i2v": task = "i2v (image to video: CLIP image embedding, 36 input channels)"
        case "flf2v": task = "flf2v (first-last frame to video)"
        default: task = config.modelType
        }
        if source.info("vace_patch_embedding.weight") != nil {
            let vace = try WanVACEConfig(inferringFrom: source, arguments: w.arguments)
            task = "vace (video creation and editing: vace blocks after layers \(vace.vaceLayers), vace_in_dim \(vace.vaceInDim))"
        }
        print("task:       \(task)")
    }

    static func count(_ n: Int) -> String {
        if n >= 1_000_000_000 { return String(format: "%.2fB", Double(n) / 1e9) }
        if n >= 1_000_000 { return String(format: "%.2fM", Double(n) / 1e6) }
        if n >= 1_000 { return String(format: "%.1fK", Double(n) / 1e3) }
        return "\(n)"
    }

    static func bytes(_ n: Int) -> String {
        if n >= 1 << 30 { return String(format: "%8.2f GiB", Double(n) / Double(1 << 30)) }
        if n >= 1 << 20 { return String(format: "%8.2f MiB", Double(n) / Double(1 << 20)) }
        return String(format: "%8.1f KiB", Double(n) / 1024)
    }
}
