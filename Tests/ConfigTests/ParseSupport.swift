import XCTest
@testable import Config

/// The configuration a command line runs with; fails the test if it asks for anything else.
func config(_ arguments: [String], file: StaticString = #filePath, line: UInt = #line) throws -> VMConfig {
    guard case .run(let config) = try CommandLineParser.parse(arguments) else {
        XCTFail("expected a run action", file: file, line: line)
        return VMConfig()
    }
    return config
}
