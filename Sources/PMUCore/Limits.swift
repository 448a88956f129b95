/// Every bound PMU enforces, in one place. The server may be configured tighter, never looser than
/// the protocol maxima here (a peer must be able to rely on them).
public enum Limits {
    /// Protocol version spoken by this build. A HELLO with another version is refused.
    public static let protocolVersion: UInt8 = 1

    /// Largest frame accepted on the wire, header included. Bounded so a peer cannot make the other
    /// side buffer unbounded input; large transfers are split by the client library.
    public static let maxFrameBytes: Int = 8 * 1024 * 1024 + 4096

    /// Largest frame a server accepts before the connection has authenticated: HELLO (at most
    /// 16 + 1 + 2 + 64 + 32 = 115 bytes) and AUTHENTICATE (48 bytes) fit with room to spare.
    /// Refused from the header, so an unauthenticated peer can never make the server buffer more.
    public static let maxHandshakeFrameBytes: Int = 512

    /// Largest data payload of one WRITE request or READ response. Leaves room for the headers.
    public static let maxIOBytes: Int = 8 * 1024 * 1024

    /// Region names: 1...255 bytes of UTF-8.
    public static let maxNameBytes: Int = 255

    /// Client ids in the secrets file and HELLO.
    public static let maxClientIdBytes: Int = 64

    /// Entries in a region's access list (readers + writers).
    public static let maxAccessListEntries: Int = 64

    /// Largest region the protocol can describe comfortably; the server's own limit defaults lower.
    public static let maxRegionBytes: UInt64 = 1 << 44 // 16 TiB

    /// Error messages are truncated to this many bytes on the wire.
    public static let maxMessageBytes: Int = 1024

    /// Entries returned by one LIST reply; clients page with `after`.
    public static let maxListEntries: Int = 1024

    /// Region names one LIST request examines at most, visible to the client or not: bounds the
    /// work (and the event loop's time) one request can cost however many regions the server
    /// holds. When it is spent the reply says `more` and carries the last name examined.
    public static let listScanBudget: Int = 4096

    /// Bit 31 of LIST's `limit` field: "reply with a `next_after` cursor". An older server reads
    /// the field as a limit above 1024 (so, 1024) and answers without one.
    public static let listCursorFlag: UInt32 = 0x8000_0000

    /// Nonces used in the challenge-response handshake.
    public static let nonceBytes: Int = 32

    /// A server process's random instance id (MIRROR_OPEN), to tell a server that is its own partner.
    public static let instanceIdBytes: Int = 16
    /// OPEN_RESUME's optional idempotency token.
    public static let resumeTokenBytes: Int = 16
}
