import Foundation
import XCTest
import WanKit

/// `wan bench t5|clip --device cuda`: umT5 (`CUDAUMT5`) and the CLIP tower (`CUDACLIP`) on the emulated GPU
/// (WANKIT_CUDA_EMULATOR=1), in the hidden tiny shapes (the real ones are far too slow on the emulator): the JSON
/// lines carry the CPU bench's keys plus the device fields.
extension CLITests {
    static let encoderBenchDeviceKeys = ["device", "gpu", "precision", "upload_seconds", "warmup_seconds", "weight_bytes",
                                         "peak_gpu_bytes", "allocated_peak_bytes", "total_gpu_bytes"]

    func jsonLines(_ text: String) throws -> [[String: Any]] {
        try text.split(separator: "\n").map { line in
            guard let obj = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                throw NSError(domain: "BenchEncodersCLITests", code: 1, userInfo: [NSLocalizedDescriptionKey: "not a JSON object: \(line)"])
            }
            return obj
        }
    }

    func testBenchT5AndCLIPRunOnTheEmulatedGPU() throws {
        do { _ = try NVRTC.load() } catch { throw XCTSkip("NVRTC not available (the emulator compiles the kernels): \(error)") }
        let dir = try temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cases: [(command: String, args: [String], index: String)] = [
            ("t5", ["--tokens", "24", "--prompts", "2"], "prompt"),
            ("clip", ["--size", "64x48", "--images", "2"], "image"),
        ]
        for c in cases {
            let common = ["bench", c.command, "--tiny", "--json", "--directory", dir] + c.args
            let cpu = try run(common)
            XCTAssertEqual(cpu.status, 0, cpu.stderr)
            let cpuLines = try jsonLines(cpu.stdout)
            XCTAssertEqual(cpuLines.count, 2, cpu.stdout)
            for precision in ["f32", "bf16"] {
                let gpu = try run(common + ["--device", "cuda", "--precision", precision], environment: ["WANKIT_CUDA_EMULATOR": "1"])
                XCTAssertEqual(gpu.status, 0, gpu.stderr)
                let lines = try jsonLines(gpu.stdout)
                XCTAssertEqual(lines.count, 2, gpu.stdout)
                for (i, obj) in lines.enumerated() {
                    let context = "\(c.command) \(precision): \(obj)"
                    for key in cpuLines[0].keys { XCTAssertNotNil(obj[key], "CPU key \(key) missing; " + context) }
                    for key in Self.encoderBenchDeviceKeys { XCTAssertNotNil(obj[key], "device key \(key) missing; " + context) }
                    XCTAssertEqual(obj["device"] as? String, "cuda:0", context)
                    XCTAssertEqual(obj["gpu"] as? String, "WanKit CUDA emulator (CPU)", context)
                    XCTAssertEqual(obj["precision"] as? String, precision, context)
                    XCTAssertEqual(obj[c.index] as? Int, i, context)
                    XCTAssertEqual(obj["layers"] as? Int, 2, context)
                    XCTAssertEqual(obj["finite"] as? Bool, true, context)
                    XCTAssertGreaterThan(obj["seconds"] as? Double ?? 0, 0, context)
                    XCTAssertGreaterThan(obj["warmup_seconds"] as? Double ?? 0, 0, context)
                    XCTAssertGreaterThanOrEqual(obj["upload_seconds"] as? Double ?? -1, 0, context)
                    let weights = obj["weight_bytes"] as? Int ?? 0
                    XCTAssertGreaterThan(weights, 0, context)
                    XCTAssertGreaterThan(obj["allocated_peak_bytes"] as? Int ?? 0, weights, context)
                    XCTAssertGreaterThanOrEqual(obj["peak_gpu_bytes"] as? Int ?? -1, 0, context)
                    XCTAssertGreaterThan(obj["total_gpu_bytes"] as? Int ?? 0, 0, context)
                }
                if c.command == "clip" { XCTAssertEqual(lines[0]["shape"] as? [Int], [1, 257, 128]) }
                if c.command == "t5" { XCTAssertEqual(lines[0]["tokens"] as? Int, 24) }
            }
        }
        // The text line names the GPU and the precision; the random checkpoints are gone.
        let text = try run(["bench", "t5", "--tiny", "--layers", "1", "--tokens", "8", "--prompts", "1", "--directory", dir, "--device", "cuda"],
                           environment: ["WANKIT_CUDA_EMULATOR": "1"])
        XCTAssertEqual(text.status, 0, text.stderr)
        XCTAssertTrue(text.stdout.hasPrefix("t5 umt5-128d(1 layers) 8 tokens, prompt 1 on WanKit CUDA emulator (CPU) (bf16): "), text.stdout)
        XCTAssertTrue(text.stdout.contains("peak GPU memory"), text.stdout)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [])
    }

    func testBenchEncodersRefuseCUDAWithoutAGPU() throws {
        if Self.machineHasGPU { throw XCTSkip("this machine has a GPU: --device cuda runs") }
        let dir = try temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for command in ["t5", "clip"] {
            let r = try run(["bench", command, "--tiny", "--json", "--directory", dir, "--device", "cuda"])
            XCTAssertEqual(r.status, 2, r.stderr)
            XCTAssertTrue(r.stderr.contains("wan bench \(command) --device cuda cannot run: "), r.stderr)
            XCTAssertEqual(r.stdout, "")
            let bad = try run(["bench", command, "--tiny", "--directory", dir, "--precision", "fp8"])
            XCTAssertNotEqual(bad.status, 0)
            XCTAssertTrue(bad.stderr.contains("--precision must be bf16 or f32"), bad.stderr)
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [])
    }
}
