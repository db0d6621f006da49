import Foundation
import WanTensor

/// Errors of reading input media.
public enum MediaInputError: Error, CustomStringConvertible, Equatable {
    case notFound(String)
    case unreadable(path: String, detail: String)
    case tooLarge(path: String, width: Int, height: Int)
    /// A video with no decodable frame.
    case empty(String)
    /// A video whose decoded frames would exceed `MediaReader.maximumVideoBytes`.
    case tooLong(path: String, frames: Int, width: Int, height: Int)
    /// A mask video that does not fit its source video.
    case mismatch(path: String, detail: String)

    public var description: String {
        switch self {
        case .notFound(let p): return "input file not found: \(p)"
        case .unreadable(let p, let d): return "cannot read \(p) as an image or video (\(d)); use a PNG, JPEG or WebP image or an MP4/WebM/MOV video"
        case .tooLarge(let p, let w, let h): return "\(p) is \(w)x\(h); pictures and videos up to \(MediaReader.maximumSide)x\(MediaReader.maximumSide) are read: resize it first"
        case .empty(let p): return "\(p) holds no video frames: use a video with at least one frame"
        case .tooLong(let p, let f, let w, let h):
            return "\(p) has \(f) frames of \(w)x\(h), more than \(MediaReader.maximumVideoBytes >> 30) GiB decoded: read fewer frames (--frames) or shorten the video first"
        case .mismatch(let p, let d): return "the mask video \(p) does not fit the source video: \(d)"
        }
    }
}

/// A video as 8-bit RGB frames (each as `RGBImage` holds a picture).
public struct RGBVideo: Sendable, Equatable {
    public let width: Int
    public let height: Int
    public let frames: [RGBImage]

    public init(frames: [RGBImage]) throws {
        guard let first = frames.first else { throw GenerationError.invalidSettings("a video needs at least one frame") }
        guard frames.allSatisfy({ $0.width == first.width && $0.height == first.height }) else {
            throw GenerationError.invalidSettings("the frames of a video must all have one size")
        }
        width = first.width; height = first.height; self.frames = frames
    }

    /// The first `count` frames as [3, count, H, W] with v / 127.5 - 1 per byte (float32), as the official
    /// `VaceVideoProcessor.resize_crop` normalises decoded frames (`video.float().div_(127.5).sub_(1.)`).
    public func tensor(frames count: Int? = nil) -> Tensor {
        let n = min(count ?? frames.count, frames.count)
        let t = Tensor(uninitialized: [3, n, height, width])
        let plane = width * height
        for f in 0..<n {
            frames[f].pixels.withUnsafeBufferPointer { px in
                for c in 0..<3 {
                    let dst = t.data + (c * n + f) * plane
                    for p in 0..<plane { dst[p] = Float(px[p * 3 + c]) / 127.5 - 1 }
                }
            }
        }
        return t
    }
}

/// Reads images (PNG, JPEG, WebP, or the first frame of a video) and videos through ffprobe / ffmpeg into 8-bit RGB.
public enum MediaReader {
    public static let maximumSide = 8192
    /// The most decoded bytes (frames * width * height * 3) a video may hold.
    public static let maximumVideoBytes = 4 << 30

    public static func image(_ path: String) throws -> RGBImage {
        let (w, h, _) = try probe(path, countFrames: false)
        return try decode(path, width: w, height: h, frames: 1)[0]
    }

    /// The frames of a video (all of them, or the first `limit`). Typed errors for a missing, unreadable, empty or
    /// too large file.
    public static func video(_ path: String, limit: Int? = nil) throws -> RGBVideo {
        let (w, h, counted) = try probe(path, countFrames: true)
        let count = min(counted ?? 0, limit ?? Int.max)
        guard count > 0 else { throw MediaInputError.empty(path) }
        guard count <= maximumVideoBytes / (w * h * 3) else { throw MediaInputError.tooLong(path: path, frames: count, width: w, height: h) }
        let frames = try decode(path, width: w, height: h, frames: count)
        return try RGBVideo(frames: frames)
    }

    /// A source video and its mask video (at most `limit` frames of each): the mask must have the source's size
    /// and at least as many frames as are read of the source.
    public static func video(_ path: String, mask maskPath: String, limit: Int? = nil) throws -> (video: RGBVideo, mask: RGBVideo) {
        let source = try video(path, limit: limit)
        let mask = try video(maskPath, limit: source.frames.count)
        guard mask.width == source.width, mask.height == source.height else {
            throw MediaInputError.mismatch(path: maskPath, detail: "it is \(mask.width)x\(mask.height), the source \(path) is \(source.width)x\(source.height); make the mask at the source's size")
        }
        guard mask.frames.count == source.frames.count else {
            throw MediaInputError.mismatch(path: maskPath, detail: "it has \(mask.frames.count) frames, \(source.frames.count) of the source \(path) are used; give the mask as many frames")
        }
        return (source, mask)
    }

    /// The size of the first video stream (and its frame count when asked: ffprobe counts the packets).
    static func probe(_ path: String, countFrames: Bool) throws -> (width: Int, height: Int, frames: Int?) {
        guard FileManager.default.fileExists(atPath: path) else { throw MediaInputError.notFound(path) }
        guard let ffprobe = which("ffprobe") else { throw MediaError.ffmpegMissing }
        let entries = countFrames ? "stream=width,height,nb_read_packets" : "stream=width,height"
        let probe = try run(ffprobe, ["-v", "error", "-select_streams", "v:0"] + (countFrames ? ["-count_packets"] : []) +
                            ["-show_entries", entries, "-of", "csv=p=0:s=x", path])
        let fields = String(decoding: probe.stdout, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines).split(separator: "x").map(String.init)
        let dims = fields.prefix(2).compactMap { Int($0) }
        // A file ffprobe reads but that lists no video stream (an MP4 written with no frames, audio only).
        if probe.status == 0 && fields.isEmpty && countFrames { throw MediaInputError.empty(path) }
        guard probe.status == 0, dims.count == 2, dims[0] > 0, dims[1] > 0 else {
            let detail = String(decoding: probe.stderr, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            throw MediaInputError.unreadable(path: path, detail: detail.isEmpty ? "no picture found" : detail)
        }
        guard dims[0] <= maximumSide, dims[1] <= maximumSide else { throw MediaInputError.tooLarge(path: path, width: dims[0], height: dims[1]) }
        // ffmpeg turns a video with a quarter-turn display rotation upright: its frames have the other orientation.
        let quarterTurn = try displayRotation(path, ffprobe: ffprobe).map { abs($0) % 180 == 90 } ?? false
        let (w, h) = quarterTurn ? (dims[1], dims[0]) : (dims[0], dims[1])
        // nb_read_packets is "N/A" for streams that cannot be counted: then it is 0 frames.
        return (w, h, countFrames ? (fields.count > 2 ? Int(fields[2]) ?? 0 : 0) : nil)
    }

    /// The first video stream's display rotation in degrees (the display matrix, or an old `rotate` tag), nil if none.
    static func displayRotation(_ path: String, ffprobe: String) throws -> Int? {
        let r = try run(ffprobe, ["-v", "error", "-select_streams", "v:0", "-show_entries", "stream_side_data=rotation:stream_tags=rotate",
                                  "-of", "default=noprint_wrappers=1", path])
        guard r.status == 0 else { return nil }
        for line in String(decoding: r.stdout, as: UTF8.self).split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1)
            if parts.count == 2, parts[0].hasSuffix("rotation") || parts[0].hasSuffix("rotate"),
               let degrees = Double(parts[1].trimmingCharacters(in: .whitespaces)) { return Int(degrees.rounded()) }
        }
        return nil
    }

    /// The first `frames` frames as RGB (fewer when the file has fewer; none is an error).
    static func decode(_ path: String, width w: Int, height h: Int, frames: Int) throws -> [RGBImage] {
        guard let ffmpeg = which("ffmpeg") else { throw MediaError.ffmpegMissing }
        let decoded = try run(ffmpeg, ["-v", "error", "-i", path, "-frames:v", "\(frames)", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        let frameBytes = w * h * 3
        let n = decoded.stdout.count / frameBytes
        guard decoded.status == 0, n >= 1, decoded.stdout.count % frameBytes == 0 else {
            if decoded.status == 0 && decoded.stdout.isEmpty { throw MediaInputError.empty(path) }
            throw MediaInputError.unreadable(path: path, detail: "ffmpeg gave \(decoded.stdout.count) bytes for \(w)x\(h) frames")
        }
        let bytes = [UInt8](decoded.stdout)
        return try (0..<min(n, frames)).map { try RGBImage(width: w, height: h, pixels: Array(bytes[$0 * frameBytes ..< ($0 + 1) * frameBytes])) }
    }

    static func run(_ tool: String, _ args: [String]) throws -> (status: Int32, stdout: Data, stderr: Data) {
        let (stdout, finish) = try launch(tool, args)
        let outData = stdout.readDataToEndOfFile()
        let (status, stderr) = finish()
        return (status, outData, stderr)
    }

    /// Starts a tool with standard input closed and its standard error drained on another thread (so that neither
    /// pipe can fill and stall it). Gives its standard output to read, and `finish`, which waits for the tool to end
    /// and gives its exit status and standard error.
    static func launch(_ tool: String, _ args: [String]) throws -> (stdout: FileHandle, finish: () -> (status: Int32, stderr: Data)) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = FileHandle.nullDevice
        try p.run()
        final class Box: @unchecked Sendable { var data = Data() }
        let errBox = Box()
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async { errBox.data = err.fileHandleForReading.readDataToEndOfFile(); done.signal() }
        return (out.fileHandleForReading, {
            p.waitUntilExit()
            done.wait()
            return (p.terminationStatus, errBox.data)
        })
    }
}
