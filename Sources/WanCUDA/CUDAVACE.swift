import Foundation
import WanTensor
import WanWeights
import WanModels

/// The VACE DiT (official `VaceWanModel`) on an NVIDIA GPU: the one `VACETransformer` on `CUDAComputeBackend`. The
/// main model and the vace branch are two `CUDADiT`s on one backend (kernels, pool, the one bf16 scratch compact
/// matrices expand into), the branch using the main model's embeddings and head; before_proj / after_proj are bf16
/// (activation type) products with f32 outputs; the vace stream c, x0 and the hints are f32; the vace blocks run on
/// the main forward's workspace between its blocks.
public typealias CUDAVACE = VACETransformer<CUDAComputeBackend>

/// A prepared conditioning of a `CUDAVACE` (text keys and values of the main and the vace blocks, on the device).
public typealias CUDAVACEContext = VACEPreparedConditioning<CUDAComputeBackend>

extension VACETransformer where B == CUDAComputeBackend {
    /// Binds and uploads the weights by the official names. Strict like `WanVACEDiT`.
    /// `fp8Products`: e4m3-stored matrices run as cuBLASLt fp8 matmuls (`CUDAComputeBackend.fp8Products`).
    public convenience init(config c: WanVACEConfig, weights source: WeightSource, precision: CUDAPrecision = .bf16,
                            context: CUDAContext? = nil, compiler: KernelCompiler? = nil, fp8Products: Bool = false) throws {
        try self.init(config: c, weights: source, backend: try CUDAComputeBackend(precision: precision, context: context, compiler: compiler,
                                                                                  fp8Products: fp8Products))
    }

    /// Loads a VACE DiT, inferring the configuration from its shapes; `arguments` (the official constructor
    /// arguments) override what was inferred.
    public convenience init(weights source: WeightSource, arguments: [String: Any]? = nil, precision: CUDAPrecision = .bf16,
                            context: CUDAContext? = nil, compiler: KernelCompiler? = nil) throws {
        try self.init(config: WanVACEConfig(inferringFrom: source, arguments: arguments), weights: source, precision: precision, context: context, compiler: compiler)
    }

    public var precision: CUDAPrecision { backend.precision }
    public var context: CUDAContext { backend.context }
    /// Device bytes of both models' weights (shared tensors once), the projections and the one bf16 scratch.
    public var weightBytes: Int { backend.weightBytes }

    /// The vace forward's own buffers for `tokens` tokens beside the main model's workspace (`CUDADiTPlan`): its
    /// `streamLayout`, as the pre-flight counts them (each from the pool).
    static func workspacePlan(_ c: WanVACEConfig, tokens L: Int) -> WorkspacePlan {
        var plan = WorkspacePlan()
        for r in c.streamLayout(tokens: L) { plan.add(r.name, bytes: r.bytes) }
        return plan
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
    /// `fp8Products`: as `CUDADiTMemory`'s.
    public init(config c: WanVACEConfig, precision: CUDAPrecision, tokens: Int, weights source: WeightSource? = nil, fp8Products: Bool = false) {
        let t = precision.activation.size, d = c.dit.dim
        var (mainConfig, vaceConfig) = (c.dit, c.dit)
        if mainConfig.modelType == "t2v" { mainConfig.modelType = "vace" }
        vaceConfig.modelType = "t2v"; vaceConfig.numLayers = c.vaceLayers.count; vaceConfig.inDim = c.vaceInDim
        var noBlocks = vaceConfig
        noBlocks.numLayers = 0
        let views = source.map(WanVACEDiT.branchWeights)
        let main = CUDADiTPlan.weightBytesAndScratch(mainConfig, precision: precision, compactBytes: CUDADiTPlan.compactBytes(in: views?.main))
        // The vace branch uploads its blocks and vace_patch_embedding (f32); its compact matrices are no larger than
        // the main model's, whose scratch they share.
        let vaceBlocks = CUDADiTPlan.weightBytesAndScratch(vaceConfig, precision: precision, compactBytes: CUDADiTPlan.compactBytes(in: views?.vace)).uploaded
            - CUDADiTPlan.weightBytesAndScratch(noBlocks, precision: precision, compactBytes: { _ in nil }).uploaded
        let patchEmbedding = 4 * d * (c.vaceInDim * c.dit.patchSize.reduce(1, *) + 1)
        let projections = (c.vaceLayers.filter { $0 == 0 }.count + c.vaceLayers.count) * (t * d * d + 4 * d)
        weights = main.uploaded + main.scratch + vaceBlocks + patchEmbedding + projections
        conditioning = 2 * (CUDADiTPlan.contextBytes(mainConfig, precision: precision) + CUDADiTPlan.contextBytes(vaceConfig, precision: precision))
        let patchLength = c.dit.inDim * c.dit.patchSize.reduce(1, *)
        let plan = CUDADiTPlan(config: mainConfig, tokens: tokens, patchLength: patchLength, precision: precision)
        workspace = plan.workspace.totalBytes + CUDAVACE.workspacePlan(c, tokens: tokens).totalBytes
            + (fp8Products ? plan.fp8InputBytes(mainConfig) : 0)
        reserve = CUDADiTMemory.reserveBytes
    }

}
