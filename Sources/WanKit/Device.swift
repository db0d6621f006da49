import Foundation

/// Where a pipeline's DiT runs: the CPU (`WanDiT`) or an NVIDIA GPU (`CUDADiT`, weights uploaded once). The text
/// encoder, CLIP and the VAE run on the CPU so far.
public struct DiTPlacement: CustomStringConvertible {
    /// The GPU's context; nil on the CPU.
    public let gpu: CUDAContext?
    /// The GPU's arithmetic (bf16 as the official code computes under autocast, or f32 with TF32 off).
    public let precision: CUDAPrecision
    /// Products whose weight is stored as e4m3 (fp8_scaled files) run as cuBLASLt fp8 matmuls
    /// (`CUDAComputeBackend.fp8Products`: bf16, compute capability 8.9+; loading the DiT throws elsewhere).
    public var fp8Products: Bool

    /// The CPU, products in f32.
    public static let cpu = DiTPlacement(gpu: nil, precision: .f32)
    /// The CPU with bf16 products (`CPUBackend.products`): about twice as fast where `GEMM.nativeBF16`.
    public static let cpuBF16 = DiTPlacement(gpu: nil, precision: .bf16)

    /// The CPU at its default: bf16 products where the CPU runs them natively (`GEMM.nativeBF16`), else f32.
    public static var cpuDefault: DiTPlacement { GEMM.nativeBF16 ? .cpuBF16 : .cpu }

    /// The CPU models' product type: bf16 at precision bf16 (with `gpu` nil), else f32.
    public var products: ProductType { precision == .bf16 ? .bf16 : .f32 }

    public init(gpu: CUDAContext?, precision: CUDAPrecision = .bf16, fp8Products: Bool = false) {
        self.gpu = gpu; self.precision = precision; self.fp8Products = fp8Products
    }

    public var isGPU: Bool { gpu != nil }

    public var description: String {
        guard let gpu else { return precision == .bf16 ? "cpu (bf16 products)" : "cpu" }
        return "cuda:\(gpu.info.ordinal) \(gpu.info.name) (compute capability \(gpu.info.computeCapability), \(precision.rawValue)\(fp8Products ? ", fp8 products" : ""))"
    }

    /// `--device auto|cpu|cuda`: `auto` takes a working GPU and otherwise the CPU, with `note` saying in one line
    /// why; `cuda` without a usable GPU throws the `CUDAError` that names what is missing and the fix. On the CPU,
    /// bf16 gives bf16 products where the CPU runs them natively (`GEMM.nativeBF16`), else f32.
    public static func resolve(_ choice: ComputeDevice, precision: CUDAPrecision = .bf16) throws -> (placement: DiTPlacement, note: String?) {
        switch try choice.resolve() {
        case .cpu(let reason):
            return (precision == .bf16 ? .cpuDefault : .cpu, reason.map { "running on the CPU (no GPU: \($0))" })
        case .cuda(let gpu, _, _):
            return (DiTPlacement(gpu: try CUDAContext(ordinal: gpu.ordinal), precision: precision), nil)
        }
    }

    /// The DiT's sequence length for a job of `settings` (latent frames x latent pixels / patch volume).
    public static func tokens(_ c: WanDiTConfig, width: Int, height: Int, frames: Int, vae: WanVAEConfig = .wan21) -> Int {
        let t = (frames - 1) / vae.temporalFactor + 1
        let (h, w) = (height / vae.spatialFactor, width / vae.spatialFactor)
        return (t / c.patchSize[0]) * (h / c.patchSize[1]) * (w / c.patchSize[2])
    }
}

extension ModelLoader {
    /// The DiT on `placement`. On a GPU the job's memory (`CUDADiTMemory`: weights, two conditionings, one forward's
    /// activations for a video of `width` x `height` x `frames`) is checked against the GPU's free memory before
    /// anything is uploaded, and the mapping's pages are handed back once the weights are on the device. A VACE
    /// checkpoint loads as `vaceDiT(_:on:width:height:frames:references:checkMemory:)` loads it (`references`: VACE's
    /// reference images). `checkMemory: false` skips the GPU check (an allocation that fails still throws
    /// `CUDAError.outOfMemory`).
    public static func anyDiT(_ path: String, on placement: DiTPlacement, width: Int, height: Int, frames: Int,
                              imageRows: Int = 0, references: Int = 0, checkMemory: Bool = true) throws -> DiTModel {
        guard let gpu = placement.gpu else { return try anyDiT(path, products: placement.products) }
        let w = try openDiTWeights(path: path)
        if w.source.info("vace_patch_embedding.weight") != nil {
            return .vace(try vaceDiT(path, on: placement, width: width, height: height, frames: frames, references: references,
                                     checkMemory: checkMemory))
        }
        var config = try WanDiTConfig(inferringFrom: w.source)
        if let arguments = merged(w.arguments, sidecarArguments(for: path)) { config.apply(officialArguments: arguments) }
        try config.validate(source: w.source.label)
        let tokens = DiTPlacement.tokens(config, width: width, height: height, frames: frames)
        if checkMemory { try CUDADiTMemory(config: config, precision: placement.precision, tokens: tokens, imageRows: imageRows,
                                           weightBytes: CUDADiTPlan.weightBytes(config, precision: placement.precision, weights: w.source),
                                           fp8Products: placement.fp8Products).check(on: gpu) }
        let dit = try CUDADiT(config: config, weights: w.source, precision: placement.precision, context: gpu, fp8Products: placement.fp8Products)
        MappedFile.releaseAllResidentPages()
        return .plain(dit)
    }
}

extension ModelLoader {
    /// The VACE DiT on `placement`: the CPU `WanVACEDiT`, or `CUDAVACE` on a GPU, whose job memory
    /// (`CUDAVACEMemory`: both models' weights, two conditionings, one forward's activations for a video of `width` x
    /// `height` x `frames` plus `references` reference frames) is checked against the GPU's free memory before
    /// anything is uploaded; the mapping's pages are handed back once the weights are on the device.
    public static func vaceDiT(_ path: String, on placement: DiTPlacement, width: Int, height: Int, frames: Int,
                               references: Int = 0, checkMemory: Bool = true) throws -> any VACEDenoiser {
        let w = try openDiTWeights(path: path)
        guard w.source.info("vace_patch_embedding.weight") != nil else {
            throw GenerationError.modelMismatch("\(path) is not a VACE DiT (no vace_patch_embedding)")
        }
        let arguments = merged(w.arguments, sidecarArguments(for: path))
        guard let gpu = placement.gpu else { return try WanVACEDiT(weights: w.source, arguments: arguments, products: placement.products) }
        let config = try WanVACEConfig(inferringFrom: w.source, arguments: arguments)
        _ = try WanVACEDiT.branchConfigs(config, label: w.source.label)
        let p = config.dit.patchSize
        let tokens = DiTPlacement.tokens(config.dit, width: width, height: height, frames: frames)
            + references * (height / WanVAEConfig.wan21.spatialFactor / p[1]) * (width / WanVAEConfig.wan21.spatialFactor / p[2]) / p[0]
        if checkMemory { try CUDAVACEMemory(config: config, precision: placement.precision, tokens: tokens, weights: w.source,
                                            fp8Products: placement.fp8Products).check(on: gpu) }
        let dit = try CUDAVACE(config: config, weights: w.source, precision: placement.precision, context: gpu, fp8Products: placement.fp8Products)
        MappedFile.releaseAllResidentPages()
        return dit
    }
}

extension ModelLoader {
    /// The umT5 encoder for a job on `placement`: on the GPU when its weights (and one encode of the official 512
    /// tokens) fit in the GPU's free memory now, else on the CPU with `note` saying why. On the CPU placement, the CPU
    /// encoder. (`wan generate` loads it before the DiT, encodes both prompts with `TextConditioner.prepare(_:
    /// releasingEncoder:)` and releases it, so umT5 and the DiT never share the GPU.)
    public static func t5(_ path: String, on placement: DiTPlacement) throws -> (encoder: any UMT5TextEncoder, note: String?) {
        guard let gpu = placement.gpu else { return (try t5(path, products: placement.products), nil) }
        let w = try openT5Weights(path: path)
        let arguments = merged(w.arguments, sidecarArguments(for: path)) ?? [:]
        let config = UMT5Config.inferred(from: w.source, arguments: arguments)
        try config.validate(source: w.source.label)
        let need = CUDAUMT5.weightBytes(config, precision: placement.precision)
            + 2 * CUDAUMT5.activationBytes(config, precision: placement.precision, rows: 512) + CUDADiTMemory.reserveBytes
        let free = try gpu.memoryInfo().free
        guard need <= free else {
            return (try t5(path), String(format: "umT5 runs on the CPU: it needs %.1f GB of GPU memory, %.1f GB is free",
                                         Double(need) / 1e9, Double(free) / 1e9))
        }
        let encoder = try CUDAUMT5(config: config, weights: w.source, precision: placement.precision, context: gpu)
        MappedFile.releaseAllResidentPages()
        return (encoder, nil)
    }

    /// The text conditioning (tokenizer + umT5) of located files, the encoder placed as `t5(_:on:)` places it.
    public static func text(_ files: ModelFiles, folder: String = "the model folder", on placement: DiTPlacement) throws -> (text: TextConditioner, note: String?) {
        guard placement.isGPU else { return (try text(files, folder: folder, products: placement.products), nil) }
        try files.requireTextToVideo(folder: folder)
        let (encoder, note) = try t5(files.t5!, on: placement)
        return (TextConditioner(tokenizer: try tokenizer(files.tokenizer!), encoder: encoder), note)
    }
}

extension ModelLoader {
    /// The Wan-VAE beside a DiT on `placement`: on the GPU when its weights and the causal state of a
    /// `width` x `height` video (encode or decode, whichever is larger) fit in the GPU's free memory now (load it after
    /// the DiT and umT5; the DiT hands its activations back before the decode), else on the CPU with `note` saying
    /// why. On the CPU placement, the CPU VAE.
    public static func vae(_ path: String, on placement: DiTPlacement, width: Int, height: Int) throws -> (vae: any VAECoding, note: String?) {
        guard let gpu = placement.gpu else { return (try vae(path), nil) }
        let w = try openVAEWeights(path: path)
        let config = WanVAEConfig(inferringFrom: w.source, arguments: merged(w.arguments, sidecarArguments(for: path)) ?? [:])
        try config.validate(source: w.source.label)
        let planned = vaeDeviceBytes(config, width: width, height: height, precision: placement.precision)
        let need = planned.fixed + planned.state + CUDADiTMemory.reserveBytes
        let free = try gpu.memoryInfo().free
        guard need <= free else {
            return (try vae(path), String(format: "the VAE runs on the CPU: at %dx%d it needs %.1f GB of GPU memory, %.1f GB is free beside the DiT",
                                          width, height, Double(need) / 1e9, Double(free) / 1e9))
        }
        return (try CUDAVAE(config: config, weights: w.source, precision: placement.precision, context: gpu), nil)
    }

    /// The GPU memory a `CUDAVAE` coding `width` x `height` frames at `precision` plans: `fixed`, its weights, column
    /// buffer, the largest attention's scores and cuBLASLt's workspace (`CUDAVAE.fixedDeviceBytes`); `state`, the
    /// causal state and frames in flight of the larger of a decode and an encode at this size (`decodeStateBytes`,
    /// `encodeStateBytes`; the state in `CUDAVAE.stateType`: bf16 at `.bf16`).
    public static func vaeDeviceBytes(_ config: WanVAEConfig, width: Int, height: Int, precision: CUDAPrecision) -> (fixed: Int, state: Int) {
        let latentPixels = (width / config.spatialFactor) * (height / config.spatialFactor)
        let value = CUDAVAE.stateType(precision).size
        let state = max(config.decodeStateBytes(width: width, height: height, stateValueBytes: value),
                        config.encodeStateBytes(width: width, height: height, stateValueBytes: value))
        return (CUDAVAE.fixedDeviceBytes(config: config, latentPixels: latentPixels, precision: precision), state)
    }
}

extension ModelLoader {
    /// The CLIP image tower (`openCLIPWeights`: .pth, safetensors or a transformers folder), on the CPU.
    public static func clip(_ path: String, products: ProductType = .f32) throws -> CLIPVision {
        let w = try openCLIPWeights(path: path)
        return try CLIPVision(weights: w.source, arguments: merged(w.arguments, sidecarArguments(for: path)) ?? [:], products: products)
    }

    /// The CLIP image tower beside a DiT on `placement`: on the GPU when its weights (and a batch of two images)
    /// fit in the GPU's free memory now, else on the CPU with `note` saying why.
    public static func clip(_ path: String, on placement: DiTPlacement) throws -> (encoder: any CLIPImageEncoder, note: String?) {
        guard let gpu = placement.gpu else { return (try clip(path, products: placement.products), nil) }
        let w = try openCLIPWeights(path: path)
        let config = CLIPVisionConfig.inferred(from: w.source, arguments: merged(w.arguments, sidecarArguments(for: path)) ?? [:])
        let rows = 2 * config.tokens, t = placement.precision.activation.size
        let weights = (config.numLayers - 1) * (4 * config.dim * config.dim + 2 * config.dim * config.mlpDim) * t
        let need = weights + rows * (4 * config.dim + t * (6 * config.dim + config.mlpDim)) + CUDADiTMemory.reserveBytes
        let free = try gpu.memoryInfo().free
        guard need <= free else {
            return (try clip(path), String(format: "CLIP runs on the CPU: it needs %.1f GB of GPU memory, %.1f GB is free beside the DiT",
                                          Double(need) / 1e9, Double(free) / 1e9))
        }
        return (try CUDACLIP(config: config, weights: w.source, precision: placement.precision, context: gpu), nil)
    }
}
