import Foundation
import WanModels

/// A rough peak-memory estimate for a generation, made before anything is loaded, so a job that cannot fit is
/// refused with advice instead of being killed halfway.
public struct MemoryEstimate: Sendable {
    public var weightsBytes: Int
    public var denoiseBytes: Int
    public var decodeBytes: Int
    public var peakBytes: Int { weightsBytes + max(denoiseBytes, decodeBytes) }
    public var breakdown: String {
        String(format: "weights %.1f GB + max(denoising %.1f GB, decoding %.1f GB)", Double(weightsBytes) / 1e9, Double(denoiseBytes) / 1e9, Double(decodeBytes) / 1e9)
    }

    /// Bytes of the weight files under a path (a file, or every weight file in a folder and its subfolders).
    public static func fileBytes(_ path: String) -> Int {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { return 0 }
        if !isDir.boolValue { return ((try? FileManager.default.attributesOfItem(atPath: path)[.size]) as? Int) ?? 0 }
        var total = 0
        let weightExtensions: Set<String> = ["safetensors", "gguf", "pth", "bin"]
        if let e = FileManager.default.enumerator(atPath: path) {
            for case let f as String in e where weightExtensions.contains((f as NSString).pathExtension) {
                total += fileBytes((path as NSString).appendingPathComponent(f))
            }
        }
        return total
    }

    public static func textToVideo(files: ModelFiles, settings s: GenerationSettings) throws -> MemoryEstimate {
        let dit = fileBytes(files.dit ?? "")
        // The umT5 encoder streams its layers from the mapping (about one layer plus activations resident).
        let t5 = min(fileBytes(files.t5 ?? ""), 1_500_000_000)
        let vae = fileBytes(files.vae ?? "")
        // DiT activations: tokens x (a dozen rows of dim + the FFN hidden row), float32, times 2 for CFG outputs.
        let tokens = ((s.frames - 1) / 4 + 1) * (s.height / 16) * (s.width / 16)
        let dim = dit > 10_000_000_000 ? 5120 : 1536, ffn = dit > 10_000_000_000 ? 13824 : 8960
        let denoise = tokens * (12 * dim + ffn) * 4 + 16 * tokens * 4 * 8
        // VAE decode: the causal convs' 2-frame histories and a few frames in flight (independent of the frame count).
        let decode = WanVAEConfig.wan21.decodeStateBytes(width: s.width, height: s.height)
        return MemoryEstimate(weightsBytes: dit + t5 + vae, denoiseBytes: denoise, decodeBytes: decode)
    }

    /// MemAvailable from /proc/meminfo (nil where it cannot be read).
    public static func availableBytes() -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            let parts = line.split(separator: " ")
            if parts.count >= 2, let kb = Int(parts[1]) { return kb * 1024 }
        }
        return nil
    }
}
