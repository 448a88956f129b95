import PMUCore
import PMUVerbs

/// Where region memory may live when clients access it by RDMA.
///
/// The verbs transport registers each granted region's MAP_SHARED mapping with the NIC, which
/// pins its pages long-term. For a file on a filesystem with writeback (ext4, xfs, ...) that is
/// refused on Linux >= 6.5 (ibv_reg_mr fails EFAULT) and unsound before: pages the NIC writes
/// after writeback cleaned them are not marked dirty again, so msync may skip them and PERSIST
/// would report success for bytes that are not on disk. tmpfs and hugetlbfs pages have no
/// writeback, so pinning them is allowed and honest. The price: on tmpfs PERSIST protects
/// against the server process dying (kill -9), not against power loss or a kernel crash.
/// (A shmem shadow copied out to the region file on PERSIST would keep power-loss durability:
/// docs/RDMA_DESIGN.md §4 option 1, not built yet.)
enum RegionMemoryCheck {
    static func requireRegistrable(dataDirectory: String) throws(PMUError) {
        guard !RegistrableFilesystem.allowsRegistration(dataDirectory) else { return }
        throw PMUError(.rdmaError, """
            --transport rdma needs the data directory on tmpfs or hugetlbfs; \(dataDirectory) is on \
            \(RegistrableFilesystem.name(of: dataDirectory)). RDMA pins region memory long-term, which Linux \
            >= 6.5 refuses for files with writeback (ibv_reg_mr fails EFAULT) and which is unsound before \
            (msync can miss pages the NIC wrote, so PERSIST could lie). Use e.g. --data-dir /dev/shm/pmu-data \
            (PERSIST then survives a server crash, not power loss), or --transport tcp for disk durability.
            """)
    }
}
