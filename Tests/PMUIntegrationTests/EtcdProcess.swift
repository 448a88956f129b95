import Foundation
import NIOPosix
import PMUCore
import PMUFailover
import PMUTransport

#if canImport(Glibc)
import Glibc
#endif

/// A real etcd (Debian's etcd-server) on 127.0.0.1 with ephemeral ports and its own data
/// directory, killed by PID when the test lets go of it. Election timeout 500 ms so that a lease
/// of TTL 1-2 s is honoured as given (etcd rounds TTLs up to 1.5 x the election timeout).
final class EtcdProcess: @unchecked Sendable {
    static let binary = "/usr/bin/etcd"
    let scratch = Scratch()
    let clientPort = freePort()
    let peerPort = freePort()
    private(set) var process: Process?

    static var installed: Bool { FileManager.default.isExecutableFile(atPath: binary) }

    var endpoint: Endpoint { Endpoint(host: "127.0.0.1", port: clientPort) }
    var url: String { "http://127.0.0.1:\(clientPort)" }

    init() async throws {
        guard Self.installed else { throw PMUError(.invalidArgument, "etcd is not installed: run scripts/install-deps.sh (Debian etcd-server)") }
        try await start()
    }

    func start() async throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        let peer = "http://127.0.0.1:\(peerPort)"
        process.arguments = [
            "--name", "pmu-test", "--data-dir", scratch.path + "/etcd",
            "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "pmu-test=\(peer)",
            "--heartbeat-interval", "50", "--election-timeout", "500", "--log-level", "error",
        ]
        let log = FileHandle(forWritingAtPath: scratch.path + "/etcd.log") ?? {
            FileManager.default.createFile(atPath: scratch.path + "/etcd.log", contents: nil)
            return FileHandle(forWritingAtPath: scratch.path + "/etcd.log")!
        }()
        process.standardOutput = log
        process.standardError = log
        try process.run()
        self.process = process
        // Ready when a read answers (generous: CI is loaded).
        let client = EtcdClient(endpoint: endpoint, group: MultiThreadedEventLoopGroup.singleton)
        for _ in 0..<300 {
            if (try? await client.grantLease(ttlSeconds: 5)) != nil { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw PMUError(.timedOut, "etcd did not answer within 30 s; see \(scratch.path)/etcd.log")
    }

    /// SIGKILL and wait (the data directory stays; `start()` brings the same member back).
    func stop() {
        guard let process, process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    deinit { stop() }
}
