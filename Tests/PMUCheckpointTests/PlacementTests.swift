import NIOCore
import PMUCore
import Testing

@testable import PMUCheckpoint

@Suite struct PlacementTests {
    func record(_ sequence: UInt64, at offset: UInt64, length: UInt64) -> CheckpointRecord {
        CheckpointRecord(sequence: sequence, epoch: 1, dataOffset: offset, payloadLength: length, timestampNanoseconds: 0, payloadCRC: 0)
    }

    @Test func overwriteAlternatesSlotsAndDisplacesTheOneBeforeLast() throws {
        let geometry = try CheckpointGeometry.plan(mode: .overwrite, regionBytes: 1 << 20)
        #expect(geometry.indexEntries == 2 && geometry.keepNewest == 1)
        let one = try PlacementRules.place(sequence: 1, payloadLength: 100, geometry: geometry, live: [], head: 0, newestCommitted: 0)
        #expect(one.dataOffset == geometry.slotBytes && one.displaced.isEmpty)
        let r1 = record(1, at: one.dataOffset, length: 100)
        let two = try PlacementRules.place(sequence: 2, payloadLength: 100, geometry: geometry, live: [r1], head: r1.span.upperBound, newestCommitted: 1)
        #expect(two.dataOffset == 0 && two.displaced.isEmpty)
        let r2 = record(2, at: 0, length: 100)
        let three = try PlacementRules.place(sequence: 3, payloadLength: 100, geometry: geometry, live: [r1, r2], head: r2.span.upperBound, newestCommitted: 2)
        #expect(three.dataOffset == geometry.slotBytes && three.displaced == [r1])
        let tooBig = #expect(throws: PMUError.self) {
            _ = try PlacementRules.place(sequence: 4, payloadLength: geometry.slotBytes + 1, geometry: geometry, live: [], head: 0, newestCommitted: 0)
        }
        #expect(tooBig?.code == .checkpointTooLarge)
        // With 2 still in flight (only 1 committed), 3 may not displace 1: it would leave nothing.
        let busy = #expect(throws: PMUError.self) {
            _ = try PlacementRules.place(sequence: 3, payloadLength: 100, geometry: geometry, live: [r1, r2], head: r2.span.upperBound, newestCommitted: 1)
        }
        #expect(busy?.code == .regionFull)
    }

    @Test func appendWithoutRetentionFillsThenRefuses() throws {
        let geometry = try CheckpointGeometry.plan(mode: .append, regionBytes: 4096 + 4096 + 4 * 4096, maxCheckpoints: 8)
        #expect(geometry.dataBytes == 4 * 4096)
        var live: [CheckpointRecord] = []
        var head: UInt64 = 0
        for sequence in 1...4 as ClosedRange<UInt64> {
            let placement = try PlacementRules.place(sequence: sequence, payloadLength: 4000, geometry: geometry, live: live, head: head, newestCommitted: sequence - 1)
            #expect(placement.dataOffset == (sequence - 1) * 4096 && placement.displaced.isEmpty)
            live.append(record(sequence, at: placement.dataOffset, length: 4000))
            head = live.last!.span.upperBound
        }
        let full = #expect(throws: PMUError.self) {
            _ = try PlacementRules.place(sequence: 5, payloadLength: 1, geometry: geometry, live: live, head: head, newestCommitted: 4)
        }
        #expect(full?.code == .regionFull)
        // Zero-length checkpoints need no data space, only an index entry.
        #expect(try PlacementRules.place(sequence: 5, payloadLength: 0, geometry: geometry, live: live, head: head, newestCommitted: 4).displaced.isEmpty)
    }

    @Test func appendWithRetentionReusesOnlyOlderThanTheNewestN() throws {
        let geometry = try CheckpointGeometry.plan(mode: .append, regionBytes: 4096 + 4096 + 4 * 4096, maxCheckpoints: 8, keepNewest: 2)
        var live: [CheckpointRecord] = []
        var head: UInt64 = 0
        for sequence in 1...12 as ClosedRange<UInt64> {
            let placement = try PlacementRules.place(sequence: sequence, payloadLength: 4096, geometry: geometry, live: live, head: head, newestCommitted: sequence - 1)
            // Never displaces one of the newest 2.
            #expect(placement.displaced.allSatisfy { $0.sequence + 2 < sequence })
            live.removeAll { r in placement.displaced.contains(r) }
            live.append(record(sequence, at: placement.dataOffset, length: 4096))
            head = live.last!.span.upperBound
            #expect(live.count >= min(Int(sequence), 3))
        }
        // Checkpoints as large as three slots cannot keep two neighbours intact: refused, not lost.
        let error = #expect(throws: PMUError.self) {
            _ = try PlacementRules.place(sequence: 13, payloadLength: 3 * 4096, geometry: geometry, live: live, head: head, newestCommitted: 12)
        }
        #expect(error?.code == .regionFull)
    }

    @Test func geometryRoundTripsAndRejectsDamage() throws {
        let geometry = try CheckpointGeometry.plan(mode: .append, regionBytes: 1 << 24, maxCheckpoints: 100, keepNewest: 10)
        let bytes = geometry.encode()
        #expect(try CheckpointGeometry.decode(bytes, regionBytes: 1 << 24) == geometry)
        // A valid header that does not fit a smaller region is damage, named as such.
        #expect(throws: PMUError.self) { _ = try CheckpointGeometry.decode(bytes, regionBytes: 1 << 20) }
        for index in 0..<bytes.readableBytes {
            var damaged = bytes
            damaged.setInteger(damaged.getInteger(at: index, as: UInt8.self)! ^ 0x10, at: index)
            #expect(try CheckpointGeometry.decode(damaged, regionBytes: 1 << 24) == nil, "flip at \(index)")
        }
        #expect(throws: PMUError.self) { _ = try CheckpointGeometry.plan(mode: .append, regionBytes: 1 << 24, maxCheckpoints: 4, keepNewest: 4) }
        #expect(throws: PMUError.self) { _ = try CheckpointGeometry.plan(mode: .overwrite, regionBytes: 8192) }
    }

    @Test func recordHeaderRoundTripsAndRejectsTheWrongSlot() throws {
        let geometry = try CheckpointGeometry.plan(mode: .append, regionBytes: 1 << 20, maxCheckpoints: 16)
        let r = CheckpointRecord(sequence: 21, epoch: 3, dataOffset: 8192, payloadLength: 5000, timestampNanoseconds: 9, payloadCRC: 0xABCD)
        let bytes = r.encode()
        #expect(CheckpointRecord.decode(bytes, slot: 5, geometry: geometry) == r)
        #expect(CheckpointRecord.decode(bytes, slot: 4, geometry: geometry) == nil)
        for index in 0..<bytes.readableBytes {
            var damaged = bytes
            damaged.setInteger(damaged.getInteger(at: index, as: UInt8.self)! ^ 1, at: index)
            #expect(CheckpointRecord.decode(damaged, slot: 5, geometry: geometry) == nil)
        }
    }
}

@Suite struct ProtectedPlacementTests {
    func record(_ sequence: UInt64, at offset: UInt64, length: UInt64) -> CheckpointRecord {
        CheckpointRecord(sequence: sequence, epoch: 1, dataOffset: offset, payloadLength: length, timestampNanoseconds: 0, payloadCRC: 0)
    }

    @Test func aProtectedSetReplacesKeepNewest() throws {
        // Room for three 4 KiB payloads; records 1 (kept), 2 and 3 (failed attempts) fill it.
        let geometry = try CheckpointGeometry.plan(mode: .append, regionBytes: 4096 + 4096 + 3 * 4096, maxCheckpoints: 16, keepNewest: 1)
        let live = [record(1, at: 0, length: 4096), record(2, at: 4096, length: 4096), record(3, at: 8192, length: 4096)]
        // keep-newest alone: 4 would displace 1, and 2 and 3 count as newer, so 1 may go.
        let plain = try PlacementRules.place(sequence: 4, payloadLength: 4096, geometry: geometry, live: live, head: 12288, newestCommitted: 3)
        #expect(plain.displaced.map(\.sequence) == [1])
        // Protecting 1: the ring skips past it and reuses 2 (garbage), though 2 is newer than 1.
        let reuse = try PlacementRules.place(sequence: 4, payloadLength: 4096, geometry: geometry, live: live, head: 12288, newestCommitted: 3, protected: [1])
        #expect(reuse.dataOffset == 4096 && reuse.displaced.map(\.sequence) == [2])
        // Everything protected: refused, nothing displaced.
        let refused = #expect(throws: PMUError.self) {
            _ = try PlacementRules.place(sequence: 4, payloadLength: 4096, geometry: geometry, live: live, head: 12288, newestCommitted: 3, protected: [1, 2, 3])
        }
        #expect(refused?.code == .regionFull)
    }
}
