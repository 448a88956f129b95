import PMUTesting
import Testing

@testable import PMUCore

@Suite struct ProtectionTableTests {
    var generator = SeededGenerator(seed: 1)

    @Test mutating func grantsCheckKeyConnectionRightsAndBounds() throws {
        var table = ProtectionTable<String>(maxHandlesPerConnection: 8)
        let rw = try table.grant(connection: 1, regionId: 10, sizeBytes: 4096, rights: .readWrite, epoch: 1, region: "r10", using: &generator)
        let ro = try table.grant(connection: 1, regionId: 10, sizeBytes: 4096, rights: .read, epoch: 0, region: "r10", using: &generator)
        #expect(rw != ro)

        let translation = try table.check(key: rw, connection: 1, need: .write, offset: 4000, length: 96)
        #expect(translation.region == "r10" && translation.offset == 4000 && translation.length == 96)
        _ = try table.check(key: ro, connection: 1, need: .read, offset: 0, length: 4096)
        _ = try table.check(key: rw, connection: 1, need: .read, offset: 4096, length: 0)

        let denied = #expect(throws: PMUError.self) { _ = try table.check(key: ro, connection: 1, need: .write, offset: 0, length: 1) }
        #expect(denied?.code == .permissionDenied)
    }

    @Test mutating func errorsCarryTheRightCodes() throws {
        var table = ProtectionTable<Int>(maxHandlesPerConnection: 2)
        let key = try table.grant(connection: 1, regionId: 1, sizeBytes: 100, rights: .read, epoch: 0, region: 1, using: &generator)
        func code(_ body: () throws -> Void) -> PMUErrorCode? {
            do { try body(); return nil } catch { return (error as? PMUError)?.code }
        }
        #expect(code { _ = try table.check(key: key, connection: 2, need: .read, offset: 0, length: 1) } == .invalidKey)
        #expect(code { _ = try table.check(key: AccessKey(high: 1, low: 2), connection: 1, need: .read, offset: 0, length: 1) } == .invalidKey)
        #expect(code { _ = try table.check(key: key, connection: 1, need: .write, offset: 0, length: 1) } == .permissionDenied)
        #expect(code { _ = try table.check(key: key, connection: 1, need: .read, offset: 100, length: 1) } == .outOfBounds)
        #expect(code { _ = try table.check(key: key, connection: 1, need: .read, offset: 101, length: 0) } == .outOfBounds)
        // offset + length wraps around 2^64: must be out of bounds, not a tiny range.
        #expect(code { _ = try table.check(key: key, connection: 1, need: .read, offset: .max, length: 2) } == .outOfBounds)
        #expect(code { _ = try table.check(key: key, connection: 1, need: .read, offset: 1, length: .max) } == .outOfBounds)
        _ = try table.grant(connection: 1, regionId: 2, sizeBytes: 1, rights: .read, epoch: 0, region: 2, using: &generator)
        var localGenerator = generator
        #expect(code { _ = try table.grant(connection: 1, regionId: 3, sizeBytes: 1, rights: .read, epoch: 0, region: 3, using: &localGenerator) } == .tooManyHandles)
    }

    @Test mutating func revocationByKeyConnectionAndRegion() throws {
        var table = ProtectionTable<Int>(maxHandlesPerConnection: 16)
        let a = try table.grant(connection: 1, regionId: 1, sizeBytes: 10, rights: .read, epoch: 0, region: 1, using: &generator)
        let b = try table.grant(connection: 2, regionId: 1, sizeBytes: 10, rights: .read, epoch: 0, region: 1, using: &generator)
        let c = try table.grant(connection: 2, regionId: 2, sizeBytes: 10, rights: .read, epoch: 0, region: 2, using: &generator)
        #expect(throws: PMUError.self) { try table.revoke(key: a, connection: 2) } // not yours
        try table.revoke(key: a, connection: 1)
        #expect(table.entry(for: a, connection: 1) == nil)
        #expect(table.revokeAll(regionId: 1).count == 1)
        #expect(table.entry(for: b, connection: 2) == nil)
        #expect(table.entry(for: c, connection: 2) != nil)
        #expect(table.revokeAll(connection: 2).count == 1)
        #expect(table.count == 0)
    }

    @Test func accessPolicy() {
        #expect(AccessPolicy.may("owner", open: .readWrite, owner: "owner", readers: [], writers: [], isAdmin: false))
        #expect(AccessPolicy.may("root", open: .readWrite, owner: "owner", readers: [], writers: [], isAdmin: true))
        #expect(!AccessPolicy.may("b", open: .read, owner: "owner", readers: [], writers: [], isAdmin: false))
        #expect(AccessPolicy.may("b", open: .read, owner: "owner", readers: ["b"], writers: [], isAdmin: false))
        #expect(!AccessPolicy.may("b", open: .readWrite, owner: "owner", readers: ["b"], writers: [], isAdmin: false))
        #expect(AccessPolicy.may("b", open: .read, owner: "owner", readers: [], writers: ["b"], isAdmin: false))
        #expect(AccessPolicy.may("anyone", open: .read, owner: "owner", readers: ["*"], writers: [], isAdmin: false))
        #expect(!AccessPolicy.mayDelete("b", owner: "owner", isAdmin: false))
        #expect(AccessPolicy.mayDelete("b", owner: "owner", isAdmin: true))
    }
}
