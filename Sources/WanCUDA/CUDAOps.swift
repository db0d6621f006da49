import Foundation
import WanTensor

/// The kernels of Kernels/*.cu as typed calls on device addresses (launch shapes as each file documents them).
/// Modules are compiled (or taken from the cubin cache) and loaded on first use.
public final class CUDAOps {
    public let context: CUDAContext
    public let compiler: KernelCompiler
    private var modules: [String: CUDAModule] = [:]
    private var functions: [String: CUDAFunction] = [:]

    public init(context: CUDAContext, compiler: KernelCompiler? = nil) throws {
        self.context = context
        self.compiler = try compiler ?? KernelCompiler()
    }

    /// Which attention runs the bf16 attention (f32 always takes the kernel): `.kernel` (default, or
    /// $WANKIT_ATTENTION), `.kernel2` (attention2.cu where it has the head dim, else the kernel), `.cudnn` (cuDNN's fused attention; any failure throws), `.auto` (where cuDNN loaded and a
    /// plan finalized for the shape, the first call of that shape times both and checks cuDNN's output against the
    /// kernel's, and the faster is kept; else the kernel; a one-line note says which and why, once per shape).
    public var attentionBackend: AttentionBackend = .environmentDefault
    /// Where cuDNN's workspace comes from (the model's pool; nil: its own allocation).
    public var workspacePool: DeviceMemoryPool?
    /// cuDNN's attention, made on first use; the error when it could not be.
    private var cudnnAttention: Result<CuDNNAttention, CUDAError>?
    /// Notes already printed (auto's fallbacks), so each is said once.
    private var notes: Set<String> = []
    /// The attention each shape ran last ("kernel" / "cudnn"), for the benchmarks.
    public private(set) var attentionUsed: [CuDNNAttention.Shape: AttentionBackend] = [:]

    /// cuDNN's attention on this context (loaded and a handle created on first call).
    public func cudnn() throws -> CuDNNAttention {
        if cudnnAttention == nil {
            do { cudnnAttention = .success(try CuDNNAttention(context: context, pool: workspacePool)) } catch let error as CUDAError {
                cudnnAttention = .failure(error)
            }
        }
        return try cudnnAttention!.get()
    }

    private func note(_ text: String) {
        guard notes.insert(text).inserted else { return }
        FileHandle.standardError.write("wan: \(text)\n".data(using: .utf8)!)
    }

    /// Runs the attention through cuDNN when `attentionBackend` asks for it and it can; false: the kernel should.
    private func attentionThroughCuDNN(out: UInt64, q: UInt64, k: UInt64, v: UInt64, kLens: UInt64, batch: Int, lq: Int, lk: Int,
                                       heads: Int, headDim: Int, scale: Float, flops: Double) throws -> Bool {
        let shape = CuDNNAttention.Shape(batch: batch, lq: lq, lk: lk, heads: heads, headDim: headDim, masked: kLens != 0)
        let backend = attentionBackend
        guard backend != .kernel else { attentionUsed[shape] = .kernel; return false }
        guard backend != .kernel2 else { attentionUsed[shape] = Self.bf16V2HeadDims.contains(headDim) ? .kernel2 : .kernel; return false }
        let attention: CuDNNAttention
        do {
            attention = try cudnn()
            if backend == .auto {
                let support = attention.supports(shape)
                guard support.ok else {
                    note("attention auto: the own kernel for \(shape) (cuDNN has no plan: \(support.reason ?? "?"))")
                    attentionUsed[shape] = .kernel
                    return false
                }
                if let chosen = autoChoice[shape] {
                    if chosen != .cudnn { attentionUsed[shape] = chosen; return false }
                } else if Self.bf16HeadDims.contains(headDim) {
                    // First call of this shape: measure both (each once to warm up, then once timed), check cuDNN's
                    // output against the kernel's on a sample, keep the faster. `out` holds a correct result after.
                    let chosen = try measure(attention, out: out, q: q, k: k, v: v, kLens: kLens, batch: batch, lq: lq, lk: lk,
                                             heads: heads, headDim: headDim, scale: scale, shape: shape)
                    autoChoice[shape] = chosen
                    attentionUsed[shape] = chosen
                    return true  // `out` holds a checked result (cuDNN's where it was taken, else the kernel's)
                }
            }
        } catch let error as CUDAError where backend == .auto {
            note("attention auto: the own kernel (cuDNN not usable: \(ComputeDevice.shortReason(error)))")
            attentionUsed[shape] = .kernel
            return false
        }
        if let timings {
            try context.synchronize()
            let start = CUDATimings.now()
            try attention.run(out: out, q: q, k: k, v: v, kLens: kLens, batch: batch, lq: lq, lk: lk, heads: heads, headDim: headDim, scale: scale)
            try context.synchronize()
            timings.add("cudnn_sdpa_bf16_d\(headDim)", CUDATimings.now() - start, flops: flops)
        } else {
            try attention.run(out: out, q: q, k: k, v: v, kLens: kLens, batch: batch, lq: lq, lk: lk, heads: heads, headDim: headDim, scale: scale)
        }
        attentionUsed[shape] = .cudnn
        return true
    }

    /// `auto`'s choice per shape, by measurement.
    private var autoChoice: [CuDNNAttention.Shape: AttentionBackend] = [:]
    /// rel_l2 above which auto does not take cuDNN's result (the bf16 golden tolerance).
    static let autoRelL2Limit = 2e-2

    /// Times the kernel, kernel2 (where it has the head dim) and cuDNN on one call's data (synchronised; each run once
    /// before it is timed), compares kernel2's and cuDNN's outputs with the kernel's on the first 64K values, and
    /// returns the fastest of those that agree; `out` is left with cuDNN's result if it agreed, else the kernel's.
    private func measure(_ attention: CuDNNAttention, out: UInt64, q: UInt64, k: UInt64, v: UInt64, kLens: UInt64, batch: Int, lq: Int,
                         lk: Int, heads: Int, headDim: Int, scale: Float, shape: CuDNNAttention.Shape) throws -> AttentionBackend {
        let sample = min(batch * lq * heads * headDim, 1 << 16)
        func download() throws -> [UInt16] {
            var values = [UInt16](repeating: 0, count: sample)
            try values.withUnsafeMutableBytes { try context.copy(toHost: $0.baseAddress!, from: out, bytes: 2 * sample) }
            return values
        }
        func timed(_ body: () throws -> Void) throws -> Double {
            try body()
            try context.synchronize()
            let start = CUDATimings.now()
            try body()
            try context.synchronize()
            return CUDATimings.now() - start
        }
        func relL2(_ got: [UInt16], _ reference: [UInt16]) -> Double {
            var diff = 0.0, norm = 0.0
            for i in 0..<sample {
                let a = Double(BFloat16.float(got[i])), b = Double(BFloat16.float(reference[i]))
                diff += (a - b) * (a - b)
                norm += b * b
            }
            return norm > 0 ? (diff / norm).squareRoot() : diff.squareRoot()
        }
        let kernel = { try self.bf16Kernel(out: out, q: q, k: k, v: v, kLens: kLens, batch: batch, lq: lq, lk: lk, heads: heads, headDim: headDim, scale: scale) }
        try context.synchronize()
        let kernelSeconds = try timed(kernel)
        let reference = try download()
        // kernel2, where it has the head dim: taken only if its output agrees with the kernel's.
        var kernel2Seconds = Double.infinity, kernel2Text = ""
        if Self.bf16V2HeadDims.contains(headDim) {
            let seconds = try timed {
                try self.bf16Kernel(out: out, q: q, k: k, v: v, kLens: kLens, batch: batch, lq: lq, lk: lk, heads: heads, headDim: headDim,
                                    scale: scale, version2: true)
            }
            let rel = relL2(try download(), reference)
            if rel <= Self.autoRelL2Limit { kernel2Seconds = seconds }
            kernel2Text = String(format: ", kernel2 %.3f ms (rel_l2 %.1e%@)", seconds * 1e3, rel, rel <= Self.autoRelL2Limit ? "" : ": differs")
        }
        let fasterKernel: AttentionBackend = kernel2Seconds < kernelSeconds ? .kernel2 : .kernel
        let cudnnSeconds = try timed {
            try attention.run(out: out, q: q, k: k, v: v, kLens: kLens, batch: batch, lq: lq, lk: lk, heads: heads, headDim: headDim, scale: scale)
        }
        let relCuDNN = relL2(try download(), reference)
        let times = String(format: "cuDNN %.3f ms, kernel %.3f ms, rel_l2 %.1e", cudnnSeconds * 1e3, kernelSeconds * 1e3, relCuDNN) + kernel2Text
        func name(_ backend: AttentionBackend) -> String { backend == .cudnn ? "cuDNN" : backend == .kernel2 ? "the own kernel2" : "the own kernel" }
        guard relCuDNN <= Self.autoRelL2Limit else {
            note("attention auto: \(name(fasterKernel)) for \(shape): cuDNN's output differs (\(times))")
            try kernel()
            return fasterKernel
        }
        let chosen: AttentionBackend = cudnnSeconds < min(kernelSeconds, kernel2Seconds) ? .cudnn : fasterKernel
        note("attention auto: \(name(chosen)) for \(shape) (\(times))")
        return chosen
    }

    /// The bf16 flash-attention kernel (attention.cu), or with `version2` attention2.cu's (head dims 64 and 128: 128
    /// query rows a block; block 128 threads at d64, 256 at d128).
    private func bf16Kernel(out: UInt64, q: UInt64, k: UInt64, v: UInt64, kLens: UInt64, batch: Int, lq: Int, lk: Int, heads: Int,
                            headDim: Int, scale: Float, version2: Bool = false) throws {
        if version2 && Self.bf16V2HeadDims.contains(headDim) {
            let flops = 4 * Double(batch) * Double(lq) * Double(lk) * Double(heads * headDim)
            try go("flash_attention_bf16_v2_d\(headDim)", grid: ((lq + Self.bf16V2Rows - 1) / Self.bf16V2Rows, heads, batch),
                   block: (Self.bf16V2Threads(headDim: headDim), 1, 1), flops: flops,
                   [.pointer(out), .pointer(q), .pointer(k), .pointer(v), .pointer(kLens),
                    .int32(Int32(lq)), .int32(Int32(lk)), .int32(Int32(heads)), .float(scale)])
            return
        }
        let flops = 4 * Double(batch) * Double(lq) * Double(lk) * Double(heads * headDim)
        guard Self.bf16HeadDims.contains(headDim) else {
            // No tensor-core kernel for this head dim: the CUDA-core kernel on bf16 storage.
            guard headDim <= Self.maxHeadDim else {
                throw CUDAError.callFailed(call: "flash_attention_bf16_any", code: -1, message: "head_dim \(headDim) is over \(Self.maxHeadDim)")
            }
            try go("flash_attention_bf16_any", grid: ((lq + 3) / 4, heads, batch), block: (128, 1, 1), flops: flops,
                   [.pointer(out), .pointer(q), .pointer(k), .pointer(v), .pointer(kLens), .int32(Int32(lq)),
                    .int32(Int32(lk)), .int32(Int32(heads)), .int32(Int32(headDim)), .float(scale)])
            return
        }
        try go("flash_attention_bf16_d\(headDim)", grid: ((lq + 63) / 64, heads, batch), block: (128, 1, 1), flops: flops,
                                                                [.pointer(out), .pointer(q), .pointer(k), .pointer(v), .pointer(kLens),
                                                                 .int32(Int32(lq)), .int32(Int32(lk)), .int32(Int32(heads)), .float(scale)])
    }

    public func function(_ name: String) throws -> CUDAFunction {
        if let f = functions[name] { return f }
        guard let module = KernelCatalog.kernels.first(where: { $0.value.contains(name) })?.key else {
            throw CUDAError.kernelNotFound(name: name, file: "KernelCatalog")
        }
        if modules[module] == nil { modules[module] = try compiler.load(module: module, on: context) }
        let f = try modules[module]!.function(name)
        functions[name] = f
        return f
    }

    /// Per-kernel wall time when set (each launch is then synchronised before and after: for profiling only).
    public var timings: CUDATimings?

    /// Launches kernel `name` (timed when `timings` is set).
    func go(_ name: String, grid: (Int, Int, Int), block: (Int, Int, Int), flops: Double = 0, _ arguments: [KernelArgument]) throws {
        let f = try function(name)
        if let timings {
            try context.synchronize()
            let start = CUDATimings.now()
            try f.launch(grid: grid, block: block, arguments)
            try context.synchronize()
            timings.add(name, CUDATimings.now() - start, flops: flops)
        } else {
            try f.launch(grid: grid, block: block, arguments)
        }
    }

    /// Loads every module now (so compile time is not counted in the first forward pass).
    public func loadAll() throws {
        for (module, _) in KernelCatalog.kernels where modules[module] == nil {
            modules[module] = try compiler.load(module: module, on: context)
        }
    }

    static func blocks(_ n: Int, threads: Int = 256) -> Int { min(max((n + threads - 1) / threads, 1), 65535) }

    private func suffix(_ type: DeviceDType) -> String { type == .f32 ? "f32" : "bf16" }

    // MARK: elementwise

    /// out = x / (1 + exp(-x)), f32.
    public func silu(out: UInt64, x: UInt64, count: Int) throws {
        try go("silu_f32", grid: (Self.blocks(count), 1, 1), block: (256, 1, 1), [.pointer(out), .pointer(x), .int64(Int64(count))])
    }

    public func geluErf(_ type: DeviceDType, out: UInt64, x: UInt64, count: Int) throws {
        try go("gelu_erf_\(suffix(type))", grid: (Self.blocks(count), 1, 1), block: (256, 1, 1),
                                                        [.pointer(out), .pointer(x), .int64(Int64(count))])
    }

    public func geluTanh(_ type: DeviceDType, out: UInt64, x: UInt64, count: Int) throws {
        try go("gelu_tanh_\(suffix(type))", grid: (Self.blocks(count), 1, 1), block: (256, 1, 1),
                                                         [.pointer(out), .pointer(x), .int64(Int64(count))])
    }

    public func add(_ type: DeviceDType, out: UInt64, a: UInt64, b: UInt64, count: Int) throws {
        try go("add_\(suffix(type))", grid: (Self.blocks(count), 1, 1), block: (256, 1, 1),
                                                   [.pointer(out), .pointer(a), .pointer(b), .int64(Int64(count))])
    }

    /// y[r, c] = act(y[r, c] + bias[c]) in place (act 0: none, 1: GELU tanh); bias of y's type, 0 for none.
    public func biasAct(_ type: DeviceDType, y: UInt64, bias: UInt64, rows: Int, cols: Int, act: Int32) throws {
        try go("bias_act_\(suffix(type))", grid: (Self.blocks(rows * cols), 1, 1), block: (256, 1, 1),
                                                        [.pointer(y), .pointer(bias), .int64(Int64(rows)), .int32(Int32(cols)), .int32(act)])
    }

    /// out[b, i] = e[b, i] + modulation[i] for i < n (n = 6·dim for a block; the head uses it with e and modulation
    /// swapped: out[j, i] = modulation_head[j, i] + e[i]).
    public func modulationAdd(out: UInt64, e: UInt64, modulation: UInt64, batch: Int, n: Int) throws {
        try go("modulation_add_f32", grid: (Self.blocks(batch * n), 1, 1), block: (256, 1, 1),
                                                  [.pointer(out), .pointer(e), .pointer(modulation), .int32(Int32(batch)), .int32(Int32(n))])
    }

    /// x (f32) += y · gate[sample] (gate 0: plain residual add).
    public func gatedResidual(_ yType: DeviceDType, x: UInt64, y: UInt64, gate: UInt64, modStride: Int, rows: Int, rowsPerBatch: Int, dim: Int) throws {
        try go("gated_residual_\(suffix(yType))",
            grid: (Self.blocks(rows * dim), 1, 1), block: (256, 1, 1),
            [.pointer(x), .pointer(y), .pointer(gate), .int32(Int32(modStride)), .int64(Int64(rows)), .int32(Int32(rowsPerBatch)), .int32(Int32(dim))])
    }

    public func convertToBF16(out: UInt64, x: UInt64, count: Int) throws {
        try go("convert_f32_to_bf16", grid: (Self.blocks(count), 1, 1), block: (256, 1, 1), [.pointer(out), .pointer(x), .int64(Int64(count))])
    }

    public func convertToF32(out: UInt64, x: UInt64, count: Int) throws {
        try go("convert_bf16_to_f32", grid: (Self.blocks(count), 1, 1), block: (256, 1, 1), [.pointer(out), .pointer(x), .int64(Int64(count))])
    }

    // MARK: norms

    /// RMSNorm over rows of `dim` (in place allowed), weight f32 (0: none).
    public func rmsNorm(_ type: DeviceDType, out: UInt64, x: UInt64, weight: UInt64, rows: Int, dim: Int, eps: Float) throws {
        guard rows > 0 else { return }
        try go("rms_norm_\(suffix(type))", grid: (rows, 1, 1), block: (256, 1, 1),
                                                        [.pointer(out), .pointer(x), .pointer(weight), .int32(Int32(rows)), .int32(Int32(dim)), .float(eps)])
    }

    /// LayerNorm of f32 rows into `outType`, optional affine (weight, bias) and modulation (shift, scale; rows of a
    /// [B, ·, dim] tensor `modStride` apart); 0 switches a part off.
    public func layerNorm(_ outType: DeviceDType, out: UInt64, x: UInt64, weight: UInt64 = 0, bias: UInt64 = 0, shift: UInt64 = 0, scale: UInt64 = 0,
                          modStride: Int = 0, rows: Int, rowsPerBatch: Int? = nil, dim: Int, eps: Float) throws {
        guard rows > 0 else { return }
        try go("layer_norm_modulate_\(suffix(outType))",
            grid: (rows, 1, 1), block: (256, 1, 1),
            [.pointer(out), .pointer(x), .pointer(weight), .pointer(bias), .pointer(shift), .pointer(scale), .int32(Int32(modStride)),
             .int32(Int32(rows)), .int32(Int32(rowsPerBatch ?? rows)), .int32(Int32(dim)), .float(eps)])
    }

    // MARK: rope, attention

    /// 3-D RoPE in place on [batch, seqLen, heads, headDim]; grid: device int32 [batch, 3].
    public func rope(_ type: DeviceDType, x: UInt64, grid: UInt64, batch: Int, seqLen: Int, heads: Int, headDim: Int, theta: Float = 10000) throws {
        let total = batch * seqLen * heads * headDim / 2
        try go("rope_3d_\(suffix(type))", grid: (Self.blocks(total), 1, 1), block: (256, 1, 1),
                                                       [.pointer(x), .pointer(grid), .int32(Int32(batch)), .int32(Int32(seqLen)),
                                                        .int32(Int32(heads)), .int32(Int32(headDim)), .float(theta)])
    }

    /// Head dims with a bf16 tensor-core kernel; others up to `maxHeadDim` take the CUDA-core kernel
    /// (`flash_attention_bf16_any`, as `flash_attention_f32` in f32).
    public static let bf16HeadDims: Set<Int> = [32, 64, 128]
    public static let maxHeadDim = 128
    /// Head dims of the second bf16 kernel (attention2.cu), its query rows per block and threads per block.
    public static let bf16V2HeadDims: Set<Int> = [64, 128]
    public static let bf16V2Rows = 128
    public static func bf16V2Threads(headDim: Int) -> Int { headDim == 128 ? 256 : 128 }

    /// softmax(q kᵀ · scale) v; q [B, Lq, H, D], k/v [B, Lk, H, D], out like q; kLens: device int32 [B] or 0. bf16 goes
    /// through cuDNN's fused attention or the kernel as `attentionBackend` says; f32 always through the kernel.
    public func attention(_ type: DeviceDType, out: UInt64, q: UInt64, k: UInt64, v: UInt64, kLens: UInt64 = 0,
                          batch: Int = 1, lq: Int, lk: Int, heads: Int, headDim: Int, scale: Float) throws {
        guard lq > 0 else { return }
        let flops = 4 * Double(batch) * Double(lq) * Double(lk) * Double(heads * headDim)
        if type == .f32 {
            guard headDim <= Self.maxHeadDim else {
                throw CUDAError.callFailed(call: "flash_attention_f32", code: -1, message: "head_dim \(headDim) is over \(Self.maxHeadDim)")
            }
            try go("flash_attention_f32", grid: ((lq + 3) / 4, heads, batch), block: (128, 1, 1), flops: flops,
                                                       [.pointer(out), .pointer(q), .pointer(k), .pointer(v), .pointer(kLens), .int32(Int32(lq)),
                                                        .int32(Int32(lk)), .int32(Int32(heads)), .int32(Int32(headDim)), .float(scale)])
        } else {
            if try attentionThroughCuDNN(out: out, q: q, k: k, v: v, kLens: kLens, batch: batch, lq: lq, lk: lk, heads: heads,
                                         headDim: headDim, scale: scale, flops: flops) { return }
            let shape = CuDNNAttention.Shape(batch: batch, lq: lq, lk: lk, heads: heads, headDim: headDim, masked: kLens != 0)
            try bf16Kernel(out: out, q: q, k: k, v: v, kLens: kLens, batch: batch, lq: lq, lk: lk, heads: heads, headDim: headDim, scale: scale,
                           version2: attentionUsed[shape] == .kernel2)
        }
    }
}
