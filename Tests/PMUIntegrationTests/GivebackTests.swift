import Foundation
import PMUClient
import PMUCore
import Testing

/// Giveback (ONTAP's): the failed owner comes back, the partner hands its portion back, and
/// mirroring restarts, while clients keep writing through all of it.
@Suite(.serialized) struct GivebackTests {
    static let writers = 4
    static let steps = 150

    /// A real kill -9 of the owner with 4 clients writing; takeover; the clients go on against
    /// the partner; giveback; the owner restarts on its portion and mirrors again; the clients go
    /// on against it. Every acknowledged write is there at the end, byte for byte, and every
    /// write not acknowledged is all there or absent. (Clients here follow the endpoint by hand:
    /// reconnection in the client library is issue 13's.)
    @Test func givebackUnderLoadLosesNoAcknowledgedWrite() async throws {
        let pair = try TestPair()
        let admin = try await pair.owner.client()
        _ = try await admin.createRegion("handed", sizeBytes: UInt64(Self.writers * Self.steps * 4096))
        await admin.disconnect()
        let target = LockedBox(pair.owner.endpoint)
        let stop = LockedBox(false)
        let acknowledged = LockedSet()
        let base = pair.owner.configuration()

        let load = Task {
            await withTaskGroup(of: Void.self) { group in
                for writer in 0..<Self.writers {
                    group.addTask {
                        var client: PMUClient? = nil
                        var handle: RegionHandle? = nil
                        for step in 0..<Self.steps where !stop.withLockedValue({ $0 }) {
                            let page = writer * Self.steps + step
                            // Bounded: 600 attempts x >= 50 ms per write, across every phase change.
                            for _ in 0..<600 where !stop.withLockedValue({ $0 }) {
                                do {
                                    if client == nil {
                                        var configuration = base
                                        configuration.endpoint = target.withLockedValue { $0 }
                                        configuration.connectTimeout = .seconds(3)
                                        configuration.requestTimeout = .seconds(10)
                                        let connected = try await PMUClient.connect(configuration)
                                        client = connected
                                        handle = try await connected.openRegion("handed", rights: .readWrite)
                                    }
                                    try await client!.write(handle!, at: UInt64(page * 4096), pattern(page))
                                    acknowledged.insert(page)
                                    break
                                } catch {
                                    await client?.disconnect()
                                    client = nil
                                    try? await Task.sleep(for: .milliseconds(50))
                                }
                            }
                            try? await Task.sleep(for: .milliseconds(10))
                        }
                        await client?.disconnect()
                    }
                }
            }
        }
        defer { stop.withLockedValue { $0 = true } }
        func progress(_ more: Int) async throws {
            let goal = acknowledged.values.count + more
            for _ in 0..<300 where acknowledged.values.count < goal { try await Task.sleep(for: .milliseconds(100)) }
            #expect(acknowledged.values.count >= goal, "the writers made no progress")
        }

        // 1. Mirrored writes on the owner, then a real kill -9.
        try await progress(40)
        pair.owner.kill9()
        // 2. Takeover; the writers carry on against the partner.
        let partner = try await pair.partner.client()
        _ = try await partner.pairTakeover()
        target.withLockedValue { $0 = pair.takeoverEndpoint }
        try await progress(40)
        // 3. Giveback under load: the partner stops serving the portion and releases it.
        let report = try #require(try JSONSerialization.jsonObject(with: Data(try await partner.pairGiveback().utf8)) as? [String: Any])
        #expect(report["regionsPersisted"] as? Int == 1)
        let status = try await pair.status(pair.partner)
        #expect((status["role"] as? [String] ?? []).contains("serving a taken-over portion") == false)
        // Nothing serves the portion at the takeover address any more.
        var early = base
        early.endpoint = pair.takeoverEndpoint
        early.connectTimeout = .seconds(2)
        await #expect(throws: PMUError.self) { _ = try await PMUClient.connect(early) }
        // 4. The owner restarts on its portion (the LOCK is free, the takeover cleared) and
        //    mirrors again; the writers carry on against it.
        try pair.owner.start()
        target.withLockedValue { $0 = pair.owner.endpoint }
        let mirroring = try await pair.waitForOwner { $0["connected"] as? Bool == true }
        #expect(mirroring["superseded"] == nil)
        try await progress(40)
        let log = try await pair.waitForLog { ($0["liveRecords"] as? Int ?? 0) > 0 }
        #expect(log["takenOver"] as? Bool == false)
        #expect(log["owner"] as? String == "mirroring")

        await load.value
        await partner.disconnect()
        let reader = try await pair.owner.client()
        let region = try await reader.openRegion("handed", rights: .read)
        let bytes = Array(try await reader.read(region, at: 0, length: Self.writers * Self.steps * 4096).readableBytesView)
        await reader.disconnect()
        let acked = acknowledged.values
        #expect(acked.count >= 120)
        for page in 0..<(Self.writers * Self.steps) {
            let got = Array(bytes[(page * 4096)..<((page + 1) * 4096)])
            let whole = got == pattern(page)
            if acked.contains(page) {
                #expect(whole, "acknowledged write to page \(page) is missing after takeover and giveback")
            } else {
                #expect(whole || got.allSatisfy { $0 == 0 }, "unacknowledged write to page \(page) is torn")
            }
        }
    }
}

final class LockedBox<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value
    init(_ value: Value) { self.value = value }
    func withLockedValue<T>(_ body: (inout Value) -> T) -> T { lock.withLock { body(&value) } }
}
