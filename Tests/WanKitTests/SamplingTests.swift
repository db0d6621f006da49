import Foundation
import XCTest
import WanKit
import WanSampling
import WanTensor

/// Schedulers, solvers and the PyTorch CPU generator: every `scheduler_*` / `rng_*` golden case, plus unit tests.
final class SamplingTests: XCTestCase {
    static let runner = ConformanceRunner(goldenDirectory: goldenDirectory)

    func check(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        try assertGoldenCase(name, runner: Self.runner, file: file, line: line)
    }

    // MARK: golden cases

    func testSchedulerSigmaTables() throws { try check("scheduler_unipc_sigmas") }
    func testSchedulerUniPCTrajectory() throws { try check("scheduler_unipc_trajectory") }
    func testSchedulerUniPCDefault() throws { try check("scheduler_unipc_default") }
    func testSchedulerUniPCShort() throws { try check("scheduler_unipc_short") }
    func testSchedulerUniPC1Step() throws { try check("scheduler_unipc_1step") }
    func testSchedulerDPMppTrajectory() throws { try check("scheduler_dpmpp_trajectory") }
    func testSchedulerDPMppLong() throws { try check("scheduler_dpmpp_long") }
    func testSchedulerEulerTrajectory() throws { try check("scheduler_euler_trajectory") }
    func testRNGTorchCPU() throws { try check("rng_torch_cpu") }

    /// Every scheduler_* and rng_* case in the folder (hidden ones included) passes.
    func testAllSchedulerAndRNGCases() throws {
        guard FileManager.default.fileExists(atPath: goldenDirectory) else {
            throw XCTSkip("golden data not found at \(goldenDirectory)")
        }
        let names = try Self.runner.caseNames().filter { $0.hasPrefix("scheduler_") || $0.hasPrefix("rng_") }
        XCTAssertFalse(names.isEmpty)
        for name in names {
            let result = Self.runner.run(caseNamed: name)
            if case .pass = result { continue }
            XCTFail(result.description)
        }
    }

    // MARK: TorchRandom

    func testSeedUsesLow32Bits() {
        for shape in [[5], [16], [17], [3, 7]] {
            var a = TorchRandom(seed: (1 << 32) + 7)
            var b = TorchRandom(seed: 7)
            XCTAssertEqual(a.randn(shape: shape).map(\.bitPattern), b.randn(shape: shape).map(\.bitPattern), "shape \(shape)")
        }
    }

    func testMersenneTwisterReferenceOutput() {
        // std::mt19937 with the default seed 5489: the 10000th output is 4123659995 (C++ standard, [rand.predef]).
        var g = TorchRandom(seed: 5489)
        var last: UInt32 = 0
        for _ in 0..<10000 { last = g.nextUInt32() }
        XCTAssertEqual(last, 4_123_659_995)
    }

    func testScalarPathCachesSecondNormal() {
        var pair = TorchRandom(seed: 3)
        let two = pair.randn(shape: [2])
        var single = TorchRandom(seed: 3)
        let first = single.randn(shape: [1])
        let second = single.randn(shape: [1])
        XCTAssertEqual([first[0], second[0]].map(\.bitPattern), two.map(\.bitPattern))
    }

    func testVectorPathLeavesCacheAlone() {
        var g = TorchRandom(seed: 11)
        _ = g.randn(shape: [1])            // caches the sine half
        _ = g.randn(shape: [32])           // float path: neither uses nor clears it
        let cached = g.randn(shape: [1])
        var h = TorchRandom(seed: 11)
        let pair = h.randn(shape: [2])
        XCTAssertEqual(cached[0].bitPattern, pair[1].bitPattern)
    }

    func testSeventeenValuesConsume33Draws() {
        var g = TorchRandom(seed: 42)
        _ = g.randn(shape: [17])
        var h = TorchRandom(seed: 42)
        for _ in 0..<33 { _ = h.nextUInt32() }
        XCTAssertEqual(g.nextUInt32(), h.nextUInt32())
    }

    func testManualSeedResets() {
        var g = TorchRandom(seed: 5)
        let a = g.randn(shape: [3])
        _ = g.randn(shape: [40])
        g.manualSeed(5)
        XCTAssertEqual(g.randn(shape: [3]).map(\.bitPattern), a.map(\.bitPattern))
    }

    func testNormalStatistics() {
        var g = TorchRandom(seed: 1234)
        let v = g.randn(shape: [1 << 16])
        let mean = v.reduce(0.0) { $0 + Double($1) } / Double(v.count)
        let variance = v.reduce(0.0) { $0 + (Double($1) - mean) * (Double($1) - mean) } / Double(v.count)
        XCTAssertEqual(mean, 0, accuracy: 0.02)
        XCTAssertEqual(variance, 1, accuracy: 0.03)
    }

    // MARK: schedules

    func testShiftFormula() {
        XCTAssertEqual(FlowSchedule.shift(0.5, by: 5), 2.5 / 3)
        XCTAssertEqual(FlowSchedule.shift(1, by: 8), 1)
        XCTAssertEqual(FlowSchedule.shift(0, by: 3), 0)
        for s in [0.1, 0.37, 0.999] { XCTAssertEqual(FlowSchedule.shift(s, by: 1), s) }
    }

    func testLinspaceEndpoints() {
        let y = FlowSchedule.linspace(0.9990000128746033, 0, 51)
        XCTAssertEqual(y.count, 51)
        XCTAssertEqual(y.first, 0.9990000128746033)
        XCTAssertEqual(y.last, 0)
        XCTAssertEqual(FlowSchedule.linspace(3, 7, 1), [3])
    }

    func testOneStepSchedules() {
        let u = FlowSchedule.unipc(steps: 1, shift: 5)
        XCTAssertEqual(u.int64Timesteps, [999])  // truncation, never 1000
        XCTAssertEqual(u.sigmas.count, 2)
        XCTAssertEqual(u.sigmas.last, 0)
        XCTAssertEqual(u.sigmas[0], Float(FlowSchedule.shift(Double(Float(0.999)), by: 5)))
        let d = FlowSchedule.dpmpp(steps: 1, shift: 5)
        XCTAssertEqual(d.int64Timesteps, [1000])
        XCTAssertEqual(d.sigmas, [1, 0])
        let e = FlowSchedule.euler(steps: 1, shift: 5)
        XCTAssertEqual(e.floatTimesteps, [1000])
        XCTAssertEqual(e.sigmas, [1, 0])
    }

    func testSchedulesDecrease() {
        for kind in FlowSolverKind.allCases {
            let s = FlowSchedule.make(kind, steps: 50, shift: 5)
            XCTAssertEqual(s.count, 50)
            XCTAssertEqual(s.sigmas.count, 51)
            for i in 0..<50 { XCTAssertGreaterThan(s.sigmas[i], s.sigmas[i + 1], "\(kind) sigma \(i)") }
            for i in 1..<50 { XCTAssertGreaterThan(s.timesteps[i - 1], s.timesteps[i], "\(kind) timestep \(i)") }
        }
        XCTAssertEqual(FlowSchedule.euler(steps: 8, shift: 5).timesteps.last ?? 0, 24.41, accuracy: 0.01)  // README: 1000, 967.92, …, 24.41
    }

    // MARK: solvers

    func testOneStepUniPCReturnsDataPrediction() {
        let solver = makeFlowSolver(.unipc, steps: 1, shift: 5)
        let x: [Float] = [0.5, -1.25, 2, 0.125]
        let v: [Float] = [1, 0.5, -0.75, 3]
        let out = solver.step(modelOutput: v, timestep: solver.schedule.timesteps[0], sample: x)
        let sigma = solver.schedule.sigmas[0]
        XCTAssertEqual(out, zip(x, v).map { $0 - sigma * $1 })
    }

    func testEulerStep() {
        let solver = makeFlowSolver(.euler, steps: 4, shift: 3)
        let s = solver.schedule.sigmas
        let x: [Float] = [0.5, -1.25]
        let v: [Float] = [1, 0.5]
        let out = solver.step(modelOutput: v, timestep: solver.schedule.timesteps[0], sample: x)
        XCTAssertEqual(out, zip(x, v).map { $0 + (s[1] - s[0]) * $1 })
        XCTAssertEqual(solver.stepIndex, 1)
    }

    /// With the exact velocity of a straight path x_t = (1-s)*x0 + s*noise, every solver lands on x0.
    func testSolversIntegrateStraightPath() {
        let x0: [Float] = [0.3, -0.7, 1.1, 0]
        let noise: [Float] = [1, -0.5, 0.25, -2]
        let velocity = zip(noise, x0).map { $0 - $1 }
        for kind in FlowSolverKind.allCases {
            let solver = makeFlowSolver(kind, steps: 12, shift: 5)
            var x = zip(x0, noise).map { (1 - solver.schedule.sigmas[0]) * $0 + solver.schedule.sigmas[0] * $1 }
            for t in solver.schedule.timesteps { x = solver.step(modelOutput: velocity, timestep: t, sample: x) }
            for k in 0..<x.count { XCTAssertEqual(x[k], x0[k], accuracy: 1e-5, "\(kind) element \(k)") }
            XCTAssertFalse(x.contains { !$0.isFinite })
        }
    }

    func testTensorStepMatchesArrayStep() {
        var g = TorchRandom(seed: 9)
        let x = g.randn(shape: [16, 1, 2, 2]), v = g.randn(shape: [16, 1, 2, 2])
        let a = makeFlowSolver(.dpmpp, steps: 5, shift: 3), b = makeFlowSolver(.dpmpp, steps: 5, shift: 3)
        var xa = x
        var xb = Tensor(shape: [16, 1, 2, 2], values: x)
        let vt = Tensor(shape: [16, 1, 2, 2], values: v)
        for t in a.schedule.timesteps {
            xa = a.step(modelOutput: v, timestep: t, sample: xa)
            xb = b.step(modelOutput: vt, timestep: t, sample: xb)
        }
        XCTAssertEqual(xa, xb.array)
    }
}
