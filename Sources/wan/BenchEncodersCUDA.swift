import ArgumentParser
import Foundation
import WanKit
import WanCUDA

/// Peak GPU memory as `wan bench dit --device cuda` measures it: cuMemGetInfo's total minus the lowest free memory
/// seen at the samples (so it includes the CUDA context and cuBLASLt's workspace).
final class GPUMemorySampler {
    let context: CUDAContext
    let total: Int
    private(set) var lowestFree: Int

    init(_ context: CUDAContext) throws {
        self.context = context
        let info = try context.memoryInfo()
        total = info.total
        lowestFree = info.free
    }

    func sample() throws { lowestFree = min(lowestFree, try context.memoryInfo().free) }
    var peak: Int { total - lowestFree }
}

/// The device fields `wan bench t5|clip --device cuda` add to the CPU bench's JSON keys.
func encoderDeviceFields(gpu: GPUInfo, precision: CUDAPrecision, memory: GPUMemorySampler, uploadSeconds: Double, warmupSeconds: Double,
                         weightBytes: Int, allocatedPeakBytes: Int) -> [String: Any] {
    ["device": "cuda:\(gpu.ordinal)", "gpu": gpu.name, "precision": precision.rawValue, "upload_seconds": uploadSeconds,
     "warmup_seconds": warmupSeconds, "weight_bytes": weightBytes, "peak_gpu_bytes": memory.peak,
     "allocated_peak_bytes": allocatedPeakBytes, "total_gpu_bytes": memory.total]
}

func gib(_ bytes: Int) -> Double { Double(bytes) / 1_073_741_824 }

extension BenchT5 {
    /// `wan bench t5 --device cuda`: umT5 as `CUDAUMT5` from the checkpoint the CPU bench uses (the random real-shape
    /// one, or --weights), uploaded once; one warm-up encode (kernels compiled / loaded, cuBLASLt plans), then every
    /// prompt timed alone (ids on the host in, hidden states back on the host: what a pipeline waits for).
    func runCUDA(gpu: GPUInfo, precision: CUDAPrecision, path: String) throws {
        let log: (String) -> Void = { msg in if !json { FileHandle.standardError.write((msg + "\n").data(using: .utf8)!) } }
        let context = try CUDAContext(ordinal: gpu.ordinal)
        let memory = try GPUMemorySampler(context)
        let t0 = now()
        let w = try openT5Weights(path: path)
        let encoder = try CUDAUMT5(weights: w.source, arguments: w.arguments ?? [:], precision: precision, context: context)
        let uploadSeconds = now() - t0
        try memory.sample()
        let c = encoder.config
        log(String(format: "opened %@ (%@): %@ uploaded to cuda:%d %@ as %@ (%.2f GiB) in %.2f s, RSS %.2f GB", path, w.layout, c.description,
                   gpu.ordinal, gpu.name, precision.rawValue, gib(encoder.weightBytes), uploadSeconds, Double(currentRSSBytes()) / 1e9))
        let vocab = c.vocab
        func prompt(_ p: Int) -> [Int] {
            // As the CPU bench: random ids (any token costs the same), `</s>` last.
            var ids = (0..<(tokens - 1)).map { i in 3 + (i &* 7919 &+ p &* 104729) % (vocab - 3) }
            ids.append(1)
            return ids
        }
        let warmStart = now()
        _ = try encoder.encode(tokens: [prompt(prompts)])  // warm-up: NVRTC / the kernel cache, cuBLASLt plans, the pool
        try context.synchronize()
        let warmupSeconds = now() - warmStart
        try memory.sample()
        log(String(format: "warm-up encode (kernels compiled or loaded) in %.2f s", warmupSeconds))
        let label = c.dim == UMT5Config.umt5XXL.dim ? "umt5-xxl" : "umt5-\(c.dim)d"
        for p in 0..<prompts {
            let ids = prompt(p)
            let start = now()
            let out = try encoder.encode(tokens: [ids])  // the copy back to the host waits for the GPU
            let seconds = now() - start
            try memory.sample()
            var sum = 0.0
            for i in 0..<out[0].count { sum += Double(abs(out[0].data[i])) }
            let rss = peakRSSBytes()
            let allocated = encoder.pool.peakAllocatedBytes + encoder.weightBytes
            var profileLines: [String] = []
            if profile {
                // One more encode with every kernel and product timed alone (synchronised: slower than the encode).
                profileLines = try encoder.profile { _ = try encoder.encode(tokens: [ids]) }
            }
            if json {
                var obj: [String: Any] = ["model": label, "tokens": tokens, "prompt": p, "seconds": seconds, "peak_rss_bytes": rss,
                                          "layers": c.numLayers, "release_pages": false, "finite": sum.isFinite]
                obj.merge(encoderDeviceFields(gpu: gpu, precision: precision, memory: memory, uploadSeconds: uploadSeconds,
                                              warmupSeconds: warmupSeconds, weightBytes: encoder.weightBytes, allocatedPeakBytes: allocated)) { a, _ in a }
                if profile { obj["profile"] = profileLines }
                print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self))
            } else {
                let name = c.numLayers == UMT5Config.umt5XXL.numLayers ? label : "\(label)(\(c.numLayers) layers)"
                print(String(format: "t5 %@ %d tokens, prompt %d on %@ (%@): %.3f s/prompt, warm-up %.2f s, upload %.1f s, weights %.2f GiB, peak GPU memory %.2f GiB (WanKit %.2f GiB), peak RSS %.2f GB%@",
                             name, tokens, p + 1, gpu.name, precision.rawValue, seconds, warmupSeconds, uploadSeconds, gib(encoder.weightBytes),
                             gib(memory.peak), gib(allocated), Double(rss) / 1e9, sum.isFinite ? "" : " (NON-FINITE OUTPUT)"))
                for line in profileLines { print("  " + line) }
            }
            fflush(stdout)
        }
    }
}

extension BenchCLIP {
    /// `wan bench clip --device cuda`: the ViT-H/14 tower as `CUDACLIP` from the checkpoint the CPU bench uses (the
    /// random real-shape one, or --weights), uploaded once; one warm-up encode (kernels compiled / loaded, cuBLASLt
    /// plans), then every image timed alone, the host preprocessing and patch embedding included as on the CPU.
    func runCUDA(gpu: GPUInfo, precision: CUDAPrecision, path: String, width: Int, height: Int) throws {
        let log: (String) -> Void = { msg in if !json { FileHandle.standardError.write((msg + "\n").data(using: .utf8)!) } }
        let context = try CUDAContext(ordinal: gpu.ordinal)
        let memory = try GPUMemorySampler(context)
        let t0 = now()
        let w = try openCLIPWeights(path: path)
        let encoder = try CUDACLIP(weights: w.source, arguments: w.arguments ?? [:], precision: precision, context: context)
        let uploadSeconds = now() - t0
        try memory.sample()
        log(String(format: "opened %@ (%@): %@ uploaded to cuda:%d %@ as %@ (%.2f GiB) in %.2f s", path, w.layout, encoder.config.description,
                   gpu.ordinal, gpu.name, precision.rawValue, gib(encoder.weightBytes), uploadSeconds))
        let image = Tensor(uninitialized: [3, 1, height, width])
        for i in 0..<image.count { image.data[i] = Float((i &* 2654435761) % 2001) / 1000 - 1 }
        let warmStart = now()
        _ = try encoder.visual(image)  // warm-up: NVRTC / the kernel cache, cuBLASLt plans, the pool
        try context.synchronize()
        let warmupSeconds = now() - warmStart
        try memory.sample()
        log(String(format: "warm-up encode (kernels compiled or loaded) in %.2f s", warmupSeconds))
        for n in 0..<images {
            let start = now()
            let out = try encoder.visual(image)  // the copy back to the host waits for the GPU
            let seconds = now() - start
            try memory.sample()
            let finite = out.buffer.allSatisfy { $0.isFinite }
            let rss = peakRSSBytes()
            let allocated = encoder.pool.peakAllocatedBytes + encoder.weightBytes
            var profileLines: [String] = []
            if profile { profileLines = try encoder.profile { _ = try encoder.visual(image) } }
            if json {
                var obj: [String: Any] = ["model": "clip-vit-h-14", "size": size, "image": n, "seconds": seconds, "peak_rss_bytes": rss,
                                          "shape": out.shape, "layers": encoder.config.numLayers, "finite": finite]
                obj.merge(encoderDeviceFields(gpu: gpu, precision: precision, memory: memory, uploadSeconds: uploadSeconds,
                                              warmupSeconds: warmupSeconds, weightBytes: encoder.weightBytes, allocatedPeakBytes: allocated)) { a, _ in a }
                if profile { obj["profile"] = profileLines }
                print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self))
            } else {
                print(String(format: "clip vit-h/14 %@ -> %@, image %d on %@ (%@): %.3f s/image, warm-up %.2f s, upload %.1f s, weights %.2f GiB, peak GPU memory %.2f GiB (WanKit %.2f GiB), peak RSS %.2f GB%@",
                             size, "\(out.shape)", n + 1, gpu.name, precision.rawValue, seconds, warmupSeconds, uploadSeconds, gib(encoder.weightBytes),
                             gib(memory.peak), gib(allocated), Double(rss) / 1e9, finite ? "" : " (NON-FINITE OUTPUT)"))
                for line in profileLines { print("  " + line) }
            }
            fflush(stdout)
        }
    }
}
