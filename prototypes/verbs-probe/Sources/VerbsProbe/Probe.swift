#if canImport(Glibc)
import Glibc
#endif
import Verbs

/// The probe's command line: `verbs-probe devices|register|server|client [options]`.
/// Exit status: 0 all good, 1 a check failed, 2 usage, 3 a verbs call failed (message on stderr).
public enum Probe {
    static let usage = """
        usage: verbs-probe devices
               verbs-probe register --file PATH [--size-kib N] [--device NAME]
               verbs-probe server --file PATH [--size-mib N] [--ip ADDR] [--port N] [--ready-file PATH]
               verbs-probe client [--ip ADDR] [--port N] [--latency-ops N] [--bandwidth-seconds N]
        ADDR defaults to $PMU_RDMA_IP, else 10.11.12.1. The server's file should be on tmpfs.
        """

    public static func main(_ arguments: [String]) -> Int32 {
        guard arguments.count >= 2 else { return fail(usage) }
        var options: [String: String] = [:]
        var index = 2
        while index < arguments.count {
            let key = arguments[index]
            guard key.hasPrefix("--"), index + 1 < arguments.count else { return fail("bad argument \(key)\n" + usage) }
            options[String(key.dropFirst(2))] = arguments[index + 1]
            index += 2
        }
        let defaultAddress = getenv("PMU_RDMA_IP").map { String(cString: $0) } ?? "10.11.12.1"
        do {
            switch arguments[1] {
            case "devices":
                let names = DeviceList.names()
                Output.line(names.isEmpty ? "no RDMA devices" : names.joined(separator: "\n"))
                return 0
            case "register":
                guard let path = options["file"] else { return fail("register needs --file\n" + usage) }
                let sizeKiB = Int(options["size-kib"] ?? "4096") ?? 4096
                try RegisterCheck.run(device: options["device"], path: path, sizeBytes: sizeKiB << 10)
                return 0
            case "server":
                var server = ServerOptions()
                guard let path = options["file"] else { return fail("server needs --file\n" + usage) }
                server.filePath = path
                server.address = options["ip"] ?? defaultAddress
                if let port = options["port"].flatMap({ UInt16($0) }) { server.port = port }
                if let mib = options["size-mib"].flatMap({ Int($0) }) { server.sizeBytes = mib << 20 }
                guard server.sizeBytes >= TestPlan.minimumRegionBytes else {
                    return fail("--size-mib must be at least \(TestPlan.minimumRegionBytes >> 20)")
                }
                server.readyFile = options["ready-file"]
                try Server.run(server)
                return 0
            case "client":
                var client = ClientOptions()
                client.address = options["ip"] ?? defaultAddress
                if let port = options["port"].flatMap({ UInt16($0) }) { client.port = port }
                if let n = options["latency-ops"].flatMap({ Int($0) }), n > 0 { client.latencyOperations = n }
                if let s = options["bandwidth-seconds"].flatMap({ Int($0) }), s > 0 {
                    client.bandwidthDuration = .seconds(s)
                }
                let ok = try Client.run(client)
                Output.line("client: \(ok ? "PASS" : "FAIL")")
                return ok ? 0 : 1
            default:
                return fail(usage)
            }
        } catch {
            Output.error("verbs-probe \(arguments[1]): \(error)")
            return 3
        }
    }

    static func fail(_ text: String) -> Int32 {
        Output.error(text)
        return 2
    }
}
