"""Reading users' text files in a given encoding, with one-line errors.

Files made by other tools (an answer file from a Windows script, a prediction CSV saved by
Excel in cp1252) are not always UTF-8. Every read of such a file goes through :func:`read_text`:
it decodes the whole file with the given encoding (UTF-8 by default; a UTF-8 byte-order mark is
dropped) and, where a byte does not decode, raises :class:`TextEncodingError`, one line naming
the file, the line, the byte offset and the byte, and what to do -- by default to pass
``--encoding`` (the option :func:`encoding_option` adds to a command), e.g. ``--encoding latin-1``.
"""

from __future__ import annotations

import codecs
import io
import os
from pathlib import Path

DEFAULT_ENCODING = "utf-8"

#: What a command with an ``--encoding`` option tells the user.
ENCODING_REMEDY = "pass the file's encoding with --encoding (e.g. --encoding {guess})"
#: What a file with no ``--encoding`` option (a YAML config or spec) tells the user.
SAVE_AS_UTF8_REMEDY = "save the file as UTF-8 (e.g. iconv -f {guess} -t utf-8 FILE > NEW)"

_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


class TextEncodingError(ValueError):
    """A text file does not decode in the encoding it is read with (the message is one line)."""

    def __init__(self, message: str, path: Path, line: int, offset: int) -> None:
        super().__init__(message)
        self.path, self.line, self.offset = path, line, offset


def check_encoding(name: str | None) -> str:
    """``name`` when Python knows the encoding (``utf-8`` for None); a one-line ValueError otherwise."""
    if name is None:
        return DEFAULT_ENCODING
    try:
        codecs.lookup(str(name))
    except LookupError:
        raise ValueError(f"--encoding {name!r} is no encoding Python knows; use e.g. utf-8, latin-1, cp1252 "
                         "or utf-16") from None
    return str(name)


def _is_utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")


def guess_encoding(data: bytes) -> str:
    """The encoding to suggest for bytes that did not decode: UTF-16/32 when the file starts with
    their byte-order mark, else latin-1 (which decodes any byte)."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            return name
    return "latin-1"


def decode(data: bytes, path: str | os.PathLike, encoding: str = DEFAULT_ENCODING, *,
           remedy: str = ENCODING_REMEDY) -> str:
    """``data`` (the bytes of the file ``path``) as text in ``encoding``; a UTF-8 byte-order mark
    is dropped. Raises :class:`TextEncodingError` naming the file, the line (1-based), the byte
    offset (0-based, from the start of the file) and the byte; ``remedy`` (with ``{guess}``
    filled in) says what to do."""
    encoding = check_encoding(encoding)
    start = 0
    if _is_utf8(encoding):
        encoding = "utf-8"
        if data.startswith(codecs.BOM_UTF8):
            start = len(codecs.BOM_UTF8)
    body = memoryview(data)[start:]
    try:
        return codecs.decode(body, encoding)
    except UnicodeDecodeError as exc:
        offset = start + exc.start
        try:
            before = codecs.decode(body[:exc.start], encoding, errors="replace")
        except UnicodeDecodeError:  # pragma: no cover - a stateful codec that cannot stop there
            before = ""
        line = before.count("\n") + before.count("\r") - before.count("\r\n") + 1
        bad = bytes(data[offset:start + exc.end])[:4]
        shown = " ".join(f"0x{b:02x}" for b in bad) or "the end of the file"
        reason = str(exc.reason).strip()
        message = (f"{path} line {line}, byte offset {offset}: {shown} is not valid {encoding} ({reason}); "
                   + remedy.format(guess=guess_encoding(data)))
        raise TextEncodingError(message, Path(path), line, offset) from None


def read_text(path: str | os.PathLike, encoding: str = DEFAULT_ENCODING, *, remedy: str = ENCODING_REMEDY) -> str:
    """The text of the file ``path`` in ``encoding`` (see :func:`decode`); OSErrors (a missing
    file) pass through for the caller to word."""
    return decode(Path(path).read_bytes(), path, encoding, remedy=remedy)


def open_text(path: str | os.PathLike, encoding: str = DEFAULT_ENCODING, *,
              remedy: str = ENCODING_REMEDY) -> io.StringIO:
    """The file decoded whole (as :func:`read_text`) as a text stream read with universal newlines,
    the way ``open(path)`` reads: for line-by-line readers and ``pandas.read_csv``."""
    return io.StringIO(read_text(path, encoding, remedy=remedy), newline=None)


def encoding_option(what: str = "the input files"):
    """The ``--encoding`` click option (default utf-8), checked when parsed."""
    import click

    def check(ctx, param, value):  # noqa: ARG001
        try:
            return check_encoding(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc).replace(f"--encoding {value!r} is", f"{value!r} is"),
                                     ctx=ctx, param=param) from None

    return click.option("--encoding", default=DEFAULT_ENCODING, show_default=True, callback=check, metavar="NAME",
                        help=f"Text encoding of {what} (e.g. latin-1, cp1252, utf-16 for files from other tools).")


__all__ = ["DEFAULT_ENCODING", "ENCODING_REMEDY", "SAVE_AS_UTF8_REMEDY", "TextEncodingError", "check_encoding",
           "decode", "encoding_option", "guess_encoding", "open_text", "read_text"]
