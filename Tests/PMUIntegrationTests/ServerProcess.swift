import Foundation
import NIOCore
import PMUClient
import PMUCore
import PMUTransport

#if canImport(Glibc)
import Glibc
#endif

/// Where `swift build` put pmu-server and pmuctl: $PMU_BIN_DIR, else next to the test binary.
let binDirectory: String = {
    if let dir = ProcessInfo.processInfo.environment["PMU_BIN_DIR"] { return dir }
    var candidates = [Bundle.main.bundleURL, URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()]
    candidates += candidates.map { $0.deletingLastPathComponent() }
    for candidate in candidates where FileManager.default.isExecutableFile(atPath: candidate.appendingPathComponent("pmu-server").path) {
        return candidate.path
    }
    fatalError("pmu-server not found near \(candidates); run `swift build` first or set PMU_BIN_DIR")
}()

/// PMU_TEST_TRANSPORT=rdma runs the integration suite over RDMA verbs (scripts/test-rdma.sh does,
/// in the soft-RoCE VM): servers listen on PMU_RDMA_IP with --transport rdma and every client
/// connects with the verbs transport. Default tcp.
let testTransport: TransportChoice = (try? TransportChoice(parsing: ProcessInfo.processInfo.environment["PMU_TEST_TRANSPORT"] ?? "tcp")) ?? .tcp
let testListenHost = testTransport == .rdma ? (ProcessInfo.processInfo.environment["PMU_RDMA_IP"] ?? "10.11.12.1") : "127.0.0.1"

/// A scratch directory for one test, removed when the test's object goes away.
final class Scratch: @unchecked Sendable {
    let path: String
    init() {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("pmu-it-\(UUID().uuidString.prefix(8))").path
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// Secrets used by the multi-client tests. Secrets files must be mode 0600.
let testSecrets: [String: String] = [
    "admin": "admin-secret-0123456789",
    "alice": "alice-secret-0123456789",
    "bob": "bob-secret-0123456789ab",
]

func writeSecretsFile(_ path: String, _ secrets: [String: String] = testSecrets, mode: Int = 0o600) throws {
    let text = "# test secrets\n" + secrets.sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)" }.joined(separator: "\n") + "\n"
    FileManager.default.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: mode])
}

/// A real pmu-server process on 127.0.0.1 with an ephemeral port and its own data directory.
final class ServerProcess: @unchecked Sendable {
    let dataDirectory: String
    let secretsPath: String?
    let logPath: String
    let extraArguments: [String]
    /// A command the server runs under, e.g. `prlimit --nofile=256:256 --` (empty: none).
    var launcher: [String]
    private(set) var process: Process
    private(set) var endpoint = Endpoint(host: "127.0.0.1", port: 0)

    /// Starts a server. `secretsPath` nil means the embedded default (DATA_DIR/secrets, admin only).
    init(dataDirectory: String, secretsPath: String? = nil, extraArguments: [String] = [], launcher: [String] = []) throws {
        self.dataDirectory = dataDirectory
        self.secretsPath = secretsPath
        self.logPath = dataDirectory + ".log"
        self.extraArguments = extraArguments
        self.launcher = launcher
        process = Process()
        try start()
    }

    var readyFile: String { dataDirectory + ".ready" }

    func arguments() -> [String] {
        var arguments = ["--data-dir", dataDirectory, "--listen", "\(testListenHost):0", "--ready-file", readyFile, "--log-level", "debug",
                         "--transport", testTransport.rawValue]
        if let secretsPath { arguments += ["--secrets", secretsPath] }
        return arguments + extraArguments
    }

    /// (Re)starts the process and waits until it accepts connections.
    func start() throws {
        try? FileManager.default.removeItem(atPath: readyFile)
        process = try Self.launch(arguments: arguments(), logPath: logPath, launcher: launcher)
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            if let text = try? String(contentsOfFile: readyFile, encoding: .utf8), text.hasSuffix("\n") {
                endpoint = try Endpoint(parsing: text.trimmingCharacters(in: .whitespacesAndNewlines))
                return
            }
            if !process.isRunning {
                throw PMUError(.internalError, "pmu-server exited with \(process.terminationStatus) before it was ready:\n\(log)")
            }
            usleep(20_000)
        }
        kill9()
        throw PMUError(.internalError, "pmu-server was not ready within 60 s:\n\(log)")
    }

    static func launch(arguments: [String], logPath: String, launcher: [String] = []) throws -> Process {
        let process = Process()
        if let command = launcher.first {
            // The launcher execs the server (prlimit does), so the pid stays the server's.
            process.executableURL = URL(fileURLWithPath: command)
            process.arguments = Array(launcher.dropFirst()) + [binDirectory + "/pmu-server"] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: binDirectory + "/pmu-server")
            process.arguments = arguments
        }
        FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = FileHandle(forWritingAtPath: logPath)!
        log.seekToEndOfFile()
        process.standardOutput = log
        process.standardError = log
        try process.run()
        return process
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// kill -9: no shutdown code runs; what survives is what the design says survives.
    func kill9() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// SIGTERM and wait; returns the exit status.
    @discardableResult
    func terminate() -> Int32 {
        guard process.isRunning else { return process.terminationStatus }
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        return process.terminationStatus
    }

    deinit { kill9() }

    func secret(for clientId: String) -> [UInt8] {
        if secretsPath == nil {
            let text = try! String(contentsOfFile: dataDirectory + "/admin.secret", encoding: .utf8)
            return Array(text.trimmingCharacters(in: .whitespacesAndNewlines).utf8)
        }
        return Array(testSecrets[clientId]!.utf8)
    }

    func configuration(_ clientId: String = "admin") -> ClientConfiguration {
        var configuration = ClientConfiguration(endpoint: endpoint, clientId: clientId, secret: secret(for: clientId))
        configuration.transport = testTransport
        return configuration
    }

    func client(_ clientId: String = "admin") async throws -> PMUClient {
        try await PMUClient.connect(configuration(clientId))
    }
}

/// Runs a process to completion with a time limit, returning its exit status and output.
func run(_ executable: String, _ arguments: [String], stdin: Data? = nil, environment: [String: String]? = nil, timeoutSeconds: Double = 120) throws -> (status: Int32, stdout: Data, stderr: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    if let environment { process.environment = environment }
    let out = Pipe(), err = Pipe(), input = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = input
    try process.run()
    let writer = Thread {
        if let stdin { input.fileHandleForWriting.write(stdin) }
        try? input.fileHandleForWriting.close()
    }
    writer.start()
    let killer = DispatchWorkItem { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
    DispatchQueue.global().asyncAfter(deadline: .now() + timeoutSeconds, execute: killer)
    let stdout = out.fileHandleForReading.readDataToEndOfFile()
    let stderr = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    killer.cancel()
    return (process.terminationStatus, stdout, String(decoding: stderr, as: UTF8.self))
}

/// A plain TCP socket speaking raw bytes, for frames no well-behaved client would send.
final class RawConnection {
    let fd: Int32

    init(_ endpoint: Endpoint) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(endpoint.port).bigEndian)
        inet_pton(AF_INET, endpoint.host, &address.sin_addr)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else { throw PMUError(.connectionClosed, "raw connect failed: \(errno)") }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    func send<M: WireMessage>(_ message: M, id: UInt64) {
        var buffer = ByteBuffer()
        FrameCodec.encode(Frame(requestId: id, message: message), into: &buffer)
        send(Array(buffer.readableBytesView))
    }

    /// Reply bytes received but not yet decoded: a recv can carry more than one frame, and the bytes
    /// past the first belong to the next read.
    private var pending = ByteBuffer()

    /// Reads replies until the server closes the connection (or 10 s pass). A reply that does not
    /// decode ends the read as if the connection closed badly (closed: false).
    func readUntilClosed() -> (frames: [Frame<Response>], closed: Bool) {
        var frames: [Frame<Response>] = []
        while true {
            switch nextFrame() {
            case .frame(let frame): frames.append(frame)
            case .closed: return (frames, true)
            case .failed: return (frames, false)
            }
        }
    }

    /// Reads exactly one reply; nil if the connection closed, timed out or sent bytes that are not a reply.
    func readFrame() -> Frame<Response>? {
        if case .frame(let frame) = nextFrame() { return frame }
        return nil
    }

    private enum Next { case frame(Frame<Response>), closed, failed }

    private func nextFrame() -> Next {
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            do {
                if let frame = try FrameCodec.decode(Response.self, from: &pending) { return .frame(frame) }
            } catch {
                return .failed
            }
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if n == 0 { return .closed }
            if n < 0 { return .failed }
            pending.writeBytes(chunk[0..<n])
        }
    }

    /// Performs the handshake by hand.
    func authenticate(clientId: String, secret: [UInt8]) -> Bool {
        let nonce = Authentication.randomNonce()
        send(Request.hello(clientId: clientId, clientNonce: nonce), id: 1)
        guard case .challenge(let serverNonce)? = readFrame()?.message else { return false }
        send(Request.authenticate(proof: Authentication.clientProof(secret: secret, clientId: clientId, clientNonce: nonce, serverNonce: serverNonce)), id: 2)
        guard case .authenticated? = readFrame()?.message else { return false }
        return true
    }
}

/// Deterministic bytes for a region offset, so large transfers can be checked without keeping copies.
func pattern(offset: UInt64, count: Int, seed: UInt64) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: count)
    var index = 0
    var word = offset / 8
    var skip = Int(offset % 8)
    while index < count {
        var z = (word &+ seed) &* 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 29)) &* 0xBF58_476D_1CE4_E5B9
        z ^= z >> 32
        withUnsafeBytes(of: z.littleEndian) { bytes in
            for byte in bytes.dropFirst(skip) where index < count {
                out[index] = byte
                index += 1
            }
        }
        skip = 0
        word += 1
    }
    return out
}

func code(_ body: () async throws -> Void) async -> PMUErrorCode? {
    do {
        try await body()
        return nil
    } catch {
        return (error as? PMUError)?.code ?? .internalError
    }
}

/// The code and message `body` failed with (nil code and empty text when it succeeded).
func message(_ body: () async throws -> Void) async -> (code: PMUErrorCode?, text: String) {
    do {
        try await body()
        return (nil, "")
    } catch {
        return ((error as? PMUError)?.code ?? .internalError, "\(error)")
    }
}
