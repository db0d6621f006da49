import ArgumentParser
import Foundation
import WanKit
import WanCUDA

extension BenchAttention {
    /// One attention shape of the benchmark.
    struct CUDAShape {
        var label: String
        var batch, lq, lk, heads, headDim: Int
        /// Per-sample key counts (a masked shape) or nil (all keys).
        var kLens: [Int32]?
    }

    /// `wan bench attention --device cuda`: bf16 attention on the GPU, the own flash-attention kernel, its second
    /// version (attention2.cu, `kernel2`) and cuDNN's fused attention (`--attention`: both = kernel + cudnn, all =
    /// kernel + kernel2 + cudnn), at the DiT's shapes: the 1.3B's self-attention at 832x480x81 (B=1, L=32760,
    /// H=12, D=128), its cross-attention to 512 text rows, the 14B's self-attention at 1280x720x81 (L=75600, H=40),
    /// and a small masked batch (kLens) to check the key-length mask; seconds per call (mean of `repeats` after one
    /// warm-up), TFLOP/s (4·B·Lq·Lk·H·D), cuDNN's plan time, and kernel2's and cuDNN's rel_l2 against the kernel.
    func runCUDA(gpu: GPUInfo) throws {
        let choice = attention.lowercased()
        let backends: [AttentionBackend]
        switch choice {
        case "both": backends = [.kernel, .cudnn]
        case "all": backends = [.kernel, .kernel2, .cudnn]
        case "kernel": backends = [.kernel]
        case "kernel2": backends = [.kernel, .kernel2]
        case "cudnn": backends = [.kernel, .cudnn]
        case "auto": backends = [.kernel, .auto]
        default: throw ValidationError("--attention must be both, all, kernel, kernel2, cudnn or auto, got \(attention)")
        }
        let shapes: [CUDAShape]
        if tokens != nil || heads != nil {
            let l = tokens ?? 32760
            shapes = [CUDAShape(label: "custom", batch: 1, lq: l, lk: l, heads: heads ?? 12, headDim: headDim, kLens: nil)]
        } else {
            shapes = [CUDAShape(label: "t2v-1.3B 832x480x81 self", batch: 1, lq: 32760, lk: 32760, heads: 12, headDim: 128, kLens: nil),
                      CUDAShape(label: "t2v-1.3B 832x480x81 cross", batch: 1, lq: 32760, lk: 512, heads: 12, headDim: 128, kLens: nil),
                      CUDAShape(label: "t2v-14B 1280x720x81 self", batch: 1, lq: 75600, lk: 75600, heads: 40, headDim: 128, kLens: nil),
                      CUDAShape(label: "masked check", batch: 2, lq: 4096, lk: 1024, heads: 12, headDim: 128, kLens: [1024, 333])]
        }
        let context = try CUDAContext(ordinal: gpu.ordinal)
        let ops = try CUDAOps(context: context)
        try ops.loadAll()
        var failed = false
        for shape in shapes {
            let qCount = shape.batch * shape.lq * shape.heads * shape.headDim
            let kvCount = shape.batch * shape.lk * shape.heads * shape.headDim
            let q = try context.allocate(bytes: 2 * qCount), k = try context.allocate(bytes: 2 * kvCount), v = try context.allocate(bytes: 2 * kvCount)
            try q.upload(Self.randomBF16(qCount, seed: 1))
            try k.upload(Self.randomBF16(kvCount, seed: 2))
            try v.upload(Self.randomBF16(kvCount, seed: 3))
            var kLensBuffer: DeviceBuffer? = nil
            if let kLens = shape.kLens {
                let buffer = try context.allocate(bytes: 4 * shape.batch)
                try buffer.upload(kLens)
                kLensBuffer = buffer
            }
            let scale = 1 / Float(shape.headDim).squareRoot()
            let flops = 4 * Double(shape.batch) * Double(shape.lq) * Double(shape.lk) * Double(shape.heads * shape.headDim)
            var reference: [UInt16]?
            for backend in backends {
                ops.attentionBackend = backend
                let out = try context.allocate(bytes: 2 * qCount)
                func call() throws {
                    try ops.attention(.bf16, out: out.pointer, q: q.pointer, k: k.pointer, v: v.pointer, kLens: kLensBuffer?.pointer ?? 0,
                                      batch: shape.batch, lq: shape.lq, lk: shape.lk, heads: shape.heads, headDim: shape.headDim, scale: scale)
                }
                var obj: [String: Any] = ["device": "cuda:\(gpu.ordinal)", "gpu": gpu.name, "shape": shape.label, "batch": shape.batch,
                                          "lq": shape.lq, "lk": shape.lk, "heads": shape.heads, "head_dim": shape.headDim,
                                          "masked": shape.kLens != nil, "backend": backend.rawValue]
                do {
                    let ownKernel = backend == .kernel || backend == .kernel2
                    let planBefore = ownKernel ? 0 : ((try? ops.cudnn().planSeconds) ?? 0)
                    let warmStart = now()
                    try call()
                    try context.synchronize()
                    obj["first_call_seconds"] = now() - warmStart
                    if backend == .kernel2 {
                        obj["ran"] = ops.attentionUsed[CuDNNAttention.Shape(batch: shape.batch, lq: shape.lq, lk: shape.lk, heads: shape.heads,
                                                                            headDim: shape.headDim, masked: shape.kLens != nil)]?.rawValue ?? "?"
                    }
                    if !ownKernel {
                        let used = ops.attentionUsed[CuDNNAttention.Shape(batch: shape.batch, lq: shape.lq, lk: shape.lk, heads: shape.heads,
                                                                          headDim: shape.headDim, masked: shape.kLens != nil)]
                        obj["ran"] = used?.rawValue ?? "?"
                        if let cudnn = try? ops.cudnn() {
                            obj["plan_seconds"] = cudnn.planSeconds - planBefore
                            obj["cudnn_version"] = cudnn.cudnn.versionString
                            obj["cudnn_path"] = cudnn.cudnn.path
                        }
                    }
                    let start = now()
                    for _ in 0..<max(repeats, 1) { try call() }
                    try context.synchronize()
                    let seconds = (now() - start) / Double(max(repeats, 1))
                    obj["seconds"] = seconds
                    obj["tflops"] = flops / seconds / 1e12
                    let result = try out.download(count: qCount, as: UInt16.self)
                    obj["output_finite"] = result.allSatisfy { BFloat16.float($0).isFinite }
                    if backend == .kernel {
                        reference = result
                    } else if let reference {
                        obj["rel_l2_vs_kernel"] = Self.relL2(result, reference)
                    }
                } catch {
                    obj["error"] = "\(error)"
                    failed = true
                }
                if json {
                    let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
                    print(String(decoding: data, as: UTF8.self))
                } else {
                    var line = String(format: "attention %@ (B=%d Lq=%d Lk=%d H=%d D=%d%@) %@", shape.label, shape.batch, shape.lq, shape.lk,
                                      shape.heads, shape.headDim, shape.kLens != nil ? " masked" : "", backend.rawValue)
                    if let ran = obj["ran"] as? String, ran != backend.rawValue { line += " (ran \(ran))" }
                    if let error = obj["error"] { line += ": FAILED: \(error)" } else {
                        line += String(format: ": %.4f s, %.1f TFLOP/s", obj["seconds"] as? Double ?? 0, obj["tflops"] as? Double ?? 0)
                        if let plan = obj["plan_seconds"] as? Double { line += String(format: ", plan %.2f s", plan) }
                        if let rel = obj["rel_l2_vs_kernel"] as? Double { line += String(format: ", rel_l2 vs kernel %.2e", rel) }
                        if let version = obj["cudnn_version"] as? String { line += ", cuDNN \(version)" }
                    }
                    print(line)
                }
                fflush(stdout)
            }
        }
        if failed { throw ExitCode(1) }
    }

    /// Random bf16 values in [-2, 2] (xorshift; the same for every run).
    static func randomBF16(_ count: Int, seed: UInt64) -> [UInt16] {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        var values = [UInt16](repeating: 0, count: count)
        values.withUnsafeMutableBufferPointer { buffer in
            for i in 0..<count {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17
                // Top 24 bits -> [-2, 2), rounded to bf16 by truncation (a random value either way).
                let f = (Float(state >> 40) * (1 / Float(1 << 22))) - 2
                buffer[i] = UInt16(truncatingIfNeeded: f.bitPattern >> 16)
            }
        }
        return values
    }

    /// ‖a - b‖ / ‖b‖ over bf16 values.
    static func relL2(_ a: [UInt16], _ b: [UInt16]) -> Double {
        var diff = 0.0, norm = 0.0
        for i in 0..<min(a.count, b.count) {
            let x = Double(BFloat16.float(a[i])), y = Double(BFloat16.float(b[i]))
            diff += (x - y) * (x - y)
            norm += y * y
        }
        return norm > 0 ? (diff / norm).squareRoot() : diff.squareRoot()
    }
}
