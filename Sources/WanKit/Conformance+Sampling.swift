import Foundation
import WanSampling

extension ConformanceRunner {
    /// Golden cases of component `scheduler` (flow-matching schedules and solver trajectories).
    func runScheduler(_ c: GoldenCase) throws -> CaseResult {
        .skip(c.name, "component 'scheduler' is not implemented yet")
    }

    /// Golden cases of component `rng` (PyTorch CPU generator).
    func runRNG(_ c: GoldenCase) throws -> CaseResult {
        .skip(c.name, "component 'rng' is not implemented yet")
    }
}
