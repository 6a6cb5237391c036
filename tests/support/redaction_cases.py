"""Spoken secrets and innocent look-alikes, as speech recognition writes them: the data the redaction
tests hold every case to and the redaction bench times.

A secret is the turns of one call (usually one) and the parts of them that must not survive; a
look-alike is turns that must come out exactly as they went in.
"""

from __future__ import annotations

import re

Turns = tuple[str, ...]

SECRETS: list[tuple[Turns, tuple[str, ...]]] = [
    # cards: digits, spoken digits, separators, fillers, no key word at all
    (("my card number is 4111 1111 1111 1111",), ("4111 1111 1111 1111",)),
    (("card 4111 dash 1111 dash 1111 dash 1111",), ("4111 dash 1111 dash 1111 dash 1111",)),
    (("it's 5555-5555-5555-4444",), ("5555-5555-5555-4444",)),
    (
        ("the number is four zero one two, eight eight eight eight, eight eight eight eight, one eight eight one",),
        ("four zero one two, eight eight eight eight, eight eight eight eight, one eight eight one",),
    ),
    (("uh yeah 3782 822463 10005",), ("3782 822463 10005",)),
    (("my visa is 4012888888881881",), ("4012888888881881",)),
    (
        ("six oh one one, one one one one, one one one one, one one one seven",),
        ("six oh one one, one one one one, one one one one, one one one seven",),
    ),
    (("it's 5105 uh 1051 um 0510 5100",), ("5105 uh 1051 um 0510 5100",)),
    (("mastercard 2223 0031 2200 3222",), ("2223 0031 2200 3222",)),
    (("card is 4111 1111 1111 1111 expiring next year",), ("4111 1111 1111 1111",)),
    (("four triple one, one one one one, one one one one, one one one one",), ("four triple one, one one one one",)),
    (("uh my card is like 4111 um 1111 uh 1111 like 1111",), ("4111 um 1111 uh 1111 like 1111",)),
    (("it's 3530 1113 3330 0000",), ("3530 1113 3330 0000",)),
    (
        ("my amex is three seven eight two, eight two two four six three, one zero zero zero five",),
        ("three seven eight two, eight two two four six three, one zero zero zero five",),
    ),
    (("credit card 6011 0009 9013 9424 please",), ("6011 0009 9013 9424",)),
    (("the card is 4111 1111 1111 1111, and my phone is 415 555 0123",), ("4111 1111 1111 1111",)),
    # a number read out over two turns
    (("my card starts 4012 8888", "and ends 8888 1881"), ("4012 8888", "8888 1881")),
    (("it's 5555 5555", "5555 4444"), ("5555 5555", "5555 4444")),
    (("four one one one, one one one one", "then one one one one, one one one one"), ("four one one one",)),
    (("so the number, uh, 3782 8224", "6310 005"), ("3782 8224", "6310 005")),
    # social security numbers
    (("my social is 078-05-1120",), ("078-05-1120",)),
    (("ssn 078051120",), ("078051120",)),
    (("zero seven eight, zero five, one one two zero",), ("zero seven eight, zero five, one one two zero",)),
    (("my social security number is 219 09 9999",), ("219 09 9999",)),
    (("social security number, uh, 123-45-6789",), ("123-45-6789",)),
    (("it's 536 dash 22 dash 8726",), ("536 dash 22 dash 8726",)),
    (("my social is 078 05", "1120"), ("078 05", "1120")),
    (("the last four of my social are 1120",), ("1120",)),
    # PINs, CVVs, one-time codes
    (("my PIN is four three two one",), ("four three two one",)),
    (("pin 7291",), ("7291",)),
    (("the PIN number is, um, 0 0 4 2",), ("0 0 4 2",)),
    (("my debit card PIN's 8 5 5 3",), ("8 5 5 3",)),
    (("cvv is 737",), ("737",)),
    (("the three digits on the back are 4 1 9",), ("4 1 9",)),
    (("security code one two three four",), ("one two three four",)),
    (("the verification code they texted me is 482 913",), ("482 913",)),
    (("one-time code 604 218",), ("604 218",)),
    (("my PIN is", "four three two one"), ("four three two one",)),
    (("the pin for my card is nine nine one two",), ("nine nine one two",)),
    # passwords and passphrases
    (("my password is correct horse battery staple",), ("correct horse battery staple",)),
    (("the password is, uh, swordfish9",), ("swordfish9",)),
    (("password: hunter2",), ("hunter2",)),
    (("my wifi password is kestrel 2024 blue",), ("kestrel 2024 blue",)),
    (("my passphrase is purple monkey dishwasher, can you check it",), ("purple monkey dishwasher",)),
    (("the passcode is 5 5 0 1 2",), ("5 5 0 1 2",)),
    (("my password is", "swordfish nine"), ("swordfish nine",)),
    (("my secret word is marmalade",), ("marmalade",)),
    (("my password is correct horse", "battery staple"), ("correct horse", "battery staple")),
    (("password is Qwerty!23",), ("Qwerty!23",)),
    (("the passcode is abc.def",), ("abc.def",)),
    # bank accounts
    (("my bank account number is 12345678",), ("12345678",)),
    (("routing number 021000021 and account number 000123456789",), ("021000021", "000123456789")),
    (("checking account 4400 1234 5678",), ("4400 1234 5678",)),
    (("my IBAN is GB82 WEST 1234 5698 7654 32",), ("GB82 WEST 1234 5698 7654 32",)),
    (("sort code 20 00 00, account 55779911",), ("20 00 00", "55779911")),
]

LOOKALIKES: list[Turns] = [
    # phone numbers
    ("my number is 415 555 0123",),
    ("call me back on (415) 555-0123",),
    ("you can reach me at plus 44 20 7946 0958",),
    ("my mobile is +49 1512 3456789",),
    ("it's 020 7946 0958",),
    ("call 1 800 555 0199",),
    ("my phone number is four one five, five five five, zero one two three",),
    ("call me on 415 555 0123 or 415 555 0199",),
    ("my number is 415 555", "0123 thanks"),
    # prices and amounts
    ("the bill was $49.99",),
    ("I was charged 129.50 twice",),
    ("it costs $1,299 a year",),
    ("I paid 25 dollars with my card",),
    ("my card was charged 49.99 twice",),
    ("the price went from 59 to 69 dollars",),
    ("the speed is 500 megabits",),
    # order, tracking and reference numbers that fail the Luhn check
    ("my order number is 5237 4401 9923 1108",),
    ("order 1234567890123456",),
    ("the reference is 7731 0042 8810 5523",),
    ("tracking number 9400 1000 0000 0000 0000 00",),
    ("order number 100-200-3000-4000",),
    ("invoice 4111 1111 1111 1112",),
    ("reference 2024 0501 7734 2201",),
    ("order 5237 4401", "and 9923 1108"),
    # dates and times
    ("I signed up on 2024-05-01",),
    ("my appointment is on 05/14/2025",),
    ("it started on March 3rd 2024",),
    ("my birthday is 12 03 1985",),
    ("it happened at 10:30 pm",),
    ("it happened around 7 45 this morning",),
    ("I've been a customer since 2015",),
    # passwords, PINs and cards talked about, not said
    ("my password reset didn't arrive",),
    ("I forgot my password",),
    ("my password is not working",),
    ("how do I change my wifi password",),
    ("the password is on the sticker on the router",),
    ("the password is correct but it doesn't work",),
    ("is the password case sensitive",),
    ("I need a password reset link",),
    ("my new password arrived, thanks",),
    ("my PIN has 4 digits",),
    ("the security code never arrived",),
    ("what's the cvv",),
    ("my card was declined",),
    ("the card ending in 1881 was charged",),
    ("my social media account was hacked",),
    # other numbers
    ("my zip code is 90210",),
    ("error code 404 keeps showing",),
    ("I have 3 routers and 2 modems",),
    ("the outage lasted 3 hours",),
    ("my account is 5 years old",),
    ("I live at 1600 Pennsylvania Avenue",),
    ("channel 1011 and 1012",),
    ("the router model is TP 5400",),
]


def pieces(secrets: tuple[str, ...], said: str) -> list[str]:
    """The words of the secrets that a redaction must take away: those the rest of the turns do not say."""
    rest = said
    for secret in secrets:
        rest = rest.replace(secret, " ")
    words = [word for secret in secrets for word in re.findall(r"\w+", secret)]
    return [word for word in words if not re.search(rf"\b{re.escape(word)}\b", rest)]
