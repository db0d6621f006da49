import Foundation
import WanTensor

/// The kernels of Kernels/vae.cu re-done on the CPU for `CUDAEmulator` (see there): each reads its arguments as the
/// .cu file declares them, refuses launches the kernel would not run correctly (block shape, 32-bit index range,
/// unaligned vector access, memory outside an allocation) and computes what the file documents.
enum EmulatedVAEKernels {
    static func floats(_ address: UInt64) -> UnsafeMutablePointer<Float> { UnsafeMutablePointer<Float>(bitPattern: UInt(address))! }

    /// Input frames `first`..<`first + frames` of im2col and the conv: frame t is stored in bf16 where bit t of
    /// `bf16Frames` is set, else in f32.
    static func inputFrames(_ a: EmulatedArgs, first: Int, frames: Int, bf16Frames: Int) -> [EmulatedTensor] {
        (0..<frames).map { EmulatedTensor(a.address(first + $0), bf16: bf16Frames >> $0 & 1 == 1) }
    }

    /// Whether every frame's `values` values lie inside its allocation.
    static func inside(_ frames: [EmulatedTensor], values: Int) -> Bool {
        frames.allSatisfy { EmulatedDriver.inside($0.address, values * ($0.bf16 ? 2 : 4)) }
    }

    /// Runs kernel `name`; returns why the launch is refused, or nil.
    static func run(_ name: String, grid: (Int, Int, Int), block: (Int, Int, Int), args a: EmulatedArgs) -> String? {
        let threads = block.0 * block.1 * block.2
        guard threads <= 256, block.1 == 1, block.2 == 1 else { return "block \(block): the VAE kernels take at most 256 threads in x" }
        switch name {
        case "vae_im2col_f32", "vae_im2col_bf16":
            let frames = a.int32(4), srcH = a.int32(5), srcW = a.int32(6), channels = a.int32(7), up = a.int32(8), outW = a.int32(9)
            let kh = a.int32(10), kw = a.int32(11), stride = a.int32(12), padTop = a.int32(13), padLeft = a.int32(14)
            let row0 = a.int64(15), rows = a.int64(16), bf16Frames = a.int32(17)
            guard (1...3).contains(frames), (0...1).contains(up), channels > 0, kh > 0, kw > 0, stride > 0, outW > 0, row0 >= 0, rows >= 0,
                  bf16Frames >> frames == 0 else {
                return "frames \(frames), up \(up), channels \(channels), kernel \(kh)x\(kw), stride \(stride), out_w \(outW), rows \(row0)+\(rows), "
                    + "bf16 frames \(bf16Frames)"
            }
            let width = frames * kh * kw * channels
            guard rows * width < (1 << 31) else { return "\(rows) rows x \(width) columns pass the kernel's 32-bit index" }
            let bf16 = name == "vae_im2col_bf16", size = bf16 ? 2 : 4
            let input = inputFrames(a, first: 1, frames: frames, bf16Frames: bf16Frames)
            guard EmulatedDriver.inside(a.address(0), rows * width * size),
                  inside(input, values: srcH * srcW * channels) else {
                return "the columns or an input frame run past an allocation"
            }
            if channels % 4 == 0, a.address(0) % UInt64(4 * size) != 0 || !input.allSatisfy({ $0.address % ($0.bf16 ? 8 : 16) == 0 }) {
                return "four-channel access needs \(4 * size)-byte aligned columns and 16-byte (f32) / 8-byte (bf16) aligned frames"
            }
            // Gathered in f32, then stored (rounded to nearest even for bf16).
            let col = bf16 ? UnsafeMutablePointer<Float>.allocate(capacity: rows * width) : floats(a.address(0))
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
                                let at = ((iy >> up) * srcW + (ix >> up)) * channels
                                if input[t].bf16 {
                                    for c in 0..<channels { dst[c] = input[t][at + c] }
                                } else {
                                    dst.update(from: floats(input[t].address) + at, count: channels)
                                }
                            } else {
                                dst.update(repeating: 0, count: channels)
                            }
                            dst += channels
                        }
                    }
                }
            }
        case "vae_conv_bf16":
            let frames = a.int32(6), srcH = a.int32(7), srcW = a.int32(8), channels = a.int32(9), up = a.int32(10)
            let outH = a.int32(11), outW = a.int32(12), kh = a.int32(13), kw = a.int32(14), stride = a.int32(15)
            let padTop = a.int32(16), padLeft = a.int32(17), outChannels = a.int32(18), ldw = a.int32(19), accumulate = a.int32(20)
            let bf16Frames = a.int32(21)
            let pixels = outH * outW, width = frames * kh * kw * channels
            guard (1...3).contains(frames), (0...1).contains(up), channels > 0, channels % 32 == 0, ldw % 8 == 0, ldw >= width,
                  kh > 0, kw > 0, stride > 0, outChannels > 0, bf16Frames >> frames == 0 else {
                return "frames \(frames), up \(up), channels \(channels) (multiple of 32), ldw \(ldw) (multiple of 8, >= \(width)), bf16 frames \(bf16Frames)"
            }
            guard threads == 256, grid.0 * 128 >= pixels, grid.1 * 64 >= outChannels else {
                return "grid \(grid) block \(block) does not cover \(pixels) pixels x \(outChannels) channels (128 x 64 per block of 256)"
            }
            let input = inputFrames(a, first: 1, frames: frames, bf16Frames: bf16Frames)
            guard EmulatedDriver.inside(a.address(0), pixels * outChannels * 4),
                  inside(input, values: srcH * srcW * channels),
                  EmulatedDriver.inside(a.address(4), ((outChannels - 1) * ldw + width) * 2), EmulatedDriver.inside(a.address(5), outChannels * 4) else {
                return "the output, an input frame, the weights or the bias run past an allocation"
            }
            guard (input.map(\.address) + [a.address(4)]).allSatisfy({ $0 % 16 == 0 }) else { return "frames and weights must be 16-byte aligned" }
            let y = floats(a.address(0)), bias = floats(a.address(5))
            let w = UnsafeMutablePointer<UInt16>(bitPattern: UInt(a.address(4)))!
            let (inH, inW) = (srcH << up, srcW << up)
            var column = [Double](repeating: 0, count: width)
            for p in 0..<pixels {
                let oy = p / outW, ox = p % outW
                var at = 0
                for t in 0..<frames { for ky in 0..<kh { for kx in 0..<kw {
                    let iy = oy * stride - padTop + ky, ix = ox * stride - padLeft + kx
                    let inside = iy >= 0 && iy < inH && ix >= 0 && ix < inW
                    for c in 0..<channels {
                        column[at] = inside ? Double(BFloat16.float(BFloat16.from(input[t][((iy >> up) * srcW + (ix >> up)) * channels + c]))) : 0
                        at += 1
                    }
                } } }
                for o in 0..<outChannels {
                    var s = 0.0
                    for k in 0..<width { s += column[k] * Double(BFloat16.float(w[o * ldw + k])) }
                    // In float64 and rounded once, in the emulated cuBLASLt's order (product, + y, + bias): the
                    // implicit conv then equals im2col + the emulated product bit for bit.
                    var v = s
                    if accumulate == 1 { v += Double(y[p * outChannels + o]) }
                    v += Double(bias[o])
                    y[p * outChannels + o] = Float(v)
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
