import Foundation
import WanTensor
import WanWeights
import WanSampling

extension ConformanceRunner {
    /// Golden cases of component `scheduler` (flow-matching schedules and solver trajectories).
    func runScheduler(_ c: GoldenCase) throws -> CaseResult {
        if let pairs = c.config["pairs"] as? [[Any]] {
            return try runScheduleTable(c, pairs: pairs)
        }
        guard let solverName = c.config["solver"] as? String, let kind = FlowSolverKind(rawValue: solverName) else {
            return .skip(c.name, "scheduler case without a known solver (config.solver=\(c.config["solver"] ?? "nil"))")
        }
        return try runTrajectory(c, kind: kind)
    }

    /// The file and header entry of a stored case tensor.
    private func rawTensor(_ c: GoldenCase, _ key: String) -> (file: SafetensorsFile, info: TensorInfo)? {
        for f in c.tensors.files { if let info = f.tensors[key] { return (f, info) } }
        return nil
    }

    /// Raw int64 values of a stored tensor (nil when the key is absent or not int64).
    private func storedInt64(_ c: GoldenCase, _ spec: Any?) -> [Int64]? {
        guard let s = spec as? [String: Any], let key = s["tensor"] as? String,
              let (file, info) = rawTensor(c, key), info.dtype == .i64 else { return nil }
        let p = file.pointer(info)
        return (0..<info.elementCount).map { p.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self) }
    }

    /// Compares every output of the case: int64 outputs exactly against the stored int64 values, float outputs at the
    /// case's tolerances (as `compare`, which reads stored tensors as float32).
    private func compareOutputs(_ c: GoldenCase, floats: [String: Tensor], ints: [String: [Int64]]) -> CaseResult {
        var failures: [String] = []
        var worst: (name: String, text: String, ratio: Double)? = nil
        for name in c.outputNames {
            if let values = ints[name], let ref = storedInt64(c, c.outputs[name]) {
                let bad = zip(ref, values).filter { $0 != $1 }.count + abs(ref.count - values.count)
                if bad > 0 {
                    failures.append("\(name): \(bad) int64 values differ (got \(values.prefix(6)), ref \(ref.prefix(6)))")
                }
                continue
            }
            guard let g = floats[name] else { failures.append("\(name): not produced"); continue }
            guard let e = try? c.expected(name) else { failures.append("\(name): expected tensor unreadable"); continue }
            guard g.count == e.count else { failures.append("\(name): shape \(g.shape) vs expected \(e.shape)"); continue }
            let cmp = Comparison(got: UnsafeBufferPointer(g.buffer), expected: UnsafeBufferPointer(e.buffer))
            let tol = c.tolerance(for: name)
            if !(cmp.relL2 <= tol.relL2 && cmp.maxAbs <= tol.maxAbs) {
                failures.append("\(name): \(cmp) (tolerance rel_l2=\(tol.relL2) max_abs=\(tol.maxAbs))")
            }
            let ratio = max(cmp.relL2 / max(tol.relL2, 1e-30), cmp.maxAbs / max(tol.maxAbs, 1e-30))
            if worst == nil || !(ratio <= worst!.ratio) { worst = (name, cmp.description, ratio) }
        }
        if !failures.isEmpty { return .fail(c.name, failures.joined(separator: "; ")) }
        let exact = ints.keys.filter { storedInt64(c, c.outputs[$0]) != nil }.count
        guard let w = worst else { return exact > 0 ? .pass(c.name, "\(exact) int64 outputs exact") : .fail(c.name, "case has no outputs") }
        return .pass(c.name, "\(w.text) (worst: \(w.name)); \(exact) int64 outputs exact")
    }

    /// `scheduler_unipc_sigmas`: timesteps / sigmas tables for (N, S) pairs, for unipc, dpm++ (`dpm_`) and Euler
    /// (`euler_`).
    private func runScheduleTable(_ c: GoldenCase, pairs: [[Any]]) throws -> CaseResult {
        var got: [String: Tensor] = [:]
        var ints: [String: [Int64]] = [:]
        let train = (c.config["num_train_timesteps"] as? NSNumber)?.intValue ?? 1000
        for pair in pairs {
            guard pair.count == 2, let n = (pair[0] as? NSNumber)?.intValue, let s = (pair[1] as? NSNumber)?.doubleValue else {
                return .fail(c.name, "bad pair \(pair)")
            }
            // The output keys name the pair as N_S; accept the usual spellings of S.
            var spellings = ["\(s)", String(s).replacingOccurrences(of: ".", with: "p")]
            if s == s.rounded(), abs(s) < 1e15 { spellings.insert("\(Int64(s))", at: 0) }
            let suffix = spellings.map { "\(n)_\($0)" }.first { c.outputs["timesteps_" + $0] != nil || c.outputs["sigmas_" + $0] != nil } ?? "\(n)_\(spellings[0])"
            for (prefix, kind) in [("", FlowSolverKind.unipc), ("dpm_", .dpmpp), ("euler_", .euler)] {
                let schedule = FlowSchedule.make(kind, steps: n, shift: s, numTrainTimesteps: train)
                let tKey = prefix + "timesteps_" + suffix
                // int64 timesteps are compared exactly when stored as int64 (float32 values otherwise).
                got[tKey] = Tensor(shape: [schedule.count], values: schedule.floatTimesteps)
                if kind != .euler { ints[tKey] = schedule.int64Timesteps }
                got[prefix + "sigmas_" + suffix] = Tensor(shape: [schedule.count + 1], values: schedule.sigmas)
            }
        }
        return compareOutputs(c, floats: got, ints: ints)
    }

    /// The stand-in model of the README (the config's `model_cond` / `model_uncond` when a case does not state its own).
    static let defaultModelCond = "0.3*x + 0.1*sin(t/100)*c1"
    static let defaultModelUncond = "-0.2*x + 0.05*cos(t/70)*c2"

    /// Solver trajectories with the model replaced by functions of (x, t) and the case's tensors, read from the
    /// config (README "Schedulers"; `ConformanceExpression`).
    private func runTrajectory(_ c: GoldenCase, kind: FlowSolverKind) throws -> CaseResult {
        guard let steps = (c.config["steps"] as? NSNumber)?.intValue,
              let shift = (c.config["shift"] as? NSNumber)?.doubleValue,
              let guide = (c.config["guide_scale"] as? NSNumber)?.doubleValue else {
            return .fail(c.name, "config lacks steps / shift / guide_scale")
        }
        let train = (c.config["num_train_timesteps"] as? NSNumber)?.intValue ?? 1000
        let x0 = try c.input("x0")
        let n = x0.count
        // Every other input tensor (c1, c2, …) by its name; x is the latent, t the timestep.
        var bound: [String: [Float]] = [:]
        for name in c.inputs.keys where name != "x0" && (c.inputs[name] as? [String: Any])?["tensor"] != nil {
            let t = try c.input(name)
            guard t.count == n else { return .fail(c.name, "input \(name) has \(t.count) values, x0 \(n)") }
            bound[name] = t.array
        }
        let cond = try ConformanceExpression(c.config["model_cond"] as? String ?? Self.defaultModelCond)
        let uncond = try ConformanceExpression(c.config["model_uncond"] as? String ?? Self.defaultModelUncond)
        for e in [cond, uncond] {
            let unknown = e.names.subtracting(["x", "t"]).subtracting(bound.keys)
            guard unknown.isEmpty else { return .fail(c.name, "the model expression '\(e)' reads \(unknown.sorted()), which the case does not give") }
        }

        let solver = makeFlowSolver(kind, steps: steps, shift: shift, numTrainTimesteps: train)
        let schedule = solver.schedule
        let latents = Tensor(uninitialized: [schedule.count] + x0.shape)
        var x = x0.array
        var pred = [Float](repeating: 0, count: n)
        let g = Float(guide)
        for (i, t) in schedule.timesteps.enumerated() {
            // t as the loop passes it (int64 or float32 timesteps), used as a double.
            var tensors = bound
            tensors["x"] = x
            let yc = try cond.evaluate(tensors: tensors, scalars: ["t": t], count: n)
            let yu = try uncond.evaluate(tensors: tensors, scalars: ["t": t], count: n)
            for k in 0..<n { pred[k] = yu[k] + g * (yc[k] - yu[k]) }
            x = solver.step(modelOutput: pred, timestep: t, sample: x)
            (latents.data + i * n).update(from: x, count: n)
        }
        var got: [String: Tensor] = [
            "sigmas": Tensor(shape: [schedule.count + 1], values: schedule.sigmas),
            "latents": latents,
        ]
        var ints: [String: [Int64]] = [:]
        got["timesteps"] = Tensor(shape: [schedule.count], values: schedule.floatTimesteps)
        if kind != .euler { ints["timesteps"] = schedule.int64Timesteps }
        got = got.filter { c.outputs[$0.key] != nil }
        return compareOutputs(c, floats: got, ints: ints)
    }

    /// Golden cases of component `rng` (PyTorch CPU generator).
    func runRNG(_ c: GoldenCase) throws -> CaseResult {
        func shapeKey(_ shape: [Int]) -> String { shape.map(String.init).joined(separator: "x") }
        func shapes(_ v: Any?) -> [[Int]] { (v as? [[Any]] ?? []).map { $0.compactMap { ($0 as? NSNumber)?.intValue } } }
        func seeds(_ v: Any?) -> [UInt64] {
            (v as? [Any] ?? []).compactMap { ($0 as? NSNumber).map { UInt64(truncating: $0) } }
        }

        var failures: [String] = []
        var covered = Set<String>()
        var tensorsChecked = 0, valuesChecked = 0
        var worstSum: (rel: Double, abs: Double) = (0, 0)

        /// Bitwise comparison of `values` (or a slice of them) with the stored float32 tensor.
        func checkBits(_ name: String, _ values: ArraySlice<Float>) {
            covered.insert(name)
            guard let spec = c.outputs[name] as? [String: Any], let key = spec["tensor"] as? String,
                  let (file, info) = self.rawTensor(c, key) else { failures.append("\(name): expected tensor missing"); return }
            guard info.dtype == .f32 else { failures.append("\(name): stored as \(info.dtype), expected F32"); return }
            guard info.elementCount == values.count else {
                failures.append("\(name): \(values.count) values vs \(info.elementCount) stored"); return
            }
            let p = file.pointer(info)
            var differing = 0, maxAbs = 0.0, first = -1
            for (k, v) in values.enumerated() {
                let ref = p.loadUnaligned(fromByteOffset: k * 4, as: UInt32.self)
                if ref != v.bitPattern {
                    differing += 1
                    if first < 0 { first = k }
                    maxAbs = max(maxAbs, abs(Double(v) - Double(Float(bitPattern: ref))))
                }
            }
            tensorsChecked += 1
            valuesChecked += values.count
            if differing > 0 {
                failures.append("\(name): \(differing) of \(values.count) values differ bitwise (first at \(first), max |diff| \(maxAbs))")
            }
        }

        /// A plain-JSON float64 statistic compared at the case's tolerance for it.
        func checkScalar(_ name: String, _ got: Double) {
            covered.insert(name)
            guard let ref = (c.outputs[name] as? NSNumber)?.doubleValue else { failures.append("\(name): not a number in the case"); return }
            let tol = c.tolerance(for: name)
            let absDiff = abs(got - ref)
            let relDiff = ref != 0 ? absDiff / abs(ref) : absDiff
            worstSum = (max(worstSum.rel, relDiff), max(worstSum.abs, absDiff))
            if !(relDiff <= tol.relL2 && absDiff <= tol.maxAbs) {
                failures.append("\(name): got \(got) ref \(ref) (rel \(relDiff), abs \(absDiff); tolerance rel \(tol.relL2) abs \(tol.maxAbs))")
            }
        }

        /// Compares one generated tensor with whatever the case stores for `key` (full, or head/tail + sums).
        func check(_ key: String, _ values: [Float]) {
            if c.outputs[key] != nil {
                checkBits(key, values[...])
                return
            }
            guard c.outputs[key + "_head"] != nil else { return }
            let headCount = ((c.outputs[key + "_head"] as? [String: Any])?["shape"] as? [Int])?.reduce(1, *) ?? 4096
            let tailCount = ((c.outputs[key + "_tail"] as? [String: Any])?["shape"] as? [Int])?.reduce(1, *) ?? 4096
            checkBits(key + "_head", values.prefix(headCount))
            if c.outputs[key + "_tail"] != nil { checkBits(key + "_tail", values.suffix(tailCount)) }
            // Compensated (Neumaier) float64 sums, close to exact whatever order the reference summed in.
            var sum = 0.0, sumC = 0.0, sq = 0.0, sqC = 0.0
            @inline(__always) func add(_ s: inout Double, _ comp: inout Double, _ v: Double) {
                let t = s + v
                if abs(s) >= abs(v) { comp += (s - t) + v } else { comp += (v - t) + s }
                s = t
            }
            for v in values {
                let d = Double(v)
                add(&sum, &sumC, d)
                add(&sq, &sqC, d * d)
            }
            if c.outputs[key + "_sum"] != nil { checkScalar(key + "_sum", sum + sumC) }
            if c.outputs[key + "_sum_sq"] != nil { checkScalar(key + "_sum_sq", sq + sqC) }
        }

        let configShapes = shapes(c.config["shapes"])
        for seed in seeds(c.config["seeds"]) {
            for shape in configShapes {
                for prefix in ["manual_seed", "generator"] {
                    var g = TorchRandom(seed: seed)
                    check("\(prefix)_\(seed)_\(shapeKey(shape))", g.randn(shape: shape))
                }
            }
        }
        if let successive = c.config["successive"] as? [String: Any],
           let seed = (successive["seed"] as? NSNumber).map({ UInt64(truncating: $0) }) {
            var g = TorchRandom(seed: seed)
            for (k, shape) in shapes(successive["shapes"]).enumerated() {
                check("successive_\(k)_\(shapeKey(shape))", g.randn(shape: shape))
            }
        }
        let missed = c.outputNames.filter { !covered.contains($0) }
        if !missed.isEmpty { failures.append("outputs not produced: \(missed.prefix(8).joined(separator: ", "))\(missed.count > 8 ? ", …" : "")") }
        if !failures.isEmpty { return .fail(c.name, failures.prefix(12).joined(separator: "; ")) }
        return .pass(c.name, String(format: "%d tensors bit-exact (%d values), sums: max rel diff %.2e, max abs diff %.2e",
                                    tensorsChecked, valuesChecked, worstSum.rel, worstSum.abs))
    }
}
