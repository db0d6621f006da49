import Foundation
import WanTensor
import WanWeights
import WanModels

extension ConformanceRunner {
    /// The umT5 encoder of `model` on the runner's backend (`t5Factory`'s, else the CPU `UMT5Encoder`), cached.
    func t5(_ model: String) throws -> UMT5TextEncoder {
        if let m = t5Encoders[model] { return m }
        let json = try modelJSON(model)
        let files = (json["files"] as? [String]) ?? [model + ".safetensors"]
        guard files.count == 1 else { throw WeightError.badConfig(source: model, detail: "a umT5 encoder is one file or folder, got \(files)") }
        let weights = try openT5Weights(path: (weightsDirectory as NSString).appendingPathComponent(files[0]))
        // The model JSON's config (official arguments) overrides what the files state, which overrides inference.
        var arguments = weights.arguments ?? [:]
        for (k, v) in json["config"] as? [String: Any] ?? [:] { arguments[k] = v }
        let m: UMT5TextEncoder
        if let factory = t5Factory {
            m = try factory(UMT5Config.inferred(from: weights.source, arguments: arguments), weights.source)
        } else {
            m = try UMT5Encoder(weights: weights.source, arguments: arguments, products: cpuProducts)
        }
        t5Encoders[model] = m
        return m
    }

    /// The CLIP tower of `model` on the runner's backend (`clipFactory`'s, else the CPU `CLIPVision`), cached.
    func clip(_ model: String) throws -> CLIPImageEncoder {
        if let m = clipEncoders[model] { return m }
        let json = try modelJSON(model)
        let files = (json["files"] as? [String]) ?? [model + ".safetensors"]
        guard files.count == 1 else { throw WeightError.badConfig(source: model, detail: "a CLIP vision tower is one file or folder, got \(files)") }
        let weights = try openCLIPWeights(path: (weightsDirectory as NSString).appendingPathComponent(files[0]))
        var arguments = weights.arguments ?? [:]
        for (k, v) in json["config"] as? [String: Any] ?? [:] { arguments[k] = v }
        let m: CLIPImageEncoder
        if let factory = clipFactory {
            m = try factory(CLIPVisionConfig.inferred(from: weights.source, arguments: arguments), weights.source)
        } else {
            m = try CLIPVision(weights: weights.source, arguments: arguments, products: cpuProducts)
        }
        clipEncoders[model] = m
        return m
    }

    /// Golden cases of component `t5` (and `weights` cases of umT5 models): ids/mask [B, L] → `hiddenN`, the hidden
    /// states of sample N's real tokens.
    func runT5(_ c: GoldenCase) throws -> CaseResult {
        guard let model = c.model else { return .skip(c.name, "case names no model") }
        let encoder = try t5(model)
        let ids = try encoderIntegerInput(c, "ids")
        let mask = c.hasInput("mask") ? try encoderIntegerInput(c, "mask") : nil
        var got: [String: Tensor] = [:]
        if c.outputNames.contains(where: { $0.hasPrefix("hidden") }) {
            for (i, t) in try encoder.encode(ids: ids, mask: mask).enumerated() { got["hidden\(i)"] = t }
        }
        if c.outputNames.contains("out") || c.outputNames.contains("hidden") {
            let full = try encoder.forward(ids: ids, mask: mask)
            got["out"] = full
            got["hidden"] = full
        }
        return compare(c, got)
    }

    /// An integer input (token ids, mask) read exactly and held as float values (exact below 2^24), shaped as the
    /// case says.
    func encoderIntegerInput(_ c: GoldenCase, _ name: String) throws -> Tensor {
        guard let spec = c.inputs[name] as? [String: Any], let key = spec["tensor"] as? String,
              let (file, info) = c.tensors.location(key) else { return try c.input(name) }
        let p = file.pointer(info)
        let n = info.elementCount
        let shape = (spec["shape"] as? [Int]) ?? info.shape
        let t = Tensor(uninitialized: shape)
        guard t.count == n else { throw EncoderInputError("input \(name): shape \(shape) for \(n) values") }
        switch info.dtype {
        case .i64: for i in 0..<n { t.data[i] = Float(p.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self)) }
        case .i32: for i in 0..<n { t.data[i] = Float(p.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self)) }
        case .i16: for i in 0..<n { t.data[i] = Float(p.loadUnaligned(fromByteOffset: 2 * i, as: Int16.self)) }
        case .i8: for i in 0..<n { t.data[i] = Float(p.load(fromByteOffset: i, as: Int8.self)) }
        case .u8, .bool: for i in 0..<n { t.data[i] = Float(p.load(fromByteOffset: i, as: UInt8.self)) }
        default: return try c.input(name)
        }
        return t
    }

    /// Golden cases of component `clip` (and `weights` cases of CLIP vision models): image [3, F, H, W] in [-1, 1]
    /// → features [F, 257, dim] as `CLIPModel.visual` returns them.
    func runCLIP(_ c: GoldenCase) throws -> CaseResult {
        guard let model = c.model else { return .skip(c.name, "case names no model") }
        let encoder = try clip(model)
        var got: [String: Tensor] = [:]
        let features: Tensor
        if c.hasInput("image") {
            features = try encoder.visual(try c.input("image"))
        } else if c.hasInput("images") {
            let images = try c.input("images")  // [N, 3, 1, H, W]
            let per = images.count / images.shape[0]
            features = try encoder.visual((0..<images.shape[0]).map { i in
                let t = Tensor(uninitialized: Array(images.shape.dropFirst()))
                t.data.update(from: images.data + i * per, count: per)
                return t
            })
        } else if c.hasInput("pixels") {
            features = try encoder.forward(pixels: try c.input("pixels"))
        } else {
            return .fail(c.name, "case has no image input")
        }
        for name in c.outputNames { got[name] = features }
        return compare(c, got)
    }
}
