import PMUVerbs

/// Where region memory may live when clients access it by RDMA.
///
/// The verbs transport registers each granted region's memory with the NIC, which pins its pages
/// long-term. For a MAP_SHARED mapping of a file on a filesystem with writeback (ext4, xfs, ...)
/// that is refused on Linux >= 6.5 (ibv_reg_mr fails EFAULT) and unsound before: pages the NIC
/// writes after writeback cleaned them are not marked dirty again, so msync may skip them and
/// PERSIST would report success for bytes that are not on disk. tmpfs and hugetlbfs pages have no
/// writeback, so their file mappings are registered directly; on every other filesystem the store
/// holds each region in a shmem shadow copied out to the file on PERSIST (`RegionMemory.shadow`).
enum RegionMemoryCheck {
    static func registersFileMappings(dataDirectory: String) -> Bool {
        RegistrableFilesystem.allowsRegistration(dataDirectory)
    }
}
