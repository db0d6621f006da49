import Foundation
import XCTest
import WanKit

/// `wan generate` with a source video and neither --size nor --frames: both follow from the video as the official
/// VACE code picks them, and the choice is printed.
extension CLITests {
    func testVACESizeAndFramesFollowTheSourceVideo() throws {
        try requireTinyModels()
        let dir = try temporaryFolder()
        try writeInputs(dir)
        // src.mp4: 9 frames of 32x32 at 16 fps. area_z = min(32760, 1560, 2 * 2) = 4; of = min((9 - 1) // 4 + 1, 8190) = 3
        // latent frames → 9 frames; oh = round(sqrt(4 * 1)) = 2, ow = 2 → 32x32.
        let output = dir + "/vace-auto.mp4"
        let r = try run(["generate", "--dit", Self.weights + "/dit_vace.safetensors"] + textArgs() +
                        ["--video", dir + "/src.mp4", "--mask", dir + "/mask.mp4", "--prompt", "a cat", "--steps", "1", "--seed", "2",
                         "--output", output])
        try assertPlayable(output, frames: 9, width: 32, height: 32, r)
        XCTAssertTrue(r.stderr.contains("source video: 9 frames of 32x32 at 16 fps → 9 frames (from the video's length"), r.stderr)
        XCTAssertTrue(r.stderr.contains("at 32x32 (from the video's aspect"), r.stderr)
        let sidecar = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: output + ".json"))) as? [String: Any]
        XCTAssertEqual(sidecar?["frame_ids"] as? [Int], Array(0...8))
    }

    /// A mask of another size is resized like the source, and a shorter mask limits the frames to its length (the
    /// official load_video_batch: length = min of both, each video resized from its own size).
    func testVACEMaskOfAnotherSizeAndLength() throws {
        try requireTinyModels()
        let dir = try temporaryFolder()
        try writeInputs(dir)
        try ffmpeg(["-f", "lavfi", "-i", "color=c=white:size=24x24:rate=16", "-frames:v", "5", dir + "/short.mp4"])
        var output = dir + "/vace-small-mask.mp4"
        var r = try run(["generate", "--dit", Self.weights + "/dit_vace.safetensors"] + textArgs() +
                        ["--video", dir + "/src.mp4", "--mask", dir + "/small.mp4", "--prompt", "a cat", "--steps", "1", "--seed", "2",
                         "--output", output])
        try assertPlayable(output, frames: 9, width: 32, height: 32, r)
        XCTAssertTrue(r.stderr.contains("source video: 9 frames of 32x32 at 16 fps (mask 24x24) → 9 frames"), r.stderr)
        output = dir + "/vace-short-mask.mp4"
        r = try run(["generate", "--dit", Self.weights + "/dit_vace.safetensors"] + textArgs() +
                    ["--video", dir + "/src.mp4", "--mask", dir + "/short.mp4", "--prompt", "a cat", "--steps", "1", "--seed", "2",
                     "--output", output])
        try assertPlayable(output, frames: 5, width: 32, height: 32, r)
        XCTAssertTrue(r.stderr.contains("(mask 24x24, 5 frames: the shorter length is used) → 5 frames"), r.stderr)
        let sidecar = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: output + ".json"))) as? [String: Any]
        XCTAssertEqual(sidecar?["frame_ids"] as? [Int], Array(0...4))
    }

        func testVideoToVideoResamplesA30FPSVideo() throws {
        try requireTinyModels()
        let dir = try temporaryFolder()
        // 14 frames of 64x48 at 30 fps: (14 - 1) // 4 + 1 = 4 latent frames → 13 frames; area_z = 12 → oh = 3, ow = 4: 64x48.
        // duration = mean(13/30, 14/30) = 0.45 s; linspace(0, 0.45, 13): t_k = 0.0375 k → frame floor(1.125 k), except
        // k = 8: t = 0.3 is frame 8's stop and frame 9's start; in float32 the duration is 0.44999999, t_8 = 0.29999999 <= 0.3,
        // so it is frame 8 (start <= t <= stop, the first match wins): 0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13.
        try ffmpeg(["-f", "lavfi", "-i", "testsrc=size=64x48:rate=30", "-frames:v", "14", "-pix_fmt", "yuv420p", dir + "/src30.mp4"])
        let output = dir + "/v2v-auto.mp4"
        let r = try run(["generate"] + (try tinyModelArgs()) + ["--video", dir + "/src30.mp4", "--strength", "0.5", "--prompt", "a cat",
                                                          "--steps", "2", "--output", output])
        try assertPlayable(output, frames: 13, width: 64, height: 48, r)
        XCTAssertTrue(r.stderr.contains("14 frames of 64x48 at 30 fps → 13 frames"), r.stderr)
        let sidecar = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: output + ".json"))) as? [String: Any]
        XCTAssertEqual(sidecar?["frame_ids"] as? [Int], [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13])
        XCTAssertEqual(sidecar?["size"] as? String, "64x48")
        XCTAssertEqual(sidecar?["frames"] as? Int, 13)
    }
}

extension CLITests {
    /// The pre-flight estimates the task at hand and refuses before loading anything, naming the task and the fixes.
    func testMemoryPreflightRefusesEachTaskWithItsOwnEstimate() throws {
        try requireTinyModels()
        let dir = try temporaryFolder()
        try writeInputs(dir)
        let big = ["--size", "8192x8192", "--prompt", "x", "--steps", "1", "--output", dir + "/out.mp4"]
        let vace = ["--dit", Self.weights + "/dit_vace.safetensors"] + textArgs()
        let i2v = ["--dit", Self.weights + "/pipe_dit_i2v.safetensors"] + textArgs()
        let cases: [([String], String)] = [
            (try tinyModelArgs() + ["--frames", "81"], "this t2v job"),
            (try tinyModelArgs() + ["--video", dir + "/src.mp4", "--frames", "5"], "this v2v job"),
            (vace + ["--video", dir + "/src.mp4", "--mask", dir + "/mask.mp4", "--frames", "9"], "this vace job"),
            (i2v + ["--image", dir + "/first.png", "--clip-features", try writeClipFeatures(images: 1), "--frames", "81"], "this i2v job"),
        ]
        for (args, task) in cases {
            let r = try run(["generate"] + args + big)
            XCTAssertNotEqual(r.status, 0, "\(args)")
            XCTAssertTrue(r.stderr.contains(task) && r.stderr.contains("GB is available") && r.stderr.contains("fewer --frames or a smaller --size"),
                          "\(args): \(r.stderr)")
            XCTAssertFalse(r.stderr.contains("loading models"), r.stderr)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out.mp4"))
    }
}
