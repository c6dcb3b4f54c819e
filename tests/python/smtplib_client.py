"""Python's smtplib, a third-party SMTP client, against the ACS-like relay stand-in.

Prints one JSON line per step; tests/smtp_clients.rs asserts them. Environment:
RELAY_HOST, RELAY_PORT, RELAY_CA (PEM file), RELAY_USERNAME, RELAY_PASSWORD (a secret the
relay accepts), RELAY_FROM (an allowed sender).
"""
import base64
import json
import os
import smtplib
import ssl


def say(step, **facts):
    print(json.dumps({"step": step, **facts}), flush=True)


def connect():
    client = smtplib.SMTP(os.environ["RELAY_HOST"], int(os.environ["RELAY_PORT"]), timeout=20)
    client.ehlo("smtplib.test")
    say("ehlo_before_tls", starttls=client.has_extn("starttls"), auth=client.esmtp_features.get("auth"))
    context = ssl.create_default_context(cafile=os.environ["RELAY_CA"])
    client.starttls(context=context)
    client.ehlo("smtplib.test")
    # smtplib keeps the space after "AUTH" in the value it stores.
    say("ehlo_after_tls", auth=client.esmtp_features.get("auth", "").strip(), size=client.esmtp_features.get("size", ""))
    return client


username, password = os.environ["RELAY_USERNAME"], os.environ["RELAY_PASSWORD"]
sender = os.environ["RELAY_FROM"]

client = connect()
plain = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
code, reply = client.docmd("AUTH", "PLAIN " + plain)
say("auth_plain", code=code, reply=reply.decode(errors="replace"))
client.quit()

client = connect()
try:
    client.login(username, "not-the-secret")
    say("login_wrong_secret", code=235)
except smtplib.SMTPAuthenticationError as error:
    say("login_wrong_secret", code=error.smtp_code, reply=error.smtp_error.decode(errors="replace"))
client.quit()

client = connect()
code, reply = client.login(username, password)
say("login", code=code)
message = f"From: {sender}\r\nTo: canary@contoso.example\r\nSubject: smtplib\r\n\r\nhello\r\n"
refused = client.sendmail(sender, ["canary@contoso.example"], message)
say("sendmail", refused=list(refused))
try:
    client.sendmail("someone@not-allowed.example", ["canary@contoso.example"], message)
    say("foreign_sender", code=250)
except smtplib.SMTPSenderRefused as error:
    say("foreign_sender", code=error.smtp_code, reply=error.smtp_error.decode(errors="replace"))
except smtplib.SMTPRecipientsRefused as error:
    codes = [code for code, _ in error.recipients.values()]
    say("foreign_sender", code=codes[0] if codes else 0, reply="refused at RCPT")
client.quit()
