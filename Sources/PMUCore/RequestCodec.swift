import NIOCore

extension Request: WireMessage {
    public func encodeBody(into buffer: inout ByteBuffer) {
        switch self {
        case .hello(let clientId, let nonce):
            buffer.writeLE(Limits.protocolVersion)
            buffer.writeWireString(clientId, maxBytes: Limits.maxClientIdBytes)
            buffer.writeBytes(nonce)
        case .authenticate(let proof):
            buffer.writeBytes(proof)
        case .create(let create):
            buffer.writeWireString(create.name, maxBytes: Limits.maxNameBytes)
            buffer.writeLE(create.sizeBytes)
            buffer.writeLE(create.kind.rawValue)
            buffer.writeWireStrings(create.readers, maxBytes: Limits.maxClientIdBytes)
            buffer.writeWireStrings(create.writers, maxBytes: Limits.maxClientIdBytes)
        case .open(let name, let rights):
            buffer.writeWireString(name, maxBytes: Limits.maxNameBytes)
            buffer.writeLE(rights.rawValue)
        case .openResume(let name, let epoch, let token):
            buffer.writeWireString(name, maxBytes: Limits.maxNameBytes)
            buffer.writeLE(epoch)
            if let token {
                precondition(token.count == Limits.resumeTokenBytes, "an OPEN_RESUME token is \(Limits.resumeTokenBytes) bytes")
                buffer.writeBytes(token)
            }
        case .write(let key, let offset, let data):
            buffer.writeAccessKey(key)
            buffer.writeLE(offset)
            var data = data
            buffer.writeBuffer(&data)
        case .read(let key, let offset, let length):
            buffer.writeAccessKey(key)
            buffer.writeLE(offset)
            buffer.writeLE(length)
        case .persist(let key, let offset, let length):
            buffer.writeAccessKey(key)
            buffer.writeLE(offset)
            buffer.writeLE(length)
        case .close(let key):
            buffer.writeAccessKey(key)
        case .delete(let name), .stat(let name):
            buffer.writeWireString(name, maxBytes: Limits.maxNameBytes)
        case .list(let after, let limit, let wantsCursor):
            buffer.writeWireString(after, maxBytes: Limits.maxNameBytes)
            buffer.writeLE((limit & ~Limits.listCursorFlag) | (wantsCursor ? Limits.listCursorFlag : 0))
        case .mirrorOpen(let portion, let instance):
            buffer.writeWireString(portion, maxBytes: Limits.maxNameBytes)
            buffer.writeBytes(instance)
        case .mirrorAppend(let append):
            buffer.writeLE(append.sequence)
            buffer.writeLE(append.regionId)
            buffer.writeLE(append.epoch)
            buffer.writeLE(append.offset)
            var data = append.data
            buffer.writeBuffer(&data)
        case .mirrorTrim(let through):
            buffer.writeLE(through)
        case .mirrorCatalog(let sequence, let entry):
            buffer.writeLE(sequence)
            buffer.writeBytes(CatalogFormat.encode(entry, sequence: 1))
        case .replicaCatalog(let after, let limit):
            buffer.writeWireString(after, maxBytes: Limits.maxNameBytes)
            buffer.writeLE(limit)
        case .replicaRead(let regionId, let offset, let length):
            buffer.writeLE(regionId)
            buffer.writeLE(offset)
            buffer.writeLE(length)
        case .pairStatus, .pairTakeover, .pairGiveback, .serverInfo, .formCommit:
            break
        case .formBegin(let set, let length, let crc):
            buffer.writeWireString(set, maxBytes: Limits.maxNameBytes)
            buffer.writeLE(length)
            buffer.writeLE(crc)
        case .formRebuild(let set, let server):
            buffer.writeWireString(set, maxBytes: Limits.maxNameBytes)
            buffer.writeWireString(server, maxBytes: Limits.maxNameBytes)
        case .formData(let offset, let data):
            buffer.writeLE(offset)
            var data = data
            buffer.writeBuffer(&data)
        }
    }

    /// The WRITE payload is kept as a slice of the frame buffer, not copied.
    public static func decodeBody(opcode rawOpcode: UInt8, body: inout ByteBuffer) throws(PMUError) -> Request {
        guard let opcode = Opcode(rawValue: rawOpcode), opcode.rawValue < 0x80 else {
            throw PMUError(.malformedFrame, "unknown request opcode 0x\(String(rawOpcode, radix: 16))")
        }
        let request: Request
        switch opcode {
        case .hello:
            let version = try body.readLE(UInt8.self, "version")
            guard version == Limits.protocolVersion else {
                throw PMUError(.unsupportedVersion, "client speaks protocol version \(version); this server speaks \(Limits.protocolVersion)")
            }
            let clientId = try body.readWireString("client_id", maxBytes: Limits.maxClientIdBytes)
            let nonce = try body.readFixedBytes(Limits.nonceBytes, "client_nonce")
            request = .hello(clientId: clientId, clientNonce: nonce)
        case .authenticate:
            request = .authenticate(proof: try body.readFixedBytes(Authentication.proofBytes, "proof"))
        case .create:
            let name = try body.readWireString("name", maxBytes: Limits.maxNameBytes)
            let size = try body.readLE(UInt64.self, "size")
            let rawKind = try body.readLE(UInt8.self, "kind")
            guard let kind = RegionKind(rawValue: rawKind) else {
                throw PMUError(.malformedFrame, "unknown region kind \(rawKind)")
            }
            let readers = try body.readWireStrings("readers", maxCount: Limits.maxAccessListEntries, maxBytes: Limits.maxClientIdBytes)
            let writers = try body.readWireStrings("writers", maxCount: Limits.maxAccessListEntries, maxBytes: Limits.maxClientIdBytes)
            request = .create(CreateRegion(name: name, sizeBytes: size, kind: kind, readers: readers, writers: writers))
        case .open:
            let name = try body.readWireString("name", maxBytes: Limits.maxNameBytes)
            let rights = Rights(rawValue: try body.readLE(UInt8.self, "rights"))
            guard rights == .read || rights == .readWrite else {
                throw PMUError(.malformedFrame, "open rights must be read (1) or read-write (3), got \(rights.rawValue)")
            }
            request = .open(name: name, rights: rights)
        case .openResume:
            let name = try body.readWireString("name", maxBytes: Limits.maxNameBytes)
            let epoch = try body.readLE(UInt64.self, "epoch")
            // The token is optional (absent from writers before it existed); present, it is whole.
            let token = body.readableBytes == 0 ? nil : try body.readFixedBytes(Limits.resumeTokenBytes, "token")
            request = .openResume(name: name, epoch: epoch, token: token)
        case .write:
            let key = try body.readAccessKey()
            let offset = try body.readLE(UInt64.self, "offset")
            let data = body.readSlice(length: body.readableBytes)!
            request = .write(key: key, offset: offset, data: data)
        case .read:
            let key = try body.readAccessKey()
            request = .read(key: key, offset: try body.readLE(UInt64.self, "offset"), length: try body.readLE(UInt32.self, "length"))
        case .persist:
            let key = try body.readAccessKey()
            request = .persist(key: key, offset: try body.readLE(UInt64.self, "offset"), length: try body.readLE(UInt64.self, "length"))
        case .close:
            request = .close(key: try body.readAccessKey())
        case .delete:
            request = .delete(name: try body.readWireString("name", maxBytes: Limits.maxNameBytes))
        case .stat:
            request = .stat(name: try body.readWireString("name", maxBytes: Limits.maxNameBytes))
        case .list:
            let after = try body.readWireString("after", maxBytes: Limits.maxNameBytes)
            let raw = try body.readLE(UInt32.self, "limit")
            request = .list(after: after, limit: raw & ~Limits.listCursorFlag, wantsCursor: raw & Limits.listCursorFlag != 0)
        case .mirrorOpen:
            let portion = try body.readWireString("portion", maxBytes: Limits.maxNameBytes)
            request = .mirrorOpen(portion: portion, instance: try body.readFixedBytes(Limits.instanceIdBytes, "instance"))
        case .mirrorAppend:
            let sequence = try body.readLE(UInt64.self, "sequence")
            let regionId = try body.readLE(UInt64.self, "region_id")
            let epoch = try body.readLE(UInt64.self, "epoch")
            let offset = try body.readLE(UInt64.self, "offset")
            guard body.readableBytes <= Limits.maxIOBytes else {
                throw PMUError(.requestTooLarge, "MIRROR_APPEND of \(body.readableBytes) bytes exceeds the per-request limit of \(Limits.maxIOBytes)")
            }
            guard !offset.addingReportingOverflow(UInt64(body.readableBytes)).overflow else {
                throw PMUError(.malformedFrame, "MIRROR_APPEND offset \(offset) plus length \(body.readableBytes) overflows")
            }
            let data = body.readSlice(length: body.readableBytes)!
            request = .mirrorAppend(MirrorAppend(sequence: sequence, regionId: regionId, epoch: epoch, offset: offset, data: data))
        case .mirrorTrim:
            request = .mirrorTrim(through: try body.readLE(UInt64.self, "through"))
        case .mirrorCatalog:
            let sequence = try body.readLE(UInt64.self, "sequence")
            guard body.readableBytes <= CatalogFormat.headerBytes + Int(CatalogFormat.maxBodyBytes) else {
                throw PMUError(.requestTooLarge, "MIRROR_CATALOG of \(body.readableBytes) bytes exceeds the catalog record limit of \(CatalogFormat.headerBytes + Int(CatalogFormat.maxBodyBytes))")
            }
            let bytes = Array(body.readSlice(length: body.readableBytes)!.readableBytesView)
            let entry: CatalogEntry
            do throws(PMUError) {
                entry = try CatalogFormat.decodeOne(bytes).entry
            } catch {
                throw PMUError(.malformedFrame, "MIRROR_CATALOG: \(error.message)")
            }
            if case .nextId = entry { throw PMUError(.malformedFrame, "MIRROR_CATALOG carries a next-id entry; only puts and deletes are mirrored") }
            request = .mirrorCatalog(sequence: sequence, entry: entry)
        case .replicaCatalog:
            request = .replicaCatalog(after: try body.readWireString("after", maxBytes: Limits.maxNameBytes), limit: try body.readLE(UInt32.self, "limit"))
        case .replicaRead:
            let regionId = try body.readLE(UInt64.self, "region_id")
            request = .replicaRead(regionId: regionId, offset: try body.readLE(UInt64.self, "offset"), length: try body.readLE(UInt32.self, "length"))
        case .pairStatus:
            request = .pairStatus
        case .pairTakeover:
            request = .pairTakeover
        case .pairGiveback:
            request = .pairGiveback
        case .serverInfo:
            request = .serverInfo
        case .formBegin:
            let set = try body.readWireString("set", maxBytes: Limits.maxNameBytes)
            request = .formBegin(set: set, length: try body.readLE(UInt64.self, "length"), crc: try body.readLE(UInt32.self, "crc"))
        case .formData:
            let offset = try body.readLE(UInt64.self, "offset")
            guard body.readableBytes <= Limits.maxIOBytes else {
                throw PMUError(.requestTooLarge, "FORM_DATA of \(body.readableBytes) bytes exceeds the per-request limit of \(Limits.maxIOBytes)")
            }
            request = .formData(offset: offset, data: body.readSlice(length: body.readableBytes)!)
        case .formCommit:
            request = .formCommit
        case .formRebuild:
            let set = try body.readWireString("set", maxBytes: Limits.maxNameBytes)
            request = .formRebuild(set: set, server: try body.readWireString("server", maxBytes: Limits.maxNameBytes))
        default:
            throw PMUError(.malformedFrame, "opcode \(opcode) is a reply, not a request")
        }
        try body.expectEnd(opcode)
        return request
    }
}
