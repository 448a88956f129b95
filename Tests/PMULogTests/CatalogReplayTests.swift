import Foundation
import Testing

@testable import PMUCore
@testable import PMULog

/// The apply rule of mirror-log catalog records (issue 13): what a run of records, in the
/// owner's order, does to a replica's catalog, without a store or a socket.
@Suite struct CatalogReplayTests {
    static func region(_ id: UInt64, _ name: String, size: UInt64 = 8192, generation: UInt64 = 2, epoch: UInt64 = 1) -> RegionRecord {
        RegionRecord(id: id, name: name, sizeBytes: size, kind: .raw, createdAtMilliseconds: 5, generation: generation, writerEpoch: epoch, owner: "admin", readers: [], writers: [])
    }

    /// Log records as the partner's log holds them: catalog changes and writes, numbered in order.
    static func log(_ items: [Item]) -> [LogRecord] {
        items.enumerated().map { index, item in
            let origin = UInt64(index + 1)
            switch item {
            case .catalog(let entry):
                let entry = CatalogReplay.logEntry(entry, origin: origin)
                return LogRecord(kind: entry.kind, sequence: origin, origin: origin, regionId: entry.regionId, epoch: entry.epoch, offset: 0, payload: entry.payload)
            case .write(let id, let offset, let bytes):
                return LogRecord(sequence: origin, origin: origin, regionId: id, epoch: 1, offset: offset, payload: bytes)
            }
        }
    }

    enum Item {
        case catalog(CatalogEntry)
        case write(UInt64, UInt64, [UInt8])
    }

    /// A region created on the owner after the replica's copy, then written: the replica creates
    /// it, then writes into it, in that order. Without the catalog record the writes would have
    /// nowhere to land (what the replica did before these records existed).
    @Test func createThenWritesLandInTheCreatedRegion() throws {
        let created = Self.region(7, "fresh")
        let records = Self.log([.catalog(.put(created)), .write(7, 0, [1, 2, 3]), .write(7, 4096, [4])])
        let replay = try CatalogReplay.make(records: records, catalog: [Self.region(3, "old")])
        #expect(replay.steps == [.create(created), .write(records[1]), .write(records[2])])
        #expect(replay.catalog[7] == created && replay.catalog[3] != nil)
        #expect(replay.unknownRegionWrites == 0 && replay.catalogRecordsApplied == 1)
        // The same writes without their create: nothing to write into.
        let without = try CatalogReplay.make(records: Array(records.dropFirst()), catalog: [Self.region(3, "old")])
        #expect(without.steps.isEmpty && without.unknownRegionWrites == 2)
    }

    /// A delete removes the region: writes recorded before it are applied before it, writes
    /// after it are counted and dropped, a delete of an unknown id does nothing.
    @Test func deleteRemovesAndLaterWritesAreDropped() throws {
        let doomed = Self.region(4, "doomed")
        let records = Self.log([.write(4, 0, [9]), .catalog(.delete(id: 4)), .write(4, 8, [7]), .catalog(.delete(id: 99))])
        let replay = try CatalogReplay.make(records: records, catalog: [doomed])
        #expect(replay.steps == [.write(records[0]), .remove(doomed)])
        #expect(replay.catalog.isEmpty && replay.unknownRegionWrites == 1)
    }

    /// An epoch raise (OPEN for writing) updates metadata of the same region; a record older
    /// than what the copy holds (its generation is not newer) never rolls it back.
    @Test func newerMetadataUpdatesOlderIsSkipped() throws {
        let held = Self.region(5, "ckpt", generation: 4, epoch: 3)
        let raised = Self.region(5, "ckpt", generation: 5, epoch: 4)
        let stale = Self.region(5, "ckpt", generation: 3, epoch: 2)
        let replay = try CatalogReplay.make(records: Self.log([.catalog(.put(stale)), .catalog(.put(raised)), .catalog(.put(raised))]), catalog: [held])
        #expect(replay.steps == [.update(raised)])
        #expect(replay.catalog[5]?.writerEpoch == 4)
        #expect(replay.catalogRecordsSkipped == 2 && replay.catalogRecordsApplied == 1)
    }

    /// The owner's catalog wins: an id the copy holds under another name or size is recreated,
    /// and a copy region holding the created name under another id goes first.
    @Test func mismatchedShapesAreRecreated() throws {
        let copyOfFive = Self.region(5, "a", size: 4096)
        let copyOfSix = Self.region(6, "b")
        let ownersFive = Self.region(5, "a", size: 8192, generation: 9)
        let ownersSeven = Self.region(7, "b")
        let replay = try CatalogReplay.make(records: Self.log([.catalog(.put(ownersFive)), .catalog(.put(ownersSeven))]), catalog: [copyOfFive, copyOfSix])
        #expect(replay.steps == [.remove(copyOfFive), .create(ownersFive), .remove(copyOfSix), .create(ownersSeven)])
        #expect(Set(replay.catalog.keys) == [5, 7])
    }

    /// Shared storage: the catalog stands as it is, catalog records are counted and skipped.
    @Test func sharedStorageSkipsCatalogRecords() throws {
        let held = Self.region(2, "kept")
        let records = Self.log([.catalog(.put(Self.region(8, "new"))), .catalog(.delete(id: 2)), .write(2, 0, [1])])
        let replay = try CatalogReplay.make(records: records, catalog: [held], applyCatalog: false)
        #expect(replay.steps == [.write(records[2])])
        #expect(replay.catalogRecordsSkipped == 2 && replay.catalogRecordsApplied == 0)
    }

    /// Writes outside their region (after the create that sized it) are reported, not applied.
    @Test func outOfBoundsWritesAreReported() throws {
        let records = Self.log([.catalog(.put(Self.region(3, "small", size: 16))), .write(3, 10, [UInt8](repeating: 1, count: 7)), .write(3, .max, [1])])
        let replay = try CatalogReplay.make(records: records, catalog: [])
        #expect(replay.steps == [.create(Self.region(3, "small", size: 16))])
        #expect(replay.outOfBounds == [records[1], records[2]])
    }

    /// Hostile catalog records are DAMAGED with a reason, never a trap: a payload that is not one
    /// catalog record, trailing bytes, a next-id entry, an id that disagrees with the record's.
    @Test func hostileCatalogRecordsAreRefused() {
        func record(_ payload: [UInt8], regionId: UInt64 = 1) -> LogRecord {
            LogRecord(kind: LogRecordFormat.kindCatalog, sequence: 1, origin: 1, regionId: regionId, epoch: 0, offset: 0, payload: payload)
        }
        let good = CatalogFormat.encode(.delete(id: 1), sequence: 1)
        let cases: [(LogRecord, String)] = [
            (record([]), "catalog record: partial record header"),
            (record(Array(good.dropLast())), "catalog record: partial record body"),
            (record(good + [0]), "catalog record of \(good.count) bytes is followed by 1 more; one record was expected"),
            (record(CatalogFormat.encode(.nextId(5), sequence: 1)), "carries a catalog next-id entry"),
            (record(good, regionId: 2), "is filed under region 2 but its catalog entry names region 1"),
        ]
        for (hostile, reason) in cases {
            #expect {
                _ = try CatalogReplay.make(records: [hostile], catalog: [])
            } throws: { error in
                (error as? PMUError)?.code == .damaged && (error as? PMUError)?.message.contains(reason) == true
            }
        }
        let unknownKind = LogRecord(kind: 9, sequence: 1, origin: 1, regionId: 1, epoch: 0, offset: 0, payload: [])
        #expect(throws: PMUError.self) { _ = try CatalogReplay.make(records: [unknownKind], catalog: []) }
    }

    /// A log holding catalog records among writes survives a reopen (what a monitor restarted,
    /// or killed and restarted, finds): the scan accepts version-2 records, replay gives them
    /// back in order, and the apply rule on the reopened log is the one on the records appended.
    @Test func catalogRecordsSurviveAReopenOfTheLog() throws {
        let temp = LogTempDir()
        let created = Self.region(7, "fresh")
        let entries = [
            CatalogReplay.logEntry(.put(created), origin: 1),
            LogEntry(origin: 2, regionId: 7, epoch: 1, offset: 8, payload: [5, 6, 7]),
            CatalogReplay.logEntry(.delete(id: 7), origin: 3),
        ]
        let before: [LogRecord]
        do {
            let log = try AppendLog(path: temp.log, configuration: small)
            _ = try log.append(entries)
            before = try replayed(log)
        }
        let reopened = try AppendLog(path: temp.log, configuration: small)
        let after = try replayed(reopened)
        #expect(after == before && after.map(\.kind) == [2, 1, 2])
        let replay = try CatalogReplay.make(records: after, catalog: [])
        #expect(replay.steps == [.create(created), .write(after[1]), .remove(created)])
    }

    /// The record format: a catalog record is version 2 (an older build refuses it rather than
    /// replaying it as bytes), a write stays version 1 byte for byte; kind 2 under version 1,
    /// and kinds other than 1 and 2, are damage.
    @Test func catalogRecordsAreVersionTwoAndChecked() throws {
        let entry = CatalogReplay.logEntry(.put(Self.region(6, "v")), origin: 3)
        let record = LogRecord(kind: entry.kind, sequence: 1, origin: 3, regionId: 6, epoch: entry.epoch, offset: 0, payload: entry.payload)
        let bytes = LogRecordFormat.encode(record)
        #expect(bytes[4] == 2 && bytes[6] == 2)
        #expect(try LogRecordFormat.decode(bytes) == .record(record, bytes: bytes.count))
        #expect(LogRecordFormat.encode(sampleRecord(1))[4] == 1)
        func refixed(_ bytes: [UInt8]) -> [UInt8] {
            var fixed = bytes
            let crc = CRC32C.checksum(Array(fixed[0..<52]) + fixed[56...])
            withUnsafeBytes(of: crc.littleEndian) { fixed.replaceSubrange(52..<56, with: $0) }
            return fixed
        }
        var downgraded = bytes
        downgraded[4] = 1
        #expect(throws: PMUError(.damaged, "log record of version 1 has kind 2; version 1 carries kind 1 (write), version 2 kinds 1 and 2 (catalog change)")) {
            try LogRecordFormat.decode(refixed(downgraded))
        }
        var strange = bytes
        strange[6] = 3
        #expect(throws: PMUError.self) { try LogRecordFormat.decode(refixed(strange)) }
    }
}
