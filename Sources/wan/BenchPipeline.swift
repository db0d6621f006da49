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
    @Flag(help: "One JSON object instead of text.") var json = false

    func run() throws {
        let parts = size.lowercased().split(separator: "x").compactMap { Int($0) }
        guard parts.count == 2 else { throw ValidationError("--size must be WxH") }
        var settings = GenerationSettings()
        settings.width = parts[0]; settings.height = parts[1]; settings.frames = frames; settings.steps = steps; settings.seed = 1
        try settings.validate()
        let say: (String) -> Void = { if !json { FileHandle.standardError.write(($0 + "\n").data(using: .utf8)!) } }

        // Random checkpoints on disk (mapped as users' files are).
        let t5Config = UMT5Config.umt5XXL
        let t5Path = (directory as NSString).appendingPathComponent("wan-bench-t2v-umt5-xxl-bf16.safetensors")
        let ditConfig = WanDiTConfig.t2v1_3B
        let ditPath = (directory as NSString).appendingPathComponent("wan-bench-t2v-dit-1.3B-f16.safetensors")
        defer { try? FileManager.default.removeItem(atPath: t5Path); try? FileManager.default.removeItem(atPath: ditPath) }
        let need = t5Config.parameterCount * 2 + ditConfig.parameterCount * 2
        guard freeBytes(directory) > need + (1 << 30) else {
            throw ValidationError(String(format: "%@ needs %.1f GB free for the random checkpoints", directory, Double(need) / 1e9))
        }
        var t0 = now()
        _ = try writeRandomSafetensors(path: t5Path, tensors: randomUMT5Tensors(t5Config.parameterShapes()), seed: 11)
        let ditTensors = ditConfig.parameterShapes().map { s -> (name: String, shape: [Int], dtype: String, bound: Float) in
            let norm = s.name.contains("norm") && s.name.hasSuffix(".weight") && s.shape.count == 1
            return (s.name, s.shape, "F16", norm ? -1 : s.shape.count >= 2 ? 1 / Float(s.shape.dropFirst().reduce(1, *)).squareRoot() : 0.02)
        }
        _ = try writeRandomSafetensors(path: ditPath, tensors: ditTensors, seed: 12)
        say(String(format: "wrote random checkpoints (umT5-XXL bf16, DiT 1.3B f16) in %.1f s", now() - t0))

        t0 = now()
        let t5 = try ModelLoader.t5(t5Path)
        let dit = try ModelLoader.dit(ditPath)
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
                                      "denoise_seconds": denoiseSeconds, "decode_seconds": decodeSeconds, "peak_rss_bytes": rss]
            print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self))
        } else {
            print(String(format: "t2v %@ x%d, %d steps: load %.1f s, text %.1f s (2 prompts), denoise %.1f s (%.1f s/step), decode %.1f s, peak RSS %.2f GB",
                         size, frames, steps, load, textSeconds, denoiseSeconds, denoiseSeconds / Double(steps), decodeSeconds, Double(rss) / 1e9))
        }
    }
}
