import Foundation
import WanModels
import WanWeights

/// The tasks `wan generate` runs (each has its own memory estimate).
public enum GenerationTask: String, Sendable, CaseIterable {
    case textToVideo = "t2v", imageToVideo = "i2v", firstLastFrame = "flf2v", vace, videoToVideo = "v2v"

    /// The negative prompt the task's pipeline uses when none is given (the official configs').
    public var defaultNegativePrompt: String {
        switch self {
        case .imageToVideo: return NegativePrompts.imageToVideo
        case .firstLastFrame: return NegativePrompts.firstLastFrameToVideo
        case .textToVideo, .vace, .videoToVideo: return NegativePrompts.textToVideo
        }
    }
}

/// The DiT dimensions a memory estimate needs, read from the checkpoint's tensor shapes (header only: nothing is
/// loaded), or guessed from the file size when the file cannot be read that way.
public struct DiTShape: Sendable, Equatable {
    public var dim: Int
    public var ffnDim: Int
    public var inDim: Int
    public var numLayers: Int
    public var patchSize: [Int]
    /// Vace blocks (0: not a VACE checkpoint) and the channels of vace_context.
    public var vaceBlocks: Int
    public var vaceInDim: Int
    public var isVACE: Bool { vaceBlocks > 0 }

    public init(dim: Int, ffnDim: Int, inDim: Int = 16, numLayers: Int, patchSize: [Int] = [1, 2, 2], vaceBlocks: Int = 0, vaceInDim: Int = 96) {
        self.dim = dim; self.ffnDim = ffnDim; self.inDim = inDim; self.numLayers = numLayers; self.patchSize = patchSize
        self.vaceBlocks = vaceBlocks; self.vaceInDim = vaceInDim
    }

    public init(_ c: WanDiTConfig, vaceBlocks: Int = 0, vaceInDim: Int = 96) {
        self.init(dim: c.dim, ffnDim: c.ffnDim, inDim: c.inDim, numLayers: c.numLayers, patchSize: c.patchSize,
                  vaceBlocks: vaceBlocks, vaceInDim: vaceInDim)
    }

    /// The shape of the DiT at `path` (file or folder), nil when it cannot be read.
    public static func read(_ path: String) -> DiTShape? {
        guard let w = try? openDiTWeights(path: path) else { return nil }
        if w.source.info("vace_patch_embedding.weight") != nil,
           let v = try? WanVACEConfig(inferringFrom: w.source, arguments: merged(w.arguments, sidecarArguments(for: path))) {
            return DiTShape(v.dit, vaceBlocks: v.vaceLayers.count, vaceInDim: v.vaceInDim)
        }
        return (try? WanDiTConfig(inferringFrom: w.source)).map { DiTShape($0) }
    }

    /// The configuration with these dimensions (the rest at the official defaults: what the buffer layouts need).
    public var config: WanDiTConfig {
        WanDiTConfig(patchSize: patchSize, inDim: inDim, dim: dim, ffnDim: ffnDim, numHeads: max(1, dim / 128), numLayers: numLayers)
    }

    /// 14B above 10 GB of weights, else 1.3B (a fallback: `read` is preferred).
    public static func guessed(fileBytes: Int) -> DiTShape {
        DiTShape(fileBytes > 10_000_000_000 ? WanDiTConfig.t2v14B : WanDiTConfig.t2v1_3B)
    }
}

/// A rough peak-memory estimate for a generation, made before anything is loaded, so a job that cannot fit is
/// refused with advice instead of being killed halfway. Peak = weights + inputs held for the whole run + the largest
/// of the stages (encoding the conditioning, denoising, decoding).
public struct MemoryEstimate: Sendable {
    public var task: GenerationTask
    /// Mapped / loaded weights: DiT, umT5 (streamed: about 1.5 GB resident), VAE, CLIP (image tasks).
    public var weightsBytes: Int
    /// Held from the conditioning's encoding to the end: source frames, pixel tensors, conditioning latents.
    public var inputsBytes: Int
    /// The VAE encode of the conditioning (encoder state, the tensors it reads).
    public var encodeBytes: Int
    /// One DiT forward, the solver's latents and the prepared contexts.
    public var denoiseBytes: Int
    /// The VAE decoder's state.
    public var decodeBytes: Int

    public init(task: GenerationTask = .textToVideo, weightsBytes: Int, inputsBytes: Int = 0, encodeBytes: Int = 0,
                denoiseBytes: Int, decodeBytes: Int) {
        self.task = task; self.weightsBytes = weightsBytes; self.inputsBytes = inputsBytes; self.encodeBytes = encodeBytes
        self.denoiseBytes = denoiseBytes; self.decodeBytes = decodeBytes
    }

    public var peakBytes: Int { weightsBytes + inputsBytes + max(encodeBytes, denoiseBytes, decodeBytes) }

    public var breakdown: String {
        func gb(_ b: Int) -> String { String(format: "%.1f GB", Double(b) / 1e9) }
        var s = "weights \(gb(weightsBytes))"
        if inputsBytes > 0 { s += " + inputs \(gb(inputsBytes))" }
        s += " + max(" + (encodeBytes > 0 ? "encoding \(gb(encodeBytes)), " : "") + "denoising \(gb(denoiseBytes)), decoding \(gb(decodeBytes)))"
        return s
    }

    /// The one-line refusal when the estimate exceeds `availableBytes`: what is needed, what is free, the fixes.
    public func refusal(availableBytes: Int) -> String? {
        guard peakBytes > availableBytes else { return nil }
        return String(format: "this %@ job needs about %.1f GB (%@) but %.1f GB is available: use fewer --frames or a smaller --size, a quantized DiT (fp8 or GGUF), or --no-memory-check to try anyway",
                      task.rawValue, Double(peakBytes) / 1e9, breakdown, Double(availableBytes) / 1e9)
    }

    /// Bytes of the weight files under a path (a file, or every weight file in a folder and its subfolders).
    public static func fileBytes(_ path: String) -> Int {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { return 0 }
        if !isDir.boolValue { return ((try? FileManager.default.attributesOfItem(atPath: path)[.size]) as? Int) ?? 0 }
        var total = 0
        let weightExtensions: Set<String> = ["safetensors", "gguf", "pth", "bin"]
        if let e = FileManager.default.enumerator(atPath: path) {
            for case let f as String in e where weightExtensions.contains((f as NSString).pathExtension) {
                total += fileBytes((path as NSString).appendingPathComponent(f))
            }
        }
        return total
    }

    /// The source video a VACE or video-to-video run holds as 8-bit frames (the selected frames, at the source's size).
    public struct Source: Sendable {
        public var width: Int
        public var height: Int
        public var hasMask: Bool
        public init(width: Int, height: Int, hasMask: Bool = false) { self.width = width; self.height = height; self.hasMask = hasMask }
    }

    /// Typical prompt rows the prepared contexts keep (real tokens + the padding row) for the prompt and the
    /// negative prompt (the official negative prompt is about 120 tokens).
    static let contextRows = 160

    /// The estimate for `task` at the settings' size and frame count. `dit` is the DiT's shape (read from
    /// `files.dit` when nil); `source` the conditioning video (VACE, v2v); `references` VACE's reference images.
    /// `ditOnGPU`: the DiT runs on a GPU (its weights are streamed to the device, its activations and prepared
    /// contexts live there: the host keeps the latents only; the GPU side is `CUDADiTMemory`).
    public static func estimate(_ task: GenerationTask, files: ModelFiles, settings s: GenerationSettings, dit: DiTShape? = nil,
                                source: Source? = nil, references: Int = 0, usesCLIPModel: Bool = true,
                                ditOnGPU: Bool = false) -> MemoryEstimate {
        let f = MemoryLayout<Float>.size
        let ditBytes = fileBytes(files.dit ?? "")
        let shape = dit ?? files.dit.flatMap(DiTShape.read) ?? DiTShape.guessed(fileBytes: ditBytes)
        let vaeConfig = WanVAEConfig.wan21
        // The umT5 encoder streams its layers from the mapping (about one layer plus activations resident).
        var weights = (ditOnGPU ? 0 : ditBytes) + min(fileBytes(files.t5 ?? ""), 1_500_000_000) + fileBytes(files.vae ?? "")
        let imageTask = task == .imageToVideo || task == .firstLastFrame
        if imageTask && usesCLIPModel { weights += fileBytes(files.clip ?? "") }

        let (F, H, W) = (s.frames, s.height, s.width)
        let pixels = F * H * W                       // one channel of the video, all frames
        let refs = task == .vace ? references : 0
        let T = (F - 1) / vaeConfig.temporalFactor + 1 + refs
        let (h, w) = (H / vaeConfig.spatialFactor, W / vaeConfig.spatialFactor)
        let latent = vaeConfig.zDim * T * h * w * f
        let (pt, ph, pw) = (shape.patchSize[0], shape.patchSize[1], shape.patchSize[2])
        let tokens = (T / pt) * (h / ph) * (w / pw)

        // One DiT forward (the CPU's `DiTForwardLayout`; VACE adds its stream's buffers), its output, and the solver's
        // latents (noise, x, the two CFG predictions, their mix, the multistep history).
        let config = shape.config
        var forward = CPUBackend.ditLayout(config: config, tokens: tokens, patchLength: shape.inDim * pt * ph * pw).bytes
        // bf16 products (the CPU default where it has AVX512-BF16): attention's rounded q, k, v and a product's rounded
        // input (the widest: the FFN's hidden chunk), counted whatever the precision.
        if !ditOnGPU {
            forward += 2 * (3 * tokens * config.dim + max(tokens * config.dim, min(tokens, CPUBackend.ditFFNChunkRows) * config.ffnDim))
        }
        let imageRows = task == .imageToVideo ? 257 : (task == .firstLastFrame ? 514 : 0)
        // Two prepared contexts (prompt, negative prompt); VACE's hold its vace blocks' keys and values too.
        var contexts = 2 * config.conditioningBytes(textKeys: contextRows, imageRows: imageRows, activation: .f32)
        if task == .vace {
            let vace = WanVACEConfig(dit: config, vaceLayers: Array(0..<shape.vaceBlocks), vaceInDim: shape.vaceInDim)
            forward += vace.streamLayout(tokens: tokens).reduce(0) { $0 + $1.bytes }
            var vaceBlocks = config
            vaceBlocks.numLayers = shape.vaceBlocks
            contexts += 2 * vaceBlocks.conditioningBytes(textKeys: contextRows, activation: .f32)
        }
        let denoise = ditOnGPU ? 9 * latent : forward + latent + 8 * latent + contexts

        var inputs = 0, encode = 0
        let encoderState = vaeConfig.encodeStateBytes(width: W, height: H)
        let sourceFrames = source.map { F * $0.width * $0.height * 3 * ($0.hasMask ? 2 : 1) } ?? 0
        switch task {
        case .textToVideo:
            break
        case .imageToVideo, .firstLastFrame:
            // The VAE input [3, F, H, W] (image(s) + zeros) and y = [mask (4) + latent (16), T, h, w]; the CLIP
            // tower's activations (257 tokens) are small.
            inputs = 3 * pixels * f + latent * 20 / 16
            encode = encoderState + latent
        case .vace:
            // prepare_source's video, the mask video, the mask (zeros + ones without a video), the vace context
            // (96 channels = 6 latents), the source's 8-bit frames; encoding: inactive + reactive, the two latents.
            inputs = (source == nil ? 4 : 7) * pixels * f + latent * shape.vaceInDim / vaeConfig.zDim + sourceFrames
            encode = encoderState + 6 * pixels * f + 2 * latent
        case .videoToVideo:
            inputs = sourceFrames + latent
            encode = encoderState + 3 * pixels * f
        }
        // Decoding: the exact decode's causal state, or, where that is larger, the tiled decode the pipelines fall
        // back to when memory is short (tiles holding a quarter of the state, plus the float32 video it assembles).
        let exact = vaeConfig.decodeStateBytes(width: W, height: H)
        let tiles = vaeConfig.decodeTiles(latentHeight: H / vaeConfig.spatialFactor, latentWidth: W / vaeConfig.spatialFactor,
                                          stateBudget: exact / 4)
        let tiled = vaeConfig.decodeStateBytes(width: tiles.width * vaeConfig.spatialFactor, height: tiles.height * vaeConfig.spatialFactor)
            + (3 * pixels + H * W) * f
        let decode = min(exact, tiled)
        return MemoryEstimate(task: task, weightsBytes: weights, inputsBytes: inputs, encodeBytes: encode, denoiseBytes: denoise,
                              decodeBytes: decode)
    }

    public static func textToVideo(files: ModelFiles, settings: GenerationSettings, dit: DiTShape? = nil) -> MemoryEstimate {
        estimate(.textToVideo, files: files, settings: settings, dit: dit)
    }

    /// Image-to-video (`lastFrame`: first-last-frame): the settings' size is the max_area's bound.
    public static func imageToVideo(files: ModelFiles, settings: GenerationSettings, lastFrame: Bool = false, dit: DiTShape? = nil,
                                    usesCLIPModel: Bool = true) -> MemoryEstimate {
        estimate(lastFrame ? .firstLastFrame : .imageToVideo, files: files, settings: settings, dit: dit, usesCLIPModel: usesCLIPModel)
    }

    public static func vace(files: ModelFiles, settings: GenerationSettings, source: Source?, references: Int, dit: DiTShape? = nil) -> MemoryEstimate {
        estimate(.vace, files: files, settings: settings, dit: dit, source: source, references: references)
    }

    public static func videoToVideo(files: ModelFiles, settings: GenerationSettings, source: Source, dit: DiTShape? = nil) -> MemoryEstimate {
        estimate(.videoToVideo, files: files, settings: settings, dit: dit, source: source)
    }

    /// MemAvailable from /proc/meminfo (nil where it cannot be read).
    public static func availableBytes() -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            let parts = line.split(separator: " ")
            if parts.count >= 2, let kb = Int(parts[1]) { return kb * 1024 }
        }
        return nil
    }
}

extension WanVAEConfig {
    /// Bytes an encode at this size keeps besides the weights, from the encoder's architecture as `WanVAE` streams it
    /// (one frame at a time): the 2-frame input history of every causal conv (conv1, two per residual block, the head)
    /// and the frame a temporal downsampler holds for its pair (`stateValueBytes` per value: float32, or 2 where a
    /// backend keeps the state in bf16), and a few float32 frames in flight at the widest stage (full resolution,
    /// `dim` channels). It does not grow with the frame count.
    public func encodeStateBytes(width: Int, height: Int, stateValueBytes: Int = MemoryLayout<Float>.size) -> Int {
        let dims = ([1] + dimMult).map { $0 * dim }
        var pixels = height * width
        var history = 2 * 3 * pixels               // conv1 (RGB in)
        var widest = dims[0] * pixels
        var out = dims[0]
        for i in 0..<(dims.count - 1) {
            var inDim = dims[i]
            out = dims[i + 1]
            for _ in 0..<numResBlocks { history += 2 * (inDim + out) * pixels; inDim = out }
            widest = max(widest, out * pixels)
            if i != dimMult.count - 1 {
                pixels /= 4
                if temporalDownsample[i] { history += 2 * out * pixels }
            }
        }
        history += 2 * 2 * 2 * out * pixels        // middle: two residual blocks
        history += 2 * out * pixels                 // head
        return history * stateValueBytes + 4 * widest * MemoryLayout<Float>.size
    }
}
