import Foundation
import WanTensor
import WanWeights
import WanModels

/// The Wan2.1 VACE DiT (official `VaceWanModel`) on an NVIDIA GPU, step for step as `WanVACEDiT` runs it on the CPU:
/// the main model and the vace branch are two `CUDADiT`s bound from the same views of the checkpoint
/// (`WanVACEDiT.branchWeights`) on one context (the vace branch uses the main model's kernels, cuBLASLt handle,
/// memory pool, text and time embeddings and head: nothing is uploaded twice). Just before main block
/// vace_layers[n] needs hint n, vace block n runs on the vace stream c (block 0: c = before_proj(vace patch tokens)
/// + x0, x0 the main patch tokens) with the main forward's activation buffers, hint n = after_proj(c), and
/// hint n * scale is added to the residual stream after that main block. c, x0 and the hints are f32 like the
/// residual stream; before_proj and after_proj multiply in the activation type (bf16 or f32) with f32 outputs.
public final class CUDAVACE {
    public let config: WanVACEConfig
    public let precision: CUDAPrecision
    /// The main model (every key outside vace_*).
    public let main: CUDADiT
    /// The vace blocks as the blocks of a second `CUDADiT` (its patch embedding is vace_patch_embedding).
    let vace: CUDADiT
    let beforeProj: [DeviceLinear?]
    let afterProj: [DeviceLinear]
    /// Main block index -> hint index (official vace_layers_mapping).
    let hintOfBlock: [Int: Int]
    /// Device bytes of both models' weights (shared tensors once), of the projections and of the one bf16 scratch
    /// compact matrices are expanded into (the backend both models share).
    public var weightBytes: Int { main.backend.weightBytes }
    /// The vace stream, x0, the hint, the vace patches and the hint scale of the last token count.
    private var workspace: (tokens: Int, plan: WorkspacePlan, buffer: DeviceBuffer)?

    public var context: CUDAContext { main.context }

    /// Binds and uploads the weights by the official names. Strict like `WanVACEDiT`: every key of the source must
    /// be used by the main model or the vace branch, with the expected shape.
    public init(config c: WanVACEConfig, weights source: WeightSource, precision: CUDAPrecision = .bf16,
                context: CUDAContext? = nil, compiler: KernelCompiler? = nil) throws {
        let d = c.dit.dim, n = c.vaceLayers.count
        let (mainConfig, vaceConfig) = try WanVACEDiT.branchConfigs(c, label: source.label)
        let (mainView, vaceView, vaceMap) = WanVACEDiT.branchWeights(source)
        config = c
        self.precision = precision
        // The small tensors first, so a malformed file fails before anything large is uploaded.
        let b = WeightBinder(source)
        let patchVolume = c.dit.patchSize.reduce(1, *)
        _ = try b.tensor("vace_patch_embedding.weight", [d, c.vaceInDim] + c.dit.patchSize)
        _ = try b.tensor("vace_patch_embedding.bias", [d])
        let before = try (0..<n).map { k in c.vaceLayers[k] == 0 ? try Linear(b, "vace_blocks.\(k).before_proj", in: d, out: d) : nil }
        let after = try (0..<n).map { k in try Linear(b, "vace_blocks.\(k).after_proj", in: d, out: d) }
        main = try CUDADiT(config: mainConfig, weights: mainView, precision: precision, context: context, compiler: compiler)
        do {
            vace = try CUDADiT(config: vaceConfig, weights: vaceView, backend: main.backend, sharing: main)
        } catch let e as WeightError {
            throw WanVACEDiT.renamed(e, map: vaceMap)
        }
        precondition(vace.patchEmbedding.inFeatures == c.vaceInDim * patchVolume)
        for name in mainView.names { b.ignore(name) }
        for name in vaceMap.values { b.ignore(name) }
        try b.finish()

        let backend = main.backend, act = precision.activation
        beforeProj = try before.map { l in try l.map { try backend.upload($0, weight: act, output: .f32) } }
        afterProj = try after.map { try backend.upload($0, weight: act, output: .f32) }
        try backend.weightsLoaded()
        var mapping: [Int: Int] = [:]
        for (k, layer) in c.vaceLayers.enumerated() { mapping[layer] = k }
        hintOfBlock = mapping
        try main.context.synchronize()
    }

    /// Loads a VACE DiT, inferring the configuration from its shapes; `arguments` (the official constructor
    /// arguments) override what was inferred.
    public convenience init(weights source: WeightSource, arguments: [String: Any]? = nil, precision: CUDAPrecision = .bf16,
                            context: CUDAContext? = nil, compiler: KernelCompiler? = nil) throws {
        var config = try WanVACEConfig(inferringFrom: source)
        if let arguments { config.apply(officialArguments: arguments) }
        try self.init(config: config, weights: source, precision: precision, context: context, compiler: compiler)
    }

    func run(_ l: DeviceLinear, rows: Int, x: UInt64, y: UInt64) throws {
        try main.backend.product(l, rows: rows, x: x, y: y)
    }

    /// The vace forward's own buffers for `tokens` tokens, beside the main model's workspace (`CUDADiTPlan`).
    static func workspacePlan(_ c: WanVACEConfig, tokens L: Int) -> WorkspacePlan {
        let d = c.dit.dim
        var plan = WorkspacePlan()
        plan.add("c", bytes: 4 * L * d)        // the vace stream, f32
        plan.add("x0", bytes: 4 * L * d)       // the main patch tokens (before_proj's residual)
        plan.add("hint", bytes: 4 * L * d)     // after_proj(c), f32
        plan.add("patches", bytes: 4 * L * c.vaceInDim * c.dit.patchSize.reduce(1, *))
        plan.add("scale", bytes: 4 * d)        // vace_context_scale per channel (the gate of the hint's residual add)
        return plan
    }

    /// The vace forward's own buffers for `tokens` tokens (kept between calls; a new token count replaces them).
    func workspace(tokens L: Int) throws -> (plan: WorkspacePlan, base: UInt64) {
        if let w = workspace, w.tokens == L { return (w.plan, w.buffer.pointer) }
        releaseWorkspace()
        let plan = Self.workspacePlan(config, tokens: L)
        let buffer = try main.pool.acquire(bytes: plan.totalBytes)
        workspace = (L, plan, buffer)
        return (plan, buffer.pointer)
    }

    /// Hands the vace buffers back to the pool.
    func releaseWorkspace() {
        if let w = workspace { main.pool.release(w.buffer); workspace = nil }
    }

    // MARK: context

    /// The text conditioning of the main and the vace blocks (see `CUDADiT.prepare`): reuse it for every step.
    public func prepare(context text: Tensor) throws -> CUDAVACEContext {
        CUDAVACEContext(model: self, main: try main.prepare(context: text), vace: try vace.prepare(context: text))
    }

    // MARK: forward

    /// One video: `x` [16, F, H, W], `vaceContext` [vace_in_dim, F, H, W], `context` [L, text_dim]; `scale` is
    /// vace_context_scale. Traces as `WanVACEDiT`: the main model's names, the vace branch's prefixed vace_, hintN.
    public func forward(x: Tensor, t: Float, context: Tensor, vaceContext: Tensor, scale: Float = 1,
                        trace: ((String, Tensor) -> Void)? = nil) throws -> Tensor {
        try forward(x: x, t: t, context: try prepare(context: context), vaceContext: vaceContext, scale: scale, trace: trace)
    }

    /// One video with a prepared context.
    public func forward(x: Tensor, t: Float, context prepared: CUDAVACEContext, vaceContext: Tensor, scale: Float = 1,
                        trace: ((String, Tensor) -> Void)? = nil) throws -> Tensor {
        guard prepared.model === self else { throw DiTInputError(description: "the context was prepared by another model") }
        let c = config.dit, d = c.dim, act = precision.activation
        guard vaceContext.rank == 4, vaceContext.shape[0] == config.vaceInDim else {
            throw DiTInputError(description: "vace_context must be [\(config.vaceInDim), F, H, W], got \(vaceContext.shape)")
        }
        guard x.rank == 4, Array(vaceContext.shape[1...]) == Array(x.shape[1...]) else {
            throw DiTInputError(description: "vace_context \(vaceContext.shape) must match x \(x.shape) in F, H, W")
        }
        let needed = Set(hintOfBlock.values)
        var done = 0
        var base: UInt64 = 0, plan = WorkspacePlan()
        func at(_ name: String) -> UInt64 { base + UInt64(plan.offset(name)!) }
        // Hints made before the block that takes them (vace_layers out of order) wait in pooled buffers.
        var waiting: [Int: DeviceBuffer] = [:]
        defer { for buffer in waiting.values { main.pool.release(buffer) } }
        let vaceTrace = trace.map { t in { (name: String, v: Tensor) in t("vace_" + name, v) } }
        let hook: CUDADiT.BlockHook = { [self] stage, xs, s in
            let L = s.tokens, xt = CUDAComputeBackend.pointer(xs), normed = CUDAComputeBackend.pointer(s.normed)
            // c (f32) as the input of a product, in s.normed (free between blocks).
            func cInput() throws -> UInt64 {
                if act == .f32 { try context.copy(onDevice: normed, from: at("c"), bytes: 4 * L * d) }
                else { try main.ops.convertToBF16(out: normed, x: at("c"), count: L * d) }
                return normed
            }
            if stage < 0 {
                (plan, base) = try workspace(tokens: L)
                try context.copy(onDevice: at("x0"), from: xt, bytes: 4 * L * d)
                let patches = WanDiT.patchRows(vaceContext, patchSize: c.patchSize, grid: s.grid)
                try main.upload(patches.data, count: patches.count, to: at("patches"), as: .f32)
                try vace.run(vace.patchEmbedding, rows: L, x: at("patches"), y: at("c"))
                if let vaceTrace { vaceTrace("patch_tokens", try main.download(at("c"), .f32, [L, d])) }
                let gate = [Float](repeating: scale, count: d)
                try gate.withUnsafeBufferPointer { try main.upload($0.baseAddress!, count: d, to: at("scale"), as: .f32) }
                return
            }
            guard let n = hintOfBlock[stage] else { return }
            while done <= n {
                let k = done
                if let bp = beforeProj[k] {
                    // c = before_proj(c) + x0
                    try run(bp, rows: L, x: try cInput(), y: at("c"))
                    try main.ops.gatedResidual(.f32, x: at("c"), y: at("x0"), gate: 0, modStride: 0, rows: L, rowsPerBatch: L, dim: d)
                }
                let cTokens = BackendTensor<CUDAComputeBackend>(storage: CUDAComputeBackend.Storage(borrowing: workspace!.buffer),
                                                                offset: plan.offset("c")! / 4, rows: L, cols: d, type: .f32)
                try vace.runBlock(k, x: cTokens, scratch: s, context: prepared.vace, trace: vaceTrace)
                if needed.contains(k) {
                    var hint = at("hint")
                    if k != n {
                        let buffer = try main.pool.acquire(bytes: 4 * L * d)
                        waiting[k] = buffer
                        hint = buffer.pointer
                    }
                    try run(afterProj[k], rows: L, x: try cInput(), y: hint)
                    if let vaceTrace { vaceTrace("hint\(k)", try main.download(hint, .f32, [L, d])) }
                }
                done += 1
            }
            let hint = waiting[n]?.pointer ?? at("hint")
            try main.ops.gatedResidual(.f32, x: xt, y: hint, gate: at("scale"), modStride: 0, rows: L, rowsPerBatch: L, dim: d)
            if let buffer = waiting.removeValue(forKey: n) { main.pool.release(buffer) }
        }
        return try main.forward(x: x, y: nil, t: t, context: prepared.main, trace: trace, hook: hook)
    }

    /// Hands the activation workspaces back to the pool and the pool's free buffers back to the driver.
    public func releaseActivations() {
        releaseWorkspace()
        main.releaseWorkspace()
        main.pool.trim()
    }
}

/// A prepared conditioning of a `CUDAVACE` (text keys and values of the main and the vace blocks, on the device).
public final class CUDAVACEContext: DiTConditioning {
    let model: CUDAVACE
    public let main: CUDADiTContext
    let vace: CUDADiTContext
    init(model: CUDAVACE, main: CUDADiTContext, vace: CUDADiTContext) { self.model = model; self.main = main; self.vace = vace }
}

/// The GPU VACE DiT is a `VACEDenoiser`: the VACE pipeline and the conformance runner run it as the CPU `WanVACEDiT`.
extension CUDAVACE: VACEDenoiser {
    public var backendDescription: String { "cuda:\(context.info.ordinal) \(context.info.name) (\(precision.rawValue))" }

    public func prepareConditioning(text: Tensor) throws -> DiTConditioning { try prepare(context: text) }

    public func velocity(x: Tensor, t: Float, conditioning: DiTConditioning, vaceContext: Tensor, scale: Float) throws -> Tensor {
        guard let prepared = conditioning as? CUDAVACEContext else {
            throw DiTInputError(description: "the conditioning was prepared by another backend's model")
        }
        return try forward(x: x, t: t, context: prepared, vaceContext: vaceContext, scale: scale)
    }
}

/// GPU memory of one VACE job, as `CUDAVACE` allocates it: `CUDADiTMemory` for both models (the main model's weights,
/// the vace blocks, vace_patch_embedding and the projections; two conditionings of the main and the vace blocks; the
/// main forward's workspace and the vace stream's buffers): the pre-flight that refuses a job before anything is
/// uploaded.
public struct CUDAVACEMemory: GPUJobMemory, Equatable {
    public var weights: Int
    public var conditioning: Int
    public var workspace: Int
    public var reserve: Int

    /// `tokens`: the DiT's sequence length. `weights`: the checkpoint, whose fp8 / ggml matrices are counted as they
    /// stay on the GPU under bf16 (nil: every matrix dequantised, as `CUDADiTPlan.weightBytes(_:precision:)`).
    public init(config c: WanVACEConfig, precision: CUDAPrecision, tokens: Int, weights source: WeightSource? = nil) {
        let t = precision.activation.size, d = c.dit.dim
        var (mainConfig, vaceConfig) = (c.dit, c.dit)
        if mainConfig.modelType == "t2v" { mainConfig.modelType = "vace" }
        vaceConfig.modelType = "t2v"; vaceConfig.numLayers = c.vaceLayers.count; vaceConfig.inDim = c.vaceInDim
        var noBlocks = vaceConfig
        noBlocks.numLayers = 0
        let views = source.map(WanVACEDiT.branchWeights)
        func compact(_ view: WeightSource?) -> (String) -> Int? {
            { name in
                guard let view, let info = view.info(name), [.f8e4m3, .f8e5m2, .u8].contains(info.dtype),
                      let stored = try? view.stored(name), CompactWeightFormat.of(stored, weightType: .bf16) != nil else { return nil }
                return stored.byteCount
            }
        }
        let main = CUDADiTPlan.weightBytesAndScratch(mainConfig, precision: precision, compactBytes: compact(views?.main))
        // The vace branch uploads its blocks and vace_patch_embedding (f32); its compact matrices are no larger than
        // the main model's, whose scratch they share.
        let vaceBlocks = CUDADiTPlan.weightBytesAndScratch(vaceConfig, precision: precision, compactBytes: compact(views?.vace)).uploaded
            - CUDADiTPlan.weightBytesAndScratch(noBlocks, precision: precision, compactBytes: { _ in nil }).uploaded
        let patchEmbedding = 4 * d * (c.vaceInDim * c.dit.patchSize.reduce(1, *) + 1)
        let projections = (c.vaceLayers.filter { $0 == 0 }.count + c.vaceLayers.count) * (t * d * d + 4 * d)
        weights = main.uploaded + main.scratch + vaceBlocks + patchEmbedding + projections
        conditioning = 2 * (CUDADiTPlan.contextBytes(mainConfig, precision: precision) + CUDADiTPlan.contextBytes(vaceConfig, precision: precision))
        let patchLength = c.dit.inDim * c.dit.patchSize.reduce(1, *)
        workspace = CUDADiTPlan(config: mainConfig, tokens: tokens, patchLength: patchLength, precision: precision).workspace.totalBytes
            + CUDAVACE.workspacePlan(c, tokens: tokens).totalBytes
        reserve = CUDADiTMemory.reserveBytes
    }

}
