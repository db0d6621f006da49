import ArgumentParser
import Foundation
import WanKit

/// `wan info FILE_OR_FOLDER`: what a checkpoint is (DiT, umT5, Wan-VAE or CLIP), without loading it.
struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Describe a Wan2.1 model folder (its parts, what is missing) or one checkpoint (DiT, umT5 text encoder, Wan-VAE, CLIP image encoder): layout, storage types, parameter count, configuration and, for a DiT, its task.")
    @Argument(help: "A model folder, a .safetensors, .gguf or .pth file, a sharded, diffusers or transformers folder.") var path: String

    func run() throws {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue {
            // A model folder: which parts it holds and which are missing.
            let parts = try ModelFiles.discover(in: path)
            // A component's own folder (a transformers text or image encoder, a diffusers vae/): that component.
            if parts.dit == nil && parts.t5 == nil && parts.vae == nil && parts.clip == nil, try describeEncoderOrVAE(path) { return }
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
            try describeDiT(try openDiTWeights(path: dit))
            return
        }
        try describe(path)
    }

    /// A file (or component folder) as whichever part of Wan2.1 it holds: each opener is tried, and the first whose
    /// official names show its part describes it; otherwise the DiT opener's error is what the user sees.
    func describe(_ path: String) throws {
        let dit: DiTWeights
        do { dit = try openDiTWeights(path: path) } catch let ditError {
            if try describeEncoderOrVAE(path) { return }
            throw ditError
        }
        if dit.source.info("time_embedding.0.weight") == nil, try describeEncoderOrVAE(path) { return }
        try describeDiT(dit)
    }

    /// Describes a umT5, Wan-VAE or CLIP checkpoint; false when the file is none of them. Each reader is tried; the
    /// first whose official names show its part prints it (the configuration validated first).
    func describeEncoderOrVAE(_ path: String) throws -> Bool {
        func report(_ source: WeightSource, _ layout: String, config: String, part: String) throws {
            try printStorage(source, layout: layout)
            print("config:     \(config)")
            print("part:       \(part)")
        }
        if let w = try? openT5Weights(path: path), w.source.info("token_embedding.weight") != nil {
            let c = UMT5Config.inferred(from: w.source, arguments: w.arguments ?? [:])
            try c.validate(source: w.source.label)
            try report(w.source, w.layout, config: "\(c), eps \(c.eps), max_dist \(c.maxDistance)",
                   part: "umT5 text encoder (umT5-XXL: dim 4096, 24 layers, 64 heads)")
            return true
        }
        if let w = try? openVAEWeights(path: path), w.source.info("decoder.conv1.weight") != nil {
            let c = WanVAEConfig(inferringFrom: w.source, arguments: w.arguments)
            try c.validate(source: w.source.label)
            try report(w.source, w.layout, config: "Wan-VAE dim \(c.dim), z_dim \(c.zDim), dim_mult \(c.dimMult), num_res_blocks \(c.numResBlocks), temporal downsample \(c.temporalDownsample)",
                   part: "Wan-VAE (causal 3D video autoencoder)")
            return true
        }
        if let w = try? openCLIPWeights(path: path), w.source.info("transformer.0.attn.to_qkv.weight") != nil {
            let c = CLIPVisionConfig.inferred(from: w.source, arguments: w.arguments ?? [:])
            try c.validate(source: w.source.label)
            try report(w.source, w.layout, config: "\(c)", part: "CLIP image encoder (ViT-H/14 in Wan2.1's I2V / FLF2V models)")
            return true
        }
        return false
    }

    /// The source, layout, GGUF header and the storage types with their tensor, byte and parameter counts.
    func printStorage(_ source: WeightSource, layout: String) throws {
        print("source:     \(source.label)")
        print("layout:     \(layout)")
        let base = (source as? LayoutSource)?.base ?? source
        if let g = base as? GGUFSource {
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
    }

    func describeDiT(_ w: DiTWeights) throws {
        let source = w.source
        try printStorage(source, layout: w.layout)
        var config = try WanDiTConfig(inferringFrom: source)
        if let a = w.arguments { config.apply(officialArguments: a) }
        try config.validate(source: source.label)
        print("config:     \(config)")
        print("            patch \(config.patchSize), freq_dim \(config.freqDim), text_len \(config.textLen), qk_norm \(config.qkNorm), cross_attn_norm \(config.crossAttnNorm), eps \(config.eps)")
        print("            heads \(w.arguments?["num_heads"] != nil ? "from config.json" : "assumed of 128 (not visible in the weights)")")
        let task: String
        if source.info("vace_patch_embedding.weight") != nil {
            let vace = try WanVACEConfig(inferringFrom: source, arguments: w.arguments)
            task = "vace (video creation and editing: vace blocks after layers \(vace.vaceLayers), vace_in_dim \(vace.vaceInDim))"
        } else {
            switch config.modelType {
            case "t2v": task = "t2v (text to video)"
            case "i2v": task = "i2v (image to video: CLIP image embedding, 36 input channels)"
            case "flf2v": task = "flf2v (first-last frame to video)"
            default: task = config.modelType
            }
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
