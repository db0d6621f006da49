import Foundation
import WanTensor
import WanWeights
import WanModels
import WanText

/// Errors of finding a model's files.
public enum ModelFilesError: Error, CustomStringConvertible, Equatable {
    case notFound(String)
    case missingPart(part: String, folder: String, expected: String)

    public var description: String {
        switch self {
        case .notFound(let p): return "model not found: \(p) (pass a model folder, a Hugging Face repo id such as Wan-AI/Wan2.1-T2V-1.3B, or the single files with --dit, --t5, --vae, --tokenizer)"
        case .missingPart(let part, let folder, let expected):
            return "\(folder) has no \(part) (looked for \(expected)); pass it with --\(part)"
        }
    }
}

/// Where the parts of a Wan model are: the DiT, the umT5 encoder, the VAE, the tokenizer (and CLIP for image tasks).
/// Understands the official Wan-AI folders (diffusion_pytorch_model*.safetensors + config.json,
/// models_t5_umt5-xxl-enc-bf16.pth, Wan2.1_VAE.pth, google/umt5-xxl/), diffusers folders (transformer/,
/// text_encoder/, vae/, tokenizer/, image_encoder/), and single files given one by one (ComfyUI users).
public struct ModelFiles: Sendable, Equatable {
    public var dit: String?
    public var t5: String?
    public var vae: String?
    public var tokenizer: String?
    public var clip: String?

    public init(dit: String? = nil, t5: String? = nil, vae: String? = nil, tokenizer: String? = nil, clip: String? = nil) {
        self.dit = dit; self.t5 = t5; self.vae = vae; self.tokenizer = tokenizer; self.clip = clip
    }

    /// The parts found in a model folder (official Wan-AI or diffusers layout).
    public static func discover(in folder: String) throws -> ModelFiles {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: folder, isDirectory: &isDir), isDir.boolValue else { throw ModelFilesError.notFound(folder) }
        func path(_ p: String) -> String { (folder as NSString).appendingPathComponent(p) }
        func exists(_ p: String) -> Bool { fm.fileExists(atPath: path(p)) }
        let entries = (try? fm.contentsOfDirectory(atPath: folder)) ?? []
        var files = ModelFiles()
        // Diffusers.
        if exists("transformer") { files.dit = path("transformer") }
        if exists("text_encoder") { files.t5 = path("text_encoder") }
        if exists("vae") { files.vae = path("vae") }
        if exists("tokenizer/tokenizer.json") { files.tokenizer = path("tokenizer") }
        if exists("image_encoder") { files.clip = path("image_encoder") }
        // Official Wan-AI.
        if files.dit == nil, entries.contains(where: { $0.hasPrefix("diffusion_pytorch_model") && ($0.hasSuffix(".safetensors") || $0.hasSuffix(".json")) }) {
            files.dit = folder
        }
        if files.t5 == nil, let t5 = entries.first(where: { $0.hasPrefix("models_t5") && $0.hasSuffix(".pth") }) { files.t5 = path(t5) }
        if files.vae == nil, let vae = entries.first(where: { $0.lowercased().contains("vae") && ($0.hasSuffix(".pth") || $0.hasSuffix(".safetensors")) }) { files.vae = path(vae) }
        if files.tokenizer == nil {
            for candidate in ["google/umt5-xxl", "umt5-xxl", "tokenizer"] where exists(candidate + "/tokenizer.json") { files.tokenizer = path(candidate); break }
        }
        if files.clip == nil, let clip = entries.first(where: { $0.hasPrefix("models_clip") && $0.hasSuffix(".pth") }) { files.clip = path(clip) }
        return files
    }

    /// `overrides` wins over what the folder holds.
    public func overridden(by o: ModelFiles) -> ModelFiles {
        ModelFiles(dit: o.dit ?? dit, t5: o.t5 ?? t5, vae: o.vae ?? vae, tokenizer: o.tokenizer ?? tokenizer, clip: o.clip ?? clip)
    }

    /// Throws naming the first part a text-to-video run lacks.
    public func requireTextToVideo(folder: String) throws {
        if dit == nil { throw ModelFilesError.missingPart(part: "dit", folder: folder, expected: "diffusion_pytorch_model*.safetensors or transformer/") }
        if t5 == nil { throw ModelFilesError.missingPart(part: "t5", folder: folder, expected: "models_t5_umt5-xxl-enc-bf16.pth or text_encoder/") }
        if vae == nil { throw ModelFilesError.missingPart(part: "vae", folder: folder, expected: "Wan2.1_VAE.pth or vae/") }
        if tokenizer == nil { throw ModelFilesError.missingPart(part: "tokenizer", folder: folder, expected: "google/umt5-xxl/tokenizer.json or tokenizer/") }
    }
}

/// Constructor arguments stated beside a weights file by WanKit's convention: `<file without extension>.json`
/// holding {"config": {official constructor arguments}} (the format of the golden model descriptions).
public func sidecarArguments(for path: String) -> [String: Any]? {
    let json = (path as NSString).deletingPathExtension + ".json"
    guard json != path, let data = FileManager.default.contents(atPath: json),
          let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
          let config = object["config"] as? [String: Any] else { return nil }
    return config
}

func merged(_ a: [String: Any]?, _ b: [String: Any]?) -> [String: Any]? {
    guard a != nil || b != nil else { return nil }
    var out = a ?? [:]
    for (k, v) in b ?? [:] { out[k] = v }
    return out
}

/// Loaders of each part from its path (every layout WanKit reads).
public enum ModelLoader {
    /// `products`: the type of the CPU's product inputs (`CPUBackend.products`; `DiTPlacement.products`).
    public static func dit(_ path: String, products: ProductType = .f32) throws -> WanDiT {
        let w = try openDiTWeights(path: path)
        return try WanDiT(weights: w.source, arguments: merged(w.arguments, sidecarArguments(for: path)), products: products)
    }
    /// The encoder hands each layer's pages of the mapping back after use: it runs once per prompt, and its
    /// 11 GB (umT5-XXL bf16) must not stay resident next to the DiT.
    public static func t5(_ path: String, products: ProductType = .f32) throws -> UMT5Encoder {
        let w = try openT5Weights(path: path)
        let encoder = try UMT5Encoder(weights: w.source, arguments: merged(w.arguments, sidecarArguments(for: path)) ?? [:], products: products)
        encoder.releasesMappedPages = true
        return encoder
    }
    public static func vae(_ path: String) throws -> WanVAE {
        let w = try openVAEWeights(path: path)
        return try WanVAE(weights: w.source, arguments: merged(w.arguments, sidecarArguments(for: path)))
    }
    public static func tokenizer(_ path: String) throws -> UMT5Tokenizer { try UMT5Tokenizer(file: path) }

    /// A DiT file or folder as the model it holds: a VACE checkpoint (it has `vace_patch_embedding.weight`) or a
    /// plain t2v / i2v / flf2v one. The weights are opened (mapped) once.
    public enum DiTModel {
        /// t2v / i2v / flf2v, on the CPU (`WanDiT`) or a GPU (`CUDADiT`).
        case plain(any DiTDenoiser)
        /// A VACE checkpoint, on the CPU (`WanVACEDiT`) or a GPU (`CUDAVACE`).
        case vace(any VACEDenoiser)
    }

    public static func anyDiT(_ path: String, products: ProductType = .f32) throws -> DiTModel {
        let w = try openDiTWeights(path: path)
        let arguments = merged(w.arguments, sidecarArguments(for: path))
        if w.source.info("vace_patch_embedding.weight") != nil {
            return .vace(try WanVACEDiT(weights: w.source, arguments: arguments, products: products))
        }
        return .plain(try WanDiT(weights: w.source, arguments: arguments, products: products))
    }

    /// The text conditioning (tokenizer + umT5) of located files.
    public static func text(_ files: ModelFiles, folder: String = "the model folder", products: ProductType = .f32) throws -> TextConditioner {
        try files.requireTextToVideo(folder: folder)
        return TextConditioner(tokenizer: try tokenizer(files.tokenizer!), encoder: try t5(files.t5!, products: products))
    }

    /// Precomputed CLIP image features from a safetensors file: its only tensor, or the one named `clip_features`
    /// ([images, 257, 1280], what the image pipelines take as `clipFeatures`).
    public static func clipFeatures(_ path: String) throws -> Tensor {
        let source = try SafetensorsSource(path: path)
        let names = source.names.sorted()
        guard let name = names.count == 1 ? names[0] : names.first(where: { $0 == "clip_features" }) else {
            throw GenerationError.invalidSettings("\(path) holds \(names.count) tensors (\(names.prefix(5).joined(separator: ", "))); give a file with one tensor, or one named clip_features")
        }
        return try source.float32(name)
    }

    /// The text-to-video pipeline from located files for videos up to `width` x `height` x `frames`, on `placement`
    /// (see `DiTPlacement.resolve`; by default the CPU with bf16 products where it runs them natively, as `wan generate`
    /// does, else f32; `.cpu` keeps float32 throughout): on a GPU the DiT goes first, after its memory pre-flight for that size (a job
    /// that cannot fit throws `CUDAError.outOfMemory` naming what is needed and free); umT5 and the VAE join it when
    /// they fit in what is left, else they run on the CPU.
    public static func textToVideo(_ files: ModelFiles, folder: String = "the model folder", on placement: DiTPlacement = .cpuDefault,
                                   width: Int = 832, height: Int = 480, frames: Int = 81) throws -> TextToVideo {
        try files.requireTextToVideo(folder: folder)
        let model = try anyDiT(files.dit!, on: placement, width: width, height: height, frames: frames)
        guard case .plain(let dit) = model else { throw GenerationError.modelMismatch("this is a VACE DiT; text-to-video needs a t2v model (use VACEPipeline)") }
        let text = try text(files, folder: folder, on: placement).text
        return try TextToVideo(text: text, dit: dit, vae: try vae(files.vae!, on: placement, width: width, height: height).vae)
    }
}
