import Foundation
import PMUCore
import Testing

/// pmuctl as a user runs it: a real process against a real server.
@Suite struct PMUCtlTests {
    let scratch = Scratch()

    func pmuctl(_ server: ServerProcess, _ arguments: [String], stdin: Data? = nil, environment extra: [String: String] = [:]) throws -> (status: Int32, stdout: Data, stderr: String) {
        var environment = ProcessInfo.processInfo.environment
        environment["PMU_SERVER"] = server.endpoint.description
        environment["PMU_SECRET_FILE"] = server.dataDirectory + "/admin.secret"
        for (key, value) in extra { environment[key] = value }
        return try run(binDirectory + "/pmuctl", arguments, stdin: stdin, environment: environment)
    }

    @Test func walkthrough() throws {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        let created = try pmuctl(server, ["region", "create", "demo", "--size", "16MiB"])
        #expect(created.status == 0, "\(created.stderr)")
        #expect(String(decoding: created.stdout, as: UTF8.self).contains("created region demo"))

        let listed = try pmuctl(server, ["region", "list"])
        let table = String(decoding: listed.stdout, as: UTF8.self)
        #expect(table.hasPrefix("NAME"))
        #expect(table.contains("demo") && table.contains("16MiB"))

        let listedJSON = try pmuctl(server, ["region", "list", "--json"])
        let regions = try JSONSerialization.jsonObject(with: listedJSON.stdout) as? [[String: Any]]
        #expect(regions?.first?["name"] as? String == "demo")
        #expect(regions?.first?["sizeBytes"] as? Int == 16 << 20)

        // stdin -> region -> stdout, 5 MiB + 3 bytes at an unaligned offset.
        let payload = Data(pattern(offset: 0, count: 5 * 1024 * 1024 + 3, seed: 9))
        let written = try pmuctl(server, ["write", "demo", "--offset", "4097"], stdin: payload)
        #expect(written.status == 0, "\(written.stderr)")
        #expect(try pmuctl(server, ["persist", "demo"]).status == 0)
        let read = try pmuctl(server, ["read", "demo", "--offset", "4097", "--length", "\(payload.count)"])
        #expect(read.status == 0)
        #expect(read.stdout == payload)

        // Files both ways.
        let input = scratch.path + "/in.bin", output = scratch.path + "/out.bin"
        try payload.prefix(70_000).write(to: URL(fileURLWithPath: input))
        #expect(try pmuctl(server, ["write", "demo", "--file", input, "--offset", "1MiB"]).status == 0)
        #expect(try pmuctl(server, ["read", "demo", "--offset", "1MiB", "--length", "70000", "--out", output]).status == 0)
        #expect(try Data(contentsOf: URL(fileURLWithPath: output)) == payload.prefix(70_000))

        // Global options before the subcommand work as well as after it.
        let stat = try run(binDirectory + "/pmuctl", ["--server", server.endpoint.description, "--secret-file", server.dataDirectory + "/admin.secret", "region", "stat", "demo", "--json"])
        let info = try JSONSerialization.jsonObject(with: stat.stdout) as? [String: Any]
        #expect(info?["owner"] as? String == "admin")

        #expect(try pmuctl(server, ["region", "delete", "demo"]).status == 0)
        #expect(String(decoding: try pmuctl(server, ["region", "list", "--json"]).stdout, as: UTF8.self).contains("[") )
    }

    @Test func failuresExitNonZeroWithOneLineOnStderr() throws {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        #expect(try pmuctl(server, ["region", "create", "x", "--size", "1KiB"]).status == 0)
        let cases: [([String], String)] = [
            (["region", "create", "x", "--size", "1KiB"], "REGION_EXISTS"),
            (["region", "create", "y", "--size", "0"], "INVALID_SIZE"),
            (["region", "create", "a/b", "--size", "1KiB"], "INVALID_NAME"),
            (["region", "stat", "missing"], "UNKNOWN_REGION"),
            (["read", "x", "--offset", "1000", "--length", "100"], "OUT_OF_BOUNDS"),
            (["region", "create", "z", "--size", "lots"], "size \"lots\""),
        ]
        for (arguments, expected) in cases {
            let result = try pmuctl(server, arguments)
            #expect(result.status != 0, "\(arguments)")
            #expect(result.stderr.contains(expected), "\(arguments): \(result.stderr)")
            #expect(result.stderr.split(separator: "\n").count == 1 || expected.hasPrefix("size"), "\(arguments): \(result.stderr)")
        }
        let badSecret = scratch.path + "/wrong.secret"
        try "definitely-not-the-secret\n".write(toFile: badSecret, atomically: true, encoding: .utf8)
        let denied = try pmuctl(server, ["region", "list"], environment: ["PMU_SECRET_FILE": badSecret])
        #expect(denied.status != 0 && denied.stderr.contains("AUTHENTICATION_FAILED"))
        let noServer = try pmuctl(server, ["region", "list"], environment: ["PMU_SERVER": "127.0.0.1:1"])
        #expect(noServer.status != 0 && noServer.stderr.contains("cannot connect"))
    }
}
