import Foundation
import WanTensor
import WanWeights
import WanModels

extension ConformanceRunner {
    /// The weights of VAE `model` and its official arguments (the model JSON's config over what the file states), or
    /// nil for a layout of several files.
    func vaeWeights(_ model: String) throws -> (source: WeightSource, arguments: [String: Any])? {
        let json = try modelJSON(model)
        let files = (json["files"] as? [String]) ?? [model + ".safetensors"]
        guard files.count == 1 else { return nil }
        let weights = try openVAEWeights(path: (weightsDirectory as NSString).appendingPathComponent(files[0]))
        var arguments = weights.arguments ?? [:]
        for (k, v) in json["config"] as? [String: Any] ?? [:] { arguments[k] = v }
        return (weights.source, arguments)
    }

    func vae(_ model: String) throws -> WanVAE? {
        if let v = vaes[model] { return v }
        guard let weights = try vaeWeights(model) else { return nil }
        let vae = try WanVAE(weights: weights.source, arguments: weights.arguments)
        vaes[model] = vae
        return vae
    }

    /// The VAE of `model` made by `vaeFactory` (the configuration and weights `vae(_:)` binds), cached.
    func factoryVAE(_ model: String, _ factory: (WanVAEConfig, WeightSource) throws -> VAECoding) throws -> VAECoding? {
        if let v = factoryVAEs[model] { return v }
        guard let weights = try vaeWeights(model) else { return nil }
        let vae = try factory(WanVAEConfig(inferringFrom: weights.source, arguments: weights.arguments), weights.source)
        factoryVAEs[model] = vae
        return vae
    }

    /// Golden cases of component `vae` (and `weights` cases of VAE models): encode, decode, round trip.
    func runVAE(_ c: GoldenCase) throws -> CaseResult {
        guard let model = c.model else { return .skip(c.name, "case names no model") }
        let found: VAECoding?
        if let factory = vaeFactory { found = try factoryVAE(model, factory) } else { found = try vae(model) }
        guard let vae = found else {
            let json = try modelJSON(model)
            return .skip(c.name, "\(json["class"] ?? "?") with layout '\(json["layout"] ?? "?")' is not implemented yet")
        }
        var got: [String: Tensor] = [:]
        var latent: Tensor? = c.hasInput("latent") ? try c.input("latent") : nil
        if c.hasInput("video") {
            let encoded = try vae.encode(try c.input("video"))
            got["latent"] = encoded
            latent = encoded
        }
        if c.outputNames.contains("video"), let latent {
            got["video"] = try vae.decode(latent)
        }
        return compare(c, got)
    }
}
