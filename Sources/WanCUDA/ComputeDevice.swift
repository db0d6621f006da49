import Foundation

/// Where the work runs: `--device auto|cpu|cuda`.
public enum ComputeDevice: String, CaseIterable, Sendable {
    /// A working NVIDIA GPU if there is one, else the CPU (saying why in one line).
    case auto
    case cpu
    case cuda

    /// What a device choice resolved to.
    public enum Resolved: CustomStringConvertible {
        /// The CPU; `reason` says why when a GPU was wanted but is not usable (nil when the CPU was asked for).
        case cpu(reason: String?)
        /// GPU `gpu`, with the driver and NVRTC checked.
        case cuda(gpu: GPUInfo, driver: CUDAVersion, nvrtc: CUDAVersion)

        public var description: String {
            switch self {
            case .cpu(let reason?): return "cpu (no GPU: \(reason))"
            case .cpu(nil): return "cpu"
            case let .cuda(gpu, driver, nvrtc):
                return "cuda:\(gpu.ordinal) \(gpu.name) (compute capability \(gpu.computeCapability), driver \(driver), NVRTC \(nvrtc))"
            }
        }

        public var isCUDA: Bool { if case .cuda = self { return true } else { return false } }
    }

    /// `auto`: the first supported GPU, or the CPU with the reason none is usable. `cuda`: the same GPU, or the error
    /// that says what is missing and how to fix it. `cpu`: the CPU.
    public func resolve() throws -> Resolved {
        switch self {
        case .cpu: return .cpu(reason: nil)
        case .cuda: return try ComputeDevice.firstUsableGPU()
        case .auto:
            do { return try ComputeDevice.firstUsableGPU() } catch let error as CUDAError {
                return .cpu(reason: ComputeDevice.shortReason(error))
            }
        }
    }

    /// Checks the driver, the GPUs, NVRTC (the kernels cannot be built without it) and cuBLASLt, in that order.
    static func firstUsableGPU() throws -> Resolved {
        let driver = try CUDADriver.load()
        let gpus = try driver.devices()
        guard !gpus.isEmpty else { throw CUDAError.noDevice }
        guard let gpu = gpus.first(where: \.isSupported) else {
            throw CUDAError.unsupportedDevice(name: gpus[0].name, computeCapability: gpus[0].computeCapability)
        }
        let nvrtc = try NVRTC.load()
        try checkDriver(driver.version, against: nvrtc)
        guard CublasLt.isAvailable else { throw CublasLt.notFound }
        return .cuda(gpu: gpu, driver: driver.version, nvrtc: nvrtc.version)
    }

    /// A cubin built by NVRTC X.Y loads on a driver of the same major version or newer (CUDA's minor-version
    /// compatibility); an older major version cannot load it.
    static func checkDriver(_ driver: CUDAVersion, against nvrtc: NVRTC) throws {
        if driver.major < nvrtc.version.major {
            throw CUDAError.driverTooOld(driver: driver, needed: CUDAVersion(major: nvrtc.version.major, minor: 0),
                                         neededBy: "\((nvrtc.path as NSString).lastPathComponent) (NVRTC \(nvrtc.version))")
        }
    }

    /// The error's first sentence, for the one-line "running on the CPU" note.
    public static func shortReason(_ error: CUDAError) -> String {
        let text = error.description
        if let cut = text.range(of: "; run on the CPU") { return String(text[..<cut.lowerBound]) }
        if let cut = text.range(of: ", or run on the CPU") { return String(text[..<cut.lowerBound]) }
        return text.split(separator: "\n").first.map(String.init) ?? text
    }
}
