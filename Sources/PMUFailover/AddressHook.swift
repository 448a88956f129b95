#if canImport(Glibc)
import Glibc
#endif
import Foundation
import PMUCore

/// Moves the service address. With `command` nil: `ip addr add ADDRESS dev INTERFACE` and a
/// gratuitous ARP (`arping -U -c 1`; clients otherwise keep the dead host's MAC until their ARP
/// entry ages out, 37-39 s measured here), which needs CAP_NET_ADMIN. With a command (a cloud
/// API call, or a test's recorder), it runs through /bin/sh with PMU_ADDRESS_ACTION=add|del,
/// PMU_ADDRESS and PMU_INTERFACE and must exit 0.
public struct AddressHook: Sendable {
    public var address: String
    public var interface: String
    public var command: String?

    public init(address: String, interface: String, command: String?) {
        self.address = address
        self.interface = interface
        self.command = command
    }

    /// The address without its prefix length, for arping and for listening.
    public var host: String { String(address.split(separator: "/").first ?? "") }

    public func add() throws(PMUError) {
        if let command { return try Self.shell(command, environment: environment("add"), what: "address hook") }
        let status = Self.runTool(["ip", "addr", "add", address, "dev", interface])
        // 2: "RTNETLINK answers: File exists": the address is already here (a retried takeover).
        guard status == 0 || status == 2 else {
            throw PMUError(.ioError, "ip addr add \(address) dev \(interface) failed (status \(status)); the server needs CAP_NET_ADMIN, or give --address-hook")
        }
        // Not waited for: arping sends at once but then waits about a second for answers that a
        // gratuitous ARP never gets (it exits 1, which is normal). A missing arping only slows
        // clients (their ARP entry ages out instead, 37-39 s measured here).
        Self.startTool(["arping", "-U", "-c", "1", "-i", interface, "-S", host, host])
    }

    public func remove() throws(PMUError) {
        if let command { return try Self.shell(command, environment: environment("del"), what: "address hook") }
        _ = Self.runTool(["ip", "addr", "del", address, "dev", interface])
    }

    func environment(_ action: String) -> [String: String] {
        ["PMU_ADDRESS_ACTION": action, "PMU_ADDRESS": address, "PMU_INTERFACE": interface]
    }

    static func runTool(_ arguments: [String]) -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        do { try process.run() } catch { return -1 }
        process.waitUntilExit()
        return process.terminationStatus
    }

    static func startTool(_ arguments: [String]) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try? process.run()
    }

    static func shell(_ command: String, environment: [String: String], what: String) throws(PMUError) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", command]
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        do { try process.run() } catch { throw PMUError(.ioError, "cannot run \(what) \(NameRules.quoted(command)): \(error)") }
        process.waitUntilExit()
        guard process.terminationReason == .exit, process.terminationStatus == 0 else {
            throw PMUError(.ioError, "\(what) \(NameRules.quoted(command)) failed (status \(process.terminationStatus))")
        }
    }
}
