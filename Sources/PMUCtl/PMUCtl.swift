import ArgumentParser
import Foundation
import PMUCore

/// A pmuctl command whose work is async. Commands implement `execute()` rather than
/// AsyncParsableCommand's `run()`: see Sources/pmuctl/main.swift.
protocol PMUCtlCommand: ParsableCommand {
    func execute() async throws
}

/// `pmuctl`: region and data inspection from a shell.
public struct PMUCtl: ParsableCommand {
    /// Declared here too so they may come before the subcommand; subcommands see them through
    /// their own @OptionGroup (argument-parser fills both from either position).
    @OptionGroup var connection: ConnectionOptions

    public static let configuration = CommandConfiguration(
        commandName: "pmuctl",
        abstract: "Inspect and manage regions on a pmu-server.",
        discussion: """
            Connection options (--server, --client, --secret-file, --json) go after the subcommand, or in the \
            environment: PMU_SERVER, PMU_CLIENT, PMU_SECRET_FILE. Defaults reach a server started with no flags \
            in the current directory. Exits non-zero with a one-line error on stderr on any failure.
            """,
        subcommands: [RegionCommand.self, CheckpointCommand.self, SnapshotCommand.self, ClusterCommand.self, PairCommand.self, StatsCommand.self, WriteCommand.self, ReadCommand.self, PersistCommand.self])

    public init() {}

    /// Parses `arguments` and runs the command; returns the exit status. Used by main.swift and by tests.
    public static func runMain(_ arguments: [String]? = nil) async -> Int32 {
        do {
            let command = try parseAsRoot(arguments)
            if let command = command as? PMUCtlCommand {
                try await command.execute()
            } else {
                var command = command
                try command.run()
            }
            return 0
        } catch let error as PMUError {
            Output.printError("pmuctl: error: \(error.code): \(error.message)")
            return 1
        } catch {
            let code = exitCode(for: error)
            if code.rawValue == 0 {
                print(fullMessage(for: error))
            } else {
                Output.printError(fullMessage(for: error))
            }
            return code.rawValue
        }
    }
}
