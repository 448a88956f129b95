#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import PMUCore

/// The process's open-file limit (RLIMIT_NOFILE), applied at start: every connection is a
/// descriptor, and systemd starts services with a soft limit of 1024, lower than
/// `--max-clients 1024` plus everything else the server opens.
enum DescriptorLimit {
    /// Raises the soft limit to the hard limit (allowed without privileges) and returns the
    /// soft limit now in force.
    static func raiseToHard(logger: Logger) -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else {
            logger.warning("cannot read the open-file limit (getrlimit: \(String(cString: strerror(errno)))); assuming 1024")
            return 1024
        }
        let before = limit.rlim_cur
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 {
                limit = raised
                logger.info("open-file limit raised to the hard limit", metadata: ["from": "\(before)", "to": "\(raised.rlim_cur)"])
            } else {
                logger.warning("cannot raise the open-file limit", metadata: ["soft": "\(before)", "hard": "\(limit.rlim_max)", "error": "\(String(cString: strerror(errno)))"])
            }
        }
        // RLIM_INFINITY is all ones (the macro does not import): clamping maps it to Int.max.
        return Int(clamping: limit.rlim_cur)
    }

    /// Descriptors open now (entries of /proc/self/fd, less the one listing it).
    static func openCount() -> Int {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else { return 0 }
        return max(0, entries.count - 1)
    }

    /// Raises the limit, then lowers the connection limits the open-file limit cannot hold,
    /// logging what it lowered and why.
    static func fit(_ configuration: inout ServerConfiguration, logger: Logger) {
        let softLimit = raiseToHard(logger: logger)
        let budget = DescriptorBudget.plan(
            softLimit: softLimit, inUse: openCount(), maxClients: configuration.maxClients, maxAuthenticating: configuration.maxAuthenticating)
        if let warning = budget.warning { logger.warning("\(warning)") }
        configuration.maxClients = budget.maxClients
        configuration.maxAuthenticating = budget.maxAuthenticating
    }
}
