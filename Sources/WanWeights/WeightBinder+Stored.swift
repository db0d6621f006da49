import Foundation
import WanTensor

extension WeightBinder {
    /// The tensor `name` as stored (type, logical shape, pointer into the mapping, optional scale), not converted:
    /// for weights that stay compact and are dequantised tile by tile just before use. The same rules as `tensor`:
    /// it must exist with exactly `shape` (or be synthesised by a synthesising source), and it is marked used.
    public func stored(_ name: String, _ shape: [Int]) throws -> StoredTensor {
        guard let found = self.shape(name) else {
            if let synth = source as? SynthesizingWeightSource {
                let t = try synth.synthesize(name, shape: shape)
                return StoredTensor(name: name, type: .dtype(.f32), shape: t.shape, data: UnsafeRawPointer(t.data),
                                    byteCount: t.count * 4, scale: nil, owner: t)
            }
            throw WeightError.missingKey(source: source.label, key: name, expectedShape: shape)
        }
        guard found == shape else { throw WeightError.shapeMismatch(source: source.label, key: name, expected: shape, found: found) }
        let s = try source.stored(name)
        guard s.shape == shape else { throw WeightError.shapeMismatch(source: source.label, key: name, expected: shape, found: s.shape) }
        ignore(name)
        return s
    }
}
