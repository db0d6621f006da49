import ArgumentParser
import Foundation
import WanKit
import WanCUDA

extension BenchVAE {
    /// `wan bench vae --device cuda`: the VAE on the GPU (--precision f32 or bf16) with weights uploaded once (random weights in the real
    /// shapes, or --weights). Per shape: a warm-up decode/encode of 9 frames (cuBLASLt plans for every shape, kernels
    /// loaded), then the timed run with the frames streamed back to the host and dropped; seconds, seconds per frame,
    /// peak GPU memory (cuMemGetInfo: total - lowest free seen, so it includes the CUDA context) and what WanKit
    /// allocated (weights + frame pool peak + im2col columns).
    func runCUDA(gpu: GPUInfo, shapes: [(w: Int, h: Int, f: Int)]) throws {
        guard tileBudget == nil else { throw ValidationError("--tile-budget is for --device cpu (the GPU decodes whole frames)") }
        let precision = try CUDABackend.precision(self.precision)
        let log: (String) -> Void = { msg in if !json { FileHandle.standardError.write((msg + "\n").data(using: .utf8)!) } }
        let context = try CUDAContext(ordinal: gpu.ordinal)
        let total = try context.memoryInfo().total
        var lowestFree = try context.memoryInfo().free
        func sample() throws { lowestFree = min(lowestFree, try context.memoryInfo().free) }
        let t0 = now()
        let vae: CUDAVAE
        if let weights {
            let w = try openVAEWeights(path: weights)
            vae = try CUDAVAE(weights: w.source, arguments: w.arguments, precision: precision, context: context)
        } else {
            vae = try CUDAVAE(config: .wan21, weights: RandomWeights(synthesizingWithSeed: 7), precision: precision, context: context)
        }
        guard ["im2col", "implicit"].contains(conv) else { throw ValidationError("--conv must be im2col or implicit") }
        vae.implicitConvolution = conv == "implicit"
        if let columnMib {
            guard columnMib > 0 else { throw ValidationError("--column-mib must be positive") }
            vae.columnBudgetBytes = columnMib << 20
        }
        let loadSeconds = now() - t0
        let compileStart = now()
        try vae.ops.loadAll()
        let compileSeconds = now() - compileStart
        log(String(format: "Wan-VAE on %@ (%@): weights uploaded (%.0f MiB) in %.1f s; kernels ready in %.1f s",
                   gpu.name, precision.rawValue, Double(vae.weightBytes) / 1_048_576, loadSeconds, compileSeconds))
        func randomFrame(_ index: Int, _ planar: UnsafeMutablePointer<Float>, _ count: Int) {
            var state = UInt64(index + 1) &* 0x9E37_79B9_7F4A_7C15
            for i in 0..<count {
                state = state &* 6364136223846793005 &+ 1442695040888963407
                planar[i] = Float(Int(state >> 40) & 0xFFFF) / 32767.5 - 1
            }
        }
        for s in shapes {
            for what in ["decode", "encode"] where op == what || op == "both" {
                let latentFrames = (s.f - 1) / 4 + 1
                let latent = try RandomWeights(shapes: [("z", [16, latentFrames, s.h / 8, s.w / 8])], seed: 3).float32("z")
                for i in 0..<latent.count { latent.data[i] *= 40 }  // roughly unit-variance latents
                let warmLatent = try RandomWeights(shapes: [("z", [16, 3, s.h / 8, s.w / 8])], seed: 4).float32("z")
                var finite = true
                func run(_ frames: Int, _ z: Tensor, sampling: Bool) throws {
                    if what == "decode" {
                        var produced = 0
                        try vae.decode(z) { chunk, _ in
                            produced += chunk.shape[1]
                            if sampling { try sample(); if !chunk.buffer.allSatisfy({ $0.isFinite }) { finite = false } }
                        }
                        precondition(produced == frames)
                    } else {
                        let out = try vae.encode(frames: frames, height: s.h, width: s.w) { index, planar in
                            randomFrame(index, planar, 3 * s.h * s.w)
                            if sampling { try sample() }
                        }
                        if !out.buffer.allSatisfy({ $0.isFinite }) { finite = false }
                    }
                    try context.synchronize()
                }
                let warmStart = now()
                try run(9, warmLatent, sampling: false)
                let warmSeconds = now() - warmStart
                vae.flopCount = 0
                let start = now()
                try run(s.f, latent, sampling: true)
                let seconds = now() - start
                let tflops = vae.flopCount / seconds / 1e12
                try sample()
                let peak = total - lowestFree
                let allocated = vae.weightBytes + vae.pool.peakAllocatedBytes + vae.columnBytes
                var profileLines: [String] = []
                if profile {
                    // The 9-frame warm-up again with every kernel and product timed alone (synchronised: slower).
                    let timings = CUDATimings()
                    vae.timings = timings
                    defer { vae.timings = nil }
                    try run(9, warmLatent, sampling: false)
                    profileLines = timings.report()
                }
                if json {
                    var obj: [String: Any] = [
                        "op": what, "device": "cuda:\(gpu.ordinal)", "gpu": gpu.name, "precision": precision.rawValue, "size": "\(s.w)x\(s.h)", "frames": s.f,
                        "seconds": seconds, "seconds_per_frame": seconds / Double(s.f), "column_budget_bytes": vae.columnBudgetBytes, "conv": conv, "warmup_9_frames_seconds": warmSeconds,
                        "load_seconds": loadSeconds, "kernel_compile_seconds": compileSeconds, "peak_gpu_bytes": peak,
                        "allocated_peak_bytes": allocated, "weight_bytes": vae.weightBytes, "total_gpu_bytes": total, "output_finite": finite,
                        "product_flops": vae.flopCount, "tflops": tflops]
                    if what == "decode" { obj["estimated_state_bytes"] = vae.config.decodeStateBytes(width: s.w, height: s.h) }
                    if profile { obj["profile"] = profileLines }
                    print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self))
                } else {
                    print(String(format: "vae %@ %dx%dx%d on %@ (%@): %.2f s (%.4f s/frame, %.1f TFLOP/s of %.1f TFLOP in products), 9-frame warm-up %.2f s, peak GPU memory %.2f GiB (WanKit %.2f GiB)%@",
                                 what, s.w, s.h, s.f, gpu.name, precision.rawValue, seconds, seconds / Double(s.f), tflops, vae.flopCount / 1e12, warmSeconds,
                                 Double(peak) / 1_073_741_824, Double(allocated) / 1_073_741_824, finite ? "" : ", OUTPUT NOT FINITE"))
                    for line in profileLines { print("  " + line) }
                }
                fflush(stdout)
                vae.trim()
            }
        }
    }
}
