import Foundation
import XCTest
import WanKit

/// `wan generate` for every task on the tiny golden models, to a playable MP4 (ffprobe: codec, size, frame count),
/// and the one-line errors of contradictory inputs.
extension CLITests {
    /// A PNG and small videos written by ffmpeg into `dir`.
    func writeInputs(_ dir: String) throws {
        try ffmpeg(["-f", "lavfi", "-i", "testsrc=size=56x40", "-frames:v", "1", dir + "/first.png"])
        try ffmpeg(["-f", "lavfi", "-i", "testsrc2=size=56x40", "-frames:v", "1", dir + "/last.png"])
        try ffmpeg(["-f", "lavfi", "-i", "testsrc=size=32x32:rate=16", "-frames:v", "9", "-pix_fmt", "yuv420p", dir + "/src.mp4"])
        // White (generate) on the right half, black (keep) on the left.
        try ffmpeg(["-f", "lavfi", "-i", "color=c=black:size=32x32:rate=16", "-vf", "drawbox=x=16:y=0:w=16:h=32:color=white:t=fill",
                    "-frames:v", "9", "-pix_fmt", "yuv420p", dir + "/mask.mp4"])
        try ffmpeg(["-f", "lavfi", "-i", "color=c=white:size=24x24:rate=16", "-frames:v", "9", dir + "/small.mp4"])
    }

    func textArgs() -> [String] {
        ["--t5", Self.weights + "/pipe_t5.safetensors", "--vae", Self.weights + "/pipe_vae.safetensors", "--tokenizer", goldenDirectory + "/tokenizer"]
    }

    /// CLIP features [n, 257, 1280] in a safetensors file (the tiny models have no 1280-wide CLIP).
    func writeClipFeatures(images n: Int) throws -> String {
        let count = n * 257 * 1280
        let values = (0..<count).map { Float(($0 * 37) % 101) / 101 - 0.5 }
        return try writeSafetensors(header: ["clip_features": ["dtype": "F32", "shape": [n, 257, 1280], "data_offsets": [0, count * 4]]],
                                    data: floats(values))
    }

    func assertPlayable(_ output: String, frames: Int, width: Int, height: Int, _ r: (status: Int32, stdout: String, stderr: String),
                        file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertEqual(r.status, 0, r.stderr, file: file, line: line)
        let info = try probe(output)
        XCTAssertTrue(info.contains("codec_name=h264"), info, file: file, line: line)
        XCTAssertTrue(info.contains("nb_read_frames=\(frames)"), info, file: file, line: line)
        XCTAssertTrue(info.contains("width=\(width)") && info.contains("height=\(height)"), info, file: file, line: line)
        XCTAssertTrue(FileManager.default.fileExists(atPath: output + ".json"), file: file, line: line)
        let folder = (output as NSString).deletingLastPathComponent
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder).filter { $0.contains("partial") }, [], file: file, line: line)
    }

    func requireTinyModels() throws {
        guard FileManager.default.fileExists(atPath: Self.weights + "/dit_vace.safetensors") else { throw XCTSkip("golden data not found") }
    }

    func testImageToVideoFromTheCLIWithPrecomputedClipFeatures() throws {
        try requireTinyModels()
        let dir = try temporaryFolder()
        try writeInputs(dir)
        let output = dir + "/i2v.mp4"
        // max_area 48*32 with a 56x40 picture: latent 4x4 → 32x32 (the golden i2v case's geometry).
        let r = try run(["generate", "--dit", Self.weights + "/pipe_dit_i2v.safetensors"] + textArgs() +
                        ["--image", dir + "/first.png", "--clip-features", try writeClipFeatures(images: 1), "--prompt", "a cat",
                         "--size", "48x32", "--frames", "5", "--steps", "2", "--seed", "3", "--output", output])
        try assertPlayable(output, frames: 5, width: 32, height: 32, r)
        XCTAssertTrue(r.stderr.contains("[denoise] 2/2"), r.stderr)
    }

    func testFirstLastFrameFromTheCLI() throws {
        try requireTinyModels()
        let dir = try temporaryFolder()
        try writeInputs(dir)
        // The official FLF2V checkpoint pair (dit_i2v + dit_flf2v's emb_pos) as a sharded folder with its index.
        let folder = dir + "/flf2v"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        var map: [String: String] = [:]
        for (i, name) in ["dit_i2v", "dit_flf2v"].enumerated() {
            let shard = "diffusion_pytorch_model-0000\(i + 1)-of-00002.safetensors"
            try FileManager.default.createSymbolicLink(atPath: folder + "/" + shard, withDestinationPath: Self.weights + "/\(name).safetensors")
            for key in try SafetensorsFile(path: Self.weights + "/\(name).safetensors").tensors.keys { map[key] = shard }
        }
        try JSONSerialization.data(withJSONObject: ["metadata": [:], "weight_map": map])
            .write(to: URL(fileURLWithPath: folder + "/diffusion_pytorch_model.safetensors.index.json"))
        let output = dir + "/flf2v.mp4"
        let r = try run(["generate", "--dit", folder] + textArgs() +
                        ["--image", dir + "/first.png", "--last-image", dir + "/last.png", "--clip-features", try writeClipFeatures(images: 2),
                         "--prompt", "a cat", "--size", "48x32", "--frames", "5", "--steps", "2", "--seed", "3", "--output", output])
        try assertPlayable(output, frames: 5, width: 32, height: 32, r)
    }

    func testVACEFromTheCLIWithVideoMaskAndReference() throws {
        try requireTinyModels()
        let dir = try temporaryFolder()
        try writeInputs(dir)
        let output = dir + "/vace.mp4"
        let r = try run(["generate", "--dit", Self.weights + "/dit_vace.safetensors"] + textArgs() +
                        ["--video", dir + "/src.mp4", "--mask", dir + "/mask.mp4", "--ref", dir + "/first.png", "--ref", dir + "/last.png",
                         "--context-scale", "0.8", "--prompt", "a cat", "--size", "32x32", "--frames", "9", "--steps", "2", "--seed", "5",
                         "--output", output])
        try assertPlayable(output, frames: 9, width: 32, height: 32, r)
        XCTAssertTrue(r.stderr.contains("[encode]"), r.stderr)
        let sidecar = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: output + ".json"))) as? [String: Any]
        XCTAssertEqual(sidecar?["task"] as? String, "vace")
        XCTAssertEqual(sidecar?["context_scale"] as? Double, 0.8)
        XCTAssertEqual((sidecar?["ref"] as? [String])?.count, 2)
        // Nothing but the prompt: the official default (zero video, all-ones mask).
        let plain = dir + "/vace-plain.mp4"
        try assertPlayable(plain, frames: 5, width: 32, height: 32, try run(["generate", "--dit", Self.weights + "/dit_vace.safetensors"] + textArgs() +
            ["--prompt", "a cat", "--size", "32x32", "--frames", "5", "--steps", "1", "--output", plain]))
    }

    func testVideoToVideoFromTheCLI() throws {
        try requireTinyModels()
        let dir = try temporaryFolder()
        try writeInputs(dir)
        let output = dir + "/v2v.mp4"
        let r = try run(["generate"] + (try tinyModelArgs()) + ["--video", dir + "/src.mp4", "--strength", "0.5", "--prompt", "a cat",
                                                          "--size", "32x32", "--frames", "5", "--steps", "4", "--output", output])
        try assertPlayable(output, frames: 5, width: 32, height: 32, r)
        XCTAssertTrue(r.stderr.contains("[denoise] 2/2"), r.stderr)   // strength 0.5 of 4 steps: the last 2
        XCTAssertFalse(r.stderr.contains("[denoise] 3/"), r.stderr)
    }

    func testContradictoryInputsGiveOneLineErrorsNamingTheFix() throws {
        try requireTinyModels()
        let dir = try temporaryFolder()
        try writeInputs(dir)
        let out = ["--prompt", "x", "--size", "32x32", "--steps", "1", "--output", dir + "/out.mp4"]
        let t2v = try tinyModelArgs()
        let vace = ["--dit", Self.weights + "/dit_vace.safetensors"] + textArgs()
        let i2v = ["--dit", Self.weights + "/pipe_dit_i2v.safetensors"] + textArgs()
        let cases: [([String], String)] = [
            (t2v + ["--mask", dir + "/mask.mp4"], "--mask needs --video"),
            (t2v + ["--strength", "0.5"], "--strength needs --video"),
            (t2v + ["--video", dir + "/src.mp4", "--strength", "0"], "--strength must be in (0, 1]"),
            (vace + ["--video", dir + "/src.mp4", "--mask", dir + "/mask.mp4", "--strength", "0.5"], "drop one or the other"),
            (t2v + ["--image", dir + "/first.png", "--video", dir + "/src.mp4"], "use one kind of input"),
            (t2v + ["--ref", dir + "/first.png"], "--mask and --ref need a VACE model"),
            (t2v + ["--context-scale", "0.5"], "--context-scale needs a VACE model"),
            (i2v + ["--video", dir + "/src.mp4"], "it takes --image, not --video"),
            (vace + ["--image", dir + "/first.png"], "not --image"),
            (vace + ["--video", dir + "/src.mp4", "--strength", "0.5"], "drop --strength"),
            (t2v + ["--video", dir + "/src.mp4", "--frames", "13"], "pass --frames 9 or fewer"),
            (t2v + ["--video", dir + "/missing.mp4"], "input file not found"),
        ]
        for (args, expected) in cases {
            let r = try run(["generate"] + args + out + (args.contains("--frames") ? [] : ["--frames", "5"]))
            XCTAssertNotEqual(r.status, 0, "\(args)")
            XCTAssertTrue(r.stderr.contains(expected), "\(args): \(r.stderr)")
            let errorLines = r.stderr.split(separator: "\n").filter { $0.hasPrefix("Error:") || $0.hasPrefix("error:") }
            XCTAssertEqual(errorLines.count, 1, "\(args): \(r.stderr)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out.mp4"))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains("partial") }, [])
    }
}
