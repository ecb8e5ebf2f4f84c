"""
SASLprep (RFC 4013): the stringprep profile (RFC 3454) that SASL mechanisms apply to user
names, passwords and authorisation identities before comparing them.

One pure function, L{saslPrep}, built on the standard library's C{stringprep} tables and
its Unicode 3.2 database (the version RFC 3454 is written against).  RFC 4616 section 2
fails a PLAIN exchange whose authorisation identity cannot be prepared or prepares to
nothing; L{smtpsvc._core._sasl} uses this function to decide that.
"""

from __future__ import annotations

import stringprep
import unicodedata
from collections.abc import Callable
from typing import Final

# RFC 4013 section 2.3: what may not appear once the string is mapped and normalised.
# C.1.2 (non-ASCII spaces) is mapped to SPACE first, so it can only come back through
# normalisation; it is listed all the same, as the RFC lists it.
_PROHIBITED: Final[tuple[Callable[[str], bool], ...]] = (
    stringprep.in_table_c12,
    stringprep.in_table_c21,
    stringprep.in_table_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
)


def _mapped(character: str) -> str:
    # RFC 4013 section 2.1: "commonly mapped to nothing" characters (soft hyphen,
    # zero-width joiners, variation selectors...) go away, non-ASCII spaces become SPACE.
    # ZERO WIDTH SPACE is in both tables (a space in Unicode 3.2); it goes away.
    if stringprep.in_table_b1(character):
        return ""
    if stringprep.in_table_c12(character):
        return " "
    return character


def _bidiAcceptable(text: str) -> bool:
    # RFC 3454 section 6: a string with any right-to-left character (D.1) has no
    # left-to-right one (D.2), and starts and ends with a right-to-left character.
    if not any(stringprep.in_table_d1(c) for c in text):
        return True
    if any(stringprep.in_table_d2(c) for c in text):
        return False
    return stringprep.in_table_d1(text[0]) and stringprep.in_table_d1(text[-1])


def saslPrep(text: str, allowUnassigned: bool = False) -> str | None:
    """
    C{text} prepared with SASLprep (RFC 4013), or L{None} when the profile prohibits it.

    The result may be empty (a string of characters mapped to nothing); callers that need
    an identity must refuse that too (RFC 4616 section 2).

    @param allowUnassigned: treat C{text} as a query string, in which code points
        unassigned in Unicode 3.2 (table A.1) are kept; by default it is a stored string,
        and they are prohibited (RFC 3454 section 7).
    """
    prepared = unicodedata.ucd_3_2_0.normalize("NFKC", "".join(map(_mapped, text)))
    for character in prepared:
        if any(prohibited(character) for prohibited in _PROHIBITED):
            return None
        if not allowUnassigned and stringprep.in_table_a1(character):
            return None
    if not _bidiAcceptable(prepared):
        return None
    return prepared
