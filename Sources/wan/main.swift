import ArgumentParser
import Foundation
import WanKit

struct Wan: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wan",
        abstract: "WanKit: the Wan2.1 video generation models in Swift.",
        subcommands: [Conformance.self, Bench.self])
}

struct Conformance: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the golden parity cases of a folder (../shared/golden format).")
    @Argument(help: "Golden folder (holding cases/ and weights/).") var directory: String
    @Option(help: "Only cases whose name contains this text.") var filter: String?

    func run() throws {
        let runner = ConformanceRunner(goldenDirectory: directory)
        guard FileManager.default.fileExists(atPath: runner.casesDirectory) else {
            throw ValidationError("\(directory) has no cases/ folder: pass the golden folder (e.g. ../shared/golden)")
        }
        let counts = try runner.run(filter: filter) { result in
            print(result)
            fflush(stdout)
        }
        print("\(counts.passed) passed, \(counts.failed) failed, \(counts.skipped) skipped")
        if counts.failed > 0 { throw ExitCode(1) }
    }
}

Wan.main()
