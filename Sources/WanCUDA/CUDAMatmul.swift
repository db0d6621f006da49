import Foundation
import WanModels

/// Element types of device tensors: the backends' `ElementType`.
public typealias DeviceDType = ElementType

extension ElementType {
    /// cudaDataType_t
    var cudaType: Int32 { self == .f32 ? CublasLtConstants.CUDA_R_32F : CublasLtConstants.CUDA_R_16BF }
}

/// What a matrix product does after the sum.
public enum MatmulEpilogue: String, Sendable, Hashable {
    /// y = x · wᵀ (+ bias when one is given)
    case none
    /// y = GELU_tanh(x · wᵀ + bias): the FFN's first layer (nn.GELU(approximate='tanh')).
    case geluTanh
}

/// The row-major products of the DiT through cuBLASLt: `y[m, n] = x[m, k] · w[n, k]ᵀ + bias[n]`, x and w of one type
/// (bf16 or f32), y bf16 or f32, always accumulated in f32 (CUBLAS_COMPUTE_32F: no TF32, so the f32 path is the exact
/// one). cuBLASLt is column-major: the row-major y is the column-major yᵀ [n, m] = w · xᵀ, so A = w (k x n, ld k,
/// transposed), B = x (k x m, ld k), D = y (n x m, ld n), and the bias (one value per row of D) is the per-column bias
/// of y. Descriptors, layouts and the heuristic's algorithm are made once per shape and reused. Where the heuristic
/// offers no algorithm for the fused epilogue (bias, GELU+bias), the product runs plain and `bias_act` finishes it.
/// The plans also take row strides, a W stored [k, n], accumulation into y and the alignments the heuristic is told
/// (`PlanKey`, `product`): the VAE's strided products (`VAEMatmul`) run through them.
public final class CUDAMatmul {
    public let context: CUDAContext
    public let cublas: CublasLt
    /// The workspace cuBLASLt may use (one buffer, reused by every product: they run in order on one stream).
    public let workspace: DeviceBuffer
    var plans: [PlanKey: Plan] = [:]
    /// Runs `bias_act_<type>` on (y, bias, rows, cols, act) for a product whose epilogue is not fused.
    public var unfusedEpilogue: ((DeviceDType, UInt64, UInt64, Int, Int, Int32) throws -> Void)?

    public static let defaultWorkspaceBytes = 32 << 20
    /// Per-shape wall time when set (each product synchronised before and after: for profiling only).
    public var timings: CUDATimings?

    // The fp8 products (`fp8Linear`, CUDAFP8.swift).
    /// The two scales of the running fp8 product (activation, weight) and the partial maxima, made on first use.
    var fp8Scratch: DeviceBuffer?
    /// fp8 plans cuBLASLt had no algorithm for (why), so the bf16 path takes them without asking again.
    var fp8Refused: [PlanKey: String] = [:]
    /// Weight shapes whose fallback note was printed.
    var fp8NotedShapes: Set<String> = []
    /// Products run through cuBLASLt's fp8 matmul so far.
    public internal(set) var fp8ProductCount = 0
    /// Weight shapes ("n x k") that ran through the bf16 dequantisation instead of fp8, with the reason.
    public var fp8Fallbacks: [String] { fp8NotedShapes.sorted() }

    /// One product in row-major terms: `Y[m, n] = X[m, k] · op(W)`, X rows `ldx` apart, Y rows `ldy` apart, W stored
    /// [n, k] (`transposed`: X·Wᵀ) or [k, n] (X·W), rows `ldw` apart. In cuBLASLt's column-major terms A = W (k x n,
    /// transposed; or n x k, plain), B = X (k x m), C = D = Y (n x m).
    struct PlanKey: Hashable {
        var m, n, k: Int
        var ldx, ldw, ldy: Int
        var transposed: Bool
        var input, output: DeviceDType
        var epilogue: MatmulEpilogue
        var hasBias: Bool
        /// Alignment in bytes (a power of two up to 256) the heuristic is told of W, X and Y; 256, what cuBLASLt
        /// assumes, is not set in the preference.
        var alignW: UInt32 = 256, alignX: UInt32 = 256, alignY: UInt32 = 256
        /// W and X are e4m3 (`fp8Linear`): A/B scale pointers set at each call, TN only, f32 outputs without the
        /// fused bias (cuBLASLt's fp8 products take a bf16 bias there).
        var fp8 = false

        /// The DiT's dense `y = x · wᵀ`: rows k, k and n apart, every matrix 256-byte aligned.
        static func dense(m: Int, n: Int, k: Int, input: DeviceDType, output: DeviceDType, epilogue: MatmulEpilogue, hasBias: Bool) -> PlanKey {
            PlanKey(m: m, n: n, k: k, ldx: k, ldw: k, ldy: n, transposed: true, input: input, output: output, epilogue: epilogue, hasBias: hasBias)
        }

        /// Whether the strides are not the dense ones (then the messages name them).
        var strided: Bool { ldx != k || ldw != (transposed ? k : n) || ldy != n }
    }

    final class Plan {
        let cublas: CublasLt
        let desc: OpaquePointer
        let a, b, d: OpaquePointer
        /// cublasLtMatmulAlgo_t, as the heuristic returned it.
        var algo = [UInt8](repeating: 0, count: 64)
        var workspaceBytes = 0
        /// The epilogue in the descriptor; `fused` false: DEFAULT, bias (and GELU) applied by a kernel afterwards.
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

    public init(context: CUDAContext, cublas: CublasLt? = nil, workspaceBytes: Int = CUDAMatmul.defaultWorkspaceBytes) throws {
        self.context = context
        try context.makeCurrent()
        self.cublas = try cublas ?? CublasLt()
        workspace = try context.allocate(bytes: workspaceBytes)
    }

    /// Number of cached plans (shapes seen).
    public var planCount: Int { plans.count }

    private func check(_ status: cublasStatus_t, _ call: String) throws {
        guard status != 0 else { return }
        throw CUDAError.callFailed(call: call, code: Int(status), message: CublasLtConstants.statusName(status))
    }

    /// The cuBLASLt epilogue for an epilogue and whether there is a bias.
    static func epilogueCode(_ epilogue: MatmulEpilogue, hasBias: Bool) -> UInt32 {
        switch (epilogue, hasBias) {
        case (.none, false): return CublasLtConstants.CUBLASLT_EPILOGUE_DEFAULT
        case (.none, true): return CublasLtConstants.CUBLASLT_EPILOGUE_BIAS
        case (.geluTanh, false): return CublasLtConstants.CUBLASLT_EPILOGUE_GELU
        case (.geluTanh, true): return CublasLtConstants.CUBLASLT_EPILOGUE_GELU_BIAS
        }
    }

    private func makePlan(_ key: PlanKey) throws -> Plan {
        let lt = cublas
        var desc: OpaquePointer? = nil
        try check(lt.matmulDescCreate(&desc, CublasLtConstants.CUBLAS_COMPUTE_32F, CublasLtConstants.CUDA_R_32F), "cublasLtMatmulDescCreate")
        var a: OpaquePointer? = nil, b: OpaquePointer? = nil, d: OpaquePointer? = nil
        let (aRows, aCols) = key.transposed ? (key.k, key.n) : (key.n, key.k)
        let inputType = key.fp8 ? CublasLtConstants.CUDA_R_8F_E4M3 : key.input.cudaType
        try check(lt.matrixLayoutCreate(&a, inputType, UInt64(aRows), UInt64(aCols), Int64(key.ldw)), "cublasLtMatrixLayoutCreate(A)")
        try check(lt.matrixLayoutCreate(&b, inputType, UInt64(key.k), UInt64(key.m), Int64(key.ldx)), "cublasLtMatrixLayoutCreate(B)")
        try check(lt.matrixLayoutCreate(&d, key.output.cudaType, UInt64(key.n), UInt64(key.m), Int64(key.ldy)), "cublasLtMatrixLayoutCreate(D)")
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

        // The fused epilogue first; the plain product if the heuristic has nothing for it.
        let wanted = Self.epilogueCode(key.epilogue, hasBias: key.hasBias)
        let fusable = wanted != CublasLtConstants.CUBLASLT_EPILOGUE_DEFAULT && !(key.fp8 && key.output == .f32)
        for epilogue in fusable ? [wanted, CublasLtConstants.CUBLASLT_EPILOGUE_DEFAULT] : [CublasLtConstants.CUBLASLT_EPILOGUE_DEFAULT] {
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
                plan.workspaceBytes = results.withUnsafeBytes { Int($0.load(fromByteOffset: CublasLtConstants.heuristicWorkspaceOffset, as: UInt64.self)) }
                plan.fused = epilogue == wanted
                return plan
            }
            if epilogue == CublasLtConstants.CUBLASLT_EPILOGUE_DEFAULT {
                let lds = key.strided ? ", lds \(key.ldx)/\(key.ldw)/\(key.ldy)" : ""
                throw CUDAError.callFailed(call: "cublasLtMatmulAlgoGetHeuristic(\(key.m)x\(key.n)x\(key.k)\(lds), \(key.fp8 ? "e4m3" : "\(key.input)") -> \(key.output))",
                                           code: Int(status), message: "no algorithm (\(CublasLtConstants.statusName(status)), \(returned) returned)")
            }
        }
        fatalError("unreachable")
    }

    /// Runs `Y (+)= X · op(W) (+ bias)` with the plan of `key` (made on first use, then cached): alpha 1, `beta` 0 or 1
    /// (C = D = Y), the bias pointer set where the plan's epilogue is fused; an fp8 plan's B and A scale pointers are
    /// `scales` and `scales + 4` (device f32). `timing` names the product in `timings`.
    /// Returns whether the epilogue ran inside cuBLASLt (false: the caller finishes the bias and the activation).
    func product(_ key: PlanKey, x: UInt64, w: UInt64, y: UInt64, bias: UInt64, beta: Float, scales: UInt64 = 0,
                 timing: @autoclosure () -> String) throws -> Bool {
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
        if key.fp8 {
            var a = scales + 4, b = scales
            try check(cublas.matmulDescSetAttribute(plan.desc, CublasLtConstants.CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a, 8),
                      "cublasLtMatmulDescSetAttribute(A_SCALE_POINTER)")
            try check(cublas.matmulDescSetAttribute(plan.desc, CublasLtConstants.CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b, 8),
                      "cublasLtMatmulDescSetAttribute(B_SCALE_POINTER)")
        }
        var alpha: Float = 1, beta = beta
        var start = 0.0
        if timings != nil { try context.synchronize(); start = CUDATimings.now() }
        defer {
            if let timings, (try? context.synchronize()) != nil {
                timings.add(timing(), CUDATimings.now() - start, flops: 2 * Double(key.m) * Double(key.n) * Double(key.k))
            }
        }
        let status = plan.algo.withUnsafeBytes { algo in
            cublas.matmul(cublas.handle, plan.desc, &alpha, w, plan.a, x, plan.b, &beta, y, plan.d, y, plan.d,
                          algo.baseAddress, workspace.pointer, workspace.bytes, nil)
        }
        try check(status, "cublasLtMatmul(\(key.m)x\(key.n)x\(key.k), \(key.fp8 ? "e4m3" : "\(key.input)") -> \(key.output))")
        return plan.fused
    }

    /// `y[m, n] = x[m, k] · w[n, k]ᵀ (+ bias[n])`, then the epilogue. `x`, `w`: device addresses of `input` elements;
    /// `y`: of `output` elements; `bias`: `output` elements (cuBLASLt's bias type is D's), or 0 for none.
    public func linear(m: Int, n: Int, k: Int, x: UInt64, w: UInt64, bias: UInt64, y: UInt64,
                       input: DeviceDType, output: DeviceDType, epilogue: MatmulEpilogue = .none) throws {
        guard m > 0, n > 0 else { return }
        let key = PlanKey.dense(m: m, n: n, k: k, input: input, output: output, epilogue: epilogue, hasBias: bias != 0)
        let fused = try product(key, x: x, w: w, y: y, bias: bias, beta: 0,
                                timing: "gemm \(input)->\(output) \(epilogue == .none ? "" : "gelu ")\(m)x\(n)x\(k)")
        if !fused && (bias != 0 || epilogue != .none) {
            guard let finish = unfusedEpilogue else {
                throw CUDAError.callFailed(call: "cublasLtMatmul", code: -1, message: "no fused epilogue and no bias_act kernel")
            }
            try finish(output, y, bias, m, n, epilogue == .geluTanh ? 1 : 0)
        }
    }

    /// Whether the plan of a shape (once used) runs its epilogue inside cuBLASLt.
    public func isFused(m: Int, n: Int, k: Int, input: DeviceDType, output: DeviceDType, epilogue: MatmulEpilogue, hasBias: Bool) -> Bool? {
        plans[PlanKey.dense(m: m, n: n, k: k, input: input, output: output, epilogue: epilogue, hasBias: hasBias)]?.fused
    }
}

/// Wall time per kernel or product shape (see `CUDAOps.timings`, `CUDAMatmul.timings`).
public final class CUDATimings {
    public struct Entry { public var count = 0; public var seconds = 0.0; public var flops = 0.0 }
    public private(set) var entries: [String: Entry] = [:]
    public init() {}

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }

    func add(_ name: String, _ seconds: Double, flops: Double = 0) {
        var e = entries[name, default: Entry()]
        e.count += 1
        e.seconds += seconds
        e.flops += flops
        entries[name] = e
    }

    public func reset() { entries.removeAll() }

    /// Lines "name: count x, seconds (TFLOP/s)", slowest first.
    public func report() -> [String] {
        let total = entries.values.reduce(0) { $0 + $1.seconds }
        return entries.sorted { $0.value.seconds > $1.value.seconds }.map { name, e in
            name.padding(toLength: max(name.count, 44), withPad: " ", startingAt: 0)
                + String(format: " %5d x %8.4f s (%4.1f%%)", e.count, e.seconds, 100 * e.seconds / max(total, 1e-12))
                + (e.flops > 0 ? String(format: " %.1f TFLOP/s", e.flops / max(e.seconds, 1e-12) / 1e12) : "")
        }
    }
}
