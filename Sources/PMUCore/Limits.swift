/// Every bound PMU enforces, in one place. The server may be configured tighter, never looser than
/// the protocol maxima here (a peer must be able to rely on them).
public enum Limits {
    /// Protocol version spoken by this build. A HELLO with another version is refused.
    public static let protocolVersion: UInt8 = 1

    /// Largest frame accepted on the wire, header included. Bounded so a peer cannot make the other
    /// side buffer unbounded input; large transfers are split by the client library.
    public static let maxFrameBytes: Int = 8 * 1024 * 1024 + 4096

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

    /// Nonces used in the challenge-response handshake.
    public static let nonceBytes: Int = 32

    /// A server process's random instance id (MIRROR_OPEN), to tell a server that is its own partner.
    public static let instanceIdBytes: Int = 16
}
