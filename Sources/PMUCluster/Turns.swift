import PMUCore

/// One-at-a-time work for an actor whose operations await: a turn starts only after the previous
/// turn has finished, which actor isolation alone does not give (calls interleave at awaits).
public enum Turns {
    /// Schedules `body` after `previous`; the caller stores `tail` as its new previous and awaits
    /// `result`.
    public static func after<T: Sendable>(_ previous: Task<Void, Never>?, _ body: @escaping @Sendable () async throws(PMUError) -> T)
        -> (result: Task<Result<T, PMUError>, Never>, tail: Task<Void, Never>)
    {
        let turn = Task<Result<T, PMUError>, Never> {
            await previous?.value
            do throws(PMUError) {
                return .success(try await body())
            } catch {
                return .failure(error)
            }
        }
        return (turn, Task { _ = await turn.value })
    }
}
