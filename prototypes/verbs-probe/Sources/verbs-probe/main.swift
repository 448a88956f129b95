// Thin entry point: the commands live in VerbsProbe.
#if canImport(Glibc)
import Glibc
#endif
import VerbsProbe

exit(Probe.main(CommandLine.arguments))
