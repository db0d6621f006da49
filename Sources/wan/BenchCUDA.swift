import ArgumentParser
import Foundation
import WanKit
import WanCUDA

extension BenchDiT {
    /// `wan bench dit --device cuda`: the DiT on the GPU with weights uploaded once (random weights in the real
    /// shapes, or --weights), s/step with CFG (two forward passes with two prepared prompts), peak GPU memory
    /// (cuMemGetInfo: total - lowest free seen, so it includes the CUDA context), the memory WanKit allocated, and
    /// the achieved TFLOP/s of the products and attention.
    func runCUDA(gpu: GPUInfo, shapes: [(w: Int, h: Int, f: Int)]) throws {
        let precision = try CUDABackend.precision(self.precision ?? "bf16")
        if fp8Products { try CUDABackend.checkFP8(gpu, precision: precision, command: "bench dit") }
        let log: (String) -> Void = { msg in if !json { FileHandle.standardError.write((msg + "\n").data(using: .utf8)!) } }
        let context = try CUDAContext(ordinal: gpu.ordinal)
        var lowestFree = try context.memoryInfo().free
        let total = try context.memoryInfo().total
        func sample() throws { lowestFree = min(lowestFree, try context.memoryInfo().free) }
        let t0 = now()
        let dit: CUDADiT
        var label = preset
        var fullLayers: Int? = nil  // the preset's layer count where --layers overrides it
        if let weights {
            let opened = try openDiTWeights(path: weights)
            dit = try CUDADiT(weights: opened.source, arguments: opened.arguments, precision: precision, context: context, fp8Products: fp8Products)
            label = weights
        } else {
            guard var config = WanDiTConfig.presets[preset] else {
                throw ValidationError("unknown preset \(preset); one of \(WanDiTConfig.presets.keys.sorted().joined(separator: ", "))")
            }
            fullLayers = config.numLayers
            if let layers { config.numLayers = layers }
            let random = RandomWeights(shapes: config.parameterShapes())
            dit = try CUDADiT(config: config, weights: fp8Weights ? FP8ScaledSource(random) : random, precision: precision, context: context,
                              fp8Products: fp8Products)
            if fp8Weights { label += " (fp8 e4m3 weights)" }
        }
        let loadSeconds = now() - t0
        if let attention {
            guard let backend = AttentionBackend(rawValue: attention.lowercased()) else {
                throw ValidationError("--attention must be auto, kernel, kernel2 or cudnn, got \(attention)")
            }
            dit.ops.attentionBackend = backend
        }
        try sample()
        let compileStart = now()
        try dit.ops.loadAll()
        let compileSeconds = now() - compileStart
        let c = dit.config
        log(String(format: "%@ on %@: %@ uploaded as %@ (%.2f GiB) in %.1f s; kernels ready in %.1f s",
                   label, gpu.name, c.description, precision.rawValue, Double(dit.weightBytes) / 1_073_741_824, loadSeconds, compileSeconds))
        for s in shapes {
            let lat = (f: (s.f - 1) / 4 + 1, h: s.h / 8, w: s.w / 8)
            let tokens = lat.f / c.patchSize[0] * (lat.h / c.patchSize[1]) * (lat.w / c.patchSize[2])
            guard (1...c.textLen).contains(promptTokens) else { throw ValidationError("--prompt-tokens must be 1...\(c.textLen)") }
            let x = try RandomWeights(shapes: [("x", [16, lat.f, lat.h, lat.w])], seed: 1).float32("x")
            let rand = RandomWeights(shapes: [("c", [promptTokens, c.textDim]), ("u", [promptTokens, c.textDim]), ("y", [c.inDim - 16, lat.f, lat.h, lat.w]),
                                              ("clip", [c.modelType == "flf2v" ? 2 : 1, 257, 1280])], seed: 2)
            let y = c.hasImageInput ? try rand.float32("y") : nil
            let clip = c.hasImageInput ? try rand.float32("clip") : nil
            let prepareStart = now()
            let cond = try dit.prepare(context: try rand.float32("c"), clipFeatures: clip)
            let uncond = try dit.prepare(context: try rand.float32("u"), clipFeatures: clip)
            try context.synchronize()
            let prepareSeconds = (now() - prepareStart) / 2
            let warmStart = now()
            let first = try dit.forward(x: x, y: y, t: 999, context: cond)  // warm-up: cuBLASLt plans, workspace
            let warmSeconds = now() - warmStart
            try sample()
            let finite = first.buffer.allSatisfy { $0.isFinite }
            let start = now()
            for _ in 0..<steps {
                _ = try dit.forward(x: x, y: y, t: 999, context: cond)
                _ = try dit.forward(x: x, y: y, t: 999, context: uncond)
            }
            let perStep = (now() - start) / Double(steps)
            try sample()
            // The GPU attends to all text_len context rows (the official padding), so that is the key count counted.
            let flops = 2 * Self.forwardFlops(c, tokens: tokens, contextKeys: c.textLen)
            let tflops = flops / perStep / 1e12
            let peak = total - lowestFree
            /// Which attention ran each shape: "B=1 Lq=32760 Lk=32760 H=12 D=128: cudnn", ...
            func attentionRan() -> [String] { dit.ops.attentionUsed.map { "\($0.key): \($0.value.rawValue)" }.sorted() }
            var profileLines: [String] = []
            if profile {
                // One more forward with every kernel and product timed alone (synchronised: slower than the step).
                let timings = CUDATimings()
                dit.ops.timings = timings
                dit.gemm.timings = timings
                defer { dit.ops.timings = nil; dit.gemm.timings = nil }
                _ = try dit.forward(x: x, y: y, t: 999, context: cond)
                profileLines = timings.report()
            }
            // --layers on a preset: the blocks dominate a step, so its time scales with the layer count.
            let fullStep = fullLayers.flatMap { $0 == c.numLayers ? nil : (layers: $0, seconds: perStep * Double($0) / Double(c.numLayers)) }
            if json {
                var obj: [String: Any] = [
                    "device": "cuda:\(gpu.ordinal)", "gpu": gpu.name, "precision": precision.rawValue, "model": label,
                    "size": "\(s.w)x\(s.h)", "frames": s.f, "tokens": tokens, "seconds_per_step": perStep, "tflops": tflops,
                    "first_forward_seconds": warmSeconds, "prepare_seconds": prepareSeconds, "load_seconds": loadSeconds,
                    "kernel_compile_seconds": compileSeconds, "peak_gpu_bytes": peak, "allocated_peak_bytes": dit.pool.peakAllocatedBytes + dit.weightBytes,
                    "weight_bytes": dit.weightBytes, "total_gpu_bytes": total, "output_finite": finite,
                    "attention": dit.ops.attentionBackend.rawValue, "attention_ran": attentionRan(),
                    "compact_matrices": Dictionary(uniqueKeysWithValues: dit.compactMatrices.map { ($0.key.rawValue, $0.value) }),
                    "fp8_products": dit.fp8Products, "fp8_product_count": dit.gemm.fp8ProductCount, "fp8_fallbacks": dit.gemm.fp8Fallbacks]
                if dit.ops.attentionBackend != .kernel && dit.ops.attentionBackend != .kernel2, let cudnn = try? dit.ops.cudnn() {
                    obj["cudnn_version"] = cudnn.cudnn.versionString
                    obj["cudnn_plan_seconds"] = cudnn.planSeconds
                }
                if let fullStep {
                    obj["layers"] = c.numLayers
                    obj["preset_layers"] = fullStep.layers
                    obj["estimated_full_step_seconds"] = fullStep.seconds
                }
                if profile { obj["profile"] = profileLines }
                let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            } else {
                if dit.ops.attentionBackend != .kernel { print("attention \(dit.ops.attentionBackend.rawValue): " + attentionRan().joined(separator: "; ")) }
                print(String(format: "dit %@ %dx%dx%d (%d tokens, cfg) on %@ (%@): %.3f s/step, %.1f TFLOP/s, first pass %.2f s, peak GPU memory %.2f GiB (WanKit %.2f GiB)%@",
                             c.modelType, s.w, s.h, s.f, tokens, gpu.name, precision.rawValue, perStep, tflops, warmSeconds,
                             Double(peak) / 1_073_741_824, Double(dit.pool.peakAllocatedBytes + dit.weightBytes) / 1_073_741_824,
                             finite ? "" : ", OUTPUT NOT FINITE"))
                if dit.fp8Products {
                    print("fp8 products: \(dit.gemm.fp8ProductCount) so far" + (dit.gemm.fp8Fallbacks.isEmpty ? "" : "; through the bf16 dequantisation: [n x k] \(dit.gemm.fp8Fallbacks.joined(separator: ", "))"))
                }
                if let fullStep {
                    print(String(format: "%d of the preset's %d layers: about %.2f s/step for all of them (the blocks dominate a step)",
                                 c.numLayers, fullStep.layers, fullStep.seconds))
                }
                for line in profileLines { print("  " + line) }
            }
            fflush(stdout)
            dit.releaseWorkspace()
        }
    }
}
