import Foundation

/// The stand-in model of a scheduler trajectory case, read from its config (`model_cond`, `model_uncond`): an
/// arithmetic expression over the latent `x`, the case tensors `c1`, `c2`, … and the timestep `t`, evaluated as the
/// PyTorch code that made the case evaluates it (golden README, "Schedulers"): `t` and everything computed from
/// scalars alone are Python doubles (`sin`, `cos`, … as `math.*`); an operation with a tensor runs elementwise in
/// float32, a scalar operand first rounded to float32 as PyTorch does with a Python number.
/// Grammar: sums and differences of products and quotients of signed factors; a factor is a number, a name, a
/// parenthesised expression, `f(expr)` for f in sin cos tan exp log sqrt tanh abs, or `a ** b` (not both tensors).
public struct ConformanceExpression: CustomStringConvertible, Sendable {
    public enum ParseError: Error, CustomStringConvertible {
        case syntax(String, detail: String)
        public var description: String {
            switch self {
            case .syntax(let text, let detail): return "cannot read the model expression '\(text)': \(detail)"
            }
        }
    }

    indirect enum Node: Sendable {
        case number(Double)
        case name(String)
        case negate(Node)
        case binary(Character, Node, Node)  // + - * / and ^ for **
        case call(String, Node)
    }

    enum Value {
        case scalar(Double)
        case tensor([Float])
    }

    public let text: String
    let root: Node
    public var description: String { text }

    nonisolated(unsafe) static let functions: [String: (scalar: (Double) -> Double, float: (Float) -> Float)] = [
        "sin": (Foundation.sin, Foundation.sin), "cos": (Foundation.cos, Foundation.cos),
        "tan": (Foundation.tan, Foundation.tan), "exp": (Foundation.exp, Foundation.exp),
        "log": (Foundation.log, Foundation.log), "sqrt": ({ $0.squareRoot() }, { $0.squareRoot() }),
        "tanh": (Foundation.tanh, Foundation.tanh), "abs": (Swift.abs, Swift.abs),
    ]

    public init(_ text: String) throws {
        self.text = text
        var parser = Parser(text: text)
        root = try parser.expression()
        parser.skipSpaces()
        guard parser.atEnd else { throw parser.error("unexpected '\(parser.rest)'") }
    }

    /// The names the expression reads (besides `pi` and `e`).
    public var names: Set<String> {
        func walk(_ n: Node) -> Set<String> {
            switch n {
            case .number: return []
            case .name(let s): return ["pi", "e"].contains(s) ? [] : [s]
            case .negate(let a), .call(_, let a): return walk(a)
            case .binary(_, let a, let b): return walk(a).union(walk(b))
            }
        }
        return walk(root)
    }

    /// Evaluates with `tensors` (all of one size) and `scalars` bound to names; the result as `count` floats.
    public func evaluate(tensors: [String: [Float]], scalars: [String: Double], count: Int) throws -> [Float] {
        switch try value(root, tensors, scalars) {
        case .scalar(let s): return [Float](repeating: Float(s), count: count)
        case .tensor(let v): return v
        }
    }

    private func value(_ n: Node, _ tensors: [String: [Float]], _ scalars: [String: Double]) throws -> Value {
        switch n {
        case .number(let v): return .scalar(v)
        case .name(let s):
            if let t = tensors[s] { return .tensor(t) }
            if let v = scalars[s] { return .scalar(v) }
            if s == "pi" { return .scalar(Double.pi) }
            if s == "e" { return .scalar(M_E) }
            throw ParseError.syntax(text, detail: "unknown name '\(s)'")
        case .negate(let a):
            switch try value(a, tensors, scalars) {
            case .scalar(let v): return .scalar(-v)
            case .tensor(let v): return .tensor(v.map { -$0 })
            }
        case .call(let f, let a):
            guard let fn = Self.functions[f] else { throw ParseError.syntax(text, detail: "unknown function '\(f)'") }
            switch try value(a, tensors, scalars) {
            case .scalar(let v): return .scalar(fn.scalar(v))
            case .tensor(let v): return .tensor(v.map(fn.float))
            }
        case .binary(let op, let a, let b):
            let l = try value(a, tensors, scalars), r = try value(b, tensors, scalars)
            if case .scalar(let x) = l, case .scalar(let y) = r {
                switch op {
                case "+": return .scalar(x + y)
                case "-": return .scalar(x - y)
                case "*": return .scalar(x * y)
                case "/": return .scalar(x / y)
                default: return .scalar(Foundation.pow(x, y))
                }
            }
            if op == "^" {
                // PyTorch's pow with a Python-number exponent: 2 as x*x, 0.5 as sqrt, 1 as x, else powf.
                switch (l, r) {
                case (.tensor(let x), .scalar(let y)):
                    if y == 2 { return .tensor(x.map { $0 * $0 }) }
                    if y == 0.5 { return .tensor(x.map { $0.squareRoot() }) }
                    if y == 1 { return .tensor(x) }
                    let e = Float(y)
                    return .tensor(x.map { Foundation.pow($0, e) })
                case (.scalar(let x), .tensor(let y)):
                    let b = Float(x)
                    return .tensor(y.map { Foundation.pow(b, $0) })
                default:
                    throw ParseError.syntax(text, detail: "** between two tensors is not read")
                }
            }
            let f: (Float, Float) -> Float
            switch op {
            case "+": f = { $0 + $1 }
            case "-": f = { $0 - $1 }
            case "*": f = { $0 * $1 }
            default: f = { $0 / $1 }
            }
            switch (l, r) {
            case (.tensor(let x), .tensor(let y)):
                guard x.count == y.count else { throw ParseError.syntax(text, detail: "tensors of \(x.count) and \(y.count) values") }
                return .tensor(zip(x, y).map(f))
            case (.tensor(let x), .scalar(let y)): let s = Float(y); return .tensor(x.map { f($0, s) })
            case (.scalar(let x), .tensor(let y)): let s = Float(x); return .tensor(y.map { f(s, $0) })
            default: fatalError("unreachable")
            }
        }
    }

    private struct Parser {
        let text: String
        let chars: [Character]
        var i = 0
        init(text: String) { self.text = text; chars = Array(text) }

        var atEnd: Bool { i >= chars.count }
        var rest: String { String(chars[min(i, chars.count)...]) }
        func error(_ detail: String) -> ParseError { .syntax(text, detail: detail) }

        mutating func skipSpaces() { while i < chars.count, chars[i].isWhitespace { i += 1 } }
        mutating func peek() -> Character? { skipSpaces(); return atEnd ? nil : chars[i] }
        mutating func take(_ s: String) -> Bool {
            skipSpaces()
            let a = Array(s)
            guard i + a.count <= chars.count, Array(chars[i..<(i + a.count)]) == a else { return false }
            i += a.count
            return true
        }

        mutating func expression() throws -> Node {
            var n = try term()
            while let c = peek(), c == "+" || c == "-" {
                i += 1
                n = .binary(c, n, try term())
            }
            return n
        }

        mutating func term() throws -> Node {
            var n = try unary()
            while let c = peek(), c == "*" || c == "/" {
                if c == "*" && i + 1 < chars.count && chars[i + 1] == "*" { break }  // ** binds tighter
                i += 1
                n = .binary(c, n, try unary())
            }
            return n
        }

        // Python: unary minus binds tighter than * and looser than ** (-a**b = -(a**b)).
        mutating func unary() throws -> Node {
            if take("-") { return .negate(try unary()) }
            if take("+") { return try unary() }
            return try power()
        }

        mutating func power() throws -> Node {
            let base = try atom()
            if take("**") { return .binary("^", base, try unary()) }
            return base
        }

        mutating func atom() throws -> Node {
            guard let c = peek() else { throw error("the expression ends early") }
            if c == "(" {
                i += 1
                let n = try expression()
                guard take(")") else { throw error("a ')' is missing") }
                return n
            }
            if c.isNumber || c == "." {
                let start = i
                while i < chars.count, chars[i].isNumber || chars[i] == "." { i += 1 }
                if i < chars.count, chars[i] == "e" || chars[i] == "E" {
                    var j = i + 1
                    if j < chars.count, chars[j] == "+" || chars[j] == "-" { j += 1 }
                    if j < chars.count, chars[j].isNumber {
                        i = j
                        while i < chars.count, chars[i].isNumber { i += 1 }
                    }
                }
                guard let v = Double(String(chars[start..<i])) else { throw error("bad number '\(String(chars[start..<i]))'") }
                return .number(v)
            }
            if c.isLetter || c == "_" {
                let start = i
                while i < chars.count, chars[i].isLetter || chars[i].isNumber || chars[i] == "_" || chars[i] == "." { i += 1 }
                var name = String(chars[start..<i])
                for prefix in ["math.", "torch.", "np."] where name.hasPrefix(prefix) { name.removeFirst(prefix.count) }
                if take("(") {
                    guard ConformanceExpression.functions[name] != nil else { throw error("unknown function '\(name)'") }
                    let arg = try expression()
                    guard take(")") else { throw error("a ')' is missing after \(name)(") }
                    return .call(name, arg)
                }
                return .name(name)
            }
            throw error("unexpected '\(c)'")
        }
    }
}
