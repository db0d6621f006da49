import Foundation

/// Optional wall-clock accounting of the engine's hot ops (`wan bench … --profile`). Off by default; when off,
/// `measure` costs one branch.
public enum Profile {
    nonisolated(unsafe) public static var enabled = false
    /// Account convolutions per shape (channels, kernel, stride, input size) instead of under one "conv" line.
    nonisolated(unsafe) public static var byShape = false
    nonisolated(unsafe) private static var totals: [String: (seconds: Double, calls: Int)] = [:]
    private static let lock = NSLock()

    @inline(__always) public static func measure<T>(_ name: String, _ body: () throws -> T) rethrows -> T {
        if !enabled { return try body() }
        let start = DispatchTime.now().uptimeNanoseconds
        let result = try body()
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
        lock.lock()
        let old = totals[name] ?? (0, 0)
        totals[name] = (old.seconds + elapsed, old.calls + 1)
        lock.unlock()
        return result
    }

    public static func reset() { lock.lock(); totals = [:]; lock.unlock() }

    /// Lines "name: seconds (calls)", largest first.
    public static func report() -> [String] {
        lock.lock(); defer { lock.unlock() }
        return totals.sorted { $0.value.seconds > $1.value.seconds }.map { String(format: "%-16@ %8.3f s  %6d calls", $0.key as NSString, $0.value.seconds, $0.value.calls) }
    }
}
