import PMUCore

/// An open region on one connection: the access key the server issued and the region's shape.
/// Valid only on the client that opened it, until closed or until the region is deleted.
public struct RegionHandle: Sendable, Hashable, CustomStringConvertible {
    public let name: String
    public let grant: RegionGrant
    /// Address and rkey for one-sided access (verbs connections only; nil over TCP).
    public let remote: RemoteAccess?

    public init(name: String, grant: RegionGrant, remote: RemoteAccess? = nil) {
        self.name = name
        self.grant = grant
        self.remote = remote
    }

    public var sizeBytes: UInt64 { grant.sizeBytes }
    public var rights: Rights { grant.rights }
    public var kind: RegionKind { grant.kind }
    /// The writer epoch this handle writes under (0 for read-only handles).
    public var epoch: UInt64 { grant.epoch }

    public var description: String { "\(name) (\(grant.rights), \(grant.sizeBytes) bytes, epoch \(grant.epoch))" }

    public static func == (a: RegionHandle, b: RegionHandle) -> Bool { a.grant.key == b.grant.key }
    public func hash(into hasher: inout Hasher) { hasher.combine(grant.key) }
}
