import Foundation
import PMUCore

/// The pair's authority in etcd (docs/ARCHITECTURE.md "Failover"):
///
///     PREFIX/members/ID   {"id","role","heartbeat","service"}, bound to ID's lease
///     PREFIX/owner        {"owner","generation"}, no lease; changed only by compare-and-set
///
/// The owner key's mod_revision after a successful claim is the new owner's epoch: every claim
/// compares the revision it read, so of two servers racing only one wins, and a server that
/// read an older revision can never overwrite a newer owner.
public final class Authority: Sendable {
    public let etcd: EtcdClient
    public let prefix: String
    public let memberId: String

    public init(etcd: EtcdClient, prefix: String, memberId: String) {
        self.etcd = etcd
        self.prefix = prefix.hasSuffix("/") ? String(prefix.dropLast()) : prefix
        self.memberId = memberId
    }

    var ownerKey: String { prefix + "/owner" }
    func memberKey(_ id: String) -> String { prefix + "/members/" + id }

    public struct Member: Sendable, Codable, Equatable {
        public var id: String
        public var role: String
        public var heartbeat: String
        public var service: String?

        public init(id: String, role: String, heartbeat: String, service: String?) {
            self.id = id
            self.role = role
            self.heartbeat = heartbeat
            self.service = service
        }
    }

    /// Grants a lease and writes this server's member key under it; returns the lease.
    public func register(_ member: Member, ttlSeconds: Int) async throws(PMUError) -> Int64 {
        let lease = try await etcd.grantLease(ttlSeconds: ttlSeconds)
        try await etcd.put(memberKey(memberId), value: Self.encode(member), lease: lease)
        return lease
    }

    /// Rewrites the member key (a role change) under the same lease.
    public func update(_ member: Member, lease: Int64) async throws(PMUError) {
        try await etcd.put(memberKey(memberId), value: Self.encode(member), lease: lease)
    }

    public func memberPresent(_ id: String) async throws(PMUError) -> Bool {
        try await etcd.get(memberKey(id)) != nil
    }

    public func members() async throws(PMUError) -> [Member] {
        // Few members (a pair): read the two known ids' keys would need them; a prefix range is one call.
        let answer = try await etcd.call("/v3/kv/range", [
            "key": EtcdClient.b64(prefix + "/members/"), "range_end": EtcdClient.b64(prefix + "/members0"),
        ])
        let kvs = answer["kvs"] as? [[String: Any]] ?? []
        return kvs.prefix(64).compactMap { kv in
            (kv["value"] as? String).flatMap { Data(base64Encoded: $0) }.flatMap { try? JSONDecoder().decode(Member.self, from: $0) }
        }
    }

    public func owner() async throws(PMUError) -> OwnerView {
        guard let kv = try await etcd.get(ownerKey) else { return OwnerView(record: nil, modRevision: 0) }
        guard let record = try? JSONDecoder().decode(OwnerRecord.self, from: Data(kv.value)) else {
            throw PMUError(.damaged, "etcd key \(ownerKey) holds no owner record; fix or delete it by hand (etcdctl del \(ownerKey))")
        }
        return OwnerView(record: record, modRevision: kv.modRevision)
    }

    /// Claims the portion for this server if the owner key is still at `expectedRevision`.
    /// Returns the new revision (the epoch), nil if someone else changed it first.
    public func claim(previous: OwnerRecord?, expectedRevision: Int64) async throws(PMUError) -> Int64? {
        let record = OwnerRecord(owner: memberId, generation: (previous?.generation ?? 0) + 1)
        return try await etcd.compareAndSet(ownerKey, expectedRevision: expectedRevision, value: Self.encode(record))
    }

    static func encode<T: Encodable>(_ value: T) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return Array((try? encoder.encode(value)) ?? Data("{}".utf8))
    }
}
