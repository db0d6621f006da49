import Foundation

/// A dense, row-major float32 tensor: the one compute type of WanKit.
///
/// Storage is either owned (allocated here, 64-byte aligned) or borrowed from an owner that
/// keeps it alive (a memory-mapped weight file). Tensors are reference types: ops write into
/// preallocated outputs instead of copying.
public final class Tensor: @unchecked Sendable {
    public let shape: [Int]
    public let count: Int
    public let data: UnsafeMutablePointer<Float>
    private let owned: Bool
    private let owner: AnyObject?

    /// A zero-filled tensor of the given shape.
    public init(zeros shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        self.shape = shape
        self.count = shape.reduce(1, *)
        let bytes = max(self.count, 1) * MemoryLayout<Float>.stride
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        self.data = raw.bindMemory(to: Float.self, capacity: max(self.count, 1))
        self.owned = true
        self.owner = nil
    }

    /// An uninitialised tensor (every element must be written before it is read).
    public init(uninitialized shape: [Int]) {
        self.shape = shape
        self.count = shape.reduce(1, *)
        let bytes = max(self.count, 1) * MemoryLayout<Float>.stride
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        self.data = raw.bindMemory(to: Float.self, capacity: max(self.count, 1))
        self.owned = true
        self.owner = nil
    }

    /// A view of float32 memory kept alive by `owner` (for example a mapped file).
    public init(borrowing pointer: UnsafeMutablePointer<Float>, shape: [Int], owner: AnyObject) {
        self.shape = shape
        self.count = shape.reduce(1, *)
        self.data = pointer
        self.owned = false
        self.owner = owner
    }

    public convenience init(shape: [Int], values: [Float]) {
        precondition(values.count == shape.reduce(1, *), "\(values.count) values for shape \(shape)")
        self.init(uninitialized: shape)
        values.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: values.count) }
    }

    deinit {
        if owned { UnsafeMutableRawPointer(data).deallocate() }
    }

    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: data, count: count) }
    public var array: [Float] { Array(buffer) }
    public var rank: Int { shape.count }

    /// Pointer to row `i` of a tensor seen as [count / lastDim, lastDim].
    @inline(__always) public func row(_ i: Int) -> UnsafeMutablePointer<Float> { data + i * shape[shape.count - 1] }

    /// A copy with another shape of the same element count.
    public func reshaped(_ newShape: [Int]) -> Tensor {
        precondition(newShape.reduce(1, *) == count, "cannot reshape \(shape) to \(newShape)")
        let t = Tensor(uninitialized: newShape)
        t.data.update(from: data, count: count)
        return t
    }
}

/// Differences between two float sequences, as the golden cases measure them.
public struct Comparison: Sendable, CustomStringConvertible {
    public var relL2: Double
    public var maxAbs: Double
    public init(got: UnsafeBufferPointer<Float>, expected: UnsafeBufferPointer<Float>) {
        precondition(got.count == expected.count)
        var diff2 = 0.0, ref2 = 0.0, mx = 0.0
        for i in 0..<got.count {
            let d = Double(got[i]) - Double(expected[i])
            diff2 += d * d
            ref2 += Double(expected[i]) * Double(expected[i])
            let a = abs(d)
            if !(a <= mx) { mx = a }  // NaN propagates as a failure
        }
        relL2 = ref2 > 0 ? (diff2 / ref2).squareRoot() : diff2.squareRoot()
        if diff2.isNaN { relL2 = .nan }
        maxAbs = mx
    }
    public var description: String { String(format: "rel_l2=%.3e max_abs=%.3e", relL2, maxAbs) }
}
