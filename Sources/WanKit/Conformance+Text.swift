import Foundation
import WanText

extension ConformanceRunner {
    /// Golden cases of component `tokenizer` (tokenizer.json + Wan's prompt cleaning).
    func runTokenizer(_ c: GoldenCase) throws -> CaseResult {
        .skip(c.name, "component 'tokenizer' is not implemented yet")
    }
}
