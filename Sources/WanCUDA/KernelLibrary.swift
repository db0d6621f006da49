import Foundation

/// The CUDA C++ kernel files kept as package resources (Sources/WanCUDA/Kernels): every `*.cu` is one module, every
/// `*.cuh` a header handed to NVRTC by name (no include path, no toolkit headers). Compiled on first use for the
/// device's architecture and cached on disk, keyed by source hash, architecture and NVRTC version.
public struct KernelSources {
    /// The folder the sources were read from.
    public let directory: String
    /// File name → text, for the `.cu` files.
    public let modules: [String: String]
    /// File name → text, for the `.cuh` headers.
    public let headers: [String: String]

    public init(directory: String, modules: [String: String], headers: [String: String]) {
        self.directory = directory
        self.modules = modules
        self.headers = headers
    }

    /// Where the resource folder is looked for: $WANKIT_CUDA_KERNELS, beside the executable (the SwiftPM resource
    /// bundle `WanKit_WanCUDA.resources`, which the build and scripts/pack-device-check put there), then the source tree.
    public static func searchPaths() -> [String] {
        var paths: [String] = []
        if let env = ProcessInfo.processInfo.environment["WANKIT_CUDA_KERNELS"], !env.isEmpty { paths.append(env) }
        let executable = URL(fileURLWithPath: CommandLine.arguments.first ?? "").resolvingSymlinksInPath().deletingLastPathComponent()
        var candidates = [executable]
        if let bundle = Bundle.main.executableURL?.resolvingSymlinksInPath().deletingLastPathComponent() { candidates.append(bundle) }
        for base in candidates {
            paths.append(base.appendingPathComponent("WanKit_WanCUDA.resources/Kernels").path)
            // an .xctest bundle (macOS) keeps resources one level up
            paths.append(base.deletingLastPathComponent().appendingPathComponent("WanKit_WanCUDA.resources/Kernels").path)
        }
        paths.append(URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Kernels").path)
        var unique: [String] = []
        for path in paths where !unique.contains(path) { unique.append(path) }
        return unique
    }

    /// Reads the first folder of `searchPaths()` that holds `.cu` files.
    public static func load() throws -> KernelSources {
        let searched = searchPaths()
        for directory in searched {
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { continue }
            var modules: [String: String] = [:], headers: [String: String] = [:]
            for name in names {
                let path = "\(directory)/\(name)"
                if name.hasSuffix(".cu") { modules[name] = try String(contentsOfFile: path, encoding: .utf8) }
                if name.hasSuffix(".cuh") { headers[name] = try String(contentsOfFile: path, encoding: .utf8) }
            }
            if !modules.isEmpty { return KernelSources(directory: directory, modules: modules, headers: headers) }
        }
        throw CUDAError.kernelSourcesNotFound(searched: searched)
    }

    /// The module names ("norm.cu", ...) in a fixed order.
    public var moduleNames: [String] { modules.keys.sorted() }

    /// The cache key of one module: FNV-1a 64 over its text, every header (name and text) and the compile settings.
    public func cacheKey(module: String, architecture: String, nvrtc: CUDAVersion) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        func mix(_ text: String) {
            for byte in text.utf8 { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
            hash = (hash ^ 0xff) &* 0x0000_0100_0000_01b3  // separator
        }
        mix(modules[module] ?? "")
        for name in headers.keys.sorted() { mix(name); mix(headers[name]!) }
        mix(architecture)
        mix(nvrtc.description)
        let stem = (module as NSString).deletingPathExtension
        return "\(stem)-\(architecture)-nvrtc\(nvrtc)-\(String(format: "%016llx", hash))"
    }
}

/// Compiles kernel modules with NVRTC, through an on-disk cache.
public final class KernelCompiler {
    public let nvrtc: NVRTC
    public let sources: KernelSources
    /// The cache folder: $XDG_CACHE_HOME/wankit/cuda-kernels, else ~/.cache/wankit/cuda-kernels.
    public let cacheDirectory: String

    public init(nvrtc: NVRTC? = nil, sources: KernelSources? = nil, cacheDirectory: String? = nil) throws {
        self.nvrtc = try nvrtc ?? NVRTC.load()
        self.sources = try sources ?? KernelSources.load()
        self.cacheDirectory = cacheDirectory ?? KernelCompiler.defaultCacheDirectory()
    }

    public static func defaultCacheDirectory() -> String {
        let env = ProcessInfo.processInfo.environment
        let base = env["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : $0 }
            ?? (NSHomeDirectory() as NSString).appendingPathComponent(".cache")
        return (base as NSString).appendingPathComponent("wankit/cuda-kernels")
    }

    /// One module's cubin for `architecture` ("sm_80"): from the cache, else compiled and stored (atomically:
    /// written under a temporary name, then renamed). `fromCache` says which. A cache that cannot be written is no
    /// error (the kernels are compiled again next time).
    public func image(module: String, architecture: String) throws -> (image: [UInt8], fromCache: Bool, log: String) {
        guard let source = sources.modules[module] else { throw CUDAError.kernelNotFound(name: module, file: sources.directory) }
        let key = sources.cacheKey(module: module, architecture: architecture, nvrtc: nvrtc.version)
        let path = (cacheDirectory as NSString).appendingPathComponent("\(key).cubin")
        if let data = FileManager.default.contents(atPath: path), !data.isEmpty {
            return ([UInt8](data), true, "")
        }
        let compiled = try nvrtc.compile(source: source, name: module, architecture: architecture, headers: sources.headers)
        try? FileManager.default.createDirectory(atPath: cacheDirectory, withIntermediateDirectories: true)
        let temporary = path + ".tmp\(getpid())"
        if FileManager.default.createFile(atPath: temporary, contents: Data(compiled.image)) {
            if rename(temporary, path) != 0 { unlink(temporary) }
        }
        return (compiled.image, false, compiled.log)
    }

    /// Compiles every module for `architecture` without the cache (the CI check): module name → NVRTC's log, or
    /// the error for a module that failed.
    public func compileAll(architecture: String) -> [(module: String, result: Result<CompiledKernel, CUDAError>)] {
        sources.moduleNames.map { name in
            (name, Result { try nvrtc.compile(source: sources.modules[name]!, name: name, architecture: architecture, headers: sources.headers) }
                .mapError { $0 as? CUDAError ?? .callFailed(call: "nvrtcCompileProgram(\(name))", code: -1, message: "\($0)") })
        }
    }

    /// Loads one module onto `context`'s GPU (compiling for its architecture on first use).
    public func load(module: String, on context: CUDAContext) throws -> CUDAModule {
        let (image, _, _) = try self.image(module: module, architecture: context.info.architecture)
        return try context.loadModule(image: image, name: module)
    }
}
