"""Python's smtplib, a third-party SMTP client, against the Exchange Online dialect of the
relay stand-in: the XOAUTH2 exchange Microsoft documents for client submission with OAuth.

Prints one JSON line per step; tests/exchange_online.rs asserts them. Environment:
RELAY_HOST, RELAY_PORT, RELAY_CA (PEM file), RELAY_MAILBOX, RELAY_TOKEN (an access token
for Exchange Online), RELAY_PASSWORD (a client secret, tried with basic auth).
"""
import json
import os
import smtplib
import ssl


def say(step, **facts):
    print(json.dumps({"step": step, **facts}), flush=True)


def connect():
    client = smtplib.SMTP(os.environ["RELAY_HOST"], int(os.environ["RELAY_PORT"]), timeout=20)
    client.ehlo("smtplib.test")
    client.starttls(context=ssl.create_default_context(cafile=os.environ["RELAY_CA"]))
    client.ehlo("smtplib.test")
    say("ehlo_after_tls", auth=client.esmtp_features.get("auth", "").strip())
    return client


mailbox, token = os.environ["RELAY_MAILBOX"], os.environ["RELAY_TOKEN"]

client = connect()
try:
    client.login(mailbox, os.environ["RELAY_PASSWORD"])
    say("basic_auth", code=235)
except smtplib.SMTPException as error:
    say("basic_auth", code=getattr(error, "smtp_code", 0), reply=getattr(error, "smtp_error", b"").decode(errors="replace"))
client.close()

client = connect()
code, _ = client.auth("XOAUTH2", lambda challenge=None: f"user={mailbox}\x01auth=Bearer {token}\x01\x01", initial_response_ok=True)
say("xoauth2", code=code)
refused = client.sendmail(mailbox, ["ops@example.com"], f"From: {mailbox}\r\nTo: ops@example.com\r\nSubject: smtplib\r\n\r\nHello.\r\n")
say("sendmail", refused=list(refused))
client.quit()
