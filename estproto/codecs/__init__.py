"""EST payload codecs: pure functions and small value types, no I/O, no state.

One module per payload (see each module's header for its RFC sections).
Every decoder enforces a size limit first and raises only
:class:`estproto.DecodeError` (a :class:`estproto.RemoteProtocolError`) on bad
input.
"""
