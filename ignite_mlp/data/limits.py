"""The limits every reader of users' images keeps: ``--data`` loading, ``predict``, ``evaluate``
and ``samples``. Each is checked from a header before anything large is read (a tar member's
size from its tar header, an image's pixels from its file header), so a small hostile file never
takes more than a bounded amount of memory. An environment variable raises a limit for a user
who means it; the refusal names the variable.

>>> try:
...     check_pixels(40000, 40000, "bomb.png")
... except UserError as e:
...     for part in str(e).split("; "):
...         print(part)
bomb.png: declares 40000x40000 pixels, more than the 67108864 an image may have here
delete or shrink this file (or raise the limit: IGNITE_MLP_MAX_PIXELS=1600000000)
"""

from __future__ import annotations

import decimal
import os
from dataclasses import dataclass

from ignite_mlp.errors import UserError

# Far beyond any image an MLP trains on or a camera takes, far below what exhausts a machine's memory.
MAX_PIXELS = ("IGNITE_MLP_MAX_PIXELS", 2**26)
MAX_MEMBER_BYTES = ("IGNITE_MLP_MAX_MEMBER_BYTES", 64 * 2**20)
# CIFAR-10 is 60000 files; each tar member read keeps a small record in memory until the archive closes.
MAX_MEMBERS = ("IGNITE_MLP_MAX_MEMBERS", 2_000_000)
MAX_TOTAL_BYTES = ("IGNITE_MLP_MAX_TOTAL_BYTES", 16 * 2**30)
# The largest limit a variable may set: beyond it a count or a byte total is no limit at all.
MOST = 2**63


def limit(setting: tuple[str, int]) -> int:
    """The limit ``(variable, default)``: the environment variable's value when set, else the default.

    >>> limit(("IGNITE_MLP_NO_SUCH_LIMIT", 7))
    7
    """
    name, default = setting
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:  # Decimal: 1e6 is a whole number, 1.5e0 is not, 1e400 is not a float's inf
        number = decimal.Decimal(text)
    except decimal.InvalidOperation:
        number = decimal.Decimal("NaN")
    if not number.is_finite() or number != number.to_integral_value() or not 1 <= number <= MOST:
        raise UserError(
            f"{name}={text}: must be a positive whole number, at most 2**63 (the default is {default}); fix or unset it"
        )
    return int(number)


def _refuse(where: str, what: str, setting: tuple[str, int], fix: str, suggested: int) -> UserError:
    return UserError(f"{where}: {what}; {fix} (or raise the limit: {setting[0]}={suggested})")


def check_pixels(width: int, height: int, where: str) -> None:
    """Refuse an image whose header declares more pixels than ``IGNITE_MLP_MAX_PIXELS``, before it is decoded."""
    most = limit(MAX_PIXELS)
    if width * height > most:
        what = f"declares {width}x{height} pixels, more than the {most} an image may have here"
        raise _refuse(where, what, MAX_PIXELS, "delete or shrink this file", width * height)


def check_member_bytes(size: int, where: str) -> None:
    """Refuse a file or archive member larger than ``IGNITE_MLP_MAX_MEMBER_BYTES``, before it is read.

    >>> check_member_bytes(100, "a.png")
    """
    most = limit(MAX_MEMBER_BYTES)
    if size > most:
        what = f"{size} bytes, more than the {most} an image file may have here"
        raise _refuse(where, what, MAX_MEMBER_BYTES, "remove it", size)


@dataclass
class Budget:
    """What one source (a folder tree or an archive) may hold in all: files or members counted
    (``IGNITE_MLP_MAX_MEMBERS``) and bytes read (``IGNITE_MLP_MAX_TOTAL_BYTES``).

    >>> budget = Budget("t.tar.gz")
    >>> budget.count(); budget.take(10, "t.tar.gz:a.png"); budget.members, budget.bytes
    (1, 10)
    """

    source: str
    members: int = 0
    bytes: int = 0

    def count(self) -> None:
        """One more file or member seen (read or not)."""
        self.members += 1
        most = limit(MAX_MEMBERS)
        if self.members > most:
            what = f"holds more than {most} files or members"
            raise _refuse(self.source, what, MAX_MEMBERS, "split it into smaller sources", 2 * most)

    def take(self, size: int, where: str) -> None:
        """A file of ``size`` bytes about to be read: refused when it, or the total, is over its limit."""
        check_member_bytes(size, where)
        self.bytes += size
        most = limit(MAX_TOTAL_BYTES)
        if self.bytes > most:
            what = f"more than {most} bytes of image files in all"
            raise _refuse(self.source, what, MAX_TOTAL_BYTES, "use a smaller data set", 2 * most)
