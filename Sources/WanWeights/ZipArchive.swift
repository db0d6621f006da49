import Foundation

/// Errors of zip archives (torch .pth files).
public enum ArchiveError: Error, CustomStringConvertible, Equatable {
    case notZip(path: String, detail: String)
    case corrupt(path: String, detail: String)
    case compressed(path: String, entry: String)
    case missingEntry(path: String, entry: String)

    public var description: String {
        switch self {
        case .notZip(let p, let d): return "\(p) is not a zip archive (\(d)); a torch .pth file saved by torch.save is a zip archive: is the file complete?"
        case .corrupt(let p, let d): return "\(p): corrupt zip archive: \(d) (the file is truncated or damaged; re-download it)"
        case .compressed(let p, let e): return "\(p): entry '\(e)' is compressed; torch.save stores entries uncompressed, so this is not a torch checkpoint WanKit can map"
        case .missingEntry(let p, let e): return "\(p): the archive has no entry '\(e)'"
        }
    }
}

/// A read-only view of a zip archive inside a mapped file: the central directory (zip64 included) and the data
/// offset of every stored entry. Only uncompressed (stored) entries can be read, which is what torch.save writes.
public final class ZipArchive: @unchecked Sendable {
    public struct Entry: Sendable {
        public let name: String
        public let method: Int
        public let size: Int
        /// Offset of the entry's data in the file.
        public let dataOffset: Int
    }

    public let file: MappedFile
    public let entries: [String: Entry]
    public let order: [String]

    public init(file: MappedFile) throws {
        self.file = file
        let path = file.path, size = file.size, base = file.base
        func u16(_ o: Int) -> Int { Int(UInt16(littleEndian: base.loadUnaligned(fromByteOffset: o, as: UInt16.self))) }
        func u32(_ o: Int) -> Int { Int(UInt32(littleEndian: base.loadUnaligned(fromByteOffset: o, as: UInt32.self))) }
        // A zip64 count, stored size or offset lies inside this file: one beyond the file's size is corrupt, and
        // bounding them by it keeps the sums below (offset + size, offset + header) from overflowing. (Only the
        // uncompressed size of a compressed entry may be larger; it is never added to anything.)
        func u64(_ o: Int, _ what: String, bound: Int? = nil) throws -> Int {
            let v = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: o, as: UInt64.self))
            guard v <= UInt64(bound ?? size) else {
                throw ArchiveError.corrupt(path: path, detail: "the zip64 \(what) is \(v), out of range for the \(size)-byte file")
            }
            return Int(v)
        }
        guard size >= 22 else { throw ArchiveError.notZip(path: path, detail: "\(size) bytes is too short") }
        // Find the end-of-central-directory record (it may be followed by a comment of up to 65535 bytes).
        var eocd = -1
        var o = size - 22
        let lowest = max(0, size - 22 - 65535)
        while o >= lowest {
            if u32(o) == 0x0605_4B50 { eocd = o; break }
            o -= 1
        }
        guard eocd >= 0 else { throw ArchiveError.notZip(path: path, detail: "no end-of-central-directory record") }
        var count = u16(eocd + 10)
        var cdSize = u32(eocd + 12)
        var cdOffset = u32(eocd + 16)
        if (count == 0xFFFF || cdSize == 0xFFFF_FFFF || cdOffset == 0xFFFF_FFFF), eocd >= 20, u32(eocd - 20) == 0x0706_4B50 {
            let rec = try u64(eocd - 20 + 8, "end-of-central-directory record offset")
            guard rec >= 0, rec + 56 <= size, u32(rec) == 0x0606_4B50 else {
                throw ArchiveError.corrupt(path: path, detail: "bad zip64 end-of-central-directory record")
            }
            count = try u64(rec + 32, "entry count")
            cdSize = try u64(rec + 40, "central directory size")
            cdOffset = try u64(rec + 48, "central directory offset")
        }
        guard cdOffset >= 0, cdSize >= 0, cdOffset + cdSize <= size, count <= cdSize / 46 + 1 else {
            throw ArchiveError.corrupt(path: path, detail: "central directory (\(count) entries at \(cdOffset), \(cdSize) bytes) lies outside the \(size)-byte file")
        }
        var entries: [String: Entry] = [:]
        var order: [String] = []
        var p = cdOffset
        let end = cdOffset + cdSize
        for _ in 0..<count {
            guard p + 46 <= end, u32(p) == 0x0201_4B50 else { throw ArchiveError.corrupt(path: path, detail: "bad central directory entry at \(p)") }
            let method = u16(p + 10)
            var compSize = u32(p + 20), uncompSize = u32(p + 24)
            let nameLen = u16(p + 28), extraLen = u16(p + 30), commentLen = u16(p + 32)
            var localOffset = u32(p + 42)
            guard p + 46 + nameLen + extraLen + commentLen <= end else { throw ArchiveError.corrupt(path: path, detail: "central directory entry overruns") }
            let name = String(decoding: UnsafeRawBufferPointer(start: base + p + 46, count: nameLen), as: UTF8.self)
            // zip64 extended information: the 0xFFFFFFFF fields, in order.
            var e = p + 46 + nameLen
            let extraEnd = e + extraLen
            while e + 4 <= extraEnd {
                let tag = u16(e), len = u16(e + 2)
                guard e + 4 + len <= extraEnd else { break }
                if tag == 0x0001 {
                    var q = e + 4
                    if uncompSize == 0xFFFF_FFFF, q + 8 <= e + 4 + len { uncompSize = try u64(q, "size of '\(name)'", bound: Int.max); q += 8 }
                    if compSize == 0xFFFF_FFFF, q + 8 <= e + 4 + len { compSize = try u64(q, "stored size of '\(name)'"); q += 8 }
                    if localOffset == 0xFFFF_FFFF, q + 8 <= e + 4 + len { localOffset = try u64(q, "header offset of '\(name)'"); q += 8 }
                }
                e += 4 + len
            }
            guard localOffset + 30 <= size, u32(localOffset) == 0x0403_4B50 else {
                throw ArchiveError.corrupt(path: path, detail: "entry '\(name)' points to a bad local header")
            }
            let dataOffset = localOffset + 30 + u16(localOffset + 26) + u16(localOffset + 28)
            guard dataOffset + compSize <= size else {
                throw ArchiveError.corrupt(path: path, detail: "entry '\(name)' (\(compSize) bytes at \(dataOffset)) runs past the end of the file")
            }
            entries[name] = Entry(name: name, method: method, size: method == 0 ? compSize : uncompSize, dataOffset: dataOffset)
            order.append(name)
            p += 46 + nameLen + extraLen + commentLen
        }
        self.entries = entries
        self.order = order
    }

    /// The bytes of a stored entry, in the mapping.
    public func bytes(_ name: String) throws -> UnsafeRawBufferPointer {
        guard let e = entries[name] else { throw ArchiveError.missingEntry(path: file.path, entry: name) }
        guard e.method == 0 else { throw ArchiveError.compressed(path: file.path, entry: name) }
        return UnsafeRawBufferPointer(start: file.base + e.dataOffset, count: e.size)
    }
}
