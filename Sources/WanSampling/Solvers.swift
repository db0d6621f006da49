// Flow-matching solvers with the official step semantics (../shared/golden/README.md, "Schedulers"):
// UniPC (bh2, predict_x0, order 2, lower_order_final, corrector at every step), DPM-Solver++ 2M (midpoint) and flow
// Euler. Latents and data predictions are float32 like the reference; the scalar coefficients are computed in
// double from the float32 sigma table, with IEEE inf arithmetic at sigma 0 / sigma 1 (no clamps).
import Foundation
import WanTensor

/// A stateful flow-matching solver: call `step` once per entry of `schedule.timesteps`, in order, with the model's
/// velocity prediction at that timestep; it returns the next latent.
public protocol FlowSolver: AnyObject {
    var schedule: FlowSchedule { get }
    /// Index of the next step (nil before the first `step`).
    var stepIndex: Int? { get }
    /// One step: `out` (may alias `sample`) receives the latent after this step.
    func step(modelOutput: UnsafePointer<Float>, timestep: Double, sample: UnsafePointer<Float>,
              count: Int, into out: UnsafeMutablePointer<Float>)
    /// Forgets the history so the schedule can be run again.
    func reset()
    /// Forgets the history and makes the next `step` step `index` of the schedule (diffusers' `set_begin_index`):
    /// for sampling that starts part-way (video-to-video). A multistep solver starts there at first order.
    func begin(at index: Int)
}

extension FlowSolver {
    public func step(modelOutput: [Float], timestep: Double, sample: [Float]) -> [Float] {
        precondition(modelOutput.count == sample.count, "model output and sample differ in size")
        var out = [Float](repeating: 0, count: sample.count)
        modelOutput.withUnsafeBufferPointer { v in
            sample.withUnsafeBufferPointer { x in
                out.withUnsafeMutableBufferPointer { o in
                    step(modelOutput: v.baseAddress!, timestep: timestep, sample: x.baseAddress!, count: x.count, into: o.baseAddress!)
                }
            }
        }
        return out
    }

    public func step(modelOutput: Tensor, timestep: Double, sample: Tensor) -> Tensor {
        precondition(modelOutput.count == sample.count, "model output and sample differ in size")
        let out = Tensor(uninitialized: sample.shape)
        step(modelOutput: modelOutput.data, timestep: timestep, sample: sample.data, count: sample.count, into: out.data)
        return out
    }

    /// The index of the first step: the position of `timestep` in the schedule (the second match if it occurs more
    /// than once), as the diffusers schedulers' `index_for_timestep`.
    func initialIndex(for timestep: Double) -> Int {
        let matches = schedule.timesteps.indices.filter { schedule.timesteps[$0] == timestep }
        precondition(!matches.isEmpty, "timestep \(timestep) is not in the schedule")
        return matches.count > 1 ? matches[1] : matches[0]
    }
}

/// Makes the solver Wan2.1 uses for `kind` with its schedule.
public func makeFlowSolver(_ kind: FlowSolverKind, steps: Int, shift: Double, numTrainTimesteps: Int = 1000) -> FlowSolver {
    let schedule = FlowSchedule.make(kind, steps: steps, shift: shift, numTrainTimesteps: numTrainTimesteps)
    switch kind {
    case .unipc: return UniPCSolver(schedule: schedule)
    case .dpmpp: return DPMSolverPP(schedule: schedule)
    case .euler: return FlowEulerSolver(schedule: schedule)
    }
}

/// Classifier-free guidance as text2video.py: `uncond + scale*(cond - uncond)` in float32.
public func classifierFreeGuidance(cond: UnsafePointer<Float>, uncond: UnsafePointer<Float>, scale: Float,
                                   count: Int, into out: UnsafeMutablePointer<Float>) {
    for i in 0..<count { out[i] = uncond[i] + scale * (cond[i] - uncond[i]) }
}

public func classifierFreeGuidance(cond: Tensor, uncond: Tensor, scale: Float) -> Tensor {
    precondition(cond.count == uncond.count)
    let out = Tensor(uninitialized: cond.shape)
    classifierFreeGuidance(cond: cond.data, uncond: uncond.data, scale: scale, count: cond.count, into: out.data)
    return out
}

/// Flow-matching (alpha = 1 - sigma, sigma) log-SNR helpers on the float32 sigma table, in double.
struct FlowSigmaTable {
    let sigma: [Double]
    let alpha: [Double]
    let lambda: [Double]
    init(_ sigmas: [Float]) {
        sigma = sigmas.map { Double($0) }
        alpha = sigma.map { 1 - $0 }
        lambda = zip(alpha, sigma).map { Foundation.log($0) - Foundation.log($1) }
    }
}

// MARK: - UniPC

/// `FlowUniPCMultistepScheduler` (bh2, predict_x0, solver_order 2, lower_order_final, no disabled corrector).
public final class UniPCSolver: FlowSolver {
    public let schedule: FlowSchedule
    public private(set) var stepIndex: Int? = nil
    private let table: FlowSigmaTable
    /// Data predictions m_{i-1} (previous) and m_i (latest) as float32.
    private var previousM: [Float] = []
    private var latestM: [Float] = []
    /// The (corrected) sample that entered the previous step.
    private var lastSample: [Float]? = nil
    private var thisOrder = 0
    private var lowerOrderNums = 0
    private let solverOrder = 2

    public init(schedule: FlowSchedule) {
        self.schedule = schedule
        table = FlowSigmaTable(schedule.sigmas)
    }

    public func reset() {
        stepIndex = nil; previousM = []; latestM = []; lastSample = nil; thisOrder = 0; lowerOrderNums = 0
    }

    public func begin(at index: Int) {
        precondition(index >= 0 && index < schedule.count, "begin index \(index) outside the schedule of \(schedule.count) steps")
        reset(); stepIndex = index
    }

    public func step(modelOutput v: UnsafePointer<Float>, timestep: Double, sample x: UnsafePointer<Float>,
                     count n: Int, into out: UnsafeMutablePointer<Float>) {
        if stepIndex == nil { stepIndex = initialIndex(for: timestep) }
        let i = stepIndex!
        precondition(i < schedule.count, "UniPC: more steps than the schedule has")
        let s = table.sigma, a = table.alpha, l = table.lambda

        // Data prediction from the sample before correction: m = x - sigma*v (float32, as the reference).
        let sigmaF = Float(s[i])
        var m = [Float](repeating: 0, count: n)
        for k in 0..<n { m[k] = x[k] - sigmaF * v[k] }

        // The sample this step starts from: corrected with the new data prediction when there is history.
        var current = Array(UnsafeBufferPointer(start: x, count: n))
        if i > 0, let xlast = lastSample {
            precondition(xlast.count == n && latestM.count == n, "UniPC: sample size changed between steps")
            let h = l[i] - l[i - 1]
            let hh = -h
            let hphi1 = expm1(hh)
            let bh = hphi1
            let k1 = hphi1 / hh - 1
            let cx = s[i] / s[i - 1]
            let cm = a[i] * hphi1
            let cb = a[i] * bh
            if thisOrder == 1 {
                let rho = 0.5
                for k in 0..<n {
                    let m0 = Double(latestM[k])
                    let xt = cx * Double(xlast[k]) - cm * m0
                    current[k] = Float(xt - cb * (rho * (Double(m[k]) - m0)))
                }
            } else {
                let k2 = k1 / hh - 0.5
                let rk = (l[i - 2] - l[i - 1]) / h
                let b0 = k1 / bh, b1 = 2 * k2 / bh
                // solve [[1, 1], [rk, 1]] rho = [b0, b1]
                let det = 1 - rk
                let rho0 = (b0 - b1) / det
                let rho1 = (b1 - rk * b0) / det
                for k in 0..<n {
                    let m0 = Double(latestM[k])
                    let d1 = (Double(previousM[k]) - m0) / rk
                    let xt = cx * Double(xlast[k]) - cm * m0
                    current[k] = Float(xt - cb * (rho0 * d1 + rho1 * (Double(m[k]) - m0)))
                }
            }
        }

        previousM = latestM
        latestM = m

        let order = min(solverOrder, schedule.count - i, lowerOrderNums + 1)
        thisOrder = order
        lastSample = current

        // Predictor to sigma_{i+1}.
        let h = l[i + 1] - l[i]
        let hh = -h
        let hphi1 = expm1(hh)
        let bh = hphi1
        let cx = s[i + 1] / s[i]
        let cm = a[i + 1] * hphi1
        if order == 1 {
            for k in 0..<n {
                out[k] = Float(cx * Double(current[k]) - cm * Double(m[k]))
            }
        } else {
            let rk = (l[i - 1] - l[i]) / h
            let cd = a[i + 1] * bh * 0.5
            for k in 0..<n {
                let m0 = Double(m[k])
                let d1 = (Double(previousM[k]) - m0) / rk
                out[k] = Float(cx * Double(current[k]) - cm * m0 - cd * d1)
            }
        }
        if lowerOrderNums < solverOrder { lowerOrderNums += 1 }
        stepIndex = i + 1
    }
}

// MARK: - DPM-Solver++

/// `FlowDPMSolverMultistepScheduler` (dpmsolver++, midpoint, solver_order 2, lower_order_final, final sigma 0).
public final class DPMSolverPP: FlowSolver {
    public let schedule: FlowSchedule
    public private(set) var stepIndex: Int? = nil
    private let table: FlowSigmaTable
    private var previousM: [Float] = []
    private var latestM: [Float] = []
    private var lowerOrderNums = 0
    private let solverOrder = 2

    public init(schedule: FlowSchedule) {
        self.schedule = schedule
        table = FlowSigmaTable(schedule.sigmas)
    }

    public func reset() { stepIndex = nil; previousM = []; latestM = []; lowerOrderNums = 0 }

    public func begin(at index: Int) {
        precondition(index >= 0 && index < schedule.count, "begin index \(index) outside the schedule of \(schedule.count) steps")
        reset(); stepIndex = index
    }

    public func step(modelOutput v: UnsafePointer<Float>, timestep: Double, sample x: UnsafePointer<Float>,
                     count n: Int, into out: UnsafeMutablePointer<Float>) {
        if stepIndex == nil { stepIndex = initialIndex(for: timestep) }
        let i = stepIndex!
        precondition(i < schedule.count, "DPM++: more steps than the schedule has")
        let s = table.sigma, a = table.alpha, l = table.lambda
        // final_sigmas_type "zero": the last step is first order.
        let lowerOrderFinal = i == schedule.count - 1

        let sigmaF = Float(s[i])
        var m = [Float](repeating: 0, count: n)
        for k in 0..<n { m[k] = x[k] - sigmaF * v[k] }
        previousM = latestM
        latestM = m

        let h = l[i + 1] - l[i]
        let cx = s[i + 1] / s[i]
        let cm = a[i + 1] * (exp(-h) - 1)
        if lowerOrderNums < 1 || lowerOrderFinal {
            for k in 0..<n { out[k] = Float(cx * Double(x[k]) - cm * Double(m[k])) }
        } else {
            precondition(previousM.count == n, "DPM++: sample size changed between steps")
            let h0 = l[i] - l[i - 1]
            let r0 = h0 / h
            let inv = 1 / r0
            for k in 0..<n {
                let m0 = Double(m[k])
                let d1 = inv * (m0 - Double(previousM[k]))
                out[k] = Float(cx * Double(x[k]) - cm * m0 - 0.5 * cm * d1)
            }
        }
        if lowerOrderNums < solverOrder { lowerOrderNums += 1 }
        stepIndex = i + 1
    }
}

// MARK: - Euler

/// diffusers `FlowMatchEulerDiscreteScheduler.step`: `x + (sigma_next - sigma) * v` in float32.
public final class FlowEulerSolver: FlowSolver {
    public let schedule: FlowSchedule
    public private(set) var stepIndex: Int? = nil

    public init(schedule: FlowSchedule) { self.schedule = schedule }

    public func reset() { stepIndex = nil }

    public func begin(at index: Int) {
        precondition(index >= 0 && index < schedule.count, "begin index \(index) outside the schedule of \(schedule.count) steps")
        reset(); stepIndex = index
    }

    public func step(modelOutput v: UnsafePointer<Float>, timestep: Double, sample x: UnsafePointer<Float>,
                     count n: Int, into out: UnsafeMutablePointer<Float>) {
        if stepIndex == nil { stepIndex = initialIndex(for: timestep) }
        let i = stepIndex!
        precondition(i < schedule.count, "Euler: more steps than the schedule has")
        let dt = schedule.sigmas[i + 1] - schedule.sigmas[i]
        for k in 0..<n { out[k] = x[k] + dt * v[k] }
        stepIndex = i + 1
    }
}
