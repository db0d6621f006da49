import Foundation
import WanTensor

/// Errors of writing media files.
public enum MediaError: Error, CustomStringConvertible, Equatable {
    case ffmpegMissing
    case ffmpegFailed(status: Int32, message: String)
    case unsupportedOutput(String)
    case cannotWrite(String)

    public var description: String {
        switch self {
        case .ffmpegMissing: return "ffmpeg not found on PATH: install it (Debian: apt-get install ffmpeg)"
        case .ffmpegFailed(let s, let m): return "ffmpeg failed (exit \(s)): \(m)"
        case .unsupportedOutput(let p): return "cannot tell the output format of \(p): use a .mp4 file for video or .png for one frame"
        case .cannotWrite(let p): return "cannot write \(p): check that the folder exists and is writable"
        }
    }
}

/// Finds an executable on PATH.
func which(_ name: String) -> String? {
    for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
        let p = "\(dir)/\(name)"
        if FileManager.default.isExecutableFile(atPath: p) { return p }
    }
    return nil
}

/// Writes frames to an MP4 (H.264, yuv420p) or a PNG through an ffmpeg process, streaming: frames are piped in as
/// they are produced. The file is written under a temporary name beside the target and renamed when complete, so
/// an error or an interruption never leaves a half-written output.
public final class VideoWriter {
    public let path: String
    public let width: Int
    public let height: Int
    public let fps: Int
    private let temporary: String
    private let process = Process()
    private let input = Pipe()
    private let errors = Pipe()
    private var errorData = Data()
    private let errorLock = NSLock()
    private var finished = false
    public private(set) var framesWritten = 0

    /// `metadata` goes into the container's comment (MP4) as JSON.
    public init(path: String, width: Int, height: Int, fps: Int = 16, metadata: [String: Any] = [:]) throws {
        guard let ffmpeg = which("ffmpeg") else { throw MediaError.ffmpegMissing }
        let ext = (path as NSString).pathExtension.lowercased()
        guard ext == "mp4" || ext == "png" else { throw MediaError.unsupportedOutput(path) }
        let folder = (path as NSString).deletingLastPathComponent
        guard FileManager.default.isWritableFile(atPath: folder.isEmpty ? "." : folder) else { throw MediaError.cannotWrite(path) }
        self.path = path; self.width = width; self.height = height; self.fps = fps
        temporary = (folder.isEmpty ? "" : folder + "/") + ".\((path as NSString).lastPathComponent).partial-\(getpid()).\(ext)"
        var args = ["-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "\(width)x\(height)",
                    "-r", "\(fps)", "-i", "-"]
        if ext == "mp4" {
            args += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18", "-preset", "medium", "-movflags", "+faststart"]
            if !metadata.isEmpty, let json = try? JSONSerialization.data(withJSONObject: metadata, options: [.sortedKeys]) {
                args += ["-metadata", "comment=" + String(decoding: json, as: UTF8.self)]
            }
        } else {
            args += ["-frames:v", "1", "-f", "image2", "-c:v", "png"]
        }
        args.append(temporary)
        process.executableURL = URL(fileURLWithPath: ffmpeg)
        process.arguments = args
        process.standardInput = input
        process.standardOutput = FileHandle.nullDevice
        process.standardError = errors
        errors.fileHandleForReading.readabilityHandler = { [weak self] h in
            let d = h.availableData
            guard let self, !d.isEmpty else { return }
            self.errorLock.lock(); self.errorData.append(d); self.errorLock.unlock()
        }
        signal(SIGPIPE, SIG_IGN)
        try process.run()
    }

    /// Appends frames [3, n, H, W] in [-1, 1] (converted as the official save_video does: (x+1)/2 → 0…255).
    public func append(_ frames: Tensor) throws {
        precondition(frames.rank == 4 && frames.shape[0] == 3 && frames.shape[2] == height && frames.shape[3] == width,
                     "frames \(frames.shape) do not match the writer's \(width)x\(height)")
        let n = frames.shape[1], plane = height * width
        var bytes = [UInt8](repeating: 0, count: plane * 3)
        for f in 0..<n {
            for ch in 0..<3 {
                let src = frames.data + (ch * n + f) * plane
                for p in 0..<plane {
                    let v = (src[p] + 1) * 0.5 * 255 + 0.5
                    bytes[p * 3 + ch] = UInt8(max(0, min(255, v.isNaN ? 0 : v)))
                }
            }
            do { try input.fileHandleForWriting.write(contentsOf: bytes) } catch {
                throw MediaError.ffmpegFailed(status: -1, message: "the encoder stopped reading frames: \(stderrText())")
            }
            framesWritten += 1
        }
    }

    private func stderrText() -> String {
        errorLock.lock(); defer { errorLock.unlock() }
        return String(decoding: errorData, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Finishes the file and renames it into place.
    public func finish() throws {
        guard !finished else { return }
        finished = true
        try? input.fileHandleForWriting.close()
        process.waitUntilExit()
        errors.fileHandleForReading.readabilityHandler = nil
        guard process.terminationStatus == 0 else {
            try? FileManager.default.removeItem(atPath: temporary)
            throw MediaError.ffmpegFailed(status: process.terminationStatus, message: stderrText())
        }
        if FileManager.default.fileExists(atPath: path) { try FileManager.default.removeItem(atPath: path) }
        do { try FileManager.default.moveItem(atPath: temporary, toPath: path) } catch { throw MediaError.cannotWrite(path) }
    }

    /// Abandons the output: stops ffmpeg and removes the temporary file.
    public func cancel() {
        guard !finished else { return }
        finished = true
        try? input.fileHandleForWriting.close()
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
        errors.fileHandleForReading.readabilityHandler = nil
        try? FileManager.default.removeItem(atPath: temporary)
    }

    deinit { cancel() }
}
