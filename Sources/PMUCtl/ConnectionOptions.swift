import ArgumentParser
import Foundation
import PMUClient
import PMUCore
import PMUTransport

/// Where pmuctl connects and as whom. Each flag falls back to an environment variable, then to the
/// embedded default (the server started with no flags, in the current directory).
public struct ConnectionOptions: ParsableArguments {
    @Option(help: "pmu-server address HOST:PORT (env PMU_SERVER; default 127.0.0.1:\(Endpoint.defaultPort)).")
    var server: String?

    @Option(help: "Client id (env PMU_CLIENT; default admin).")
    var client: String?

    @Option(name: .customLong("secret-file"), help: "File holding this client's secret alone (env PMU_SECRET_FILE; default pmu-data/admin.secret).")
    var secretFile: String?

    @Option(help: "tcp, rdma (RDMA verbs; --server must be an IPv4 address the RDMA device reaches) or auto (env PMU_TRANSPORT; default tcp).")
    var transport: String?

    @Option(name: .customLong("timeout"), help: "Seconds to wait for the server's answer to each request, and to connect and authenticate, before failing TIMED_OUT (env PMU_TIMEOUT; default 30; 0 waits forever for requests).")
    var timeoutSeconds: Double?

    @Flag(help: "Print JSON instead of tables.")
    var json = false

    public init() {}

    func configuration(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> ClientConfiguration {
        let endpoint = try Endpoint(parsing: server ?? environment["PMU_SERVER"] ?? Endpoint.default.description)
        let clientId = client ?? environment["PMU_CLIENT"] ?? "admin"
        let path = secretFile ?? environment["PMU_SECRET_FILE"] ?? "pmu-data/admin.secret"
        guard let data = FileManager.default.contents(atPath: path) else {
            throw PMUError(.invalidArgument, "cannot read secret file \(path); pass --secret-file or set PMU_SECRET_FILE (the server writes DATA_DIR/admin.secret on first start)")
        }
        let secret = try SecretsTable.parseClientSecret(String(decoding: data, as: UTF8.self), source: path)
        var configuration = ClientConfiguration(endpoint: endpoint, clientId: clientId, secret: secret)
        configuration.transport = try TransportChoice(parsing: transport ?? environment["PMU_TRANSPORT"] ?? "tcp")
        if let text = timeoutSeconds.map({ "\($0)" }) ?? environment["PMU_TIMEOUT"] {
            guard let seconds = Double(text), seconds.isFinite, (0...86_400).contains(seconds) else {
                throw PMUError(.invalidArgument, "--timeout/PMU_TIMEOUT must be 0...86400 seconds; got \(text)")
            }
            configuration.requestTimeout = seconds == 0 ? nil : .milliseconds(Int64(seconds * 1000))
            if seconds > 0 { configuration.connectTimeout = .milliseconds(max(1, Int64(seconds * 1000))) }
        }
        return configuration
    }

    func connect() async throws -> PMUClient {
        let configuration = try configuration()
        let client = try await PMUClient.connect(configuration)
        // `auto` says which transport it picked (stderr, so scripts reading stdout are unaffected).
        if configuration.transport == .auto { Output.printError("pmuctl: transport: \(client.transportReason)") }
        return client
    }
}

/// Runs a command body with a connected client, disconnecting afterwards whatever happens.
func withClient<T>(_ options: ConnectionOptions, _ body: (PMUClient) async throws -> T) async throws -> T {
    let client = try await options.connect()
    do {
        let result = try await body(client)
        await client.disconnect()
        return result
    } catch {
        await client.disconnect()
        throw error
    }
}
