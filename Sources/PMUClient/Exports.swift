// Users of the client library need these types (errors, checkpoint modes, endpoints) without
// naming the internal modules that define them.
@_exported import PMUCheckpoint
@_exported import PMUCore
@_exported import struct PMUTransport.Endpoint
@_exported import enum PMUTransport.TransportChoice
@_exported import enum PMUTransport.RDMAPolling
