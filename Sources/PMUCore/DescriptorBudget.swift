/// How many connections the process's open-file limit can hold, and what must be lowered when it
/// cannot hold what was configured. Pure; the server feeds it its limit and descriptor count at
/// start (`PMUServer/DescriptorLimit.swift`).
///
/// Every connection is one descriptor. Regions hold none once mapped (the file is closed after
/// mmap). `reserved` covers what the server opens later for short times: the listening socket, a
/// region file during CREATE and OPEN, the catalog during compaction, closing sockets.
public struct DescriptorBudget: Sendable, Equatable {
    public var maxClients: Int
    public var maxAuthenticating: Int
    /// Set when the configured limits did not fit and were lowered: says what and why.
    public var warning: String?

    public static let reserved = 64

    public static func plan(softLimit: Int, inUse: Int, maxClients: Int, maxAuthenticating: Int) -> DescriptorBudget {
        let (room, overflow) = softLimit.subtractingReportingOverflow(inUse.addingReportingOverflow(reserved).partialValue)
        let available = overflow ? 0 : max(0, room)
        let (wanted, wantedOverflow) = maxClients.addingReportingOverflow(maxAuthenticating)
        if !wantedOverflow, wanted <= available {
            return DescriptorBudget(maxClients: maxClients, maxAuthenticating: maxAuthenticating, warning: nil)
        }
        // Share the room in the configured proportion, at least one of each (below that, accepts
        // back off on EMFILE rather than fail).
        let share = Double(maxAuthenticating) / (Double(maxClients) + Double(maxAuthenticating))
        let authenticating = max(1, min(maxAuthenticating, Int(Double(available) * share)))
        let clients = max(1, min(maxClients, available - authenticating))
        let warning = "the open-file limit (\(softLimit)) cannot hold --max-clients \(maxClients) + --max-authenticating \(maxAuthenticating) connections: "
            + "\(inUse) descriptors are in use at start and \(reserved) are kept for the server's own files, leaving \(available). "
            + "Lowered to --max-clients \(clients) and --max-authenticating \(authenticating); raise the limit (ulimit -n, systemd LimitNOFILE=) to serve more"
        return DescriptorBudget(maxClients: clients, maxAuthenticating: authenticating, warning: warning)
    }
}
