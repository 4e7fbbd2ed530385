"""Who may talk to a server, and as whom: TLS credentials, bearer tokens, loopback-only binds.

* TLS: `server_credentials` (a certificate and key, optionally a CA whose client certificates
  are required: mutual TLS) and `channel_credentials` (a CA to trust, optionally a client
  certificate and key) read PEM files and fail with `SecurityConfigError` naming the file.
* Binds: a server without TLS listens on loopback only unless told `insecure=True`
  (`check_bind`), so a plaintext port is never exposed by accident.
* Tokens: `TokenTable` maps each bearer token to the principals it speaks for (a JSON object
  file, `{"<token>": ["user:ana", "group:payments"], ...}`). A request can only narrow those
  principals (`effective_principals`). Tokens are compared in constant time and never logged.

Only the standard library here; grpc is imported where credentials are built.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

from .errors import FastctxError

log = logging.getLogger("fastctx.auth")

MIN_TOKEN_CHARS = 16        # shorter strings are guessable, not secrets
MAX_TOKENS = 100_000
MAX_PRINCIPALS = 1_024
MAX_TOKEN_FILE_BYTES = 16 << 20


class SecurityConfigError(FastctxError, ValueError):
    """A certificate, key, CA or token file is missing or malformed, or a bind would expose a
    plaintext port. Names the file or the address."""


class AuthError(FastctxError, PermissionError):
    """A server refused the caller: no or unknown token (``code == "UNAUTHENTICATED"``) or
    principals the token does not hold (``code == "PERMISSION_DENIED"``)."""

    def __init__(self, message: str, code: str = "UNAUTHENTICATED"):
        self.code = code
        super().__init__(message)


# ------------------------------------------------------------------------------------ binds
def is_loopback(host: str) -> bool:
    h = host.strip().strip("[]")
    if h.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def check_bind(host: str, tls: bool, insecure: bool) -> None:
    """A plaintext server may listen on loopback only, unless `insecure` is asked for."""
    if not tls and not insecure and not is_loopback(host):
        raise SecurityConfigError(f"refusing to serve plaintext on {host!r} (not a loopback address): pass "
                                  "--tls-cert/--tls-key, or --insecure to expose it without TLS")


# ------------------------------------------------------------------------------------ TLS files
def read_pem(path, what: str) -> bytes:
    """A PEM file's bytes; `what` names it in errors and says which block it must hold (a
    private key when it mentions "key", else a certificate)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise SecurityConfigError(f"{p}: cannot read {what}: {e.strerror or e}") from None
    if b"-----BEGIN " not in data:
        raise SecurityConfigError(f"{p}: {what} is not a PEM file (no '-----BEGIN' line)")
    block = b"PRIVATE KEY-----" if "key" in what else b"CERTIFICATE-----"
    if block not in data:
        raise SecurityConfigError(f"{p}: {what} holds no '{block.decode().rstrip('-')}' PEM block")
    return data


def server_credentials(cert, key, client_ca=None):
    """grpc server credentials; with `client_ca`, clients must present a certificate it signed."""
    import grpc
    if (cert is None) != (key is None):
        raise SecurityConfigError("TLS needs both --tls-cert and --tls-key")
    if cert is None:
        if client_ca is not None:
            raise SecurityConfigError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS)")
        return None
    pair = (read_pem(key, "TLS private key"), read_pem(cert, "TLS certificate"))
    ca = read_pem(client_ca, "client CA certificate") if client_ca is not None else None
    try:
        return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)
    except Exception as e:  # grpc raises plain errors for unusable PEM content
        raise SecurityConfigError(f"{cert}, {key}: unusable TLS certificate or key: {e}") from None


def channel_credentials(ca=None, client_cert=None, client_key=None):
    """grpc channel credentials trusting `ca` (None: the system roots), presenting a client
    certificate when both `client_cert` and `client_key` are given."""
    import grpc
    if (client_cert is None) != (client_key is None):
        raise SecurityConfigError("a client certificate needs both the certificate and its key")
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca, "CA certificate") if ca is not None else None,
        private_key=read_pem(client_key, "client private key") if client_key is not None else None,
        certificate_chain=read_pem(client_cert, "client certificate") if client_cert is not None else None)


# ------------------------------------------------------------------------------------ tokens
def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenTable:
    """Bearer tokens -> principals. `lookup` compares against every token in constant time
    (hashes of equal length, no early exit), so timing says nothing about a token's prefix."""

    def __init__(self, table: dict[str, Sequence[str]], where: str = "tokens"):
        if not isinstance(table, dict):
            raise SecurityConfigError(f"{where}: expected a JSON object mapping each token to a list of principals")
        if len(table) > MAX_TOKENS:
            raise SecurityConfigError(f"{where}: {len(table)} tokens, at most {MAX_TOKENS}")
        self._entries: list[tuple[bytes, tuple[str, ...]]] = []
        for i, (tok, prin) in enumerate(table.items()):
            name = f"{where}: token #{i + 1}"      # never the token itself
            if not isinstance(tok, str) or len(tok.strip()) < MIN_TOKEN_CHARS or tok != tok.strip() \
                    or not tok.isprintable():
                raise SecurityConfigError(f"{name}: a token must be a printable string of at least "
                                          f"{MIN_TOKEN_CHARS} characters without surrounding spaces")
            if not isinstance(prin, list) or len(prin) > MAX_PRINCIPALS or not all(
                    isinstance(p, str) and p and p == p.strip() and len(p) <= 4096 for p in prin):
                raise SecurityConfigError(f"{name}: principals must be a list of non-empty strings "
                                          f"(e.g. [\"user:ana\", \"group:payments\"]), got {str(prin)[:80]}")
            self._entries.append((_digest(tok), tuple(dict.fromkeys(prin))))

    @classmethod
    def load(cls, path) -> "TokenTable":
        p = Path(path)
        try:
            if not p.is_file():
                raise SecurityConfigError(f"{p}: token file not found (or not a regular file)")
            if p.stat().st_size > MAX_TOKEN_FILE_BYTES:
                raise SecurityConfigError(f"{p}: token file larger than {MAX_TOKEN_FILE_BYTES} bytes")
            table = json.loads(p.read_text(encoding="utf-8"))
        except SecurityConfigError:
            raise
        except (OSError, UnicodeDecodeError) as e:
            raise SecurityConfigError(f"{p}: cannot read token file: {e}") from None
        except (ValueError, RecursionError) as e:
            raise SecurityConfigError(f"{p}: token file is not valid JSON: {str(e)[:120]}") from None
        return cls(table, where=str(p))

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, token: Optional[str]) -> Optional[tuple[str, ...]]:
        """The token's principals, or None for a missing or unknown token."""
        if not token:
            return None
        d = _digest(token)
        found = None
        for digest, prin in self._entries:
            if hmac.compare_digest(digest, d) and found is None:
                found = prin
        return found


def bearer(metadata) -> Optional[str]:
    """The token of an ``authorization: Bearer <token>`` metadata entry (None when absent)."""
    for k, v in metadata or ():
        if k.lower() == "authorization" and isinstance(v, str):
            scheme, _, tok = v.strip().partition(" ")
            if scheme.lower() == "bearer" and tok.strip():
                return tok.strip()
    return None


def effective_principals(held: Sequence[str], asked: Optional[Sequence[str]]) -> tuple[str, ...]:
    """A request can only narrow its token's principals: all of them when it names none, else
    the ones it names that the token holds. Raises AuthError (PERMISSION_DENIED) when that
    leaves nothing."""
    if asked is None:
        return tuple(held)
    keep = tuple(p for p in dict.fromkeys(asked) if p in set(held))
    if not keep:
        raise AuthError("none of the requested principals is held by this token", "PERMISSION_DENIED")
    return keep
