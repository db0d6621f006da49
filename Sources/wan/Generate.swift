import ArgumentParser
import Foundation
import WanKit
#if canImport(Glibc)
import Glibc
#endif

extension Generate {
    /// Blocks SIGINT and SIGTERM in this thread (and so in every thread started after it) and starts one thread that
    /// waits for them with sigwait and sets `interruptFlag`; a thread that existed before and did not block them
    /// still sets the flag through a plain handler.
    static func takeInterruptsOnOneThread() {
        _ = interruptFlag
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &set, nil)
        signal(SIGINT) { _ in interruptFlag.pointee = 1 }
        signal(SIGTERM) { _ in interruptFlag.pointee = 1 }
        let waited = set
        let waiter = Thread {
            var signals = waited
            var received: Int32 = 0
            while true {
                if sigwait(&signals, &received) == 0 { interruptFlag.pointee = 1 }
            }
        }
        waiter.start()
    }
}

/// Set by SIGINT/SIGTERM; the pipeline checks it between steps and frames. A raw pointer, not a Swift global var:
/// the handler's store is then no Swift access, so it can never meet a read of the flag on the same thread in
/// the dynamic exclusivity check (which aborts the process). Touched before the handlers are installed, so its lazy
/// initialisation never runs inside a handler.
let interruptFlag: UnsafeMutablePointer<sig_atomic_t> = {
    let p = UnsafeMutablePointer<sig_atomic_t>.allocate(capacity: 1)
    p.initialize(to: 0)
    return p
}()

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate a video (or one image) with a Wan2.1 model: text-, image-, first-last-frame-to-video, VACE, video-to-video.",
        discussion: """
        The task follows from the inputs and the model (a VACE DiT is recognised from its weights):
          text-to-video            --prompt                                   T2V model
          image-to-video           --image first.png                          I2V model (+ --clip or --clip-features)
          first-last-frame         --image first.png --last-image last.png    FLF2V model
          VACE                     [--video src.mp4 [--mask mask.mp4]] [--ref ref.png …] [--context-scale 1.0]   VACE model
          video-to-video           --video src.mp4 [--strength 0.6]           T2V model (WanKit's own, SDEdit-style)
        Examples:
          wan generate --model Wan-AI/Wan2.1-T2V-1.3B --prompt "a cat surfing at sunset" --output cat.mp4
          wan generate --model ./Wan2.1-T2V-1.3B --prompt "一只熊猫" --frames 1 --output panda.png
          wan generate --model ./Wan2.1-VACE-1.3B --video src.mp4 --mask mask.mp4 --prompt "…" --output edit.mp4
          wan generate --dit wan2.1_t2v_1.3B_fp16.safetensors --t5 umt5_xxl.safetensors --vae wan_2.1_vae.safetensors \\
                       --tokenizer ./umt5-xxl --prompt "…" --output out.mp4
        The official sizes are 832x480 and 480x832 (1.3B; the 14B also 1280x720 and 720x1280). Other sizes that are
        multiples of 16 run but are outside what the models were trained on. A source video (and its mask) is
        read as the official VACE code reads it: without --size and --frames, the size follows from the video's
        aspect at the 832x480 area and the frame count from its length (up to 81 frames at 480P, more for small
        videos), the whole clip resampled to that many frames; --size WxH and --frames N override either (the
        frames are resized with antialiased bicubic and centre-cropped). The choice is printed.
        """)

    @Option(help: "Model: a Wan-AI or diffusers folder, or a Hugging Face repo id already downloaded with `wan download`.") var model: String?
    @Option(help: "DiT weights (file or folder), overriding the model's.") var dit: String?
    @Option(help: "umT5 text encoder weights, overriding the model's.") var t5: String?
    @Option(help: "Wan-VAE weights, overriding the model's.") var vae: String?
    @Option(help: "Tokenizer folder or tokenizer.json, overriding the model's.") var tokenizer: String?
    @Option(help: "Image-to-video: the first frame (PNG, JPEG, WebP); needs an I2V model.") var image: String?
    @Option(help: "First-last-frame-to-video: the last frame; needs an FLF2V model and --image.") var lastImage: String?
    @Option(help: "CLIP image encoder weights, overriding the model's (image tasks).") var clip: String?
    @Option(help: "Image tasks: precomputed CLIP image features [images, 257, 1280] (safetensors) instead of running the CLIP encoder.") var clipFeatures: String?
    @Option(help: "Source video (MP4, WebM, MOV…): with a VACE model the video to edit, extend or follow; with a T2V model video-to-video (see --strength).") var video: String?
    @Option(help: "VACE: the mask video (white = generate, black = keep); needs --video. Another size is resized like the source; a shorter mask limits the frames to its length (as the official code).") var mask: String?
    @Option(name: .customLong("ref"), help: "VACE: a reference image (repeatable); needs a VACE model.") var refs: [String] = []
    @Option(help: "Video-to-video: how much of the source is replaced, in (0, 1] (1 = text-to-video); needs --video and a T2V model (default 0.6).") var strength: Double?
    @Option(help: "VACE: the weight of the VACE hints (vace_context_scale, default 1.0); needs a VACE model.") var contextScale: Double?
    @Option(name: .shortAndLong, help: "The prompt (English or Chinese).") var prompt: String
    @Option(help: "Negative prompt (default: the official one).") var negativePrompt: String = ""
    @Option(help: "Video size WxH (default 832x480; with --video: from the video's aspect at that area).") var size: String?
    @Option(help: "Frames, 4n+1 (1 writes an image; default 81; with --video: from the video's length).") var frames: Int?
    @Option(help: "Sampling steps (default: 50; image-to-video 40).") var steps: Int?
    @Option(help: "Flow shift (default: 5.0; image-to-video at 480P 3.0; first-last-frame 16).") var shift: Double?
    @Option(help: "Classifier-free guidance scale (default: 5.0; first-last-frame 5.5).") var guide: Float?
    @Option(help: "Seed (default: random). The same seed gives the same noise as the official code.") var seed: UInt64?
    @Option(help: "Solver: unipc, dpm++ or euler.") var solver: String = "unipc"
    @Option(name: .shortAndLong, help: "Output file: .mp4 for video, .png for one frame.") var output: String
    @Option(help: "auto, cpu or cuda: where the models run (auto: a working NVIDIA GPU, else the CPU, saying why). On a GPU the DiT goes first; umT5, CLIP and the VAE join it when they fit, else they run on the CPU (said in a line).") var device: String = "auto"
    @Option(help: "bf16 (as the official code computes: on a GPU by default; on the CPU, bf16 products with f32 accumulation, the default where the CPU has AVX512-BF16, about twice as fast) or f32 (TF32 off).") var precision: String?
    @Flag(help: "With the DiT on a GPU (bf16, compute capability 8.9+: Ada, Hopper): matrices stored as fp8 e4m3 (fp8_scaled files) run as cuBLASLt fp8 products, the activations quantised to e4m3 per tensor (faster, a few percent of error per product); without it they are expanded to bf16 first.") var fp8Products = false
    @Flag(help: "Skip the memory checks (host and GPU).") var noMemoryCheck = false

    func validate() throws {
        let ext = (output as NSString).pathExtension.lowercased()
        guard ext == "mp4" || ext == "png" else { throw ValidationError("--output must end in .mp4 (video) or .png (one frame)") }
        if ext == "png" && frameCount != 1 { throw ValidationError("a .png output holds one frame: add --frames 1, or write a .mp4") }
        if lastImage != nil && image == nil { throw ValidationError("--last-image needs --image (the first frame)") }
        if mask != nil && video == nil { throw ValidationError("--mask needs --video (the source video the mask applies to)") }
        if strength != nil && video == nil { throw ValidationError("--strength needs --video (video-to-video restyles a source video)") }
        if strength != nil && (mask != nil || !refs.isEmpty) {
            throw ValidationError("--strength is video-to-video (a T2V model); --mask and --ref are VACE (a VACE model): drop one or the other")
        }
        if let strength, !(strength > 0 && strength <= 1) { throw ValidationError("--strength must be in (0, 1] (1 = pure noise, as text-to-video), got \(strength)") }
        if image != nil && (video != nil || mask != nil || !refs.isEmpty) {
            throw ValidationError("--image is image-to-video (an I2V/FLF2V model); --video, --mask and --ref are VACE or video-to-video: use one kind of input")
        }
        if contextScale != nil && (image != nil || strength != nil) {
            throw ValidationError("--context-scale weighs VACE's hints: it needs a VACE model, not --image or --strength")
        }
        if clipFeatures != nil && image == nil { throw ValidationError("--clip-features needs --image (the features are the image's)") }
        guard FlowSolverKind(rawValue: solver) != nil else { throw ValidationError("--solver must be unipc, dpm++ or euler") }
        guard model != nil || (dit != nil && t5 != nil && vae != nil && tokenizer != nil) else {
            throw ValidationError("pass --model (a model folder or repo id), or all of --dit, --t5, --vae and --tokenizer")
        }
    }

    /// --frames, or 81.
    var frameCount: Int { frames ?? 81 }

    /// --size as (width, height), nil when not given.
    func requestedSize() throws -> (width: Int, height: Int)? {
        guard let size else { return nil }
        return try parseSize(size)
    }

    func run() throws {
        // SIGINT / SIGTERM are taken by one thread (sigwait) instead of interrupting whichever thread is running:
        // blocked here, before the worker threads exist (they inherit the mask), so no library's system call or lock
        // is ever cut short by the signal. (Interrupted runs crashed now and then with a corrupted heap before.)
        Self.takeInterruptsOnOneThread()
        let start = Date()
        var settings = GenerationSettings()
        let requested = try requestedSize()
        settings.width = requested?.width ?? 832; settings.height = requested?.height ?? 480
        settings.frames = frameCount; settings.steps = steps ?? 50; settings.shift = shift ?? 5.0; settings.guideScale = guide ?? 5.0
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
        files = files.overridden(by: ModelFiles(dit: dit, t5: t5, vae: vae, tokenizer: tokenizer, clip: clip))
        try files.requireTextToVideo(folder: folder)
        for (option, path) in [("dit", files.dit), ("t5", files.t5), ("vae", files.vae), ("tokenizer", files.tokenizer), ("clip", files.clip)] {
            if let path, !FileManager.default.fileExists(atPath: path) {
                throw ValidationError("--\(option): \(path) does not exist")
            }
        }

        // The task follows from the inputs and the DiT (a VACE checkpoint is recognised from its weights' names,
        // read from the header without loading anything).
        let shape = DiTShape.read(files.dit!)
        let task: GenerationTask = image != nil ? (lastImage != nil ? .firstLastFrame : .imageToVideo)
            : (shape?.isVACE == true ? .vace : (video != nil ? .videoToVideo : .textToVideo))

        // A source video: its size and frame count as the official VACE code picks them, unless --size / --frames.
        var source: SourceVideo? = nil
        if let video, image == nil {
            do {
                let planned = try SourceVideo.plan(video: video, mask: mask, size: requested, frames: frames)
                settings.width = planned.width; settings.height = planned.height; settings.frames = planned.frames
                log(planned.summary)
                source = planned
            } catch GenerationError.invalidSettings(let message) {
                throw ValidationError("\(video): \(message)")
            }
            do { try settings.validate() } catch { throw ValidationError("\(error)") }
        }

        // Where the DiT runs (the VACE DiT too: `CUDAVACE`).
        var placement = try CUDABackend.placement(device, precision: precision, command: "generate", fp8Products: fp8Products)
        if !placement.isGPU && placement.products == .bf16 {
            log("the DiT, umT5 and CLIP run on the CPU with bf16 products (f32 accumulation, as the official code's autocast computes; --precision f32 for float32)")
        }

        // Memory pre-flight, for the task at hand (the GPU's is made when the DiT is loaded).
        func checkHostMemory(_ placement: DiTPlacement) throws {
            let estimate = MemoryEstimate.estimate(task, files: files, settings: settings, dit: shape,
                                                   source: source.map { .init(width: $0.timeline.width, height: $0.timeline.height, hasMask: mask != nil) },
                                                   references: refs.count, usesCLIPModel: clipFeatures == nil, ditOnGPU: placement.isGPU)
            if !noMemoryCheck, let available = MemoryEstimate.availableBytes(), let refusal = estimate.refusal(availableBytes: available) {
                throw ValidationError(refusal)
            }
        }
        try checkHostMemory(placement)

        let flag = interruptFlag
        let cancelled = { flag.pointee != 0 }

        // On a GPU the two prompts are encoded first and umT5 is released before the DiT is loaded: the two never hold
        // the GPU together (umT5-XXL alone is 8.6 GiB in bf16).
        var preparedText: TextConditioner? = nil
        let negative = settings.negativePrompt.isEmpty ? task.defaultNegativePrompt : settings.negativePrompt
        let prompts = [("prompt", prompt), ("negative prompt", negative)]
        if placement.isGPU {
            log("loading the text encoder…")
            let text = try loadText(files, folder: folder, placement: placement, prompts: prompts)
            log("[text] encoding the prompts before loading the DiT (umT5 is released afterwards)")
            try text.prepare([prompt, negative], releasingEncoder: true)
            preparedText = text
        }
        func textConditioner() throws -> TextConditioner {
            try preparedText ?? loadText(files, folder: folder, placement: placement, prompts: prompts)
        }

        // The task follows from the inputs and the DiT: VACE checkpoints are recognised from their weights.
        log("loading models…")
        func loadDiT(_ placement: DiTPlacement) throws -> ModelLoader.DiTModel {
            try ModelLoader.anyDiT(files.dit!, on: placement, width: settings.width, height: settings.height, frames: settings.frames,
                                   imageRows: image == nil ? 0 : (lastImage == nil ? 257 : 514), references: refs.count,
                                   checkMemory: !noMemoryCheck)
        }
        let ditModel: ModelLoader.DiTModel
        do {
            ditModel = try loadDiT(placement)
        } catch where placement.isGPU && device.lowercased() == "auto" && !((error as? CUDAError)?.isOutOfMemory ?? false) {
            // `auto` found a GPU but could not use it for this model (a library, a kernel, a head size the kernels do
            // not take): the CPU, said in one line (a file the CPU cannot read either fails there with its error). A
            // job too large for the GPU stays an error (on the CPU it would take days; --device cpu says so).
            let reason = (error as? CUDAError).map(ComputeDevice.shortReason) ?? "\(error)"
            log("note: running on the CPU: the GPU could not take the DiT (\(reason))")
            placement = try CUDABackend.cpuPlacement(precision)
            try checkHostMemory(placement)
            ditModel = try loadDiT(placement)
        }
        if let image {
            guard case .plain(let dit) = ditModel else {
                throw ValidationError("this is a VACE model: condition it with --video, --mask and --ref, not --image (image-to-video needs an I2V model)")
            }
            try generateFromImages(first: image, last: lastImage, dit: dit, files: files, text: try textConditioner(), placement: placement,
                                   settings: settings, cancelled: cancelled, start: start)
            return
        }
        var metadata: [String: Any] = [
            "prompt": prompt, "negative_prompt": settings.negativePrompt.isEmpty ? "(default)" : settings.negativePrompt,
            "size": "\(settings.width)x\(settings.height)", "frames": settings.frames, "steps": settings.steps, "shift": settings.shift,
            "guide_scale": Double(settings.guideScale), "seed": settings.seed, "solver": settings.solver.rawValue,
            "model": model ?? "", "dit": files.dit ?? "", "t5": files.t5 ?? "", "vae": files.vae ?? "", "generator": "WanKit \(WanKitVersion.string)",
            "device": placement.description,
        ]
        switch ditModel {
        case .vace(let vaceDiT):
            if strength != nil {
                throw ValidationError("this is a VACE model: it takes --video as its source video as it is; --strength is video-to-video with a T2V model (drop --strength)")
            }
            var inputs = VACEInputs(referenceImages: try refs.map(MediaReader.image))
            if let source {
                let read = try source.read()
                inputs.video = read.video
                inputs.mask = read.mask
                metadata["frame_ids"] = source.plan.frameIDs
            }
            let text = try textConditioner()
            let vaeModel = try loadVAE(files.vae!, placement: placement, width: settings.width, height: settings.height)
            let pipeline = try VACEPipeline(text: text, dit: vaceDiT, vae: vaeModel)
            log("DiT: \(vaceDiT.config) on \(vaceDiT.backendDescription)")
            let scale = contextScale ?? 1
            metadata["task"] = "vace"
            metadata["context_scale"] = scale
            if let video { metadata["video"] = video }
            if let mask { metadata["mask"] = mask }
            if !refs.isEmpty { metadata["ref"] = refs }
            try writeOutput(width: settings.width, height: settings.height, seed: settings.seed, metadata: metadata, start: start) { append in
                let latent = try pipeline.sample(prompt: prompt, inputs: inputs, settings: settings, contextScale: Float(scale), progress: report, isCancelled: cancelled)
                try pipeline.decode(latent, progress: report, isCancelled: cancelled) { chunk, _ in try append(chunk) }
            }
        case .plain(let dit):
            if mask != nil || !refs.isEmpty {
                throw ValidationError("--mask and --ref need a VACE model (Wan2.1-VACE-1.3B or -14B); this DiT is a \(dit.config.modelType) model")
            }
            if contextScale != nil { throw ValidationError("--context-scale needs a VACE model; this DiT is a \(dit.config.modelType) model") }
            if video != nil && dit.config.hasImageInput {
                throw ValidationError("this is an \(dit.config.modelType) model: it takes --image, not --video (video-to-video needs a T2V model, editing a video a VACE model)")
            }
            let text = try textConditioner()
            let vaeModel = try loadVAE(files.vae!, placement: placement, width: settings.width, height: settings.height)
            log("DiT: \(dit.config) on \(dit.backendDescription)")
            if let video {
                let s = strength ?? 0.6
                let frames = try source!.read().video
                let pipeline = try VideoToVideo(text: text, dit: dit, vae: vaeModel)
                metadata["task"] = "v2v"
                metadata["video"] = video
                metadata["strength"] = s
                metadata["frame_ids"] = source!.plan.frameIDs
                try writeOutput(width: settings.width, height: settings.height, seed: settings.seed, metadata: metadata, start: start) { append in
                    let latent = try pipeline.sample(prompt: prompt, video: frames, strength: s, settings: settings, progress: report, isCancelled: cancelled)
                    try pipeline.decode(latent, progress: report, isCancelled: cancelled) { chunk, _ in try append(chunk) }
                }
            } else {
                let pipeline = try TextToVideo(text: text, dit: dit, vae: vaeModel)
                try writeOutput(width: settings.width, height: settings.height, seed: settings.seed, metadata: metadata, start: start) { append in
                    let latent = try pipeline.sample(prompt: prompt, settings: settings, progress: report, isCancelled: cancelled)
                    try pipeline.decode(latent, progress: report, isCancelled: cancelled) { chunk, _ in try append(chunk) }
                }
            }
        }
    }

    /// Writes the output through a `VideoWriter` (temporary file, renamed when complete): `produce` gets the
    /// function that appends frames. On an error or Ctrl-C the partial file is removed; then the sidecar JSON.
    func writeOutput(width: Int, height: Int, seed: UInt64, metadata: [String: Any], start: Date,
                     produce: (_ append: (Tensor) throws -> Void) throws -> Void) throws {
        let writer = try VideoWriter(path: output, width: width, height: height, fps: 16, metadata: metadata)
        do {
            try produce { try writer.append($0) }
            try writer.finish()
        } catch {
            writer.cancel()
            if case GenerationError.cancelled = error {
                // The partial file is gone; leave at once with the shell's status for SIGINT, without running the
                // libraries' exit-time destructors (oneDNN / OpenMP / CUDA state) after an interrupted run.
                log("interrupted: no output written")
                fflush(stdout)
                _exit(130)
            }
            throw error
        }
        var sidecar = metadata
        sidecar["seconds"] = Date().timeIntervalSince(start)
        sidecar["output"] = output
        if let data = try? JSONSerialization.data(withJSONObject: sidecar, options: [.prettyPrinted, .sortedKeys]) {
            try? data.write(to: URL(fileURLWithPath: output + ".json"), options: .atomic)
        }
        log(String(format: "wrote %@ (%d frames, %dx%d, seed %llu) in %.1f s", output, writer.framesWritten, width, height, seed, Date().timeIntervalSince(start)))
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

    /// Image-to-video (and first-last-frame-to-video with `last`).
    func generateFromImages(first: String, last: String?, dit ditModel: any DiTDenoiser, files: ModelFiles, text: TextConditioner,
                            placement: DiTPlacement,
                            settings t: GenerationSettings,
                            cancelled: @escaping () -> Bool, start: Date) throws {
        let firstImage = try MediaReader.image(first)
        let lastFrame = try last.map(MediaReader.image)
        var s = last == nil ? ImageGenerationSettings() : ImageGenerationSettings.firstLastFrame
        s.maxArea = t.width * t.height
        s.frames = t.frames
        s.seed = t.seed
        s.solver = t.solver
        s.negativePrompt = t.negativePrompt
        if let steps { s.steps = steps }
        if let guide { s.guideScale = guide }
        s.shift = shift ?? (last != nil ? 16 : (s.maxArea <= 480 * 832 ? 3.0 : 5.0))
        let features = try clipFeatures.map(ModelLoader.clipFeatures)
        var clipModel: (any CLIPImageEncoder)? = nil
        if features == nil {
            guard let clipPath = files.clip else {
                throw ValidationError("image tasks need the CLIP image encoder: pass --clip (models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth or clip_vision_h.safetensors) or --clip-features")
            }
            let (model, note) = try ModelLoader.clip(clipPath, on: placement)
            if let note { log("note: \(note)") }
            if placement.isGPU && note == nil { log("CLIP on \(placement)") }
            clipModel = model
        }
        let vaeModel = try loadVAE(files.vae!, placement: placement, width: t.width, height: t.height)
        log("DiT: \(ditModel.config) on \(ditModel.backendDescription)")
        var metadata: [String: Any] = ["device": placement.description, "prompt": prompt, "image": first, "frames": s.frames, "steps": s.steps, "shift": s.shift,
                                       "guide_scale": Double(s.guideScale), "seed": s.seed, "solver": s.solver.rawValue,
                                       "max_area": s.maxArea, "generator": "WanKit \(WanKitVersion.string)", "task": last == nil ? "i2v" : "flf2v"]
        if let last { metadata["last_image"] = last }
        if let clipFeatures { metadata["clip_features"] = clipFeatures }
        let latent: Tensor
        let size: (width: Int, height: Int)
        let decode: (Tensor, (Tensor, Int) throws -> Void) throws -> Void
        if let lastFrame {
            let p = try FirstLastFrameToVideo(text: text, dit: ditModel, vae: vaeModel, clip: clipModel)
            let lat = ImageConditioning.latentSize(imageHeight: firstImage.height, imageWidth: firstImage.width, maxArea: s.maxArea,
                                                   vaeStride: vaeModel.config.spatialFactor, patch: (ditModel.config.patchSize[1], ditModel.config.patchSize[2]))
            size = (lat.width * vaeModel.config.spatialFactor, lat.height * vaeModel.config.spatialFactor)
            latent = try p.sample(prompt: prompt, firstFrame: firstImage, lastFrame: lastFrame, settings: s, clipFeatures: features,
                                  progress: report, isCancelled: cancelled)
            decode = { l, f in try p.decode(l, progress: report, isCancelled: cancelled, onFrames: f) }
        } else {
            let p = try ImageToVideo(text: text, dit: ditModel, vae: vaeModel, clip: clipModel)
            size = p.videoSize(imageWidth: firstImage.width, imageHeight: firstImage.height, maxArea: s.maxArea)
            latent = try p.sample(prompt: prompt, image: firstImage, settings: s, clipFeatures: features, progress: report, isCancelled: cancelled)
            decode = { l, f in try p.decode(l, progress: report, isCancelled: cancelled, onFrames: f) }
        }
        metadata["size"] = "\(size.width)x\(size.height)"
        try writeOutput(width: size.width, height: size.height, seed: s.seed, metadata: metadata, start: start) { append in
            try decode(latent) { chunk, _ in try append(chunk) }
        }
    }

    /// The tokenizer and umT5, the encoder on the GPU when it fits there (said in a line when it does not); says when
    /// one of `prompts` (what, text) is longer than umT5 reads.
    func loadText(_ files: ModelFiles, folder: String, placement: DiTPlacement, prompts: [(String, String)]) throws -> TextConditioner {
        let (text, note) = try ModelLoader.text(files, folder: folder, on: placement)
        if let note { log("note: \(note)") }
        if placement.isGPU && note == nil { log("umT5 on \(placement)") }
        for (what, p) in prompts {
            let n = text.tokenCount(p)
            if n > text.textLength {
                log("note: the \(what) is \(n) tokens; umT5 reads its first \(text.textLength) (the official code truncates it the same way), so the rest does not steer the video")
            }
        }
        return text
    }

    /// The VAE, on the DiT's GPU when it fits there (said in a line when it does not).
    func loadVAE(_ path: String, placement: DiTPlacement, width: Int, height: Int) throws -> any VAECoding {
        let (vae, note) = try ModelLoader.vae(path, on: placement, width: width, height: height)
        if let note { log("note: \(note)") }
        if placement.isGPU && note == nil { log("VAE on \(placement)") }
        return vae
    }

        func report(_ p: GenerationProgress) {
        switch p.stage {
        case .encodingText: log("[text] encoding the prompts")
        case .encodingVideo:
            if p.step == 0 { log("[encode] encoding the conditioning video with the VAE") }
            else { log(String(format: "[encode] done in %.1f s", p.secondsPerStep)) }
        case .denoising, .decoding:
            let eta = Int(p.secondsLeft.rounded())
            log(String(format: "[%@] %d/%d  %.1f s/step  ETA %dm%02ds", p.stage.rawValue, p.step, p.total, p.secondsPerStep, eta / 60, eta % 60))
        }
    }
}

func log(_ s: String) { FileHandle.standardError.write((s + "\n").data(using: .utf8)!) }
