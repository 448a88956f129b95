import ArgumentParser
import Foundation
import PMUClient

/// Connection options shared by the two examples (same flags and variables as pmuctl).
public struct ExampleConnection: ParsableArguments {
    @Option(help: "pmu-server HOST:PORT (env PMU_SERVER; default 127.0.0.1:7690).") public var server: String?
    @Option(help: "Client id (env PMU_CLIENT; default admin).") public var client: String?
    @Option(name: .customLong("secret-file"), help: "Secret file (env PMU_SECRET_FILE; default pmu-data/admin.secret).") public var secretFile: String?
    @Option(help: "tcp, rdma or auto (env PMU_TRANSPORT; default tcp).") public var transport: String?

    public init() {}

    public func connect() async throws -> PMUClient {
        let environment = ProcessInfo.processInfo.environment
        let endpoint = try Endpoint(parsing: server ?? environment["PMU_SERVER"] ?? "127.0.0.1:7690")
        let path = secretFile ?? environment["PMU_SECRET_FILE"] ?? "pmu-data/admin.secret"
        guard let data = FileManager.default.contents(atPath: path) else {
            throw PMUError(.invalidArgument, "cannot read secret file \(path)")
        }
        let secret = try SecretsTable.parseClientSecret(String(decoding: data, as: UTF8.self), source: path)
        var configuration = ClientConfiguration(endpoint: endpoint, clientId: client ?? environment["PMU_CLIENT"] ?? "admin", secret: secret)
        configuration.transport = try TransportChoice(parsing: transport ?? environment["PMU_TRANSPORT"] ?? "tcp")
        return try await PMUClient.connect(configuration)
    }
}

/// Lines the examples print go out at once (tests and people read them as they happen).
public func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
