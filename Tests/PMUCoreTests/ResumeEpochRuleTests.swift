import PMUCore
import Testing

@Suite struct ResumeEpochRuleTests {
    @Test func theWritersOwnEpochIsRaised() {
        #expect(ResumeEpochRule.decide(stored: 7, asked: 7, lastResumeMatches: false) == .raise)
        #expect(ResumeEpochRule.decide(stored: 7, asked: 7, lastResumeMatches: true) == .raise)
    }

    @Test func onlyTheResumesOwnRaiseIsGrantedAgain() {
        #expect(ResumeEpochRule.decide(stored: 8, asked: 7, lastResumeMatches: true) == .grantAgain)
        // Another writer's OPEN raised it (no matching resume), or raised it further: fenced.
        #expect(ResumeEpochRule.decide(stored: 8, asked: 7, lastResumeMatches: false) == .fenced)
        #expect(ResumeEpochRule.decide(stored: 9, asked: 7, lastResumeMatches: true) == .fenced)
        #expect(ResumeEpochRule.decide(stored: .max, asked: .max - 1, lastResumeMatches: true) == .grantAgain)
    }

    @Test func anOlderStoredEpochIsNotTheWritersStore() {
        #expect(ResumeEpochRule.decide(stored: 6, asked: 7, lastResumeMatches: true) == .refused)
        #expect(ResumeEpochRule.decide(stored: 0, asked: .max, lastResumeMatches: false) == .refused)
    }
}
