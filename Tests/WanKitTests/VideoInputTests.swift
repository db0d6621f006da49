import Foundation
import XCTest
import WanKit

/// Runs ffmpeg with `args` (video inputs written by the real tool, as a user's files are).
func ffmpeg(_ args: [String]) throws {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/ffmpeg")
    p.arguments = ["-v", "error", "-y"] + args
    p.standardOutput = FileHandle.nullDevice
    let err = Pipe()
    p.standardError = err
    try p.run()
    let e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    guard p.terminationStatus == 0 else { throw XCTSkip("ffmpeg failed: \(String(decoding: e, as: UTF8.self))") }
}

func temporaryMediaFolder() throws -> String {
    let dir = NSTemporaryDirectory() + "wankit-media-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

/// `MediaReader.video`: real small videos written by ffmpeg, read back; the typed errors.
final class VideoInputTests: XCTestCase {
    func expect(_ error: MediaInputError, file: StaticString = #filePath, line: UInt = #line, _ body: () throws -> Void) {
        XCTAssertThrowsError(try body(), file: file, line: line) { e in
            XCTAssertEqual(e as? MediaInputError, error, "\(e)", file: file, line: line)
        }
    }

    func testReadsEveryFrameOrUpToALimit() throws {
        let dir = try temporaryMediaFolder()
        let path = dir + "/src.mp4"
        try ffmpeg(["-f", "lavfi", "-i", "testsrc=size=64x48:rate=16", "-frames:v", "9", "-pix_fmt", "yuv420p", path])
        let all = try MediaReader.video(path)
        XCTAssertEqual(all.frames.count, 9)
        XCTAssertEqual(all.width, 64)
        XCTAssertEqual(all.height, 48)
        XCTAssertEqual(all.frames[0].pixels.count, 64 * 48 * 3)
        // testsrc moves: consecutive frames differ.
        XCTAssertNotEqual(all.frames[0].pixels, all.frames[8].pixels)
        let five = try MediaReader.video(path, limit: 5)
        XCTAssertEqual(five.frames.count, 5)
        XCTAssertEqual(five.frames, Array(all.frames.prefix(5)))
        // A limit above the length reads what is there.
        XCTAssertEqual(try MediaReader.video(path, limit: 100).frames.count, 9)
        // The first frame is what `image` reads.
        XCTAssertEqual(try MediaReader.image(path), all.frames[0])
    }

    func testPixelValuesAndTheOfficialNormalisation() throws {
        let dir = try temporaryMediaFolder()
        // Known RGB bytes through a lossless codec (FFV1, RGB): they come back exactly.
        let (w, h, n) = (32, 16, 3)
        var raw: [UInt8] = []
        for f in 0..<n { for y in 0..<h { for x in 0..<w { for c in 0..<3 { raw.append(UInt8((x * 7 + y * 13 + c * 50 + f * 31) % 256)) } } } }
        try Data(raw).write(to: URL(fileURLWithPath: dir + "/frames.rgb"))
        let path = dir + "/exact.mkv"
        try ffmpeg(["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "\(w)x\(h)", "-r", "16", "-i", dir + "/frames.rgb", "-c:v", "ffv1", "-pix_fmt", "bgr0", path])
        let v = try MediaReader.video(path)
        XCTAssertEqual(v.frames.count, n)
        XCTAssertEqual(v.frames.flatMap(\.pixels), raw)
        let t = v.tensor(frames: 2)
        XCTAssertEqual(t.shape, [3, 2, h, w])
        // video.float().div_(127.5).sub_(1.): [c, f, y, x] holds byte ((f*h + y)*w + x)*3 + c.
        for (c, f, y, x) in [(0, 0, 0, 0), (1, 0, 3, 5), (2, 1, 15, 31), (0, 1, 7, 2)] {
            XCTAssertEqual(t.data[((c * 2 + f) * h + y) * w + x], Float(raw[((f * h + y) * w + x) * 3 + c]) / 127.5 - 1)
        }
    }

    func testMissingUnreadableEmptyAndHugeInputs() throws {
        let dir = try temporaryMediaFolder()
        expect(.notFound(dir + "/none.mp4")) { _ = try MediaReader.video(dir + "/none.mp4") }
        try Data("not a video".utf8).write(to: URL(fileURLWithPath: dir + "/bad.mp4"))
        XCTAssertThrowsError(try MediaReader.video(dir + "/bad.mp4")) { e in
            guard case .unreadable(let p, _)? = e as? MediaInputError else { return XCTFail("\(e)") }
            XCTAssertEqual(p, dir + "/bad.mp4")
            XCTAssertTrue("\(e)".contains("cannot read"), "\(e)")
        }
        // An MP4 written with no frames (no video stream) and an AVI whose one stream has none.
        try ffmpeg(["-f", "lavfi", "-i", "testsrc=size=64x48:rate=16", "-frames:v", "0", "-c:v", "libx264", dir + "/empty.mp4"])
        expect(.empty(dir + "/empty.mp4")) { _ = try MediaReader.video(dir + "/empty.mp4") }
        try ffmpeg(["-f", "lavfi", "-i", "testsrc=size=64x48:rate=16", "-frames:v", "0", "-c:v", "mpeg4", dir + "/empty.avi"])
        expect(.empty(dir + "/empty.avi")) { _ = try MediaReader.video(dir + "/empty.avi") }
        try ffmpeg(["-f", "lavfi", "-i", "testsrc=size=64x48:rate=16", "-frames:v", "3", dir + "/ok.mp4"])
        expect(.empty(dir + "/ok.mp4")) { _ = try MediaReader.video(dir + "/ok.mp4", limit: 0) }
        try ffmpeg(["-f", "lavfi", "-i", "color=c=red:size=8200x16", "-frames:v", "1", dir + "/wide.png"])
        expect(.tooLarge(path: dir + "/wide.png", width: 8200, height: 16)) { _ = try MediaReader.video(dir + "/wide.png") }
        XCTAssertTrue(MediaInputError.tooLong(path: "a.mp4", frames: 9000, width: 4096, height: 4096).description.contains("--frames"))
    }

    func testMaskMustMatchTheSourceVideo() throws {
        let dir = try temporaryMediaFolder()
        try ffmpeg(["-f", "lavfi", "-i", "testsrc=size=64x48:rate=16", "-frames:v", "9", dir + "/src.mp4"])
        try ffmpeg(["-f", "lavfi", "-i", "color=c=white:size=64x48:rate=16", "-frames:v", "9", dir + "/mask.mp4"])
        try ffmpeg(["-f", "lavfi", "-i", "color=c=white:size=32x24:rate=16", "-frames:v", "9", dir + "/small.mp4"])
        try ffmpeg(["-f", "lavfi", "-i", "color=c=white:size=64x48:rate=16", "-frames:v", "5", dir + "/short.mp4"])
        let pair = try MediaReader.video(dir + "/src.mp4", mask: dir + "/mask.mp4")
        XCTAssertEqual(pair.video.frames.count, 9)
        XCTAssertEqual(pair.mask.frames.count, 9)
        XCTAssertGreaterThan(pair.mask.frames[4].pixels[0], 250)
        // A limit applies to both; a longer mask is cut to the source's frames.
        let five = try MediaReader.video(dir + "/src.mp4", mask: dir + "/mask.mp4", limit: 5)
        XCTAssertEqual([five.video.frames.count, five.mask.frames.count], [5, 5])
        XCTAssertEqual(try MediaReader.video(dir + "/src.mp4", mask: dir + "/short.mp4", limit: 5).mask.frames.count, 5)
        XCTAssertThrowsError(try MediaReader.video(dir + "/src.mp4", mask: dir + "/small.mp4")) { e in
            guard case .mismatch(let p, let d)? = e as? MediaInputError else { return XCTFail("\(e)") }
            XCTAssertEqual(p, dir + "/small.mp4")
            XCTAssertTrue(d.contains("32x24") && d.contains("64x48"), d)
        }
        XCTAssertThrowsError(try MediaReader.video(dir + "/src.mp4", mask: dir + "/short.mp4")) { e in
            guard case .mismatch(_, let d)? = e as? MediaInputError else { return XCTFail("\(e)") }
            XCTAssertTrue(d.contains("5 frames") && d.contains("9"), d)
        }
    }
}
