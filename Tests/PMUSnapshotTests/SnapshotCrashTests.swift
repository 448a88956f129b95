import NIOCore
import PMUCore
import PMUSnapshot
import PMUTesting
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The target's crash order, over PMUTesting's simulated region: power loss (unsynced pages kept,
/// dropped or torn at 512-byte sectors) at a random operation of a random snapshot, then a restore
/// from what survived. Seeded; a failure names its seed.
@Suite struct SnapshotCrashTests {
    func image(_ arena: SnapshotArena) -> [UInt8] { Array(UnsafeRawBufferPointer(arena.bytes)) }

    @Test func powerLossNeverYieldsATornOrUnacknowledgedLossOfSnapshot() async throws {
        let pages = 16
        for seed in 1...150 as ClosedRange<UInt64> {
            var generator = SeededGenerator(seed: seed)
            let arena = try SnapshotArena(sizeBytes: pages * SnapshotArena.systemPageBytes)
            let layout = try SnapshotLayout(pageBytes: UInt64(arena.pageBytes), arenaBytes: UInt64(arena.sizeBytes))
            let region = SimulatedRegion(sizeBytes: Int(layout.requiredRegionBytes), failAfterOperations: Int.random(in: 2...60, using: &generator))
            var references: [UInt64: [UInt8]] = [:]
            var acknowledged: UInt64 = 0
            do {
                let target = try await SnapshotTarget.open(io: region, name: "sim", formatFor: UInt64(arena.sizeBytes))
                let gate = WriterGate()
                let snapshotter = try LiveSnapshotter(arena: arena, target: target, gate: gate, options: SnapshotOptions(mode: .automatic))
                defer { Task { await snapshotter.close() } }
                for _ in 0..<12 {
                    for _ in 0..<Int.random(in: 1...4, using: &generator) {
                        let page = Int.random(in: 0..<pages, using: &generator), value = generator.next()
                        gate.mutate { arena.page(page).storeBytes(of: value, toByteOffset: Int.random(in: 0..<(arena.pageBytes / 8), using: &generator) * 8, as: UInt64.self) }
                    }
                    let ticket = try await snapshotter.snapshot()
                    references[ticket.sequence] = image(arena) // no writer runs between the pause and here
                    acknowledged = try await ticket.result().sequence
                }
            } catch {
                #expect(error.code == .connectionClosed, "seed \(seed): \(error)")
            }
            let (survived, _) = region.crash(using: &generator)
            let recovered = SimulatedRegion(recoveredFrom: survived)
            let opened: SnapshotTarget
            do {
                opened = try await SnapshotTarget.open(io: recovered, name: "sim")
            } catch {
                // Only a crash before the format was durable leaves no superblock, and then nothing was acknowledged.
                #expect(error.code == .notSnapshotRegion && acknowledged == 0, "seed \(seed): \(error)")
                continue
            }
            let target = opened
            guard let newest = target.newestCommitted else {
                #expect(acknowledged == 0, "seed \(seed): snapshot \(acknowledged) was acknowledged and is gone")
                continue
            }
            #expect(newest.sequence >= acknowledged, "seed \(seed): acknowledged \(acknowledged), restored \(newest.sequence)")
            let restored = try SnapshotArena(sizeBytes: arena.sizeBytes)
            let header = try await target.restore(into: restored)
            #expect(header.sequence == newest.sequence)
            #expect(image(restored) == references[header.sequence], "seed \(seed): snapshot \(header.sequence) restored with other bytes")
        }
    }

    @Test func hostileStoredBytesAreRefusedNotTrusted() throws {
        var generator = SeededGenerator(seed: 7)
        let layout = try SnapshotLayout(pageBytes: 4096, arenaBytes: 64 << 10)
        let header = SnapshotHeader(sequence: 3, epoch: 2, pagesSent: 4, bytesSent: 16384, pauseNanoseconds: 10, startedMilliseconds: 1,
                                    committedMilliseconds: 2, mapChecksum: 99)
        let superblock = layout.encodeSuperblock(createdMilliseconds: 5)
        #expect(try SnapshotLayout.decodeSuperblock(superblock, regionBytes: layout.requiredRegionBytes) == layout)
        #expect(layout.decodeHeader(layout.encodeHeader(header)) == header)
        #expect(throws: PMUError.self) { try SnapshotLayout.decodeSuperblock(superblock, regionBytes: layout.requiredRegionBytes - 1) }
        // Every single-bit flip of a valid header or superblock is refused.
        for encoded in [layout.encodeHeader(header), superblock] {
            let bytes = Array(encoded.readableBytesView)
            for bit in 0..<(bytes.count * 8) {
                var flipped = bytes
                flipped[bit / 8] ^= UInt8(1 << (bit % 8))
                if encoded == superblock {
                    #expect((try? SnapshotLayout.decodeSuperblock(ByteBuffer(bytes: flipped), regionBytes: layout.requiredRegionBytes)) == nil, "bit \(bit)")
                } else {
                    #expect(layout.decodeHeader(ByteBuffer(bytes: flipped)) == nil, "bit \(bit)")
                }
            }
        }
        // Seeded garbage and truncations: errors or nil, never a trap.
        for _ in 0..<2000 {
            let count = Int.random(in: 0...200, using: &generator)
            let garbage = ByteBuffer(bytes: (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) })
            _ = try? SnapshotLayout.decodeSuperblock(garbage, regionBytes: UInt64.random(in: 0...(1 << 40), using: &generator))
            _ = layout.decodeHeader(garbage)
            _ = layout.decodeHeartbeat(garbage)
            _ = try? layout.decodeMap(garbage, expectedChecksum: UInt32.random(in: 0...UInt32.max, using: &generator))
        }
        // A map naming a slot twice or outside the data area is refused even with a matching checksum.
        var map = PageMap(pageCount: Int(layout.pageCount))
        for page in 0..<map.slots.count { map.slots[page] = UInt32(page) }
        map.slots[3] = 5
        let twice = layout.encodeMap(map)
        #expect(throws: PMUError.self) { try layout.decodeMap(twice, expectedChecksum: SnapshotLayout.mapChecksum(twice)) }
        map.slots[3] = UInt32(layout.slotCount)
        let outside = layout.encodeMap(map)
        #expect(throws: PMUError.self) { try layout.decodeMap(outside, expectedChecksum: SnapshotLayout.mapChecksum(outside)) }
        map.slots[3] = 3
        let valid = layout.encodeMap(map)
        #expect(try layout.decodeMap(valid, expectedChecksum: SnapshotLayout.mapChecksum(valid)) == map)
    }
}
