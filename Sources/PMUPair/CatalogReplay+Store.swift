import PMUCore
import PMULog
import PMUStore

extension CatalogReplay {
    /// Runs the steps on `store` in order and returns the mappings written (for the caller to
    /// make durable). Blocks: a created region is preallocated and synced, like any create.
    public func apply(to store: RegionStore) throws(PMUError) -> [UInt64: MappedRegion] {
        var touched: [UInt64: MappedRegion] = [:]
        for step in steps {
            switch step {
            case .create(let region):
                try store.adopt(region)
            case .update(let region):
                try store.replaceMetadata(region)
            case .remove(let region):
                touched[region.id] = nil
                _ = try store.delete(named: region.name) { (_: RegionRecord) throws(PMUError) in }
            case .write(let record):
                let mapping: MappedRegion
                if let known = touched[record.regionId] {
                    mapping = known
                } else {
                    mapping = try store.mapping(id: record.regionId)
                    touched[record.regionId] = mapping
                }
                record.payload.withUnsafeBytes { mapping.write($0, at: record.offset) }
            }
        }
        return touched
    }
}
