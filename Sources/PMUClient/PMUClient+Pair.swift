import NIOCore
import PMUCore

/// Server-to-server mirroring and pair administration (docs/WIRE_PROTOCOL.md, "Mirroring").
/// pmu-server uses the mirror calls as a client of its partner; pmuctl uses the pair calls.
extension PMUClient {
    /// MIRROR_OPEN: returns the highest sequence the partner's log holds for the portion.
    public func mirrorOpen(portion: String, instance: [UInt8]) async throws(PMUError) -> UInt64 {
        guard case .data(var data) = try await call(.mirrorOpen(portion: portion, instance: instance)),
            let highest = data.readInteger(endianness: .little, as: UInt64.self), data.readableBytes == 0
        else {
            throw PMUError(.protocolViolation, "MIRROR_OPEN reply is not DATA of 8 bytes (the partner runs an older pmu-server?)")
        }
        return highest
    }

    public func mirrorAppend(_ append: MirrorAppend) async throws(PMUError) {
        guard case .ok = try await call(.mirrorAppend(append)) else { throw PMUError(.protocolViolation, "unexpected reply to MIRROR_APPEND") }
    }

    public func mirrorTrim(through: UInt64) async throws(PMUError) {
        guard case .ok = try await call(.mirrorTrim(through: through)) else { throw PMUError(.protocolViolation, "unexpected reply to MIRROR_TRIM") }
    }

    /// PAIR_STATUS: the server's pair state as a JSON object.
    public func pairStatus() async throws(PMUError) -> String {
        try await jsonReply(.pairStatus)
    }

    /// PAIR_TAKEOVER: fence the partner, replay its mirror log into its portion, persist, serve.
    /// Returns the takeover report as a JSON object once the portion is being served.
    public func pairTakeover() async throws(PMUError) -> String {
        try await jsonReply(.pairTakeover)
    }

    private func jsonReply(_ request: Request) async throws(PMUError) -> String {
        guard case .data(let data) = try await call(request) else { throw PMUError(.protocolViolation, "unexpected reply to \(request.opcode)") }
        return String(decoding: data.readableBytesView, as: UTF8.self)
    }
}
