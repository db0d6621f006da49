import Foundation

/// JSON parsing that keeps every character of its strings.
public enum JSONText {
    /// `JSONSerialization.jsonObject(with:)`, except that a U+FEFF written as raw UTF-8 inside a string survives.
    /// swift-corelibs-foundation's parser decodes each run of a string between escapes on its own and drops a U+FEFF
    /// that starts one ("\u{FEFF}b" and "a\n\u{FEFF}" lose it), as if it were a byte order mark; Python's `json.dump`
    /// with `ensure_ascii=False` writes it raw. So every raw U+FEFF after the first byte is rewritten as the escape
    /// `\ufeff`, which the parser keeps (U+FEFF outside a string is invalid JSON either way).
    public static func object(with data: Data) throws -> Any {
        try JSONSerialization.jsonObject(with: escapingZeroWidthNoBreakSpace(data))
    }

    static func escapingZeroWidthNoBreakSpace(_ data: Data) -> Data {
        let bom: [UInt8] = [0xEF, 0xBB, 0xBF]
        let bytes = [UInt8](data)
        var start = 0
        if bytes.starts(with: bom) { start = 3 }  // a byte order mark at the start of the file
        guard bytes.count - start >= 3, (start..<(bytes.count - 2)).contains(where: { bytes[$0] == 0xEF && bytes[$0 + 1] == 0xBB && bytes[$0 + 2] == 0xBF }) else {
            return start == 0 ? data : Data(bytes[start...])
        }
        var out = [UInt8]()
        out.reserveCapacity(bytes.count + 16)
        var i = start
        while i < bytes.count {
            if i + 2 < bytes.count && bytes[i] == 0xEF && bytes[i + 1] == 0xBB && bytes[i + 2] == 0xBF {
                out += Array("\\ufeff".utf8)
                i += 3
            } else {
                out.append(bytes[i]); i += 1
            }
        }
        return Data(out)
    }
}
