import Foundation
import XCTest
import WanKit

/// Source video preparation as the official `VaceVideoProcessor` does it (wan/utils/vace_processor.py, keep_last as
/// `WanVace` configures it): timelines read from real ffmpeg-written videos, frame ids and sizes worked out by hand
/// from the official formulas, PyTorch's uint8 antialiased bicubic worked out by hand on small rows, the centre crop.
final class SourceVideoTests: XCTestCase {
    /// A 30 fps MP4 of `frames` frames (ffmpeg's MP4 time base at 30 fps is 1/15360: frame i has pts 512 i).
    func write30fps(_ dir: String, frames: Int, size: String = "64x48", name: String = "src30.mp4") throws -> String {
        let path = dir + "/" + name
        try ffmpeg(["-f", "lavfi", "-i", "testsrc=size=\(size):rate=30", "-frames:v", "\(frames)", "-pix_fmt", "yuv420p", path])
        return path
    }

    func testTimelineOfA30FPSVideoIsDecordsFloat32StartsAndStops() throws {
        let path = try write30fps(try temporaryMediaFolder(), frames: 90)
        let t = try MediaReader.timeline(path)
        XCTAssertEqual(t.frameCount, 90)
        XCTAssertEqual(t.fps, 30)
        XCTAssertEqual(t.width, 64)
        XCTAssertEqual(t.height, 48)
        // Packets come in decode order (B-frames); sorted by pts they are frame i at [512 i, 512 (i + 1)] / 15360.
        XCTAssertEqual(t, VideoTimeline.constantRate(frames: 90, fps: 30, timeBase: 15360, width: 64, height: 48))
        for i in [0, 1, 45, 89] {
            XCTAssertEqual(t.starts[i], Float(i) / 30, accuracy: 1e-6)
            XCTAssertEqual(t.stops[i], Float(i + 1) / 30, accuracy: 1e-6)
        }
    }

    func testAQuarterTurnRotatedVideoIsReadUpright() throws {
        let dir = try temporaryMediaFolder()
        let path = try write30fps(dir, frames: 6)
        try ffmpeg(["-i", path, "-c", "copy", "-metadata:s:v:0", "rotate=90", dir + "/rot.mp4"])
        try ffmpeg(["-i", dir + "/rot.mp4", "-frames:v", "1", dir + "/upright.png"])
        let t = try MediaReader.timeline(dir + "/rot.mp4")
        XCTAssertEqual([t.width, t.height], [48, 64])
        let upright = try MediaReader.image(dir + "/upright.png")
        XCTAssertEqual([upright.width, upright.height], [48, 64])
        XCTAssertEqual(try MediaReader.image(dir + "/rot.mp4"), upright)
        let planned = try SourceVideo.plan(video: dir + "/rot.mp4", size: (48, 64), frames: 5)
        XCTAssertEqual(try planned.read().video.frames[0], upright)
    }

    func testKeepLastResamplesTheWholeClip() throws {
        let t = VideoTimeline.constantRate(frames: 90, fps: 30, timeBase: 15360, width: 64, height: 48)
        // seq_len 32760 and max_area 832*480 (prepare_source at 832x480):
        // area_z = min(32760, 399360 / 256 = 1560, (48 // 16) * (64 // 16) = 12) = 12
        // of = min((90 - 1) // 4 + 1 = 23, int(32760 / 12) = 2730) = 23 latent frames → 89 frames
        // target_area_z = min(12, int(32760 / 23) = 1424) = 12; oh = round(sqrt(12 * 48 / 64)) = 3; ow = int(12 / 3) = 4
        let plan = try VACEVideoProcessor.keepLastPlan(t, maxArea: 832 * 480, sequenceLength: VACEVideoProcessor.sequenceLength(area: 832 * 480))
        XCTAssertEqual(VACEVideoProcessor.sequenceLength(area: 832 * 480), 32760)
        XCTAssertEqual(VACEVideoProcessor.sequenceLength(area: 1280 * 720), 75600)
        XCTAssertEqual(plan.frames, 89)
        XCTAssertEqual(plan.height, 48)
        XCTAssertEqual(plan.width, 64)
        // duration = mean(frame 89's [89/30, 90/30]) = 2.98333 s; timestamps = linspace(0, 2.98333, 89): t_k = k * 0.0339015,
        // which lies in frame floor(30 t_k) = floor(1.017045 k): 0…58, then k = 59 → 60.006, so frame 59 is skipped.
        XCTAssertEqual(plan.frameIDs, Array(0...58) + Array(60...89))
        XCTAssertEqual(plan.fps, 89 / 2.98333, accuracy: 1e-3)
    }

    func testFixedRatePlanReadsTheSourceAt16FPS() throws {
        let t = VideoTimeline.constantRate(frames: 90, fps: 30, timeBase: 15360, width: 64, height: 48)
        // _get_frameid_bbox_default: target_fps = min(30, 16) = 16; int(2.98333 * 16 = 47.73) = 47 → (47 - 1) // 4 + 1 = 12
        // latent frames → 45 frames; timestamps = linspace(0, 45 / 16, 45): t_k = k * 2.8125 / 44, in frame
        // floor(30 t_k) = floor(675 k / 352) (start <= t < stop; 675 k / 352 is a whole number only at k = 0).
        let plan = try VACEVideoProcessor.fixedRatePlan(t, maxArea: 832 * 480, sequenceLength: 32760)
        XCTAssertEqual(plan.frameIDs, (0..<45).map { $0 * 675 / 352 })
        XCTAssertEqual(plan.fps, 16)
        XCTAssertEqual(plan.height, 48)
        XCTAssertEqual(plan.width, 64)
    }

    func testSizeFollowsTheAspectWithinTheArea() throws {
        func plan(_ w: Int, _ h: Int, frames: Int, area: Int = 832 * 480) throws -> VACEVideoPlan {
            try VACEVideoProcessor.keepLastPlan(.constantRate(frames: frames, fps: 30, timeBase: 15360, width: w, height: h),
                                                maxArea: area, sequenceLength: VACEVideoProcessor.sequenceLength(area: area))
        }
        // 1920x1080: area_z = min(32760, 1560, 67 * 120) = 1560; of = min(25, 21) = 21; target 1560;
        // oh = round(sqrt(1560 * 0.5625) = 29.6) = 30, ow = int(1560 / 30) = 52 → 480x832, 81 frames.
        var p = try plan(1920, 1080, frames: 100)
        XCTAssertEqual([p.frames, p.height, p.width], [81, 480, 832])
        // 720x1280 (portrait): oh = round(sqrt(1560 * 1.7778) = 52.7) = 53, ow = int(1560 / 53) = 29 → 848x464.
        p = try plan(720, 1280, frames: 100)
        XCTAssertEqual([p.frames, p.height, p.width], [81, 848, 464])
        // 640x480 (smaller than the area): area_z = min(1560, 30 * 40) = 1200; of = min(25, int(32760 / 1200) = 27) = 25:
        // 97 frames (the budget is in tokens); target min(1200, 1310) = 1200, oh = 30, ow = 40 → the video's own size.
        p = try plan(640, 480, frames: 100)
        XCTAssertEqual([p.frames, p.height, p.width], [97, 480, 640])
        // 1280x720 at the 720P area (seq_len 75600): area_z = 3600, of = 21, oh = round(sqrt(3600 * 0.5625)) = 45, ow = 80.
        p = try plan(1280, 720, frames: 100, area: 1280 * 720)
        XCTAssertEqual([p.frames, p.height, p.width], [81, 720, 1280])
        // A short clip: 10 frames → (10 - 1) // 4 + 1 = 3 latent frames → 9.
        XCTAssertEqual(try plan(1920, 1080, frames: 10).frames, 9)
        // --frames replaces `of`, but cannot exceed what the video holds.
        let t = VideoTimeline.constantRate(frames: 10, fps: 30, timeBase: 15360, width: 64, height: 48)
        XCTAssertEqual(try VACEVideoProcessor.keepLastPlan(t, maxArea: 832 * 480, sequenceLength: 32760, latentFrames: 2).frames, 5)
        XCTAssertThrowsError(try VACEVideoProcessor.keepLastPlan(t, maxArea: 832 * 480, sequenceLength: 32760, latentFrames: 4)) { e in
            XCTAssertTrue("\(e)".contains("pass --frames 9 or fewer"), "\(e)")
        }
        // Smaller than one 16x16 cell: the official code divides by zero; WanKit says why.
        XCTAssertThrowsError(try plan(8, 8, frames: 5))
    }

    func testAntialiasedBicubicOnRowsWorkedOutByHand() {
        // 4 → 2 (scale 2, support 4): output 0 has center 1.0, taps x = 0…3 at (x - 1 + 0.5) / 2 = -0.25, 0.25, 0.75, 1.25:
        // cubic = 0.8671875, 0.8671875, 0.2265625, -0.0703125, normalised by their sum 1.890625; the largest weight 0.458678
        // gives precision 16 (0.458678 * 2^17 >= 2^15), int16 weights 30060, 30060, 7853, -2437.
        // Row 0, 100, 200, 255: (100 * 30060 + 200 * 7853 - 255 * 2437 + 2^15) >> 16 = 60; output 1 mirrored: 221.
        let row: [UInt8] = [0, 100, 200, 255].flatMap { [$0, $0, $0] }
        XCTAssertEqual(AntialiasedBicubic.resize(row, height: 1, width: 4, toHeight: 1, toWidth: 2), [60, 60, 60, 221, 221, 221])
        // 2 → 4 (upscaling: support 2): weights (17830, -1446), (12990, 3394), … at precision 14: 0, 255 → 0 (clamped), 53, 202, 255.
        let up: [UInt8] = [0, 255].flatMap { [$0, $0, $0] }
        XCTAssertEqual(AntialiasedBicubic.resize(up, height: 1, width: 2, toHeight: 1, toWidth: 4), [0, 53, 202, 255].flatMap { [$0, $0, $0] })
        // The same along the height (the second pass).
        XCTAssertEqual(AntialiasedBicubic.resize(row, height: 4, width: 1, toHeight: 2, toWidth: 1), [60, 60, 60, 221, 221, 221])
        // A flat picture stays flat (the int16 weights of each output sum to 2^precision give or take rounding).
        let flat = [UInt8](repeating: 77, count: 37 * 23 * 3)
        XCTAssertEqual(Set(AntialiasedBicubic.resize(flat, height: 23, width: 37, toHeight: 50, toWidth: 11)), [77])
    }

    func testResizeCropKeepsTheCentre() throws {
        // 64x48 → 32x32: scale = max(32/64, 32/48) = 0.667 → resized to (round(32.0), round(42.67)) = 32x43, crop x1 = (43 - 32) // 2 = 5.
        var px = [UInt8](repeating: 0, count: 64 * 48 * 3)
        for y in 0..<48 { for x in 0..<64 { for c in 0..<3 { px[(y * 64 + x) * 3 + c] = UInt8((x * 4 + y + c * 40) % 256) } } }
        let img = try RGBImage(width: 64, height: 48, pixels: px)
        let out = try img.resizedCropped(height: 32, width: 32)
        let full = AntialiasedBicubic.resize(px, height: 48, width: 64, toHeight: 32, toWidth: 43)
        for y in 0..<32 {
            XCTAssertEqual(Array(out.pixels[(y * 32 * 3)..<((y + 1) * 32 * 3)]), Array(full[((y * 43 + 5) * 3)..<((y * 43 + 37) * 3)]))
        }
        // The tensor is v / 127.5 - 1 of those bytes.
        let video = try RGBVideo(frames: [img, img])
        let t = try video.tensor(frames: 2, height: 32, width: 32)
        XCTAssertEqual(t.shape, [3, 2, 32, 32])
        XCTAssertEqual(t.data[32 * 32 + 5], Float(out.pixels[5 * 3]) / 127.5 - 1)          // channel 0, frame 1, pixel 5
        XCTAssertEqual(t.data[2 * (2 * 32 * 32) + 7], Float(out.pixels[7 * 3 + 2]) / 127.5 - 1) // channel 2, frame 0, pixel 7
        // The same size is taken as it is.
        XCTAssertEqual(try img.resizedCropped(height: 48, width: 64), img)
    }

    func testSourceVideoPlansThenDecodesOnlyThoseFrames() throws {
        let dir = try temporaryMediaFolder()
        let path = try write30fps(dir, frames: 90)
        let all = try MediaReader.video(path)
        XCTAssertEqual(all.frames.count, 90)

        let planned = try SourceVideo.plan(video: path)
        XCTAssertEqual([planned.frames, planned.width, planned.height], [89, 64, 48])
        XCTAssertTrue(planned.sizeFromVideo && planned.framesFromVideo)
        let read = try planned.read()
        XCTAssertEqual(read.video.frames, planned.plan.frameIDs.map { all.frames[$0] })
        XCTAssertNil(read.mask)
        XCTAssertTrue(planned.summary.contains("90 frames of 64x48 at 30 fps → 89 frames"), planned.summary)

        // --frames 5 --size 32x32: linspace(0, 2.98333, 5) = 0, 0.746, 1.492, 2.238, 2.983 → frames 0, 22, 44, 67, 89.
        let mask = try write30fps(dir, frames: 90, name: "mask30.mp4")
        let small = try SourceVideo.plan(video: path, mask: mask, size: (32, 32), frames: 5)
        XCTAssertEqual(small.plan.frameIDs, [0, 22, 44, 67, 89])
        XCTAssertEqual([small.width, small.height, small.frames], [32, 32, 5])
        XCTAssertFalse(small.sizeFromVideo || small.framesFromVideo)
        let pair = try small.read()
        XCTAssertEqual(pair.video.frames, [0, 22, 44, 67, 89].map { all.frames[$0] })
        XCTAssertEqual(pair.mask?.frames.count, 5)
        XCTAssertTrue(small.summary.contains("--frames") && small.summary.contains("--size"), small.summary)

        XCTAssertThrowsError(try SourceVideo.plan(video: path, frames: 93)) { XCTAssertTrue("\($0)".contains("pass --frames 89 or fewer"), "\($0)") }
        XCTAssertThrowsError(try SourceVideo.plan(video: path, frames: 6)) { XCTAssertTrue("\($0)".contains("4n+1"), "\($0)") }
        let short = try write30fps(dir, frames: 20, name: "short.mp4")
        // A shorter mask: the frames are drawn from its length (official load_video_batch: min of both lengths), on
        // the source's timeline (the first 20 frames of a constant-rate 30 fps video: as a 20-frame video's).
        let withShort = try SourceVideo.plan(video: path, mask: short)
        XCTAssertEqual(withShort.usableFrames, 20)
        XCTAssertEqual(withShort.plan.frameIDs, try SourceVideo.plan(video: short).plan.frameIDs)
        let shortPair = try withShort.read()
        XCTAssertEqual(shortPair.mask?.frames.count, shortPair.video.frames.count)
        XCTAssertTrue(withShort.summary.contains("20 frames: the shorter length is used"), withShort.summary)
        XCTAssertThrowsError(try SourceVideo.plan(video: dir + "/missing.mp4")) { XCTAssertEqual($0 as? MediaInputError, .notFound(dir + "/missing.mp4")) }
    }
}
