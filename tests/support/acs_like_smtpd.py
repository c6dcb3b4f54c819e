#!/usr/bin/env python3
"""An aiosmtpd server configured like the Azure Communication Services SMTP relay.

entra-rotator's SMTP verifier is tested against its own ACS stand-in; this third-party
server is a second judge, so the verifier is not only checked against code we wrote.
Configured like ACS: STARTTLS required before anything else, AUTH required, AUTH LOGIN
only (PLAIN excluded), one accepted username and password, and optionally one allowed
MailFrom address.

The password is read from a file, never from the command line (which other users of the
machine can read in the process list). With --port 0 the system picks a free port; the
first line on stdout is always `listening on 127.0.0.1:<port>`.

Usage: acs_like_smtpd.py --port P --cert C --key K --username U --password-file F
                         [--allowed-sender ADDRESS]
"""

import argparse
import asyncio
import hmac
import ssl
import sys
import warnings

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

# aiosmtpd's own AUTH code still sets a field it deprecated; the warning is noise here.
warnings.filterwarnings("ignore", message="Session.login_data is deprecated")

# The relay's limits as its EHLO answer advertises them.
ACS_MAX_MESSAGE_SIZE = 31457280


class Authenticator:
    """Accepts exactly one username/password pair, with AUTH LOGIN only."""

    def __init__(self, username: str, password: str):
        self._username = username.encode()
        self._password = password.encode()

    def __call__(self, server, session, envelope, mechanism, auth_data):
        if mechanism != "LOGIN" or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        valid = hmac.compare_digest(auth_data.login, self._username) and hmac.compare_digest(
            auth_data.password, self._password
        )
        if valid:
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False, message="535 5.7.3 Authentication unsuccessful")


class Relay:
    """Accepts mail from the allowed sender (any sender when none is configured)."""

    def __init__(self, allowed_sender):
        self._allowed_sender = allowed_sender
        self.accepted = 0

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self._allowed_sender and address.lower() != self._allowed_sender.lower():
            return "550 5.7.60 SMTP; Client does not have permissions to send as this sender"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender OK"

    async def handle_DATA(self, server, session, envelope):
        self.accepted += 1
        return "250 2.6.0 Queued mail for delivery"


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="port to listen on; 0 picks a free one")
    parser.add_argument("--cert", required=True, help="server certificate chain, PEM")
    parser.add_argument("--key", required=True, help="server private key, PEM")
    parser.add_argument("--username", required=True, help="the one username accepted")
    parser.add_argument("--password-file", required=True, help="file holding the one password accepted")
    parser.add_argument("--allowed-sender", help="the only MailFrom address accepted")
    return parser.parse_args()


async def serve(arguments):
    with open(arguments.password_file, encoding="utf-8") as file:
        password = file.read().rstrip("\r\n")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(arguments.cert, arguments.key)
    handler = Relay(arguments.allowed_sender)
    authenticator = Authenticator(arguments.username, password)

    def new_session():
        return SMTP(
            handler,
            hostname="localhost",
            tls_context=tls,
            require_starttls=True,
            auth_required=True,
            auth_require_tls=True,
            auth_exclude_mechanism=["PLAIN"],
            authenticator=authenticator,
            data_size_limit=ACS_MAX_MESSAGE_SIZE,
        )

    server = await asyncio.get_running_loop().create_server(new_session, host="127.0.0.1", port=arguments.port)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main():
    try:
        asyncio.run(serve(parse_arguments()))
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
