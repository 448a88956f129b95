import NIOCore

extension Response: WireMessage {
    public func encodeBody(into buffer: inout ByteBuffer) {
        switch self {
        case .ok:
            break
        case .challenge(let nonce):
            buffer.writeBytes(nonce)
        case .authenticated(let proof):
            buffer.writeBytes(proof)
        case .grant(let grant):
            buffer.writeGrant(grant)
        case .remoteGrant(let grant, let remote):
            buffer.writeGrant(grant)
            buffer.writeLE(remote.address)
            buffer.writeLE(remote.rkey)
        case .data(let data):
            var data = data
            buffer.writeBuffer(&data)
        case .info(let info):
            buffer.writeRegionInfo(info)
        case .list(let entries, let more, let cursor):
            buffer.writeLE(UInt8(more ? 1 : 0))
            buffer.writeLE(UInt32(entries.count))
            for entry in entries { buffer.writeRegionInfo(entry) }
            // Only for requests that asked: an older client's decoder refuses trailing bytes.
            if let cursor { buffer.writeWireString(cursor, maxBytes: Limits.maxNameBytes) }
        case .error(let error):
            buffer.writeLE(error.code.rawValue)
            buffer.writeWireString(error.message, maxBytes: Limits.maxMessageBytes, truncating: true)
        }
    }

    public static func decodeBody(opcode rawOpcode: UInt8, body: inout ByteBuffer) throws(PMUError) -> Response {
        guard let opcode = Opcode(rawValue: rawOpcode), opcode.rawValue >= 0x80 else {
            throw PMUError(.malformedFrame, "unknown reply opcode 0x\(String(rawOpcode, radix: 16))")
        }
        let response: Response
        switch opcode {
        case .ok:
            response = .ok
        case .challenge:
            response = .challenge(serverNonce: try body.readFixedBytes(Limits.nonceBytes, "server_nonce"))
        case .authenticated:
            response = .authenticated(serverProof: try body.readFixedBytes(Authentication.proofBytes, "server_proof"))
        case .grant:
            response = .grant(try body.readGrant())
        case .remoteGrant:
            let grant = try body.readGrant()
            let address = try body.readLE(UInt64.self, "remote_address")
            let rkey = try body.readLE(UInt32.self, "rkey")
            response = .remoteGrant(grant, RemoteAccess(address: address, rkey: rkey))
        case .data:
            response = .data(body.readSlice(length: body.readableBytes)!)
        case .info:
            response = .info(try body.readRegionInfo())
        case .listReply:
            let more = try body.readLE(UInt8.self, "more") != 0
            let count = Int(try body.readLE(UInt32.self, "count"))
            guard count <= Limits.maxListEntries else {
                throw PMUError(.malformedFrame, "list reply has \(count) entries; the limit is \(Limits.maxListEntries)")
            }
            var entries: [RegionInfo] = []
            entries.reserveCapacity(count)
            for _ in 0..<count { entries.append(try body.readRegionInfo()) }
            // An older server never sends the cursor; a newer one sends it when asked.
            let cursor = body.readableBytes > 0 ? try body.readWireString("next_after", maxBytes: Limits.maxNameBytes) : nil
            response = .list(entries: entries, more: more, cursor: cursor)
        case .error:
            let rawCode = try body.readLE(UInt16.self, "code")
            let message = try body.readWireString("message", maxBytes: Limits.maxMessageBytes)
            // An unknown code from a newer server still reaches the user, with its number.
            let code = PMUErrorCode(rawValue: rawCode) ?? .internalError
            let text = PMUErrorCode(rawValue: rawCode) == nil ? "(server error code \(rawCode)) \(message)" : message
            response = .error(PMUError(code, text))
        default:
            throw PMUError(.malformedFrame, "opcode \(opcode) is a request, not a reply")
        }
        try body.expectEnd(opcode)
        return response
    }
}

extension ByteBuffer {
    /// The 42 bytes GRANT and GRANT_RDMA share.
    mutating func writeGrant(_ grant: RegionGrant) {
        writeAccessKey(grant.key)
        writeLE(grant.regionId)
        writeLE(grant.sizeBytes)
        writeLE(grant.rights.rawValue)
        writeLE(grant.kind.rawValue)
        writeLE(grant.epoch)
    }

    mutating func readGrant() throws(PMUError) -> RegionGrant {
        let key = try readAccessKey()
        let regionId = try readLE(UInt64.self, "region_id")
        let size = try readLE(UInt64.self, "size")
        let rights = Rights(rawValue: try readLE(UInt8.self, "rights"))
        let rawKind = try readLE(UInt8.self, "kind")
        guard let kind = RegionKind(rawValue: rawKind) else {
            throw PMUError(.malformedFrame, "unknown region kind \(rawKind)")
        }
        let epoch = try readLE(UInt64.self, "epoch")
        return RegionGrant(key: key, regionId: regionId, sizeBytes: size, rights: rights, kind: kind, epoch: epoch)
    }

    mutating func writeRegionInfo(_ info: RegionInfo) {
        writeLE(info.id)
        writeWireString(info.name, maxBytes: Limits.maxNameBytes)
        writeLE(info.sizeBytes)
        writeLE(info.kind.rawValue)
        writeLE(info.createdAtMilliseconds)
        writeLE(info.generation)
        writeLE(info.writerEpoch)
        writeWireString(info.owner, maxBytes: Limits.maxClientIdBytes)
        writeWireStrings(info.readers, maxBytes: Limits.maxClientIdBytes)
        writeWireStrings(info.writers, maxBytes: Limits.maxClientIdBytes)
        writeLE(info.openHandles)
    }

    mutating func readRegionInfo() throws(PMUError) -> RegionInfo {
        let id = try readLE(UInt64.self, "id")
        let name = try readWireString("name", maxBytes: Limits.maxNameBytes)
        let size = try readLE(UInt64.self, "size")
        let rawKind = try readLE(UInt8.self, "kind")
        guard let kind = RegionKind(rawValue: rawKind) else {
            throw PMUError(.malformedFrame, "unknown region kind \(rawKind)")
        }
        let created = try readLE(UInt64.self, "created")
        let generation = try readLE(UInt64.self, "generation")
        let epoch = try readLE(UInt64.self, "writer_epoch")
        let owner = try readWireString("owner", maxBytes: Limits.maxClientIdBytes)
        let readers = try readWireStrings("readers", maxCount: Limits.maxAccessListEntries, maxBytes: Limits.maxClientIdBytes)
        let writers = try readWireStrings("writers", maxCount: Limits.maxAccessListEntries, maxBytes: Limits.maxClientIdBytes)
        let handles = try readLE(UInt32.self, "open_handles")
        return RegionInfo(
            id: id, name: name, sizeBytes: size, kind: kind, createdAtMilliseconds: created, generation: generation,
            writerEpoch: epoch, owner: owner, readers: readers, writers: writers, openHandles: handles)
    }
}
