#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// A shared library opened at run time with dlopen. Nothing CUDA is linked at build time: each library is looked up
/// by its soname (the loader's usual search: LD_LIBRARY_PATH, the ld.so cache, RUNPATH) and then in the folders a
/// CUDA toolkit installs into, so a machine with only the driver, or with a PyPI wheel, still works.
final class DynamicLibrary {
    let handle: UnsafeMutableRawPointer
    /// The name or path it was opened by.
    let path: String

    private init(handle: UnsafeMutableRawPointer, path: String) {
        self.handle = handle
        self.path = path
    }

    /// Opens the first of `candidates` that loads. Returns nil and the loader's last message when none does.
    static func open(_ candidates: [String]) -> (library: DynamicLibrary?, lastError: String) {
        var lastError = "not found"
        for candidate in candidates {
            if candidate.hasPrefix("/") && !FileManager.default.fileExists(atPath: candidate) { continue }
            if let handle = dlopen(candidate, RTLD_NOW | RTLD_LOCAL) {
                return (DynamicLibrary(handle: handle, path: candidate), "")
            }
            if let message = dlerror() { lastError = String(cString: message) }
        }
        return (nil, lastError)
    }

    /// Loads a library into the global namespace so that a later dlopen by soname finds it (NVRTC opens its
    /// libnvrtc-builtins by soname; preloading it from the same folder makes a wheel's copy work without
    /// LD_LIBRARY_PATH).
    static func preloadGlobal(_ path: String) {
        _ = dlopen(path, RTLD_NOW | RTLD_GLOBAL)
    }

    /// The entry point `name` as the C function type `T`; nil when the library lacks it.
    func symbol<T>(_ name: String, as type: T.Type) -> T? {
        guard let pointer = dlsym(handle, name) else { return nil }
        return unsafeBitCast(pointer, to: type)
    }

    /// The folder the library was loaded from (dladdr on one of its symbols), when known.
    func loadedDirectory(probeSymbol: String) -> String? {
        guard let pointer = dlsym(handle, probeSymbol) else { return nil }
        // Glibc's Swift module hides dladdr and Dl_info (they need _GNU_SOURCE): take the function from libc itself.
        // Dl_info is four pointers; the first is the file name.
        typealias dladdr_t = @convention(c) (UnsafeRawPointer, UnsafeMutableRawPointer) -> Int32
        guard let dladdrPointer = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "dladdr") else { return nil }  // RTLD_DEFAULT
        let dladdr = unsafeBitCast(dladdrPointer, to: dladdr_t.self)
        var info: (UnsafePointer<CChar>?, UnsafeRawPointer?, UnsafePointer<CChar>?, UnsafeRawPointer?) = (nil, nil, nil, nil)
        let found = withUnsafeMutableBytes(of: &info) { dladdr(pointer, $0.baseAddress!) }
        guard found != 0, let name = info.0 else { return nil }
        return (String(cString: name) as NSString).deletingLastPathComponent
    }
}

/// Where CUDA libraries are looked for after the loader's own search, in order.
enum CUDALibraryPaths {
    /// Toolkit folders: $CUDA_HOME / $CUDA_PATH, /usr/local/cuda, then every /usr/local/cuda-X.Y, newest first.
    static func toolkitDirectories() -> [String] {
        var roots: [String] = []
        let env = ProcessInfo.processInfo.environment
        for key in ["CUDA_HOME", "CUDA_PATH"] { if let value = env[key], !value.isEmpty { roots.append(value) } }
        roots.append("/usr/local/cuda")
        if let names = try? FileManager.default.contentsOfDirectory(atPath: "/usr/local") {
            let versions = names.filter { $0.hasPrefix("cuda-") }.sorted { a, b in
                a.compare(b, options: .numeric) == .orderedDescending
            }
            roots += versions.map { "/usr/local/\($0)" }
        }
        var directories: [String] = []
        for root in roots {
            for sub in ["targets/x86_64-linux/lib", "targets/sbsa-linux/lib", "lib64", "lib"] {
                let path = "\(root)/\(sub)"
                if !directories.contains(path) { directories.append(path) }
            }
        }
        return directories
    }

    /// `sonames` (in order of preference) as bare names for the loader, then as paths in every toolkit folder.
    static func candidates(for sonames: [String], override: String?) -> [String] {
        var list: [String] = []
        if let override, !override.isEmpty { list.append(override) }
        list += sonames
        for directory in toolkitDirectories() {
            list += sonames.map { "\(directory)/\($0)" }
        }
        return list
    }
}
