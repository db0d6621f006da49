import XCTest
import WanKit

/// The stand-in models of scheduler trajectory cases are read from the case's config as Python evaluates them.
final class ConformanceExpressionTests: XCTestCase {
    func value(_ text: String, t: Double = 0) throws -> Float {
        try ConformanceExpression(text).evaluate(tensors: [:], scalars: ["t": t], count: 1)[0]
    }

    func testPrecedenceIsPython() throws {
        XCTAssertEqual(try value("-2**2"), -4)        // ** binds tighter than unary minus
        XCTAssertEqual(try value("2*3**2"), 18)
        XCTAssertEqual(try value("2**-1"), 0.5)
        XCTAssertEqual(try value("7 - 2 - 1"), 4)     // left to right
        XCTAssertEqual(try value("8 / 4 / 2"), 1)
        XCTAssertEqual(try value("-(1 + 2) * 3"), -9)
        XCTAssertEqual(try value("1e2 + 2.5E-1"), 100.25)
        XCTAssertEqual(try value("math.sin(t/100)", t: 157.07963267948966), 1, accuracy: 1e-7)
    }

    func testScalarsAreDoublesUntilTheyMeetATensor() throws {
        // 0.1 * sin(t/100) is a double; rounded to float32 only when it multiplies the tensor.
        let t = 937.0
        let e = try ConformanceExpression("0.3*x + 0.1*sin(t/100)*c1")
        let x: [Float] = [1.5, -2.25, 0.1], c1: [Float] = [0.7, 3, -1]
        let got = try e.evaluate(tensors: ["x": x, "c1": c1], scalars: ["t": t], count: 3)
        let a = Float(0.1 * sin(t / 100))
        for k in 0..<3 { XCTAssertEqual(got[k], Float(0.3) * x[k] + a * c1[k]) }
        XCTAssertEqual(e.names, ["x", "t", "c1"])
        // Powers of a tensor as PyTorch computes them (x**2 is x*x).
        XCTAssertEqual(try ConformanceExpression("x**2 - 0.5**x").evaluate(tensors: ["x": [3, -2]], scalars: [:], count: 2),
                       [9 - Foundation.pow(Float(0.5), 3), 4 - Foundation.pow(Float(0.5), -2)])
        // A scalar-only expression fills the result.
        XCTAssertEqual(try ConformanceExpression("cos(0)").evaluate(tensors: [:], scalars: [:], count: 2), [1, 1])
    }

    func testBadExpressionsAreNamed() {
        for (text, words) in [("0.3*x +", "ends early"), ("sinh(t)", "unknown function 'sinh'"), ("(x", "')' is missing"),
                              ("x $ 2", "unexpected '$ 2'"), ("x ** x", "between two tensors"), ("q*2", "unknown name 'q'")] {
            XCTAssertThrowsError(try ConformanceExpression(text).evaluate(tensors: ["x": [1]], scalars: [:], count: 1), text) { error in
                XCTAssertTrue("\(error)".contains(words), "\(text): \(error)")
            }
        }
    }
}
