import PMUTesting
import Testing

@testable import PMUCore
@testable import PMULog

func sampleRecord(_ sequence: UInt64, payloadBytes: Int = 37, origin: UInt64? = nil) -> LogRecord {
    LogRecord(
        sequence: sequence, origin: origin ?? sequence * 10, regionId: 0xAB00 + sequence, epoch: 3, offset: sequence * 4096,
        payload: (0..<payloadBytes).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(sequence)) })
}

@Suite struct LogRecordFormatTests {
    @Test func roundTrip() throws {
        for size in [0, 1, 55, 56, 4096, 70_000] {
            let record = sampleRecord(9, payloadBytes: size)
            let bytes = LogRecordFormat.encode(record)
            #expect(bytes.count == LogRecordFormat.headerBytes + size)
            #expect(try LogRecordFormat.decode(bytes) == .record(record, bytes: bytes.count))
        }
        #expect(try LogRecordFormat.decode([UInt8]()) == .end)
        #expect(try LogRecordFormat.decode([UInt8](repeating: 0, count: 100)) == .end)
    }

    /// Every prefix of a record is torn (an error naming it), never a trap or a short record.
    @Test func everyTruncationPointIsTorn() throws {
        let bytes = LogRecordFormat.encode(sampleRecord(1, payloadBytes: 300))
        for cut in 1..<bytes.count {
            #expect(throws: PMUError.self) { try LogRecordFormat.decode(Array(bytes[0..<cut])) }
            let scan = LogRecordFormat.scan(Array(bytes[0..<cut]))
            #expect(scan.records.isEmpty && scan.validBytes == 0)
            guard case .torn = scan.stop else { Issue.record("cut at \(cut): \(scan.stop)"); continue }
        }
    }

    /// Flipping any single bit of header or payload is caught (the checksum covers both).
    @Test func everyBitFlipIsCaught() {
        let bytes = LogRecordFormat.encode(sampleRecord(5, payloadBytes: 64))
        for index in bytes.indices {
            for bit in 0..<8 {
                var damaged = bytes
                damaged[index] ^= UInt8(1 << bit)
                let decoded = try? LogRecordFormat.decode(damaged)
                if case .record = decoded { Issue.record("flip of bit \(bit) at byte \(index) not caught") }
            }
        }
    }

    @Test func hostileFieldsGetClearErrors() {
        var bytes = LogRecordFormat.encode(sampleRecord(2, payloadBytes: 8))
        // Payload length far beyond the cap: refused before anything is allocated.
        bytes.replaceSubrange(48..<52, with: [0xFF, 0xFF, 0xFF, 0xFF])
        #expect(throws: PMUError(.damaged, "log record claims a payload of 4294967295 bytes; the limit is \(Limits.maxIOBytes)")) {
            try LogRecordFormat.decode(bytes)
        }
        var overflow = LogRecordFormat.encode(sampleRecord(2, payloadBytes: 8))
        overflow.replaceSubrange(40..<48, with: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
        #expect(throws: PMUError(.damaged, "log record's offset 18446744073709551615 plus length 8 overflows")) {
            try LogRecordFormat.decode(overflow)
        }
        var version = LogRecordFormat.encode(sampleRecord(2))
        version[4] = 9
        #expect(throws: PMUError(.damaged, "log record has version 9; this build reads versions 1 and 2")) { try LogRecordFormat.decode(version) }
        #expect(throws: PMUError.self) { try LogRecordFormat.decode([1, 2, 3]) }
    }

    /// Seeded garbage, alone and after valid records: never a trap, never a bogus record.
    @Test func seededGarbage() {
        let seed: UInt64 = 0x5EED_1065
        var generator = SeededGenerator(seed: seed)
        let valid = (1...3).flatMap { LogRecordFormat.encode(sampleRecord(UInt64($0))) }
        for round in 0..<2000 {
            let length = Int.random(in: 1...300, using: &generator)
            var garbage = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            if round % 3 == 0, garbage.count >= 4 { garbage.replaceSubrange(0..<4, with: [0x50, 0x4D, 0x55, 0x4C]) } // the magic
            if case .record? = try? LogRecordFormat.decode(garbage) { Issue.record("seed \(seed) round \(round): garbage decoded as a record") }
            let scan = LogRecordFormat.scan(valid + garbage, firstSequence: 1)
            #expect(scan.records.count == 3, "seed \(seed) round \(round)")
            #expect(scan.validBytes == valid.count)
            #expect(scan.stop != .clean || garbage.allSatisfy { $0 == 0 })
        }
    }

    @Test func scanStopsAtTornLastRecordAndReportsWhere() {
        let first = LogRecordFormat.encode(sampleRecord(1))
        let second = LogRecordFormat.encode(sampleRecord(2))
        let torn = Array(LogRecordFormat.encode(sampleRecord(3, payloadBytes: 100)).prefix(80))
        let scan = LogRecordFormat.scan(first + second + torn + [UInt8](repeating: 0, count: 500), firstSequence: 1)
        #expect(scan.records == [sampleRecord(1), sampleRecord(2)])
        #expect(scan.validBytes == first.count + second.count)
        guard case .torn(let offset, _) = scan.stop else { Issue.record("\(scan.stop)"); return }
        #expect(offset == first.count + second.count)
    }

    @Test func damageBeforeAValidRecordIsCorruptNotTorn() {
        var middle = LogRecordFormat.encode(sampleRecord(2))
        middle[60] ^= 0xFF
        let bytes = LogRecordFormat.encode(sampleRecord(1)) + middle + LogRecordFormat.encode(sampleRecord(3))
        let scan = LogRecordFormat.scan(bytes, firstSequence: 1)
        #expect(scan.records.count == 1)
        guard case .corrupt = scan.stop else { Issue.record("\(scan.stop)"); return }
        // A record out of sequence is corruption too.
        let skipped = LogRecordFormat.scan(LogRecordFormat.encode(sampleRecord(1)) + LogRecordFormat.encode(sampleRecord(3)), firstSequence: 1)
        #expect(skipped.stop == .corrupt(atOffset: LogRecordFormat.headerBytes + 37, reason: "record has sequence 3, expected 2"))
    }
}
