import Foundation
import Testing

@testable import PMUCore
@testable import PMULog

final class LogTempDir {
    let path: String
    init() {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("pmu-log-\(UUID().uuidString)").path
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    var log: String { path + "/log" }
}

/// Small segments so a handful of records spans several: 4 records of 1000 payload bytes each.
let small = AppendLogConfiguration(segmentBytes: 4 * 1056, maxBytes: 3 * 4 * 1056, sync: .dataSync, maxPayloadBytes: 1000)

func entry(_ origin: UInt64, bytes: Int = 1000) -> LogEntry {
    LogEntry(origin: origin, regionId: 7, epoch: 2, offset: origin * 100, payload: (0..<bytes).map { UInt8(truncatingIfNeeded: $0 + Int(origin)) })
}

func replayed(_ log: AppendLog) throws -> [LogRecord] {
    var records: [LogRecord] = []
    try log.replay { records.append($0) }
    return records
}

func segmentFiles(_ dir: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasSuffix(".pmulog") }.sorted()
}

@Suite struct AppendLogTests {
    @Test func appendReplayReopen() throws {
        let temp = LogTempDir()
        do {
            let log = try AppendLog(path: temp.log, configuration: small)
            #expect(try log.append([entry(1), entry(2)]) == 2)
            #expect(try log.append([entry(3), entry(4), entry(5)]) == 5)
            #expect(segmentFiles(temp.log) == ["0000000000000001.pmulog", "0000000000000005.pmulog"])
            let records = try replayed(log)
            #expect(records.map(\.sequence) == [1, 2, 3, 4, 5])
            #expect(records.map(\.payload) == (1...5).map { entry(UInt64($0)).payload })
        }
        let reopened = try AppendLog(path: temp.log, configuration: small)
        #expect(reopened.status.nextSequence == 6)
        #expect(reopened.status.records == 5)
        #expect(try reopened.append([entry(6)]) == 6)
        #expect(try replayed(reopened).map(\.origin) == [1, 2, 3, 4, 5, 6])
        // Every segment file is preallocated to its full size.
        for file in segmentFiles(temp.log) {
            #expect((try FileManager.default.attributesOfItem(atPath: temp.log + "/" + file)[.size] as? Int) == small.segmentBytes)
        }
    }

    @Test func trimReclaimsWholeSegmentsAndSurvivesReopen() throws {
        let temp = LogTempDir()
        do {
            let log = try AppendLog(path: temp.log, configuration: small)
            try log.append((1...10).map { entry($0) }) // segments start at 1, 5, 9
            try log.trim(through: 6) // segment 1 goes; 5 holds 5...8, partly trimmed
            #expect(segmentFiles(temp.log) == ["0000000000000005.pmulog", "0000000000000009.pmulog"])
            #expect(try replayed(log).map(\.origin) == [7, 8, 9, 10])
            try log.trim(through: 3) // backwards: no-op
            #expect(log.status.trimmedThrough == 6)
        }
        do {
            let log = try AppendLog(path: temp.log, configuration: small)
            #expect(try replayed(log).map(\.origin) == [7, 8, 9, 10])
            #expect(log.status.liveRecords == 4)
            try log.trim(through: 10) // everything, the active segment too
            #expect(segmentFiles(temp.log).isEmpty)
            #expect(log.status.allocatedBytes == 0)
        }
        // Sequences continue after a reopen with no segment left (the trim file remembers).
        let log = try AppendLog(path: temp.log, configuration: small)
        #expect(try log.append([entry(11)]) == 11)
        #expect(try replayed(log).map(\.sequence) == [11])
    }

    @Test func fullLogRefusesTheWholeBatchAndRecoversAfterTrim() throws {
        let temp = LogTempDir()
        let log = try AppendLog(path: temp.log, configuration: small)
        try log.append((1...10).map { entry($0) })
        // 3 segments is the bound; records 11 and 12 fit the third, 13 would need a fourth.
        #expect(throws: PMUError.self) { try log.append([entry(11), entry(12), entry(13)]) }
        do {
            try log.append([entry(11), entry(12), entry(13)])
        } catch {
            #expect(error.code == .logFull)
            #expect(error.message.contains("must be trimmed"))
        }
        #expect(log.status.nextSequence == 11) // nothing of the refused batch went in
        try log.trim(through: 4)
        #expect(try log.append([entry(11), entry(12), entry(13)]) == 13)
        #expect(log.status.allocatedBytes <= small.maxBytes)
    }

    @Test func tornLastRecordIsCutAtReopen() throws {
        let temp = LogTempDir()
        do {
            let log = try AppendLog(path: temp.log, configuration: small)
            try log.append([entry(1), entry(2)])
        }
        // A crash in the middle of the third append: half a record after the second.
        let file = temp.log + "/0000000000000001.pmulog"
        let partial = Array(LogRecordFormat.encode(LogRecord(sequence: 3, origin: 3, regionId: 7, epoch: 2, offset: 0, payload: [UInt8](repeating: 9, count: 1000))).prefix(700))
        let handle = try #require(FileHandle(forUpdatingAtPath: file))
        try handle.seek(toOffset: UInt64(2 * 1056))
        try handle.write(contentsOf: partial)
        try handle.close()
        let log = try AppendLog(path: temp.log, configuration: small)
        #expect(log.repairedTornBytes == small.segmentBytes - 2 * 1056)
        #expect(try replayed(log).map(\.sequence) == [1, 2])
        #expect(try log.append([entry(3)]) == 3)
        #expect(try replayed(log).map(\.sequence) == [1, 2, 3])
    }

    /// A crash between creating the next segment's file and preallocating it leaves an empty
    /// file named for the next sequence. Reopened, the log appends again (before the fix every
    /// append failed: the too-small segment made it create the same name, EEXIST).
    @Test func segmentCreatedButNotPreallocatedAtACrashIsRemovedAtReopen() throws {
        let temp = LogTempDir()
        do {
            let log = try AppendLog(path: temp.log, configuration: small)
            try log.append([entry(1), entry(2), entry(3), entry(4)]) // fills segment 1 exactly
        }
        #expect(FileManager.default.createFile(atPath: temp.log + "/0000000000000005.pmulog", contents: Data()))
        let log = try AppendLog(path: temp.log, configuration: small)
        #expect(log.status.nextSequence == 5)
        #expect(try log.append([entry(5)]) == 5)
        #expect(try replayed(log).map(\.sequence) == [1, 2, 3, 4, 5])
        #expect((try FileManager.default.attributesOfItem(atPath: temp.log + "/0000000000000005.pmulog")[.size] as? Int) == small.segmentBytes)
        // And the same with the unprepared file as the only segment (the log trimmed empty before).
        try log.trim(through: 5)
        #expect(FileManager.default.createFile(atPath: temp.log + "/0000000000000006.pmulog", contents: Data()))
        let again = try AppendLog(path: temp.log, configuration: small)
        #expect(try again.append([entry(6)]) == 6)
        #expect(try replayed(again).map(\.sequence) == [6])
    }

    @Test func damageFollowedByValidRecordsRefusesToOpen() throws {
        let temp = LogTempDir()
        do {
            let log = try AppendLog(path: temp.log, configuration: small)
            try log.append([entry(1), entry(2), entry(3)])
        }
        let file = temp.log + "/0000000000000001.pmulog"
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: file)))
        bytes[1056 + 100] ^= 0x01
        try Data(bytes).write(to: URL(fileURLWithPath: file))
        do {
            _ = try AppendLog(path: temp.log, configuration: small)
            Issue.record("opened a damaged log")
        } catch {
            #expect(error.code == .damaged)
            #expect(error.message.contains("damaged at byte 1056"))
            #expect(error.message.contains("valid records follow"))
        }
    }

    @Test func missingMiddleSegmentRefusesToOpen() throws {
        let temp = LogTempDir()
        do {
            let log = try AppendLog(path: temp.log, configuration: small)
            try log.append((1...10).map { entry($0) })
        }
        try FileManager.default.removeItem(atPath: temp.log + "/0000000000000005.pmulog")
        #expect(throws: PMUError.self) { try AppendLog(path: temp.log, configuration: small) }
    }

    @Test func sealedLogRefusesAppendsButReplaysAndTrims() throws {
        let temp = LogTempDir()
        let log = try AppendLog(path: temp.log, configuration: small)
        try log.append([entry(1), entry(2)])
        log.seal(PMUError(.fenced, "taken over"))
        #expect(throws: PMUError(.fenced, "taken over")) { try log.append([entry(3)]) }
        #expect(try replayed(log).map(\.origin) == [1, 2])
        try log.trim(through: 2)
        #expect(log.status.segments == 0)
    }

    @Test func configurationIsChecked() {
        #expect(throws: PMUError.self) { try AppendLog(path: "/tmp/unused", configuration: AppendLogConfiguration(segmentBytes: 100, maxPayloadBytes: 1000)) }
        #expect(throws: PMUError.self) { try AppendLog(path: "/tmp/unused", configuration: AppendLogConfiguration(segmentBytes: 4096, maxBytes: 100, maxPayloadBytes: 100)) }
        let temp = LogTempDir()
        let log = try! AppendLog(path: temp.log, configuration: small)
        #expect(throws: PMUError.self) { try log.append([entry(1, bytes: 1001)]) }
    }

    /// Group commit: records appended without a sync are made durable by one fdatasync that
    /// covers all of them; asking again for any of them costs nothing; a later record needs a
    /// new one. From many threads, every record ends up durable and in the log, in fewer syncs.
    @Test func groupCommitSyncsEveryPendingRecordOnce() throws {
        let temp = LogTempDir()
        let log = try AppendLog(path: temp.log, configuration: AppendLogConfiguration(segmentBytes: 1 << 20, maxBytes: 8 << 20, sync: .dataSync, maxPayloadBytes: 1000))
        var last: UInt64 = 0
        for origin in 1...10 { last = try log.appendUnsynced([entry(UInt64(origin))]) }
        #expect(log.status.dataSyncs == 0)
        try log.sync(through: last)
        #expect(log.status.dataSyncs == 1)
        try log.sync(through: 3)
        try log.sync(through: last)
        #expect(log.status.dataSyncs == 1, "a record already covered was synced again")
        let eleventh = try log.appendUnsynced([entry(11)])
        try log.sync(through: eleventh)
        #expect(log.status.dataSyncs == 2)

        // 8 threads x 25 records, each appended then synced before "acknowledging" it.
        let failures = Failures()
        DispatchQueue.concurrentPerform(iterations: 8) { thread in
            for step in 0..<25 {
                do {
                    let sequence = try log.appendUnsynced([entry(UInt64(100 + thread * 25 + step))])
                    try log.sync(through: sequence)
                } catch {
                    failures.add("\(error)")
                }
            }
        }
        #expect(failures.all.isEmpty)
        let status = log.status
        #expect(status.records == 211)
        #expect(status.dataSyncs <= 2 + 200)
        #expect(Set(try replayed(log).map(\.origin)) == Set((1...11).map(UInt64.init) + (100..<300).map(UInt64.init)))

        // The page-cache policy never syncs.
        let cached = try AppendLog(path: temp.path + "/cached", configuration: AppendLogConfiguration(segmentBytes: 1 << 20, maxBytes: 8 << 20, sync: .pageCache, maxPayloadBytes: 1000))
        try cached.sync(through: try cached.appendUnsynced([entry(1)]))
        #expect(cached.status.dataSyncs == 0)
    }
}

final class Failures: @unchecked Sendable {
    private let lock = NSLock()
    private var list: [String] = []
    func add(_ failure: String) { lock.withLock { list.append(failure) } }
    var all: [String] { lock.withLock { list } }
}
