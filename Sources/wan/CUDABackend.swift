import ArgumentParser
import Foundation
import WanKit
import WanCUDA

/// `--device` / `--precision` for the commands that can run the DiT on a GPU.
enum CUDABackend {
    /// bf16 on the GPU passes the golden cases at this rel_l2 (issue #10).
    static let bf16RelL2 = 2e-2

    static func precision(_ text: String) throws -> CUDAPrecision {
        guard let p = CUDAPrecision(rawValue: text.lowercased()) else { throw ValidationError("--precision must be bf16 or f32, got \(text)") }
        return p
    }

    /// The GPU for `--device cuda` (or `auto`), or nil for the CPU. `cuda` without a usable GPU exits with the
    /// one-line reason.
    static func resolve(_ device: String, command: String) throws -> GPUInfo? {
        guard let choice = ComputeDevice(rawValue: device.lowercased()) else {
            throw ValidationError("--device must be auto, cpu or cuda, got \(device)")
        }
        do {
            switch try choice.resolve() {
            case .cuda(let gpu, _, _): return gpu
            case .cpu(let reason):
                if let reason { FileHandle.standardError.write("wan \(command): running on the CPU (no GPU: \(reason))\n".data(using: .utf8)!) }
                return nil
            }
        } catch let error as CUDAError {
            FileHandle.standardError.write("wan \(command) --device cuda cannot run: \(ComputeDevice.shortReason(error)); use --device cpu\n".data(using: .utf8)!)
            throw ExitCode(2)
        }
    }

    /// One line on stderr naming GPU-only flags given to a command that runs on the CPU (they have no effect there).
    static func noteGPUOnly(_ flags: [String], command: String) {
        guard !flags.isEmpty else { return }
        let verb = flags.count == 1 ? "has" : "have"
        FileHandle.standardError.write("wan \(command): \(flags.joined(separator: ", ")) \(verb) no effect on the CPU (fp8 matrices are dequantised tile by tile there)\n".data(using: .utf8)!)
    }

    /// `--device` / `--precision` as where a pipeline's DiT runs (the messages of `resolve`).
    /// `fp8Products` (`--fp8-products`): refused here, with the reason, on a GPU below compute capability 8.9 or
    /// without bf16; on the CPU a one-line note says it is ignored.
    static func placement(_ device: String, precision text: String?, command: String, fp8Products: Bool = false) throws -> DiTPlacement {
        guard let gpu = try resolve(device, command: command) else {
            noteGPUOnly(fp8Products ? ["--fp8-products"] : [], command: command)
            return try cpuPlacement(text)
        }
        let precision = try precision(text ?? "bf16")
        if fp8Products { try checkFP8(gpu, precision: precision, command: command) }
        return DiTPlacement(gpu: try CUDAContext(ordinal: gpu.ordinal), precision: precision, fp8Products: fp8Products)
    }

    /// `--precision` on the CPU: bf16 products by default where the CPU has native bf16 instructions (`GEMM.nativeBF16`,
    /// about twice the f32 rate), else f32.
    static func cpuPlacement(_ text: String?) throws -> DiTPlacement {
        guard let text else { return .cpuDefault }
        guard try precision(text) == .bf16 else { return .cpu }
        try requireCPUBF16()
        return .cpuBF16
    }

    /// `--precision bf16` on a CPU whose oneDNN has no bf16 products (AVX2 only): a clear refusal.
    static func requireCPUBF16() throws {
        if !GEMM.supportsBF16 {
            throw ValidationError("--precision bf16 on the CPU needs AVX-512 (oneDNN has no bf16 products on this CPU); use --precision f32")
        }
    }

    /// `--fp8-products` on `gpu`: a clear error where it cannot run (compute capability below 8.9, or not bf16).
    static func checkFP8(_ gpu: GPUInfo, precision: CUDAPrecision, command: String) throws {
        if let refusal = FP8Products.refusal(gpu, precision: precision) { throw ValidationError("wan \(command) --fp8-products: \(refusal)") }
    }

    /// Points the runner's DiT (VACE included), umT5 and VAE cases (and the pipelines' DiT and umT5) at the GPU for `--device cuda`; returns the line that says so (nil: CPU).
    /// On the CPU, `--precision bf16` runs the DiT, VACE, umT5 and CLIP with bf16 products (the VAE stays f32), every
    /// output passing at rel_l2 2e-2; the default there is f32 at the case files' tolerances.
    static func configure(_ runner: ConformanceRunner, device: String, precision text: String?, fp8Products: Bool = false) throws -> String? {
        guard let gpu = try resolve(device, command: "conformance") else {
            noteGPUOnly(fp8Products ? ["--fp8-products"] : [], command: "conformance")
            guard try text.map(precision) == .bf16 else { return nil }
            try requireCPUBF16()
            runner.cpuProducts = .bf16
            runner.relL2Override = bf16RelL2
            return "device cpu, bf16 products (the DiT, umT5 and CLIP; the VAE in f32)" + (GEMM.nativeBF16 ? "" : " (emulated: this CPU has no AVX512-BF16)")
                + ", every output passes at rel_l2 \(bf16RelL2)"
        }
        let precision = try precision(text ?? "bf16")
        if fp8Products { try checkFP8(gpu, precision: precision, command: "conformance") }
        let context = try CUDAContext(ordinal: gpu.ordinal)
        let compiler = try KernelCompiler()
        runner.backendName = "cuda"
        runner.ditFactory = { config, weights in
            try CUDADiT(config: config, weights: weights, precision: precision, context: context, compiler: compiler, fp8Products: fp8Products)
        }
        runner.vaceFactory = { config, weights in
            try CUDAVACE(config: config, weights: weights, precision: precision, context: context, compiler: compiler, fp8Products: fp8Products)
        }
        runner.t5Factory = { config, weights in
            try CUDAUMT5(config: config, weights: weights, precision: precision, context: context, compiler: compiler)
        }
        runner.clipFactory = { config, weights in
            try CUDACLIP(config: config, weights: weights, precision: precision, context: context, compiler: compiler)
        }
        // The VAE cases run on the GPU too, at the same precision (bf16: the products of its 3x3 and temporal convs).
        runner.vaeFactory = { config, weights in try CUDAVAE(config: config, weights: weights, precision: precision, context: context, compiler: compiler) }
        if precision == .bf16 { runner.relL2Override = bf16RelL2 }
        return "device cuda:\(gpu.ordinal) \(gpu.name) (compute capability \(gpu.computeCapability)), precision \(precision.rawValue)"
            + (fp8Products ? ", fp8 products for e4m3-stored matrices" : "")
            + (precision == .bf16 ? ", every output passes at rel_l2 \(bf16RelL2)" : ", the case files' tolerances")
    }
}
