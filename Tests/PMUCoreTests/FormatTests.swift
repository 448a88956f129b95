import Testing

@testable import PMUCore

@Suite struct NameAndSizeTests {
    @Test(arguments: ["", String(repeating: "x", count: 256), "a/b", "..", "a..b", "nul\u{0}", "tab\t", "/abs", "back\\slash", " lead", "trail "])
    func badRegionNamesAreRefused(_ name: String) {
        let error = #expect(throws: PMUError.self) { try NameRules.validateRegionName(name) }
        #expect(error?.code == .invalidName)
    }

    @Test(arguments: ["a", "ckpt.0001", "job-42_state", "名前", String(repeating: "x", count: 255), "a.b"])
    func goodRegionNames(_ name: String) throws {
        try NameRules.validateRegionName(name)
    }

    @Test func clientIds() throws {
        try NameRules.validateClientId("primary-1@host")
        #expect(throws: PMUError.self) { try NameRules.validateClientId("a:b") }
        #expect(throws: PMUError.self) { try NameRules.validateClientId("") }
        #expect(throws: PMUError.self) { try NameRules.validateClientId(String(repeating: "a", count: 65)) }
    }

    @Test func sizes() throws {
        #expect(try ByteSize.parse("4096") == 4096)
        #expect(try ByteSize.parse("4KiB") == 4096)
        #expect(try ByteSize.parse("64mib") == 64 << 20)
        #expect(try ByteSize.parse("1GiB") == 1 << 30)
        #expect(try ByteSize.parse("2TiB") == 2 << 40)
        #expect(try ByteSize.parse("1GB") == 1_000_000_000)
        #expect(try ByteSize.parse(" 7 B ") == 7)
        for bad in ["", "x", "1XB", "-1", "99999999999999999999", "16777216TiB"] {
            let error = #expect(throws: PMUError.self, "\(bad)") { _ = try ByteSize.parse(bad) }
            #expect(error?.code == .invalidSize)
        }
        #expect(ByteSize.format(1 << 30) == "1GiB")
        #expect(ByteSize.format(1000) == "1000B")
    }
}

@Suite struct ChecksumAndAuthTests {
    @Test func crc32cKnownAnswers() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum([UInt8]()) == 0)
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        // Chained computation equals one pass.
        let data = Array("The quick brown fox jumps over the lazy dog".utf8)
        let whole = CRC32C.checksum(data)
        let chained = CRC32C.checksum(data[10...], continuing: CRC32C.checksum(data[..<10]))
        #expect(whole == chained)
        #expect(whole == 0x2262_0404)
    }

    @Test func proofsBindSecretNoncesAndDirection() {
        let secret = Array("0123456789abcdef0123".utf8)
        let c = Array(repeating: UInt8(1), count: 32), s = Array(repeating: UInt8(2), count: 32)
        let proof = Authentication.clientProof(secret: secret, clientId: "a", clientNonce: c, serverNonce: s)
        #expect(proof.count == Authentication.proofBytes)
        #expect(proof == Authentication.clientProof(secret: secret, clientId: "a", clientNonce: c, serverNonce: s))
        #expect(proof != Authentication.serverProof(secret: secret, clientId: "a", clientNonce: c, serverNonce: s))
        #expect(proof != Authentication.clientProof(secret: Array(secret.dropLast()) + [0x21], clientId: "a", clientNonce: c, serverNonce: s))
        #expect(proof != Authentication.clientProof(secret: secret, clientId: "b", clientNonce: c, serverNonce: s))
        #expect(proof != Authentication.clientProof(secret: secret, clientId: "a", clientNonce: s, serverNonce: c))
        #expect(Authentication.proofsMatch(proof, proof))
        #expect(!Authentication.proofsMatch(proof, Array(proof.dropLast()) + [proof.last! ^ 1]))
        #expect(Authentication.randomNonce() != Authentication.randomNonce())
    }

    @Test func secretsFile() throws {
        let table = try SecretsTable.parse("# comment\n\nadmin:0123456789abcdef\r\nprimary:a-long-secret:with-colon\n", source: "s")
        #expect(table.clientIds == ["admin", "primary"])
        #expect(table.secret(for: "primary") == Array("a-long-secret:with-colon".utf8))
        for bad in ["nocolon", "a:short", "bad id:0123456789abcdef", "a:0123456789abcdef\na:0123456789abcdef"] {
            let error = #expect(throws: PMUError.self, "\(bad)") { _ = try SecretsTable.parse(bad, source: "s") }
            #expect(error?.message.hasPrefix("s:") == true)
        }
        #expect(try SecretsTable.parseClientSecret("  abc \n", source: "f") == Array("abc".utf8))
        #expect(throws: PMUError.self) { _ = try SecretsTable.parseClientSecret("\n", source: "f") }
    }
}

@Suite struct CatalogFormatTests {
    static let records: [CatalogEntry] = [
        .put(RegionRecord(id: 1, name: "a", sizeBytes: 4096, kind: .raw, createdAtMilliseconds: 1, owner: "admin", readers: [], writers: [])),
        .put(RegionRecord(id: 2, name: "b", sizeBytes: 8192, kind: .checkpointAppend, createdAtMilliseconds: 2, owner: "p", readers: ["*"], writers: ["p"])),
        .delete(id: 1),
        .put(RegionRecord(id: 2, name: "b", sizeBytes: 8192, kind: .checkpointAppend, createdAtMilliseconds: 2, generation: 2, writerEpoch: 5, owner: "p", readers: ["*"], writers: ["p"])),
        .put(RegionRecord(id: 3, name: "a", sizeBytes: 1, kind: .raw, createdAtMilliseconds: 3, owner: "admin", readers: [], writers: [])),
    ]

    static func log(_ entries: [CatalogEntry]) -> ([UInt8], [Int]) {
        var bytes: [UInt8] = []
        var boundaries = [0]
        for (index, entry) in entries.enumerated() {
            bytes += CatalogFormat.encode(entry, sequence: UInt64(index + 1))
            boundaries.append(bytes.count)
        }
        return (bytes, boundaries)
    }

    @Test func replayGivesTheLiveRegions() {
        let (bytes, _) = Self.log(Self.records)
        let scan = CatalogFormat.scan(bytes)
        #expect(scan.tail == .clean)
        let state = CatalogState(replaying: scan.entries)
        #expect(state.regions.keys.sorted() == [2, 3])
        #expect(state.region(named: "a")?.id == 3)
        #expect(state.region(named: "b")?.writerEpoch == 5)
        #expect(state.nextId == 4)
    }

    /// A crash can cut the log anywhere: every truncation recovers exactly the records wholly
    /// before the cut, and reports the rest as a torn tail, never as corruption.
    @Test func truncationAtEveryByteRecoversAPrefix() {
        let (bytes, boundaries) = Self.log(Self.records)
        for cut in 0...bytes.count {
            let scan = CatalogFormat.scan(Array(bytes[..<cut]))
            let whole = boundaries.lastIndex { $0 <= cut }!
            #expect(scan.entries.count == whole, "cut \(cut)")
            #expect(scan.validBytes == boundaries[whole])
            #expect(scan.tail == (cut == boundaries[whole] ? .clean : .torn(bytes: cut - boundaries[whole])), "cut \(cut)")
            let expected = CatalogState(replaying: Self.records.prefix(whole).enumerated().map { (UInt64($0.offset + 1), $0.element) })
            #expect(CatalogState(replaying: scan.entries) == expected)
        }
    }

    /// A flipped bit inside an earlier record, with good records after it, is corruption: the store
    /// must refuse to start rather than silently drop the later records.
    @Test func damageBeforeValidRecordsIsCorruption() {
        let (bytes, boundaries) = Self.log(Self.records)
        for position in boundaries[1]..<boundaries[2] {
            var damaged = bytes
            damaged[position] ^= 0x40
            let scan = CatalogFormat.scan(damaged)
            guard case .corrupt(let offset, _) = scan.tail else {
                Issue.record("flip at \(position) not detected as corruption: \(scan.tail)")
                continue
            }
            #expect(offset == boundaries[1])
            #expect(scan.entries.count == 1)
        }
    }

    @Test func damagedLastRecordIsATornTail() {
        var (bytes, boundaries) = Self.log(Self.records)
        bytes[boundaries[4] + 20] ^= 1
        let scan = CatalogFormat.scan(bytes)
        #expect(scan.tail == .torn(bytes: bytes.count - boundaries[4]))
        #expect(scan.entries.count == 4)
    }

    @Test func snapshotRebuildsTheSameState() {
        let (bytes, _) = Self.log(Self.records)
        let state = CatalogState(replaying: CatalogFormat.scan(bytes).entries)
        let snapshot = state.snapshotEntries()
        let rebuilt = CatalogState(replaying: snapshot.enumerated().map { (UInt64($0.offset + 1), $0.element) })
        #expect(rebuilt.regions == state.regions)
        #expect(rebuilt.nextId == state.nextId)
    }
}

/// Issue 10, defect 7: the rules hold on Unicode scalars, whatever grapheme clusters they form.
@Suite struct NameScalarTests {
    @Test(arguments: [
        ("a/\u{301}b", "U+002F"), ("a\\\u{301}b", "U+005C"), (".\u{301}./etc", "U+002F"), ("..\u{301}", "'..'"),
        (" \u{301}lead", "starts or ends with a space"), ("trail \u{301}", "starts or ends with a space"),
        ("evil\u{202E}txt.exe", "U+202E"), ("line\u{2028}break", "U+2028"), ("para\u{2029}", "U+2029"),
        ("zero\u{200B}width", "U+200B"), ("zw\u{200C}nj", "U+200C"), ("zw\u{200D}j", "U+200D"), ("\u{FEFF}bom", "U+FEFF"),
        ("soft\u{00AD}hyphen", "U+00AD"), ("nb\u{00A0}sp", "U+00A0"), ("ideo\u{3000}space", "U+3000"), ("thin\u{2009}", "U+2009"),
        ("del\u{7F}", "U+007F"), ("c1\u{85}", "U+0085"), ("esc\u{1B}[31m", "U+001B"),
    ] as [(String, String?)])
    func refusedOnScalars(_ name: String, _ expected: String?) throws {
        let error = #expect(throws: PMUError.self) { try NameRules.validateRegionName(name) }
        #expect(error?.code == .invalidName)
        if let expected { #expect(error?.message.contains(expected) == true, "\(error?.message ?? "")") }
    }

    @Test func theMessageShowsTheHiddenScalar() {
        let error = #expect(throws: PMUError.self) { try NameRules.validateRegionName("a/\u{301}b") }
        #expect(error?.message == "region name \"a/\\u{0301}b\" contains U+002F at scalar 1, a path separator ('/' or '\\')", "\(error?.message ?? "")")
    }

    @Test(arguments: ["café", "cafe\u{301}", "a.\u{301}.b", "ñ-ø_Å.1", "名前 空白", "a b", "Ω≈ç√", "emoji-🙂", "a.b.c"])
    func ordinaryUnicodeNamesStillPass(_ name: String) throws {
        try NameRules.validateRegionName(name)
    }
}

/// Issue 10, defect 6: a checksummed catalog record with values no store could have written is
/// refused by name (the store then reports corruption) instead of overflowing a `+ 1` later.
@Suite struct CraftedCatalogTests {
    func record(id: UInt64 = 3, size: UInt64 = 4096, generation: UInt64 = 1, epoch: UInt64 = 1) -> RegionRecord {
        RegionRecord(id: id, name: "r", sizeBytes: size, kind: .raw, createdAtMilliseconds: 1, generation: generation, writerEpoch: epoch, owner: "admin", readers: [], writers: [])
    }

    @Test func implausibleCountersAreNamed() {
        let cases: [([UInt8], String)] = [
            (CatalogFormat.encode(.put(record(id: .max)), sequence: 1), "implausible id"),
            (CatalogFormat.encode(.put(record(id: 0)), sequence: 1), "region id 0"),
            (CatalogFormat.encode(.put(record(generation: .max)), sequence: 1), "implausible generation"),
            (CatalogFormat.encode(.put(record(epoch: .max)), sequence: 1), "implausible writer_epoch"),
            (CatalogFormat.encode(.put(record()), sequence: .max), "implausible sequence"),
            (CatalogFormat.encode(.delete(id: .max), sequence: 1), "implausible id"),
            (CatalogFormat.encode(.nextId(.max), sequence: 1), "implausible next_id"),
        ]
        for (bytes, reason) in cases {
            // Followed by a valid record, the refusal is reported as corruption with its reason.
            let scan = CatalogFormat.scan(bytes + CatalogFormat.encode(.put(record()), sequence: 2))
            #expect(scan.entries.isEmpty)
            guard case .corrupt(_, let why) = scan.tail else {
                Issue.record("\(reason): \(scan.tail)")
                continue
            }
            #expect(why.contains(reason), "\(why)")
        }
        // The largest plausible values replay without overflow.
        let edge = CatalogFormat.scan(CatalogFormat.encode(.put(record(id: CatalogFormat.maxCounter, generation: CatalogFormat.maxCounter, epoch: CatalogFormat.maxCounter)), sequence: CatalogFormat.maxCounter))
        #expect(edge.entries.count == 1)
        #expect(CatalogState(replaying: edge.entries).nextId == CatalogFormat.maxCounter + 1)
    }
}
