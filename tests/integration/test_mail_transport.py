"""The mail transport against a real aiosmtpd server on loopback (no mocks), a Maildir, and mailer URLs."""

from __future__ import annotations

import asyncio
import email
import email.policy
import mailbox
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from deploy_tokens.expiry_mail import message_id
from infrastructure.mail import MailDeliveryError, MaildirMailer, SmtpMailer, mailer_from_url, open_session

from ..ports import free_port
from ..tls import LocalCertificate
from ..unit.test_expiry_mail import DOMAIN, SENDER, make_message, make_notice

# --------------------------------------------------------------------------- SMTP sink


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool
    authenticated: bool


@dataclass
class Sink:
    data_reply: str = "250 OK"
    refuse: frozenset[str] = frozenset()
    data_delay: float = 0.0
    quit_delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    data_calls: int = 0
    # Misbehaviour for the session tests, by the ordinal (from 1) of the DATA or MAIL command concerned.
    hang_up_after_data: frozenset[int] = frozenset()  # close the connection right after the 250
    cut_in_data: frozenset[int] = frozenset()  # close it before storing or answering
    closing_at_mail: frozenset[int] = frozenset()  # answer 421 to MAIL FROM and close
    mail_calls: int = 0
    connections: int = 0

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.connections += 1
        session.host_name = hostname
        return responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        self.mail_calls += 1
        if self.mail_calls in self.closing_at_mail:
            asyncio.get_running_loop().call_soon(server.transport.close)
            return "421 4.4.2 Closing the channel"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.data_calls += 1
        if self.data_calls in self.cut_in_data:
            server.transport.close()
            return "421 connection cut"  # never reaches the client
        if self.data_calls in self.hang_up_after_data:
            asyncio.get_running_loop().call_soon(server.transport.close)  # after the reply is written
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        if self.data_reply.startswith("250"):
            parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            self.received.append(
                Received(
                    mail_from=envelope.mail_from,
                    rcpt_tos=list(envelope.rcpt_tos),
                    message=parsed,
                    tls=server.transport.get_extra_info("ssl_object") is not None,
                    authenticated=bool(session.authenticated),
                )
            )
        return self.data_reply

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        if self.quit_delay:
            await asyncio.sleep(self.quit_delay)
        return "221 Bye"


StartServer = Callable[..., tuple[Sink, int]]


@pytest.fixture
def smtp_server() -> Iterator[StartServer]:
    controllers: list[Controller] = []

    def start(sink: Sink | None = None, **smtp_kwargs: Any) -> tuple[Sink, int]:
        sink = sink or Sink()
        port = free_port()
        controller = Controller(sink, hostname="127.0.0.1", port=port, **smtp_kwargs)
        controller.start()
        controllers.append(controller)
        return sink, port

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> LocalCertificate:
    return LocalCertificate.create(tmp_path_factory.mktemp("tls"))


# --------------------------------------------------------------------------- SmtpMailer


def test_smtp_mailer_delivers_to_every_recipient(smtp_server: StartServer) -> None:
    sink, port = smtp_server()
    message = make_message()
    SmtpMailer(f"smtp://127.0.0.1:{port}").send(message)

    assert len(sink.received) == 1
    got = sink.received[0]
    assert got.mail_from == "noreply@example.com"
    assert got.rcpt_tos == ["ann@example.com", "bob@example.com"]
    assert got.message["Message-ID"] == message_id(make_notice(), DOMAIN)
    assert got.message["Subject"].strip() == message["Subject"]


def test_smtp_mailer_sends_bcc_recipients_without_the_bcc_header(smtp_server: StartServer) -> None:
    sink, port = smtp_server()
    message = make_message()
    message["Bcc"] = "audit@example.com"
    SmtpMailer(f"smtp://127.0.0.1:{port}").send(message)
    got = sink.received[0]
    assert "audit@example.com" in got.rcpt_tos
    assert got.message["Bcc"] is None


@pytest.mark.parametrize(
    ("reply", "code", "permanent"),
    [("451 4.3.0 Try again later", 451, False), ("554 5.7.1 Message rejected", 554, True)],
)
def test_smtp_mailer_raises_when_data_is_rejected(
    smtp_server: StartServer, reply: str, code: int, permanent: bool
) -> None:
    sink, port = smtp_server(Sink(data_reply=reply))
    with pytest.raises(MailDeliveryError) as info:
        SmtpMailer(f"smtp://127.0.0.1:{port}").send(make_message())
    assert info.value.smtp_code == code
    assert info.value.permanent is permanent
    assert info.value.outcome_unknown is False
    assert sink.data_calls == 1
    assert sink.received == []


def test_smtp_mailer_raises_when_nothing_listens() -> None:
    port = free_port()
    with pytest.raises(MailDeliveryError, match="cannot connect") as info:
        SmtpMailer(f"smtp://127.0.0.1:{port}").send(make_message())
    assert info.value.outcome_unknown is False


def test_smtp_mailer_aborts_before_data_when_one_recipient_is_refused(smtp_server: StartServer) -> None:
    sink, port = smtp_server(Sink(refuse=frozenset({"bob@example.com"})))
    with pytest.raises(MailDeliveryError) as info:
        SmtpMailer(f"smtp://127.0.0.1:{port}").send(make_message())
    assert set(info.value.refused) == {"bob@example.com"}
    assert info.value.refused["bob@example.com"][0] == 550
    assert info.value.permanent
    # Nobody got a copy, so a retry cannot duplicate the mail for Ann.
    assert sink.data_calls == 0


def test_smtp_mailer_times_out_quickly_on_a_silent_server() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # the kernel completes the handshake, but no banner ever comes
        port = listener.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(MailDeliveryError):
            SmtpMailer(f"smtp://127.0.0.1:{port}?timeout=0.3").send(make_message())
        assert time.monotonic() - started < 3


def test_smtp_mailer_flags_unknown_outcome_when_data_reply_times_out(smtp_server: StartServer) -> None:
    _, port = smtp_server(Sink(data_delay=1.5))
    with pytest.raises(MailDeliveryError) as info:
        SmtpMailer(f"smtp://127.0.0.1:{port}?timeout=0.3").send(make_message())
    assert info.value.outcome_unknown is True
    assert info.value.smtp_code is None


def test_smtp_mailer_reports_success_even_if_quit_times_out(smtp_server: StartServer) -> None:
    sink, port = smtp_server(Sink(quit_delay=2.0))
    SmtpMailer(f"smtp://127.0.0.1:{port}?timeout=0.3").send(make_message())
    assert len(sink.received) == 1


def test_smtp_mailer_starttls_with_trusted_certificate(
    smtp_server: StartServer, cert: LocalCertificate
) -> None:
    sink, port = smtp_server(tls_context=cert.server_context(), require_starttls=True)
    mailer = SmtpMailer(f"smtp+starttls://127.0.0.1:{port}", ssl_context=cert.client_context())
    mailer.send(make_message())
    assert len(sink.received) == 1
    assert sink.received[0].tls


def test_smtp_mailer_starttls_query_form(smtp_server: StartServer, cert: LocalCertificate) -> None:
    sink, port = smtp_server(tls_context=cert.server_context(), require_starttls=True)
    mailer = SmtpMailer(f"smtp://127.0.0.1:{port}?starttls=true", ssl_context=cert.client_context())
    mailer.send(make_message())
    assert sink.received[0].tls


def test_smtp_mailer_never_downgrades_when_starttls_is_missing(smtp_server: StartServer) -> None:
    sink, port = smtp_server()  # no tls_context: STARTTLS is not offered
    with pytest.raises(MailDeliveryError, match="STARTTLS"):
        SmtpMailer(f"smtp+starttls://127.0.0.1:{port}").send(make_message())
    assert sink.data_calls == 0


def test_smtp_mailer_verifies_the_server_certificate_by_default(
    smtp_server: StartServer, cert: LocalCertificate
) -> None:
    sink, port = smtp_server(tls_context=cert.server_context(), require_starttls=True)
    with pytest.raises(MailDeliveryError, match=r"(?i)certificate"):
        SmtpMailer(f"smtp+starttls://127.0.0.1:{port}").send(make_message())
    assert sink.data_calls == 0


def test_smtp_mailer_implicit_tls(smtp_server: StartServer, cert: LocalCertificate) -> None:
    sink, port = smtp_server(ssl_context=cert.server_context())
    SmtpMailer(f"smtps://127.0.0.1:{port}", ssl_context=cert.client_context()).send(make_message())
    assert len(sink.received) == 1
    assert sink.received[0].tls


def _authenticator(logins: list[tuple[bytes, bytes]]) -> Callable[..., AuthResult]:
    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        logins.append((auth_data.login, auth_data.password))
        ok = auth_data.login == b"deployer" and auth_data.password == b"p@ss:w/rd%"
        # handled=False lets aiosmtpd send the 535 reply itself.
        return AuthResult(success=ok, handled=False)

    return authenticate


def test_smtp_mailer_authenticates_with_percent_decoded_credentials(
    smtp_server: StartServer, cert: LocalCertificate
) -> None:
    logins: list[tuple[bytes, bytes]] = []
    sink, port = smtp_server(
        tls_context=cert.server_context(),
        require_starttls=True,
        authenticator=_authenticator(logins),
        auth_required=True,
    )
    url = f"smtp+starttls://deployer:p%40ss%3Aw%2Frd%25@127.0.0.1:{port}"
    SmtpMailer(url, ssl_context=cert.client_context()).send(make_message())
    assert logins == [(b"deployer", b"p@ss:w/rd%")]
    assert sink.received[0].authenticated


def test_smtp_mailer_wrong_password_is_a_permanent_failure_without_leaking_it(
    smtp_server: StartServer, cert: LocalCertificate
) -> None:
    sink, port = smtp_server(
        tls_context=cert.server_context(),
        require_starttls=True,
        authenticator=_authenticator([]),
        auth_required=True,
    )
    url = f"smtp+starttls://deployer:wrongsecret@127.0.0.1:{port}"
    with pytest.raises(MailDeliveryError) as info:
        SmtpMailer(url, ssl_context=cert.client_context()).send(make_message())
    assert info.value.smtp_code == 535
    assert info.value.permanent
    assert "wrongsecret" not in str(info.value)
    assert sink.data_calls == 0


def test_smtp_mailer_rejects_a_message_without_recipients() -> None:
    message = EmailMessage()
    message["From"] = SENDER
    message.set_content("x")
    with pytest.raises(ValueError, match="recipients"):
        SmtpMailer("smtp://127.0.0.1:1").send(message)


# --------------------------------------------------------------------------- SmtpSession


def message_for(number: int) -> EmailMessage:
    message = make_message()
    message.replace_header("Message-ID", f"<session-{number}@example.com>")
    return message


def received_ids(sink: Sink) -> list[str]:
    return [str(item.message["Message-ID"]) for item in sink.received]


def test_smtp_session_sends_many_messages_over_one_connection(smtp_server: StartServer) -> None:
    sink, port = smtp_server()
    with SmtpMailer(f"smtp://127.0.0.1:{port}").session() as session:
        for number in range(5):
            session.send(message_for(number))
    assert received_ids(sink) == [f"<session-{n}@example.com>" for n in range(5)]
    assert sink.connections == 1


def test_smtp_session_reopens_a_connection_the_server_closed_while_idle(smtp_server: StartServer) -> None:
    sink, port = smtp_server(Sink(hang_up_after_data=frozenset({1, 3})))
    with SmtpMailer(f"smtp://127.0.0.1:{port}").session() as session:
        for number in range(4):
            time.sleep(0.05)  # the server's hang-up has happened before the next message starts
            session.send(message_for(number))  # no error: nothing of the message had been sent
    assert received_ids(sink) == [f"<session-{n}@example.com>" for n in range(4)]
    assert sink.connections == 3


def test_smtp_session_reopens_after_a_421_at_mail_from(smtp_server: StartServer) -> None:
    sink, port = smtp_server(Sink(closing_at_mail=frozenset({2})))
    with SmtpMailer(f"smtp://127.0.0.1:{port}").session() as session:
        session.send(message_for(0))
        session.send(message_for(1))
    assert received_ids(sink) == ["<session-0@example.com>", "<session-1@example.com>"]
    assert (sink.connections, sink.mail_calls) == (2, 3)


def test_smtp_session_a_fresh_connection_that_answers_421_is_a_failure(smtp_server: StartServer) -> None:
    sink, port = smtp_server(Sink(closing_at_mail=frozenset({1})))
    with (
        SmtpMailer(f"smtp://127.0.0.1:{port}").session() as session,
        pytest.raises(MailDeliveryError) as info,
    ):
        session.send(message_for(0))
    assert info.value.smtp_code == 421 and not info.value.outcome_unknown
    assert sink.connections == 1 and sink.received == []


def test_smtp_session_never_resends_a_message_cut_during_data(smtp_server: StartServer) -> None:
    sink, port = smtp_server(Sink(cut_in_data=frozenset({2})))
    with SmtpMailer(f"smtp://127.0.0.1:{port}").session() as session:
        session.send(message_for(0))
        with pytest.raises(MailDeliveryError) as info:
            session.send(message_for(1))  # on the kept connection: it may have arrived, so no retry
        assert info.value.outcome_unknown
        session.send(message_for(2))  # a new connection
    assert sink.data_calls == 3
    assert received_ids(sink) == ["<session-0@example.com>", "<session-2@example.com>"]
    assert sink.connections == 2


def test_smtp_session_before_end_runs_before_the_end_of_data_and_can_stop_the_message(
    smtp_server: StartServer,
) -> None:
    sink, port = smtp_server()
    seen: list[int] = []

    def stop() -> None:
        seen.append(sink.mail_calls)
        raise RuntimeError("not now")

    with SmtpMailer(f"smtp://127.0.0.1:{port}").session() as session:
        with pytest.raises(RuntimeError, match="not now"):
            session.send(message_for(0), before_end=stop)
        session.send(message_for(1), before_end=lambda: seen.append(sink.mail_calls))
    assert seen == [1, 2]  # each time after MAIL FROM, RCPT TO and the message, before its end of data
    assert sink.data_calls == 1 and received_ids(sink) == [
        "<session-1@example.com>"
    ]  # the cut one: discarded
    assert sink.connections == 2  # the stopped transaction's connection was dropped


def test_open_session_over_a_mailer_without_sessions_sends_message_by_message(tmp_path: Path) -> None:
    delivered: list[EmailMessage] = []

    class Recording:
        def send(self, message: EmailMessage) -> None:
            delivered.append(message)

    order: list[str] = []
    session = open_session(Recording())
    session.send(message_for(0), before_end=lambda: order.append(f"before {len(delivered)}"))
    session.close()
    assert order == ["before 0"] and len(delivered) == 1
    maildir = open_session(MaildirMailer(tmp_path / "box"))
    maildir.send(message_for(1))
    assert len(mailbox.Maildir(tmp_path / "box", create=False)) == 1


# --------------------------------------------------------------------------- MaildirMailer


def test_maildir_mailer_writes_exactly_one_readable_message(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "maildir"
    MaildirMailer(path).send(make_message())
    box = mailbox.Maildir(path, create=False)
    stored = list(box)
    assert len(stored) == 1
    assert stored[0]["Message-ID"] == message_id(make_notice(), DOMAIN)
    assert stored[0].get_subdir() == "new"
    assert list((path / "tmp").iterdir()) == []


def test_maildir_mailer_accepts_an_existing_empty_directory(tmp_path: Path) -> None:
    MaildirMailer(tmp_path).send(make_message())
    assert len(mailbox.Maildir(tmp_path, create=False)) == 1


# --------------------------------------------------------------------------- mailer_from_url


@pytest.mark.parametrize("url", [None, ""])
def test_mailer_from_url_defaults_to_a_maildir_in_the_data_dir(tmp_path: Path, url: str | None) -> None:
    mailer = mailer_from_url(url, data_dir=tmp_path)
    assert isinstance(mailer, MaildirMailer)
    mailer.send(make_message())
    assert len(mailbox.Maildir(tmp_path / "maildir", create=False)) == 1


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://mail.example.com", "SmtpMailer(mail.example.com:25, tls=plain, timeout=10)"),
        ("smtp://mail.example.com:2525", "SmtpMailer(mail.example.com:2525, tls=plain, timeout=10)"),
        (
            "smtp://mail.example.com:587?starttls=true",
            "SmtpMailer(mail.example.com:587, tls=starttls, timeout=10)",
        ),
        ("smtp+starttls://mail.example.com", "SmtpMailer(mail.example.com:587, tls=starttls, timeout=10)"),
        ("smtps://mail.example.com", "SmtpMailer(mail.example.com:465, tls=smtps, timeout=10)"),
        ("smtps://mail.example.com:2465", "SmtpMailer(mail.example.com:2465, tls=smtps, timeout=10)"),
        ("smtp://mail.example.com?timeout=5", "SmtpMailer(mail.example.com:25, tls=plain, timeout=5)"),
        ("SMTP://Mail.Example.com/", "SmtpMailer(mail.example.com:25, tls=plain, timeout=10)"),
        ("smtp://[::1]:25", "SmtpMailer([::1]:25, tls=plain, timeout=10)"),
        (
            "smtp+starttls://us%40er:pw@mail.example.com:587",
            "SmtpMailer(us@er:***@mail.example.com:587, tls=starttls, timeout=10)",
        ),
    ],
)
def test_mailer_from_url_parses_smtp_urls(tmp_path: Path, url: str, expected: str) -> None:
    mailer = mailer_from_url(url, data_dir=tmp_path)
    assert isinstance(mailer, SmtpMailer)
    assert repr(mailer) == expected


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("http://mail.example.com", "scheme"),
        ("mail.example.com:25", "scheme"),
        ("smtp://", "host"),
        ("smtp://mail.example.com:99999", "port"),
        ("smtp://mail.example.com:abc", "port"),
        ("smtp://mail.example.com/inbox", "path"),
        ("smtp://mail.example.com?startls=true", "unknown"),
        ("smtp://mail.example.com?starttls=maybe", "starttls"),
        ("smtps://mail.example.com?starttls=true", "implicit TLS"),
        ("smtp+starttls://mail.example.com?starttls=false", "starttls=false"),
        ("smtp://mail.example.com?timeout=abc", "timeout"),
        ("smtp://mail.example.com?timeout=0", "timeout"),
        ("smtp://mail.example.com?timeout=nan", "timeout"),
        ("smtp://user@mail.example.com", "password"),
        ("smtp://:pw@mail.example.com", "user name"),
    ],
)
def test_mailer_from_url_rejects_bad_urls(tmp_path: Path, url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mailer_from_url(url, data_dir=tmp_path)


def test_url_errors_do_not_echo_the_password(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        mailer_from_url("smtp://u:secretpw@mail.example.com:99999", data_dir=tmp_path)
    assert "secretpw" not in str(info.value)


def test_repr_hides_the_password() -> None:
    mailer = SmtpMailer("smtp://u:secretpw@h:25")
    assert "secretpw" not in repr(mailer)
    assert "u:***@h:25" in repr(mailer)
