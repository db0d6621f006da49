import Foundation

// NVRTC (libnvrtc.so.13, else .so.12), declared as C function-pointer types: only the entry points used.
typealias nvrtcResult = Int32
typealias nvrtcProgram = OpaquePointer

private typealias nvrtcVersion_t = @convention(c) (UnsafeMutablePointer<Int32>, UnsafeMutablePointer<Int32>) -> nvrtcResult
private typealias nvrtcGetErrorString_t = @convention(c) (nvrtcResult) -> UnsafePointer<CChar>?
private typealias nvrtcCreateProgram_t = @convention(c) (
    UnsafeMutablePointer<nvrtcProgram?>, UnsafePointer<CChar>, UnsafePointer<CChar>?, Int32,
    UnsafePointer<UnsafePointer<CChar>?>?, UnsafePointer<UnsafePointer<CChar>?>?) -> nvrtcResult
private typealias nvrtcDestroyProgram_t = @convention(c) (UnsafeMutablePointer<nvrtcProgram?>) -> nvrtcResult
private typealias nvrtcCompileProgram_t = @convention(c) (nvrtcProgram, Int32, UnsafePointer<UnsafePointer<CChar>?>?) -> nvrtcResult
private typealias nvrtcGetSize_t = @convention(c) (nvrtcProgram, UnsafeMutablePointer<Int>) -> nvrtcResult
private typealias nvrtcGetBytes_t = @convention(c) (nvrtcProgram, UnsafeMutablePointer<CChar>) -> nvrtcResult

/// What NVRTC produced: a cubin (machine code for one architecture) or PTX (for a virtual one).
public struct CompiledKernel {
    public var image: [UInt8]
    public var isCubin: Bool
    /// Warnings NVRTC printed (empty when none).
    public var log: String
}

/// The NVRTC runtime compiler, loaded once per process.
public final class NVRTC {
    public let version: CUDAVersion
    /// The file it was loaded from (or the soname the loader resolved).
    public let path: String
    let library: DynamicLibrary

    private let getErrorString: nvrtcGetErrorString_t
    private let createProgram: nvrtcCreateProgram_t
    private let destroyProgram: nvrtcDestroyProgram_t
    private let compileProgram: nvrtcCompileProgram_t
    private let getProgramLogSize: nvrtcGetSize_t
    private let getProgramLog: nvrtcGetBytes_t
    private let getCUBINSize: nvrtcGetSize_t
    private let getCUBIN: nvrtcGetBytes_t
    private let getPTXSize: nvrtcGetSize_t
    private let getPTX: nvrtcGetBytes_t

    private static let shared: Result<NVRTC, CUDAError> = Result { try NVRTC() }.mapError { $0 as! CUDAError }

    /// The process's NVRTC: $WANKIT_NVRTC (a file path) if set, else libnvrtc.so.13 then .so.12 through the loader's
    /// search, then in the CUDA toolkit folders.
    public static func load() throws -> NVRTC { try shared.get() }

    private init() throws {
        let sonames = ["libnvrtc.so.13", "libnvrtc.so.12"]
        let override = ProcessInfo.processInfo.environment["WANKIT_NVRTC"]
        let candidates = CUDALibraryPaths.candidates(for: sonames, override: override)
        // NVRTC opens libnvrtc-builtins.so.X.Y by soname at its first compile; a copy beside a library given by path
        // (a PyPI wheel, a toolkit folder not in the loader's search) is loaded first so that lookup finds it.
        for candidate in candidates where candidate.hasPrefix("/") && FileManager.default.fileExists(atPath: candidate) {
            NVRTC.preloadBuiltins(besides: candidate)
            break
        }
        let opened = DynamicLibrary.open(candidates)
        guard let library = opened.library else {
            throw CUDAError.libraryNotFound(
                library: "libnvrtc.so.13 / libnvrtc.so.12 (NVRTC)", why: "the CUDA runtime compiler is not installed",
                fix: "install the CUDA toolkit's NVRTC (apt: cuda-nvrtc-13-0; pip: nvidia-cuda-nvrtc) or set WANKIT_NVRTC to its path, or run on the CPU with --device cpu")
        }
        self.library = library
        func sym<T>(_ name: String, _ type: T.Type) throws -> T {
            guard let f = library.symbol(name, as: type) else { throw CUDAError.missingSymbol(library: library.path, symbol: name) }
            return f
        }
        let nvrtcVersion = try sym("nvrtcVersion", nvrtcVersion_t.self)
        getErrorString = try sym("nvrtcGetErrorString", nvrtcGetErrorString_t.self)
        createProgram = try sym("nvrtcCreateProgram", nvrtcCreateProgram_t.self)
        destroyProgram = try sym("nvrtcDestroyProgram", nvrtcDestroyProgram_t.self)
        compileProgram = try sym("nvrtcCompileProgram", nvrtcCompileProgram_t.self)
        getProgramLogSize = try sym("nvrtcGetProgramLogSize", nvrtcGetSize_t.self)
        getProgramLog = try sym("nvrtcGetProgramLog", nvrtcGetBytes_t.self)
        getCUBINSize = try sym("nvrtcGetCUBINSize", nvrtcGetSize_t.self)
        getCUBIN = try sym("nvrtcGetCUBIN", nvrtcGetBytes_t.self)
        getPTXSize = try sym("nvrtcGetPTXSize", nvrtcGetSize_t.self)
        getPTX = try sym("nvrtcGetPTX", nvrtcGetBytes_t.self)
        var major: Int32 = 0, minor: Int32 = 0
        _ = nvrtcVersion(&major, &minor)
        version = CUDAVersion(major: Int(major), minor: Int(minor))
        path = library.loadedDirectory(probeSymbol: "nvrtcVersion").map { "\($0)/\((library.path as NSString).lastPathComponent)" } ?? library.path
        // Loaded by soname from the loader's search: its builtins sit in the same folder.
        if !library.path.hasPrefix("/") { NVRTC.preloadBuiltins(besides: path) }
    }

    private static func preloadBuiltins(besides libraryPath: String) {
        let directory = (libraryPath as NSString).deletingLastPathComponent
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return }
        for name in names where name.hasPrefix("libnvrtc-builtins.so.") && !name.contains(".alt.") {
            DynamicLibrary.preloadGlobal("\(directory)/\(name)")
        }
    }

    private func message(_ status: nvrtcResult) -> String {
        getErrorString(status).map { String(cString: $0) } ?? "NVRTC error \(status)"
    }

    /// Compiles `source` for `architecture` ("sm_90": a cubin; "compute_90": PTX). `headers` maps include names to
    /// their text (the kernels' shared header travels this way: no include path or toolkit headers are needed).
    public func compile(source: String, name: String, architecture: String, headers: [String: String] = [:],
                        options extra: [String] = []) throws -> CompiledKernel {
        let options = ["--gpu-architecture=\(architecture)", "-std=c++17", "-default-device", "--fmad=true"] + extra
        let headerNames = headers.keys.sorted()
        var program: nvrtcProgram? = nil
        // C strings that outlive the calls below.
        let cHeaders = headerNames.map { strdup(headers[$0]!) }
        let cNames = headerNames.map { strdup($0) }
        let cOptions = options.map { strdup($0) }
        defer { (cHeaders + cNames + cOptions).forEach { free($0) } }
        let headerPointers = cHeaders.map { UnsafePointer<CChar>($0) }
        let namePointers = cNames.map { UnsafePointer<CChar>($0) }
        let optionPointers = cOptions.map { UnsafePointer<CChar>($0) }

        let created = headerPointers.withUnsafeBufferPointer { hs in
            namePointers.withUnsafeBufferPointer { ns in
                createProgram(&program, source, name, Int32(headerNames.count),
                              headerNames.isEmpty ? nil : hs.baseAddress, headerNames.isEmpty ? nil : ns.baseAddress)
            }
        }
        guard created == 0, let program else {
            throw CUDAError.callFailed(call: "nvrtcCreateProgram(\(name))", code: Int(created), message: message(created))
        }
        defer { var p: nvrtcProgram? = program; _ = destroyProgram(&p) }

        let status = optionPointers.withUnsafeBufferPointer { compileProgram(program, Int32(options.count), $0.baseAddress) }
        var logSize = 0
        _ = getProgramLogSize(program, &logSize)
        var logBytes = [CChar](repeating: 0, count: max(logSize, 1))
        if logSize > 1 { _ = getProgramLog(program, &logBytes) }
        let log = String(cString: logBytes).trimmingCharacters(in: .whitespacesAndNewlines)
        if status != 0 {
            let detail = log.isEmpty ? message(status) : log
            throw CUDAError.compileFailed(file: name, architecture: architecture, log: detail)
        }

        let isCubin = architecture.hasPrefix("sm_")
        var size = 0
        let sizeStatus = isCubin ? getCUBINSize(program, &size) : getPTXSize(program, &size)
        if sizeStatus != 0 { throw CUDAError.callFailed(call: isCubin ? "nvrtcGetCUBINSize" : "nvrtcGetPTXSize", code: Int(sizeStatus), message: message(sizeStatus)) }
        var image = [CChar](repeating: 0, count: size)
        let getStatus = isCubin ? getCUBIN(program, &image) : getPTX(program, &image)
        if getStatus != 0 { throw CUDAError.callFailed(call: isCubin ? "nvrtcGetCUBIN" : "nvrtcGetPTX", code: Int(getStatus), message: message(getStatus)) }
        return CompiledKernel(image: image.map { UInt8(bitPattern: $0) }, isCubin: isCubin, log: log)
    }
}
