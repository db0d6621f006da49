import Foundation
import WanTensor
import WanWeights

/// A stored matrix format that stays compact on the GPU (uploaded as its raw bytes, 1 byte per element for fp8,
/// ggml blocks as stored) and is expanded into a bf16 scratch matrix by a kernel of Kernels/dequant.cu just before
/// each product: weight-only quantisation. The expanded matrix is bf16(float(stored) · scale), the same bits the host
/// would upload after `StoredTensor.dequantize` and `BFloat16.from`, so the products (and the model's output) are the
/// same as with the host-dequantised bf16 upload; only the device memory differs (about half for fp8). (Opt-in, e4m3
/// matrices can skip the expansion: `FP8Products`.)
public enum CompactWeightFormat: String, Sendable, CaseIterable, CustomStringConvertible {
    case fp8E4M3 = "F8_E4M3", fp8E5M2 = "F8_E5M2", q8_0 = "Q8_0", q4_0 = "Q4_0", q4_1 = "Q4_1", q5_0 = "Q5_0", q5_1 = "Q5_1"
    case q2_K = "Q2_K", q3_K = "Q3_K", q4_K = "Q4_K", q5_K = "Q5_K", q6_K = "Q6_K"

    public var description: String { rawValue }

    /// How the format is stored in a file: the one table the other properties derive from.
    public var storageType: StorageType {
        switch self {
        case .fp8E4M3: return .dtype(.f8e4m3)
        case .fp8E5M2: return .dtype(.f8e5m2)
        case .q8_0: return .ggml(.q8_0)
        case .q4_0: return .ggml(.q4_0)
        case .q4_1: return .ggml(.q4_1)
        case .q5_0: return .ggml(.q5_0)
        case .q5_1: return .ggml(.q5_1)
        case .q2_K: return .ggml(.q2_K)
        case .q3_K: return .ggml(.q3_K)
        case .q4_K: return .ggml(.q4_K)
        case .q5_K: return .ggml(.q5_K)
        case .q6_K: return .ggml(.q6_K)
        }
    }

    /// The format of a stored type, nil when it is not kept compact (f32, f16, bf16 and the other ggml types, Q8_1,
    /// Q8_K and the IQ/TQ/MXFP4 ones, are dequantised on the host, where they can be, and uploaded in the product's type).
    public init?(_ type: StorageType) {
        guard let format = Self.allCases.first(where: { $0.storageType == type }) else { return nil }
        self = format
    }

    /// The kernel of dequant.cu that expands it into bf16.
    public var kernel: String {
        switch self {
        case .fp8E4M3: return "dequant_fp8_e4m3_bf16"
        case .fp8E5M2: return "dequant_fp8_e5m2_bf16"
        case .q8_0: return "dequant_q8_0_bf16"
        case .q4_0: return "dequant_q4_0_bf16"
        case .q4_1: return "dequant_q4_1_bf16"
        case .q5_0: return "dequant_q5_0_bf16"
        case .q5_1: return "dequant_q5_1_bf16"
        case .q2_K: return "dequant_q2_k_bf16"
        case .q3_K: return "dequant_q3_k_bf16"
        case .q4_K: return "dequant_q4_k_bf16"
        case .q5_K: return "dequant_q5_k_bf16"
        case .q6_K: return "dequant_q6_k_bf16"
        }
    }

    /// Elements per block (1 for fp8).
    public var blockSize: Int {
        if case .ggml(let type) = storageType { return type.blockSize }
        return 1
    }

    /// Bytes per block.
    public var blockBytes: Int {
        if case .ggml(let type) = storageType { return type.typeSize }
        return 1
    }

    /// Byte offsets of the f16 fields (scales, mins) within a block: where random test blocks need finite values.
    public var halfFieldOffsets: [Int] {
        switch self {
        case .fp8E4M3, .fp8E5M2: return []
        case .q8_0, .q4_0, .q5_0: return [0]
        case .q4_1, .q5_1, .q4_K, .q5_K: return [0, 2]
        case .q2_K: return [80, 82]
        case .q3_K: return [108]
        case .q6_K: return [208]
        }
    }

    /// Device bytes of `elements` values (a whole number of blocks), nil when they are not whole blocks.
    public func bytes(elements: Int) -> Int? {
        elements % blockSize == 0 ? elements / blockSize * blockBytes : nil
    }

    /// The format a stored matrix keeps on the GPU when its product runs in `weightType`: bf16 products only (f32
    /// runs and the products the official code keeps in f32 take host-dequantised f32), whole blocks only, and the
    /// stored bytes exactly as many as the format needs.
    public static func of(_ stored: StoredTensor, weightType: DeviceDType) -> CompactWeightFormat? {
        guard weightType == .bf16, let format = CompactWeightFormat(stored.type),
              let bytes = format.bytes(elements: stored.elementCount), bytes == stored.byteCount, stored.elementCount > 0 else { return nil }
        return format
    }

    /// The bf16 bits of `count` stored values at `data` (a whole number of blocks), as the kernel computes them
    /// and as the host upload would hold them: `StoredTensor.dequantize` (times `scale`), then round to nearest
    /// even. The CUDA emulator's twin of dequant.cu and the self-test's reference.
    public static func hostDequantize(_ format: CompactWeightFormat, data: UnsafeRawPointer, count: Int, scale: Float,
                               into out: UnsafeMutablePointer<UInt16>) {
        let stored = StoredTensor(name: "dequant", type: format.storageType, shape: [count], data: data,
                                  byteCount: format.bytes(elements: count) ?? 0, scale: scale, owner: nil)
        let values = UnsafeMutablePointer<Float>.allocate(capacity: max(count, 1))
        defer { values.deallocate() }
        stored.dequantize(elements: 0..<count, into: values)
        BFloat16.pack(values, into: out, count: count)
    }
}

extension CUDAOps {
    /// Expands `count` stored values (a whole number of blocks) at `weights` into bf16 at `out`:
    /// out = bf16(float(stored) · scale).
    public func dequantize(_ format: CompactWeightFormat, out: UInt64, weights: UInt64, scale: Float, count: Int) throws {
        guard format.bytes(elements: count) != nil else {
            throw CUDAError.callFailed(call: format.kernel, code: -1, message: "\(count) values are not whole \(format) blocks of \(format.blockSize)")
        }
        try go(format.kernel, grid: (Self.blocks(count), 1, 1), block: (256, 1, 1),
                   [.pointer(out), .pointer(weights), .float(scale), .int64(Int64(count))])
    }
}
