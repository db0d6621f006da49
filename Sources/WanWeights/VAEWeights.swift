import Foundation

/// A Wan-VAE checkpoint opened whatever its layout, under the official `WanVAE_` names.
public struct VAEWeights {
    public let source: WeightSource
    /// Official constructor arguments (dim, z_dim, dim_mult, …, latent_mean, latent_std) when the files say them.
    public let arguments: [String: Any]?
    public let layout: String
}

/// diffusers' `AutoencoderKLWan` names mapped to the official `WanVAE_` ones.
public enum DiffusersWanVAE {
    public static let className = "AutoencoderKLWan"

    public static func detect(_ names: [String]) -> Bool {
        names.contains { $0.hasPrefix("encoder.conv_in.") || $0.hasPrefix("decoder.conv_in.") || $0.hasPrefix("quant_conv.") }
    }

    /// The official name of a diffusers VAE name (`numResBlocks` as in the config: each decoder up block holds
    /// numResBlocks + 1 resnets and then its upsampler).
    public static func officialName(_ name: String, numResBlocks: Int = 2) -> String {
        var parts = name.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        func join(_ p: [String]) -> String { p.joined(separator: ".") }
        let resnetParts: [String: [String]] = ["norm1": ["residual", "0"], "conv1": ["residual", "2"], "norm2": ["residual", "3"],
                                               "conv2": ["residual", "6"], "conv_shortcut": ["shortcut"]]
        func resnet(_ prefix: [String], _ rest: ArraySlice<String>) -> String {
            guard let first = rest.first, let mapped = resnetParts[first] else { return join(prefix + rest) }
            return join(prefix + mapped + rest.dropFirst())
        }
        switch parts.first {
        case "quant_conv": parts[0] = "conv1"; return join(parts)
        case "post_quant_conv": parts[0] = "conv2"; return join(parts)
        case "encoder", "decoder":
            guard parts.count >= 2 else { return name }
            let coder = parts[0]
            switch parts[1] {
            case "conv_in": return join([coder, "conv1"] + parts[2...])
            case "conv_out": return join([coder, "head", "2"] + parts[2...])
            case "norm_out": return join([coder, "head", "0"] + parts[2...])
            case "mid_block":
                guard parts.count >= 4, let i = Int(parts[3]) else { return name }
                if parts[2] == "resnets" { return resnet([coder, "middle", String(i == 0 ? 0 : 2)], parts[4...]) }
                if parts[2] == "attentions" { return join([coder, "middle", "1"] + parts[4...]) }
                return name
            case "down_blocks":
                guard parts.count >= 3 else { return name }
                return resnet([coder, "downsamples", parts[2]], parts[3...])
            case "up_blocks":
                guard parts.count >= 5, let block = Int(parts[2]), let j = Int(parts[4]) else { return name }
                // Indices beyond any model (a corrupt name) stay unchanged: strict binding reports the name.
                guard (0...1 << 20).contains(block), (0...1 << 20).contains(j), (0...1 << 20).contains(numResBlocks) else { return name }
                let stride = numResBlocks + 2
                if parts[3] == "resnets" { return resnet([coder, "upsamples", String(block * stride + j)], parts[5...]) }
                if parts[3] == "upsamplers" { return join([coder, "upsamples", String(block * stride + numResBlocks + 1)] + parts[5...]) }
                return name
            default: return name
            }
        default: return name
        }
    }

    /// The official arguments of a diffusers VAE config.json (nil without one) and the num_res_blocks its names
    /// are read with: the config's, else what the names show (each decoder up block holds num_res_blocks + 1
    /// resnets), else Wan2.1's 2. `configPath` names the config in errors.
    static func configuration(_ config: [String: Any]?, configPath: String, names: [String]) throws -> (arguments: [String: Any]?, numResBlocks: Int) {
        var numRes = 2
        if let v = (config?["num_res_blocks"] as? NSNumber)?.intValue {
            numRes = v
        } else {
            let last = names.compactMap { n -> Int? in
                let p = n.split(separator: ".")
                guard p.count > 4, p[0] == "decoder", p[1] == "up_blocks", p[3] == "resnets" else { return nil }
                return Int(p[4])
            }.max()
            if let last { numRes = last }
        }
        guard (0...64).contains(numRes) else {
            throw LayoutError.badDiffusersConfig(path: configPath,
                                                 detail: "num_res_blocks \(numRes) is not an integer from 0 to 64 (Wan2.1: 2); the config.json is corrupt")
        }
        return (config.map(officialArguments), numRes)
    }

    /// Official constructor arguments of a diffusers VAE config.json.
    public static func officialArguments(_ c: [String: Any]) -> [String: Any] {
        var a: [String: Any] = [:]
        let renames = ["base_dim": "dim", "z_dim": "z_dim", "dim_mult": "dim_mult", "num_res_blocks": "num_res_blocks",
                       "attn_scales": "attn_scales", "temperal_downsample": "temperal_downsample",
                       "latents_mean": "latent_mean", "latents_std": "latent_std"]
        for (d, o) in renames { if let v = c[d], !(v is NSNull) { a[o] = v } }
        return a
    }
}

/// Opens a Wan-VAE from a file or folder: the official `Wan2.1_VAE.pth` (torch zip), a safetensors file with the
/// official (or ComfyUI) names or diffusers names, or a diffusers folder (`vae/` or one with an AutoencoderKLWan
/// config.json).
public func openVAEWeights(path: String) throws -> VAEWeights {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { throw WeightError.fileNotFound(path: path) }
    if isDir.boolValue {
        let c = try ComponentFolder(path, subfolders: ["vae"], noWeights: "pass Wan2.1_VAE.pth or a diffusers vae/ folder")
        let base = c.weights
        let (arguments, numRes) = try DiffusersWanVAE.configuration(c.config, configPath: (c.folder as NSString).appendingPathComponent("config.json"),
                                                                    names: base.names)
        let source: WeightSource = DiffusersWanVAE.detect(base.names)
            ? try RenamedSource(wrapping: base) { DiffusersWanVAE.officialName($0, numResBlocks: numRes) } : base
        return VAEWeights(source: source, arguments: arguments, layout: "diffusers")
    }
    if path.hasSuffix(".pth") || path.hasSuffix(".pt") || path.hasSuffix(".ckpt") {
        return VAEWeights(source: try TorchCheckpoint(path: path), arguments: nil, layout: "official-pth")
    }
    let base = try SafetensorsSource(path: path)
    if DiffusersWanVAE.detect(base.names) {
        // A file of a diffusers vae/ folder: the config.json beside it holds the architecture and the latent
        // statistics (without it, num_res_blocks comes from the names and the rest from the shapes).
        let configPath = ((path as NSString).deletingLastPathComponent as NSString).appendingPathComponent("config.json")
        var config: [String: Any]? = nil
        if FileManager.default.fileExists(atPath: configPath) {
            let c = try readJSONObject(configPath, what: "config.json")
            if (c["_class_name"] as? String) == DiffusersWanVAE.className || c["base_dim"] != nil { config = c }
        }
        let (arguments, numRes) = try DiffusersWanVAE.configuration(config, configPath: configPath, names: base.names)
        return VAEWeights(source: try RenamedSource(wrapping: base) { DiffusersWanVAE.officialName($0, numResBlocks: numRes) },
                          arguments: arguments, layout: "diffusers")
    }
    // ComfyUI VAE files may carry a "vae." / "first_stage_model." prefix.
    for prefix in ["first_stage_model.", "vae."] where !base.names.isEmpty && base.names.allSatisfy({ $0.hasPrefix(prefix) }) {
        return VAEWeights(source: try RenamedSource(wrapping: base) { String($0.dropFirst(prefix.count)) }, arguments: nil, layout: "official")
    }
    return VAEWeights(source: base, arguments: nil, layout: "official")
}
