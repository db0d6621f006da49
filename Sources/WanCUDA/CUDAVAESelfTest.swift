import Foundation
import WanTensor

/// The self-test cases of Kernels/vae.cu and of the VAE's cuBLASLt products (strided, accumulating, X·W), each
/// against a float64 reference of its documented semantics on small, awkward shapes (a partial row range, C = 3,
/// odd sizes, input frames stored in bf16 as the causal state is at bf16).
extension KernelSelfTest {
    typealias VAECase = (String, Double, () throws -> (gpu: [Double], reference: [Double]))

    func vaeSelfTestCases() -> [VAECase] {
        [
            ("vae_im2col_f32 (3 frames, 3x3, pad 1, rows 4..<33)", 0, {
                try self.vaeIm2col(frames: 3, srcH: 5, srcW: 7, channels: 12, up: 0, outH: 5, outW: 7, k: 3, stride: 1, pad: 1, row0: 4, rows: 29) }),
            ("vae_im2col_f32 (C 3, stride 2, pad right/bottom)", 0, {
                try self.vaeIm2col(frames: 1, srcH: 6, srcW: 10, channels: 3, up: 0, outH: 3, outW: 5, k: 3, stride: 2, pad: 0, row0: 0, rows: 15) }),
            ("vae_im2col_f32 (nearest 2x up)", 0, {
                try self.vaeIm2col(frames: 1, srcH: 3, srcW: 4, channels: 8, up: 1, outH: 6, outW: 8, k: 3, stride: 1, pad: 1, row0: 0, rows: 48) }),
            ("vae_im2col_f32 (2 frames, 1x1)", 0, {
                try self.vaeIm2col(frames: 2, srcH: 3, srcW: 5, channels: 20, up: 0, outH: 3, outW: 5, k: 1, stride: 1, pad: 0, row0: 0, rows: 15) }),
            ("vae_im2col_bf16 (3 frames, 3x3, pad 1)", 0, {
                try self.vaeIm2col(frames: 3, srcH: 5, srcW: 7, channels: 16, up: 0, outH: 5, outW: 7, k: 3, stride: 1, pad: 1, row0: 2, rows: 31, bf16: true) }),
            ("vae_im2col_bf16 (C 3, nearest 2x up)", 0, {
                try self.vaeIm2col(frames: 1, srcH: 3, srcW: 4, channels: 3, up: 1, outH: 6, outW: 8, k: 3, stride: 1, pad: 1, row0: 0, rows: 48, bf16: true) }),
            ("vae_im2col_f32 (frames 0, 1 stored in bf16)", 0, {
                try self.vaeIm2col(frames: 3, srcH: 5, srcW: 7, channels: 12, up: 0, outH: 5, outW: 7, k: 3, stride: 1, pad: 1, row0: 4, rows: 29,
                                   bf16Frames: 0b011) }),
            ("vae_im2col_f32 (C 3, frame 0 stored in bf16)", 0, {
                try self.vaeIm2col(frames: 2, srcH: 5, srcW: 7, channels: 3, up: 0, outH: 5, outW: 7, k: 3, stride: 1, pad: 1, row0: 0, rows: 35,
                                   bf16Frames: 0b01) }),
            ("vae_im2col_bf16 (frames 0, 1 stored in bf16)", 0, {
                try self.vaeIm2col(frames: 3, srcH: 5, srcW: 7, channels: 16, up: 0, outH: 5, outW: 7, k: 3, stride: 1, pad: 1, row0: 2, rows: 31, bf16: true,
                                   bf16Frames: 0b011) }),
            ("vae_conv_bf16 (3 frames, 3x3, pad 1, +=, 135 pixels x 40 channels)", 1e-5, {
                try self.vaeConv(frames: 3, srcH: 9, srcW: 15, channels: 32, up: 0, outH: 9, outW: 15, k: 3, stride: 1, pad: 1, outChannels: 40,
                                 skippedTaps: 0, accumulate: true) }),
            ("vae_conv_bf16 (C 64, stride 2, 72 channels)", 1e-5, {
                try self.vaeConv(frames: 1, srcH: 10, srcW: 12, channels: 64, up: 0, outH: 5, outW: 6, k: 3, stride: 2, pad: 0, outChannels: 72,
                                 skippedTaps: 0, accumulate: false) }),
            ("vae_conv_bf16 (nearest 2x up, 16 channels)", 1e-5, {
                try self.vaeConv(frames: 1, srcH: 4, srcW: 6, channels: 32, up: 1, outH: 8, outW: 12, k: 3, stride: 1, pad: 1, outChannels: 16,
                                 skippedTaps: 0, accumulate: false) }),
            ("vae_conv_bf16 (2 of 3 frames, 1x1: a weight row's suffix)", 1e-5, {
                try self.vaeConv(frames: 2, srcH: 7, srcW: 20, channels: 96, up: 0, outH: 7, outW: 20, k: 1, stride: 1, pad: 0, outChannels: 96,
                                 skippedTaps: 1, accumulate: false) }),
            ("vae_conv_bf16 (frames 0, 1 stored in bf16, +=)", 1e-5, {
                try self.vaeConv(frames: 3, srcH: 9, srcW: 15, channels: 64, up: 0, outH: 9, outW: 15, k: 3, stride: 1, pad: 1, outChannels: 40,
                                 skippedTaps: 0, accumulate: true, bf16Frames: 0b011) }),
            ("vae_rms_norm_f32", 1e-6, { try self.vaeRMSNorm(silu: false) }),
            ("vae_rms_norm_f32 (SiLU)", 1e-6, { try self.vaeRMSNorm(silu: true) }),
            ("vae_softmax_f32", 1e-6, vaeSoftmax),
            ("cublasLt f32 strided, bias, +=", 1e-6, { try self.vaeProduct(transposed: true) }),
            ("cublasLt f32 X·W (strided W)", 1e-6, { try self.vaeProduct(transposed: false) }),
            ("cublasLt bf16 -> f32 strided, bias, +=", 1e-5, { try self.vaeProduct(transposed: true, bf16: true) }),
        ]
    }

    private func vaeFunction(_ name: String, module: String = "vae.cu") throws -> CUDAFunction {
        try compiler.load(module: module, on: context).function(name)
    }

    /// `frames` input frames of `count` values (seeds from `seed` on): frame t stored in bf16 where bit t of
    /// `bf16Frames` is set (its values rounded to bf16, as the references read them), else in f32.
    private func vaeFrames(_ frames: Int, count: Int, seed: UInt64, bf16Frames: Int) throws -> (values: [[Float]], buffers: [DeviceBuffer]) {
        let half = { (t: Int) in bf16Frames >> t & 1 == 1 }
        let values = (0..<frames).map { t in
            Self.values(count, seed: seed + UInt64(t)).map { half(t) ? BFloat16.float(BFloat16.from($0)) : $0 }
        }
        let buffers = try (0..<frames).map { t in half(t) ? try upload(values[t].map(BFloat16.from)) : try upload(values[t]) }
        return (values, buffers)
    }

    private func vaeIm2col(frames: Int, srcH: Int, srcW: Int, channels c: Int, up: Int, outH: Int, outW: Int, k: Int, stride: Int, pad: Int,
                           row0: Int, rows: Int, bf16: Bool = false, bf16Frames: Int = 0) throws -> ([Double], [Double]) {
        let (inputs, buffers) = try vaeFrames(frames, count: srcH * srcW * c, seed: 17, bf16Frames: bf16Frames)
        let width = frames * k * k * c
        let col = try context.allocate(bytes: rows * width * (bf16 ? 2 : 4))
        let vector = c % 4 == 0 ? 4 : 1
        try vaeFunction(bf16 ? "vae_im2col_bf16" : "vae_im2col_f32").launch(grid: ((rows * width / vector + 255) / 256, 1, 1), block: (256, 1, 1), [
            .buffer(col), .buffer(buffers[0]), .pointer(frames > 1 ? buffers[1].pointer : 0), .pointer(frames > 2 ? buffers[2].pointer : 0),
            .int32(Int32(frames)), .int32(Int32(srcH)), .int32(Int32(srcW)), .int32(Int32(c)), .int32(Int32(up)), .int32(Int32(outW)),
            .int32(Int32(k)), .int32(Int32(k)), .int32(Int32(stride)), .int32(Int32(pad)), .int32(Int32(pad)), .int64(Int64(row0)), .int64(Int64(rows)),
            .int32(Int32(bf16Frames))])
        var reference: [Double] = []
        for r in 0..<rows {
            let oy = (row0 + r) / outW, ox = (row0 + r) % outW
            precondition(oy < outH)
            for t in 0..<frames { for ky in 0..<k { for kx in 0..<k {
                let iy = oy * stride - pad + ky, ix = ox * stride - pad + kx
                let inside = iy >= 0 && iy < srcH << up && ix >= 0 && ix < srcW << up
                for ch in 0..<c {
                    let v = inside ? inputs[t][((iy >> up) * srcW + (ix >> up)) * c + ch] : 0
                    reference.append(Double(bf16 ? BFloat16.float(BFloat16.from(v)) : v))
                }
            } } }
        }
        // The frames passed by address must outlive the (asynchronous) kernel.
        let got = bf16 ? try bf16s(col, rows * width) : try floats(col, rows * width)
        return withExtendedLifetime(buffers) { (got, reference) }
    }

    /// vae_conv_bf16 against a float64 sum over the same bf16-rounded inputs and weights; the weights are rows of
    /// (skippedTaps + frames) taps of which the kernel gets the suffix.
    private func vaeConv(frames: Int, srcH: Int, srcW: Int, channels c: Int, up: Int, outH: Int, outW: Int, k: Int, stride: Int, pad: Int,
                         outChannels: Int, skippedTaps: Int, accumulate: Bool, bf16Frames: Int = 0) throws -> ([Double], [Double]) {
        let round = { (v: Float) in BFloat16.float(BFloat16.from(v)) }
        let (inputs, buffers) = try vaeFrames(frames, count: srcH * srcW * c, seed: 31, bf16Frames: bf16Frames)
        let width = frames * k * k * c, ldw = (skippedTaps * k * k * c) + width
        let w = Self.values(outChannels * ldw, seed: 40, scale: 0.05).map(round)
        let bias = Self.values(outChannels, seed: 41), y0 = Self.values(outH * outW * outChannels, seed: 42)
        let dw = try context.allocate(bytes: w.count * 2)
        try dw.upload(w.map(BFloat16.from))
        let db = try upload(bias), dy = try upload(y0)
        let skipped = UInt64((ldw - width) * 2)
        try vaeFunction("vae_conv_bf16").launch(grid: ((outH * outW + 127) / 128, (outChannels + 63) / 64, 1), block: (256, 1, 1), [
            .buffer(dy), .buffer(buffers[0]), .pointer(frames > 1 ? buffers[1].pointer : 0), .pointer(frames > 2 ? buffers[2].pointer : 0),
            .pointer(dw.pointer + skipped), .buffer(db), .int32(Int32(frames)), .int32(Int32(srcH)), .int32(Int32(srcW)), .int32(Int32(c)),
            .int32(Int32(up)), .int32(Int32(outH)), .int32(Int32(outW)), .int32(Int32(k)), .int32(Int32(k)), .int32(Int32(stride)),
            .int32(Int32(pad)), .int32(Int32(pad)), .int32(Int32(outChannels)), .int32(Int32(ldw)), .int32(accumulate ? 1 : 0),
            .int32(Int32(bf16Frames))])
        var reference: [Double] = []
        for p in 0..<(outH * outW) {
            let oy = p / outW, ox = p % outW
            var column: [Double] = []
            for t in 0..<frames { for ky in 0..<k { for kx in 0..<k {
                let iy = oy * stride - pad + ky, ix = ox * stride - pad + kx
                let inside = iy >= 0 && iy < srcH << up && ix >= 0 && ix < srcW << up
                for ch in 0..<c { column.append(inside ? Double(round(inputs[t][((iy >> up) * srcW + (ix >> up)) * c + ch])) : 0) }
            } } }
            for o in 0..<outChannels {
                var s = Double(bias[o]) + (accumulate ? Double(y0[p * outChannels + o]) : 0)
                for kk in 0..<width { s += column[kk] * Double(w[o * ldw + (ldw - width) + kk]) }
                reference.append(s)
            }
        }
        let got = try floats(dy, outH * outW * outChannels)
        return withExtendedLifetime((buffers, dw)) { (got, reference) }
    }

    private func vaeRMSNorm(silu: Bool) throws -> ([Double], [Double]) {
        let rows = 37, c = 96
        let x = Self.values(rows * c, seed: 5, scale: 3), gamma = Self.values(c, seed: 6)
        let dx = try upload(x), dg = try upload(gamma), out = try context.allocate(bytes: rows * c * 4)
        try vaeFunction("vae_rms_norm_f32").launch(grid: ((rows + 7) / 8, 1, 1), block: (256, 1, 1), [
            .buffer(out), .buffer(dx), .buffer(dg), .int64(Int64(rows)), .int32(Int32(c)), .int32(silu ? 1 : 0)])
        var reference: [Double] = []
        for r in 0..<rows {
            let row = x[(r * c)..<((r + 1) * c)].map(Double.init)
            let inv = 1 / max(row.reduce(0) { $0 + $1 * $1 }.squareRoot(), 1e-12)
            for ch in 0..<c {
                let v = row[ch] * inv * Double(c).squareRoot() * Double(gamma[ch])
                reference.append(silu ? v / (1 + exp(-v)) : v)
            }
        }
        return (try floats(out, rows * c), reference)
    }

    private func vaeSoftmax() throws -> ([Double], [Double]) {
        let rows = 9, cols = 1000, scale: Float = 0.05
        let s = Self.values(rows * cols, seed: 7, scale: 30)
        let ds = try upload(s)
        try vaeFunction("vae_softmax_f32").launch(grid: (rows, 1, 1), block: (256, 1, 1), [.buffer(ds), .int64(Int64(rows)), .int32(Int32(cols)), .float(scale)])
        var reference: [Double] = []
        for r in 0..<rows {
            let row = s[(r * cols)..<((r + 1) * cols)].map { Double($0) * Double(scale) }
            let top = row.max()!
            let e = row.map { exp($0 - top) }
            let total = e.reduce(0, +)
            reference += e.map { $0 / total }
        }
        return (try floats(ds, rows * cols), reference)
    }

    /// transposed: Y[77, 40] (ld 40) += X[77, 96] (ld 104) · W[40, 96]ᵀ (ld 120) + b. Plain: Y[77, 40] = X[77, 96] ·
    /// W[96, 40] (ld 120, as V inside the attention's [q | k | v] rows). bf16: X and W in bf16 (the reference sees the
    /// same rounded values), Y and b f32.
    private func vaeProduct(transposed: Bool, bf16: Bool = false) throws -> ([Double], [Double]) {
        let (m, n, k, ldx, ldw) = (77, 40, 96, 104, 120)
        var x = Self.values(m * ldx, seed: 8), w = Self.values((transposed ? n : k) * ldw, seed: 9, scale: 0.1)
        let b = Self.values(n, seed: 10), y0 = Self.values(m * n, seed: 11)
        if bf16 {
            x = x.map { BFloat16.float(BFloat16.from($0)) }
            w = w.map { BFloat16.float(BFloat16.from($0)) }
        }
        func put(_ v: [Float]) throws -> DeviceBuffer {
            guard bf16 else { return try upload(v) }
            let buffer = try context.allocate(bytes: v.count * 2)
            try buffer.upload(v.map(BFloat16.from))
            return buffer
        }
        let dx = try put(x), dw = try put(w), db = try upload(b), dy = try upload(y0)
        let gemm = try VAEMatmul(context: context)
        let biasAct = try vaeFunction("bias_act_f32", module: "elementwise.cu")
        gemm.addBias = { y, bias, rows, cols in
            try biasAct.launch(grid: ((rows * cols + 255) / 256, 1, 1), block: (256, 1, 1),
                               [.pointer(y), .pointer(bias), .int64(Int64(rows)), .int32(Int32(cols)), .int32(0)])
        }
        try gemm.run(m: m, n: n, k: k, x: dx.pointer, ldx: ldx, w: dw.pointer, ldw: ldw, transposed: transposed, y: dy.pointer, ldy: n,
                     bias: transposed ? db.pointer : 0, accumulate: transposed, input: bf16 ? .bf16 : .f32)
        var reference = [Double](repeating: 0, count: m * n)
        for i in 0..<m {
            for j in 0..<n {
                var s = transposed ? Double(y0[i * n + j]) + Double(b[j]) : 0
                for p in 0..<k { s += Double(x[i * ldx + p]) * Double(transposed ? w[j * ldw + p] : w[p * ldw + j]) }
                reference[i * n + j] = s
            }
        }
        return (try floats(dy, m * n), reference)
    }
}
