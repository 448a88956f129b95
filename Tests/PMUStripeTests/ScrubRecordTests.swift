import NIOCore
import PMUCore
import Testing

@testable import PMUStripe

/// The scrub record's codec and the scrubber's rate bound, without I/O or clocks.
@Suite struct ScrubRecordTests {
    let record = ScrubRecord(
        setID: SetID(bytes: Array(0..<16)), startedNanoseconds: 1_000, finishedNanoseconds: 5_000, passes: 3, piecesChecked: 10,
        subsegmentsChecked: 320, bytesRead: 5_242_880, damaged: 2, repaired: 1, unrepaired: 1, newestSequence: 9)

    @Test func roundTripsAndRefusesEveryFlippedByte() {
        let encoded = record.encode()
        #expect(encoded.readableBytes == ScrubRecord.encodedBytes)
        #expect(ScrubRecord.decode(encoded) == record)
        for i in 0..<encoded.readableBytes {
            var bad = encoded
            bad.setInteger(encoded.getInteger(at: i, as: UInt8.self)! ^ 0x01, at: i)
            #expect(ScrubRecord.decode(bad) == nil, "byte \(i) flipped was accepted")
        }
        #expect(ScrubRecord.decode(encoded.getSlice(at: 0, length: encoded.readableBytes - 1)!) == nil)
        var longer = encoded
        longer.writeInteger(UInt8(0))
        #expect(ScrubRecord.decode(longer) == nil)
    }

    /// The figures a metrics exporter reads: one per counter, named once, with the record's values.
    @Test func figuresCarryTheRecordForMetrics() {
        let figures = Dictionary(uniqueKeysWithValues: record.figures.map { ($0.name, $0) })
        #expect(figures.count == record.figures.count && figures.count == 10)
        #expect(figures["pmu_cluster_scrub_last_finished_timestamp_seconds"]?.value == 5e-6)
        #expect(figures["pmu_cluster_scrub_last_duration_seconds"]?.value == 4e-6)
        #expect(figures["pmu_cluster_scrub_passes_total"]?.value == 3 && figures["pmu_cluster_scrub_passes_total"]?.kind == .counter)
        #expect(figures["pmu_cluster_scrub_last_repaired_subsegments"]?.value == 1)
        #expect(figures["pmu_cluster_scrub_last_unrepaired_subsegments"]?.value == 1)
        #expect(figures["pmu_cluster_scrub_last_damaged_subsegments"]?.value == 2)
        #expect(figures["pmu_cluster_scrub_last_read_bytes"]?.value == 5_242_880)
        #expect(record.figures.allSatisfy { $0.name.hasPrefix("pmu_cluster_scrub_") && !$0.help.isEmpty })
    }

    @Test func refusesImpossibleCountersEvenWithAGoodChecksum() {
        var lies = [record]
        lies[0].repaired = UInt64.max // repaired + unrepaired overflows
        lies.append(record)
        lies[1].damaged = 3 // not repaired + unrepaired
        lies.append(record)
        lies[2].finishedNanoseconds = 999 // before it started
        lies.append(record)
        lies[3].passes = 0
        lies.append(record)
        lies[4].subsegmentsChecked = 1 // fewer than damaged
        for lie in lies { #expect(ScrubRecord.decode(lie.encode()) == nil, "\(lie)") }
    }

    @Test func pacingHoldsTheAverageRateAndSaturates() throws {
        let pacing = try ScrubPacing(bytesPerSecond: 1 << 20)
        // 2 MiB may take 2 s: read in 0.5 s, wait 1.5 s; read in 3 s, no wait.
        #expect(pacing.delayNanoseconds(afterBytes: 2 << 20, elapsedNanoseconds: 500_000_000) == 1_500_000_000)
        #expect(pacing.delayNanoseconds(afterBytes: 2 << 20, elapsedNanoseconds: 3_000_000_000) == 0)
        #expect(pacing.delayNanoseconds(afterBytes: 512 << 10, elapsedNanoseconds: 0) == 500_000_000)
        #expect(pacing.delayNanoseconds(afterBytes: UInt64.max, elapsedNanoseconds: 0) == UInt64.max)
        #expect(throws: PMUError.self) { _ = try ScrubPacing(bytesPerSecond: 4095) }
    }
}
