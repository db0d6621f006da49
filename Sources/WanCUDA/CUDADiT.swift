import Foundation
import WanTensor
import WanWeights
import WanModels

/// A `Linear` on the device: weight [out, in] in `weightType`, bias [out] in `outputType` (cuBLASLt's bias epilogue
/// takes the output's type). A compact weight (`compact` set: fp8, ggml blocks) holds the stored bytes instead and is
/// expanded into the model's bf16 scratch matrix (times `scale`) before each product.
public struct DeviceLinear {
    let weight: DeviceBuffer
    let bias: DeviceBuffer?
    let inFeatures: Int
    let outFeatures: Int
    let weightType: DeviceDType
    let outputType: DeviceDType
    var compact: CompactWeightFormat? = nil
    var scale: Float = 1
}

/// The Wan2.1 DiT (official `WanModel`: t2v, i2v, flf2v) on an NVIDIA GPU, step for step as `WanDiT` runs it on the
/// CPU. Weights are bound by the official names from any `WeightSource` (strictly, as `WanDiT` binds them) and
/// uploaded once: matrices in the activation type (bf16, or f32 for `--precision f32`) except those the official
/// code runs in f32 under autocast (patch embedding, time embedding and projection, head); norms, biases of f32
/// outputs and modulations in f32. Under bf16, matrices stored as fp8 (e4m3fn/e5m2, ComfyUI's per-tensor
/// `scale_weight` kept beside them) or as ggml Q8_0/Q4_0/Q4_K/Q5_K/Q6_K blocks are uploaded as stored and expanded
/// to bf16 on the GPU just before each product, into one scratch matrix sized for the largest of them
/// (`CompactWeightFormat`: the same bf16 values as a host dequantisation, so the same output, in about half the
/// memory for fp8). Products go through cuBLASLt (f32 accumulation), everything else through the
/// kernels of Kernels/*.cu.
///
/// Differences from the CPU path that do not change the result: the text is embedded at its full official length
/// (text_len rows, padded rows included, no per-key bias); patchify/unpatchify and the sinusoid run on the host.
public final class CUDADiT {
    public let config: WanDiTConfig
    /// Context, kernels, cuBLASLt, memory pool and the uploaded weights (shared with `CUDAVACE`'s vace branch).
    public let backend: CUDAComputeBackend
    public var precision: CUDAPrecision { backend.precision }
    public var context: CUDAContext { backend.context }
    public var ops: CUDAOps { backend.ops }
    public var gemm: CUDAMatmul { backend.gemm }
    public var pool: DeviceMemoryPool { backend.pool }
    /// Device bytes of the weights: as uploaded (compact matrices in their stored form) plus the bf16 scratch
    /// they are expanded into (`dequantScratchBytes`); what `CUDADiTPlan.weightBytes(_:precision:weights:)` plans.
    /// (Of both models when a vace branch shares the backend.)
    public var weightBytes: Int { backend.weightBytes }
    /// Device bytes of the bf16 scratch matrix compact weights are expanded into (0 when none is compact).
    public var dequantScratchBytes: Int { backend.dequantScratchBytes }
    /// Matrices kept compact on the device, by format.
    public var compactMatrices: [CompactWeightFormat: Int] { backend.compactMatrices }

    struct Block {
        let modulation: DeviceBuffer  // [6, dim] f32
        let q, k, v, o: DeviceLinear
        let normQ, normK: DeviceBuffer?
        let norm3Weight, norm3Bias: DeviceBuffer?
        let cq, ck, cv, co: DeviceLinear
        let cNormQ, cNormK: DeviceBuffer?
        let kImg, vImg: DeviceLinear?
        let normKImg: DeviceBuffer?
        let ffnIn, ffnOut: DeviceLinear
    }
    struct ImageProjection {
        let norm0Weight, norm0Bias: DeviceBuffer
        let fc1, fc2: DeviceLinear
        let norm4Weight, norm4Bias: DeviceBuffer
        let posEmbedding: Tensor?  // [1, 514, 1280], added on the host
    }

    let patchEmbedding: DeviceLinear  // weight viewed [dim, in*pt*ph*pw]
    let textEmbedding0, textEmbedding2: DeviceLinear
    let timeEmbedding0, timeEmbedding2, timeProjection: DeviceLinear
    let blocks: [Block]
    let headModulation: DeviceBuffer  // [2, dim] f32
    let head: DeviceLinear
    let imageProjection: ImageProjection?
    /// GELU(tanh) inside cuBLASLt's epilogue (bf16) or by the gelu_tanh kernel (f32: exactly the official formula).
    let fusedGELU: Bool

    private var workspace: (plan: CUDADiTPlan, buffer: DeviceBuffer)?

    /// Binds and uploads the weights. Strict like `WanDiT`: a missing, unexpected or misshapen tensor throws.
    public convenience init(config c: WanDiTConfig, weights source: WeightSource, precision: CUDAPrecision = .bf16,
                            context: CUDAContext? = nil, compiler: KernelCompiler? = nil) throws {
        try self.init(config: c, weights: source, precision: precision, context: context, compiler: compiler, sharing: nil)
    }

    /// Tensors a model made with `sharing:` takes from the other model instead of binding them (the text and time
    /// embeddings and the head, which the vace branch of a VACE checkpoint shares with the main model).
    static let sharedPrefixes = ["text_embedding.", "time_embedding.", "time_projection.", "head."]

    /// `sharing`: a model on the same context at the same precision whose kernels, cuBLASLt handle, memory pool, text
    /// and time embeddings and head this one uses (their names in `source` are not bound again: `CUDAVACE`'s vace
    /// branch, whose view names the main model's tensors there).
    init(config c: WanDiTConfig, weights source: WeightSource, precision: CUDAPrecision, context: CUDAContext?,
         compiler: KernelCompiler?, sharing shared: CUDADiT?) throws {
        guard c.dim % c.numHeads == 0, c.headDim % 2 == 0 else {
            throw WeightError.badConfig(source: source.label, detail: "dim \(c.dim) is not divisible into \(c.numHeads) heads of even size")
        }
        guard c.patchSize.count == 3 else { throw WeightError.badConfig(source: source.label, detail: "patch_size must have 3 entries") }
        if precision == .bf16 && !CUDAOps.bf16HeadDims.contains(c.headDim) {
            throw WeightError.badConfig(source: source.label, detail: "head_dim \(c.headDim): the bf16 attention kernels take \(CUDAOps.bf16HeadDims.sorted()); use --precision f32")
        }
        if let shared {
            let s = shared.config
            guard shared.precision == precision, context == nil || context === shared.context, s.dim == c.dim,
                  s.textDim == c.textDim, s.freqDim == c.freqDim, s.textLen == c.textLen, s.outDim == c.outDim, s.patchSize == c.patchSize else {
                throw WeightError.badConfig(source: source.label, detail: "cannot share the embeddings and head of a model of another shape, precision or context")
            }
        }
        config = c
        backend = try shared?.backend ?? CUDAComputeBackend(precision: precision, context: context, compiler: compiler)
        fusedGELU = precision == .bf16

        let act = precision.activation
        let backend = self.backend
        let b = WeightBinder(source)
        let d = c.dim
        func linear(_ prefix: String, in i: Int, out o: Int, weight w: DeviceDType, output: DeviceDType) throws -> DeviceLinear {
            try backend.upload(try Linear(b, prefix, in: i, out: o), weight: w, output: output)
        }
        func vector(_ name: String, _ shape: [Int]) throws -> DeviceBuffer { try backend.vector(try b.tensor(name, shape)) }

        let pe = try b.tensor("patch_embedding.weight", [d, c.inDim] + c.patchSize)
        let peBias = try b.tensor("patch_embedding.bias", [d])
        patchEmbedding = try backend.upload(Linear(weight: pe.reshaped([d, pe.count / d]), bias: peBias), weight: .f32, output: .f32)
        if let shared {
            textEmbedding0 = shared.textEmbedding0; textEmbedding2 = shared.textEmbedding2
            timeEmbedding0 = shared.timeEmbedding0; timeEmbedding2 = shared.timeEmbedding2
            timeProjection = shared.timeProjection
            for name in source.names where Self.sharedPrefixes.contains(where: { name.hasPrefix($0) }) { b.ignore(name) }
        } else {
            textEmbedding0 = try linear("text_embedding.0", in: c.textDim, out: d, weight: act, output: act)
            textEmbedding2 = try linear("text_embedding.2", in: d, out: d, weight: act, output: act)
            timeEmbedding0 = try linear("time_embedding.0", in: c.freqDim, out: d, weight: .f32, output: .f32)
            timeEmbedding2 = try linear("time_embedding.2", in: d, out: d, weight: .f32, output: .f32)
            timeProjection = try linear("time_projection.1", in: d, out: 6 * d, weight: .f32, output: .f32)
        }
        var blocks: [Block] = []
        for i in 0..<c.numLayers {
            let p = "blocks.\(i)."
            func norm(_ name: String) throws -> DeviceBuffer? { c.qkNorm ? try vector(p + name + ".weight", [d]) : nil }
            func proj(_ name: String, in i: Int = d, out o: Int = d) throws -> DeviceLinear {
                try linear(p + name, in: i, out: o, weight: act, output: act)
            }
            let img = c.hasImageInput
            blocks.append(Block(
                modulation: try vector(p + "modulation", [1, 6, d]),
                q: try proj("self_attn.q"), k: try proj("self_attn.k"), v: try proj("self_attn.v"), o: try proj("self_attn.o"),
                normQ: try norm("self_attn.norm_q"), normK: try norm("self_attn.norm_k"),
                norm3Weight: c.crossAttnNorm ? try vector(p + "norm3.weight", [d]) : nil,
                norm3Bias: c.crossAttnNorm ? try vector(p + "norm3.bias", [d]) : nil,
                cq: try proj("cross_attn.q"), ck: try proj("cross_attn.k"), cv: try proj("cross_attn.v"), co: try proj("cross_attn.o"),
                cNormQ: try norm("cross_attn.norm_q"), cNormK: try norm("cross_attn.norm_k"),
                kImg: img ? try proj("cross_attn.k_img") : nil, vImg: img ? try proj("cross_attn.v_img") : nil,
                normKImg: img ? try norm("cross_attn.norm_k_img") : nil,
                ffnIn: try proj("ffn.0", out: c.ffnDim), ffnOut: try proj("ffn.2", in: c.ffnDim)))
        }
        self.blocks = blocks
        if let shared {
            headModulation = shared.headModulation
            head = shared.head
        } else {
            headModulation = try vector("head.modulation", [1, 2, d])
            head = try linear("head.head", in: d, out: c.outDim * c.patchSize.reduce(1, *), weight: .f32, output: .f32)
        }
        if c.hasImageInput {
            let clip = WanDiTConfig.clipDim
            imageProjection = ImageProjection(
                norm0Weight: try vector("img_emb.proj.0.weight", [clip]), norm0Bias: try vector("img_emb.proj.0.bias", [clip]),
                fc1: try linear("img_emb.proj.1", in: clip, out: clip, weight: act, output: act),
                fc2: try linear("img_emb.proj.3", in: clip, out: d, weight: act, output: .f32),
                norm4Weight: try vector("img_emb.proj.4.weight", [d]), norm4Bias: try vector("img_emb.proj.4.bias", [d]),
                posEmbedding: c.modelType == "flf2v" ? try b.tensor("img_emb.emb_pos", [1, 514, clip]) : nil)
        } else {
            imageProjection = nil
        }
        try b.finish()
        try backend.weightsLoaded()
    }

    /// Loads a DiT from a weight source, inferring the configuration from its shapes; `arguments` (the official
    /// constructor arguments) override what was inferred.
    public convenience init(weights source: WeightSource, arguments: [String: Any]? = nil, precision: CUDAPrecision = .bf16,
                            context: CUDAContext? = nil) throws {
        var config = try WanDiTConfig(inferringFrom: source)
        if let arguments { config.apply(officialArguments: arguments) }
        try self.init(config: config, weights: source, precision: precision, context: context)
    }

    var act: DeviceDType { precision.activation }

    func run(_ l: DeviceLinear, rows: Int, x: UInt64, y: UInt64, epilogue: MatmulEpilogue = .none) throws {
        try backend.product(l, rows: rows, x: x, y: y, epilogue: epilogue)
    }

    /// A product followed by GELU(tanh): fused in cuBLASLt (bf16) or by the kernel (f32).
    func runGELU(_ l: DeviceLinear, rows: Int, x: UInt64, y: UInt64) throws {
        if fusedGELU {
            try run(l, rows: rows, x: x, y: y, epilogue: .geluTanh)
        } else {
            try run(l, rows: rows, x: x, y: y)
            try ops.geluTanh(l.outputType, out: y, x: y, count: rows * l.outFeatures)
        }
    }

    /// A device tensor as a host f32 tensor (waits for the queued work).
    func download(_ address: UInt64, _ type: DeviceDType, _ shape: [Int]) throws -> Tensor {
        let count = shape.reduce(1, *)
        let out = Tensor(uninitialized: shape)
        if type == .f32 {
            try context.copy(toHost: UnsafeMutableRawPointer(out.data), from: address, bytes: count * 4)
        } else {
            var bits = [UInt16](repeating: 0, count: count)
            try bits.withUnsafeMutableBytes { try context.copy(toHost: $0.baseAddress!, from: address, bytes: count * 2) }
            bits.withUnsafeBufferPointer { BFloat16.unpack($0.baseAddress!, into: out.data, count: count) }
        }
        return out
    }

    /// Uploads host f32 values to `address` as `type`.
    func upload(_ values: UnsafePointer<Float>, count: Int, to address: UInt64, as type: DeviceDType) throws {
        if type == .f32 {
            try context.copy(toDevice: address, from: UnsafeRawPointer(values), bytes: count * 4)
        } else {
            var bits = [UInt16](repeating: 0, count: count)
            bits.withUnsafeMutableBufferPointer { BFloat16.pack(values, into: $0.baseAddress!, count: count) }
            try bits.withUnsafeBytes { try context.copy(toDevice: address, from: $0.baseAddress!, bytes: count * 2) }
        }
    }

    // MARK: context

    /// The conditioning's weights as `PreparedDiTConditioning` runs them.
    var conditioningWeights: DiTConditioningWeights<CUDAComputeBackend> {
        DiTConditioningWeights(
            textEmbedding0: textEmbedding0, textEmbedding2: textEmbedding2,
            blocks: blocks.map { .init(k: $0.ck, v: $0.cv, normK: $0.cNormK, kImg: $0.kImg, vImg: $0.vImg, normKImg: $0.normKImg) },
            image: imageProjection.map { .init(norm0Weight: $0.norm0Weight, norm0Bias: $0.norm0Bias, fc1: $0.fc1, fc2: $0.fc2,
                                               norm4Weight: $0.norm4Weight, norm4Bias: $0.norm4Bias, posEmbedding: $0.posEmbedding) })
    }

    /// The text (and image) conditioning on the device (`PreparedDiTConditioning`: the text embedded at text_len rows,
    /// every block's cross-attention keys and values). Prepare once per prompt; reuse for every step.
    public func prepare(context text: Tensor, clipFeatures: Tensor? = nil) throws -> CUDADiTContext {
        try CUDADiTContext(model: self, backend: backend, config: config, weights: conditioningWeights, text: text, clipFeatures: clipFeatures)
    }

    // MARK: forward

    /// One video through the model (the conditioning prepared on the way, as `WanDiT.forward(_:trace:)` does).
    public func forward(_ input: DiTInput, trace: ((String, Tensor) -> Void)? = nil) throws -> Tensor {
        try forward(x: input.x, y: input.y, t: input.t, context: try prepare(context: input.context, clipFeatures: input.clipFeatures), trace: trace)
    }

    /// The workspace for `tokens` tokens (kept between calls; a new token count replaces it).
    func workspace(tokens: Int, patchLength: Int) throws -> (plan: CUDADiTPlan, base: UInt64) {
        let plan = CUDADiTPlan(config: config, tokens: tokens, patchLength: patchLength, precision: precision)
        if let w = workspace, w.plan == plan { return (plan, w.buffer.pointer) }
        if let old = workspace { pool.release(old.buffer); workspace = nil }
        let buffer = try pool.acquire(bytes: plan.workspace.totalBytes)
        workspace = (plan, buffer)
        return (plan, buffer.pointer)
    }

    /// The workspace's buffer (set by `workspace(tokens:patchLength:)`).
    var workspaceBuffer: DeviceBuffer? { workspace?.buffer }

    /// Hands the activation workspace back to the pool (the weights stay).
    public func releaseWorkspace() {
        if let w = workspace { pool.release(w.buffer); workspace = nil }
    }

    /// One video through the model with a prepared context: x [C, F, H, W] (and y for i2v/flf2v) -> [out, F, H, W].
    public func forward(x inputX: Tensor, y inputY: Tensor? = nil, t: Float, context prepared: CUDADiTContext,
                        trace: ((String, Tensor) -> Void)? = nil) throws -> Tensor {
        try forward(x: inputX, y: inputY, t: t, context: prepared, trace: trace, hook: nil)
    }

    /// Called with the residual stream [L, dim] (f32) after the patch embedding (stage -1) and after each block i
    /// (stage i), with the buffers the blocks run on (views of the workspace): how `CUDAVACE` runs its vace blocks
    /// and adds the hints.
    typealias BlockHook = DiTBlockHook<CUDAComputeBackend>

    /// Each block's weights as `runDiTBlock` runs them.
    var blockWeights: [DiTBlockWeights<CUDAComputeBackend>] {
        blocks.map { k in
            DiTBlockWeights(modulation: k.modulation, q: k.q, k: k.k, v: k.v, o: k.o, normQ: k.normQ, normK: k.normK,
                            norm3Weight: k.norm3Weight, norm3Bias: k.norm3Bias, crossQ: k.cq, crossO: k.co, crossNormQ: k.cNormQ,
                            ffnIn: k.ffnIn, ffnOut: k.ffnOut)
        }
    }

    /// Block `index` of this model on the residual stream `x` [L, dim] (f32, in place) with the buffers of a forward
    /// pass and the prepared conditioning (`runDiTBlock`).
    func runBlock(_ index: Int, weights: [DiTBlockWeights<CUDAComputeBackend>], x: BackendTensor<CUDAComputeBackend>,
                  scratch: DiTBlockScratch<CUDAComputeBackend>, context prepared: CUDADiTContext, trace: ((String, Tensor) -> Void)?) throws {
        try runDiTBlock(backend, config: config, weights: weights[index], index: index, x: x, scratch: scratch, context: prepared, trace: trace)
    }

    /// The patch embedding, time embedding and head as `runDiTForward` runs them.
    var outerWeights: DiTOuterWeights<CUDAComputeBackend> {
        DiTOuterWeights(patchEmbedding: patchEmbedding, timeEmbedding0: timeEmbedding0, timeEmbedding2: timeEmbedding2,
                        timeProjection: timeProjection, head: head, headModulation: headModulation)
    }

    /// `runDiTForward` on views of the planned workspace (`CUDADiTPlan`, kept between calls of one token count).
    func forward(x inputX: Tensor, y inputY: Tensor?, t: Float, context prepared: CUDADiTContext,
                 trace: ((String, Tensor) -> Void)?, hook: BlockHook?) throws -> Tensor {
        guard prepared.model === self else { throw DiTInputError(description: "the context was prepared by another model") }
        let c = config, d = c.dim, act = self.act
        return try runDiTForward(backend, config: c, outer: outerWeights, blocks: blockWeights, x: inputX, y: inputY, t: t,
                                 context: prepared, buffers: { [self] grid, L, patchLen in
            let (plan, _) = try workspace(tokens: L, patchLength: patchLen)
            let space = CUDAComputeBackend.Storage(borrowing: workspaceBuffer!)
            func view(_ name: String, _ rows: Int, _ cols: Int, _ type: ElementType) -> BackendTensor<CUDAComputeBackend> {
                BackendTensor(storage: space, offset: plan.workspace.offset(name)! / type.size, rows: rows, cols: cols, type: type)
            }
            let scratch = DiTBlockScratch<CUDAComputeBackend>(
                grid: grid, normed: view("normed", L, d, act), q: view("q", L, d, act), k: view("k", L, d, act), v: view("v", L, d, act),
                hidden: view("hidden", plan.ffnChunkRows, c.ffnDim, act), e0: view("e0", 1, 6 * d, .f32), mod: view("mod", 1, 6 * d, .f32))
            // The head's LayerNorm output in f32 takes the normed region (f32-sized), free after the blocks.
            return DiTForwardBuffers(x: view("x", L, d, .f32), patches: view("patches", L, patchLen, .f32),
                                     headNormed: view("normed", L, d, .f32), headOut: view("head", L, head.outFeatures, .f32), scratch: scratch)
        }, trace: trace, hook: hook)
    }
}

/// A prepared conditioning on the device (see `PreparedDiTConditioning`); its tensors go back to the model's pool when
/// it is released.
public typealias CUDADiTContext = PreparedDiTConditioning<CUDAComputeBackend>

extension CUDAMatmul {
    /// The product of an uploaded `Linear`: y = x · wᵀ + bias. A compact weight (weight-only quantisation) is first
    /// expanded into `scratch` (`WeightUploader.makeScratch`) as bf16(float(stored) * scale), the same bits a host
    /// dequantisation uploads, then multiplied as a bf16 checkpoint's.
    func linear(_ l: DeviceLinear, rows: Int, x: UInt64, y: UInt64, epilogue: MatmulEpilogue = .none, ops: CUDAOps, scratch: DeviceBuffer?) throws {
        var w = l.weight.pointer
        if let format = l.compact {
            guard let scratch else { throw CUDAError.callFailed(call: "linear", code: -1, message: "a compact weight without its scratch matrix") }
            try ops.dequantize(format, out: scratch.pointer, weights: w, scale: l.scale, count: l.inFeatures * l.outFeatures)
            w = scratch.pointer
        }
        try linear(m: rows, n: l.outFeatures, k: l.inFeatures, x: x, w: w, bias: l.bias?.pointer ?? 0, y: y,
                   input: l.weightType, output: l.outputType, epilogue: epilogue)
    }
}

/// Uploads bound weights: matrices in chunks of rows (dequantised from the stored type, packed to bf16 when asked)
/// or, for bf16 products of fp8 / ggml-block matrices, as stored (`CompactWeightFormat`); vectors as f32.
final class WeightUploader {
    let context: CUDAContext
    private(set) var uploadedBytes = 0
    /// Elements of the largest matrix kept compact (the bf16 scratch they are expanded into holds that many).
    private(set) var largestCompactElements = 0
    private(set) var compactMatrices: [CompactWeightFormat: Int] = [:]
    /// Elements converted per chunk (16 MB of f32).
    static let chunkElements = 1 << 22

    init(context: CUDAContext) { self.context = context }

    /// The bf16 matrix the compact weights uploaded so far are expanded into before their products (nil: none).
    func makeScratch() throws -> DeviceBuffer? {
        largestCompactElements > 0 ? try context.allocate(bytes: 2 * largestCompactElements) : nil
    }

    func f32(_ tensor: Tensor) throws -> DeviceBuffer {
        let buffer = try context.allocate(bytes: tensor.count * 4)
        try context.copy(toDevice: buffer.pointer, from: UnsafeRawPointer(tensor.data), bytes: tensor.count * 4)
        uploadedBytes += buffer.bytes
        return buffer
    }

    func linear(_ linear: Linear, weightType: DeviceDType, outputType: DeviceDType) throws -> DeviceLinear {
        let matrix = linear.matrix
        let rows = matrix.rows, cols = matrix.cols
        let bias = try upload(bias: linear.bias, as: outputType)
        if let stored = matrix.stored, let format = CompactWeightFormat.of(stored, weightType: weightType) {
            let weight = try context.allocate(bytes: stored.byteCount)
            try context.copy(toDevice: weight.pointer, from: stored.data, bytes: stored.byteCount)
            uploadedBytes += weight.bytes
            largestCompactElements = max(largestCompactElements, rows * cols)
            compactMatrices[format, default: 0] += 1
            return DeviceLinear(weight: weight, bias: bias, inFeatures: cols, outFeatures: rows, weightType: weightType,
                                outputType: outputType, compact: format, scale: stored.scale ?? 1)
        }
        let weight = try context.allocate(bytes: rows * cols * weightType.size)
        let chunkRows = max(1, Self.chunkElements / max(cols, 1))
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: min(rows, chunkRows) * cols)
        defer { scratch.deallocate() }
        let packed = weightType == .bf16 ? UnsafeMutablePointer<UInt16>.allocate(capacity: min(rows, chunkRows) * cols) : nil
        defer { packed?.deallocate() }
        var r0 = 0
        while r0 < rows {
            let n = min(chunkRows, rows - r0)
            let count = n * cols
            let source: UnsafePointer<Float>
            if let f = matrix.float32 {
                source = UnsafePointer(f.data + r0 * cols)
            } else {
                matrix.dequantizeRows(r0..<(r0 + n), into: scratch)
                source = UnsafePointer(scratch)
            }
            let destination = weight.pointer + UInt64(r0 * cols * weightType.size)
            if let packed {
                BFloat16.pack(source, into: packed, count: count)
                try context.copy(toDevice: destination, from: UnsafeRawPointer(packed), bytes: count * 2)
            } else {
                try context.copy(toDevice: destination, from: UnsafeRawPointer(source), bytes: count * 4)
            }
            r0 += n
        }
        uploadedBytes += weight.bytes
        return DeviceLinear(weight: weight, bias: bias, inFeatures: cols, outFeatures: rows, weightType: weightType, outputType: outputType)
    }

    /// A bias [out] in the product's output type (cuBLASLt's bias epilogue takes D's type).
    private func upload(bias b: Tensor?, as outputType: DeviceDType) throws -> DeviceBuffer? {
        guard let b else { return nil }
        let buffer = try context.allocate(bytes: b.count * outputType.size)
        if outputType == .f32 {
            try context.copy(toDevice: buffer.pointer, from: UnsafeRawPointer(b.data), bytes: b.count * 4)
        } else {
            var bits = [UInt16](repeating: 0, count: b.count)
            bits.withUnsafeMutableBufferPointer { BFloat16.pack(b.data, into: $0.baseAddress!, count: b.count) }
            try bits.withUnsafeBytes { try context.copy(toDevice: buffer.pointer, from: $0.baseAddress!, bytes: b.count * 2) }
        }
        uploadedBytes += buffer.bytes
        return buffer
    }
}
