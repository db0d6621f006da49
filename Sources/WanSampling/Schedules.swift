// Flow-matching sigma schedules with shift, as the official Wan2.1 schedulers build them (../shared/golden/README.md,
// "Schedulers"): FlowUniPCMultistepScheduler.set_timesteps(N, shift), get_sampling_sigmas + FlowDPMSolver
// set_timesteps(sigmas=), and diffusers' FlowMatchEulerDiscreteScheduler(shift).set_timesteps(N).

/// The sampler families of Wan2.1 (`--sample_solver`), plus plain flow-matching Euler.
public enum FlowSolverKind: String, Sendable, CaseIterable {
    case unipc
    case dpmpp = "dpm++"
    case euler
}

/// A sampling schedule: `timesteps[i]` is the value the model receives at step i (an int64 for unipc / dpm++, a
/// float32 for euler, stored exactly as a Double), `sigmas` the float32 sigma table with N+1 entries ending in 0.
public struct FlowSchedule: Sendable, Equatable {
    public let kind: FlowSolverKind
    public let timesteps: [Double]
    public let sigmas: [Float]

    public init(kind: FlowSolverKind, timesteps: [Double], sigmas: [Float]) {
        precondition(sigmas.count == timesteps.count + 1, "a schedule has one sigma more than timesteps")
        self.kind = kind
        self.timesteps = timesteps
        self.sigmas = sigmas
    }

    /// Number of sampling steps.
    public var count: Int { timesteps.count }
    /// The timesteps as int64 (unipc / dpm++ store them so; for euler this truncates).
    public var int64Timesteps: [Int64] { timesteps.map { Int64($0) } }
    /// The timesteps as float32.
    public var floatTimesteps: [Float] { timesteps.map { Float($0) } }

    /// The flow-matching shift `s' = shift*s / (1 + (shift-1)*s)` in double precision (numpy's evaluation order).
    @inline(__always)
    public static func shift(_ sigma: Double, by shift: Double) -> Double {
        shift * sigma / (1 + (shift - 1) * sigma)
    }

    /// `numpy.linspace(start, stop, num)` in float64, bit for bit (start + i*step, the endpoint set to stop).
    public static func linspace(_ start: Double, _ stop: Double, _ num: Int) -> [Double] {
        guard num > 0 else { return [] }
        if num == 1 { return [start] }
        let div = Double(num - 1)
        let delta = stop - start
        let step = delta / div
        var y = [Double](repeating: 0, count: num)
        for i in 0..<num {
            let v: Double = step == 0 ? (Double(i) / div) * delta : Double(i) * step
            y[i] = v + start
        }
        y[num - 1] = stop
        return y
    }

    /// The schedule a solver kind uses in Wan2.1 for `steps` steps and `shift`.
    public static func make(_ kind: FlowSolverKind, steps: Int, shift: Double, numTrainTimesteps: Int = 1000) -> FlowSchedule {
        switch kind {
        case .unipc: return unipc(steps: steps, shift: shift, numTrainTimesteps: numTrainTimesteps)
        case .dpmpp: return dpmpp(steps: steps, shift: shift, numTrainTimesteps: numTrainTimesteps)
        case .euler: return euler(steps: steps, shift: shift, numTrainTimesteps: numTrainTimesteps)
        }
    }

    /// `FlowUniPCMultistepScheduler(num_train_timesteps=T, shift=1).set_timesteps(N, shift=S)`: sigma_max is the float32
    /// training sigma 1 - 1/T read back as double, sigma_min = 0; timesteps truncated to int64.
    public static func unipc(steps: Int, shift: Double, numTrainTimesteps: Int = 1000) -> FlowSchedule {
        precondition(steps >= 1)
        let trainTimesteps = Double(numTrainTimesteps)
        // Constructor: alphas = linspace(1, 1/T, T)[::-1]; sigmas = float32(1 - alphas), shifted by 1 (identity).
        let sigmaMax = Double(Float(1.0 - 1.0 / trainTimesteps))
        let sigmaMin = 0.0
        let base = linspace(sigmaMax, sigmaMin, steps + 1).dropLast()
        let s = base.map { Self.shift($0, by: shift) }
        let timesteps = s.map { Double(Int64($0 * trainTimesteps)) }
        return FlowSchedule(kind: .unipc, timesteps: timesteps, sigmas: s.map { Float($0) } + [0])
    }

    /// `get_sampling_sigmas(N, S)` then `FlowDPMSolverMultistepScheduler(shift=1).set_timesteps(sigmas=)`: starts at
    /// sigma 1.0, timestep T.
    public static func dpmpp(steps: Int, shift: Double, numTrainTimesteps: Int = 1000) -> FlowSchedule {
        precondition(steps >= 1)
        let trainTimesteps = Double(numTrainTimesteps)
        let base = linspace(1, 0, steps + 1).prefix(steps)
        // get_sampling_sigmas shifts by S; set_timesteps shifts again by the constructor's 1 (exact identity).
        let s = base.map { Self.shift(Self.shift($0, by: shift), by: 1) }
        let timesteps = s.map { Double(Int64($0 * trainTimesteps)) }
        return FlowSchedule(kind: .dpmpp, timesteps: timesteps, sigmas: s.map { Float($0) } + [0])
    }

    /// diffusers `FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=S).set_timesteps(N)`: the constructor
    /// works in float32 (so sigma_min is the shifted float32 1/T), set_timesteps in float64 and shifts again;
    /// timesteps = float32 sigma * T in float32.
    public static func euler(steps: Int, shift: Double, numTrainTimesteps: Int = 1000) -> FlowSchedule {
        precondition(steps >= 1)
        let t32 = Float(numTrainTimesteps)
        let shift32 = Float(shift), shiftMinusOne32 = Float(shift - 1)
        func shifted32(_ s: Float) -> Float { (shift32 * s) / (1 + shiftMinusOne32 * s) }
        let sigmaMax = Double(shifted32(Float(numTrainTimesteps) / t32))
        let sigmaMin = Double(shifted32(Float(1) / t32))
        let trainTimesteps = Double(numTrainTimesteps)
        let t = linspace(sigmaMax * trainTimesteps, sigmaMin * trainTimesteps, steps)
        let s32 = t.map { Float(Self.shift($0 / trainTimesteps, by: shift)) }
        let timesteps = s32.map { Double($0 * t32) }
        return FlowSchedule(kind: .euler, timesteps: timesteps, sigmas: s32 + [0])
    }
}
