import NIOCore
import PMUCore

extension PMUClient {
    /// SERVER_INFO: the server's version, uptime, counts, limits, configuration, data-directory
    /// space and transport as a JSON object (`pmuctl stats`; docs/WIRE_PROTOCOL.md). Admins only.
    public func serverInfo() async throws(PMUError) -> String {
        guard case .data(let data) = try await call(.serverInfo) else {
            throw PMUError(.protocolViolation, "unexpected reply to SERVER_INFO (the server runs an older pmu-server?)")
        }
        return String(decoding: data.readableBytesView, as: UTF8.self)
    }
}
