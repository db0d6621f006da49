import Foundation

/// The kernels of Kernels/vae.cu re-done on the CPU for `CUDAEmulator` (see there): each reads its arguments as the
/// .cu file declares them, refuses launches the kernel would not run correctly (block shape, 32-bit index range,
/// unaligned vector access, memory outside an allocation) and computes what the file documents.
enum EmulatedVAEKernels {
    static func floats(_ address: UInt64) -> UnsafeMutablePointer<Float> { UnsafeMutablePointer<Float>(bitPattern: UInt(address))! }

    /// Runs kernel `name`; returns why the launch is refused, or nil.
    static func run(_ name: String, grid: (Int, Int, Int), block: (Int, Int, Int), args a: EmulatedArgs) -> String? {
        let threads = block.0 * block.1 * block.2
        guard threads <= 256, block.1 == 1, block.2 == 1 else { return "block \(block): the VAE kernels take at most 256 threads in x" }
        switch name {
        case "vae_im2col_f32", "vae_im2col_bf16":
            let frames = a.int32(4), srcH = a.int32(5), srcW = a.int32(6), channels = a.int32(7), up = a.int32(8), outW = a.int32(9)
            let kh = a.int32(10), kw = a.int32(11), stride = a.int32(12), padTop = a.int32(13), padLeft = a.int32(14)
            let row0 = a.int64(15), rows = a.int64(16)
            guard (1...3).contains(frames), (0...1).contains(up), channels > 0, kh > 0, kw > 0, stride > 0, outW > 0, row0 >= 0, rows >= 0 else {
                return "frames \(frames), up \(up), channels \(channels), kernel \(kh)x\(kw), stride \(stride), out_w \(outW), rows \(row0)+\(rows)"
            }
            let width = frames * kh * kw * channels
            guard rows * width < (1 << 31) else { return "\(rows) rows x \(width) columns pass the kernel's 32-bit index" }
            let bf16 = name == "vae_im2col_bf16", size = bf16 ? 2 : 4
            let frameBytes = srcH * srcW * channels * 4
            let sources = (0..<frames).map { a.address(1 + $0) }
            guard EmulatedDriver.inside(a.address(0), rows * width * size), sources.allSatisfy({ EmulatedDriver.inside($0, frameBytes) }) else {
                return "the columns or an input frame run past an allocation"
            }
            if channels % 4 == 0, a.address(0) % UInt64(4 * size) != 0 || !sources.allSatisfy({ $0 % 16 == 0 }) {
                return "four-channel access needs \(4 * size)-byte aligned columns and 16-byte aligned frames"
            }
            // Gathered in f32, then stored (rounded to nearest even for bf16).
            let col = bf16 ? UnsafeMutablePointer<Float>.allocate(capacity: rows * width) : floats(a.address(0)), input = sources.map(floats)
            defer {
                if bf16 {
                    BFloat16.pack(col, into: UnsafeMutablePointer<UInt16>(bitPattern: UInt(a.address(0)))!, count: rows * width)
                    col.deallocate()
                }
            }
            let (inH, inW) = (srcH << up, srcW << up)
            for r in 0..<rows {
                let p = row0 + r, oy = p / outW, ox = p % outW
                var dst = col + r * width
                for t in 0..<frames {
                    for ky in 0..<kh {
                        for kx in 0..<kw {
                            let iy = oy * stride - padTop + ky, ix = ox * stride - padLeft + kx
                            if iy >= 0 && iy < inH && ix >= 0 && ix < inW {
                                dst.update(from: input[t] + ((iy >> up) * srcW + (ix >> up)) * channels, count: channels)
                            } else {
                                dst.update(repeating: 0, count: channels)
                            }
                            dst += channels
                        }
                    }
                }
            }
        case "vae_rms_norm_f32":
            let rows = a.int64(3), channels = a.int32(4), silu = a.int32(5)
            guard threads % 32 == 0 else { return "one warp per row: block \(block) is not whole warps" }
            guard rows == 0 || (EmulatedDriver.inside(a.address(0), rows * channels * 4) && EmulatedDriver.inside(a.address(1), rows * channels * 4)
                                && EmulatedDriver.inside(a.address(2), channels * 4)) else {
                return "a tensor runs past its allocation"
            }
            let out = floats(a.address(0)), x = floats(a.address(1)), gamma = floats(a.address(2))
            let scale = Float(Double(channels).squareRoot())
            for r in 0..<rows {
                let xr = x + r * channels, yr = out + r * channels
                var sum = 0.0
                for c in 0..<channels { sum += Double(xr[c]) * Double(xr[c]) }
                let inv = 1 / max(Float(sum.squareRoot()), 1e-12)
                for c in 0..<channels {
                    var v = ((xr[c] * inv) * scale) * gamma[c]
                    if silu == 1 { v = v / (1 + exp(-v)) }
                    yr[c] = v
                }
            }
        case "vae_softmax_f32":
            let rows = a.int64(1), cols = a.int32(2), scale = Double(a.float(3))
            guard threads % 32 == 0 else { return "block \(block) is not whole warps" }
            guard rows == 0 || EmulatedDriver.inside(a.address(0), rows * cols * 4) else { return "the scores run past their allocation" }
            let s = floats(a.address(0))
            for r in 0..<rows {
                let row = s + r * cols
                var top = -Double.infinity
                for c in 0..<cols { top = max(top, Double(row[c]) * scale) }
                var sum = 0.0
                var e = [Double](repeating: 0, count: cols)
                for c in 0..<cols { e[c] = exp(Double(row[c]) * scale - top); sum += e[c] }
                for c in 0..<cols { row[c] = Float(e[c] / sum) }
            }
        default:
            return "no emulation for \(name)"
        }
        return nil
    }
}
