#if canImport(Glibc)
import Glibc
#endif
import PMUCore

/// One checkpoint region's writer fence: its current writer epoch behind a reader/writer lock.
///
/// A WRITE holds the lock shared across its epoch check *and* its copy into the mapping; a takeover
/// raises the epoch holding it exclusively. So a takeover can never fall between a stale writer's
/// check and its bytes landing (once `raise` returns, no stale copy is running or can start), while
/// writers of one region, and all other regions, copy in parallel. The server-wide protection
/// table lock is then held for the key lookup only, never across a memcpy or its page faults.
///
/// Writer-preferring, so a takeover is not starved by a stale primary that keeps writing.
final class RegionFence: @unchecked Sendable {
    private let rwlock: UnsafeMutablePointer<pthread_rwlock_t>
    /// Written only under the exclusive lock, read under either.
    private var epoch: UInt64

    init(epoch: UInt64 = 0) {
        self.epoch = epoch
        rwlock = .allocate(capacity: 1)
        var attributes = pthread_rwlockattr_t()
        pthread_rwlockattr_init(&attributes)
        pthread_rwlockattr_setkind_np(&attributes, Int32(PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP))
        let result = pthread_rwlock_init(rwlock, &attributes)
        pthread_rwlockattr_destroy(&attributes)
        precondition(result == 0, "pthread_rwlock_init failed: \(result)")
    }

    deinit {
        pthread_rwlock_destroy(rwlock)
        rwlock.deallocate()
    }

    var currentEpoch: UInt64 {
        pthread_rwlock_rdlock(rwlock)
        defer { pthread_rwlock_unlock(rwlock) }
        return epoch
    }

    /// Runs `body` (the copy) only if `writerEpoch` is still current, with takeovers held off
    /// until it returns.
    func whileCurrent(_ writerEpoch: UInt64, _ body: () -> Void) throws(PMUError) {
        pthread_rwlock_rdlock(rwlock)
        defer { pthread_rwlock_unlock(rwlock) }
        guard writerEpoch >= epoch else {
            throw PMUError(.fenced, "this handle's writer epoch \(writerEpoch) was superseded by epoch \(epoch): another primary opened the region for writing; this writer must stop")
        }
        body()
    }

    /// Raises the epoch (never lowers it). Waits for copies in progress under older epochs.
    func raise(to newEpoch: UInt64) {
        pthread_rwlock_wrlock(rwlock)
        defer { pthread_rwlock_unlock(rwlock) }
        epoch = max(epoch, newEpoch)
    }
}
