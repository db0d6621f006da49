import Foundation

/// Row-wise kernels for channels-last video activations ([positions, channels] rows).
extension Kernels {
    /// The Wan-VAE `RMS_norm` over channels: x / max(‖x‖₂, 1e-12) · √C · gamma, optionally followed by SiLU.
    public static func channelRMSNorm(_ x: UnsafePointer<Float>, rows: Int, channels c: Int, gamma: UnsafePointer<Float>,
                                      silu: Bool, out: UnsafeMutablePointer<Float>) {
        Profile.measure("vae-norm") {
            let scale = Float(Double(c).squareRoot())
            Parallel.forRanges(rows, grain: 64) { range in
                for r in range {
                    let src = x + r * c, dst = out + r * c
                    let norm = rowSquares(src, c, minus: 0).squareRoot()
                    let inv = 1 / max(norm, 1e-12)
                    for j in 0..<c { dst[j] = ((src[j] * inv) * scale) * gamma[j] }
                    if silu { for j in 0..<c { let v = dst[j]; dst[j] = v / (1 + fastExp(-v)) } }
                }
            }
        }
    }

    /// Nearest ×2 spatial upsampling of [frames, H, W, C] into [frames, 2H, 2W, C].
    public static func upsampleNearest2x(_ x: UnsafePointer<Float>, frames: Int, height h: Int, width w: Int, channels c: Int,
                                         out: UnsafeMutablePointer<Float>) {
        Parallel.forRanges(frames * h, grain: 4) { range in
            for fr in range {
                let f = fr / h, y = fr % h
                let src = x + (f * h + y) * w * c
                for dy in 0..<2 {
                    let dst = out + ((f * 2 * h) + 2 * y + dy) * 2 * w * c
                    for xx in 0..<w {
                        (dst + (2 * xx) * c).update(from: src + xx * c, count: c)
                        (dst + (2 * xx + 1) * c).update(from: src + xx * c, count: c)
                    }
                }
            }
        }
    }

    /// out = a + b elementwise.
    public static func add(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int, out: UnsafeMutablePointer<Float>) {
        Parallel.forRanges(count, grain: 1 << 14) { range in
            for i in range { out[i] = a[i] + b[i] }
        }
    }
}
