import Crypto

/// Challenge-response with HMAC-SHA256, in both directions, so the secret never crosses the wire
/// and the client also learns that the server knows its secret (no impostor server).
///
///     client -> HELLO(version, client_id, client_nonce)
///     server -> CHALLENGE(server_nonce)
///     client -> AUTHENTICATE(HMAC(secret, "pmu-auth-v1 client" | transcript))
///     server -> AUTHENTICATED(HMAC(secret, "pmu-auth-v1 server" | transcript))
///
/// where transcript = u16 len(client_id) | client_id | client_nonce | server_nonce. Both nonces are
/// 32 random bytes, so a recorded exchange cannot be replayed against a new challenge.
public enum Authentication {
    public static let proofBytes = 32

    public static func clientProof(secret: [UInt8], clientId: String, clientNonce: [UInt8], serverNonce: [UInt8]) -> [UInt8] {
        mac(label: "pmu-auth-v1 client", secret: secret, clientId: clientId, clientNonce: clientNonce, serverNonce: serverNonce)
    }

    public static func serverProof(secret: [UInt8], clientId: String, clientNonce: [UInt8], serverNonce: [UInt8]) -> [UInt8] {
        mac(label: "pmu-auth-v1 server", secret: secret, clientId: clientId, clientNonce: clientNonce, serverNonce: serverNonce)
    }

    /// Constant-time comparison: timing must not reveal how many leading bytes of a guess were right.
    public static func proofsMatch(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for index in a.indices { difference |= a[index] ^ b[index] }
        return difference == 0
    }

    public static func randomNonce() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<Limits.nonceBytes).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
    }

    private static func mac(label: String, secret: [UInt8], clientId: String, clientNonce: [UInt8], serverNonce: [UInt8]) -> [UInt8] {
        var hmac = HMAC<SHA256>(key: SymmetricKey(data: secret))
        hmac.update(data: Array(label.utf8))
        let id = Array(clientId.utf8)
        hmac.update(data: [UInt8(id.count & 0xFF), UInt8(id.count >> 8)])
        hmac.update(data: id)
        hmac.update(data: clientNonce)
        hmac.update(data: serverNonce)
        return Array(hmac.finalize())
    }
}
