import NIOCore
import NIOPosix
import PMUCore
import PMUTransport

/// The UDP socket a server heartbeats from and answers on (its own heartbeat address: the
/// monitor address for a monitor). Datagrams that fail to decode (wrong size, tag, version)
/// are counted and dropped: a heartbeat port is reachable by anyone on the network.
final class HeartbeatSocket: @unchecked Sendable {
    let channel: any Channel
    let secret: [UInt8]

    private init(channel: any Channel, secret: [UInt8]) {
        self.channel = channel
        self.secret = secret
    }

    static func bind(
        _ endpoint: Endpoint, group: any EventLoopGroup, secret: [UInt8],
        onMessage: @escaping @Sendable (HeartbeatMessage, SocketAddress) -> Void, onGarbage: @escaping @Sendable () -> Void
    ) async throws(PMUError) -> HeartbeatSocket {
        do {
            let channel = try await DatagramBootstrap(group: group)
                .channelOption(.socketOption(.so_reuseaddr), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(Receiver(secret: secret, onMessage: onMessage, onGarbage: onGarbage))
                    }
                }
                .bind(host: endpoint.host, port: endpoint.port).get()
            return HeartbeatSocket(channel: channel, secret: secret)
        } catch {
            throw PMUError(.ioError, "cannot bind the heartbeat address \(endpoint) (UDP): \(error)")
        }
    }

    var eventLoop: any EventLoop { channel.eventLoop }

    func send(_ message: HeartbeatMessage, to address: SocketAddress) {
        let bytes = message.encode(secret: secret)
        channel.writeAndFlush(AddressedEnvelope(remoteAddress: address, data: ByteBuffer(bytes: bytes)), promise: nil)
    }

    func close() async {
        try? await channel.close()
    }

    private final class Receiver: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = AddressedEnvelope<ByteBuffer>
        let secret: [UInt8]
        let onMessage: @Sendable (HeartbeatMessage, SocketAddress) -> Void
        let onGarbage: @Sendable () -> Void

        init(secret: [UInt8], onMessage: @escaping @Sendable (HeartbeatMessage, SocketAddress) -> Void, onGarbage: @escaping @Sendable () -> Void) {
            self.secret = secret
            self.onMessage = onMessage
            self.onGarbage = onGarbage
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var envelope = unwrapInboundIn(data)
            // Capped: anything but exactly one heartbeat's size is refused before a copy.
            guard envelope.data.readableBytes == HeartbeatMessage.size, let bytes = envelope.data.readBytes(length: HeartbeatMessage.size),
                  let message = try? HeartbeatMessage.decode(bytes, secret: secret) else {
                onGarbage()
                return
            }
            onMessage(message, envelope.remoteAddress)
        }

        // ICMP port unreachable on a connected-less UDP socket surfaces as a read error: a miss, not a failure.
        func errorCaught(context: ChannelHandlerContext, error: any Error) {}
    }
}
