import Foundation

// cuDNN 9 (libcudnn.so.9), its backend ("graph") API only, declared as C function-pointer types. Types as in
// cudnn_graph.h: cudnnStatus_t and every enum (descriptor type, attribute name, attribute type, data type, pointwise
// mode, reduction operator, heuristic mode) are int; handles and descriptors are pointers. The enum values below are
// cuDNN 9's ABI (the same in every 9.x release).
typealias cudnnStatus_t = Int32

typealias cudnnGetVersion_t = @convention(c) () -> Int
typealias cudnnGetErrorString_t = @convention(c) (cudnnStatus_t) -> UnsafePointer<CChar>?
/// (buffer, capacity): the last error's text on this thread (cuDNN 9).
typealias cudnnGetLastErrorString_t = @convention(c) (UnsafeMutablePointer<CChar>, Int) -> Void
typealias cudnnCreate_t = @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> cudnnStatus_t
typealias cudnnDestroy_t = @convention(c) (OpaquePointer) -> cudnnStatus_t
/// (handle, cudaStream_t: nil is the default stream)
typealias cudnnSetStream_t = @convention(c) (OpaquePointer, OpaquePointer?) -> cudnnStatus_t
/// (cudnnBackendDescriptorType_t, descriptor out)
typealias cudnnBackendCreateDescriptor_t = @convention(c) (Int32, UnsafeMutablePointer<OpaquePointer?>) -> cudnnStatus_t
typealias cudnnBackendDestroyDescriptor_t = @convention(c) (OpaquePointer) -> cudnnStatus_t
typealias cudnnBackendFinalize_t = @convention(c) (OpaquePointer) -> cudnnStatus_t
/// (descriptor, cudnnBackendAttributeName_t, cudnnBackendAttributeType_t, element count, elements)
typealias cudnnBackendSetAttribute_t = @convention(c) (OpaquePointer, Int32, Int32, Int64, UnsafeRawPointer) -> cudnnStatus_t
/// (descriptor, name, type, requested count, returned count, elements)
typealias cudnnBackendGetAttribute_t = @convention(c) (OpaquePointer, Int32, Int32, Int64, UnsafeMutablePointer<Int64>?, UnsafeMutableRawPointer?) -> cudnnStatus_t
/// (handle, execution plan, variant pack)
typealias cudnnBackendExecute_t = @convention(c) (OpaquePointer, OpaquePointer, OpaquePointer) -> cudnnStatus_t

/// The constants of cudnn_graph.h the attention graph uses.
enum CuDNNConstants {
    // cudnnBackendDescriptorType_t
    static let POINTWISE_DESCRIPTOR: Int32 = 0
    static let ENGINECFG_DESCRIPTOR: Int32 = 3
    static let ENGINEHEUR_DESCRIPTOR: Int32 = 4
    static let EXECUTION_PLAN_DESCRIPTOR: Int32 = 5
    static let OPERATION_POINTWISE_DESCRIPTOR: Int32 = 13
    static let OPERATIONGRAPH_DESCRIPTOR: Int32 = 15
    static let VARIANT_PACK_DESCRIPTOR: Int32 = 16
    static let TENSOR_DESCRIPTOR: Int32 = 17
    static let MATMUL_DESCRIPTOR: Int32 = 18
    static let OPERATION_MATMUL_DESCRIPTOR: Int32 = 19
    static let REDUCTION_DESCRIPTOR: Int32 = 21
    static let OPERATION_REDUCTION_DESCRIPTOR: Int32 = 22
    static func descriptorName(_ type: Int32) -> String {
        switch type {
        case 0: return "CUDNN_BACKEND_POINTWISE_DESCRIPTOR"
        case 3: return "CUDNN_BACKEND_ENGINECFG_DESCRIPTOR"
        case 4: return "CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR"
        case 5: return "CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR"
        case 13: return "CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR"
        case 15: return "CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR"
        case 16: return "CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR"
        case 17: return "CUDNN_BACKEND_TENSOR_DESCRIPTOR"
        case 18: return "CUDNN_BACKEND_MATMUL_DESCRIPTOR"
        case 19: return "CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR"
        case 21: return "CUDNN_BACKEND_REDUCTION_DESCRIPTOR"
        case 22: return "CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR"
        default: return "descriptor type \(type)"
        }
    }
    // cudnnBackendAttributeName_t
    static let ATTR_POINTWISE_MODE: Int32 = 0
    static let ATTR_POINTWISE_MATH_PREC: Int32 = 1
    static let ATTR_POINTWISE_AXIS: Int32 = 9
    static let ATTR_ENGINEHEUR_MODE: Int32 = 200
    static let ATTR_ENGINEHEUR_OPERATION_GRAPH: Int32 = 201
    static let ATTR_ENGINEHEUR_RESULTS: Int32 = 202
    static let ATTR_EXECUTION_PLAN_HANDLE: Int32 = 400
    static let ATTR_EXECUTION_PLAN_ENGINE_CONFIG: Int32 = 401
    static let ATTR_EXECUTION_PLAN_WORKSPACE_SIZE: Int32 = 402
    static let ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR: Int32 = 750
    static let ATTR_OPERATION_POINTWISE_XDESC: Int32 = 751
    static let ATTR_OPERATION_POINTWISE_BDESC: Int32 = 752
    static let ATTR_OPERATION_POINTWISE_YDESC: Int32 = 753
    static let ATTR_OPERATION_POINTWISE_TDESC: Int32 = 758
    static let ATTR_OPERATIONGRAPH_HANDLE: Int32 = 800
    static let ATTR_OPERATIONGRAPH_OPS: Int32 = 801
    static let ATTR_TENSOR_BYTE_ALIGNMENT: Int32 = 900
    static let ATTR_TENSOR_DATA_TYPE: Int32 = 901
    static let ATTR_TENSOR_DIMENSIONS: Int32 = 902
    static let ATTR_TENSOR_STRIDES: Int32 = 903
    static let ATTR_TENSOR_UNIQUE_ID: Int32 = 906
    static let ATTR_TENSOR_IS_VIRTUAL: Int32 = 907
    static let ATTR_TENSOR_IS_BY_VALUE: Int32 = 908
    static let ATTR_VARIANT_PACK_UNIQUE_IDS: Int32 = 1000
    static let ATTR_VARIANT_PACK_DATA_POINTERS: Int32 = 1001
    static let ATTR_VARIANT_PACK_WORKSPACE: Int32 = 1003
    static let ATTR_MATMUL_COMP_TYPE: Int32 = 1500
    static let ATTR_MATMUL_PADDING_VALUE: Int32 = 1503
    static let ATTR_OPERATION_MATMUL_ADESC: Int32 = 1520
    static let ATTR_OPERATION_MATMUL_BDESC: Int32 = 1521
    static let ATTR_OPERATION_MATMUL_CDESC: Int32 = 1522
    static let ATTR_OPERATION_MATMUL_DESC: Int32 = 1523
    static let ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC: Int32 = 1525
    static let ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC: Int32 = 1526
    static let ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC: Int32 = 1527
    static let ATTR_REDUCTION_OPERATOR: Int32 = 1600
    static let ATTR_REDUCTION_COMP_TYPE: Int32 = 1601
    static let ATTR_OPERATION_REDUCTION_XDESC: Int32 = 1610
    static let ATTR_OPERATION_REDUCTION_YDESC: Int32 = 1611
    static let ATTR_OPERATION_REDUCTION_DESC: Int32 = 1612
    // cudnnBackendAttributeType_t
    static let TYPE_HANDLE: Int32 = 0
    static let TYPE_DATA_TYPE: Int32 = 1
    static let TYPE_BOOLEAN: Int32 = 2
    static let TYPE_INT64: Int32 = 3
    static let TYPE_DOUBLE: Int32 = 5
    static let TYPE_VOID_PTR: Int32 = 6
    static let TYPE_HEUR_MODE: Int32 = 8
    static let TYPE_POINTWISE_MODE: Int32 = 14
    static let TYPE_BACKEND_DESCRIPTOR: Int32 = 15
    static let TYPE_REDUCTION_OPERATOR_TYPE: Int32 = 18
    // cudnnDataType_t
    static let DATA_FLOAT: Int32 = 0
    static let DATA_INT32: Int32 = 4
    static let DATA_BFLOAT16: Int32 = 9
    static let DATA_BOOLEAN: Int32 = 11
    // cudnnPointwiseMode_t
    static let POINTWISE_ADD: Int32 = 0
    static let POINTWISE_MUL: Int32 = 1
    static let POINTWISE_DIV: Int32 = 6
    static let POINTWISE_SUB: Int32 = 9
    static let POINTWISE_EXP: Int32 = 13
    static let POINTWISE_LOG: Int32 = 15
    static let POINTWISE_CMP_LT: Int32 = 304
    static let POINTWISE_LOGICAL_AND: Int32 = 400
    static let POINTWISE_GEN_INDEX: Int32 = 501
    static let POINTWISE_BINARY_SELECT: Int32 = 601
    // cudnnReduceTensorOp_t
    static let REDUCE_ADD: Int32 = 0
    static let REDUCE_MAX: Int32 = 3
    // cudnnBackendHeurMode_t
    static let HEUR_MODE_FALLBACK: Int32 = 2
    static let HEUR_MODE_A: Int32 = 3
}

/// cuDNN 9, loaded once per process (no GPU needed to load it or to build and finalize tensor and operation
/// descriptors; a handle, the operation graph and execution plans need one). Every entry point is resolved up front.
public final class CuDNN {
    /// The library file it was loaded from.
    public let path: String
    /// cudnnGetVersion: e.g. 92800 for 9.28.0.
    public let version: Int
    let library: DynamicLibrary
    let getErrorString: cudnnGetErrorString_t
    let getLastErrorString: cudnnGetLastErrorString_t
    let create: cudnnCreate_t
    let destroy: cudnnDestroy_t
    let setStream: cudnnSetStream_t
    let createDescriptor: cudnnBackendCreateDescriptor_t
    let destroyDescriptor: cudnnBackendDestroyDescriptor_t
    let finalize: cudnnBackendFinalize_t
    let setAttribute: cudnnBackendSetAttribute_t
    let getAttribute: cudnnBackendGetAttribute_t
    let execute: cudnnBackendExecute_t

    /// "9.28.0"
    public var versionString: String { "\(version / 10000).\((version % 10000) / 100).\(version % 100)" }

    /// Folders that may hold a pip wheel's cuDNN (nvidia-cudnn-cu12/cu13: <site-packages>/nvidia/cudnn/lib) or a
    /// PyTorch that bundles one (<site-packages>/torch/lib), found by listing the usual Python prefixes (no Python
    /// is run): /usr/lib, /usr/local/lib, ~/.local/lib, $VIRTUAL_ENV, $CONDA_PREFIX, /opt/conda, pyenv versions, and
    /// $PYTHONPATH.
    static func sitePackagesDirectories() -> [String] {
        let env = ProcessInfo.processInfo.environment
        let fm = FileManager.default
        var prefixes = ["/usr/lib", "/usr/local/lib", "/opt/conda/lib"]
        if let home = env["HOME"] { prefixes.append("\(home)/.local/lib") }
        for key in ["VIRTUAL_ENV", "CONDA_PREFIX"] { if let v = env[key], !v.isEmpty { prefixes.append("\(v)/lib") } }
        for root in [env["PYENV_ROOT"], env["HOME"].map { "\($0)/.pyenv" }].compactMap({ $0 }) {
            for version in (try? fm.contentsOfDirectory(atPath: "\(root)/versions")) ?? [] { prefixes.append("\(root)/versions/\(version)/lib") }
        }
        var sites: [String] = []
        for prefix in prefixes {
            let pythons = ((try? fm.contentsOfDirectory(atPath: prefix)) ?? []).filter { $0.hasPrefix("python3") }.sorted { $0.compare($1, options: .numeric) == .orderedDescending }
            for python in pythons {
                for sub in ["site-packages", "dist-packages"] { sites.append("\(prefix)/\(python)/\(sub)") }
            }
        }
        if let pythonPath = env["PYTHONPATH"] { sites += pythonPath.split(separator: ":").map(String.init) }
        var directories: [String] = []
        for site in sites {
            for sub in ["nvidia/cudnn/lib", "torch/lib"] {
                let directory = "\(site)/\(sub)"
                if fm.fileExists(atPath: "\(directory)/libcudnn.so.9") && !directories.contains(directory) { directories.append(directory) }
            }
        }
        return directories
    }

    /// Where libcudnn.so.9 is looked for, in order: $WANKIT_CUDNN (the file, or its folder), the loader's search,
    /// the CUDA toolkit folders, /usr/lib/x86_64-linux-gnu and /usr/lib/aarch64-linux-gnu (Debian's cudnn9 packages),
    /// then Python site-packages.
    static func candidates() -> [String] {
        var override = ProcessInfo.processInfo.environment["WANKIT_CUDNN"]
        if let o = override, !o.isEmpty {
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: o, isDirectory: &isDirectory), isDirectory.boolValue { override = o + "/libcudnn.so.9" }
        }
        var list = CUDALibraryPaths.candidates(for: ["libcudnn.so.9"], override: override)
        list += ["/usr/lib/x86_64-linux-gnu/libcudnn.so.9", "/usr/lib/aarch64-linux-gnu/libcudnn.so.9"]
        list += sitePackagesDirectories().map { "\($0)/libcudnn.so.9" }
        return list
    }

    static let notFoundFix = "install cuDNN 9 (pip: nvidia-cudnn-cu12 or -cu13; apt: cudnn9-cuda-12) or set WANKIT_CUDNN to libcudnn.so.9; --attention kernel uses WanKit's own attention kernel"

    /// The library's file without loading its entry points, or nil when none is found.
    public static func locate() -> String? {
        guard let library = DynamicLibrary.open(candidates()).library else { return nil }
        return library.loadedDirectory(probeSymbol: "cudnnGetVersion").map { "\($0)/libcudnn.so.9" } ?? library.path
    }

    nonisolated(unsafe) private static var loaded: Result<CuDNN, CUDAError>?
    private static let lock = NSLock()

    /// cuDNN, loaded on the first call (the outcome, success or error, is kept for the process). The CPU emulator
    /// has no cuDNN: while it is installed this throws.
    public static func load() throws -> CuDNN {
        if CUDAEmulator.isActive {
            throw CUDAError.libraryNotFound(library: "libcudnn.so.9 (cuDNN)", why: "the CPU emulator (WANKIT_CUDA_EMULATOR) has no cuDNN",
                                            fix: "run on a GPU, or use --attention kernel")
        }
        lock.lock(); defer { lock.unlock() }
        if let loaded { return try loaded.get() }
        let result: Result<CuDNN, CUDAError>
        let opened = DynamicLibrary.open(candidates())
        if let library = opened.library {
            do { result = .success(try CuDNN(library: library)) } catch let error as CUDAError { result = .failure(error) } catch {
                result = .failure(.callFailed(call: "dlopen(libcudnn.so.9)", code: -1, message: "\(error)"))
            }
        } else {
            result = .failure(.libraryNotFound(library: "libcudnn.so.9 (cuDNN 9)",
                                               why: "cuDNN's fused attention is not installed (\(opened.lastError))", fix: notFoundFix))
        }
        loaded = result
        return try result.get()
    }

    init(library: DynamicLibrary) throws {
        self.library = library
        let path = library.loadedDirectory(probeSymbol: "cudnnGetVersion").map { "\($0)/\((library.path as NSString).lastPathComponent)" } ?? library.path
        func sym<T>(_ name: String, _ type: T.Type) throws -> T {
            guard let f = library.symbol(name, as: type) else { throw CUDAError.missingSymbol(library: path, symbol: name) }
            return f
        }
        let getVersion = try sym("cudnnGetVersion", cudnnGetVersion_t.self)
        getErrorString = try sym("cudnnGetErrorString", cudnnGetErrorString_t.self)
        getLastErrorString = try sym("cudnnGetLastErrorString", cudnnGetLastErrorString_t.self)
        create = try sym("cudnnCreate", cudnnCreate_t.self)
        destroy = try sym("cudnnDestroy", cudnnDestroy_t.self)
        setStream = try sym("cudnnSetStream", cudnnSetStream_t.self)
        createDescriptor = try sym("cudnnBackendCreateDescriptor", cudnnBackendCreateDescriptor_t.self)
        destroyDescriptor = try sym("cudnnBackendDestroyDescriptor", cudnnBackendDestroyDescriptor_t.self)
        finalize = try sym("cudnnBackendFinalize", cudnnBackendFinalize_t.self)
        setAttribute = try sym("cudnnBackendSetAttribute", cudnnBackendSetAttribute_t.self)
        getAttribute = try sym("cudnnBackendGetAttribute", cudnnBackendGetAttribute_t.self)
        execute = try sym("cudnnBackendExecute", cudnnBackendExecute_t.self)
        version = getVersion()
        self.path = path
        guard version >= 90000 && version < 100000 else {
            throw CUDAError.callFailed(call: "cudnnGetVersion", code: version, message: "\(path) is cuDNN \(version), not 9.x; \(CuDNN.notFoundFix)")
        }
    }

    /// The status's name and cuDNN's last message (e.g. "CUDNN_STATUS_NOT_SUPPORTED: ...").
    func describe(_ status: cudnnStatus_t) -> String {
        let name = getErrorString(status).map { String(cString: $0) } ?? "cudnnStatus \(status)"
        var buffer = [CChar](repeating: 0, count: 1024)
        getLastErrorString(&buffer, buffer.count)
        let last = String(cString: buffer).trimmingCharacters(in: .whitespacesAndNewlines)
        return last.isEmpty ? name : "\(name): \(last)"
    }

    func check(_ status: cudnnStatus_t, _ call: @autoclosure () -> String) throws {
        guard status != 0 else { return }
        throw CUDAError.callFailed(call: call(), code: Int(status), message: describe(status))
    }

    /// A new backend descriptor of `type`, destroyed with the returned object.
    func descriptor(_ type: Int32) throws -> CuDNNDescriptor {
        var raw: OpaquePointer? = nil
        try check(createDescriptor(type, &raw), "cudnnBackendCreateDescriptor(\(CuDNNConstants.descriptorName(type)))")
        guard let raw else { throw CUDAError.callFailed(call: "cudnnBackendCreateDescriptor(\(CuDNNConstants.descriptorName(type)))", code: -1, message: "returned no descriptor") }
        return CuDNNDescriptor(cudnn: self, raw: raw, type: type)
    }
}

/// One cuDNN backend descriptor (destroyed with this object), with typed attribute setters.
final class CuDNNDescriptor {
    let cudnn: CuDNN
    let raw: OpaquePointer
    let type: Int32
    /// Descriptors this one refers to (kept alive as long as it is).
    var keep: [CuDNNDescriptor] = []

    init(cudnn: CuDNN, raw: OpaquePointer, type: Int32) {
        self.cudnn = cudnn
        self.raw = raw
        self.type = type
    }

    deinit { _ = cudnn.destroyDescriptor(raw) }

    var name: String { CuDNNConstants.descriptorName(type) }

    func set<T>(_ attribute: Int32, _ attributeType: Int32, _ values: [T]) throws {
        let status = values.withUnsafeBytes { cudnn.setAttribute(raw, attribute, attributeType, Int64(values.count), $0.baseAddress!) }
        try cudnn.check(status, "cudnnBackendSetAttribute(\(name), attribute \(attribute))")
    }
    func set(_ attribute: Int32, int64 values: [Int64]) throws { try set(attribute, CuDNNConstants.TYPE_INT64, values) }
    func set(_ attribute: Int32, dataType: Int32) throws { try set(attribute, CuDNNConstants.TYPE_DATA_TYPE, [dataType]) }
    func set(_ attribute: Int32, bool value: Bool) throws { try set(attribute, CuDNNConstants.TYPE_BOOLEAN, [value]) }
    func set(_ attribute: Int32, descriptors: [CuDNNDescriptor]) throws {
        try set(attribute, CuDNNConstants.TYPE_BACKEND_DESCRIPTOR, descriptors.map { $0.raw })
        keep += descriptors
    }
    func set(_ attribute: Int32, handle: OpaquePointer) throws { try set(attribute, CuDNNConstants.TYPE_HANDLE, [handle]) }

    func finalize() throws { try cudnn.check(cudnn.finalize(raw), "cudnnBackendFinalize(\(name))") }

    func getInt64(_ attribute: Int32) throws -> Int64 {
        var value: Int64 = 0
        var count: Int64 = 0
        try cudnn.check(cudnn.getAttribute(raw, attribute, CuDNNConstants.TYPE_INT64, 1, &count, &value), "cudnnBackendGetAttribute(\(name), attribute \(attribute))")
        return value
    }
}

/// Which attention runs the DiT's bf16 attention: WanKit's flash-attention kernel (attention.cu), its second version
/// `kernel2` (attention2.cu: FlashAttention-2's 128-row blocks, cp.async double buffering and ldmatrix fragments; head
/// dims 64 and 128, other head dims run the first kernel), cuDNN's fused attention, or `auto`: where cuDNN loaded and a
/// plan finalized for the shape, the fastest of the kernel, kernel2 and cuDNN on that shape's first call (timed, their
/// outputs checked against the kernel's), else the kernel (a one-line note says which and why, once per shape).
public enum AttentionBackend: String, CaseIterable, Sendable {
    case kernel, kernel2, cudnn, auto

    /// $WANKIT_ATTENTION when it names one, else `kernel`.
    public static var environmentDefault: AttentionBackend {
        ProcessInfo.processInfo.environment["WANKIT_ATTENTION"].flatMap { AttentionBackend(rawValue: $0.lowercased()) } ?? .kernel
    }
}

/// softmax(q kᵀ · scale) v through cuDNN's fused attention (the backend API's SDPA forward graph, the pattern the
/// open-source cudnn-frontend builds for it and cuDNN's flash-attention engines take): q [B, Lq, H, D], k/v
/// [B, Lk, H, D], out [B, Lq, H, D], bf16, row-major (as `CUDAOps.attention` takes them); f32 accumulation and
/// softmax; an optional per-batch key count (kLens, device int32 [B]). One execution plan per shape, made on first
/// use and kept; one workspace (from the pool) sized for the largest plan; work on the default stream, in order
/// with the kernels and cuBLASLt.
public final class CuDNNAttention {
    public struct Shape: Hashable, CustomStringConvertible, Sendable {
        public var batch, lq, lk, heads, headDim: Int
        public var masked: Bool
        public init(batch: Int, lq: Int, lk: Int, heads: Int, headDim: Int, masked: Bool) {
            self.batch = batch; self.lq = lq; self.lk = lk; self.heads = heads; self.headDim = headDim; self.masked = masked
        }
        public var description: String { "B=\(batch) Lq=\(lq) Lk=\(lk) H=\(heads) D=\(headDim)\(masked ? " masked" : "")" }
    }

    /// Unique ids of the graph's non-virtual tensors (the variant pack's keys).
    enum UID {
        static let q: Int64 = 1, k: Int64 = 2, v: Int64 = 3, o: Int64 = 4, scale: Int64 = 5, seqQ: Int64 = 6, seqKV: Int64 = 7, negInf: Int64 = 8
    }

    /// The operation descriptors of one SDPA forward graph, finalized (no handle needed), and the tensors they use.
    public struct Operations {
        let operations: [CuDNNDescriptor]
        /// Op kinds in order (for tests and messages): "matmul", "pointwise MUL", "reduction MAX"...
        public let kinds: [String]
        /// Whether the graph's -inf is -FLT_MAX (cuDNN before 9.1 prefers it) or -infinity.
        let negativeInfinity: Float
    }

    /// Builds and finalizes every tensor and operation descriptor of the SDPA forward graph for `shape`, as
    /// cudnn-frontend's composite SDPA node lowers it (cuDNN 9.0 - 9.20 style; later releases take it too):
    /// S = Q·Kᵀ (f32) -> S·scale -> [mask: index < seq_len for rows and columns, else -inf] -> softmax (max, sub,
    /// exp, sum, log+max as a virtual stats tensor, div -> bf16 P) -> O = P·V. Needs the library only (a machine
    /// with libcuda.so.1, since cuDNN loads its engine libraries at the first finalize), not a GPU.
    /// `virtualStats`: the softmax also computes max + log(sum) into a virtual tensor (what cudnn-frontend 1.x emits
    /// today for inference); false: the older inference form without it (tried when the first gets no engine).
    public static func operations(_ cudnn: CuDNN, _ s: Shape, virtualStats: Bool = true) throws -> Operations {
        typealias C = CuDNNConstants
        let b = Int64(s.batch), h = Int64(s.heads), sq = Int64(s.lq), skv = Int64(s.lk), d = Int64(s.headDim)
        var nextVirtual: Int64 = 100
        func tensor(_ uid: Int64?, _ type: Int32, _ dims: [Int64], _ strides: [Int64], byValue: Bool = false) throws -> CuDNNDescriptor {
            let t = try cudnn.descriptor(C.TENSOR_DESCRIPTOR)
            let id: Int64
            if let uid { id = uid } else { id = nextVirtual; nextVirtual += 1 }
            try t.set(C.ATTR_TENSOR_DATA_TYPE, dataType: type)
            try t.set(C.ATTR_TENSOR_DIMENSIONS, int64: dims)
            try t.set(C.ATTR_TENSOR_STRIDES, int64: strides)
            try t.set(C.ATTR_TENSOR_UNIQUE_ID, int64: [id])
            try t.set(C.ATTR_TENSOR_BYTE_ALIGNMENT, int64: [16])
            try t.set(C.ATTR_TENSOR_IS_VIRTUAL, bool: uid == nil)
            if byValue { try t.set(C.ATTR_TENSOR_IS_BY_VALUE, bool: true) }
            try t.finalize()
            return t
        }
        let scores = ([b, h, sq, skv], [h * sq * skv, sq * skv, skv, Int64(1)])
        let rows = ([b, h, sq, Int64(1)], [h * sq, sq, Int64(1), Int64(1)])
        let scalar = ([Int64(1), 1, 1, 1], [Int64(1), 1, 1, 1])
        func virtualScores(_ type: Int32 = C.DATA_FLOAT) throws -> CuDNNDescriptor { try tensor(nil, type, scores.0, scores.1) }
        func virtualRows() throws -> CuDNNDescriptor { try tensor(nil, C.DATA_FLOAT, rows.0, rows.1) }

        // [B, L, H, D] row-major: batch stride L·H·D, head stride D, row stride H·D.
        let q = try tensor(UID.q, C.DATA_BFLOAT16, [b, h, sq, d], [sq * h * d, d, h * d, 1])
        let kT = try tensor(UID.k, C.DATA_BFLOAT16, [b, h, d, skv], [skv * h * d, d, 1, h * d])
        let v = try tensor(UID.v, C.DATA_BFLOAT16, [b, h, skv, d], [skv * h * d, d, h * d, 1])
        let o = try tensor(UID.o, C.DATA_BFLOAT16, [b, h, sq, d], [sq * h * d, d, h * d, 1])
        let scale = try tensor(UID.scale, C.DATA_FLOAT, scalar.0, scalar.1, byValue: true)
        var seqQ: CuDNNDescriptor?, seqKV: CuDNNDescriptor?
        if s.masked {
            seqQ = try tensor(UID.seqQ, C.DATA_INT32, [b, 1, 1, 1], [1, 1, 1, 1])
            seqKV = try tensor(UID.seqKV, C.DATA_INT32, [b, 1, 1, 1], [1, 1, 1, 1])
        }

        var operations: [CuDNNDescriptor] = []
        var kinds: [String] = []
        func matmul(_ a: CuDNNDescriptor, _ bDesc: CuDNNDescriptor, _ c: CuDNNDescriptor, m: CuDNNDescriptor?, n: CuDNNDescriptor?, k: CuDNNDescriptor?, padding: Bool) throws {
            let desc = try cudnn.descriptor(C.MATMUL_DESCRIPTOR)
            try desc.set(C.ATTR_MATMUL_COMP_TYPE, dataType: C.DATA_FLOAT)
            if padding { try desc.set(C.ATTR_MATMUL_PADDING_VALUE, C.TYPE_DOUBLE, [0.0]) }
            try desc.finalize()
            let op = try cudnn.descriptor(C.OPERATION_MATMUL_DESCRIPTOR)
            try op.set(C.ATTR_OPERATION_MATMUL_ADESC, descriptors: [a])
            try op.set(C.ATTR_OPERATION_MATMUL_BDESC, descriptors: [bDesc])
            try op.set(C.ATTR_OPERATION_MATMUL_CDESC, descriptors: [c])
            if let m { try op.set(C.ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC, descriptors: [m]) }
            if let n { try op.set(C.ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC, descriptors: [n]) }
            if let k { try op.set(C.ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC, descriptors: [k]) }
            try op.set(C.ATTR_OPERATION_MATMUL_DESC, descriptors: [desc])
            try op.finalize()
            operations.append(op)
            kinds.append("matmul")
        }
        func pointwise(_ mode: Int32, _ label: String, x: CuDNNDescriptor, b bDesc: CuDNNDescriptor? = nil, t: CuDNNDescriptor? = nil, y: CuDNNDescriptor,
                       precision: Int32 = C.DATA_FLOAT, axis: Int64? = nil) throws {
            let desc = try cudnn.descriptor(C.POINTWISE_DESCRIPTOR)
            try desc.set(C.ATTR_POINTWISE_MODE, C.TYPE_POINTWISE_MODE, [mode])
            try desc.set(C.ATTR_POINTWISE_MATH_PREC, dataType: precision)
            if let axis { try desc.set(C.ATTR_POINTWISE_AXIS, int64: [axis]) }
            try desc.finalize()
            let op = try cudnn.descriptor(C.OPERATION_POINTWISE_DESCRIPTOR)
            try op.set(C.ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, descriptors: [desc])
            try op.set(C.ATTR_OPERATION_POINTWISE_XDESC, descriptors: [x])
            if let bDesc { try op.set(C.ATTR_OPERATION_POINTWISE_BDESC, descriptors: [bDesc]) }
            if let t { try op.set(C.ATTR_OPERATION_POINTWISE_TDESC, descriptors: [t]) }
            try op.set(C.ATTR_OPERATION_POINTWISE_YDESC, descriptors: [y])
            try op.finalize()
            operations.append(op)
            kinds.append("pointwise \(label)")
        }
        func reduction(_ op: Int32, _ label: String, x: CuDNNDescriptor, y: CuDNNDescriptor) throws {
            let desc = try cudnn.descriptor(C.REDUCTION_DESCRIPTOR)
            try desc.set(C.ATTR_REDUCTION_OPERATOR, C.TYPE_REDUCTION_OPERATOR_TYPE, [op])
            try desc.set(C.ATTR_REDUCTION_COMP_TYPE, dataType: C.DATA_FLOAT)
            try desc.finalize()
            let operation = try cudnn.descriptor(C.OPERATION_REDUCTION_DESCRIPTOR)
            try operation.set(C.ATTR_OPERATION_REDUCTION_DESC, descriptors: [desc])
            try operation.set(C.ATTR_OPERATION_REDUCTION_XDESC, descriptors: [x])
            try operation.set(C.ATTR_OPERATION_REDUCTION_YDESC, descriptors: [y])
            try operation.finalize()
            operations.append(operation)
            kinds.append("reduction \(label)")
        }

        // S = Q·Kᵀ (with the padding mask: rows/columns past the lengths are padding, value 0).
        let s1 = try virtualScores()
        try matmul(q, kT, s1, m: seqQ, n: seqKV, k: nil, padding: s.masked)
        // S·scale (scale passed by value at execution).
        var last = try virtualScores()
        try pointwise(C.POINTWISE_MUL, "MUL", x: s1, b: scale, y: last)
        // cuDNN before 9.1 prefers the lowest float for the mask; later releases -infinity (as cudnn-frontend).
        let negativeInfinity: Float = cudnn.version < 91000 ? -Float.greatestFiniteMagnitude : -Float.infinity
        if s.masked, let seqQ, let seqKV {
            let rowIndex = try virtualScores(C.DATA_INT32)
            try pointwise(C.POINTWISE_GEN_INDEX, "GEN_INDEX", x: last, y: rowIndex, precision: C.DATA_INT32, axis: 2)
            let colIndex = try virtualScores(C.DATA_INT32)
            try pointwise(C.POINTWISE_GEN_INDEX, "GEN_INDEX", x: last, y: colIndex, precision: C.DATA_INT32, axis: 3)
            let rowMask = try virtualScores(C.DATA_BOOLEAN)
            try pointwise(C.POINTWISE_CMP_LT, "CMP_LT", x: rowIndex, b: seqQ, y: rowMask, precision: C.DATA_BOOLEAN)
            let colMask = try virtualScores(C.DATA_BOOLEAN)
            try pointwise(C.POINTWISE_CMP_LT, "CMP_LT", x: colIndex, b: seqKV, y: colMask, precision: C.DATA_BOOLEAN)
            let mask = try virtualScores(C.DATA_BOOLEAN)
            try pointwise(C.POINTWISE_LOGICAL_AND, "LOGICAL_AND", x: rowMask, b: colMask, y: mask, precision: C.DATA_BOOLEAN)
            let negInf = try tensor(UID.negInf, C.DATA_FLOAT, scalar.0, scalar.1, byValue: true)
            let selected = try virtualScores()
            try pointwise(C.POINTWISE_BINARY_SELECT, "BINARY_SELECT", x: last, b: negInf, t: mask, y: selected)
            last = selected
        }
        // Softmax: max, x - max, exp, sum, stats = max + log(sum) (virtual), exp / sum in bf16.
        let maxRows = try virtualRows()
        try reduction(C.REDUCE_MAX, "MAX", x: last, y: maxRows)
        let shifted = try virtualScores()
        try pointwise(C.POINTWISE_SUB, "SUB", x: last, b: maxRows, y: shifted)
        let exps = try virtualScores()
        try pointwise(C.POINTWISE_EXP, "EXP", x: shifted, y: exps)
        let sums = try virtualRows()
        try reduction(C.REDUCE_ADD, "ADD", x: exps, y: sums)
        if virtualStats {
            let logs = try virtualRows()
            try pointwise(C.POINTWISE_LOG, "LOG", x: sums, y: logs)
            let stats = try virtualRows()
            try pointwise(C.POINTWISE_ADD, "ADD", x: maxRows, b: logs, y: stats)
        }
        let p = try virtualScores(C.DATA_BFLOAT16)
        try pointwise(C.POINTWISE_DIV, "DIV", x: exps, b: sums, y: p)
        // O = P·V.
        try matmul(p, v, o, m: seqQ, n: nil, k: seqKV, padding: false)
        return Operations(operations: operations, kinds: kinds, negativeInfinity: negativeInfinity)
    }

    /// A finalized execution plan for one shape and its workspace size.
    final class Plan {
        let shape: Shape
        let plan: CuDNNDescriptor
        let graph: CuDNNDescriptor
        let operations: Operations
        let workspaceBytes: Int
        /// seq_len_q of the masked graph: int32 [B], all lq.
        let seqLenQ: DeviceBuffer?
        init(shape: Shape, plan: CuDNNDescriptor, graph: CuDNNDescriptor, operations: Operations, workspaceBytes: Int, seqLenQ: DeviceBuffer?) {
            self.shape = shape; self.plan = plan; self.graph = graph; self.operations = operations
            self.workspaceBytes = workspaceBytes; self.seqLenQ = seqLenQ
        }
    }

    public let cudnn: CuDNN
    public let context: CUDAContext
    let pool: DeviceMemoryPool?
    let handle: OpaquePointer
    private var plans: [Shape: Result<Plan, CUDAError>] = [:]
    private var workspace: DeviceBuffer?
    /// Seconds spent making plans (heuristic query and finalize), for the benchmarks.
    public private(set) var planSeconds = 0.0

    /// Loads cuDNN and creates a handle on `context` (its primary context, current on this thread), bound to the
    /// default stream. Throws a `CUDAError` naming the call that failed.
    public init(context: CUDAContext, pool: DeviceMemoryPool? = nil) throws {
        let cudnn = try CuDNN.load()
        self.cudnn = cudnn
        self.context = context
        self.pool = pool
        try context.makeCurrent()
        var handle: OpaquePointer? = nil
        try cudnn.check(cudnn.create(&handle), "cudnnCreate")
        guard let handle else { throw CUDAError.callFailed(call: "cudnnCreate", code: -1, message: "returned no handle") }
        self.handle = handle
        try cudnn.check(cudnn.setStream(handle, nil), "cudnnSetStream(default stream)")
    }

    deinit {
        plans.removeAll()
        _ = cudnn.destroy(handle)
        if let workspace { pool?.release(workspace) }
    }

    /// The plan for `shape` (made on first use; a failure is kept too, so a shape cuDNN cannot take is tried once).
    func plan(_ shape: Shape) throws -> Plan {
        if let known = plans[shape] { return try known.get() }
        let start = CUDATimings.now()
        let result: Result<Plan, CUDAError>
        do { result = .success(try makePlan(shape)) } catch let error as CUDAError { result = .failure(error) } catch {
            result = .failure(.callFailed(call: "cuDNN plan for \(shape)", code: -1, message: "\(error)"))
        }
        planSeconds += CUDATimings.now() - start
        plans[shape] = result
        return try result.get()
    }

    /// Whether a plan finalized for `shape` (making it now when not yet tried); the reason when not.
    public func supports(_ shape: Shape) -> (ok: Bool, reason: String?) {
        do { _ = try plan(shape); return (true, nil) } catch { return (false, "\(error)") }
    }

    private func makePlan(_ shape: Shape) throws -> Plan {
        typealias C = CuDNNConstants
        guard shape.headDim % 8 == 0, shape.headDim <= 256 else {
            throw CUDAError.callFailed(call: "cuDNN SDPA", code: -1, message: "head_dim \(shape.headDim) is not a multiple of 8 up to 256")
        }
        try context.makeCurrent()
        var tried = 0
        var lastError: CUDAError?
        for virtualStats in [true, false] {
            let ops = try Self.operations(cudnn, shape, virtualStats: virtualStats)
            let graph = try cudnn.descriptor(C.OPERATIONGRAPH_DESCRIPTOR)
            try graph.set(C.ATTR_OPERATIONGRAPH_HANDLE, handle: handle)
            try graph.set(C.ATTR_OPERATIONGRAPH_OPS, descriptors: ops.operations)
            do { try graph.finalize() } catch let error as CUDAError { lastError = error; continue }
            for mode in [C.HEUR_MODE_A, C.HEUR_MODE_FALLBACK] {
                let heuristic = try cudnn.descriptor(C.ENGINEHEUR_DESCRIPTOR)
                try heuristic.set(C.ATTR_ENGINEHEUR_OPERATION_GRAPH, descriptors: [graph])
                try heuristic.set(C.ATTR_ENGINEHEUR_MODE, C.TYPE_HEUR_MODE, [mode])
                do { try heuristic.finalize() } catch let error as CUDAError { lastError = error; continue }
                var count: Int64 = 0
                try cudnn.check(cudnn.getAttribute(heuristic.raw, C.ATTR_ENGINEHEUR_RESULTS, C.TYPE_BACKEND_DESCRIPTOR, 0, &count, nil),
                                "cudnnBackendGetAttribute(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, CUDNN_ATTR_ENGINEHEUR_RESULTS count)")
                guard count > 0 else { continue }
                let configs = try (0..<Int(count)).map { _ in try cudnn.descriptor(C.ENGINECFG_DESCRIPTOR) }
                var raws: [OpaquePointer?] = configs.map { $0.raw }
                var returned: Int64 = 0
                try cudnn.check(cudnn.getAttribute(heuristic.raw, C.ATTR_ENGINEHEUR_RESULTS, C.TYPE_BACKEND_DESCRIPTOR, count, &returned, &raws),
                                "cudnnBackendGetAttribute(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, CUDNN_ATTR_ENGINEHEUR_RESULTS)")
                for config in configs.prefix(Int(returned)) {
                    tried += 1
                    do {
                        let plan = try cudnn.descriptor(C.EXECUTION_PLAN_DESCRIPTOR)
                        try plan.set(C.ATTR_EXECUTION_PLAN_HANDLE, handle: handle)
                        try plan.set(C.ATTR_EXECUTION_PLAN_ENGINE_CONFIG, descriptors: [config])
                        try plan.finalize()
                        let workspaceBytes = Int(try plan.getInt64(C.ATTR_EXECUTION_PLAN_WORKSPACE_SIZE))
                        var seqLenQ: DeviceBuffer? = nil
                        if shape.masked {
                            let buffer = try context.allocate(bytes: 4 * shape.batch)
                            try buffer.upload([Int32](repeating: Int32(shape.lq), count: shape.batch))
                            seqLenQ = buffer
                        }
                        return Plan(shape: shape, plan: plan, graph: graph, operations: ops, workspaceBytes: workspaceBytes, seqLenQ: seqLenQ)
                    } catch let error as CUDAError {
                        lastError = error
                    }
                }
            }
        }
        throw CUDAError.callFailed(call: "cudnnBackendFinalize(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR)", code: -1,
                                   message: "no cuDNN \(cudnn.versionString) engine takes the SDPA graph for \(shape) (\(tried) engine configurations tried)"
                                       + (lastError.map { "; last: \($0)" } ?? ""))
    }

    /// softmax(q kᵀ · scale) v; shapes and layouts as `CUDAOps.attention` (bf16 only). kLens: device int32 [B] or 0.
    public func run(out: UInt64, q: UInt64, k: UInt64, v: UInt64, kLens: UInt64 = 0, batch: Int = 1, lq: Int, lk: Int,
                    heads: Int, headDim: Int, scale: Float) throws {
        let shape = Shape(batch: batch, lq: lq, lk: lk, heads: heads, headDim: headDim, masked: kLens != 0)
        let plan = try plan(shape)
        if plan.workspaceBytes > (workspace?.bytes ?? 0) {
            if let old = workspace { pool?.release(old); workspace = nil }
            workspace = try pool?.acquire(bytes: plan.workspaceBytes) ?? context.allocate(bytes: plan.workspaceBytes)
        }
        try context.makeCurrent()
        typealias C = CuDNNConstants
        var scaleValue = scale
        var negInf = plan.operations.negativeInfinity
        func device(_ address: UInt64) -> UnsafeMutableRawPointer? { UnsafeMutableRawPointer(bitPattern: UInt(address)) }
        try withUnsafeMutablePointer(to: &scaleValue) { scalePointer in
            try withUnsafeMutablePointer(to: &negInf) { negInfPointer in
                var uids: [Int64] = [UID.q, UID.k, UID.v, UID.o, UID.scale]
                var pointers: [UnsafeMutableRawPointer?] = [device(q), device(k), device(v), device(out), UnsafeMutableRawPointer(scalePointer)]
                if shape.masked {
                    uids += [UID.seqQ, UID.seqKV, UID.negInf]
                    pointers += [device(plan.seqLenQ!.pointer), device(kLens), UnsafeMutableRawPointer(negInfPointer)]
                }
                let pack = try cudnn.descriptor(C.VARIANT_PACK_DESCRIPTOR)
                try pack.set(C.ATTR_VARIANT_PACK_UNIQUE_IDS, int64: uids)
                try pack.set(C.ATTR_VARIANT_PACK_DATA_POINTERS, C.TYPE_VOID_PTR, pointers)
                try pack.set(C.ATTR_VARIANT_PACK_WORKSPACE, C.TYPE_VOID_PTR, [workspace.flatMap { device($0.pointer) }])
                try pack.finalize()
                try cudnn.check(cudnn.execute(handle, plan.plan.raw, pack.raw), "cudnnBackendExecute(SDPA \(shape))")
            }
        }
    }
}
