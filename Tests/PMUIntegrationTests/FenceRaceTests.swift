import Foundation
import NIOCore
import PMUClient
import PMUCore
import Testing

/// The fencing guarantee with the copy outside the server-wide table lock (issue 10, defect 11):
/// a takeover cannot fall between a stale writer's fence check and its bytes landing.
@Suite struct FenceRaceTests {
    /// A stale writer streams 4 MiB WRITEs (two in flight) into a checkpoint region while another
    /// client takes the writer role. Everything the new writer writes after its OPEN is answered
    /// must survive: no stale copy may land after the takeover, and the stale writer must be told
    /// FENCED. Repeated a few rounds, since the interleaving differs each time.
    @Test func noStaleBytesLandAfterTakeover() async throws {
        let scratch = Scratch()
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        let size = 8 << 20
        let setup = try await server.client()
        try await setup.close(try await setup.createRegion("race", sizeBytes: UInt64(size), kind: .checkpointOverwrite))
        for round in 0..<5 {
            let stale = try await server.client()
            let staleHandle = try await stale.openRegion("race", rights: .readWrite)
            let staleBytes = ByteBuffer(repeating: 0xAA, count: 4 << 20)
            // Over verbs the two writes race to the queue pair: whichever is refused, the other
            // is flushed behind it, and both must still report FENCED.
            let writer = Task { () -> PMUError? in
                let deadline = ContinuousClock.now + .seconds(30)
                for _ in 0..<2000 where ContinuousClock.now < deadline {
                    do {
                        async let a: Void = stale.write(staleHandle, at: 0, staleBytes)
                        async let b: Void = stale.write(staleHandle, at: UInt64(4 << 20), staleBytes)
                        _ = try await (a, b)
                    } catch let error as PMUError {
                        return error
                    } catch {
                        return PMUError(.internalError, "\(error)")
                    }
                }
                return nil
            }
            try await Task.sleep(for: .milliseconds(50 + 20 * round))
            let fresh = try await server.client()
            let freshHandle = try await fresh.openRegion("race", rights: .readWrite) // the takeover
            let freshBytes = [UInt8](repeating: 0xBB, count: size)
            try await fresh.write(freshHandle, at: 0, freshBytes)
            let ended = await writer.value
            #expect(ended?.code == .fenced, "round \(round): the stale writer ended with \(ended.map { "\($0.code): \($0.message)" } ?? "no error")")
            let back = try await fresh.read(freshHandle, at: 0, length: size)
            #expect(Array(back.readableBytesView) == freshBytes, "round \(round): a stale write landed after the takeover")
            await stale.disconnect()
            await fresh.disconnect()
        }
        await setup.disconnect()
    }
}
