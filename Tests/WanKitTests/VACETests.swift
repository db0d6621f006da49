import Foundation
import XCTest
import WanKit

/// The VACE DiT (official VaceWanModel): golden cases, and the vace branch's exact neutrality at scale 0.
final class VACETests: XCTestCase {
    static let runner = ConformanceRunner(goldenDirectory: goldenDirectory)

    func requireGolden() throws {
        guard FileManager.default.fileExists(atPath: goldenDirectory) else { throw XCTSkip("golden data not found at \(goldenDirectory)") }
    }

    func check(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        try requireGolden()
        let result = Self.runner.run(caseNamed: name)
        switch result {
        case .pass: break
        case .fail: XCTFail(result.description, file: file, line: line)
        case .skip: XCTFail("case \(name) of an implemented component was skipped: \(result)", file: file, line: line)
        }
    }

    func testDiTVACEBasic() throws { try check("dit_vace_basic") }
    func testDiTVACEScale() throws { try check("dit_vace_scale") }

    func loadModel() throws -> (source: SafetensorsSource, arguments: [String: Any]) {
        let weights = (goldenDirectory as NSString).appendingPathComponent("weights")
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: weights + "/dit_vace.json"))) as! [String: Any]
        return (try SafetensorsSource(path: weights + "/dit_vace.safetensors"), json["config"] as! [String: Any])
    }

    /// vace_context_scale 0: exactly the plain WanModel on the main weights (the hints are made and multiplied by 0).
    func testScaleZeroIsThePlainModel() throws {
        try requireGolden()
        let (source, arguments) = try loadModel()
        let vace = try WanVACEDiT(weights: source, arguments: arguments)
        var plainConfig = vace.config.dit
        plainConfig.modelType = "t2v"
        let plain = try WanDiT(config: plainConfig, weights: WanVACEDiT.mainWeights(source))
        let c = try GoldenCase(jsonPath: (goldenDirectory as NSString).appendingPathComponent("cases/dit_vace_basic.json"))
        let x = try c.input("x"), context = try c.input("context"), vaceContext = try c.input("vace_context")
        let t = try c.input("t").data[0]
        var hintMade = false
        let zero = try vace.forward(x: x, t: t, context: context, vaceContext: vaceContext, scale: 0,
                                    trace: { name, _ in if name.hasPrefix("vace_hint") { hintMade = true } })
        XCTAssertTrue(hintMade, "the vace branch must run at scale 0")
        let reference = try plain.forward(DiTInput(x: x, t: t, context: context))
        XCTAssertEqual(zero.shape, reference.shape)
        XCTAssertEqual(Array(zero.buffer), Array(reference.buffer), "scale 0 must give the plain model's output bit for bit")
        let one = try vace.forward(x: x, t: t, context: context, vaceContext: vaceContext, scale: 1)
        XCTAssertNotEqual(Array(one.buffer), Array(reference.buffer), "scale 1 must change the output")
    }

    /// Strict binding: a plain WanDiT rejects the vace keys; the configuration is inferred from the shapes.
    func testBindingAndInference() throws {
        try requireGolden()
        let (source, arguments) = try loadModel()
        XCTAssertThrowsError(try WanDiT(weights: source, arguments: arguments)) { error in
            guard case WeightError.unexpectedKeys(_, let keys) = error else { return XCTFail("expected unexpectedKeys, got \(error)") }
            XCTAssertTrue(keys.allSatisfy { $0.hasPrefix("vace_") }, "\(keys)")
        }
        let inferred = try WanVACEConfig(inferringFrom: source)
        XCTAssertEqual(inferred.vaceLayers, [0])
        XCTAssertEqual(inferred.vaceInDim, 96)
        XCTAssertEqual(inferred.dit.numLayers, 2)
        var config = inferred
        config.apply(officialArguments: arguments)
        XCTAssertEqual(config.dit.numHeads, 3)
        XCTAssertEqual(config.dit.modelType, "vace")
        XCTAssertEqual(WanVACEConfig.vace1_3B.vaceLayers, Array(stride(from: 0, through: 28, by: 2)))
        // vace_layers must name one vace block per stored block: two blocks asked of a file holding one.
        var two = config
        two.vaceLayers = [0, 1]
        XCTAssertThrowsError(try WanVACEDiT(config: two, weights: source))
    }
}
