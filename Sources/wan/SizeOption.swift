import ArgumentParser

/// Reads a `--size` value "WxH" (or the official "W*H"): both positive, and multiples of `multiple` where the model
/// needs it. The error says what to write.
func parseSize(_ text: String, multipleOf multiple: Int = 1) throws -> (width: Int, height: Int) {
    let parts = text.lowercased().replacingOccurrences(of: "*", with: "x").split(separator: "x", omittingEmptySubsequences: false).map { Int($0) }
    guard parts.count == 2, let w = parts[0], let h = parts[1], w > 0, h > 0, w % multiple == 0, h % multiple == 0 else {
        throw ValidationError("--size must be WxH\(multiple > 1 ? " with both multiples of \(multiple)" : ""), e.g. 832x480 (got \(text))")
    }
    return (w, h)
}
