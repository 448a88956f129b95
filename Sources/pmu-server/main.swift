import PMUServer

// Thin on purpose: the command, its options and the service live in PMUServer.
// The command's async entry point is `execute()`: with `AsyncParsableCommand.run()`, a top-level
// main.swift on Linux resolves `run()` to the synchronous default that only prints help.
do {
    let command = try ServerCommand.parse()
    try await command.execute()
} catch {
    ServerCommand.exit(withError: error)
}
