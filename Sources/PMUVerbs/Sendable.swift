// The verbs objects are safe to use from several threads: libibverbs serialises what needs it
// (posting to one queue from two threads is allowed; the provider locks). Ownership and
// destruction order stay the caller's business (deinit releases).
extension Context: @unchecked Sendable {}
extension ProtectionDomain: @unchecked Sendable {}
extension MemoryRegion: @unchecked Sendable {}
extension CompletionQueue: @unchecked Sendable {}
extension QueuePair: @unchecked Sendable {}
extension ConnectionID: @unchecked Sendable {}
extension EventChannel: @unchecked Sendable {}
