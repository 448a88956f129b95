import ArgumentParser
import Foundation

/// An example program's command: parsed by argument-parser, then run.
public protocol ExampleCommand: ParsableCommand {
    func execute() async throws
}

extension ExampleCommand {
    /// The examples' entry point. Parsing errors, --help and --version go through
    /// argument-parser's own handling (help on stdout, exit 0; usage on stderr, exit 64); an error
    /// while running gets one line on stderr and exit 1.
    public static func start(named name: String) async -> Never {
        let command: Self
        do {
            command = try parse()
        } catch {
            exit(withError: error)
        }
        do {
            try await command.execute()
            Foundation.exit(0)
        } catch {
            FileHandle.standardError.write(Data("\(name): error: \(error)\n".utf8))
            Foundation.exit(1)
        }
    }
}
