import Foundation
import WanTensor
import WanWeights
import WanModels

/// GPU memory of one job, by part: the pre-flight that refuses a job before anything is uploaded.
public protocol GPUJobMemory: CustomStringConvertible {
    /// The uploaded weights.
    var weights: Int { get }
    /// Two prepared conditionings (prompt and negative prompt).
    var conditioning: Int { get }
    /// The activation workspace of one forward.
    var workspace: Int { get }
    /// cuBLASLt's workspace, the kernel modules, the CUDA context and the pool's rounding.
    var reserve: Int { get }
}

extension GPUJobMemory {
    public var total: Int { weights + conditioning + workspace + reserve }

    public var description: String {
        func g(_ b: Int) -> String { CUDAError.gib(b) }
        return "weights \(g(weights)) + conditioning \(g(conditioning)) + activations \(g(workspace)) + libraries \(g(reserve))"
    }

    /// Throws `CUDAError.outOfMemory` (what is needed, what is free) when the job cannot fit in the GPU's free memory.
    public func check(on context: CUDAContext) throws {
        let (free, total) = try context.memoryInfo()
        if self.total > free { throw CUDAError.outOfMemory(needed: self.total, free: free, total: total) }
    }
}

/// GPU memory of one DiT job, as `CUDADiT` allocates it.
public struct CUDADiTMemory: GPUJobMemory, Equatable {
    /// The uploaded weights.
    public var weights: Int
    /// Two prepared conditionings (prompt and negative prompt: embedded text, every block's keys and values).
    public var conditioning: Int
    /// The activation workspace of one forward (`CUDADiTPlan`).
    public var workspace: Int
    /// cuBLASLt's workspace, the kernel modules, the CUDA context and the pool's rounding.
    public var reserve: Int

    /// Bytes set aside beyond the planned buffers.
    public static let reserveBytes = CUDAMatmul.defaultWorkspaceBytes + (384 << 20)

    /// `tokens`: the DiT's sequence length (latent frames x latent height x latent width / patch volume);
    /// `imageRows`: CLIP tokens of image tasks (257 for i2v, 514 for flf2v, else 0). `weightBytes`: the uploaded
    /// weights when known (by default as `CUDADiTPlan.weightBytes` counts them).
    /// `fp8Products`: the workspace also holds the largest e4m3 copy of a product's input (`fp8InputBytes`).
    public init(config c: WanDiTConfig, precision: CUDAPrecision, tokens: Int, imageRows: Int = 0, weightBytes: Int? = nil,
                fp8Products: Bool = false) {
        let patchLength = c.inDim * c.patchSize.reduce(1, *)
        weights = weightBytes ?? CUDADiTPlan.weightBytes(c, precision: precision)
        conditioning = 2 * CUDADiTPlan.contextBytes(c, precision: precision, imageRows: imageRows)
        let plan = CUDADiTPlan(config: c, tokens: tokens, patchLength: patchLength, precision: precision)
        workspace = plan.workspace.totalBytes + (fp8Products ? plan.fp8InputBytes(c) : 0)
        reserve = Self.reserveBytes
    }

}
