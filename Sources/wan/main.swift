import ArgumentParser
import Foundation
import WanKit

struct Wan: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wan",
        abstract: "WanKit: the Wan2.1 video generation models in Swift.",
        version: "WanKit \(WanKitVersion.string)",
        subcommands: [Generate.self, Conformance.self, Bench.self, Info.self, Download.self, Devices.self])
}

struct Conformance: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the golden parity cases of a folder (../shared/golden format).")
    @Argument(help: "Golden folder (holding cases/ and weights/).") var directory: String
    @Option(help: "Only cases whose name contains this text.") var filter: String?
    @Option(help: "cpu, cuda or auto: cuda runs the DiT cases on the GPU (other components are skipped).") var device: String = "cpu"
    @Option(help: "bf16 (passes at rel_l2 2e-2, printed per case; on the CPU: bf16 products for the DiT, umT5 and CLIP) or f32 (TF32 off; the case files' tolerances). Default: bf16 on a GPU, f32 on the CPU.") var precision: String?
    @Flag(help: "With --device cuda (bf16, compute capability 8.9+): DiT matrices stored as fp8 e4m3 run as cuBLASLt fp8 products (the activations quantised to e4m3).") var fp8Products = false

    func run() throws {
        let runner = ConformanceRunner(goldenDirectory: directory)
        guard FileManager.default.fileExists(atPath: runner.casesDirectory) else {
            throw ValidationError("\(directory) has no cases/ folder: pass the golden folder (e.g. ../shared/golden)")
        }
        if let line = try CUDABackend.configure(runner, device: device, precision: precision, fp8Products: fp8Products) { print(line) }
        let counts = try runner.run(filter: filter) { result in
            print(result)
            fflush(stdout)
        }
        print("\(counts.passed) passed, \(counts.failed) failed, \(counts.skipped) skipped")
        if counts.failed > 0 { throw ExitCode(1) }
    }
}

/// The engine is built for x86-64-v3; say so plainly on an older CPU instead of dying on an illegal instruction.
func checkCPU() {
    #if arch(x86_64) && os(Linux)
    guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
          let flagsLine = info.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else { return }
    let flags = Set(flagsLine.split(separator: " ").map(String.init))
    let missing = ["avx2", "fma", "f16c"].filter { !flags.contains($0) }
    if !missing.isEmpty {
        FileHandle.standardError.write("wan: this CPU lacks \(missing.joined(separator: ", ")); WanKit needs an x86-64-v3 CPU (AVX2 and FMA, 2015 or later)\n".data(using: .utf8)!)
        exit(2)
    }
    #endif
}

checkCPU()
Wan.main()
