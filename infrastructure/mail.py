"""Mail transport: SMTP (plain, STARTTLS, implicit TLS) and a local Maildir, chosen by one URL.

Exactly-once delivery over SMTP is impossible (a crash between the server's ``250`` and recording the result
looks the same as a crash before sending), so the mailers give their caller what an *effectively-once* policy
needs: success is reported only once the message was accepted for every recipient, timeouts are short so the
ambiguous window stays small, and a failure says (``outcome_unknown``) whether it happened after the message
body may have reached the server.

Many messages go over one connection through a session (``SmtpMailer.session``, or ``open_session`` for any
mailer): each keeps ``send``'s contract, the connection is reopened after a failure, and a connection the
server closed while idle is noticed before anything of the next message was sent, which then goes out over a
new one. A hook right before each message's end-of-data line lets the caller finish recording the previous
one first.
"""

from __future__ import annotations

import contextlib
import copy
import email.policy
import io
import mailbox
import os
import re
import smtplib
import socket
import ssl
import stat
from collections.abc import Callable, Iterator, Mapping
from email.generator import BytesGenerator
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable
from urllib.parse import parse_qsl, unquote, urlsplit

from infrastructure.settings import private_folder

__all__ = [
    "MailDeliveryError",
    "MailSession",
    "MaildirMailer",
    "Mailer",
    "SmtpMailer",
    "SmtpSession",
    "mailer_from_url",
    "open_session",
]


class MailDeliveryError(Exception):
    """The message was not accepted for every recipient.

    ``smtp_code`` is the server's reply code when there was one; ``refused`` maps each refused recipient
    to its ``(code, reply)``. ``outcome_unknown`` is true when the failure happened after the message
    body may already have reached the server (e.g. a timeout waiting for the final reply to DATA): the
    mail may have been delivered, which an at-most-once policy must treat as "sent".
    """

    def __init__(
        self,
        message: str,
        *,
        smtp_code: int | None = None,
        refused: Mapping[str, tuple[int, str]] | None = None,
        outcome_unknown: bool = False,
    ) -> None:
        super().__init__(message)
        self.smtp_code = smtp_code
        self.refused: dict[str, tuple[int, str]] = dict(refused or {})
        self.outcome_unknown = outcome_unknown

    @property
    def permanent(self) -> bool:
        """True when every reply code involved is 5xx, i.e. retrying the same message will not help."""
        codes = [code for code, _ in self.refused.values()]
        if self.smtp_code is not None:
            codes.append(self.smtp_code)
        return bool(codes) and all(500 <= code < 600 for code in codes)


class Mailer(Protocol):
    def send(self, message: EmailMessage) -> None:
        """Return only once the message is durably accepted for all recipients; else raise
        MailDeliveryError. Malformed messages (no sender, no recipients) raise ValueError."""
        ...


class MailSession(Protocol):
    """Messages sent one after another through one transport (one SMTP connection), each with ``Mailer.send``'s
    contract; ``before_end`` runs right before the server is told the message is complete (``SmtpSession``)."""

    def send(self, message: EmailMessage, *, before_end: Callable[[], None] | None = None) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class SessionMailer(Protocol):
    def session(self) -> MailSession: ...


class MessageByMessage:
    """A session over a mailer that has none: each message is its own delivery."""

    def __init__(self, mailer: Mailer) -> None:
        self._mailer = mailer

    def send(self, message: EmailMessage, *, before_end: Callable[[], None] | None = None) -> None:
        _envelope(message)  # a malformed message is refused before the caller's hook runs
        if before_end is not None:
            before_end()
        self._mailer.send(message)

    def close(self) -> None:
        return None


def open_session(mailer: Mailer) -> MailSession:
    """A session over ``mailer``: its own when it has one (SMTP: one connection), else message by message.
    Close it when done (``contextlib.closing``)."""
    if isinstance(mailer, SessionMailer):
        return mailer.session()
    return MessageByMessage(mailer)


def _envelope(message: EmailMessage) -> tuple[str, list[str]]:
    # Mirrors smtplib.send_message: Sender wins over From, and Bcc recipients get the mail without
    # appearing in it.
    senders = getaddresses([str(v) for v in message.get_all("Sender", []) or message.get_all("From", [])])
    if len(senders) != 1 or not senders[0][1]:
        raise ValueError("the message needs exactly one From (or Sender) address")
    recipients: list[str] = []
    for field in ("To", "Cc", "Bcc"):
        for _, addr in getaddresses([str(v) for v in message.get_all(field, [])]):
            if addr and addr not in recipients:
                recipients.append(addr)
    if not recipients:
        raise ValueError("the message has no recipients")
    return senders[0][1], recipients


def _flatten(message: EmailMessage, *, utf8: bool) -> bytes:
    stripped = copy.copy(message)
    del stripped["Bcc"]
    del stripped["Resent-Bcc"]
    buffer = io.BytesIO()
    BytesGenerator(buffer, policy=email.policy.SMTPUTF8 if utf8 else email.policy.SMTP).flatten(stripped)
    return buffer.getvalue()


_DEFAULT_PORTS = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
# QUIT is sent after the server already accepted the mail, while the caller has not yet recorded the
# result; a slow QUIT would widen that crash window, so it gets a tight deadline.
_QUIT_TIMEOUT = 2.0


class SmtpMailer:
    """Deliver through an SMTP server with smtplib.

    URL forms:

    * ``smtp://host[:port]`` plain SMTP, port 25 by default.
    * ``smtp://host:587?starttls=true`` or ``smtp+starttls://host[:port]`` (port 587 by default):
      STARTTLS is mandatory; a server that does not offer it is an error, never a silent downgrade.
    * ``smtps://host[:port]`` implicit TLS, port 465 by default.
    * ``smtp://user:pass@host:port`` authenticates with AUTH; user and password are percent-decoded, so
      write ``@`` as ``%40``, ``:`` as ``%3A`` and ``%`` as ``%25``. Prefer a TLS form with credentials.
    * ``?timeout=5`` sets the per-operation socket timeout in seconds (overrides ``timeout``).

    TLS certificates are verified against the system trust store unless ``ssl_context`` is given
    (e.g. one that trusts a private CA). The password is kept out of ``repr`` and error messages.
    """

    def __init__(self, url: str, *, timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise ValueError(
                f"unsupported mail URL scheme {parts.scheme!r}: use smtp://, smtp+starttls:// or smtps://"
            )
        try:
            port = parts.port
        except ValueError:
            raise ValueError("invalid port in SMTP URL") from None
        host = parts.hostname
        if not host:
            raise ValueError("SMTP URL needs a host, e.g. smtp://mail.example.com:25")
        if parts.path not in ("", "/") or parts.fragment:
            raise ValueError("SMTP URL must not have a path or fragment")

        starttls = scheme == "smtp+starttls"
        try:
            query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        except ValueError:
            raise ValueError("malformed query string in SMTP URL") from None
        for key, value in query:
            if key == "starttls":
                if value.lower() in _TRUE:
                    starttls = True
                elif value.lower() in _FALSE:
                    if scheme == "smtp+starttls":
                        raise ValueError("smtp+starttls:// cannot be combined with starttls=false")
                    starttls = False
                else:
                    raise ValueError(f"starttls must be true or false, got {value!r}")
            elif key == "timeout":
                try:
                    timeout = float(value)
                except ValueError:
                    raise ValueError(f"timeout must be a number of seconds, got {value!r}") from None
            else:
                # A typo such as ?startls=true must not silently send in cleartext.
                raise ValueError(f"unknown SMTP URL parameter {key!r} (known: starttls, timeout)")
        if scheme == "smtps" and starttls:
            raise ValueError("smtps:// already uses implicit TLS; starttls=true does not apply")
        if not timeout > 0 or timeout == float("inf"):
            raise ValueError("timeout must be a positive, finite number of seconds")

        username = unquote(parts.username) if parts.username is not None else None
        password = unquote(parts.password) if parts.password is not None else None
        if (username is None) != (password is None) or (username is not None and not username):
            raise ValueError("SMTP credentials need both a user name and a password (smtp://user:pass@host)")

        self._scheme = scheme
        self._host = host
        self._port = port if port is not None else _DEFAULT_PORTS[scheme]
        self._starttls = starttls
        self._timeout = timeout
        self._username = username
        self._password = password
        self._ssl_context = ssl_context

    def __repr__(self) -> str:
        mode = "smtps" if self._scheme == "smtps" else ("starttls" if self._starttls else "plain")
        user = f"{self._username}:***@" if self._username is not None else ""
        return f"SmtpMailer({user}{self._target}, tls={mode}, timeout={self._timeout:g})"

    @property
    def _target(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self._port}"

    def _tls_context(self) -> ssl.SSLContext:
        return self._ssl_context if self._ssl_context is not None else ssl.create_default_context()

    def _connect(self) -> smtplib.SMTP:
        if self._scheme == "smtps":
            return smtplib.SMTP_SSL(
                self._host, self._port, timeout=self._timeout, context=self._tls_context()
            )
        return smtplib.SMTP(self._host, self._port, timeout=self._timeout)

    def _open(self) -> smtplib.SMTP:
        """A connection ready for MAIL FROM: greeted, encrypted and logged in as the URL says."""
        target = self._target
        try:
            client = self._connect()
        except (OSError, smtplib.SMTPException) as exc:
            raise MailDeliveryError(
                f"cannot connect to SMTP server {target}: {exc}",
                smtp_code=getattr(exc, "smtp_code", None),
            ) from exc
        with _conversation(target, client.close):
            if client.sock is not None:
                # A message's end-of-data line is sent on its own, after the message (``SmtpSession``); with
                # Nagle's algorithm it would wait for the server's delayed acknowledgement of the message.
                client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.ehlo()
            if self._starttls:
                if not client.has_extn("starttls"):
                    raise MailDeliveryError(f"SMTP server {target} does not offer STARTTLS")
                client.starttls(context=self._tls_context())
                client.ehlo()
            if self._username is not None and self._password is not None:
                client.login(self._username, self._password)
        return client

    def session(self) -> SmtpSession:
        """Many messages over one connection, opened for the first and reopened after a failure."""
        return SmtpSession(self)

    def send(self, message: EmailMessage) -> None:
        with contextlib.closing(self.session()) as session:
            session.send(message)


@contextlib.contextmanager
def _conversation(target: str, drop: Callable[[], None], *, outcome_unknown: bool = False) -> Iterator[None]:
    """Any failure of an SMTP exchange as a ``MailDeliveryError``, the connection dropped first."""
    try:
        yield
    except MailDeliveryError:
        drop()
        raise
    except smtplib.SMTPResponseException as exc:
        drop()
        raise _answered(target, exc) from exc
    except (OSError, smtplib.SMTPException) as exc:
        drop()
        raise MailDeliveryError(
            f"SMTP conversation with {target} failed: {type(exc).__name__}: {exc}",
            outcome_unknown=outcome_unknown,
        ) from exc


class _StaleConnection(Exception):
    """A kept connection turned out closed before the message's DATA: nothing of the message was sent."""


def _answered(target: str, exc: smtplib.SMTPResponseException) -> MailDeliveryError:
    # A reply code is a definite answer, so the outcome is known even during DATA.
    detail = exc.smtp_error
    text = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
    return MailDeliveryError(f"SMTP server {target} answered {exc.smtp_code} {text}", smtp_code=exc.smtp_code)


# A server that closes the channel (an idle timeout, a restart) answers 421 to the next command.
_CLOSING_CHANNEL = 421
_END_OF_DATA = b".\r\n"
_LINE_STARTING_WITH_A_DOT = re.compile(rb"(?m)^\.")


def _dot_stuffed(payload: bytes) -> bytes:
    """The message as DATA carries it (RFC 5321 4.5.2), ending in a line break, without the end-of-data line."""
    stuffed = _LINE_STARTING_WITH_A_DOT.sub(b"..", payload)
    return stuffed if stuffed.endswith(b"\r\n") else stuffed + b"\r\n"


class SmtpSession:
    """Messages sent one after another over one SMTP connection, each with ``SmtpMailer.send``'s contract.

    The connection is opened for the first message and kept for the next; after any failure it is dropped,
    and the next message opens a new one. A kept connection that the server closed meanwhile (an idle
    timeout, a 421) is noticed at MAIL FROM or RCPT TO, before anything of the message reached the server,
    so that message is sent again at once over a new connection: the drop is not reported as a failure.

    ``before_end`` (optional) runs once the server accepted the sender and every recipient and has received
    the message, right before the end-of-data line that makes it take the message: the caller's last chance
    to stop. An exception from it propagates and the connection is dropped without that line, so the server
    discards the message (RFC 5321: a message is delivered only once its end of data arrived). The expiry
    senders use it to make the previous message's record durable first, so that at most one accepted message
    is ever unrecorded, while everything before that line overlaps with the record.
    """

    def __init__(self, mailer: SmtpMailer) -> None:
        self._mailer = mailer
        self._client: smtplib.SMTP | None = None

    def __enter__(self) -> SmtpSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send(self, message: EmailMessage, *, before_end: Callable[[], None] | None = None) -> None:
        sender, recipients = _envelope(message)
        international = not all(a.isascii() for a in [sender, *recipients])
        payload = _flatten(message, utf8=international)
        if self._client is not None:
            try:
                self._deliver(self._client, sender, recipients, payload, international, before_end, kept=True)
                return
            except _StaleConnection:
                self._drop()
        self._client = self._mailer._open()
        self._deliver(self._client, sender, recipients, payload, international, before_end, kept=False)

    def close(self) -> None:
        """Say goodbye on a connection that is still good; never raises."""
        if self._client is not None:
            client, self._client = self._client, None
            _quit_quietly(client)

    def _drop(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            client.close()

    def _deliver(
        self,
        client: smtplib.SMTP,
        sender: str,
        recipients: list[str],
        payload: bytes,
        international: bool,
        before_end: Callable[[], None] | None,
        *,
        kept: bool,
    ) -> None:
        target = self._mailer._target
        with _conversation(target, self._drop):
            try:
                self._envelope_accepted(client, sender, recipients, payload, international, kept=kept)
            except smtplib.SMTPResponseException:
                raise
            except (OSError, smtplib.SMTPException) as exc:
                if kept:  # the server hung up while the connection was idle: nothing of this message was sent
                    raise _StaleConnection from exc
                raise
        # Without its end-of-data line, a message is never delivered: a failure up to there is a plain failure.
        with _conversation(target, self._drop):
            # The message goes over now, all but its end: the server takes nothing before the end-of-data line.
            code, reply = client.docmd("DATA")
            if code != 354:
                raise MailDeliveryError(
                    f"SMTP server {target} refused the message: {code} {reply.decode(errors='replace')}",
                    smtp_code=code,
                )
            client.send(_dot_stuffed(payload))
        if before_end is not None:
            try:
                before_end()
            except BaseException:
                self._drop()  # the cut message is discarded by the server; a new connection starts clean
                raise
        # After the end-of-data line the message may have reached the server: a retry must expect a duplicate.
        with _conversation(target, self._drop, outcome_unknown=True):
            client.send(_END_OF_DATA)
            code, reply = client.getreply()
            if code != 250:
                raise MailDeliveryError(
                    f"SMTP server {target} rejected the message: {code} {reply.decode(errors='replace')}",
                    smtp_code=code,
                )

    def _envelope_accepted(
        self,
        client: smtplib.SMTP,
        sender: str,
        recipients: list[str],
        payload: bytes,
        international: bool,
        *,
        kept: bool,
    ) -> None:
        target = self._mailer._target
        mail_options: list[str] = []
        if international:
            if not client.has_extn("smtputf8"):
                raise MailDeliveryError(f"SMTP server {target} does not support SMTPUTF8 addresses")
            mail_options += ["SMTPUTF8", "BODY=8BITMIME"]
        elif not payload.isascii() and client.has_extn("8bitmime"):
            mail_options.append("BODY=8BITMIME")

        code, reply = client.mail(sender, mail_options)
        if code == _CLOSING_CHANNEL and kept:
            raise _StaleConnection
        if code != 250:
            raise MailDeliveryError(
                f"SMTP server {target} refused sender: {code} {reply.decode(errors='replace')}",
                smtp_code=code,
            )
        refused: dict[str, tuple[int, str]] = {}
        for rcpt in recipients:
            code, reply = client.rcpt(rcpt)
            if code == _CLOSING_CHANNEL and kept:
                raise _StaleConnection
            if code not in (250, 251):
                refused[rcpt] = (code, reply.decode(errors="replace"))
        if refused:
            # Abort before DATA so nobody receives a copy; a partial delivery would turn every retry
            # into duplicates for the recipients that were accepted.
            raise MailDeliveryError(
                f"SMTP server {target} refused {len(refused)} of {len(recipients)} recipients: "
                + ", ".join(f"{addr} ({c} {r})" for addr, (c, r) in refused.items()),
                refused=refused,
            )


def _quit_quietly(client: smtplib.SMTP) -> None:
    # The message is already accepted; a failing QUIT must not turn success into a reported failure,
    # because the caller would then resend and deliver a duplicate.
    try:
        if client.sock is not None:
            client.sock.settimeout(min(_QUIT_TIMEOUT, client.sock.gettimeout() or _QUIT_TIMEOUT))
        client.quit()
    except (OSError, smtplib.SMTPException):
        client.close()


class _PrivateMaildir(mailbox.Maildir):
    """A Maildir whose message files are 0600 whatever the umask (mailbox creates them 0666 less the umask)."""

    def _create_tmp(self) -> BinaryIO:
        # typeshed leaves this hook out; it is where mailbox.Maildir creates every message file.
        handle: BinaryIO = super()._create_tmp()  # type: ignore[misc]
        # Still empty: nothing was readable before this, and the folders are 0700 besides.
        os.fchmod(handle.fileno(), 0o600)
        return handle


class MaildirMailer:
    """Deliver into a local Maildir, for development and embedded mode.

    mailbox.Maildir writes each message to ``tmp/``, fsyncs it and renames it into ``new/``, so a reader
    never sees a half-written message; the ``new/`` directory is fsynced afterwards so the rename itself
    survives a power loss. The Maildir and its subfolders are 0700 (tightened if an older version left them
    open) and every message file 0600: the mails name tokens and their owners.
    """

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        # mailbox.Maildir only creates the folder when it is missing entirely, so an existing but empty
        # directory would fail on first delivery; create every subfolder up front instead.
        self._path.mkdir(mode=0o700, parents=True, exist_ok=True)
        for sub in ("tmp", "new", "cur"):
            (self._path / sub).mkdir(mode=0o700, exist_ok=True)
        for folder in (self._path, *(self._path / sub for sub in ("tmp", "new", "cur"))):
            status = folder.stat()
            if stat.S_IMODE(status.st_mode) & 0o077 and status.st_uid == os.geteuid():
                folder.chmod(0o700)
        self._maildir = _PrivateMaildir(self._path, create=False)

    def __repr__(self) -> str:
        return f"MaildirMailer({str(self._path)!r})"

    @property
    def path(self) -> Path:
        return self._path

    def session(self) -> MessageByMessage:
        """Each message is fsynced on its own: a Maildir has no connection to keep."""
        return MessageByMessage(self)

    def send(self, message: EmailMessage) -> None:
        _envelope(message)  # same malformed-message contract as SMTP
        try:
            self._maildir.add(message)
            fd = os.open(self._path / "new", os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except (OSError, mailbox.Error) as exc:
            raise MailDeliveryError(f"cannot write to Maildir {self._path}: {exc}") from exc


def mailer_from_url(url: str | None, *, data_dir: Path) -> Mailer:
    """Build the mailer configured by ``DEPLOY_TOKENS_SMTP_URL``; unset or empty means a Maildir in
    ``data_dir / "maildir"``."""
    if not url:
        # The data folder may not exist yet (PostgreSQL with an explicit secret creates nothing else there).
        private_folder(Path(data_dir))
        return MaildirMailer(Path(data_dir) / "maildir")
    return SmtpMailer(url)
