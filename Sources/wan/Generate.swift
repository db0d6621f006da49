import ArgumentParser
import Foundation
import WanKit
#if canImport(Glibc)
import Glibc
#endif

/// Set by SIGINT/SIGTERM; the pipeline checks it between steps and frames.
nonisolated(unsafe) var interruptRequested: sig_atomic_t = 0

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate a video (or one image) from a text prompt with a Wan2.1 T2V model.",
        discussion: """
        Examples:
          wan generate --model Wan-AI/Wan2.1-T2V-1.3B --prompt "a cat surfing at sunset" --output cat.mp4
          wan generate --model ./Wan2.1-T2V-1.3B --prompt "一只熊猫" --frames 1 --output panda.png
          wan generate --dit wan2.1_t2v_1.3B_fp16.safetensors --t5 umt5_xxl.safetensors --vae wan_2.1_vae.safetensors \\
                       --tokenizer ./umt5-xxl --prompt "…" --output out.mp4
        The official sizes are 832x480 and 480x832 (1.3B; the 14B also 1280x720 and 720x1280). Other sizes that are
        multiples of 16 run but are outside what the models were trained on.
        """)

    @Option(help: "Model: a Wan-AI or diffusers folder, or a Hugging Face repo id already downloaded with `wan download`.") var model: String?
    @Option(help: "DiT weights (file or folder), overriding the model's.") var dit: String?
    @Option(help: "umT5 text encoder weights, overriding the model's.") var t5: String?
    @Option(help: "Wan-VAE weights, overriding the model's.") var vae: String?
    @Option(help: "Tokenizer folder or tokenizer.json, overriding the model's.") var tokenizer: String?
    @Option(name: .shortAndLong, help: "The prompt (English or Chinese).") var prompt: String
    @Option(help: "Negative prompt (default: the official one).") var negativePrompt: String = ""
    @Option(help: "Video size WxH.") var size: String = "832x480"
    @Option(help: "Frames, 4n+1 (1 writes an image).") var frames: Int = 81
    @Option(help: "Sampling steps.") var steps: Int = 50
    @Option(help: "Flow shift (official: 5.0 for T2V; 3.0 is suggested at 480P for fewer artefacts).") var shift: Double = 5.0
    @Option(help: "Classifier-free guidance scale.") var guide: Float = 5.0
    @Option(help: "Seed (default: random). The same seed gives the same noise as the official code.") var seed: UInt64?
    @Option(help: "Solver: unipc, dpm++ or euler.") var solver: String = "unipc"
    @Option(name: .shortAndLong, help: "Output file: .mp4 for video, .png for one frame.") var output: String
    @Flag(help: "Skip the memory check.") var noMemoryCheck = false

    func validate() throws {
        let ext = (output as NSString).pathExtension.lowercased()
        guard ext == "mp4" || ext == "png" else { throw ValidationError("--output must end in .mp4 (video) or .png (one frame)") }
        if ext == "png" && frames != 1 { throw ValidationError("a .png output holds one frame: add --frames 1, or write a .mp4") }
        guard FlowSolverKind(rawValue: solver) != nil else { throw ValidationError("--solver must be unipc, dpm++ or euler") }
        guard model != nil || (dit != nil && t5 != nil && vae != nil && tokenizer != nil) else {
            throw ValidationError("pass --model (a model folder or repo id), or all of --dit, --t5, --vae and --tokenizer")
        }
    }

    func run() throws {
        let start = Date()
        var settings = GenerationSettings()
        let parts = size.lowercased().replacingOccurrences(of: "*", with: "x").split(separator: "x").compactMap { Int($0) }
        guard parts.count == 2 else { throw ValidationError("--size must be WxH, e.g. 832x480") }
        settings.width = parts[0]; settings.height = parts[1]
        settings.frames = frames; settings.steps = steps; settings.shift = shift; settings.guideScale = guide
        settings.seed = seed ?? UInt64.random(in: 0...UInt64(Int64.max))
        settings.solver = FlowSolverKind(rawValue: solver)!
        settings.negativePrompt = negativePrompt
        do { try settings.validate() } catch { throw ValidationError("\(error)") }
        if ![(832, 480), (480, 832), (1280, 720), (720, 1280), (1024, 1024)].contains(where: { $0 == (settings.width, settings.height) }) {
            log("note: \(settings.width)x\(settings.height) is not an official Wan2.1 size; it runs, but quality may suffer")
        }

        // Locate the files.
        var files = ModelFiles()
        var folder = "the model folder"
        if let model {
            let local = try resolveModel(model)
            folder = local
            files = try ModelFiles.discover(in: local)
        }
        files = files.overridden(by: ModelFiles(dit: dit, t5: t5, vae: vae, tokenizer: tokenizer))
        try files.requireTextToVideo(folder: folder)
        for (option, path) in [("dit", files.dit), ("t5", files.t5), ("vae", files.vae), ("tokenizer", files.tokenizer)] {
            if let path, !FileManager.default.fileExists(atPath: path) {
                throw ValidationError("--\(option): \(path) does not exist")
            }
        }

        // Memory pre-flight.
        let estimate = try MemoryEstimate.textToVideo(files: files, settings: settings)
        if !noMemoryCheck, let available = MemoryEstimate.availableBytes(), estimate.peakBytes > available {
            throw ValidationError(String(format: "this job needs about %.1f GB (%@) but %.1f GB is available: use a smaller --size or fewer --frames, a quantized DiT (fp8 or GGUF), or --no-memory-check to try anyway",
                                         Double(estimate.peakBytes) / 1e9, estimate.breakdown, Double(available) / 1e9))
        }

        signal(SIGINT) { _ in interruptRequested = 1 }
        signal(SIGTERM) { _ in interruptRequested = 1 }
        let cancelled = { interruptRequested != 0 }

        log("loading models…")
        let pipeline = try ModelLoader.textToVideo(files, folder: folder)
        log("DiT: \(pipeline.dit.config)")
        let metadata: [String: Any] = [
            "prompt": prompt, "negative_prompt": settings.negativePrompt.isEmpty ? "(default)" : settings.negativePrompt,
            "size": "\(settings.width)x\(settings.height)", "frames": settings.frames, "steps": settings.steps, "shift": settings.shift,
            "guide_scale": Double(settings.guideScale), "seed": settings.seed, "solver": settings.solver.rawValue,
            "model": model ?? "", "dit": files.dit ?? "", "t5": files.t5 ?? "", "vae": files.vae ?? "", "generator": "WanKit",
        ]
        let writer = try VideoWriter(path: output, width: settings.width, height: settings.height, fps: 16, metadata: metadata)
        do {
            let latent = try pipeline.sample(prompt: prompt, settings: settings, progress: report, isCancelled: cancelled)
            try pipeline.decode(latent, progress: report, isCancelled: cancelled) { chunk, _ in try writer.append(chunk) }
            try writer.finish()
        } catch {
            writer.cancel()
            if case GenerationError.cancelled = error { log("interrupted: no output written"); throw ExitCode(130) }
            throw error
        }
        var sidecar = metadata
        sidecar["seconds"] = Date().timeIntervalSince(start)
        sidecar["output"] = output
        if let data = try? JSONSerialization.data(withJSONObject: sidecar, options: [.prettyPrinted, .sortedKeys]) {
            try? data.write(to: URL(fileURLWithPath: output + ".json"), options: .atomic)
        }
        log(String(format: "wrote %@ (%d frames, seed %llu) in %.1f s", output, writer.framesWritten, settings.seed, Date().timeIntervalSince(start)))
        print(output)
    }

    /// A folder, or a Hugging Face repo id: downloaded into the hub cache on first use (the files a generation
    /// needs), then taken from the cache.
    func resolveModel(_ model: String) throws -> String {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: model, isDirectory: &isDir) {
            guard isDir.boolValue else { throw ModelFilesError.notFound(model + " is a file: pass it with --dit, --t5 or --vae, or pass the model folder") }
            return model
        }
        let parts = model.split(separator: "/")
        guard parts.count == 2, !model.hasPrefix("."), !model.hasPrefix("/") else { throw ModelFilesError.notFound(model) }
        let client = HubClient()
        let printer = ProgressPrinter()
        let snapshot = try client.download(repo: model, files: Self.modelPatterns, progress: printer.show)
        printer.endLine()
        return snapshot.path
    }

    /// The files of a Wan-AI or diffusers repo that a generation uses (not the example assets).
    static let modelPatterns = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.pth", "*.gguf",
                                "google/*", "tokenizer/*", "*/*.safetensors", "*/*.json", "*/*.model"]

    func report(_ p: GenerationProgress) {
        switch p.stage {
        case .encodingText: log("[text] encoding the prompts")
        case .denoising, .decoding:
            let eta = Int(p.secondsLeft.rounded())
            log(String(format: "[%@] %d/%d  %.1f s/step  ETA %dm%02ds", p.stage.rawValue, p.step, p.total, p.secondsPerStep, eta / 60, eta % 60))
        }
    }
}

func log(_ s: String) { FileHandle.standardError.write((s + "\n").data(using: .utf8)!) }
