import ArgumentParser
import Foundation
import WanKit
import WanCUDA

struct BenchVAE: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vae",
        abstract: "Wan-VAE decode/encode time and peak RSS (peak GPU memory with --device cuda) with the real Wan2.1 VAE shapes and random weights.")

    @Option(help: "Video size WxH (default: 256x256 with 5 frames, then 832x480 with 1 frame).") var size: String?
    @Option(help: "Frame count (4n+1).") var frames: Int?
    @Option(help: "What to run: decode, encode or both.") var op: String = "both"
    @Option(help: "Benchmark a real VAE file (Wan2.1_VAE.pth, safetensors or diffusers folder) instead of random weights.") var weights: String?
    @Flag(help: "One JSON object per line instead of text.") var json = false
    @Flag(help: "Print where the time goes (per op kind).") var profile = false
    @Flag(help: "With --profile: convolutions per shape.") var profileShapes = false
    @Option(help: "Decode tile by tile with at most this many GB of causal state per tile (not bit-exact).") var tileBudget: Double?
    @Option(help: "Where to run: cpu, cuda (an NVIDIA GPU) or auto.") var device: String = "cpu"
    @Option(help: "With --device cuda: f32 (exact, no TF32) or bf16 (the 3x3 and temporal convs' products in bf16, f32 accumulation).") var precision: String = "f32"
    @Option(help: "With --device cuda: MiB of im2col columns gathered at once (default 512; small values keep them in L2).") var columnMib: Int?
    @Option(help: "With --device cuda --precision bf16: im2col (columns + cuBLASLt, the default) or implicit (vae_conv_bf16: no columns).") var conv: String = "im2col"

    func run() throws {
        var shapes: [(w: Int, h: Int, f: Int)] = [(256, 256, 5), (832, 480, 1)]
        if let size {
            let s = try parseSize(size, multipleOf: 8)
            shapes = [(s.width, s.height, frames ?? 1)]
        } else if let frames {
            shapes = shapes.map { ($0.w, $0.h, frames) }
        }
        for s in shapes where s.f < 1 || (s.f - 1) % 4 != 0 { throw ValidationError("--frames must be 4n+1, got \(s.f)") }
        guard ["decode", "encode", "both"].contains(op) else { throw ValidationError("--op must be decode, encode or both") }
        if let gpu = try CUDABackend.resolve(device, command: "bench vae") { return try runCUDA(gpu: gpu, shapes: shapes) }
        let vae: WanVAE
        if let weights {
            let w = try openVAEWeights(path: weights)
            vae = try WanVAE(weights: w.source, arguments: w.arguments)
        } else {
            vae = try WanVAE(config: .wan21, weights: RandomWeights(synthesizingWithSeed: 7))
        }
        func report(_ what: String, _ s: (w: Int, h: Int, f: Int), _ seconds: Double) throws {
            let rss = peakRSSBytes()
            if json {
                var obj: [String: Any] = ["op": what, "size": "\(s.w)x\(s.h)", "frames": s.f, "seconds": seconds, "peak_rss_bytes": rss]
                if what == "decode" { obj["estimated_state_bytes"] = vae.config.decodeStateBytes(width: s.w, height: s.h) }
                print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self))
            } else {
                print(String(format: "vae %@ %dx%dx%d: %.2f s (%.2f s/frame), peak RSS %.2f GB", what, s.w, s.h, s.f, seconds, seconds / Double(s.f), Double(rss) / 1e9))
            }
            if profile {
                for line in Profile.report() { print("  " + line) }
                print(String(format: "  conv work %.1f GFLOP", Conv3D.flops / 1e9))
            }
            Conv3D.flops = 0
            fflush(stdout)
        }
        Profile.enabled = profile
        Profile.byShape = profileShapes
        for s in shapes {
            if op != "encode" {
                let latentFrames = (s.f - 1) / 4 + 1
                let latent = try RandomWeights(shapes: [("z", [16, latentFrames, s.h / 8, s.w / 8])], seed: 3).float32("z")
                for i in 0..<latent.count { latent.data[i] *= 40 }  // roughly unit-variance latents
                Profile.reset()
                let t0 = now()
                var produced = 0
                if let tileBudget {
                    let tiles = vae.config.decodeTiles(latentHeight: s.h / 8, latentWidth: s.w / 8, stateBudget: Int(tileBudget * 1e9))
                    if !json { print("tiles: \(tiles.rows) x \(tiles.columns) of \(tiles.width * 8)x\(tiles.height * 8) pixels") }
                    try vae.decodeTiled(latent, tileHeight: tiles.height, tileWidth: tiles.width) { chunk, _ in produced += chunk.shape[1] }
                } else {
                    try vae.decode(latent) { chunk, _ in produced += chunk.shape[1] }  // frames are streamed and dropped
                }
                precondition(produced == s.f)
                try report("decode", s, now() - t0)
            }
            if op != "decode" {
                // Frames are made as the encoder asks for them (streaming encode: the video is never held whole).
                Profile.reset()
                let t0 = now()
                _ = try vae.encode(frames: s.f, height: s.h, width: s.w) { index, planar in
                    var state = UInt64(index + 1) &* 0x9E37_79B9_7F4A_7C15
                    for i in 0..<(3 * s.h * s.w) {
                        state = state &* 6364136223846793005 &+ 1442695040888963407
                        planar[i] = Float(Int(state >> 40) & 0xFFFF) / 32767.5 - 1
                    }
                }
                try report("encode", s, now() - t0)
            }
        }
    }
}
