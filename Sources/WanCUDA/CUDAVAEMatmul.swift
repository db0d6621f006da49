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
/// and alignments. Where the heuristic has no algorithm with the bias epilogue, the product runs plain and the
/// `bias_act_f32` kernel adds the bias.
final class VAEMatmul {
    let context: CUDAContext
    let cublas: CublasLt
    let workspace: DeviceBuffer
    /// Adds a bias to contiguous rows (y, bias, rows, cols) where the epilogue is not fused.
    var addBias: ((UInt64, UInt64, Int, Int) throws -> Void)?
    var timings: CUDATimings?

    struct Key: Hashable {
        var m, n, k, ldx, ldw, ldy: Int
        var transposed: Bool
        var hasBias: Bool
        var input: DeviceDType
        /// Alignment in bytes (a power of two up to 256) of W, X and Y.
        var alignW, alignX, alignY: UInt32
    }

    /// The largest power of two up to 256 that divides `address`.
    static func alignment(_ address: UInt64) -> UInt32 { address == 0 ? 256 : UInt32(min(256, 1 << address.trailingZeroBitCount)) }

    final class Plan {
        let cublas: CublasLt
        let desc, a, b, d: OpaquePointer
        var algo = [UInt8](repeating: 0, count: 64)
        var fused = true
        init(cublas: CublasLt, desc: OpaquePointer, a: OpaquePointer, b: OpaquePointer, d: OpaquePointer) {
            self.cublas = cublas; self.desc = desc; self.a = a; self.b = b; self.d = d
        }
        deinit {
            _ = cublas.matmulDescDestroy(desc)
            _ = cublas.matrixLayoutDestroy(a)
            _ = cublas.matrixLayoutDestroy(b)
            _ = cublas.matrixLayoutDestroy(d)
        }
    }

    private var plans: [Key: Plan] = [:]
    var planCount: Int { plans.count }

    init(context: CUDAContext, workspaceBytes: Int = CUDAMatmul.defaultWorkspaceBytes) throws {
        self.context = context
        try context.makeCurrent()
        cublas = try CublasLt()
        workspace = try context.allocate(bytes: workspaceBytes)
    }

    private func check(_ status: cublasStatus_t, _ call: String) throws {
        guard status != 0 else { return }
        throw CUDAError.callFailed(call: call, code: Int(status), message: CublasLtConstants.statusName(status))
    }

    private func makePlan(_ key: Key) throws -> Plan {
        let lt = cublas
        let f32 = CublasLtConstants.CUDA_R_32F, type = key.input.cudaType
        var desc: OpaquePointer? = nil
        try check(lt.matmulDescCreate(&desc, CublasLtConstants.CUBLAS_COMPUTE_32F, f32), "cublasLtMatmulDescCreate")
        var a: OpaquePointer? = nil, b: OpaquePointer? = nil, d: OpaquePointer? = nil
        if key.transposed {
            try check(lt.matrixLayoutCreate(&a, type, UInt64(key.k), UInt64(key.n), Int64(key.ldw)), "cublasLtMatrixLayoutCreate(A)")
        } else {
            try check(lt.matrixLayoutCreate(&a, type, UInt64(key.n), UInt64(key.k), Int64(key.ldw)), "cublasLtMatrixLayoutCreate(A)")
        }
        try check(lt.matrixLayoutCreate(&b, type, UInt64(key.k), UInt64(key.m), Int64(key.ldx)), "cublasLtMatrixLayoutCreate(B)")
        try check(lt.matrixLayoutCreate(&d, f32, UInt64(key.n), UInt64(key.m), Int64(key.ldy)), "cublasLtMatrixLayoutCreate(D)")
        let plan = Plan(cublas: lt, desc: desc!, a: a!, b: b!, d: d!)
        var transA = key.transposed ? CublasLtConstants.CUBLAS_OP_T : CublasLtConstants.CUBLAS_OP_N, transB = CublasLtConstants.CUBLAS_OP_N
        try check(lt.matmulDescSetAttribute(plan.desc, CublasLtConstants.CUBLASLT_MATMUL_DESC_TRANSA, &transA, 4), "cublasLtMatmulDescSetAttribute(TRANSA)")
        try check(lt.matmulDescSetAttribute(plan.desc, CublasLtConstants.CUBLASLT_MATMUL_DESC_TRANSB, &transB, 4), "cublasLtMatmulDescSetAttribute(TRANSB)")
        var preference: OpaquePointer? = nil
        try check(lt.preferenceCreate(&preference), "cublasLtMatmulPreferenceCreate")
        defer { _ = lt.preferenceDestroy(preference!) }
        var maxWorkspace = UInt64(workspace.bytes)
        try check(lt.preferenceSetAttribute(preference!, CublasLtConstants.CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &maxWorkspace, 8),
                  "cublasLtMatmulPreferenceSetAttribute(MAX_WORKSPACE_BYTES)")
        // cublasLtMatmulPreferenceAttributes_t: MIN_ALIGNMENT_A/B/C/D_BYTES = 5/6/7/8 (uint32), 256 when not set.
        for (attribute, value) in [(Int32(5), key.alignW), (6, key.alignX), (7, key.alignY), (8, key.alignY)] where value < 256 {
            var bytes = value
            try check(lt.preferenceSetAttribute(preference!, attribute, &bytes, 4), "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT \(attribute))")
        }
        let wanted = key.hasBias ? CublasLtConstants.CUBLASLT_EPILOGUE_BIAS : CublasLtConstants.CUBLASLT_EPILOGUE_DEFAULT
        for epilogue in wanted == CublasLtConstants.CUBLASLT_EPILOGUE_DEFAULT ? [wanted] : [wanted, CublasLtConstants.CUBLASLT_EPILOGUE_DEFAULT] {
            var code = epilogue
            try check(lt.matmulDescSetAttribute(plan.desc, CublasLtConstants.CUBLASLT_MATMUL_DESC_EPILOGUE, &code, 4), "cublasLtMatmulDescSetAttribute(EPILOGUE)")
            var results = [UInt8](repeating: 0, count: CublasLtConstants.heuristicResultSize)
            var returned: Int32 = 0
            let status = results.withUnsafeMutableBytes { raw in
                lt.algoGetHeuristic(lt.handle, plan.desc, plan.a, plan.b, plan.d, plan.d, preference!, 1, raw.baseAddress!, &returned)
            }
            let state = results.withUnsafeBytes { $0.load(fromByteOffset: CublasLtConstants.heuristicStateOffset, as: Int32.self) }
            if status == 0 && returned > 0 && state == 0 {
                plan.algo = Array(results[0..<64])
                plan.fused = epilogue == wanted
                return plan
            }
            if epilogue == CublasLtConstants.CUBLASLT_EPILOGUE_DEFAULT {
                throw CUDAError.callFailed(call: "cublasLtMatmulAlgoGetHeuristic(\(key.m)x\(key.n)x\(key.k), lds \(key.ldx)/\(key.ldw)/\(key.ldy), \(key.input) -> f32)",
                                           code: Int(status), message: "no algorithm (\(CublasLtConstants.statusName(status)), \(returned) returned)")
            }
        }
        fatalError("unreachable")
    }

    /// `Y[m, n] (+)= X[m, k] · op(W) + bias[n]` (see the type); `bias` 0 for none; X and W of type `input`.
    func run(m: Int, n: Int, k: Int, x: UInt64, ldx: Int, w: UInt64, ldw: Int, transposed: Bool,
             y: UInt64, ldy: Int, bias: UInt64 = 0, accumulate: Bool = false, input: DeviceDType = .f32) throws {
        guard m > 0, n > 0, k > 0 else { return }
        precondition(bias % 16 == 0, "the bias must start a buffer")
        let key = Key(m: m, n: n, k: k, ldx: ldx, ldw: ldw, ldy: ldy, transposed: transposed, hasBias: bias != 0, input: input,
                      alignW: Self.alignment(w), alignX: Self.alignment(x), alignY: Self.alignment(y))
        let plan: Plan
        if let cached = plans[key] { plan = cached } else {
            try context.makeCurrent()
            plan = try makePlan(key)
            plans[key] = plan
        }
        try context.makeCurrent()
        if plan.fused && bias != 0 {
            var pointer = bias
            try check(cublas.matmulDescSetAttribute(plan.desc, CublasLtConstants.CUBLASLT_MATMUL_DESC_BIAS_POINTER, &pointer, 8),
                      "cublasLtMatmulDescSetAttribute(BIAS_POINTER)")
        }
        var alpha: Float = 1, beta: Float = accumulate ? 1 : 0
        var start = 0.0
        if timings != nil { try context.synchronize(); start = CUDATimings.now() }
        defer {
            if let timings, (try? context.synchronize()) != nil {
                timings.add("vae gemm \(input) \(m)x\(n)x\(k)\(accumulate ? " +=" : "")", CUDATimings.now() - start, flops: 2 * Double(m) * Double(n) * Double(k))
            }
        }
        let status = plan.algo.withUnsafeBytes { algo in
            cublas.matmul(cublas.handle, plan.desc, &alpha, w, plan.a, x, plan.b, &beta, y, plan.d, y, plan.d,
                          algo.baseAddress, workspace.pointer, workspace.bytes, nil)
        }
        try check(status, "cublasLtMatmul(\(m)x\(n)x\(k), \(input) -> f32)")
        if !plan.fused && bias != 0 {
            guard let addBias, ldy == n else {
                throw CUDAError.callFailed(call: "cublasLtMatmul", code: -1, message: "no fused bias epilogue for \(m)x\(n)x\(k) (ldy \(ldy))")
            }
            try addBias(y, bias, m, n)
        }
    }
}
