import Foundation
import WanTensor
import WanWeights
import WanModels

/// The CLIP image tower of Wan I2V / FLF2V (official `VisionTransformer`, `use_31_block=True`) on an NVIDIA GPU: the
/// one `VisionTransformer` model on `CUDAComputeBackend`. The preprocessing and the patch embedding + class token +
/// position embedding run on the host (a few MFLOP), then on the device pre_norm and every block but the last
/// (LayerNorm, the fused to_qkv product, attention with 1/sqrt(head_dim) over each image's tokens through
/// `t5_attention` (bf16: `t5_flash_attention_bf16_d80` for ViT-H's heads of 80) reading q, k, v as column views of it,
/// without a bias table; proj, residual; LayerNorm, fc1, exact
/// GELU, fc2, residual), no post-norm. The residual stream stays f32; products run in the activation type.
public typealias CUDACLIP = VisionTransformer<CUDAComputeBackend>

extension VisionTransformer where B == CUDAComputeBackend {
    public convenience init(config: CLIPVisionConfig, weights source: WeightSource, precision: CUDAPrecision = .bf16,
                            context: CUDAContext? = nil, compiler: KernelCompiler? = nil) throws {
        guard config.activation == "gelu" else {
            throw WeightError.badConfig(source: source.label, detail: "activation '\(config.activation)': the GPU tower runs the exact GELU of ViT-H/14 only; use --device cpu")
        }
        try self.init(config: config, weights: source,
                      backend: try CUDAComputeBackend(precision: precision, context: context, compiler: compiler))
    }

    /// Loads a tower from a weight source (`openCLIPWeights(path:).source`), the configuration inferred as
    /// `CLIPVision` infers it.
    public convenience init(weights source: WeightSource, arguments: [String: Any] = [:], precision: CUDAPrecision = .bf16,
                            context: CUDAContext? = nil, compiler: KernelCompiler? = nil) throws {
        try self.init(config: CLIPVisionConfig.inferred(from: source, arguments: arguments), weights: source, precision: precision,
                      context: context, compiler: compiler)
    }
}

extension VisionTransformer: CUDAEncoderModel where B == CUDAComputeBackend {}
extension T5Encoder: CUDAEncoderModel where B == CUDAComputeBackend {}

/// What the GPU encoders (`CUDAUMT5`, `CUDACLIP`) show of their backend: precision, context, pool, the bytes of
/// the uploaded weights (the bf16 scratch compact matrices are expanded into included), and a profiled run.
public protocol CUDAEncoderModel {
    var backend: CUDAComputeBackend { get }
}

extension CUDAEncoderModel {
    public var precision: CUDAPrecision { backend.precision }
    public var context: CUDAContext { backend.context }
    public var pool: DeviceMemoryPool { backend.pool }
    public var weightBytes: Int { backend.weightBytes }
    /// Runs `body` with every kernel and product timed alone (each synchronised); the report's lines.
    public func profile(_ body: () throws -> Void) throws -> [String] { try backend.profile(body) }
}
