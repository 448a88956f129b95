import NIOCore
import PMUCore
import PMUTesting
import Testing

@testable import PMUStripe

/// Payload -> pieces -> (servers lost, subsegments damaged) -> payload, without any I/O.
@Suite struct StripeTests {
    let servers = (0..<8).map { "pmu-\($0)" }

    func payload(_ count: Int, seed: UInt64) -> ByteBuffer {
        var random = SeededGenerator(seed: seed)
        return ByteBuffer(bytes: (0..<count).map { _ in UInt8.random(in: 0...255, using: &random) })
    }

    func stamp(_ n: Int) -> PieceBuilder.Stamp {
        PieceBuilder.Stamp(setID: SetID(bytes: Array(0..<16)), sequence: 7, previousComplete: 6, timestampNanoseconds: 99, servers: Array(servers.prefix(n)))
    }

    /// What a reader would collect from the pieces of the servers still there.
    func collect(_ pieces: [ByteBuffer], surviving: Set<Int>) -> (PieceHeader, [StripeAssembler.Key: ByteBuffer]) {
        var header: PieceHeader?
        var found: [StripeAssembler.Key: ByteBuffer] = [:]
        for server in surviving.sorted() {
            let piece = pieces[server]
            let decoded = PieceHeader.decode(piece)!
            header = header ?? decoded
            for (i, entry) in decoded.entries.enumerated() {
                let bytes = piece.getSlice(at: decoded.offset(ofEntry: i), length: decoded.geometry.subsegmentBytes)!
                if bytes.withUnsafeReadableBytes({ CRC32C.checksum($0) }) == entry.crc {
                    found[StripeAssembler.Key(group: entry.id.group, index: entry.id.index)] = bytes
                }
            }
        }
        return (header!, found)
    }

    func subsets(of n: Int, size: Int) -> [Set<Int>] {
        if size == 0 { return [[]] }
        if n < size { return [] }
        return subsets(of: n - 1, size: size) + subsets(of: n - 1, size: size - 1).map { $0.union([n - 1]) }
    }

    func check(_ redundancy: Redundancy, servers n: Int, length: Int, maxSubsegment: Int = 4096) throws {
        let data = payload(length, seed: UInt64(length))
        let geometry = try StripeGeometry.plan(payloadLength: UInt64(length), redundancy: redundancy, serverCount: n, maxSubsegmentBytes: maxSubsegment)
        let pieces = PieceBuilder.pieces(of: data, geometry: geometry, stamp: stamp(n))
        #expect(pieces.count == n)
        let tolerated = redundancy.guaranteedLosses
        for lost in 0...min(n - 1, tolerated + 1) {
            for gone in subsets(of: n, size: lost) {
                let (header, found) = collect(pieces, surviving: Set(0..<n).subtracting(gone))
                let unrecoverable = StripeAssembler.unrecoverableGroups(geometry, available: Set(found.keys))
                if lost <= tolerated {
                    #expect(unrecoverable.isEmpty)
                    let (result, rebuilt) = try StripeAssembler.assemble(header.geometry, payloadCRC: header.payloadCRC, subsegments: found)
                    #expect(result == data, "\(redundancy) n=\(n) lost \(gone.sorted())")
                    if lost == 0 { #expect(rebuilt == 0) }
                } else if geometry.groups > 0 && (redundancy.copies == 1 || unrecoverable.count > 0) {
                    // More losses than promised: either still lucky, or a clear error, never wrong bytes.
                    do {
                        let (result, _) = try StripeAssembler.assemble(header.geometry, payloadCRC: header.payloadCRC, subsegments: found)
                        #expect(result == data && unrecoverable.isEmpty)
                    } catch {
                        #expect(error.code == .unrecoverable && !unrecoverable.isEmpty)
                    }
                }
            }
        }
    }

    @Test func k4m1OnFiveServersSurvivesAnyOneLoss() throws {
        try check(Redundancy(k: 4, m: 1), servers: 5, length: 100_000)
        try check(Redundancy(k: 4, m: 1), servers: 5, length: 4 * 4096 * 3) // exact groups, no padding
        try check(Redundancy(k: 4, m: 1), servers: 7, length: 50_001) // more servers than a group spans
    }

    @Test func k4m2OnSixServersSurvivesAnyTwoLosses() throws {
        try check(Redundancy(k: 4, m: 2), servers: 6, length: 77_777)
    }

    @Test func mirrorsAndMirroredStripes() throws {
        try check(.mirror(3), servers: 3, length: 10_000)
        try check(Redundancy(k: 2, m: 1, copies: 2), servers: 6, length: 30_000)
    }

    @Test func smallAndEmptyPayloads() throws {
        try check(Redundancy(k: 4, m: 1), servers: 5, length: 1)
        try check(Redundancy(k: 4, m: 1), servers: 5, length: 0)
        let geometry = try StripeGeometry.plan(payloadLength: 100, redundancy: Redundancy(k: 4, m: 1), serverCount: 5, maxSubsegmentBytes: 1 << 20)
        #expect(geometry.subsegmentBytes == 64 && geometry.groups == 1) // not padded to 4 MiB
    }

    @Test func aDamagedSubsegmentIsRebuiltAndDamageBeyondParityIsRefused() throws {
        let data = payload(64 * 1024, seed: 9)
        let geometry = try StripeGeometry.plan(payloadLength: 65536, redundancy: Redundancy(k: 4, m: 1), serverCount: 5, maxSubsegmentBytes: 4096)
        var pieces = PieceBuilder.pieces(of: data, geometry: geometry, stamp: stamp(5))
        let header = PieceHeader.decode(pieces[2])!
        // Flip a byte inside server 2's first subsegment: its CRC no longer matches.
        let at = header.offset(ofEntry: 0) + 10
        pieces[2].setInteger(pieces[2].getInteger(at: at, as: UInt8.self)! ^ 0x40, at: at)
        let (_, found) = collect(pieces, surviving: Set(0..<5))
        #expect(found.count == geometry.groups * 5 - 1)
        let (result, rebuilt) = try StripeAssembler.assemble(geometry, payloadCRC: header.payloadCRC, subsegments: found)
        #expect(result == data && rebuilt <= 1)
        // The same damage with another server gone: that group is short of k.
        let (_, fewer) = collect(pieces, surviving: [0, 1, 2, 3])
        let error = #expect(throws: PMUError.self) { _ = try StripeAssembler.assemble(geometry, payloadCRC: header.payloadCRC, subsegments: fewer) }
        #expect(error?.code == .unrecoverable)
    }

    @Test func placementPutsAGroupOnDistinctServersAndRotatesParity() throws {
        let geometry = try StripeGeometry.plan(payloadLength: 1 << 20, redundancy: Redundancy(k: 4, m: 2, copies: 1), serverCount: 6, maxSubsegmentBytes: 4096)
        var parityServers: Set<Int> = []
        for group in 0..<geometry.groups {
            let servers = geometry.copies(inGroup: group).map(geometry.server(of:))
            #expect(Set(servers).count == servers.count)
            parityServers.formUnion(geometry.copies(inGroup: group).filter { $0.index >= 4 }.map(geometry.server(of:)))
        }
        #expect(parityServers.count == 6)
        let error = #expect(throws: PMUError.self) { _ = try StripeGeometry.plan(payloadLength: 1, redundancy: Redundancy(k: 4, m: 2), serverCount: 5, maxSubsegmentBytes: 4096) }
        #expect(error?.code == .invalidArgument)
    }

    @Test func survivabilityCountsWhatIsLeft() throws {
        let g41 = try StripeGeometry.plan(payloadLength: 1 << 16, redundancy: Redundancy(k: 4, m: 1), serverCount: 5, maxSubsegmentBytes: 4096)
        #expect(Survivability.additionalLossesSurvivable(g41) { _ in true } == 1)
        #expect(Survivability.additionalLossesSurvivable(g41) { g41.server(of: $0) != 3 } == 0)
        #expect(Survivability.additionalLossesSurvivable(g41) { ![1, 3].contains(g41.server(of: $0)) } == nil)
        let g42 = try StripeGeometry.plan(payloadLength: 1 << 16, redundancy: Redundancy(k: 4, m: 2), serverCount: 6, maxSubsegmentBytes: 4096)
        #expect(Survivability.additionalLossesSurvivable(g42) { _ in true } == 2)
        let mirror = try StripeGeometry.plan(payloadLength: 1 << 16, redundancy: .mirror(3), serverCount: 3, maxSubsegmentBytes: 4096)
        #expect(Survivability.additionalLossesSurvivable(mirror) { _ in true } == 2)
        #expect(Survivability.additionalLossesSurvivable(mirror) { mirror.server(of: $0) == 0 } == 0)
    }

    @Test func headersRoundTripAndRejectEveryCorruption() throws {
        let data = payload(20_000, seed: 4)
        let geometry = try StripeGeometry.plan(payloadLength: 20_000, redundancy: Redundancy(k: 4, m: 2), serverCount: 6, maxSubsegmentBytes: 1024)
        let piece = PieceBuilder.pieces(of: data, geometry: geometry, stamp: stamp(6))[1]
        let header = try #require(PieceHeader.decode(piece))
        #expect(header.sequence == 7 && header.previousComplete == 6 && header.serverName == "pmu-1" && header.geometry == geometry)
        #expect(header.entries.map(\.id) == geometry.subsegments(onServer: 1))
        #expect(piece.readableBytes == header.pieceLength)
        for byte in 0..<header.encodedLength {
            var flipped = piece
            flipped.setInteger(flipped.getInteger(at: byte, as: UInt8.self)! ^ 0x01, at: byte)
            #expect(PieceHeader.decode(flipped) == nil, "bit flip at \(byte) accepted")
        }
        for cut in [0, 10, header.encodedLength - 1] {
            #expect(PieceHeader.decode(piece.getSlice(at: 0, length: cut)!) == nil)
        }
        let descriptor = SetDescriptor(setID: .random(), redundancy: Redundancy(k: 4, m: 1), maxSubsegmentBytes: 1 << 20, servers: Array(servers.prefix(5)), committed: 12)
        #expect(SetDescriptor.decode(descriptor.encode()) == descriptor)
        var bad = descriptor.encode()
        bad.setInteger(UInt8(9), at: 20)
        #expect(SetDescriptor.decode(bad) == nil)
    }
}

/// Issue 10, defect 6: checksummed but impossible piece headers and set descriptors are refused.
@Suite struct CraftedStripeTests {
    let names = ["s0", "s1", "s2"]

    func header(_ edit: (inout PieceHeader) -> Void = { _ in }) throws -> PieceHeader {
        let geometry = try StripeGeometry.plan(payloadLength: 1000, redundancy: Redundancy(k: 2, m: 1), serverCount: 3, maxSubsegmentBytes: 128)
        var header = PieceHeader(
            setID: SetID(bytes: Array(0..<16)), sequence: 5, previousComplete: 4, timestampNanoseconds: 1, payloadCRC: 0,
            geometry: geometry, servers: names, serverIndex: 1,
            entries: geometry.subsegments(onServer: 1).map { PieceHeader.Entry(id: $0, crc: 0) })
        edit(&header)
        return header
    }

    @Test func theGenuineHeaderDecodes() throws {
        let genuine = try header()
        #expect(PieceHeader.decode(genuine.encode()) == genuine)
    }

    @Test func impossibleHeadersAreRefused() throws {
        let crafted: [(String, PieceHeader)] = [
            ("sequence 2^64-1", try header { $0.sequence = .max }),
            ("sequence 0", try header { $0.sequence = 0; $0.previousComplete = 0 }),
            ("previous not older", try header { $0.previousComplete = 5 }),
            ("2^31-1 groups", try header { $0.geometry.groups = Int(Int32.max) }),
            ("groups not matching the payload", try header { $0.geometry.groups += 1 }),
            ("payload beyond its groups", try header { $0.geometry.payloadLength = 1 << 40 }),
            ("subsegment unaligned", try header { $0.geometry.subsegmentBytes = 100 }),
            ("an entry missing", try header { $0.entries.removeLast() }),
            ("an entry duplicated", try header { $0.entries.append($0.entries[0]) }),
            ("duplicate servers", try header { $0.servers = ["s0", "s0", "s2"] }),
        ]
        for (name, header) in crafted {
            #expect(PieceHeader.decode(header.encode()) == nil, "\(name)")
        }
    }

    @Test func impossibleDescriptorsAreRefused() {
        let id = SetID(bytes: Array(0..<16))
        let genuine = SetDescriptor(setID: id, redundancy: Redundancy(k: 2, m: 1), maxSubsegmentBytes: 4096, servers: names, committed: 9)
        #expect(SetDescriptor.decode(genuine.encode()) == genuine)
        for (name, descriptor) in [
            ("committed 2^64-1", SetDescriptor(setID: id, redundancy: Redundancy(k: 2, m: 1), maxSubsegmentBytes: 4096, servers: names, committed: .max)),
            ("subsegment 0", SetDescriptor(setID: id, redundancy: Redundancy(k: 2, m: 1), maxSubsegmentBytes: 0, servers: names, committed: 1)),
            ("subsegment 2^32-1", SetDescriptor(setID: id, redundancy: Redundancy(k: 2, m: 1), maxSubsegmentBytes: Int(UInt32.max), servers: names, committed: 1)),
            ("duplicate servers", SetDescriptor(setID: id, redundancy: Redundancy(k: 2, m: 1), maxSubsegmentBytes: 4096, servers: ["a", "a", "b"], committed: 1)),
        ] {
            #expect(SetDescriptor.decode(descriptor.encode()) == nil, "\(name)")
        }
    }
}
