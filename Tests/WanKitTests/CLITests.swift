import Foundation
import XCTest
import WanKit

/// The `wan` command line, run as a user runs it (the built executable, real files, real ffmpeg).
final class CLITests: XCTestCase {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    /// The `wan` built beside this test binary (whatever the scratch path), else .build/release/wan.
    static var wan: String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        let beside = (exe as NSString).deletingLastPathComponent + "/wan"
        return FileManager.default.isExecutableFile(atPath: beside) ? beside : packageRoot + "/.build/release/wan"
    }
    static var weights: String { goldenDirectory + "/weights" }

    /// Runs `wan` with `args`; `environment` adds variables (WANKIT_CUDA_EMULATOR is removed unless given there).
    func run(_ args: [String], interruptAfter: Double? = nil, environment extra: [String: String] = [:]) throws -> (status: Int32, stdout: String, stderr: String) {
        guard FileManager.default.isExecutableFile(atPath: Self.wan) else { throw XCTSkip("build the wan executable first (swift build -c release)") }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.wan)
        p.arguments = args
        var environment = ProcessInfo.processInfo.environment
        environment["WANKIT_CUDA_EMULATOR"] = nil
        for (k, v) in extra { environment[k] = v }
        p.environment = environment
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        if let delay = interruptAfter {
            Thread.sleep(forTimeInterval: delay)
            kill(p.processIdentifier, SIGINT)
        }
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    func tinyModelArgs() throws -> [String] {
        guard FileManager.default.fileExists(atPath: Self.weights + "/pipe_dit_t2v.safetensors") else { throw XCTSkip("golden data not found") }
        return ["--dit", Self.weights + "/pipe_dit_t2v.safetensors", "--t5", Self.weights + "/pipe_t5.safetensors",
                "--vae", Self.weights + "/pipe_vae.safetensors", "--tokenizer", goldenDirectory + "/tokenizer"]
    }

    func temporaryFolder() throws -> String {
        let dir = NSTemporaryDirectory() + "wankit-cli-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    func probe(_ path: String) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/ffprobe")
        p.arguments = ["-v", "error", "-count_frames", "-show_entries", "stream=codec_name,pix_fmt,width,height,nb_read_frames,r_frame_rate",
                       "-of", "default=noprint_wrappers=1", path]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }

    func testGenerateWritesAPlayableMP4WithSidecar() throws {
        let dir = try temporaryFolder()
        let output = dir + "/cat.mp4"
        let r = try run(["generate"] + tinyModelArgs() + ["--prompt", "A cat walks on the grass", "--size", "48x32", "--frames", "9",
                                                          "--steps", "3", "--seed", "42", "--output", output])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("[denoise] 3/3"), r.stderr)
        XCTAssertTrue(r.stderr.contains("[decode] 3/3"), r.stderr)
        let info = try probe(output)
        XCTAssertTrue(info.contains("codec_name=h264"), info)
        XCTAssertTrue(info.contains("pix_fmt=yuv420p"), info)
        XCTAssertTrue(info.contains("width=48") && info.contains("height=32"), info)
        XCTAssertTrue(info.contains("nb_read_frames=9"), info)
        XCTAssertTrue(info.contains("r_frame_rate=16/1"), info)
        let sidecar = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: output + ".json"))) as? [String: Any]
        XCTAssertEqual(sidecar?["seed"] as? Int, 42)
        XCTAssertEqual(sidecar?["prompt"] as? String, "A cat walks on the grass")
        XCTAssertTrue((sidecar?["device"] as? String)?.hasPrefix("cpu") ?? false, "\(String(describing: sidecar))")
        XCTAssertEqual(sidecar?["generator"] as? String, "WanKit \(WanKitVersion.string)")
        let version = try run(["--version"])
        XCTAssertEqual(version.status, 0, version.stderr)
        XCTAssertEqual(version.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "WanKit \(WanKitVersion.string)")
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains("partial") }
        XCTAssertEqual(leftovers, [])
    }

    func testSameSeedGivesTheSameVideo() throws {
        let dir = try temporaryFolder()
        for name in ["a", "b"] {
            let r = try run(["generate"] + tinyModelArgs() + ["--prompt", "fireworks", "--size", "48x32", "--frames", "1", "--steps", "2",
                                                              "--seed", "7", "--output", "\(dir)/\(name).png"])
            XCTAssertEqual(r.status, 0, r.stderr)
        }
        let a = try Data(contentsOf: URL(fileURLWithPath: dir + "/a.png")), b = try Data(contentsOf: URL(fileURLWithPath: dir + "/b.png"))
        XCTAssertEqual(a, b)
        XCTAssertEqual(Array(a.prefix(4)), [0x89, 0x50, 0x4E, 0x47])  // PNG signature
    }

    func testAPromptPastWhatUMT5ReadsIsNoted() throws {
        let dir = try temporaryFolder()
        let long = String(repeating: "cat ", count: 700)
        let r = try run(["generate"] + tinyModelArgs() + ["--prompt", long, "--size", "32x32", "--frames", "1", "--steps", "1",
                                                          "--output", dir + "/long.png"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("note: the prompt is 1401 tokens; umT5 reads its first 512"), r.stderr)
        XCTAssertFalse(r.stderr.contains("note: the negative prompt is"), r.stderr)
        let short = try run(["generate"] + tinyModelArgs() + ["--prompt", "cat", "--size", "32x32", "--frames", "1", "--steps", "1",
                                                              "--output", dir + "/short.png"])
        XCTAssertEqual(short.status, 0, short.stderr)
        XCTAssertFalse(short.stderr.contains("umT5 reads its first"), short.stderr)
    }

    func testBadInputsGiveClearErrorsAndNoOutput() throws {
        let dir = try temporaryFolder()
        let output = dir + "/x.mp4"
        var r = try run(["generate"] + tinyModelArgs() + ["--prompt", "x", "--frames", "6", "--size", "48x32", "--output", output])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("4n+1"), r.stderr)
        r = try run(["generate", "--dit", "/nonexistent/dit.safetensors", "--t5", "/n/t5.pth", "--vae", "/n/vae.pth", "--tokenizer", "/n/tok",
                     "--prompt", "x", "--size", "48x32", "--frames", "1", "--output", dir + "/x.png"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("/nonexistent/dit.safetensors"), r.stderr)
        r = try run(["generate"] + tinyModelArgs() + ["--prompt", "x", "--size", "50x32", "--frames", "1", "--output", dir + "/y.png"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("multiples of 16"), r.stderr)
        r = try run(["generate"] + tinyModelArgs() + ["--prompt", "x", "--output", dir + "/z.avi"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains(".mp4"), r.stderr)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [])
    }

    func testImageInputErrors() throws {
        let dir = try temporaryFolder()
        let args = ["--dit", Self.weights + "/pipe_dit_i2v.safetensors", "--t5", Self.weights + "/pipe_t5.safetensors",
                    "--vae", Self.weights + "/pipe_vae.safetensors", "--tokenizer", goldenDirectory + "/tokenizer",
                    "--prompt", "x", "--size", "48x32", "--frames", "5", "--output", dir + "/i.mp4"]
        guard FileManager.default.fileExists(atPath: Self.weights + "/pipe_dit_i2v.safetensors") else { throw XCTSkip("golden data not found") }
        var r = try run(["generate"] + args + ["--image", dir + "/missing.png"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("input file not found"), r.stderr)
        try Data("not a picture".utf8).write(to: URL(fileURLWithPath: dir + "/bad.png"))
        r = try run(["generate"] + args + ["--image", dir + "/bad.png"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("cannot read") && r.stderr.contains("bad.png"), r.stderr)
        r = try run(["generate"] + args + ["--last-image", dir + "/bad.png"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("--last-image needs --image"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/i.mp4"))
    }

    func testInterruptLeavesNoFile() throws {
        let dir = try temporaryFolder()
        let r = try run(["generate"] + tinyModelArgs() + ["--prompt", "x", "--size", "256x256", "--frames", "9", "--steps", "1000",
                                                          "--output", dir + "/long.mp4"], interruptAfter: 2.5)
        XCTAssertEqual(r.status, 130, r.stderr)
        XCTAssertTrue(r.stderr.contains("interrupted"), r.stderr)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [])
    }

    func testConformanceCommandSummaryLine() throws {
        guard FileManager.default.fileExists(atPath: goldenDirectory) else { throw XCTSkip("golden data not found") }
        let r = try run(["conformance", goldenDirectory, "--filter", "dit_t2v_basic"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("PASS dit_t2v_basic rel_l2="), r.stdout)
        XCTAssertTrue(r.stdout.hasSuffix("1 passed, 0 failed, 0 skipped\n"), r.stdout)
        // bf16 products on the CPU: the header says so, the case passes at rel_l2 2e-2 with a larger error than f32's.
        guard GEMM.supportsBF16 else { return }  // AVX2-only CPUs refuse it (CLIDeviceTests)
        let bf16 = try run(["conformance", goldenDirectory, "--filter", "dit_t2v_basic", "--precision", "bf16"])
        XCTAssertEqual(bf16.status, 0, bf16.stderr)
        XCTAssertTrue(bf16.stdout.hasPrefix("device cpu, bf16 products"), bf16.stdout)
        XCTAssertTrue(bf16.stdout.hasSuffix("1 passed, 0 failed, 0 skipped\n"), bf16.stdout)
        func relL2(_ text: String) -> Double? {
            guard let r = text.range(of: "rel_l2=") else { return nil }
            return Double(text[r.upperBound...].prefix(while: { !$0.isWhitespace }))
        }
        let f32Error = try XCTUnwrap(relL2(r.stdout)), bf16Error = try XCTUnwrap(relL2(bf16.stdout))
        XCTAssertGreaterThan(bf16Error, 10 * f32Error)
        XCTAssertLessThan(bf16Error, 2e-2)
    }
}

extension CLITests {
    /// `wan info` names what a file or folder is, whichever part of Wan2.1 it holds, in any layout, and refuses what
    /// is none of them with the reader's error.
    func testInfoDescribesEveryPart() throws {
        guard FileManager.default.fileExists(atPath: Self.weights + "/t5.safetensors") else { throw XCTSkip("golden data not found") }
        let variants = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Variants/weights").path
        let expectations: [(String, [String])] = [
            (Self.weights + "/dit_t2v_q4_0.gguf", ["layout:     gguf", "Q4_0", "task:       t2v"]),
            (Self.weights + "/dit_vace.safetensors", ["task:       vace", "vace blocks after layers [0]"]),
            (Self.weights + "/dit_t2v_diffusers", ["model folder:", "layout:     diffusers", "heads from config.json"]),
            (Self.weights + "/t5.safetensors", ["part:       umT5 text encoder", "umT5(vocab 512, dim 64, dim_attn 64, dim_ffn 128, 4 heads, 3 layers"]),
            (Self.weights + "/t5_bf16.pth", ["layout:     official-pth", "BF16", "part:       umT5"]),
            (Self.weights + "/t5_hf", ["layout:     hf-transformers", "part:       umT5"]),
            (variants + "/v_t5_gguf.gguf", ["layout:     gguf", "general.architecture=\"t5encoder\"", "Q8_0", "Q4_0", "part:       umT5"]),
            (Self.weights + "/vae.pth", ["part:       Wan-VAE", "Wan-VAE dim 8, z_dim 16"]),
            (Self.weights + "/clip_visual_hf", ["part:       CLIP image encoder", "mlp 256"]),
        ]
        for (path, lines) in expectations {
            let r = try run(["info", path])
            XCTAssertEqual(r.status, 0, path + ": " + r.stderr)
            for line in lines { XCTAssertTrue(r.stdout.contains(line), "\(path): no '\(line)' in\n\(r.stdout)") }
        }
        let dir = try temporaryFolder()
        let junk = dir + "/notes.safetensors"
        try Data("not a checkpoint".utf8).write(to: URL(fileURLWithPath: junk))
        let bad = try run(["info", junk])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains(junk), bad.stderr)
    }
}
