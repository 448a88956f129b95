#if canImport(Glibc)
import Glibc
#endif

/// An error of the verbs layer: which call failed, the errno it gave (when it gave one), what that
/// means here, and what a person can do about it.
public struct VerbsError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable, Equatable {
        /// No RDMA device at all (ibv_get_device_list returned none).
        case noDevice
        /// Devices exist, but not the one asked for.
        case deviceNotFound
        /// The device's port is not PORT_ACTIVE.
        case portNotActive
        /// ibv_reg_mr refused the memory.
        case memoryRegistration
        /// A connection-manager step did not produce the expected event (reject, unreachable, ...).
        case connection
        /// A work request completed with a status other than IBV_WC_SUCCESS.
        case workCompletion
        /// Nothing happened within the time limit.
        case timeout
        /// Any other failing call.
        case call
    }

    public let kind: Kind
    /// The C function (or step) that failed, e.g. "ibv_reg_mr".
    public let operation: String
    /// errno as reported by the call, if the call reports one.
    public let errnoCode: Int32?
    /// What was being done, in words.
    public let message: String
    /// What a person can do about it, if we know.
    public let hint: String?

    public init(_ kind: Kind, operation: String, errno errnoCode: Int32? = nil, message: String,
                hint: String? = nil) {
        self.kind = kind
        self.operation = operation
        self.errnoCode = errnoCode
        self.message = message
        self.hint = hint
    }

    public var description: String {
        var text = "\(operation): \(message)"
        if let code = errnoCode {
            text += " [\(VerbsError.errnoName(code)): \(VerbsError.errnoText(code))]"
        }
        if let hint {
            text += "\n  hint: \(hint)"
        }
        return text
    }

    /// strerror(code), thread-safe.
    public static func errnoText(_ code: Int32) -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        // Swift sees the XSI strerror_r (returns 0 and fills the buffer).
        guard strerror_r(code, &buffer, buffer.count) == 0 else { return "errno \(code)" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The symbolic name of the errno values this layer meets, else "errno N".
    public static func errnoName(_ code: Int32) -> String {
        switch code {
        case EPERM: return "EPERM"
        case ENOENT: return "ENOENT"
        case EINTR: return "EINTR"
        case ENXIO: return "ENXIO"
        case EAGAIN: return "EAGAIN"
        case ENOMEM: return "ENOMEM"
        case EACCES: return "EACCES"
        case EFAULT: return "EFAULT"
        case EBUSY: return "EBUSY"
        case ENODEV: return "ENODEV"
        case EINVAL: return "EINVAL"
        case ENOSPC: return "ENOSPC"
        case ENOSYS: return "ENOSYS"
        case EOPNOTSUPP: return "EOPNOTSUPP"
        case EADDRINUSE: return "EADDRINUSE"
        case EADDRNOTAVAIL: return "EADDRNOTAVAIL"
        case ENETUNREACH: return "ENETUNREACH"
        case ECONNRESET: return "ECONNRESET"
        case ETIMEDOUT: return "ETIMEDOUT"
        case ECONNREFUSED: return "ECONNREFUSED"
        case EHOSTUNREACH: return "EHOSTUNREACH"
        default: return "errno \(code)"
        }
    }

    /// A failing call that set errno (read errno before anything else can change it).
    static func call(_ operation: String, errno code: Int32, _ message: String,
                     hint: String? = nil) -> VerbsError {
        VerbsError(.call, operation: operation, errno: code, message: message, hint: hint)
    }
}
