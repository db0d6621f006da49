import ArgumentParser
import Foundation
import WanKit

/// One whole text-to-video run with the real model shapes and random weights: umT5-XXL (bf16 file, mapped),
/// the 1.3B DiT (f16 file, mapped, compact), the Wan-VAE, the golden test tokenizer.
struct BenchT2V: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "t2v",
        abstract: "A full text-to-video run at the real Wan2.1-T2V-1.3B shapes with random weights: time per stage and peak RSS.")

    @Option(help: "Video size WxH.") var size: String = "832x480"
    @Option(help: "Frames (4n+1).") var frames: Int = 5
    @Option(help: "Sampling steps.") var steps: Int = 4
    @Option(help: "Folder for the random checkpoints (about 14 GB, deleted afterwards).") var directory: String = NSTemporaryDirectory()
    @Option(help: "Tokenizer folder (default: ../shared/golden/tokenizer).") var tokenizer: String = "../shared/golden/tokenizer"
    @Option(help: "MP4 to write (default: none).") var output: String?
    @Option(help: "cpu, cuda or auto: where the DiT runs (the text encoder, CLIP and the VAE run on the CPU).") var device: String = "cpu"
    @Option(help: "bf16 or f32 (TF32 off); default bf16 on a GPU, on the CPU bf16 products where it has AVX512-BF16.") var precision: String?
    @Flag(help: "One JSON object instead of text.") var json = false

    func run() throws {
        let parsed = try parseSize(size)
        var settings = GenerationSettings()
        settings.width = parsed.width; settings.height = parsed.height; settings.frames = frames; settings.steps = steps; settings.seed = 1
        try settings.validate()
        let say = benchSay(json: json)

        // Random checkpoints on disk (mapped as users' files are).
        let checkpoints = RandomCheckpoints(task: "t2v", directory: directory, files: [
            ("umt5-xxl-bf16", randomUMT5Tensors(UMT5Config.umt5XXL.parameterShapes())),
            ("dit-1.3B-f16", randomDiTTensors(WanDiTConfig.t2v1_3B, format: .f16))])
        defer { checkpoints.remove() }
        let written = try checkpoints.write(firstSeed: 11)
        say(String(format: "wrote random checkpoints (umT5-XXL bf16, DiT 1.3B f16) in %.1f s", written))

        var t0 = now()
        let placement = try CUDABackend.placement(device, precision: precision, command: "bench t2v")
        let t5 = try ModelLoader.t5(checkpoints.paths[0], products: placement.products)
        let dit = try benchDiT(checkpoints.paths[1], placement: placement, width: settings.width, height: settings.height, frames: frames)
        let vae = try WanVAE(config: .wan21, weights: RandomWeights(synthesizingWithSeed: 7))
        let pipeline = try TextToVideo(text: TextConditioner(tokenizer: try ModelLoader.tokenizer(tokenizer), encoder: t5), dit: dit, vae: vae)
        let load = now() - t0
        say(String(format: "opened the models in %.1f s", load))

        // Stage times from the pipeline's own events: prompts encoded, each step done; RSS now and then.
        let begin = now()
        var textSeconds = 0.0, rssAfterText = 0
        var stepEnds: [Double] = []
        let latent = try pipeline.sample(prompt: "A cat walks on the grass, realistic style.", settings: settings, progress: { p in
            if p.stage == .denoising {
                stepEnds.append(now())
                say(String(format: "[denoise] %d/%d done at %.1f s, RSS %.2f GB", p.step, p.total, now() - begin, Double(currentRSSBytes()) / 1e9))
            }
        }, observe: { event in
            if case .prompts = event {
                textSeconds = now() - begin
                rssAfterText = currentRSSBytes()
                say(String(format: "[text] 2 prompts in %.1f s, RSS %.2f GB (peak so far %.2f GB)", textSeconds, Double(rssAfterText) / 1e9, Double(peakRSSBytes()) / 1e9))
            }
        })
        let denoiseSeconds = (stepEnds.last ?? begin) - begin - textSeconds
        let peakBeforeDecode = peakRSSBytes()
        t0 = now()
        let writer = try output.map { try VideoWriter(path: $0, width: settings.width, height: settings.height) }
        try pipeline.decode(latent) { chunk, _ in try writer?.append(chunk) }
        try writer?.finish()
        let decodeSeconds = now() - t0
        let rss = peakRSSBytes()
        say(String(format: "peak RSS before decoding %.2f GB, after %.2f GB", Double(peakBeforeDecode) / 1e9, Double(rss) / 1e9))
        if json {
            let obj: [String: Any] = ["size": size, "frames": frames, "steps": steps, "load_seconds": load, "text_seconds": textSeconds,
                                      "denoise_seconds": denoiseSeconds, "decode_seconds": decodeSeconds, "peak_rss_bytes": rss,
                                      "dit_device": dit.backendDescription, "peak_gpu_bytes": gpuPeakBytes(dit)]
            print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self))
        } else {
            print(String(format: "t2v %@ x%d, %d steps, DiT on %@: load %.1f s, text %.1f s (2 prompts), denoise %.1f s (%.1f s/step), decode %.1f s, peak RSS %.2f GB%@",
                         size, frames, steps, dit.backendDescription, load, textSeconds, denoiseSeconds, denoiseSeconds / Double(steps), decodeSeconds,
                         Double(rss) / 1e9, gpuPeakBytes(dit) > 0 ? String(format: ", peak GPU %.2f GB", Double(gpuPeakBytes(dit)) / 1e9) : ""))
        }
    }
}

/// A pipeline bench's DiT on --device (the GPU's memory checked for the job first).
func benchDiT(_ path: String, placement: DiTPlacement, width: Int, height: Int, frames: Int,
              imageRows: Int = 0) throws -> any DiTDenoiser {
    guard case .plain(let dit) = try ModelLoader.anyDiT(path, on: placement, width: width, height: height, frames: frames, imageRows: imageRows) else {
        throw ValidationError("\(path) is a VACE DiT")
    }
    return dit
}

/// Peak device bytes of a GPU DiT (weights + the pool's peak), 0 on the CPU.
func gpuPeakBytes(_ dit: any DiTDenoiser) -> Int {
    guard let gpu = dit as? CUDADiT else { return 0 }
    return gpu.weightBytes + gpu.pool.peakAllocatedBytes
}

/// Progress lines on standard error, none with --json (the JSON object on standard output stays alone).
func benchSay(json: Bool) -> (String) -> Void {
    { if !json { FileHandle.standardError.write(($0 + "\n").data(using: .utf8)!) } }
}

/// A pipeline bench's random checkpoints, wan-bench-<task>-<name>.safetensors in `directory`: written (after
/// checking the directory has room for them) to be mapped as users' files are, removed afterwards.
struct RandomCheckpoints {
    let directory: String
    let files: [(name: String, tensors: [(name: String, shape: [Int], dtype: String, bound: Float)])]
    let paths: [String]

    init(task: String, directory: String, files: [(name: String, tensors: [(name: String, shape: [Int], dtype: String, bound: Float)])]) {
        self.directory = directory
        self.files = files
        paths = files.map { (directory as NSString).appendingPathComponent("wan-bench-\(task)-\($0.name).safetensors") }
    }

    /// What the files take on disk.
    var bytes: Int { files.reduce(0) { $0 + $1.tensors.reduce(0) { $0 + $1.shape.reduce(1, *) * elementBytes($1.dtype) } } }

    /// Writes the files (file i with seed firstSeed + i); the seconds it took.
    func write(firstSeed: UInt64) throws -> Double {
        let need = bytes
        guard freeBytes(directory) > need + (1 << 30) else {
            throw ValidationError(String(format: "%@ needs %.1f GB free for the random checkpoints", directory, Double(need) / 1e9))
        }
        let t0 = now()
        for (i, f) in files.enumerated() { _ = try writeRandomSafetensors(path: paths[i], tensors: f.tensors, seed: firstSeed + UInt64(i)) }
        return now() - t0
    }

    func remove() {
        for p in paths { try? FileManager.default.removeItem(atPath: p) }
    }
}

enum RandomDiTFormat: String, ExpressibleByArgument { case f16, fp8_scaled }

/// A DiT checkpoint's tensors with init bounds (norm weights 1, matrices ±1/sqrt(fan_in), vectors ±0.02): all f16, or
/// ComfyUI's fp8_scaled (every 2-D `.weight` float8_e4m3fn with a float32 0-d `.scale_weight`, the `scaled_fp8`
/// marker, every other tensor bf16).
func randomDiTTensors(_ config: WanDiTConfig, format: RandomDiTFormat) -> [(name: String, shape: [Int], dtype: String, bound: Float)] {
    var out: [(name: String, shape: [Int], dtype: String, bound: Float)] = []
    for s in config.parameterShapes() {
        let norm = s.name.contains("norm") && s.name.hasSuffix(".weight") && s.shape.count == 1
        let bound: Float = norm ? -1 : s.shape.count >= 2 ? 1 / Float(s.shape.dropFirst().reduce(1, *)).squareRoot() : 0.02
        if format == .fp8_scaled && s.name.hasSuffix(".weight") && s.shape.count == 2 {
            // Random e4m3 bytes have an RMS near 100: the scale brings the weights back to about ±bound.
            out.append((s.name, s.shape, "F8_E4M3", 0))
            out.append((String(s.name.dropLast(".weight".count)) + ".scale_weight", [], "F32", -bound / 100))
        } else {
            out.append((s.name, s.shape, format == .f16 ? "F16" : "BF16", bound))
        }
    }
    if format == .fp8_scaled { out.append(("scaled_fp8", [0], "F8_E4M3", 0)) }
    return out
}

/// One whole image-to-video run with the real Wan2.1-I2V-14B shapes and random weights: umT5-XXL (bf16), the 14B
/// i2v DiT (fp8_scaled by default, as most users run it on one machine), CLIP ViT-H/14 (f16), all written to disk
/// and mapped as users' files are; the Wan-VAE in memory.
struct BenchI2V: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "i2v",
        abstract: "A full image-to-video run at the real Wan2.1-I2V-14B shapes with random weights: time per stage and peak RSS.")

    @Option(help: "max_area of the video as WxH (the video takes the image's aspect ratio; 832x480 is 480P).") var size: String = "832x480"
    @Option(help: "Frames (4n+1).") var frames: Int = 5
    @Option(help: "Sampling steps.") var steps: Int = 1
    @Option(help: "DiT file format: fp8_scaled or f16.") var ditFormat: RandomDiTFormat = .fp8_scaled
    @Option(help: "Folder for the random checkpoints (about 29 GB with fp8_scaled, deleted afterwards).") var directory: String = NSTemporaryDirectory()
    @Option(help: "Tokenizer folder (default: ../shared/golden/tokenizer).") var tokenizer: String = "../shared/golden/tokenizer"
    @Option(help: "cpu, cuda or auto: where the DiT runs (the text encoder, CLIP and the VAE run on the CPU).") var device: String = "cpu"
    @Option(help: "bf16 or f32 (TF32 off); default bf16 on a GPU, on the CPU bf16 products where it has AVX512-BF16.") var precision: String?
    @Flag(help: "One JSON object instead of text.") var json = false

    func run() throws {
        let (w, h) = try parseSize(size)
        var settings = ImageGenerationSettings()
        settings.maxArea = w * h; settings.frames = frames; settings.steps = steps; settings.seed = 1; settings.shift = 3
        try settings.validate()
        let say = benchSay(json: json)

        let checkpoints = RandomCheckpoints(task: "i2v", directory: directory, files: [
            ("umt5-xxl-bf16", randomUMT5Tensors(UMT5Config.umt5XXL.parameterShapes())),
            ("dit-i2v-14B-\(ditFormat.rawValue)", randomDiTTensors(WanDiTConfig.i2v14B, format: ditFormat)),
            ("clip-vision-h-f16", randomCLIPTensors())])
        let paths = checkpoints.paths
        defer { checkpoints.remove() }
        let written = try checkpoints.write(firstSeed: 21)
        say(String(format: "wrote random checkpoints (%.1f GB: umT5-XXL bf16, DiT i2v-14B %@, CLIP ViT-H f16) in %.1f s",
                   Double(checkpoints.bytes) / 1e9, ditFormat.rawValue, written))

        var t0 = now()
        let placement = try CUDABackend.placement(device, precision: precision, command: "bench i2v")
        let t5 = try ModelLoader.t5(paths[0], products: placement.products)
        let dit = try benchDiT(paths[1], placement: placement, width: w, height: h, frames: frames, imageRows: 257)
        let c = try openCLIPWeights(path: paths[2])
        let clip = try CLIPVision(weights: c.source, arguments: c.arguments ?? [:], products: placement.products)
        let vae = try WanVAE(config: .wan21, weights: RandomWeights(synthesizingWithSeed: 7))
        let pipeline = try ImageToVideo(text: TextConditioner(tokenizer: try ModelLoader.tokenizer(tokenizer), encoder: t5),
                                        dit: dit, vae: vae, clip: clip)
        let load = now() - t0
        say(String(format: "opened the models in %.1f s", load))

        // A smooth synthetic picture at the requested size.
        var pixels = [UInt8](repeating: 0, count: w * h * 3)
        for y in 0..<h { for x in 0..<w {
            pixels[(y * w + x) * 3] = UInt8(255 * x / max(w - 1, 1)); pixels[(y * w + x) * 3 + 1] = UInt8(255 * y / max(h - 1, 1))
            pixels[(y * w + x) * 3 + 2] = UInt8((x ^ y) & 0xFF)
        } }
        let image = try RGBImage(width: w, height: h, pixels: pixels)

        // Stage ends from the pipeline's events: prompts, CLIP features, VAE conditioning, each step.
        let begin = now()
        var marks: [(String, Double, Int)] = []
        func mark(_ stage: String) {
            marks.append((stage, now(), currentRSSBytes()))
            say(String(format: "[%@] done at %.1f s, RSS %.2f GB (peak so far %.2f GB)", stage, now() - begin, Double(currentRSSBytes()) / 1e9, Double(peakRSSBytes()) / 1e9))
        }
        let latent = try pipeline.sample(prompt: "A cat walks on the grass, realistic style.", image: image, settings: settings, progress: { p in
            if p.stage == .denoising { mark("step \(p.step)/\(p.total)") }
        }, observe: { event in
            switch event {
            case .prompts: mark("text")
            case .clipFeatures: mark("clip")
            case .conditioning: mark("vae-encode")
            default: break
            }
        })
        let peakBeforeDecode = peakRSSBytes()
        t0 = now()
        try pipeline.decode(latent) { _, _ in }
        mark("decode")
        let rss = peakRSSBytes()
        var previous = begin
        var stages: [String: Double] = [:]
        for m in marks { stages[m.0] = m.1 - previous; previous = m.1 }
        let stepSeconds = marks.filter { $0.0.hasPrefix("step") }.map { stages[$0.0]! }
        if json {
            let obj: [String: Any] = ["task": "i2v", "model": "i2v-14B", "dit_format": ditFormat.rawValue, "max_area": size, "frames": frames,
                                      "latent_shape": latent.shape, "steps": steps, "load_seconds": load, "stage_seconds": stages,
                                      "peak_rss_before_decode_bytes": peakBeforeDecode, "peak_rss_bytes": rss,
                                      "dit_device": dit.backendDescription, "peak_gpu_bytes": gpuPeakBytes(dit)]
            print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self))
        } else {
            print(String(format: "i2v-14B (%@, DiT on %@) %@ x%d, %d steps: load %.1f s, text %.1f s, clip %.1f s, vae encode %.1f s, %.1f s/step, decode %.1f s; peak RSS %.2f GB before decoding, %.2f GB overall",
                         ditFormat.rawValue, dit.backendDescription, size, frames, steps, load, stages["text"] ?? 0, stages["clip"] ?? 0, stages["vae-encode"] ?? 0,
                         stepSeconds.reduce(0, +) / Double(max(stepSeconds.count, 1)), stages["decode"] ?? 0,
                         Double(peakBeforeDecode) / 1e9, Double(rss) / 1e9))
        }
    }
}
