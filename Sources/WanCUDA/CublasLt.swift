import Foundation

// cuBLASLt (libcublasLt.so.13, else .so.12), declared as C function-pointer types: the handle and the matmul entry
// points the GEMM path will use (bf16 in, f32 accumulate; fp8 e4m3 with scales on Hopper). Types as in cublasLt.h:
// cublasStatus_t, cublasComputeType_t, cudaDataType_t and the attribute enums are int; handles and descriptors are
// pointers.
typealias cublasStatus_t = Int32

typealias cublasLtCreate_t = @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> cublasStatus_t
typealias cublasLtDestroy_t = @convention(c) (OpaquePointer) -> cublasStatus_t
typealias cublasLtGetVersion_t = @convention(c) () -> Int
/// (descriptor out, cublasComputeType_t, cudaDataType_t scale type)
typealias cublasLtMatmulDescCreate_t = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, Int32, Int32) -> cublasStatus_t
typealias cublasLtMatmulDescDestroy_t = @convention(c) (OpaquePointer) -> cublasStatus_t
/// (descriptor, cublasLtMatmulDescAttributes_t, value, size)
typealias cublasLtMatmulDescSetAttribute_t = @convention(c) (OpaquePointer, Int32, UnsafeRawPointer, Int) -> cublasStatus_t
/// (layout out, cudaDataType_t, rows, cols, leading dimension)
typealias cublasLtMatrixLayoutCreate_t = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, Int32, UInt64, UInt64, Int64) -> cublasStatus_t
typealias cublasLtMatrixLayoutDestroy_t = @convention(c) (OpaquePointer) -> cublasStatus_t
/// (handle, desc, alpha, A, Adesc, B, Bdesc, beta, C, Cdesc, D, Ddesc, algo (nil: heuristic), workspace, workspace size, stream)
typealias cublasLtMatmul_t = @convention(c) (
    OpaquePointer, OpaquePointer, UnsafeRawPointer, UInt64, OpaquePointer, UInt64, OpaquePointer,
    UnsafeRawPointer, UInt64, OpaquePointer, UInt64, OpaquePointer, UnsafeRawPointer?, UInt64, Int, OpaquePointer?) -> cublasStatus_t

typealias cublasLtMatmulPreferenceCreate_t = @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> cublasStatus_t
typealias cublasLtMatmulPreferenceDestroy_t = @convention(c) (OpaquePointer) -> cublasStatus_t
/// (preference, cublasLtMatmulPreferenceAttributes_t, value, size)
typealias cublasLtMatmulPreferenceSetAttribute_t = @convention(c) (OpaquePointer, Int32, UnsafeRawPointer, Int) -> cublasStatus_t
/// (handle, desc, Adesc, Bdesc, Cdesc, Ddesc, preference, requested count, results (cublasLtMatmulHeuristicResult_t[]),
/// returned count)
typealias cublasLtMatmulAlgoGetHeuristic_t = @convention(c) (
    OpaquePointer, OpaquePointer, OpaquePointer, OpaquePointer, OpaquePointer, OpaquePointer, OpaquePointer, Int32,
    UnsafeMutableRawPointer, UnsafeMutablePointer<Int32>) -> cublasStatus_t

/// The constants of cublasLt.h / library_types.h the GEMM path needs.
public enum CublasLtConstants {
    public static let CUDA_R_32F: Int32 = 0
    public static let CUDA_R_16F: Int32 = 2
    public static let CUDA_R_16BF: Int32 = 14
    public static let CUDA_R_8F_E4M3: Int32 = 28
    public static let CUBLAS_COMPUTE_32F: Int32 = 68
    public static let CUBLAS_COMPUTE_32F_FAST_TF32: Int32 = 77
    public static let CUBLASLT_MATMUL_DESC_TRANSA: Int32 = 3
    public static let CUBLASLT_MATMUL_DESC_TRANSB: Int32 = 4
    public static let CUBLASLT_MATMUL_DESC_EPILOGUE: Int32 = 7
    public static let CUBLASLT_MATMUL_DESC_BIAS_POINTER: Int32 = 8
    /// Device pointers to the f32 scales of A and B (fp8 inputs): D = alpha · scaleA · scaleB · op(A) op(B) + ...
    public static let CUBLASLT_MATMUL_DESC_A_SCALE_POINTER: Int32 = 17
    public static let CUBLASLT_MATMUL_DESC_B_SCALE_POINTER: Int32 = 18
    /// cudaDataType_t of the bias vector (default: the type of D).
    public static let CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: Int32 = 26
    public static let CUBLAS_OP_N: Int32 = 0
    public static let CUBLAS_OP_T: Int32 = 1
    // cublasLtEpilogue_t
    public static let CUBLASLT_EPILOGUE_DEFAULT: UInt32 = 1
    public static let CUBLASLT_EPILOGUE_BIAS: UInt32 = 4
    public static let CUBLASLT_EPILOGUE_GELU: UInt32 = 32
    /// GELU | BIAS: bias, then GELU (cuBLASLt's GELU is the tanh approximation).
    public static let CUBLASLT_EPILOGUE_GELU_BIAS: UInt32 = 36
    // cublasLtMatmulPreferenceAttributes_t
    public static let CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: Int32 = 1
    /// sizeof(cublasLtMatmulHeuristicResult_t): cublasLtMatmulAlgo_t (8 x uint64), size_t workspaceSize,
    /// cublasStatus_t state, float wavesCount, int reserved[4].
    public static let heuristicResultSize = 96
    /// Offsets inside cublasLtMatmulHeuristicResult_t.
    public static let heuristicWorkspaceOffset = 64
    public static let heuristicStateOffset = 72
    // cublasStatus_t values named in messages
    public static func statusName(_ status: Int32) -> String {
        switch status {
        case 0: return "CUBLAS_STATUS_SUCCESS"
        case 1: return "CUBLAS_STATUS_NOT_INITIALIZED"
        case 3: return "CUBLAS_STATUS_ALLOC_FAILED"
        case 7: return "CUBLAS_STATUS_INVALID_VALUE"
        case 8: return "CUBLAS_STATUS_ARCH_MISMATCH"
        case 11: return "CUBLAS_STATUS_MAPPING_ERROR"
        case 13: return "CUBLAS_STATUS_EXECUTION_FAILED"
        case 14: return "CUBLAS_STATUS_INTERNAL_ERROR"
        case 15: return "CUBLAS_STATUS_NOT_SUPPORTED"
        default: return "cublasStatus \(status)"
        }
    }
}

/// cuBLASLt, loaded once per process, with one handle. The matmul entry points are resolved up front so a library
/// that lacks one fails here, by name, rather than at the first product.
public final class CublasLt {
    public let path: String
    /// cublasLtGetVersion: e.g. 130001 for 13.0.1.
    public let version: Int
    let library: DynamicLibrary?
    let handle: OpaquePointer
    private let destroy: cublasLtDestroy_t
    let matmulDescCreate: cublasLtMatmulDescCreate_t
    let matmulDescDestroy: cublasLtMatmulDescDestroy_t
    let matmulDescSetAttribute: cublasLtMatmulDescSetAttribute_t
    let matrixLayoutCreate: cublasLtMatrixLayoutCreate_t
    let matrixLayoutDestroy: cublasLtMatrixLayoutDestroy_t
    let matmul: cublasLtMatmul_t
    let preferenceCreate: cublasLtMatmulPreferenceCreate_t
    let preferenceDestroy: cublasLtMatmulPreferenceDestroy_t
    let preferenceSetAttribute: cublasLtMatmulPreferenceSetAttribute_t
    let algoGetHeuristic: cublasLtMatmulAlgoGetHeuristic_t

    /// Opens the library alone (no GPU needed): $WANKIT_CUBLASLT, libcublasLt.so.13, .so.12, then toolkit folders.
    static func open() -> DynamicLibrary? {
        let candidates = CUDALibraryPaths.candidates(for: ["libcublasLt.so.13", "libcublasLt.so.12"],
                                                     override: ProcessInfo.processInfo.environment["WANKIT_CUBLASLT"])
        return DynamicLibrary.open(candidates).library
    }

    static let notFound = CUDAError.libraryNotFound(
        library: "libcublasLt.so.13 / libcublasLt.so.12 (cuBLASLt)", why: "the CUDA matrix-product library is not installed",
        fix: "install libcublas (apt: libcublas-13-0; pip: nvidia-cublas) or set WANKIT_CUBLASLT to its path, or run on the CPU with --device cpu")

    /// Whether cuBLASLt can be opened (the emulator's stands in while it is installed).
    static var isAvailable: Bool { CUDAEmulator.activeCublasResolver() != nil || open() != nil }

    /// The library's file (where it was found) without creating a handle, or nil when it is absent.
    public static func locate() -> String? {
        guard let library = open() else { return nil }
        return library.loadedDirectory(probeSymbol: "cublasLtCreate").map { "\($0)/\((library.path as NSString).lastPathComponent)" } ?? library.path
    }

    /// Opens cuBLASLt and creates a handle (this needs a current CUDA context: create a `CUDAContext` first). While
    /// the CPU emulator is installed, its cuBLASLt stands in.
    public convenience init() throws {
        if let resolve = CUDAEmulator.activeCublasResolver() {
            try self.init(library: nil, path: "CUDAEmulator", resolve: resolve)
            return
        }
        guard let library = CublasLt.open() else { throw CublasLt.notFound }
        let path = library.loadedDirectory(probeSymbol: "cublasLtCreate").map { "\($0)/\((library.path as NSString).lastPathComponent)" } ?? library.path
        try self.init(library: library, path: path) { library.symbol($0, as: UnsafeMutableRawPointer.self) }
    }

    init(library: DynamicLibrary?, path: String, resolve: (String) -> UnsafeMutableRawPointer?) throws {
        self.library = library
        func sym<T>(_ name: String, _ type: T.Type) throws -> T {
            guard let f = resolve(name) else { throw CUDAError.missingSymbol(library: path, symbol: name) }
            return unsafeBitCast(f, to: type)
        }
        let create = try sym("cublasLtCreate", cublasLtCreate_t.self)
        destroy = try sym("cublasLtDestroy", cublasLtDestroy_t.self)
        let getVersion = try sym("cublasLtGetVersion", cublasLtGetVersion_t.self)
        matmulDescCreate = try sym("cublasLtMatmulDescCreate", cublasLtMatmulDescCreate_t.self)
        matmulDescDestroy = try sym("cublasLtMatmulDescDestroy", cublasLtMatmulDescDestroy_t.self)
        matmulDescSetAttribute = try sym("cublasLtMatmulDescSetAttribute", cublasLtMatmulDescSetAttribute_t.self)
        matrixLayoutCreate = try sym("cublasLtMatrixLayoutCreate", cublasLtMatrixLayoutCreate_t.self)
        matrixLayoutDestroy = try sym("cublasLtMatrixLayoutDestroy", cublasLtMatrixLayoutDestroy_t.self)
        matmul = try sym("cublasLtMatmul", cublasLtMatmul_t.self)
        preferenceCreate = try sym("cublasLtMatmulPreferenceCreate", cublasLtMatmulPreferenceCreate_t.self)
        preferenceDestroy = try sym("cublasLtMatmulPreferenceDestroy", cublasLtMatmulPreferenceDestroy_t.self)
        preferenceSetAttribute = try sym("cublasLtMatmulPreferenceSetAttribute", cublasLtMatmulPreferenceSetAttribute_t.self)
        algoGetHeuristic = try sym("cublasLtMatmulAlgoGetHeuristic", cublasLtMatmulAlgoGetHeuristic_t.self)
        version = getVersion()
        self.path = path
        var handle: OpaquePointer? = nil
        let status = create(&handle)
        guard status == 0, let handle else {
            throw CUDAError.callFailed(call: "cublasLtCreate", code: Int(status),
                                       message: "cuBLASLt could not start (status \(status)); it needs a CUDA context and a driver as new as the library")
        }
        self.handle = handle
    }

    deinit { _ = destroy(handle) }
}
