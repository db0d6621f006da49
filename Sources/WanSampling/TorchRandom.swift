// TorchRandom: PyTorch's CPU generator (`torch.manual_seed` / `torch.Generator(device='cpu')`), value for value.
// See ../shared/golden/README.md, "RNG": mt19937 seeded with the low 32 bits of the seed, 24-bit float / 53-bit double
// uniforms, and `randn` through the two Box-Muller paths of ATen's CPU normal kernel:
//   - numel >= 16: the vectorised float32 path (AVX2 kernel, Cephes log / sincos polynomials evaluated with fused
//     multiply-adds where GCC contracts them),
//   - numel < 16: the scalar double path with the cached second normal.
import WanTensor

/// PyTorch CPU random generator. `var g = TorchRandom(seed: 42); let noise = g.randn(shape: [16, 21, 60, 104])` gives
/// exactly `torch.randn([16, 21, 60, 104], generator=torch.Generator().manual_seed(42))`.
public struct TorchRandom: Sendable {
    private static let n = 624
    private static let m = 397
    private var state: [UInt32]
    private var left: Int = 1
    private var nextIndex: Int = 0
    /// The cached second value of the scalar (double) Box-Muller path, as PyTorch's `next_double_normal_sample`.
    private var cachedNormal: Double? = nil
    /// The seed as given (only its low 32 bits are used, as in PyTorch).
    public private(set) var seed: UInt64

    public init(seed: UInt64) {
        self.seed = seed
        state = [UInt32](repeating: 0, count: Self.n)
        manualSeed(seed)
    }

    /// `generator.manual_seed(seed)`: resets the engine and clears the cached normal.
    public mutating func manualSeed(_ seed: UInt64) {
        self.seed = seed
        state[0] = UInt32(truncatingIfNeeded: seed)
        for i in 1..<Self.n {
            let p = state[i - 1]
            state[i] = 1812433253 &* (p ^ (p >> 30)) &+ UInt32(i)
        }
        left = 1
        nextIndex = 0
        cachedNormal = nil
    }

    private mutating func twistState() {
        @inline(__always) func twist(_ u: UInt32, _ v: UInt32) -> UInt32 {
            let mix = (u & 0x8000_0000) | (v & 0x7fff_ffff)
            return (mix >> 1) ^ ((v & 1) != 0 ? 0x9908_b0df : 0)
        }
        let n = Self.n, m = Self.m
        state.withUnsafeMutableBufferPointer { s in
            for k in 0..<(n - m) { s[k] = s[k + m] ^ twist(s[k], s[k + 1]) }
            for k in (n - m)..<(n - 1) { s[k] = s[k + m - n] ^ twist(s[k], s[k + 1]) }
            s[n - 1] = s[m - 1] ^ twist(s[n - 1], s[0])
        }
        left = n
        nextIndex = 0
    }

    /// The next 32-bit output of mt19937.
    @inline(__always)
    public mutating func nextUInt32() -> UInt32 {
        left -= 1
        if left == 0 { twistState() }
        var y = state[nextIndex]
        nextIndex += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9d2c_5680
        y ^= (y << 15) & 0xefc6_0000
        y ^= y >> 18
        return y
    }

    /// PyTorch's `random64()`: two draws, the first one in the high half.
    public mutating func nextUInt64() -> UInt64 {
        let hi = UInt64(nextUInt32())
        let lo = UInt64(nextUInt32())
        return (hi << 32) | lo
    }

    /// `uniform_real_distribution<float>(0, 1)`: 24 random bits.
    @inline(__always)
    public mutating func uniformFloat() -> Float {
        Float(nextUInt32() & 0xFF_FFFF) * (1.0 / Float(1 << 24))
    }

    /// `uniform_real_distribution<double>(0, 1)`: 53 random bits of a 64-bit draw.
    public mutating func uniformDouble() -> Double {
        Double(nextUInt64() & ((1 << 53) - 1)) * (1.0 / Double(UInt64(1) << 53))
    }

    /// `at::normal_distribution<double>`: Box-Muller on two double uniforms; the sine half is cached for the next
    /// call.
    public mutating func normalDouble(mean: Double = 0, std: Double = 1) -> Double {
        if let c = cachedNormal {
            cachedNormal = nil
            return c * std + mean
        }
        let u1 = uniformDouble()
        let u2 = uniformDouble()
        let r = (-2.0 * (-u2).log1pValue).squareRoot()
        let theta = 2.0 * Double.pi * u1
        cachedNormal = r * sinDouble(theta)
        return r * cosDouble(theta) * std + mean
    }

    /// `torch.randn(shape)` on this generator (float32, contiguous), row-major.
    public mutating func randn(shape: [Int]) -> [Float] {
        let count = shape.reduce(1, *)
        var out = [Float](repeating: 0, count: count)
        out.withUnsafeMutableBufferPointer { randn(into: $0.baseAddress!, count: count) }
        return out
    }

    /// `torch.randn(shape)` as a Tensor.
    public mutating func randnTensor(shape: [Int]) -> Tensor {
        let t = Tensor(uninitialized: shape)
        randn(into: t.data, count: t.count)
        return t
    }

    /// Fills `count` contiguous float32 values as `tensor.normal_(mean, std)` does on CPU.
    public mutating func randn(into data: UnsafeMutablePointer<Float>, count: Int, mean: Float = 0, std: Float = 1) {
        guard count > 0 else { return }
        if count >= 16 {
            for i in 0..<count { data[i] = uniformFloat() }
            var i = 0
            while i + 16 <= count {
                Self.normalFill16(data + i, mean: mean, std: std)
                i += 16
            }
            if count % 16 != 0 {
                let tail = data + count - 16
                for k in 0..<16 { tail[k] = uniformFloat() }
                Self.normalFill16(tail, mean: mean, std: std)
            }
        } else {
            for i in 0..<count {
                data[i] = Float(normalDouble(mean: Double(mean), std: Double(std)))
            }
        }
    }

    /// ATen's `normal_fill_16_AVX2`: 16 uniforms in place -> 16 normals.
    @inline(__always)
    static func normalFill16(_ d: UnsafeMutablePointer<Float>, mean: Float, std: Float) {
        let twoPi = Float(2.0 * Double.pi)
        for j in 0..<8 {
            let u1 = 1 - d[j]
            let u2 = d[j + 8]
            let radius = (-2 * CephesAVX.log(u1)).squareRoot()
            let theta = twoPi * u2
            let (s, c) = CephesAVX.sincos(theta)
            let n1 = radius * c
            let n2 = radius * s
            d[j] = mean.addingProduct(n1, std)
            d[j + 8] = mean.addingProduct(n2, std)
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

@inline(__always) private func sinDouble(_ x: Double) -> Double { sin(x) }
@inline(__always) private func cosDouble(_ x: Double) -> Double { cos(x) }
private extension Double {
    var log1pValue: Double { log1p(self) }
}

/// Scalar transcriptions of `log256_ps` / `sincos256_ps` (avx_mathfun.h as PyTorch builds it for AVX2), with the
/// multiply-adds that the compiler fuses evaluated as FMAs.
enum CephesAVX {
    private static func f(_ d: Double) -> Float { Float(d) }

    static let sqrtHF = f(0.707106781186547524)
    static let logP0 = f(7.0376836292E-2)
    static let logP1 = f(-1.1514610310E-1)
    static let logP2 = f(1.1676998740E-1)
    static let logP3 = f(-1.2420140846E-1)
    static let logP4 = f(1.4249322787E-1)
    static let logP5 = f(-1.6668057665E-1)
    static let logP6 = f(2.0000714765E-1)
    static let logP7 = f(-2.4999993993E-1)
    static let logP8 = f(3.3333331174E-1)
    static let logQ1 = f(-2.12194440e-4)
    static let logQ2 = f(0.693359375)

    static let minusDP1 = f(-0.78515625)
    static let minusDP2 = f(-2.4187564849853515625e-4)
    static let minusDP3 = f(-3.77489497744594108e-8)
    static let sincofP0 = f(-1.9515295891E-4)
    static let sincofP1 = f(8.3321608736E-3)
    static let sincofP2 = f(-1.6666654611E-1)
    static let coscofP0 = f(2.443315711809948E-005)
    static let coscofP1 = f(-1.388731625493765E-003)
    static let coscofP2 = f(4.166664568298827E-002)
    static let fopi = f(1.27323954473516)

    /// Natural logarithm (NaN for x <= 0).
    @inline(__always)
    static func log(_ input: Float) -> Float {
        let invalid = input <= 0
        var x = Swift.max(input, Float(bitPattern: 0x0080_0000))
        var imm0 = Int32(bitPattern: x.bitPattern >> 23)
        x = Float(bitPattern: (x.bitPattern & ~UInt32(0x7f80_0000)) | Float(0.5).bitPattern)
        imm0 -= 0x7f
        var e = Float(imm0)
        e = e + 1
        let mask = x < sqrtHF
        let tmp: Float = mask ? x : Float(bitPattern: 0)
        x = x - 1
        e = e - (mask ? 1 : Float(bitPattern: 0))
        x = x + tmp
        let z = x * x
        var y = logP1.addingProduct(logP0, x)
        y = logP2.addingProduct(y, x)
        y = logP3.addingProduct(y, x)
        y = logP4.addingProduct(y, x)
        y = logP5.addingProduct(y, x)
        y = logP6.addingProduct(y, x)
        y = logP7.addingProduct(y, x)
        y = logP8.addingProduct(y, x)
        y = y * x
        y = (e * logQ1).addingProduct(y, z)
        y = y - z * 0.5
        x = x + y
        x = x.addingProduct(e, logQ2)
        return invalid ? .nan : x
    }

    /// (sin x, cos x) for x >= 0 in the range the Box-Muller transform uses (any x with |x| * 4/π < 2^31).
    @inline(__always)
    static func sincos(_ input: Float) -> (Float, Float) {
        var signSin = input.bitPattern & 0x8000_0000
        var x = Float(bitPattern: input.bitPattern & 0x7fff_ffff)
        var y = x * fopi
        var j = Int32(y)
        j = (j &+ 1) & ~1
        y = Float(j)
        let swapSin = UInt32(bitPattern: j & 4) << 29
        let polyMask = (j & 2) == 0
        x = x.addingProduct(y, minusDP1)
        x = x.addingProduct(y, minusDP2)
        x = x.addingProduct(y, minusDP3)
        let signCos = UInt32(bitPattern: ~(j &- 2) & 4) << 29
        signSin ^= swapSin

        let z = x * x
        var yc = coscofP1.addingProduct(coscofP0, z)
        yc = coscofP2.addingProduct(yc, z)
        yc = yc * z
        yc = (-(z * 0.5)).addingProduct(yc, z)
        yc = yc + 1

        var ys = sincofP1.addingProduct(sincofP0, z)
        ys = sincofP2.addingProduct(ys, z)
        ys = ys * z
        ys = x.addingProduct(ys, x)

        let zero = Float(bitPattern: 0)
        let ysin2 = polyMask ? ys : zero
        let ysin1 = polyMask ? zero : yc
        let ys2 = ys - ysin2
        let yc2 = yc - ysin1
        let s = ysin1 + ysin2
        let c = yc2 + ys2
        return (Float(bitPattern: s.bitPattern ^ signSin), Float(bitPattern: c.bitPattern ^ signCos))
    }
}
