#if canImport(Glibc)
import Glibc
#endif

/// What a multi-threaded application uses so that a snapshot can pause its writers: every
/// mutation of the arena runs inside `mutate` (many at once), a snapshot runs inside `pause`
/// (alone). A read-write lock that prefers the pausing side, so a stream of writers cannot
/// starve a snapshot; each mutation should be short (one update), since a pause waits for the
/// mutations already running.
public final class WriterGate: @unchecked Sendable {
    private let lock: UnsafeMutablePointer<pthread_rwlock_t>

    public init() {
        lock = .allocate(capacity: 1)
        var attributes = pthread_rwlockattr_t()
        pthread_rwlockattr_init(&attributes)
        pthread_rwlockattr_setkind_np(&attributes, Int32(PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP))
        pthread_rwlock_init(lock, &attributes)
        pthread_rwlockattr_destroy(&attributes)
    }

    deinit {
        pthread_rwlock_destroy(lock)
        lock.deallocate()
    }

    /// Runs one mutation of the arena. Not reentrant with `pause` on the same thread.
    public func mutate<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }

    /// Runs `body` while no mutation runs.
    public func pause<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        pthread_rwlock_wrlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }
}
