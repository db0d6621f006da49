import Foundation

/// Errors of reading input media.
public enum MediaInputError: Error, CustomStringConvertible, Equatable {
    case notFound(String)
    case unreadable(path: String, detail: String)
    case tooLarge(path: String, width: Int, height: Int)

    public var description: String {
        switch self {
        case .notFound(let p): return "input file not found: \(p)"
        case .unreadable(let p, let d): return "cannot read \(p) as an image (\(d)); use a PNG, JPEG or WebP file"
        case .tooLarge(let p, let w, let h): return "\(p) is \(w)x\(h); images up to 8192x8192 are read: resize it first"
        }
    }
}

/// Reads images (PNG, JPEG, WebP, or the first frame of a video) through ffmpeg into 8-bit RGB.
public enum MediaReader {
    public static let maximumSide = 8192

    public static func image(_ path: String) throws -> RGBImage {
        guard FileManager.default.fileExists(atPath: path) else { throw MediaInputError.notFound(path) }
        guard let ffprobe = which("ffprobe"), let ffmpeg = which("ffmpeg") else { throw MediaError.ffmpegMissing }
        let probe = try run(ffprobe, ["-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height", "-of", "csv=p=0:s=x", path])
        let dims = String(decoding: probe.stdout, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines).split(separator: "x").compactMap { Int($0) }
        guard probe.status == 0, dims.count == 2, dims[0] > 0, dims[1] > 0 else {
            throw MediaInputError.unreadable(path: path, detail: String(decoding: probe.stderr, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines).isEmpty
                                             ? "no picture found" : String(decoding: probe.stderr, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
        }
        let (w, h) = (dims[0], dims[1])
        guard w <= maximumSide, h <= maximumSide else { throw MediaInputError.tooLarge(path: path, width: w, height: h) }
        let decoded = try run(ffmpeg, ["-v", "error", "-i", path, "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        guard decoded.status == 0, decoded.stdout.count == w * h * 3 else {
            throw MediaInputError.unreadable(path: path, detail: "ffmpeg gave \(decoded.stdout.count) bytes for \(w)x\(h)")
        }
        return try RGBImage(width: w, height: h, pixels: [UInt8](decoded.stdout))
    }

    static func run(_ tool: String, _ args: [String]) throws -> (status: Int32, stdout: Data, stderr: Data) {
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
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        done.wait()
        return (p.terminationStatus, outData, errBox.data)
    }
}
