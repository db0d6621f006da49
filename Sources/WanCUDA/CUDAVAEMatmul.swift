import Foundation

/// The row-major f32 products of the VAE through cuBLASLt, with the strides and the accumulation the convolutions
/// and the attention need (what `CUDAMatmul.linear` does not offer):
/// `Y[m, n] (+)= X[m, k] · op(W) + bias[n]`, X rows `ldx` apart, Y rows `ldy` apart, W stored [n, k] (`transposed`:
/// X·Wᵀ, as a Linear or a conv's weight rows) or [k, n] (X·W), rows `ldw` apart; with `accumulate` the product is
/// added to what Y holds (beta = 1). X and W f32 or bf16 (`input`), Y and the bias f32, always f32 accumulation
/// (CUBLAS_COMPUTE_32F: no TF32).
/// cuBLASLt is column-major: row-major Y [m, n] is column-major D [n, m] = op(A) · B with A = W (k x n, ld ldw,
/// transposed; or n x k, ld ldw, plain), B = X (k x m, ld ldx) and C = D = Y (n x m, ld ldy); the bias (one value per
/// row of D) is Y's per-column bias. The convolutions pass views inside buffers (a weight row's suffix, a chunk of
/// output rows, K and V inside the [q | k | v] rows), so the heuristic is told each matrix's real alignment (cuBLASLt
/// assumes 256 bytes unless told); the bias is always the start of a buffer. Plans are made once per shape, strides
/// and alignments, by `CUDAMatmul` (its `PlanKey` and `product`, shared with the DiT's products). Where the heuristic
/// has no algorithm with the bias epilogue, the product runs plain and the `bias_act_f32` kernel adds the bias.
final class VAEMatmul {
    /// The plans, the cuBLASLt handle and the workspace (this product's own, not the DiT's).
    let matmul: CUDAMatmul
    /// Adds a bias to contiguous rows (y, bias, rows, cols) where the epilogue is not fused.
    var addBias: ((UInt64, UInt64, Int, Int) throws -> Void)?
    var timings: CUDATimings? {
        get { matmul.timings }
        set { matmul.timings = newValue }
    }
    var planCount: Int { matmul.planCount }

    /// The largest power of two up to 256 that divides `address`.
    static func alignment(_ address: UInt64) -> UInt32 { address == 0 ? 256 : UInt32(min(256, 1 << address.trailingZeroBitCount)) }

    init(context: CUDAContext, workspaceBytes: Int = CUDAMatmul.defaultWorkspaceBytes) throws {
        matmul = try CUDAMatmul(context: context, workspaceBytes: workspaceBytes)
    }

    /// `Y[m, n] (+)= X[m, k] · op(W) + bias[n]` (see the type); `bias` 0 for none; X and W of type `input`.
    func run(m: Int, n: Int, k: Int, x: UInt64, ldx: Int, w: UInt64, ldw: Int, transposed: Bool,
             y: UInt64, ldy: Int, bias: UInt64 = 0, accumulate: Bool = false, input: DeviceDType = .f32) throws {
        guard m > 0, n > 0, k > 0 else { return }
        precondition(bias % 16 == 0, "the bias must start a buffer")
        let key = CUDAMatmul.PlanKey(m: m, n: n, k: k, ldx: ldx, ldw: ldw, ldy: ldy, transposed: transposed, input: input, output: .f32,
                                     epilogue: .none, hasBias: bias != 0,
                                     alignW: Self.alignment(w), alignX: Self.alignment(x), alignY: Self.alignment(y))
        let fused = try matmul.product(key, x: x, w: w, y: y, bias: bias, beta: accumulate ? 1 : 0,
                                       timing: "vae gemm \(input) \(m)x\(n)x\(k)\(accumulate ? " +=" : "")")
        if !fused && bias != 0 {
            guard let addBias, ldy == n else {
                throw CUDAError.callFailed(call: "cublasLtMatmul", code: -1, message: "no fused bias epilogue for \(m)x\(n)x\(k) (ldy \(ldy))")
            }
            try addBias(y, bias, m, n)
        }
    }
}
