import Testing

@testable import PMUCore
@testable import PMUServer
@testable import PMUTransport

/// The verbs options of pmu-server, parsed without a device: polling modes and the shadow bound.
@Suite struct RDMAOptionTests {
    @Test func pollingModesParseAndBadOnesAreRefusedByName() throws {
        #expect(try RDMAPolling(parsing: "event") == .event)
        #expect(try RDMAPolling(parsing: "busy") == .busy)
        #expect(try RDMAPolling(parsing: "adaptive") == .adaptive(microseconds: 50))
        #expect(try RDMAPolling(parsing: "adaptive:200") == .adaptive(microseconds: 200))
        for bad in ["", "spin", "adaptive:", "adaptive:0", "adaptive:-5", "adaptive:2000000", "Busy"] {
            #expect(throws: PMUError.self) { _ = try RDMAPolling(parsing: bad) }
        }
        do {
            _ = try RDMAPolling(parsing: "spin")
        } catch {
            #expect(error.code == .invalidArgument && error.message.contains("event, adaptive"), "\(error.message)")
        }
    }

    @Test func serverOptionsReachTheConfiguration() throws {
        let command = try ServerCommand.parse(["--rdma-poll", "busy", "--rdma-shadow-memory", "64MiB"])
        let configuration = try command.makeConfiguration()
        #expect(configuration.rdmaPolling == .busy)
        #expect(configuration.store.shadowLimitBytes == 64 << 20)
        #expect(configuration.store.shadowRegions == false) // decided at start, from the filesystem
        #expect(throws: (any Error).self) { _ = try ServerCommand.parse(["--rdma-poll", "sometimes"]) }
        #expect(throws: (any Error).self) { _ = try ServerCommand.parse(["--rdma-shadow-memory", "lots"]) }
    }
}
