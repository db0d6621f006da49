import Foundation
import WanTensor
import WanWeights
import WanModels

extension ConformanceRunner {
    func vae(_ model: String) throws -> WanVAE? {
        if let v = vaes[model] { return v }
        let json = try modelJSON(model)
        let files = (json["files"] as? [String]) ?? [model + ".safetensors"]
        guard files.count == 1 else { return nil }
        let weights = try openVAEWeights(path: (weightsDirectory as NSString).appendingPathComponent(files[0]))
        var arguments = weights.arguments ?? [:]
        for (k, v) in json["config"] as? [String: Any] ?? [:] { arguments[k] = v }
        let vae = try WanVAE(weights: weights.source, arguments: arguments)
        vaes[model] = vae
        return vae
    }

    /// Golden cases of component `vae` (and `weights` cases of VAE models): encode, decode, round trip.
    func runVAE(_ c: GoldenCase) throws -> CaseResult {
        guard let model = c.model else { return .skip(c.name, "case names no model") }
        guard let vae = try vae(model) else {
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
