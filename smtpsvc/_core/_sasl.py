"""
SASL mechanisms for AUTH (RFC 4954), each a small state machine.

A mechanism is started with the initial response of the AUTH command (or none) and fed
each continuation line; at every step it answers with a L{Challenge} to send as ``334``,
with the L{AuthRequest} to give to the authentication handlers, or with a L{Refusal}.  Base
64 is decoded strictly here (RFC 4954 section 4: a response that is not base64 is a
``501``); ``*`` cancels any exchange.  Nothing here knows any password: checking is the
handlers' job.

Mechanisms: PLAIN (RFC 4616), LOGIN (draft-murchison-sasl-login), CRAM-MD5 (RFC 2195),
XOAUTH2 (Google) and OAUTHBEARER (RFC 7628).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from . import _replies as R
from ._replies import Reply
from ._saslprep import saslPrep

# Control characters refused in user names and authorisation identities: they would end
# up in logs and trace headers (the reference refuses the same set).
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")


def _unpreparable(authzid: str) -> bool:
    # RFC 4616 section 2: an authorisation identity the client sent that SASLprep
    # prohibits, or maps to nothing, fails the exchange.  Only the verdict is used: the
    # handlers get the identity as sent, like the user name and password, which are not
    # prepared at all (cred checkers compare the strings they get, and accounts made
    # without SASLprep must keep working).  It is compared with stored names, so it is a
    # "query" (RFC 3454 section 7): code points Unicode 3.2 did not assign (emoji, newer
    # scripts) are allowed.
    return bool(authzid) and not saslPrep(authzid, allowUnassigned=True)


@dataclass(frozen=True)
class AuthRequest:
    """
    What a client presented to authenticate, for L{IAuthHandler.onAuth}.

    @ivar method: the mechanism, e.g. C{"PLAIN"}.
    @ivar username: the user name (PLAIN's authcid, or its authzid if the authcid is
        empty, as the reference does; OAUTHBEARER's authzid).
    @ivar password: the password for PLAIN and LOGIN.
    @ivar authzid: the identity to act as, if the client gave one (PLAIN, OAUTHBEARER),
        as sent; one that SASLprep (RFC 4013) prohibits or maps to nothing is refused
        before any handler sees it.
    @ivar accessToken: the bearer token for XOAUTH2 and OAUTHBEARER.
    @ivar challenge: for CRAM-MD5, the challenge sent.
    @ivar challengeResponse: for CRAM-MD5, the client's hex digest.
    """

    method: str
    username: str
    password: str | None = None
    authzid: str | None = None
    accessToken: str | None = None
    challenge: str | None = None
    challengeResponse: str | None = None

    def validatePassword(self, password: str) -> bool:
        """
        For CRAM-MD5: whether C{password} is the one the client used (compared in
        constant time); for PLAIN and LOGIN, whether it equals the one given.
        """
        if self.method == "CRAM-MD5":
            if self.challenge is None or self.challengeResponse is None:
                return False
            expected = hmac.new(
                password.encode("utf-8"), self.challenge.encode("utf-8"), hashlib.md5
            ).hexdigest()
            return hmac.compare_digest(expected, self.challengeResponse.lower())
        if self.password is None:
            return False
        return hmac.compare_digest(password.encode("utf-8"), self.password.encode("utf-8"))

    def __repr__(self) -> str:
        # Never show a password or a token, wherever the object ends up.
        return f"AuthRequest(method={self.method!r}, username={self.username!r})"


@dataclass(frozen=True, slots=True)
class Challenge:
    """
    Send C{334 <text>} and wait for the client's next line.
    """

    text: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """
    The exchange ends with C{reply}.
    """

    reply: Reply


Step = Challenge | AuthRequest | Refusal

ABORTED: Final = R.reply(501, "Authentication aborted", "5.7.0")
BAD_BASE64: Final = R.reply(501, "Error: invalid base64 data", "5.5.2")
INVALID_USERDATA: Final = R.reply(500, "Error: invalid userdata", "5.5.2")
MISSING_USERNAME: Final = R.reply(500, "Error: missing username", "5.5.2")
# 535 after an OAuth error round, as the reference words it.
OAUTH_REFUSED: Final = R.reply(535, "Error: Username and Password not accepted", "5.7.8")


def decode64(text: str) -> str | Refusal:
    """
    Decode a client's base64 response strictly; C{=} alone is the empty response
    (RFC 4954 section 4).  When it is not base64, the refusal C{501 invalid base64 data};
    when what it holds is not UTF-8 (as SASL's strings are), C{500 invalid userdata}.
    """
    if text == "=":
        return ""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeError, ValueError):
        return Refusal(BAD_BASE64)
    try:
        return raw.decode("utf-8")
    except UnicodeError:
        return Refusal(INVALID_USERDATA)


def encode64(text: str) -> str:
    """
    The base64 of a UTF-8 text, for 334 challenges.
    """
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


class Mechanism:
    """
    One SASL exchange.  Subclasses implement L{start} and L{respond}.
    """

    name = ""
    #: Whether a client may send an initial response on the AUTH line.
    takesInitialResponse = True
    #: Whether a refusal is reported with a 334 error challenge first (OAuth).
    errorRound = False

    def start(self, initial: str | None) -> Step:
        raise NotImplementedError

    def respond(self, line: str) -> Step:
        raise NotImplementedError

    def refused(self, detail: dict[str, str]) -> Challenge | None:
        """
        The handlers refused: for OAuth mechanisms the error JSON to send as a 334
        challenge (the client answers it, then gets the final refusal); else L{None}.
        """
        return None


class _Plain(Mechanism):
    name = "PLAIN"

    def start(self, initial: str | None) -> Step:
        if initial is None:
            return Challenge("")
        return self.respond(initial)

    def respond(self, line: str) -> Step:
        message = decode64(line)
        if isinstance(message, Refusal):
            return message
        parts = message.split("\x00")
        if len(parts) != 3:
            return Refusal(INVALID_USERDATA)
        authzid, authcid, password = parts
        if _CONTROL.search(authzid) or _CONTROL.search(authcid) or _unpreparable(authzid):
            return Refusal(INVALID_USERDATA)
        # Some clients put the user in the authzid and leave the authcid empty; the
        # reference accepts that, and so does smtpsvc.
        username = authcid or authzid
        if not username:
            return Refusal(INVALID_USERDATA)
        return AuthRequest(
            method="PLAIN", username=username, password=password, authzid=authzid or None
        )


class _Login(Mechanism):
    name = "LOGIN"
    _USERNAME: Final = encode64("Username:")
    _PASSWORD: Final = encode64("Password:")

    def __init__(self) -> None:
        self._username: str | None = None

    def start(self, initial: str | None) -> Step:
        if initial is None:
            return Challenge(self._USERNAME)
        return self.respond(initial)

    def respond(self, line: str) -> Step:
        decoded = decode64(line)
        if isinstance(decoded, Refusal):
            return decoded
        if self._username is None:
            if not decoded:
                return Refusal(MISSING_USERNAME)
            if _CONTROL.search(decoded):
                return Refusal(INVALID_USERDATA)
            self._username = decoded
            return Challenge(self._PASSWORD)
        return AuthRequest(method="LOGIN", username=self._username, password=decoded)


class _CramMD5(Mechanism):
    name = "CRAM-MD5"
    takesInitialResponse = False

    def __init__(self, challenge: str) -> None:
        self._challenge = challenge

    def start(self, initial: str | None) -> Step:
        return Challenge(encode64(self._challenge))

    def respond(self, line: str) -> Step:
        decoded = decode64(line)
        if isinstance(decoded, Refusal):
            return decoded
        username, _, digest = decoded.rpartition(" ")
        if not username or not re.fullmatch(r"[0-9a-fA-F]{32}", digest):
            return Refusal(INVALID_USERDATA)
        if _CONTROL.search(username):
            return Refusal(INVALID_USERDATA)
        return AuthRequest(
            method="CRAM-MD5",
            username=username,
            challenge=self._challenge,
            challengeResponse=digest.lower(),
        )


class _OAuth(Mechanism):
    errorRound = True

    def __init__(self) -> None:
        self._failing = False

    def start(self, initial: str | None) -> Step:
        if initial is None:
            return Challenge("")
        return self.respond(initial)

    def respond(self, line: str) -> Step:
        if self._failing:
            # Whatever the client says after the error challenge, the answer is no.
            return Refusal(OAUTH_REFUSED)
        decoded = decode64(line)
        if isinstance(decoded, Refusal):
            return decoded
        return self._parse(decoded)

    def _parse(self, message: str) -> Step:
        raise NotImplementedError

    def refused(self, detail: dict[str, str]) -> Challenge:
        self._failing = True
        return Challenge(encode64(json.dumps(detail, separators=(",", ":"))))


def _keyValues(text: str) -> dict[str, str]:
    # The key=value pairs that both OAuth mechanisms separate with ^A; keys are compared
    # without case, a repeated key keeps its first value, and items without "=" (the
    # empty ones at the end) are skipped.
    fields: dict[str, str] = {}
    for item in text.split("\x01"):
        key, eq, value = item.partition("=")
        if eq:
            fields.setdefault(key.lower(), value)
    return fields


class _XOAuth2(_OAuth):
    name = "XOAUTH2"

    def _parse(self, message: str) -> Step:
        # "user=" U ^A "auth=Bearer " T ^A ^A
        fields = _keyValues(message)
        username = fields.get("user", "")
        auth = fields.get("auth", "")
        if not username or not auth.lower().startswith("bearer ") or _CONTROL.search(username):
            return Refusal(INVALID_USERDATA)
        return AuthRequest(method="XOAUTH2", username=username, accessToken=auth[7:])


class _OAuthBearer(_OAuth):
    name = "OAUTHBEARER"

    def _parse(self, message: str) -> Step:
        # gs2-header = ("n" / "y") "," ["a=" saslname] "," then kvpairs separated by ^A
        # (RFC 7628 section 3.1).  Channel binding ("p=") is not supported.
        header, sep, rest = message.partition("\x01")
        match = re.fullmatch(r"([ny]),(?:a=([^,]*))?,", header)
        if not sep or match is None:
            return Refusal(INVALID_USERDATA)
        authzid = (match.group(2) or "").replace("=2C", ",").replace("=3D", "=")
        auth = _keyValues(rest).get("auth", "")
        if not auth.lower().startswith("bearer ") or _CONTROL.search(authzid):
            return Refusal(INVALID_USERDATA)
        if _unpreparable(authzid):
            return Refusal(INVALID_USERDATA)
        return AuthRequest(
            method="OAUTHBEARER",
            username=authzid,
            authzid=authzid or None,
            accessToken=auth[7:],
        )


@dataclass(frozen=True)
class MechanismFactory:
    """
    Makes mechanisms; C{challenge} makes CRAM-MD5's challenges (RFC 2195 asks for a
    message-id: random part, time, host).
    """

    challenge: Callable[[], str]

    def make(self, name: str) -> Mechanism | None:
        if name == "PLAIN":
            return _Plain()
        if name == "LOGIN":
            return _Login()
        if name == "CRAM-MD5":
            return _CramMD5(self.challenge())
        if name == "XOAUTH2":
            return _XOAuth2()
        if name == "OAUTHBEARER":
            return _OAuthBearer()
        return None


def oauthErrorDetail(method: str, scope: str | None = None) -> dict[str, str]:
    """
    The JSON of the error challenge: Google's form for XOAUTH2 (as the reference sends
    it), RFC 7628 section 3.2.2's for OAUTHBEARER.
    """
    if method == "XOAUTH2":
        return {"status": "401", "schemes": "bearer", "scope": scope or "https://mail.google.com/"}
    detail = {"status": "invalid_token"}
    if scope:
        detail["scope"] = scope
    return detail
