import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A read-only memory mapping of a whole file (mmap, MAP_PRIVATE): pages are read on demand and can be evicted,
/// so mapped weights cost address space, not resident memory, until they are touched.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let size: Int
    public let base: UnsafeRawPointer

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        if fd < 0 {
            let err = errno
            if err == ENOENT { throw WeightError.fileNotFound(path: path) }
            throw WeightError.cannotOpen(path: path, reason: String(cString: strerror(err)))
        }
        defer { close(fd) }
        var st = stat()
        if fstat(fd, &st) != 0 { throw WeightError.cannotOpen(path: path, reason: String(cString: strerror(errno))) }
        if (st.st_mode & S_IFMT) == S_IFDIR { throw WeightError.cannotOpen(path: path, reason: "it is a directory, not a file") }
        size = Int(st.st_size)
        if size == 0 {
            base = UnsafeRawPointer(UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 64))
            return
        }
        let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
        if p == MAP_FAILED || p == nil {
            throw WeightError.cannotOpen(path: path, reason: "mmap failed: \(String(cString: strerror(errno)))")
        }
        base = UnsafeRawPointer(p!)
        Self.registry.withLock { $0[ObjectIdentifier(self)] = Weak(file: self) }
    }

    deinit {
        Self.registry.withLock { _ = $0.removeValue(forKey: ObjectIdentifier(self)) }
        if size == 0 { UnsafeMutableRawPointer(mutating: base).deallocate() } else { munmap(UnsafeMutableRawPointer(mutating: base), size) }
    }

    /// Hands the resident pages of this mapping back to the kernel: they leave the process's RSS and are read again
    /// from the page cache (or the disk) on the next use. The data stays valid.
    public func releaseResidentPages() {
        guard size > 0 else { return }
        _ = madvise(UnsafeMutableRawPointer(mutating: base), size, Int32(MADV_DONTNEED))
    }

    /// Releases the resident pages of every open weight mapping (a pipeline calls this between stages, e.g. before
    /// decoding, so the DiT's pages do not sit beside the VAE's working memory). Returns the bytes of mappings visited.
    @discardableResult
    public static func releaseAllResidentPages() -> Int {
        let files = registry.withLock { $0.values.compactMap(\.file) }
        for f in files { f.releaseResidentPages() }
        return files.reduce(0) { $0 + $1.size }
    }

    private struct Weak { weak var file: MappedFile? }
    private static let registry = LockedBox<[ObjectIdentifier: Weak]>([:])
}

/// A value behind a lock.
final class LockedBox<Value>: @unchecked Sendable {
    private var value: Value
    private let lock = NSLock()
    init(_ v: Value) { value = v }
    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        lock.lock(); defer { lock.unlock() }
        return try body(&value)
    }
}
