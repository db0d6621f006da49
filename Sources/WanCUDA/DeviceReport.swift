import Foundation

/// What `wan devices` prints: the driver, the GPUs, NVRTC, cuBLASLt and the kernels' compile status, each part
/// either found (with its details) or missing (with the reason). Gathering it never throws.
public struct DeviceReport: Codable {
    public struct KernelStatus: Codable {
        public var module: String
        public var architecture: String
        /// "compiled", "cached", "loaded (compiled)", "loaded (cached)", or "failed".
        public var status: String
        public var seconds: Double
        public var error: String?
    }

    /// What `--device auto` resolves to, in one line.
    public var auto: String
    public var driverVersion: String?
    public var driverError: String?
    public var gpus: [GPUInfo] = []
    public var nvrtcVersion: String?
    public var nvrtcPath: String?
    public var nvrtcError: String?
    public var cublasLtPath: String?
    public var cublasLtVersion: Int?
    public var cublasLtError: String?
    /// cuDNN 9 (optional: the DiT's fused attention, `--attention cudnn|auto`).
    public var cudnnVersion: String?
    public var cudnnPath: String?
    public var cudnnError: String?
    public var kernelSources: String?
    public var kernelCache: String?
    public var kernels: [KernelStatus] = []
    public var selfTest: [SelfTestResult]?

    /// Probes everything. Kernels are compiled for the first supported GPU (and loaded onto it), plus `architectures`
    /// (compile only: "sm_90" works without a GPU). `selfTest` runs every kernel against a CPU reference on the GPU.
    public static func gather(architectures: [String] = [], selfTest: Bool = false) -> DeviceReport {
        var report = DeviceReport(auto: (try? ComputeDevice.auto.resolve()).map { "\($0)" } ?? "cpu")
        var context: CUDAContext?
        do {
            let driver = try CUDADriver.load()
            report.driverVersion = driver.version.description
            report.gpus = try driver.devices()
            if let gpu = report.gpus.first(where: \.isSupported) { context = try CUDAContext(ordinal: gpu.ordinal) }
        } catch {
            report.driverError = "\(error)"
        }
        var compiler: KernelCompiler?
        do {
            let nvrtc = try NVRTC.load()
            report.nvrtcVersion = nvrtc.version.description
            report.nvrtcPath = nvrtc.path
            let sources = try KernelSources.load()
            report.kernelSources = sources.directory
            compiler = try KernelCompiler(nvrtc: nvrtc, sources: sources)
            report.kernelCache = compiler?.cacheDirectory
        } catch {
            if report.nvrtcVersion == nil { report.nvrtcError = "\(error)" } else { report.kernelSources = "\(error)" }
        }
        if context != nil {
            do {
                let cublas = try CublasLt()
                report.cublasLtPath = cublas.path
                report.cublasLtVersion = cublas.version
            } catch { report.cublasLtError = "\(error)" }
        } else if let path = CublasLt.locate() {
            report.cublasLtPath = path
        } else {
            report.cublasLtError = "libcublasLt.so.13 / libcublasLt.so.12 not found"
        }

        do {
            let cudnn = try CuDNN.load()
            report.cudnnVersion = cudnn.versionString
            report.cudnnPath = cudnn.path
        } catch { report.cudnnError = "\(error)" }

        if let compiler {
            var targets = architectures
            if let context, !targets.contains(context.info.architecture) { targets.insert(context.info.architecture, at: 0) }
            for architecture in targets {
                for module in compiler.sources.moduleNames {
                    let start = Date()
                    var status = KernelStatus(module: module, architecture: architecture, status: "failed", seconds: 0, error: nil)
                    do {
                        let onDevice = context != nil && architecture == context!.info.architecture
                        if onDevice {
                            let (image, cached, _) = try compiler.image(module: module, architecture: architecture)
                            _ = try context!.loadModule(image: image, name: module)
                            status.status = cached ? "loaded (cached)" : "loaded (compiled)"
                        } else {
                            let (_, cached, _) = try compiler.image(module: module, architecture: architecture)
                            status.status = cached ? "cached" : "compiled"
                        }
                    } catch { status.error = "\(error)" }
                    status.seconds = Date().timeIntervalSince(start)
                    report.kernels.append(status)
                }
            }
            if selfTest, let context {
                report.selfTest = KernelSelfTest(context: context, compiler: compiler).runAll()
            }
        }
        return report
    }

    /// The human-readable form.
    public var text: String {
        var lines: [String] = []
        lines.append("device auto: \(auto)")
        if let driverVersion {
            lines.append("NVIDIA driver: CUDA \(driverVersion)")
        } else {
            lines.append("NVIDIA driver: \(driverError ?? "unknown")")
        }
        for gpu in gpus {
            lines.append(String(format: "  GPU %d: %@, compute capability %@ (%@), %.1f GiB, %d SMs%@", gpu.ordinal, gpu.name,
                                gpu.computeCapability, gpu.architecture, Double(gpu.totalMemory) / 1_073_741_824,
                                gpu.multiprocessors, gpu.isSupported ? (FP8Products.supported(gpu) ? "; fp8 products (--fp8-products)" : "")
                                    : " — not supported (needs 8.0+)"))
        }
        lines.append("NVRTC: " + (nvrtcVersion.map { "\($0) (\(nvrtcPath ?? ""))" } ?? (nvrtcError ?? "unknown")))
        lines.append("cuBLASLt: " + (cublasLtPath.map { p in cublasLtVersion.map { "\($0) (\(p))" } ?? "found (\(p))" } ?? (cublasLtError ?? "unknown")))
        lines.append("cuDNN (optional, fused attention): " + (cudnnVersion.map { "\($0) (\(cudnnPath ?? ""))" } ?? (cudnnError ?? "unknown")))
        if let kernelSources { lines.append("kernel sources: \(kernelSources)") }
        if kernels.isEmpty {
            lines.append("kernels: not compiled (no supported GPU; --arch sm_90 compiles them without one)")
        } else {
            for kernel in kernels {
                let detail = kernel.error.map { "failed: \($0)" } ?? String(format: "%@ in %.2f s", kernel.status, kernel.seconds)
                lines.append("  \(kernel.module) \(kernel.architecture): \(detail)")
            }
        }
        for result in selfTest ?? [] { lines.append("  self-test \(result)") }
        return lines.joined(separator: "\n")
    }

    /// True when something the caller asked for failed (a kernel that did not compile or a self-test failure).
    public var hasFailures: Bool {
        kernels.contains { $0.error != nil } || (selfTest ?? []).contains { !$0.passed }
    }
}
