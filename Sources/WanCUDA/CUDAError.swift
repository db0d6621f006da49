import Foundation

/// A CUDA version as the libraries report it (cuDriverGetVersion's 12080 is 12.8).
public struct CUDAVersion: Comparable, CustomStringConvertible, Sendable, Codable {
    public var major: Int
    public var minor: Int
    public init(major: Int, minor: Int) { self.major = major; self.minor = minor }
    /// From the driver's encoding 1000 * major + 10 * minor.
    public init(encoded: Int) { self.init(major: encoded / 1000, minor: (encoded % 1000) / 10) }
    public var description: String { "\(major).\(minor)" }
    public static func < (a: CUDAVersion, b: CUDAVersion) -> Bool { (a.major, a.minor) < (b.major, b.minor) }
}

/// Every failure of the CUDA backend, each saying which library or call failed and what to do about it.
public enum CUDAError: Error, CustomStringConvertible, Equatable {
    /// A library could not be opened. `why` says what its absence means, `fix` what to do.
    case libraryNotFound(library: String, why: String, fix: String)
    /// The library opened but lacks an entry point this code uses (it is too old or not the real library).
    case missingSymbol(library: String, symbol: String)
    /// A call returned an error code.
    case callFailed(call: String, code: Int, message: String)
    /// The driver is older than the CUDA version the loaded libraries or kernels need.
    case driverTooOld(driver: CUDAVersion, needed: CUDAVersion, neededBy: String)
    /// The driver loaded but sees no GPU.
    case noDevice
    /// The GPU is older than the kernels support (bf16 tensor cores need compute capability 8.0).
    case unsupportedDevice(name: String, computeCapability: String)
    /// An allocation that cannot fit.
    case outOfMemory(needed: Int, free: Int, total: Int)
    /// NVRTC rejected a kernel file; `log` is its message.
    case compileFailed(file: String, architecture: String, log: String)
    /// The kernel sources (the package's resource folder) were not found.
    case kernelSourcesNotFound(searched: [String])
    /// A compiled module has no kernel of that name.
    case kernelNotFound(name: String, file: String)

    public var description: String {
        switch self {
        case let .libraryNotFound(library, why, fix):
            return "\(library) not found: \(why); \(fix)"
        case let .missingSymbol(library, symbol):
            return "\(library) has no \(symbol): the library is too old or not the NVIDIA one; install a CUDA 12 or 13 release of it"
        case let .callFailed(call, code, message):
            return "\(call) failed (\(code)): \(message)"
        case let .driverTooOld(driver, needed, neededBy):
            return "NVIDIA driver \(driver) is older than the \(needed) \(neededBy) needs: update the driver, or run on the CPU with --device cpu"
        case .noDevice:
            return "the NVIDIA driver is installed but sees no GPU (check nvidia-smi and CUDA_VISIBLE_DEVICES); run on the CPU with --device cpu"
        case let .unsupportedDevice(name, cc):
            return "\(name) has compute capability \(cc); the CUDA kernels need 8.0 or newer (Ampere, Ada, Hopper, Blackwell); run on the CPU with --device cpu"
        case let .outOfMemory(needed, free, total):
            return "out of GPU memory: needs \(CUDAError.gib(needed)), \(CUDAError.gib(free)) free of \(CUDAError.gib(total)); use a smaller size, fewer frames, compact (bf16/fp8) weights, or close other GPU programs"
        case let .compileFailed(file, architecture, log):
            return "NVRTC could not compile \(file) for \(architecture):\n\(log)"
        case let .kernelSourcesNotFound(searched):
            return "the CUDA kernel sources (WanKit_WanCUDA.resources/Kernels) were not found in \(searched.joined(separator: ", ")); keep that folder beside the wan binary or set WANKIT_CUDA_KERNELS"
        case let .kernelNotFound(name, file):
            return "kernel \(name) is not in \(file)"
        }
    }

    /// An allocation or a job that does not fit in the GPU's memory.
    public var isOutOfMemory: Bool { if case .outOfMemory = self { return true } else { return false } }

    static func gib(_ bytes: Int) -> String { String(format: "%.2f GiB", Double(bytes) / 1_073_741_824) }
}
