import Foundation

/// Reuses device allocations: a buffer handed back is kept (by its rounded size) and given to the next request of
/// that size instead of a new cuMemAlloc (which is slow and synchronises). Work runs in order on one stream, so a
/// buffer released while kernels that use it are still queued is safe to hand to later work on that stream.
public final class DeviceMemoryPool {
    public let context: CUDAContext
    private var free: [Int: [DeviceBuffer]] = [:]
    /// Bytes of every live buffer the pool made (in use or kept free).
    public private(set) var allocatedBytes = 0
    /// The most `allocatedBytes` has been.
    public private(set) var peakAllocatedBytes = 0
    /// Bytes kept free at most; buffers beyond it are freed when released.
    public var keepFreeBytes: Int

    public init(context: CUDAContext, keepFreeBytes: Int = 8 << 30) {
        self.context = context
        self.keepFreeBytes = keepFreeBytes
    }

    /// Sizes are rounded up to 2 MiB (small ones to 256 bytes), so slightly different requests share buffers.
    public static func roundedSize(_ bytes: Int) -> Int {
        let granule = bytes >= (1 << 21) ? (1 << 21) : 256
        return max(granule, (bytes + granule - 1) / granule * granule)
    }

    /// A buffer of at least `bytes`, reused when one of that rounded size is free.
    public func acquire(bytes: Int) throws -> DeviceBuffer {
        let size = Self.roundedSize(bytes)
        if var list = free[size], let buffer = list.popLast() {
            free[size] = list
            return buffer
        }
        let buffer: DeviceBuffer
        do {
            buffer = try context.allocate(bytes: size)
        } catch CUDAError.outOfMemory {
            // Give the kept buffers back to the driver and try once more.
            trim()
            buffer = try context.allocate(bytes: size)
        }
        allocatedBytes += size
        peakAllocatedBytes = max(peakAllocatedBytes, allocatedBytes)
        return buffer
    }

    /// Hands a buffer back for reuse.
    public func release(_ buffer: DeviceBuffer) {
        let kept = free.values.reduce(0) { $0 + $1.reduce(0) { $0 + $1.bytes } }
        if kept + buffer.bytes > keepFreeBytes {
            allocatedBytes -= buffer.bytes  // freed when the last reference goes
            return
        }
        free[buffer.bytes, default: []].append(buffer)
    }

    /// Frees every kept buffer.
    public func trim() {
        for list in free.values { for buffer in list { allocatedBytes -= buffer.bytes } }
        free.removeAll()
    }
}

/// Named regions of one device allocation, each aligned to 256 bytes (what cuBLASLt's fastest kernels assume), laid
/// out in the order they were added. The plan is made on the host (testable without a GPU); `bind` places it on a
/// buffer.
public struct WorkspacePlan: Equatable, CustomStringConvertible {
    public static let alignment = 256
    public private(set) var regions: [(name: String, offset: Int, bytes: Int)] = []
    public private(set) var totalBytes = 0

    public init() {}

    public mutating func add(_ name: String, bytes: Int) {
        precondition(!regions.contains { $0.name == name }, "region \(name) added twice")
        let offset = (totalBytes + Self.alignment - 1) / Self.alignment * Self.alignment
        regions.append((name, offset, bytes))
        totalBytes = offset + max(bytes, 0)
    }

    public func offset(_ name: String) -> Int? { regions.first { $0.name == name }?.offset }
    public func bytes(_ name: String) -> Int? { regions.first { $0.name == name }?.bytes }

    public static func == (a: WorkspacePlan, b: WorkspacePlan) -> Bool {
        a.totalBytes == b.totalBytes && a.regions.elementsEqual(b.regions) { $0.name == $1.name && $0.offset == $1.offset && $0.bytes == $1.bytes }
    }

    public var description: String {
        regions.map { "\($0.name)@\($0.offset)+\($0.bytes)" }.joined(separator: " ") + " = \(totalBytes) bytes"
    }
}
