import Foundation
import PMUClient
import PMUCore
import PMUTransport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The repository's root, for the files under monitoring/ and systemd/.
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

/// A real Prometheus (Debian's `prometheus`, scripts/install-deps.sh) on 127.0.0.1 with a free
/// port, a temporary data directory and a 1 s scrape interval, scraping one target. Killed by
/// its pid, its directory removed, when the object goes.
final class PrometheusProcess: @unchecked Sendable {
    let directory: String
    let port: Int
    private let process: Process
    var url: String { "http://127.0.0.1:\(port)" }

    init(scraping target: String, in parent: String) throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/prometheus") else {
            throw PMUError(.internalError, "/usr/bin/prometheus not found: run scripts/install-deps.sh (Debian package prometheus)")
        }
        directory = parent + "/prometheus"
        try FileManager.default.createDirectory(atPath: directory + "/tsdb", withIntermediateDirectories: true)
        let config = """
            global:
              scrape_interval: 1s
              scrape_timeout: 1s
              evaluation_interval: 1s
            scrape_configs:
              - job_name: pmu
                static_configs:
                  - targets: ['\(target)']
            """
        try config.write(toFile: directory + "/prometheus.yml", atomically: true, encoding: .utf8)
        port = try freeLoopbackPort()
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/prometheus")
        process.arguments = [
            "--config.file=\(directory)/prometheus.yml", "--storage.tsdb.path=\(directory)/tsdb",
            "--web.listen-address=127.0.0.1:\(port)", "--log.level=warn",
        ]
        FileManager.default.createFile(atPath: directory + "/log", contents: nil)
        let log = FileHandle(forWritingAtPath: directory + "/log")!
        process.standardOutput = log
        process.standardError = log
        try process.run()
    }

    var log: String { (try? String(contentsOfFile: directory + "/log", encoding: .utf8)) ?? "" }

    /// Polls /-/ready (bounded: 60 s; a loaded CI machine starts it slowly).
    func waitUntilReady() async throws {
        for _ in 0..<600 {
            if let (status, _) = try? curl(url + "/-/ready"), status == 200 { return }
            guard process.isRunning else { throw PMUError(.internalError, "prometheus exited:\n\(log)") }
            try await Task.sleep(nanoseconds: 100_000_000)
        }
        throw PMUError(.internalError, "prometheus was not ready within 60 s:\n\(log)")
    }

    /// An instant query through the HTTP API: the first sample's value, nil while there is none.
    func query(_ expression: String) throws -> String? {
        let encoded = expression.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? expression
        let (status, body) = try curl(url + "/api/v1/query?query=" + encoded)
        guard status == 200,
            let reply = try JSONSerialization.jsonObject(with: body) as? [String: Any],
            let data = reply["data"] as? [String: Any], let result = data["result"] as? [[String: Any]],
            let value = result.first?["value"] as? [Any], value.count == 2
        else { return nil }
        return value[1] as? String
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// A port free on 127.0.0.1 now (bound with port 0, then released) for a program that cannot
/// report the port it bound.
func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw PMUError(.ioError, "socket failed") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    guard bound else { throw PMUError(.ioError, "cannot bind a loopback port") }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// GET with curl (bounded to 10 s): status and body.
func curl(_ url: String) throws -> (status: Int, body: Data) {
    let result = try run("/usr/bin/curl", ["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}", url], timeoutSeconds: 20)
    guard result.status == 0, let split = result.stdout.lastIndex(of: UInt8(ascii: "\n")) else {
        throw PMUError(.ioError, "curl \(url) failed: \(result.stderr)")
    }
    let status = Int(String(decoding: result.stdout[(split + 1)...], as: UTF8.self)) ?? 0
    return (status, Data(result.stdout[..<split]))
}

@Suite(.enabled(if: testTransport == .tcp, "metrics are served over TCP; the VM suite runs verbs only"))
struct MetricsTests {
    let scratch = Scratch()

    /// The test: a pmu-server the test drove, scraped by a real Prometheus, whose HTTP
    /// API then answers the exact number of WRITEs (and their bytes) the test made; the scrape
    /// passes `promtool check metrics`; INFO and the log lines tell the same story.
    @Test func prometheusScrapesTheWritesTheTestMade() async throws {
        try writeSecretsFile(scratch.path + "/secrets")
        let server = try ServerProcess(
            dataDirectory: scratch.path + "/data", secretsPath: scratch.path + "/secrets",
            extraArguments: ["--metrics-listen", "127.0.0.1:0", "--log-format", "json"])
        defer { server.terminate() }

        let writes = 37
        let writeBytes = 3000
        let client = try await server.client()
        let region = try await client.createRegion("metered", sizeBytes: 1 << 20)
        for index in 0..<writes {
            try await client.write(region, at: UInt64(index * writeBytes), pattern(offset: UInt64(index), count: writeBytes, seed: 16))
        }
        try await client.persist(region)
        _ = try await client.read(region, at: 0, length: 4096)
        var wrong = server.configuration("alice")
        wrong.secret = Array("not-alices-secret-at-all".utf8)
        #expect(await code { _ = try await PMUClient.connect(wrong) } == .authenticationFailed)

        // INFO names where the metrics are (port 0 was asked for) and counts what was made.
        let info = try JSONSerialization.jsonObject(with: Data(try await client.serverInfo().utf8)) as? [String: Any] ?? [:]
        let transport = info["transport"] as? [String: Any] ?? [:]
        let counts = info["counts"] as? [String: Any] ?? [:]
        #expect(transport["kind"] as? String == "tcp")
        #expect(counts["regions"] as? Int == 1)
        #expect(counts["allocatedBytes"] as? Int == 1 << 20)
        #expect(counts["connectionsAuthenticated"] as? Int == 1)
        let metricsAddress = try #require(transport["metricsListening"] as? String)
        await client.disconnect()

        // A direct scrape: the exact counts, and a format promtool accepts.
        let (status, scrape) = try curl("http://\(metricsAddress)/metrics")
        #expect(status == 200)
        let text = String(decoding: scrape, as: UTF8.self)
        #expect(text.contains("pmu_requests_total{verb=\"WRITE\",result=\"OK\"} \(writes)\n"), "\(text)")
        #expect(text.contains("pmu_written_bytes_total \(writes * writeBytes)\n"))
        #expect(text.contains("pmu_read_bytes_total 4096\n"))
        #expect(text.contains("pmu_authentication_failures_total 1\n"))
        #expect(text.contains("pmu_sync_duration_seconds_count 1\n"))
        #expect(text.contains("pmu_persisted_bytes_total \(1 << 20)\n"))
        #expect(text.contains("pmu_request_duration_seconds_count{verb=\"WRITE\"} \(writes)\n"))
        #expect(text.contains("# HELP pmu_requests_total "))
        let scrapePath = scratch.path + "/scrape.txt"
        try scrape.write(to: URL(fileURLWithPath: scrapePath))
        let lint = try run("/bin/sh", ["-c", "promtool check metrics < '\(scrapePath)'"])
        #expect(lint.status == 0, "promtool check metrics: \(String(decoding: lint.stdout, as: UTF8.self)) \(lint.stderr)")
        #expect(try curl("http://\(metricsAddress)/other").status == 404)

        // Prometheus scrapes it; its query API returns the test's write count.
        let prometheus = try PrometheusProcess(scraping: metricsAddress, in: scratch.path)
        try await prometheus.waitUntilReady()
        var answered: String?
        for _ in 0..<600 {
            answered = try prometheus.query("pmu_requests_total{job=\"pmu\",verb=\"WRITE\",result=\"OK\"}")
            if answered != nil { break }
            try await Task.sleep(nanoseconds: 100_000_000)
        }
        #expect(answered == "\(writes)", "Prometheus log:\n\(prometheus.log)")
        #expect(try prometheus.query("pmu_written_bytes_total{job=\"pmu\"}") == "\(writes * writeBytes)")
        #expect(try prometheus.query("up{job=\"pmu\"}") == "1")

        // JSON log lines, each a JSON object; the per-request lines carry connection and request ids.
        let lines = server.log.split(separator: "\n").filter { $0.hasPrefix("{") }
        #expect(!lines.isEmpty)
        let objects = lines.compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        #expect(objects.count == lines.count, "every JSON log line parses")
        let writeLines = objects.filter { $0["message"] as? String == "request" && $0["verb"] as? String == "WRITE" }
        #expect(writeLines.count == writes)
        #expect(writeLines.allSatisfy { $0["connection"] != nil && $0["request"] != nil && $0["result"] as? String == "OK" })

        // A small PERSIST goes through the write journal: one group commit, counted.
        let again = try await server.client()
        let small = try await again.openRegion("metered", rights: .readWrite)
        try await again.write(small, at: 0, pattern(offset: 0, count: 4096, seed: 17))
        try await again.persist(small, offset: 0, length: 4096)
        await again.disconnect()
        let journaled = String(decoding: try curl("http://\(metricsAddress)/metrics").body, as: UTF8.self)
        #expect(journaled.contains("pmu_journal_commits_total 1\n"), "\(journaled)")
        #expect(journaled.contains("pmu_journal_persists_total 1\n"))
        #expect(journaled.contains("pmu_journal_commit_duration_seconds_count 1\n"))
    }

    /// The rules file loads, and its alerts fire on the series that should raise them (and not
    /// on the others): promtool's own rule tests in monitoring/pmu-alerts.test.yml.
    @Test func alertingRulesCheckAndPassTheirTests() throws {
        let checked = try run("/usr/bin/promtool", ["check", "rules", repositoryRoot + "/monitoring/pmu-alerts.yml"])
        #expect(checked.status == 0, "\(String(decoding: checked.stdout, as: UTF8.self)) \(checked.stderr)")
        let tested = try run("/usr/bin/promtool", ["test", "rules", repositoryRoot + "/monitoring/pmu-alerts.test.yml"])
        #expect(tested.status == 0, "\(String(decoding: tested.stdout, as: UTF8.self)) \(tested.stderr)")
    }

    /// systemd/ units verify with no message (scripts/lint-systemd.sh runs `systemd-analyze verify`).
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze"), "systemd-analyze not installed"))
    func systemdUnitsVerify() throws {
        let linted = try run("/bin/bash", [repositoryRoot + "/scripts/lint-systemd.sh", binDirectory + "/pmu-server"])
        #expect(linted.status == 0, "\(String(decoding: linted.stdout, as: UTF8.self)) \(linted.stderr)")
    }

    /// pmuctl stats as an operator runs it: sections as text, the server's object with --json,
    /// and a client that is not an admin refused with a code.
    @Test func pmuctlStats() throws {
        try writeSecretsFile(scratch.path + "/secrets")
        let server = try ServerProcess(dataDirectory: scratch.path + "/data", secretsPath: scratch.path + "/secrets", extraArguments: ["--max-clients", "77"])
        defer { server.terminate() }
        try "admin-secret-0123456789".write(toFile: scratch.path + "/admin.secret", atomically: true, encoding: .utf8)
        try "alice-secret-0123456789".write(toFile: scratch.path + "/alice.secret", atomically: true, encoding: .utf8)
        let base = ["--server", server.endpoint.description]
        let text = try run(binDirectory + "/pmuctl", base + ["--secret-file", scratch.path + "/admin.secret", "stats"])
        #expect(text.status == 0, "\(text.stderr)")
        let out = String(decoding: text.stdout, as: UTF8.self)
        #expect(out.contains("# limits\n") && out.contains("maxClients: 77\n"), "\(out)")
        #expect(out.contains("# transport\n") && out.contains("kind: tcp\n"))
        #expect(out.contains("version: ") && out.contains("uptimeSeconds: "))

        let json = try run(binDirectory + "/pmuctl", base + ["--secret-file", scratch.path + "/admin.secret", "stats", "--json"])
        let object = try JSONSerialization.jsonObject(with: json.stdout) as? [String: Any] ?? [:]
        let space = object["dataDirectory"] as? [String: Any] ?? [:]
        #expect((space["freeBytes"] as? Int ?? 0) > 0)
        #expect((space["sizeBytes"] as? Int ?? 0) >= (space["freeBytes"] as? Int ?? .max))
        #expect((object["configuration"] as? [String: Any])?["dataDirectory"] as? String == server.dataDirectory)

        let denied = try run(binDirectory + "/pmuctl", base + ["--client", "alice", "--secret-file", scratch.path + "/alice.secret", "stats"])
        #expect(denied.status != 0)
        #expect(denied.stderr.contains("ACCESS_DENIED"), "\(denied.stderr)")
    }
}
