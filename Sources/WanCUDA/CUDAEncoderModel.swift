import Foundation
import WanWeights

/// What the GPU encoders (`CUDAUMT5`, `CUDACLIP`) share: the context, the kernels, cuBLASLt, a memory pool, the bytes
/// of the uploaded weights with the bf16 scratch compact (fp8, ggml-block) matrices are expanded into, and the
/// product of an uploaded `Linear`.
public class CUDAEncoderModel {
    public let precision: CUDAPrecision
    public let context: CUDAContext
    public let ops: CUDAOps
    public let gemm: CUDAMatmul
    public let pool: DeviceMemoryPool
    /// Device bytes of the uploaded weights, the expansion scratch included.
    public let weightBytes: Int
    let dequantScratch: DeviceBuffer?

    /// Called by a subclass once its weights went up through `uploader` (on `context`).
    init(precision: CUDAPrecision, context: CUDAContext, compiler: KernelCompiler?, uploader: WeightUploader) throws {
        self.precision = precision
        self.context = context
        ops = try CUDAOps(context: context, compiler: compiler)
        gemm = try CUDAMatmul(context: context)
        pool = DeviceMemoryPool(context: context)
        dequantScratch = try uploader.makeScratch()
        weightBytes = uploader.uploadedBytes + (dequantScratch?.bytes ?? 0)
        try context.synchronize()
    }

    var act: DeviceDType { precision.activation }

    /// y = x · wᵀ (+ bias) of an uploaded `Linear` (compact weights expanded first).
    func run(_ l: DeviceLinear, rows: Int, x: UInt64, y: UInt64) throws {
        try gemm.linear(l, rows: rows, x: x, y: y, ops: ops, scratch: dequantScratch)
    }

    /// Runs `body` with every kernel and product timed alone (each synchronised: slower than a plain run); the
    /// report's lines.
    public func profile(_ body: () throws -> Void) throws -> [String] {
        let timings = CUDATimings()
        ops.timings = timings
        gemm.timings = timings
        defer { ops.timings = nil; gemm.timings = nil }
        try body()
        return timings.report()
    }
}
