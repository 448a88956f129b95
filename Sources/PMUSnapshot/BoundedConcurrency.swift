import PMUCore

/// Runs `body` on every item with at most `limit` running at once; results in completion order.
/// The first error cancels the rest and is rethrown.
func boundedConcurrently<Item: Sendable, Result: Sendable>(
    _ items: [Item], limit: Int, _ body: @escaping @Sendable (Item) async throws(PMUError) -> Result
) async throws(PMUError) -> [Result] {
    do {
        return try await withThrowingTaskGroup(of: Result.self) { group in
            var results: [Result] = []
            results.reserveCapacity(items.count)
            var running = 0
            for item in items {
                if running == limit, let result = try await group.next() {
                    results.append(result)
                    running -= 1
                }
                group.addTask { try await body(item) }
                running += 1
            }
            while let result = try await group.next() { results.append(result) }
            return results
        }
    } catch let error as PMUError {
        throw error
    } catch {
        throw PMUError(.internalError, "unexpected error: \(error)")
    }
}
