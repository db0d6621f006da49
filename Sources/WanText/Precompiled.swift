import Foundation

/// SentencePiece's compiled normalization rules (`precompiled_charsmap` of a tokenizer.json `Precompiled`
/// normalizer): a little-endian u32 trie size in bytes, a Darts-clone double-array trie of that many bytes (u32
/// units) mapping UTF-8 byte strings to offsets, then a blob of NUL-terminated UTF-8 replacement strings.
///
/// Applied the way the Hugging Face `tokenizers` library does (not the way SentencePiece does): the text is walked
/// per extended grapheme cluster; a cluster shorter than 6 UTF-8 bytes whose bytes start with a key of the trie is
/// replaced *as a whole* by the replacement of the first (shortest) matching key, so trailing combining marks of that
/// cluster are dropped (`ẛ̣` → `ṡ`); otherwise each scalar of the cluster is looked up on its own (first prefix
/// match again) and kept unchanged when nothing matches.
public struct PrecompiledCharsmap: Sendable {
    private let units: [UInt32]
    private let normalized: [UInt8]

    public init(bytes: [UInt8]) throws {
        guard bytes.count >= 4 else { throw PrecompiledError.tooShort }
        let trieSize = Int(UInt32(bytes[0]) | UInt32(bytes[1]) << 8 | UInt32(bytes[2]) << 16 | UInt32(bytes[3]) << 24)
        guard trieSize % 4 == 0, trieSize >= 4, 4 + trieSize <= bytes.count else { throw PrecompiledError.badTrieSize(trieSize, bytes.count) }
        var u = [UInt32](repeating: 0, count: trieSize / 4)
        for i in 0..<u.count {
            let o = 4 + 4 * i
            u[i] = UInt32(bytes[o]) | UInt32(bytes[o + 1]) << 8 | UInt32(bytes[o + 2]) << 16 | UInt32(bytes[o + 3]) << 24
        }
        units = u
        normalized = Array(bytes[(4 + trieSize)...])
    }

    public init(base64: String) throws {
        guard let d = Data(base64Encoded: base64) else { throw PrecompiledError.notBase64 }
        try self.init(bytes: [UInt8](d))
    }

    // Darts-clone unit accessors.
    @inline(__always) private static func hasLeaf(_ u: UInt32) -> Bool { (u >> 8) & 1 == 1 }
    @inline(__always) private static func value(_ u: UInt32) -> Int { Int(u & 0x7FFF_FFFF) }
    @inline(__always) private static func label(_ u: UInt32) -> UInt32 { u & 0x8000_00FF }
    @inline(__always) private static func offset(_ u: UInt32) -> Int { Int((u >> 10) << ((u & (1 << 9)) >> 6)) }

    /// The value (offset into the replacement blob) of the shortest key that is a prefix of `key`, as the
    /// `tokenizers` library takes it (`common_prefix_search(..)[0]`). A NUL byte ends the key.
    func firstPrefixValue<C: Collection>(_ key: C) -> Int? where C.Element == UInt8 {
        let n = units.count
        guard n > 0 else { return nil }
        var pos = Self.offset(units[0])
        for c in key {
            if c == 0 { break }
            pos ^= Int(c)
            guard pos >= 0, pos < n else { return nil }
            let unit = units[pos]
            if Self.label(unit) != UInt32(c) { return nil }
            pos ^= Self.offset(unit)
            if Self.hasLeaf(unit) {
                guard pos >= 0, pos < n else { return nil }
                return Self.value(units[pos])
            }
        }
        return nil
    }

    /// The replacement string stored at `value` (bytes up to the next NUL).
    func replacement(_ value: Int) -> ArraySlice<UInt8>? {
        guard value >= 0, value <= normalized.count else { return nil }
        var end = value
        while end < normalized.count && normalized[end] != 0 { end += 1 }
        return normalized[value..<end]
    }

    /// Normalizes `text` (see the type's description).
    public func normalize(_ text: String) -> String {
        var out = [UInt8]()
        out.reserveCapacity(text.utf8.count + 8)
        let utf8 = text.utf8
        var i = text.startIndex
        while i < text.endIndex {
            let j = text.index(after: i)
            let cluster = utf8[i..<j]
            if cluster.count < 6, let v = firstPrefixValue(cluster), let r = replacement(v) {
                out.append(contentsOf: r)
            } else {
                for scalar in text.unicodeScalars[i..<j] {
                    let bytes = Array(String(scalar).utf8)
                    if let v = firstPrefixValue(bytes), let r = replacement(v) {
                        out.append(contentsOf: r)
                    } else {
                        out.append(contentsOf: bytes)
                    }
                }
            }
            i = j
        }
        return String(decoding: out, as: UTF8.self)
    }
}

public enum PrecompiledError: Error, CustomStringConvertible {
    case tooShort, notBase64, badTrieSize(Int, Int)
    public var description: String {
        switch self {
        case .tooShort: return "precompiled_charsmap is shorter than its 4-byte header"
        case .notBase64: return "precompiled_charsmap is not valid base64"
        case .badTrieSize(let s, let n): return "precompiled_charsmap declares a trie of \(s) bytes in a blob of \(n) bytes"
        }
    }
}
