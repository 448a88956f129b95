import Foundation
import NIOCore
import PMUCluster
import PMUCore

/// The session's forming verbs (docs/WIRE_PROTOCOL.md, "Forming"): a primary uploads a whole
/// checkpoint of a striped set, and this server forms the pieces and stores them on every server
/// of the set, answering FORM_COMMIT once the checkpoint is complete.
extension Session {
    func formRequest(_ request: Request, id: UInt64, clientId: String, isAdmin: Bool) throws(PMUError) {
        let forming = state.forming
        switch request {
        case .formBegin(let set, let length, let crc):
            try checkMayWrite(set, clientId: clientId, isAdmin: isAdmin)
            try forming.begin(connection: info.id, set: set, length: length, crc: crc)
            reply(id, .ok)
        case .formRebuild(let set, let server):
            try checkMayWrite(set, clientId: clientId, isAdmin: isAdmin)
            answer(id) { () async throws(PMUError) -> Response in
                let report = try await forming.rebuild(set: set, server: server)
                return .data(ByteBuffer(string: FormingReplies.rebuildJSON(report)))
            }
        case .formData(let offset, let data):
            try forming.append(connection: info.id, offset: offset, data: data)
            reply(id, .ok)
        case .formCommit:
            let upload = try forming.take(connection: info.id)
            answer(id) { () async throws(PMUError) -> Response in
                let formed = try await forming.form(upload)
                var reply = ByteBuffer()
                reply.writeInteger(formed.sequence, endianness: .little)
                reply.writeInteger(formed.pieceBytes, endianness: .little)
                return .data(reply)
            }
        default:
            throw PMUError(.internalError, "not a forming request: \(request.opcode)")
        }
    }

    /// The forming server writes with its own credentials: only a client that may write the set's
    /// region here may have it do so.
    private func checkMayWrite(_ set: String, clientId: String, isAdmin: Bool) throws(PMUError) {
        try NameRules.validateRegionName(set)
        guard let record = state.store.record(named: set) else {
            throw PMUError(.unknownRegion, "this server holds no checkpoint set \(NameRules.quoted(set)); form on a server of the set's stripe (pmuctl cluster status)")
        }
        guard AccessPolicy.may(clientId, open: .readWrite, owner: record.owner, readers: record.readers, writers: record.writers, isAdmin: isAdmin) else {
            throw PMUError(.accessDenied, "client '\(clientId)' may not write set \(NameRules.quoted(set)) on this server, so may not have it formed or rebuilt here")
        }
    }

    /// Runs `work` off the event loop and replies with its result there.
    private func answer(_ id: UInt64, _ work: @escaping @Sendable () async throws(PMUError) -> Response) {
        let promise = info.eventLoop.makePromise(of: Response.self)
        Task {
            do throws(PMUError) {
                promise.succeed(try await work())
            } catch {
                promise.succeed(.error(error))
            }
        }
        promise.futureResult.whenSuccess { [self] response in self.reply(id, response) }
    }
}

enum FormingReplies {
    static func rebuildJSON(_ report: RebuildReport) -> String {
        let object: [String: Any] = ["set": report.set, "server": report.server, "rebuilt": report.rebuilt, "unrecoverable": report.unrecoverable, "bytesWritten": report.bytesWritten]
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}
