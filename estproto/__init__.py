"""estproto: a sans-I/O implementation of EST (RFC 7030, RFC 8951).

The package is layered like the protocol: :mod:`estproto.codecs` turns every
EST payload into bytes and back; :class:`ServerConnection` and
:class:`ClientConnection` stack EST over HTTP/1.1 (h11) over TLS (pyOpenSSL
memory BIOs); the EST layer alone (:class:`ESTServerProtocol`) serves hosts
that already have HTTP and TLS. Nothing here touches a socket or a clock.
"""

from ._client_session import (
    ClientSession,
    Connect,
    Disconnect,
    Instruction,
    Read,
    Received,
    Transport,
    Wait,
    WallClock,
    Write,
    drive,
)
from ._config import ClientConfig, ServerConfig
from ._errors import (
    BadSignature,
    ClosedBeforeResponse,
    DecodeError,
    ESTAuthenticationError,
    ESTError,
    ESTPendingError,
    LocalProtocolError,
    MessageTooLarge,
    ProtocolError,
    RemoteProtocolError,
    TLSError,
    TLSVerificationError,
)
from ._est_client import ESTClientProtocol
from ._est_server import ESTServerProtocol, ESTServerSettings, LinePolicyChoice, Reply, RequestRejected
from ._events import (
    NEED_DATA,
    PAUSED,
    AuthenticationChallenged,
    AuthenticationRequired,
    CACertsReceived,
    CACertsRequest,
    CACertsResponse,
    CertificateIssued,
    CertificateResponse,
    ClientRequest,
    ClientResult,
    ConnectionClosed,
    ConnectionFacts,
    ConnectionTerminated,
    CSRAttrsReceived,
    CSRAttrsRequest,
    CSRAttrsResponse,
    EnrollmentPending,
    ErrorReceived,
    ErrorResponse,
    Event,
    FullCMC,
    FullCMCReceived,
    FullCMCRequest,
    FullCMCResponse,
    GetCACerts,
    GetCSRAttrs,
    RawRequest,
    RawResponseReceived,
    Redirected,
    RetryLater,
    ServerKeygen,
    ServerKeygenRequest,
    ServerKeygenResponse,
    ServerKeyReceived,
    ServerRequest,
    ServerResponse,
    SimpleEnroll,
    SimpleEnrollRequest,
    SimpleReenroll,
    SimpleReenrollRequest,
)
from ._http import HTTPLimits
from ._paths import Operation
from ._response_future import InlineHandler, ResponseFuture
from ._state import ConnectionState
from ._tls import ChannelBinding, ClientTLSContext, PeerCertificate, ServerTLSContext, TLSSession
from .client import ClientConnection, Credentials, check_fingerprint
from .server import ServerConnection
from .sync import ESTClient  # the blocking client; async ones: estproto.trio, estproto.asyncio

__version__ = "0.1.0.dev0"

__all__ = [
    # connections and configuration
    "ServerConnection", "ClientConnection", "ServerConfig", "ClientConfig", "ESTClient",
    "ServerTLSContext", "ClientTLSContext", "HTTPLimits", "ESTServerSettings",
    "LinePolicyChoice", "Credentials", "check_fingerprint", "ConnectionState", "Operation",
    # the client's decisions over many connections, and their I/O instructions
    "ClientSession", "drive", "Transport", "Instruction", "Connect", "Write", "Read",
    "Received", "Disconnect", "Wait", "WallClock",
    # handlers that answer on the server's event loop
    "InlineHandler", "ResponseFuture",
    # the EST layer alone
    "ESTServerProtocol", "ESTClientProtocol", "Reply", "RequestRejected",
    # TLS facts
    "ChannelBinding", "PeerCertificate", "ConnectionFacts", "TLSSession",
    # errors
    "ProtocolError", "LocalProtocolError", "RemoteProtocolError", "DecodeError",
    "MessageTooLarge", "BadSignature", "TLSError", "TLSVerificationError",
    "ClosedBeforeResponse", "ESTError", "ESTAuthenticationError", "ESTPendingError",
    # events
    "Event", "NEED_DATA", "PAUSED", "ConnectionClosed", "ConnectionTerminated",
    "ServerRequest", "CACertsRequest", "CSRAttrsRequest", "SimpleEnrollRequest",
    "SimpleReenrollRequest", "ServerKeygenRequest", "FullCMCRequest",
    "ServerResponse", "CACertsResponse", "CertificateResponse", "ServerKeygenResponse",
    "CSRAttrsResponse", "FullCMCResponse", "RetryLater", "AuthenticationRequired",
    "ErrorResponse",
    "ClientRequest", "GetCACerts", "GetCSRAttrs", "SimpleEnroll", "SimpleReenroll",
    "ServerKeygen", "FullCMC", "RawRequest",
    "ClientResult", "CACertsReceived", "CertificateIssued", "EnrollmentPending",
    "CSRAttrsReceived", "ServerKeyReceived", "FullCMCReceived", "AuthenticationChallenged",
    "Redirected", "ErrorReceived", "RawResponseReceived",
]
