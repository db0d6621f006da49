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

/// The Wan2.1 DiT (official `WanModel`: t2v, i2v, flf2v) on an NVIDIA GPU: the one `DiffusionTransformer` on
/// `CUDAComputeBackend`. Weights are bound by the official names from any `WeightSource` (strictly) and uploaded once:
/// matrices in the activation type (bf16, or f32 for `--precision f32`) except those the official code runs in f32
/// under autocast (patch embedding, time embedding and projection, head); norms, biases of f32 outputs and
/// modulations in f32. Under bf16, matrices stored as fp8 (e4m3fn/e5m2, ComfyUI's per-tensor `scale_weight` kept
/// beside them) or as ggml Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/Q2_K/Q3_K/Q4_K/Q5_K/Q6_K blocks are uploaded as stored and expanded
/// to bf16 on the GPU just before each product, into one scratch matrix sized for the largest of them
/// (`CompactWeightFormat`: the same bf16 values as a host dequantisation, so the same output, in about half the
/// memory for fp8; with `fp8Products`, e4m3 matrices are multiplied as stored by cuBLASLt's fp8 matmul on an e4m3 copy
/// of the activation: `FP8Products`). Products go through cuBLASLt (f32 accumulation), everything else through the
/// kernels of Kernels/*.cu; a forward pass runs on views of one planned workspace (`CUDADiTPlan`).
///
/// Differences from the CPU that do not change the result: the text is embedded at its full official length
/// (text_len rows, padded rows included, no per-key bias); patchify/unpatchify and the sinusoid run on the host.
public typealias CUDADiT = DiffusionTransformer<CUDAComputeBackend>

/// A prepared conditioning on the device (see `PreparedDiTConditioning`); its tensors go back to the pool when it is
/// released.
public typealias CUDADiTContext = PreparedDiTConditioning<CUDAComputeBackend>

extension DiffusionTransformer where B == CUDAComputeBackend {
    /// Binds and uploads the weights. Strict like `WanDiT`: a missing, unexpected or misshapen tensor throws.
    /// `fp8Products`: e4m3-stored matrices run as cuBLASLt fp8 matmuls (`CUDAComputeBackend.fp8Products`).
    public convenience init(config c: WanDiTConfig, weights source: WeightSource, precision: CUDAPrecision = .bf16,
                            context: CUDAContext? = nil, compiler: KernelCompiler? = nil, fp8Products: Bool = false) throws {
        try self.init(config: c, weights: source, backend: try CUDAComputeBackend(precision: precision, context: context, compiler: compiler,
                                                                                  fp8Products: fp8Products))
    }

    /// Loads a DiT from a weight source, inferring the configuration from its shapes; `arguments` (the official
    /// constructor arguments) override what was inferred.
    public convenience init(weights source: WeightSource, arguments: [String: Any]? = nil, precision: CUDAPrecision = .bf16,
                            context: CUDAContext? = nil, fp8Products: Bool = false) throws {
        var config = try WanDiTConfig(inferringFrom: source)
        if let arguments { config.apply(officialArguments: arguments) }
        try self.init(config: config, weights: source, precision: precision, context: context, fp8Products: fp8Products)
    }

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
    /// Whether e4m3-stored matrices run as cuBLASLt fp8 matmuls (see `CUDAComputeBackend.fp8Products`).
    public var fp8Products: Bool { backend.fp8Products }
    /// Hands the activation workspace back to the pool (the weights stay).
    public func releaseWorkspace() { backend.releaseDiTWorkspace() }
}

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
