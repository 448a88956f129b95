/// Who holds a connection slot and who may take one: the server's fair-admission policy, pure so
/// it is tested without sockets. The server keeps one under a lock and acts on its answers
/// (closing the connections it displaces or refuses).
///
/// Connections that are still authenticating have their own budget, separate from the clients'
/// (`maxClients` counts authenticated connections only), so a flood of connections that never
/// authenticate cannot fill the client slots. When that budget is full a newcomer displaces the
/// connection that has waited longest without sending HELLO, or, when every one has sent it, the
/// one that has been authenticating longest. So connections held open idle (the cheap flood)
/// never displace a client that has begun its handshake; a flooder that also sends HELLOs can
/// shorten every handshake's window to the time it takes to open `maxAuthenticating` new
/// connections, but not keep out a client that completes its handshake within it.
/// `maxConnectionsPerClient` keeps one authenticated client id from taking every slot.
public struct AdmissionTable: Sendable {
    public struct Limits: Sendable, Equatable {
        /// Authenticated connections served at once (`--max-clients`).
        public var maxClients: Int
        /// Connections accepted and not yet authenticated (`--max-authenticating`).
        public var maxAuthenticating: Int
        /// Authenticated connections of one client id (`--max-connections-per-client`).
        public var maxConnectionsPerClient: Int

        public init(maxClients: Int, maxAuthenticating: Int, maxConnectionsPerClient: Int) {
            precondition(maxClients > 0 && maxAuthenticating > 0 && maxConnectionsPerClient > 0)
            self.maxClients = maxClients
            self.maxAuthenticating = maxAuthenticating
            self.maxConnectionsPerClient = maxConnectionsPerClient
        }
    }

    public let limits: Limits
    /// Oldest first, before and after HELLO. At most `maxAuthenticating` entries together, so
    /// linear removal is cheap.
    private var silent: [UInt64] = []
    private var challenged: [UInt64] = []
    private var clientOf: [UInt64: String] = [:]
    private var connectionsOf: [String: Int] = [:]

    public init(limits: Limits) { self.limits = limits }

    public var authenticatingCount: Int { silent.count + challenged.count }
    public var authenticatedCount: Int { clientOf.count }
    public func connections(of clientId: String) -> Int { connectionsOf[clientId] ?? 0 }

    /// A connection was accepted. It is always let in to authenticate; the one returned, if any,
    /// has been displaced to make room and must be closed.
    public mutating func arrive(_ connection: UInt64) -> UInt64? {
        var displaced: UInt64?
        if authenticatingCount >= limits.maxAuthenticating {
            displaced = silent.isEmpty ? challenged.removeFirst() : silent.removeFirst()
        }
        silent.append(connection)
        return displaced
    }

    /// The connection sent HELLO: displaced only after every connection that has not.
    public mutating func helloReceived(_ connection: UInt64) {
        guard let index = silent.firstIndex(of: connection) else { return }
        silent.remove(at: index)
        challenged.append(connection)
    }

    /// AUTHENTICATE succeeded: the connection takes a client slot, or throws TOO_MANY_CLIENTS
    /// (the caller refuses it and calls `leave`).
    public mutating func authenticate(_ connection: UInt64, clientId: String) throws(PMUError) {
        guard let index = challenged.firstIndex(of: connection) else {
            throw PMUError(.tooManyClients, "this connection was displaced by newer ones while it authenticated (more than \(limits.maxAuthenticating) connections were authenticating, the limit --max-authenticating); try again")
        }
        guard clientOf.count < limits.maxClients else {
            throw PMUError(.tooManyClients, "server is serving \(limits.maxClients) clients, its limit (--max-clients); try again later")
        }
        let held = connectionsOf[clientId] ?? 0
        guard held < limits.maxConnectionsPerClient else {
            throw PMUError(.tooManyClients, "client '\(clientId)' already holds the \(held) connection(s) allowed per client id (--max-connections-per-client); close one first")
        }
        challenged.remove(at: index)
        clientOf[connection] = clientId
        connectionsOf[clientId] = held + 1
    }

    /// The connection ended (or was refused). Unknown ids, e.g. displaced ones, are ignored.
    public mutating func leave(_ connection: UInt64) {
        if let index = silent.firstIndex(of: connection) { silent.remove(at: index) }
        if let index = challenged.firstIndex(of: connection) { challenged.remove(at: index) }
        if let clientId = clientOf.removeValue(forKey: connection) {
            let left = (connectionsOf[clientId] ?? 1) - 1
            connectionsOf[clientId] = left > 0 ? left : nil
        }
    }
}
