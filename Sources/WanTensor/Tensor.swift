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
        let raw = BufferPool.shared.allocate(bytes)
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
        let raw = BufferPool.shared.allocate(bytes)
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
        if owned { BufferPool.shared.release(UnsafeMutableRawPointer(data), bytes: max(count, 1) * MemoryLayout<Float>.stride) }
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

/// Recycles large tensor buffers by exact size. Fresh large allocations are new mappings whose pages the kernel
/// must fault in and zero; models that run the same shapes chunk after chunk (the VAE, the DiT's steps) reuse them
/// instead. The pool keeps at most `capacity` bytes of free buffers and returns the rest to the system.
public final class BufferPool: @unchecked Sendable {
    public static let shared = BufferPool()
    /// Buffers smaller than this go straight to the allocator.
    public let minimumBytes = 1 << 20
    public var capacity = 1 << 28
    private var free: [Int: [UnsafeMutableRawPointer]] = [:]
    private var order: [(bytes: Int, pointer: UnsafeMutableRawPointer)] = []
    private var held = 0
    private let lock = NSLock()

    func allocate(_ bytes: Int) -> UnsafeMutableRawPointer {
        if bytes >= minimumBytes {
            lock.lock()
            if var list = free[bytes], let p = list.popLast() {
                free[bytes] = list
                held -= bytes
                if let i = order.firstIndex(where: { $0.pointer == p }) { order.remove(at: i) }
                lock.unlock()
                return p
            }
            lock.unlock()
        }
        return UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
    }

    func release(_ p: UnsafeMutableRawPointer, bytes: Int) {
        guard bytes >= minimumBytes, bytes <= capacity else { p.deallocate(); return }
        lock.lock()
        free[bytes, default: []].append(p)
        order.append((bytes, p))
        held += bytes
        var evicted: [UnsafeMutableRawPointer] = []
        while held > capacity, !order.isEmpty {
            let old = order.removeFirst()
            if var list = free[old.bytes], let i = list.firstIndex(of: old.pointer) {
                list.remove(at: i)
                free[old.bytes] = list
                held -= old.bytes
                evicted.append(old.pointer)
            }
        }
        lock.unlock()
        for e in evicted { e.deallocate() }
    }

    /// Returns every pooled buffer to the system.
    public func drain() {
        lock.lock()
        let all = order.map(\.pointer)
        free = [:]; order = []; held = 0
        lock.unlock()
        for p in all { p.deallocate() }
    }
}
