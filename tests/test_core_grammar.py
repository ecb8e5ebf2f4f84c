"""
Tests for L{smtpsvc._core._grammar}: MAIL and RCPT lines, mailboxes, xtext and HELO names.

Test names carry the IDs of the standards checklist (C{5321-16} becomes
C{test_5321_16_...}) where one applies.
"""

# twisted.trial's assertion methods carry no annotations; setup.cfg could say
# untyped_calls_exclude = twisted.trial instead (that option cannot be set inline).
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import contextlib
from collections.abc import Callable

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from smtpsvc._core._grammar import (
    _ASCII_DOT_STRING,
    _PLAIN_DOMAIN,
    GrammarError,
    PathCommand,
    _checkDomain,
    _checkDomainFully,
    _checkLocalPart,
    _checkLocalPartFully,
    _pathEnd,
    _scanPathEnd,
    aLabels,
    decodeXtext,
    heloName,
    isValidHeloName,
    parseMailbox,
    parsePathCommand,
    splitPathCommand,
)

_FAST = settings(max_examples=300, deadline=None)

# Characters that make the address parser take its less common branches, so that random
# text built from them reaches deep into the grammar instead of failing at the first check.
_ADDRESS_ALPHABET = 'ab9.@[]:,"\\ -_+=<>xnIPv6f%\u00fc\u200b\x00\x7f'


def _mail(line: str) -> PathCommand:
    return splitPathCommand(line, "MAIL FROM")


def _rcpt(line: str) -> PathCommand:
    return splitPathCommand(line, "RCPT TO")


class SplitPathCommandTests(SynchronousTestCase):
    """
    Tests for L{splitPathCommand}.
    """

    def test_splitsPathAndParameters(self) -> None:
        """
        A MAIL line gives the text between the brackets and its parameters.
        """
        command = _mail("MAIL FROM:<a@b.example> SIZE=100 BODY=8BITMIME")
        self.assertEqual(command.path, "a@b.example")
        self.assertEqual(command.params, {"SIZE": "100", "BODY": "8BITMIME"})
        self.assertEqual(command.raw, {"SIZE": "100", "BODY": "8BITMIME"})

    def test_noParameters(self) -> None:
        """
        A line with only a path has no parameters.
        """
        command = _rcpt("RCPT TO:<c@d.example>")
        self.assertEqual(command, PathCommand("c@d.example", {}, {}))

    def test_5321_10_keywordIsCaseInsensitive(self) -> None:
        """
        C{mail from:} and C{Rcpt To:} are as good as the upper-case forms.
        """
        self.assertEqual(_mail("mail from:<a@b.example>").path, "a@b.example")
        self.assertEqual(_rcpt("Rcpt To:<c@d.example>").path, "c@d.example")

    def test_spacesAroundKeywordAreTrimmed(self) -> None:
        """
        C{MAIL FROM : <a@b>} is accepted, as the reference accepts it.
        """
        self.assertEqual(_mail("MAIL FROM : <a@b>").path, "a@b")
        self.assertEqual(_mail(" MAIL FROM:<a@b>").path, "a@b")

    def test_5321_18_spacesAfterColonAccepted(self) -> None:
        """
        One or more spaces between the colon and the path are tolerated.
        """
        self.assertEqual(_mail("MAIL FROM: <a@b>").path, "a@b")
        self.assertEqual(_mail("MAIL FROM:    <a@b> SIZE=1").params, {"SIZE": "1"})

    def test_rejectsDoubleSpaceInKeyword(self) -> None:
        """
        C{MAIL  FROM:} (two spaces) is not the MAIL command.
        """
        self.assertRaises(GrammarError, _mail, "MAIL  FROM:<a@b>")

    def test_rejectsMissingColon(self) -> None:
        """
        C{MAIL FROM <a@b>} without the colon is refused.
        """
        self.assertRaises(GrammarError, _mail, "MAIL FROM <a@b>")
        self.assertRaises(GrammarError, _mail, "MAIL FROM")

    def test_rejectsOtherKeyword(self) -> None:
        """
        A RCPT line is not a MAIL line, and neither is C{MAIL TO:}.
        """
        self.assertRaises(GrammarError, _mail, "RCPT TO:<a@b>")
        self.assertRaises(GrammarError, _mail, "MAIL TO:<a@b>")
        self.assertRaises(GrammarError, _rcpt, "MAIL FROM:<a@b>")

    def test_rejectsPathWithoutBrackets(self) -> None:
        """
        The path must be enclosed in angle brackets.
        """
        self.assertRaises(GrammarError, _mail, "MAIL FROM:a@b")
        self.assertRaises(GrammarError, _mail, "MAIL FROM:")
        self.assertRaises(GrammarError, _mail, "MAIL FROM:<a@b")
        self.assertRaises(GrammarError, _mail, "MAIL FROM:<a@b SIZE=1")

    def test_rejectsNestedOpeningBracket(self) -> None:
        """
        A C{<} inside the path is refused.
        """
        self.assertRaises(GrammarError, _mail, "MAIL FROM:<a<b@c>")
        self.assertRaises(GrammarError, _mail, "MAIL FROM:<<a@b>>")

    def test_rejectsSpaceInsidePath(self) -> None:
        """
        C{<a b@c>}: a space outside a quoted string ends nothing and is refused.
        """
        self.assertRaises(GrammarError, _mail, "MAIL FROM:<a b@c>")

    def test_quotedStringMayHoldBracketAndSpace(self) -> None:
        """
        Inside a quoted local part, C{>} and spaces are ordinary characters.
        """
        command = _mail('MAIL FROM:<"a> b"@c.example> SIZE=1')
        self.assertEqual(command.path, '"a> b"@c.example')
        self.assertEqual(command.params, {"SIZE": "1"})

    def test_quotedStringEscapedQuote(self) -> None:
        """
        An escaped quote does not end the quoted string.
        """
        command = _mail('MAIL FROM:<"a\\"> b"@c.example>')
        self.assertEqual(command.path, '"a\\"> b"@c.example')

    def test_rejectsTextGluedAfterPath(self) -> None:
        """
        Parameters must be separated from C{>} by a space.
        """
        self.assertRaises(GrammarError, _mail, "MAIL FROM:<a@b>SIZE=1")
        self.assertRaises(GrammarError, _mail, "MAIL FROM:<a@b>>")
        self.assertRaises(GrammarError, _mail, "MAIL FROM:<a@b>\tSIZE=1")

    def test_5321_14_nullPath(self) -> None:
        """
        C{MAIL FROM:<>} gives an empty path.
        """
        self.assertEqual(_mail("MAIL FROM:<>").path, "")
        self.assertEqual(_mail("MAIL FROM:<> BODY=7BIT").params, {"BODY": "7BIT"})

    def test_sourceRouteKept(self) -> None:
        """
        A source route's colon does not confuse the split at the keyword's colon.
        """
        command = _rcpt("RCPT TO:<@a.example,@b.example:u@c.example>")
        self.assertEqual(command.path, "@a.example,@b.example:u@c.example")

    def test_parameterKeywordUpperCased(self) -> None:
        """
        Parameter keywords come back upper-cased; values keep their case.
        """
        command = _mail("MAIL FROM:<a@b> body=8bitmime Ret=Hdrs")
        self.assertEqual(command.params, {"BODY": "8bitmime", "RET": "Hdrs"})

    def test_keywordWithoutValueIsNone(self) -> None:
        """
        A keyword alone, like C{SMTPUTF8}, maps to None.
        """
        command = _mail("MAIL FROM:<a@b> SMTPUTF8 SIZE=5")
        self.assertEqual(command.params, {"SMTPUTF8": None, "SIZE": "5"})
        self.assertEqual(command.raw, {"SMTPUTF8": None, "SIZE": "5"})

    def test_severalSpacesBetweenParameters(self) -> None:
        """
        Extra spaces between and after parameters are harmless.
        """
        command = _mail("MAIL FROM:<a@b>   SIZE=1    BODY=7BIT  ")
        self.assertEqual(command.params, {"SIZE": "1", "BODY": "7BIT"})

    def test_rejectsBadKeyword(self) -> None:
        """
        A keyword must be letters, digits and inner hyphens, starting with a letter or
        digit.
        """
        for bad in ("-X=1", "X_Y=1", "=x", "X.Y", "\u00fc=1", "X\x00=1"):
            self.assertRaises(GrammarError, _mail, f"MAIL FROM:<a@b> {bad}")
        self.assertEqual(_mail("MAIL FROM:<a@b> 8X-Y-=1").params, {"8X-Y-": "1"})

    def test_rejectsRepeatedKeyword(self) -> None:
        """
        The same parameter twice, in any case, is refused.
        """
        self.assertRaises(GrammarError, _mail, "MAIL FROM:<a@b> SIZE=1 size=2")
        self.assertRaises(GrammarError, _rcpt, "RCPT TO:<a@b> NOTIFY=NEVER NOTIFY=NEVER")

    def test_valuesXtextDecodedLeniently(self) -> None:
        """
        Values are xtext-decoded where C{+XX} is well-formed; the rest stays as sent, and
        C{raw} keeps the text exactly as sent.
        """
        command = _mail("MAIL FROM:<a@b> ENVID=a+2Bb+zz+2+3d")
        self.assertEqual(command.params, {"ENVID": "a+b+zz+2="})
        self.assertEqual(command.raw, {"ENVID": "a+2Bb+zz+2+3d"})

    def test_laterEqualsSignsKept(self) -> None:
        """
        Only the first C{=} separates keyword and value.
        """
        self.assertEqual(_mail("MAIL FROM:<a@b> X=a=b").params, {"X": "a=b"})

    def test_2_12_rejectsDecodedNul(self) -> None:
        """
        C{ORCPT=rfc822;a+00b} is refused: the decoded value would carry a NUL (2.12).
        """
        self.assertRaises(GrammarError, _rcpt, "RCPT TO:<c@d> ORCPT=rfc822;a+00b")

    def test_rejectsDecodedControlCharacters(self) -> None:
        """
        A CR, LF, DEL or C1 control hidden in C{+XX} is refused.
        """
        for escape in ("+0D", "+0a", "+7F", "+1f"):
            self.assertRaises(GrammarError, _mail, f"MAIL FROM:<a@b> ENVID=x{escape}y")

    def test_rejectsRawControlCharactersInValue(self) -> None:
        """
        A control character sent as is in a value is refused, and does not count as a
        separator between parameters.
        """
        for control in ("\x00", "\x01", "\t", "\x1c", "\x1f", "\x7f", "\x85"):
            self.assertRaises(GrammarError, _mail, f"MAIL FROM:<a@b> SIZE=1{control}BODY=8BITMIME")

    def test_nonAsciiValueAllowed(self) -> None:
        """
        A non-ASCII value (RFC 6531 esmtp-value) is kept, even a no-break space.
        """
        command = _mail("MAIL FROM:<a@b> X=\u00fc\u00a0y")
        self.assertEqual(command.params, {"X": "\u00fc\u00a0y"})


class ParseMailboxTests(SynchronousTestCase):
    """
    Tests for the valid addresses L{parseMailbox} accepts.
    """

    def test_plainAddress(self) -> None:
        """
        An ordinary address comes back unchanged.
        """
        self.assertEqual(parseMailbox("user@example.com"), "user@example.com")

    def test_5321_14_nullPath(self) -> None:
        """
        The null path C{<>} is the empty string.
        """
        self.assertEqual(parseMailbox(""), "")
        self.assertEqual(parseMailbox("", lenient=True), "")

    def test_nullPathOnRcptLeftToTheSession(self) -> None:
        """
        C{RCPT TO:<>} parses to the empty mailbox, which the session refuses with 501.
        """
        self.assertEqual(parseMailbox(_rcpt("RCPT TO:<>").path), "")

    def test_5321_10_casePreserved(self) -> None:
        """
        The local part and the domain keep their case.
        """
        self.assertEqual(parseMailbox("John.Doe@Example.COM"), "John.Doe@Example.COM")

    def test_atextCharacters(self) -> None:
        """
        Every RFC 5322 atext character is allowed in a dot-string local part.
        """
        local = "!#$%&'*+-/=?^_`{|}~az09AZ"
        self.assertEqual(parseMailbox(f"{local}@example.com"), f"{local}@example.com")

    def test_dottedLocalPart(self) -> None:
        """
        Single dots between atoms are fine.
        """
        self.assertEqual(parseMailbox("a.b.c@d.example"), "a.b.c@d.example")

    def test_quotedLocalPartWithSpace(self) -> None:
        """
        C{"a b"@c} is valid and keeps its quotes.
        """
        self.assertEqual(parseMailbox('"a b"@c'), '"a b"@c')
        self.assertEqual(parseMailbox('"a b"@c.example'), '"a b"@c.example')

    def test_quotedLocalPartWithEscapedQuote(self) -> None:
        """
        C{"a\\"b"@c} is valid and comes back as sent.
        """
        self.assertEqual(parseMailbox('"a\\"b"@c'), '"a\\"b"@c')
        self.assertEqual(parseMailbox('"a\\"b"@c.example'), '"a\\"b"@c.example')

    def test_quotedLocalPartWithAt(self) -> None:
        """
        An C{@} inside the quotes is part of the local part.
        """
        self.assertEqual(parseMailbox('"a@b"@c.example'), '"a@b"@c.example')

    def test_quotedLocalPartWithDots(self) -> None:
        """
        Inside quotes, leading, trailing and double dots are allowed.
        """
        self.assertEqual(parseMailbox('".a..b."@c.example'), '".a..b."@c.example')

    def test_nonAsciiLocalPartAndDomain(self) -> None:
        """
        UTF-8 addresses (RFC 6531) are accepted as sent.
        """
        self.assertEqual(
            parseMailbox("j\u00f6rg@b\u00fccher.example"), "j\u00f6rg@b\u00fccher.example"
        )

    def test_punycodeKeptAsSent(self) -> None:
        """
        A valid C{xn--} label is not converted to Unicode, in any case.
        """
        self.assertEqual(parseMailbox("u@xn--bcher-kva.example"), "u@xn--bcher-kva.example")
        self.assertEqual(parseMailbox("u@XN--BCHER-KVA.example"), "u@XN--BCHER-KVA.example")

    def test_rejectsBadPunycode(self) -> None:
        """
        An C{xn--} label that is not valid punycode is refused.
        """
        self.assertRaises(GrammarError, parseMailbox, "u@xn--zz.example")
        self.assertRaises(GrammarError, parseMailbox, "u@xn--b\u00fccher.example")

    def test_hyphensInsideLabels(self) -> None:
        """
        Hyphens inside a label are fine, even doubled.
        """
        self.assertEqual(parseMailbox("u@a-b--c.d-e.example"), "u@a-b--c.d-e.example")

    def test_singleLabelDomain(self) -> None:
        """
        A domain of one label, like C{<a@b>}, is accepted.
        """
        self.assertEqual(parseMailbox("a@b"), "a@b")

    def test_5321_21_sourceRouteDropped(self) -> None:
        """
        C{<@a.example,@b.example:u@c.example>} is parsed and the route dropped.
        """
        self.assertEqual(parseMailbox("@a.example,@b.example:u@c.example"), "u@c.example")
        self.assertEqual(parseMailbox("@a.example:u@c.example"), "u@c.example")

    def test_5321_21_sourceRouteValidatedStrictly(self) -> None:
        """
        In strict mode a bad route domain or hop is refused.
        """
        for route in ("@a_b.example:", "@-a.example:", "a.example:", "@a.example,b:", "@:"):
            self.assertRaises(GrammarError, parseMailbox, route + "u@c.example")

    def test_sourceRouteWithoutMailbox(self) -> None:
        """
        A route with no colon, or nothing after it, is refused.
        """
        self.assertRaises(GrammarError, parseMailbox, "@a.example")
        self.assertRaises(GrammarError, parseMailbox, "@a.example:")

    def test_5321_20_postmaster(self) -> None:
        """
        With C{allowPostmaster}, C{<Postmaster>} without a domain is accepted in any case.
        """
        for name in ("Postmaster", "postmaster", "POSTMASTER", "pOsTmAsTeR"):
            self.assertEqual(parseMailbox(name, allowPostmaster=True), name)
            self.assertEqual(parseMailbox(name, lenient=True, allowPostmaster=True), name)

    def test_postmasterNeedsPermission(self) -> None:
        """
        Without C{allowPostmaster}, a bare C{Postmaster} is an address with no domain.
        """
        self.assertRaises(GrammarError, parseMailbox, "Postmaster")
        self.assertRaises(GrammarError, parseMailbox, "Postmaster", lenient=True)

    def test_5321_20_postmasterWithDomain(self) -> None:
        """
        C{<postmaster@domain>} is an ordinary address.
        """
        self.assertEqual(parseMailbox("postmaster@example.com"), "postmaster@example.com")

    def test_onlyPostmasterIsAllowedBare(self) -> None:
        """
        C{allowPostmaster} does not let other names without a domain through.
        """
        self.assertRaises(GrammarError, parseMailbox, "abuse", allowPostmaster=True)
        self.assertRaises(GrammarError, parseMailbox, "postmasters", allowPostmaster=True)

    def test_resultReparses(self) -> None:
        """
        What comes back is itself a valid mailbox that parses to the same text.
        """
        for path in ("u@[IPv6:2001:0db8::0001]", "@a.example:u@c.example", '"a b"@c'):
            mailbox = parseMailbox(path)
            self.assertEqual(parseMailbox(mailbox), mailbox)


class MailboxRejectionTests(SynchronousTestCase):
    """
    Tests for the invalid addresses L{parseMailbox} refuses: the negative grammar cases
    of the standards checklist and their kin.
    """

    def test_5321_16_badSenderSyntax(self) -> None:
        """
        C{<a@@b>} is refused.
        """
        self.assertRaises(GrammarError, parseMailbox, "a@@b")

    def test_rejectsTwoAtSigns(self) -> None:
        """
        An unquoted C{@} in the local part is refused.
        """
        self.assertRaises(GrammarError, parseMailbox, "a@b@c")

    def test_rejectsMissingAt(self) -> None:
        """
        An address without C{@} is refused.
        """
        self.assertRaises(GrammarError, parseMailbox, "ab.example")

    def test_rejectsEmptySides(self) -> None:
        """
        An empty local part or domain is refused.
        """
        self.assertRaises(GrammarError, parseMailbox, "@b.example")
        self.assertRaises(GrammarError, parseMailbox, "a@")
        self.assertRaises(GrammarError, parseMailbox, "@")

    def test_rejectsTrailingDotInDomain(self) -> None:
        """
        C{<a@b.>} is refused.
        """
        self.assertRaises(GrammarError, parseMailbox, "a@b.")

    def test_rejectsEmptyDomainLabels(self) -> None:
        """
        A leading or doubled dot in the domain is refused.
        """
        self.assertRaises(GrammarError, parseMailbox, "a@.b")
        self.assertRaises(GrammarError, parseMailbox, "a@b..c")

    def test_rejectsDoubleDotInLocalPart(self) -> None:
        """
        C{<a..b@c>} is refused.
        """
        self.assertRaises(GrammarError, parseMailbox, "a..b@c")

    def test_rejectsLeadingDotInLocalPart(self) -> None:
        """
        C{<.a@c>} is refused.
        """
        self.assertRaises(GrammarError, parseMailbox, ".a@c")

    def test_rejectsTrailingDotInLocalPart(self) -> None:
        """
        C{<a.@c>} is refused.
        """
        self.assertRaises(GrammarError, parseMailbox, "a.@c")

    def test_rejectsLeadingHyphenInLabel(self) -> None:
        """
        C{<a@-b.c>} is refused.
        """
        self.assertRaises(GrammarError, parseMailbox, "a@-b.c")

    def test_rejectsTrailingHyphenInLabel(self) -> None:
        """
        C{<a@b-.c>} and C{<a@b.c->} are refused.
        """
        self.assertRaises(GrammarError, parseMailbox, "a@b-.c")
        self.assertRaises(GrammarError, parseMailbox, "a@b.c-")

    def test_rejectsUnderscoreInDomain(self) -> None:
        """
        C{<a@b_c.d>} is refused.
        """
        self.assertRaises(GrammarError, parseMailbox, "a@b_c.d")

    def test_rejectsOtherCharactersInDomain(self) -> None:
        """
        Only letters, digits and hyphens (and non-ASCII) make a label.
        """
        for domain in ("b!c", "b c", "b/c", "b+c", "b:c"):
            self.assertRaises(GrammarError, parseMailbox, f"a@{domain}")

    def test_rejectsSpaceInLocalPart(self) -> None:
        """
        C{<a b@c>} is refused.
        """
        self.assertRaises(GrammarError, parseMailbox, "a b@c")

    def test_rejectsSpecialsInLocalPart(self) -> None:
        """
        Characters outside atext, such as C{(}, C{,} and C{"}, are refused unquoted.
        """
        for local in ("a(b", "a,b", 'a"b', "a\\b", "a[b", "a;b", "a:b", "a<b"):
            self.assertRaises(GrammarError, parseMailbox, f"{local}@c.example")

    def test_rejectsBrokenQuotedLocalPart(self) -> None:
        """
        An unterminated quote, text after the closing quote or a bad quoted pair is
        refused.
        """
        for path in ('"ab@c', '"a"b@c', '"a".b@c', '"a\\\u00fc"@c', '"a"', '"a\\'):
            self.assertRaises(GrammarError, parseMailbox, path)

    def test_localPartLengthLimit(self) -> None:
        """
        A 64-octet local part is accepted, a 65-octet one is refused.
        """
        self.assertEqual(parseMailbox("a" * 64 + "@b"), "a" * 64 + "@b")
        self.assertRaises(GrammarError, parseMailbox, "a" * 65 + "@b")

    def test_localPartLimitCountsOctets(self) -> None:
        """
        The local-part limit counts UTF-8 octets, not characters.
        """
        self.assertEqual(parseMailbox("\u00fc" * 32 + "@b"), "\u00fc" * 32 + "@b")
        self.assertRaises(GrammarError, parseMailbox, "\u00fc" * 32 + "a@b")

    def test_quotedLocalPartLengthLimit(self) -> None:
        """
        The quotes count towards the 64 octets of a quoted local part.
        """
        self.assertEqual(parseMailbox('"' + "a" * 62 + '"@b'), '"' + "a" * 62 + '"@b')
        self.assertRaises(GrammarError, parseMailbox, '"' + "a" * 63 + '"@b')

    def test_domainLengthLimit(self) -> None:
        """
        A 255-octet domain is accepted (in a source route, where the mailbox limit does not
        apply), a 256-octet one is refused.
        """
        domain255 = ".".join(["a" * 63] * 4)
        self.assertEqual(len(domain255), 255)
        self.assertEqual(parseMailbox(f"@{domain255}:u@c"), "u@c")
        domain256 = ".".join(["a" * 63] * 3 + ["a" * 62, "b"])
        self.assertEqual(len(domain256), 256)
        self.assertRaises(GrammarError, parseMailbox, f"@{domain256}:u@c")
        self.assertRaises(GrammarError, parseMailbox, f"u@{domain256}")

    def test_mailboxLengthLimit(self) -> None:
        """
        A 254-octet mailbox is accepted, a 255-octet one is refused.
        """
        domain = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 60])
        mailbox = "u@" + domain
        self.assertEqual(len(mailbox), 254)
        self.assertEqual(parseMailbox(mailbox), mailbox)
        self.assertRaises(GrammarError, parseMailbox, "uu@" + domain)

    def test_labelLengthLimit(self) -> None:
        """
        A 63-character label is accepted, a 64-character one is refused.
        """
        self.assertEqual(parseMailbox("u@" + "a" * 63), "u@" + "a" * 63)
        self.assertRaises(GrammarError, parseMailbox, "u@" + "a" * 64)
        self.assertRaises(GrammarError, parseMailbox, "u@b." + "a" * 64 + ".c")

    def test_5321_39_rejectsControlCharacters(self) -> None:
        """
        C0 and C1 controls and DEL are refused anywhere, strict or lenient (2.12 for NUL).
        """
        for control in ("\x00", "\x01", "\t", "\n", "\r", "\x1f", "\x7f", "\x80", "\x9f"):
            for path in (f"a{control}b@c", f"a@b{control}c", f'"a{control}b"@c'):
                self.assertRaises(GrammarError, parseMailbox, path)
                self.assertRaises(GrammarError, parseMailbox, path, lenient=True)

    def test_rejectsInvisibleCharacters(self) -> None:
        """
        Zero-width space, word joiner and BOM are refused, strict or lenient.
        """
        for invisible in ("\u200b", "\u2060", "\ufeff"):
            for path in (f"a{invisible}b@c", f"a@b{invisible}c"):
                self.assertRaises(GrammarError, parseMailbox, path)
                self.assertRaises(GrammarError, parseMailbox, path, lenient=True)

    def test_rejectsControlInPostmaster(self) -> None:
        """
        C{allowPostmaster} does not excuse control characters.
        """
        self.assertRaises(GrammarError, parseMailbox, "Postmaster\x00", allowPostmaster=True)


class AddressLiteralTests(SynchronousTestCase):
    """
    Tests for address literals in L{parseMailbox}.
    """

    def test_ipv4(self) -> None:
        """
        C{[192.0.2.1]} is accepted as sent.
        """
        self.assertEqual(parseMailbox("a@[192.0.2.1]"), "a@[192.0.2.1]")
        self.assertEqual(parseMailbox("a@[255.255.255.255]"), "a@[255.255.255.255]")

    def test_rejectsIpv4PartOver255(self) -> None:
        """
        C{<a@[300.1.1.1]>} is refused.
        """
        self.assertRaises(GrammarError, parseMailbox, "a@[300.1.1.1]")
        self.assertRaises(GrammarError, parseMailbox, "a@[1.1.1.256]")

    def test_rejectsMalformedIpv4(self) -> None:
        """
        Too few or too many parts, long parts and non-ASCII digits are refused.
        """
        for literal in ("[192.168.1]", "[1.2.3.4.5]", "[1.2.3.0001]", "[]", "[1.2.3.]"):
            self.assertRaises(GrammarError, parseMailbox, f"a@{literal}")
        self.assertRaises(GrammarError, parseMailbox, "a@[\u0661.1.1.1]")
        self.assertRaises(GrammarError, parseMailbox, "a@[1.1.1.\uff11]")

    def test_rejectsUnclosedLiteral(self) -> None:
        """
        A literal without its closing bracket is refused.
        """
        self.assertRaises(GrammarError, parseMailbox, "a@[192.0.2.1")
        self.assertRaises(GrammarError, parseMailbox, "a@[IPv6:::1")

    def test_ipv6Compressed(self) -> None:
        """
        An IPv6 literal comes back compressed and in lower case, tag spelt C{IPv6}.
        """
        self.assertEqual(parseMailbox("a@[IPv6:2001:db8::1]"), "a@[IPv6:2001:db8::1]")
        self.assertEqual(parseMailbox("a@[ipv6:2001:0DB8::0001]"), "a@[IPv6:2001:db8::1]")
        self.assertEqual(parseMailbox("a@[IPV6:2001:db8:0:0:0:0:0:1]"), "a@[IPv6:2001:db8::1]")

    def test_ipv6FullAndWithIpv4(self) -> None:
        """
        Eight groups, six groups plus IPv4, and their compressed forms are accepted.
        """
        self.assertEqual(parseMailbox("a@[IPv6:1:2:3:4:5:6:7:8]"), "a@[IPv6:1:2:3:4:5:6:7:8]")
        self.assertEqual(
            parseMailbox("a@[IPv6:1:2:3:4:5:6:1.2.3.4]"), "a@[IPv6:1:2:3:4:5:6:102:304]"
        )
        # RFC 5952 section 5: an IPv4-mapped address keeps its IPv4 part dotted, whatever
        # the Python version (IPv6 QA: 3.11 wrote ::ffff:c000:201); other embedded IPv4
        # parts are hexadecimal groups like any other.
        self.assertEqual(parseMailbox("a@[IPv6:::ffff:192.0.2.1]"), "a@[IPv6:::ffff:192.0.2.1]")
        self.assertEqual(
            parseMailbox("a@[IPv6:0:0:0:0:0:FFFF:c000:0201]"), "a@[IPv6:::ffff:192.0.2.1]"
        )
        self.assertEqual(parseMailbox("a@[IPv6:1:2:3:4:5:6::]"), "a@[IPv6:1:2:3:4:5:6::]")
        self.assertEqual(parseMailbox("a@[IPv6:1:2:3:4::1.2.3.4]"), "a@[IPv6:1:2:3:4::102:304]")
        self.assertEqual(parseMailbox("a@[IPv6:::]"), "a@[IPv6:::]")

    def test_rejectsTooManyIpv6Groups(self) -> None:
        """
        C{<a@[IPv6:::1:2:3:4:5:6:7]>} is refused: RFC 5321 allows at most six groups
        besides C{::} (four with an IPv4 tail).
        """
        for value in (
            "::1:2:3:4:5:6:7",
            "1:2:3:4:5:6:7::",
            "1:2:3::4:5:6:7",
            "1:2:3:4:5::1.2.3.4",
            "::1:2:3:4:5:1.2.3.4",
            "1:2:3:4:5:6:7:8:9",
        ):
            self.assertRaises(GrammarError, parseMailbox, f"a@[IPv6:{value}]")

    def test_rejectsTwoDoubleColons(self) -> None:
        """
        C{<a@[IPv6:1::2::3]>} is refused.
        """
        self.assertRaises(GrammarError, parseMailbox, "a@[IPv6:1::2::3]")

    def test_rejectsIpv6ZoneIndex(self) -> None:
        """
        A zone index (C{%eth0}) is not part of an address literal.
        """
        self.assertRaises(GrammarError, parseMailbox, "a@[IPv6:fe80::1%eth0]")

    def test_rejectsMalformedIpv6(self) -> None:
        """
        Bad hex, long groups and IPv6 without its tag are refused.
        """
        for literal in ("[IPv6:]", "[IPv6:12345::1]", "[IPv6:g::1]", "[2001:db8::1]", "[IPv6:1:2]"):
            self.assertRaises(GrammarError, parseMailbox, f"a@{literal}")

    def test_rejectsGeneralLiteral(self) -> None:
        """
        C{<a@[foo:bar]>}: general address literals have no registered tag and are refused.
        """
        self.assertRaises(GrammarError, parseMailbox, "a@[foo:bar]")
        self.assertRaises(GrammarError, parseMailbox, "a@[notanip]")


class LenientMailboxTests(SynchronousTestCase):
    """
    Tests for L{parseMailbox} with C{lenient=True}.
    """

    def test_acceptsWhatStrictRefuses(self) -> None:
        """
        Lenient mode accepts any text with an C{@} and something on both sides.
        """
        for path in ("a..b@c", ".a@c.", "a b@-c_d", "a@[300.1.1.1]", "a@[foo:bar]", "a@b."):
            self.assertRaises(GrammarError, parseMailbox, path)
            self.assertEqual(parseMailbox(path, lenient=True), path)

    def test_noLengthLimits(self) -> None:
        """
        Lenient mode does not enforce the length limits.
        """
        path = "a" * 100 + "@" + "b" * 300
        self.assertEqual(parseMailbox(path, lenient=True), path)

    def test_quotedAtAccepted(self) -> None:
        """
        A quoted local part with an C{@} is accepted.
        """
        self.assertEqual(parseMailbox('"a@b"@c', lenient=True), '"a@b"@c')

    def test_rejectsMissingSides(self) -> None:
        """
        No C{@}, or nothing on one side of it, is refused.
        """
        for path in ("ab", "a@", "@", "@b", "a@b@"):
            self.assertRaises(GrammarError, parseMailbox, path, lenient=True)

    def test_rejectsUnquotedSecondAt(self) -> None:
        """
        The address must have one C{@} outside quotes, as the docstring says.
        """
        self.assertRaises(GrammarError, parseMailbox, "a@b@c", lenient=True)

    def test_sourceRouteDropped(self) -> None:
        """
        The route is dropped without being validated.
        """
        self.assertEqual(parseMailbox("@a_b,x:u@c", lenient=True), "u@c")


class DecodeXtextTests(SynchronousTestCase):
    """
    Tests for L{decodeXtext}, the strict decoder.
    """

    def test_plain(self) -> None:
        """
        Printable ASCII other than C{+} and C{=} stands for itself.
        """
        self.assertEqual(decodeXtext("QQ314159"), "QQ314159")
        self.assertEqual(decodeXtext("rfc822;a@b.example"), "rfc822;a@b.example")
        self.assertEqual(decodeXtext(""), "")

    def test_allXchars(self) -> None:
        """
        Every character from C{!} to C{~} except C{+} and C{=} is an xchar.
        """
        xchars = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "+=")
        self.assertEqual(decodeXtext(xchars), xchars)

    def test_hexEscapes(self) -> None:
        """
        C{+XX} decodes to that character, upper or lower case hex.
        """
        self.assertEqual(decodeXtext("a+2Bb+3Dc"), "a+b=c")
        self.assertEqual(decodeXtext("+2b+3d"), "+=")
        self.assertEqual(decodeXtext("+20"), " ")

    def test_3461_03_rejectsBadEscape(self) -> None:
        """
        C{+zz}, a lone C{+} and C{+} with one hex digit are refused.
        """
        for value in ("+zz", "a+", "+2", "+2g", "a+g2", "+ 2B", "+\u0662\u0663"):
            self.assertRaises(GrammarError, decodeXtext, value)

    def test_3461_03_rejectsRawCharacters(self) -> None:
        """
        A raw C{=}, space, control or non-ASCII character is refused.
        """
        for value in ("a=b", "a b", "a\x00b", "a\tb", "a\x7fb", "a\u00fcb", "a\rb"):
            self.assertRaises(GrammarError, decodeXtext, value)


class HeloNameTests(SynchronousTestCase):
    """
    Tests for L{isValidHeloName}.
    """

    def test_domains(self) -> None:
        """
        Ordinary host names are valid, and so are the oddities real clients send.
        """
        for name in ("client.example", "localhost", "a", "my_host.example", "host.", "x-y:z"):
            self.assertTrue(isValidHeloName(name), name)

    def test_5321_04_addressLiterals(self) -> None:
        """
        C{[192.0.2.1]} and C{[IPv6:2001:db8::1]} are valid EHLO names.
        """
        self.assertTrue(isValidHeloName("[192.0.2.1]"))
        self.assertTrue(isValidHeloName("[IPv6:2001:db8::1]"))

    def test_5321_05_empty(self) -> None:
        """
        An empty name is invalid.
        """
        self.assertFalse(isValidHeloName(""))

    def test_rejectsWhitespaceAndControls(self) -> None:
        """
        C{a\\rb}, spaces, tabs, NUL and DEL make a name invalid.
        """
        for name in ("a\rb", "a\nb", "a b", "a\tb", "a\x00b", "a\x7fb", " a", "a "):
            self.assertFalse(isValidHeloName(name), repr(name))

    def test_rejectsHeaderSpecials(self) -> None:
        """
        Characters with meaning in a header (C{<>()"\\;,@}) make a name invalid.
        """
        for special in '<>()"\\;,@':
            self.assertFalse(isValidHeloName(f"a{special}b"), special)

    def test_5321_lengthOfADomain(self) -> None:
        """
        A name may be as long as a domain may (255 octets, RFC 5321 section 4.5.3.1.2),
        and no longer: it goes into the Received field, whose line RFC 5322 limits.
        """
        longest = ".".join(["a" * 63] * 4)
        self.assertEqual(len(longest), 255)
        self.assertTrue(isValidHeloName(longest))
        self.assertFalse(isValidHeloName(longest + "a"))

    def test_2_13_rejectsNonAscii(self) -> None:
        """
        C{bücher.example} is invalid: EHLO stays ASCII even with SMTPUTF8.
        """
        self.assertFalse(isValidHeloName("b\u00fccher.example"))
        self.assertFalse(isValidHeloName("a\u00a0b"))


class HeloNameConversionTests(SynchronousTestCase):
    """
    Tests for L{heloName}: the name a hello gives the client.
    """

    def test_6531_10_uLabelsAsALabels(self) -> None:
        """
        A name with U-labels is its A-label form (standards 6531-10 allows accepting it
        converted); its ASCII labels are left as sent.
        """
        self.assertEqual(heloName("PC.b\u00fccher.example"), "PC.xn--bcher-kva.example")
        self.assertEqual(heloName("client.example"), "client.example")
        self.assertEqual(heloName("[192.0.2.1]"), "[192.0.2.1]")

    def test_idna2008(self) -> None:
        """
        The A-labels are IDNA 2008's, as registries have them, not the mapping of
        Python's IDNA 2003 codec (attack QA: C{faß.de} became C{fass.de}, another domain,
        and a final sigma became a sigma).
        """
        self.assertEqual(heloName("fa\u00df.de"), "xn--fa-hia.de")
        self.assertEqual(heloName("\u03c2.gr"), "xn--3xa.gr")
        self.assertEqual(aLabels("B\u00fccher.example"), "xn--bcher-kva.example")

    def test_refused(self) -> None:
        """
        What L{isValidHeloName} refuses, before or after the conversion, and a label
        with no A-label form (too long; a character IDNA 2008 does not allow, such as
        ASCII punctuation beside a non-ASCII letter; a joiner out of its context), give
        L{None}.
        """
        for name in (
            "",
            "a<b",
            "\u00fc<b.example",
            "\u00fc" * 64,
            "a\u00a0b",
            "[\u00fc]",
            "\u00fc:25",
            "\u00fc/",
            "a\u200db\u00fc.example",
        ):
            self.assertIsNone(heloName(name), repr(name))


class GrammarPropertyTests(SynchronousTestCase):
    """
    Properties of the whole grammar module on arbitrary text.
    """

    def _onlyGrammarError(
        self, function: Callable[..., object], *args: object, **kwargs: object
    ) -> None:
        with contextlib.suppress(GrammarError):
            function(*args, **kwargs)

    @_FAST
    @given(st.text(), st.booleans(), st.booleans())
    def test_parseMailboxOnlyRaisesGrammarError(
        self, text: str, lenient: bool, allowPostmaster: bool
    ) -> None:
        """
        Any text either parses as a mailbox or raises GrammarError, nothing else.
        """
        self._onlyGrammarError(parseMailbox, text, lenient=lenient, allowPostmaster=allowPostmaster)

    @_FAST
    @given(st.text(alphabet=_ADDRESS_ALPHABET), st.booleans(), st.booleans())
    def test_parseMailboxAddressLikeTextOnlyRaisesGrammarError(
        self, text: str, lenient: bool, allowPostmaster: bool
    ) -> None:
        """
        Address-like junk either parses as a mailbox or raises GrammarError, nothing else.
        """
        self._onlyGrammarError(parseMailbox, text, lenient=lenient, allowPostmaster=allowPostmaster)

    @_FAST
    @given(st.text(alphabet=_ADDRESS_ALPHABET))
    def test_acceptedMailboxIsStable(self, text: str) -> None:
        """
        A mailbox that strict parsing returns parses again to itself, free of controls.
        """
        try:
            mailbox = parseMailbox(text)
        except GrammarError:
            return
        self.assertEqual(parseMailbox(mailbox), mailbox)
        self.assertNotIn("\x00", mailbox)
        self.assertNotIn("\u200b", mailbox)

    @_FAST
    @given(st.text())
    def test_decodeXtextOnlyRaisesGrammarError(self, text: str) -> None:
        """
        Any text either decodes as xtext or raises GrammarError, nothing else.
        """
        self._onlyGrammarError(decodeXtext, text)

    @_FAST
    @given(st.text())
    def test_isValidHeloNameNeverRaises(self, text: str) -> None:
        """
        Any text gives a yes or no answer; a yes is printable ASCII without spaces.
        """
        if isValidHeloName(text):
            self.assertTrue(text.isascii() and text.isprintable())
            self.assertNotIn(" ", text)

    @_FAST
    @given(st.text())
    def test_splitPathCommandOnlyRaisesGrammarError(self, text: str) -> None:
        """
        C{MAIL FROM:} followed by any text splits or raises GrammarError, nothing else.
        """
        self._onlyGrammarError(_mail, "MAIL FROM:" + text)
        self._onlyGrammarError(_rcpt, text)

    @_FAST
    @given(st.text(alphabet=_ADDRESS_ALPHABET + "SIZEBODY=0123"))
    def test_splitPathCommandAddressLikeText(self, text: str) -> None:
        """
        Path-like junk after C{MAIL FROM:} splits or raises GrammarError; what splits has
        upper-case keywords and no control characters in decoded values.
        """
        try:
            command = _mail("MAIL FROM:" + text)
        except GrammarError:
            return
        self.assertEqual(command.params.keys(), command.raw.keys())
        for key, value in command.params.items():
            self.assertEqual(key, key.upper())
            if value is not None:
                self.assertNotIn("\x00", value)
                self.assertNotIn("\x7f", value)


def _outcome(function: Callable[[str], object], text: str) -> object:
    # What function(text) returns, or the message of the GrammarError it raises.
    try:
        return function(text)
    except GrammarError as e:
        return str(e)


def _accepts(check: Callable[[str], object], text: str) -> bool:
    try:
        check(text)
    except GrammarError:
        return False
    return True


# Text that looks like local parts and domains, with the characters that decide the
# shortcuts: dots, hyphens, quotes, punycode prefixes, non-ASCII, and a long run.
_PART_ALPHABET = "aZ9.-_+'xnXN\"\u00fc@ "
_PARTS = st.one_of(
    st.text(alphabet=_PART_ALPHABET, max_size=80),
    st.builds("".join, st.lists(st.sampled_from(["a", "xn--", ".", "-", "b" * 62, "9"]))),
    # Dot-separated words of label and atom characters, most of which look valid.
    st.lists(st.text(alphabet="aZ9-_+xn\u00fc", max_size=8), min_size=1, max_size=6).map(".".join),
)


# What the shortcuts themselves match, mixed with the text above, so that the properties
# below are mostly about text a shortcut takes.
_LOCAL_PARTS = st.one_of(_PARTS, st.from_regex(_ASCII_DOT_STRING, fullmatch=True))
_DOMAINS = st.one_of(_PARTS, st.from_regex(_PLAIN_DOMAIN, fullmatch=True))


class ShortcutTests(SynchronousTestCase):
    """
    The regular expressions that accept the common address shapes at once accept nothing
    the full checks refuse: they are shortcuts, not a second grammar.
    """

    @_FAST
    @given(_LOCAL_PARTS)
    @example("a" * 64)
    @example("a" * 65)
    @example("a." * 31 + "bc")
    @example("a." * 32 + "b")
    @example("a-")
    def test_localPartShortcut(self, text: str) -> None:
        """
        A local part the ASCII Dot-string shortcut accepts, the full check accepts; with
        or without the shortcut, the same local parts are accepted.
        """
        if len(text) <= 64 and _ASCII_DOT_STRING.match(text):
            self.assertTrue(_accepts(_checkLocalPartFully, text), text)
        self.assertEqual(
            _accepts(_checkLocalPart, text), _accepts(_checkLocalPartFully, text), text
        )

    @_FAST
    @given(_DOMAINS)
    @example("a" * 63 + ".example")
    @example("a" * 64 + ".example")
    @example("ab-.example")
    @example("example.ab-")
    @example("-ab.example")
    @example(".".join(["a" * 63] * 4))
    def test_domainShortcut(self, text: str) -> None:
        """
        A domain the plain-domain shortcut accepts, the full check accepts unchanged;
        with or without the shortcut, the same domains are accepted, as the same text.
        """
        if len(text) <= 255 and _PLAIN_DOMAIN.match(text):
            self.assertEqual(_checkDomainFully(text), text)
        accepted = _accepts(_checkDomain, text)
        self.assertEqual(accepted, _accepts(_checkDomainFully, text), text)
        if accepted:
            self.assertEqual(_checkDomain(text), _checkDomainFully(text))

    def test_shortcutLimits(self) -> None:
        """
        Where the shortcuts stop: 63-character labels and 64-character local parts are
        taken at once, one more character is not, nor a label with a trailing hyphen; the
        full checks refuse those too.
        """
        self.assertIsNotNone(_PLAIN_DOMAIN.match("a" * 63 + ".example"))
        for domain in ("a" * 64 + ".example", "ab-.example", "example.ab-"):
            self.assertIsNone(_PLAIN_DOMAIN.match(domain), domain)
            self.assertFalse(_accepts(_checkDomainFully, domain), domain)
        self.assertTrue(_accepts(_checkLocalPart, "a" * 64))
        self.assertFalse(_accepts(_checkLocalPart, "a" * 65))
        self.assertFalse(_accepts(_checkLocalPartFully, "a" * 65))

    def test_domainShortcutLeavesPunycode(self) -> None:
        """
        Punycode labels, valid or not, go to the full check, which decodes them.
        """
        for domain in ("xn--bcher-kva.example", "a.XN--zz.example", "xn--.example"):
            self.assertIsNone(_PLAIN_DOMAIN.match(domain), domain)
        self.assertFalse(_accepts(_checkDomainFully, "xn--ab-.example"))

    @_FAST
    @given(st.text(alphabet='ab@.<>" \\', max_size=30))
    def test_pathEndShortcut(self, text: str) -> None:
        """
        _pathEnd finds the same end as the full quote-aware scan, or refuses as it does.
        """
        text = "<" + text
        self.assertEqual(_outcome(_pathEnd, text), _outcome(_scanPathEnd, text), text)


# MAIL and RCPT lines around those parts: the keyword in any case and spacing, the path's
# brackets or not, and parameters of every kind after it.
_KEYWORDS = st.sampled_from(
    ["MAIL FROM", "RCPT TO", "mail from", "Rcpt To", "MAIL FROM ", " RCPT TO", "MAIL  FROM"]
)
_TAILS = st.one_of(
    st.just(""),
    st.sampled_from([" SIZE=100", " BODY=8BITMIME SMTPUTF8", "SIZE=1", " ", "  X=a+2Bb", ">"]),
    st.text(alphabet=' =+0Aab<>"\x00', max_size=12),
)
_PATH_LINES = st.one_of(
    st.builds(
        "{}:{}<{}@{}>{}".format,
        _KEYWORDS,
        st.sampled_from(["", "", " "]),
        _LOCAL_PARTS,
        _DOMAINS,
        _TAILS,
    ),
    st.builds("{}:{}".format, _KEYWORDS, st.text(alphabet=_ADDRESS_ALPHABET, max_size=40)),
)


class PathCommandShortcutTests(SynchronousTestCase):
    """
    L{parsePathCommand}, which takes the commonest MAIL and RCPT lines with one regular
    expression, gives what L{splitPathCommand} and L{parseMailbox} give, or refuses what
    they refuse.
    """

    @_FAST
    @given(_PATH_LINES, st.booleans(), st.booleans())
    @example("MAIL FROM:<" + "a" * 64 + "@example.com>", False, False)
    @example("MAIL FROM:<" + "a" * 65 + "@example.com>", False, False)
    @example("RCPT TO:<" + "a" * 64 + "@" + ".".join(["b" * 62] * 3) + ".cd>", False, True)
    @example("RCPT TO:<" + "a" * 64 + "@" + ".".join(["b" * 62] * 3) + ".c>", False, True)
    @example("MAIL FROM:<a@xn--bcher-kva.example> SIZE=10", True, False)
    @example("MAIL FROM:<a@mail.xn--zz.example>", False, False)
    @example("MAIL FROM:<a@b.example>SIZE=10", False, False)
    @example("RCPT TO:<postmaster>", False, True)
    def test_sameAsTheGeneralChecks(self, line: str, lenient: bool, postmaster: bool) -> None:
        """
        The same mailbox and command, or a L{GrammarError} where they raise one.
        """
        keyword = "MAIL FROM" if line.strip().upper().startswith("MAIL") else "RCPT TO"

        def general(line: str) -> object:
            command = splitPathCommand(line, keyword)
            mailbox = parseMailbox(command.path, lenient=lenient, allowPostmaster=postmaster)
            return mailbox, command

        def shortcut(line: str) -> object:
            return parsePathCommand(line, keyword, lenient=lenient, allowPostmaster=postmaster)

        expected = _outcome(general, line)
        if isinstance(expected, str):
            self.assertRaises(GrammarError, shortcut, line)
        else:
            self.assertEqual(shortcut(line), expected, line)

    def test_commonLines(self) -> None:
        """
        The lines every client sends are taken whole, parameters included.
        """
        self.assertEqual(
            parsePathCommand("MAIL FROM:<alice@example.net> SIZE=4096 BODY=8BITMIME", "MAIL FROM"),
            (
                "alice@example.net",
                PathCommand(
                    "alice@example.net",
                    {"SIZE": "4096", "BODY": "8BITMIME"},
                    {"SIZE": "4096", "BODY": "8BITMIME"},
                ),
            ),
        )
        self.assertEqual(
            parsePathCommand("rcpt to:<Bob.Smith@Mail.Example.ORG>", "RCPT TO"),
            ("Bob.Smith@Mail.Example.ORG", PathCommand("Bob.Smith@Mail.Example.ORG", {}, {})),
        )
