import ArgumentParser
import Foundation
import WanCUDA

/// `wan devices`: what the CUDA backend finds on this machine (driver, GPUs, NVRTC, cuBLASLt, kernels), or the one
/// line that says why `--device auto` runs on the CPU.
struct Devices: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the GPUs and CUDA libraries WanKit finds, and compile its CUDA kernels for them.")
    @Option(name: .customLong("arch"), parsing: .upToNextOption,
            help: "Also compile the kernels for these architectures (e.g. sm_80 sm_90); works without a GPU when NVRTC is installed.")
    var architectures: [String] = []
    @Flag(help: "On a GPU, run every kernel against a CPU reference and report the errors.") var selfTest = false
    @Flag(help: "One JSON object instead of text.") var json = false

    func run() throws {
        let report = DeviceReport.gather(architectures: architectures, selfTest: selfTest)
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else if report.gpus.isEmpty && report.kernels.isEmpty {
            print(report.auto)  // no GPU: the one-line reason
        } else {
            print(report.text)
        }
        if report.hasFailures { throw ExitCode(1) }
    }
}
