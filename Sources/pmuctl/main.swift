import Foundation
import PMUCtl

// Thin on purpose: every command lives in PMUCtl.
exit(await PMUCtl.runMain())
