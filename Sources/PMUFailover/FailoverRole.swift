/// `pmu-server --role`: the primary serves the service address; the monitor heartbeats it and
/// takes the address over when it stops answering.
public enum FailoverRole: String, Sendable, Codable, CaseIterable {
    case primary
    case monitor

    var wireValue: UInt8 { self == .primary ? 1 : 2 }

    init?(wireValue: UInt8) {
        switch wireValue {
        case 1: self = .primary
        case 2: self = .monitor
        default: return nil
        }
    }
}
