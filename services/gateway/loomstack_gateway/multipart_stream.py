"""Incremental multipart/form-data parsing: a request body in, form events out, bounded memory.

`MultipartStream.feed()` takes each body chunk as it arrives and returns what it completed:
small form fields whole (`FormField`), the file part as `FileStart`, `FileChunk`s of about
`chunk_bytes` and `FileEnd`. Nothing but the current chunk of the file is ever held.

Everything but the file's bytes is bounded, so a form cannot make the gateway read without end
before the upload starts: a field's value (`MAX_FIELD_BYTES`), each part header's size and the
number of headers of a part (python-multipart's own bounds, set here explicitly), the number of
parts, and all the bytes that are not the file together (fields, headers, boundaries, preamble
and epilogue: `MAX_FORM_BYTES`). Past a bound: `413`.
"""

from __future__ import annotations

from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from loomstack_kit.errors import InvalidArgument, TooLarge

MAX_FIELD_BYTES = 64 * 1024
MAX_PART_HEADER_BYTES = 4096
MAX_PART_HEADERS = 8
MAX_PARTS = 16
MAX_FORM_BYTES = 1024 * 1024


@dataclass(frozen=True)
class FormField:
    """A complete non-file field."""

    name: str
    value: str


@dataclass(frozen=True)
class FileStart:
    """A file part begins."""

    name: str
    filename: str


@dataclass(frozen=True)
class FileChunk:
    """The next bytes of the file part."""

    data: bytes


@dataclass(frozen=True)
class FileEnd:
    """The file part is complete."""


Event = FormField | FileStart | FileChunk | FileEnd


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a `multipart/form-data` Content-Type, or InvalidArgument."""
    ctype, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise InvalidArgument(
            "the request must be multipart/form-data with a `file` part and a `purpose` field",
            param="file",
            code="invalid_content_type",
        )
    return boundary


class MultipartStream:
    """A push parser over python-multipart's streaming `MultipartParser`."""

    def __init__(self, content_type: str | None, *, chunk_bytes: int) -> None:
        self.chunk_bytes = chunk_bytes
        self.complete = False
        self._events: list[Event] = []
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._field_name: str | None = None
        self._is_file = False
        self._data = bytearray()
        self._parts = 0
        self._fed = 0
        self._file_bytes = 0
        self._parser = MultipartParser(
            boundary_of(content_type),
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
            max_header_count=MAX_PART_HEADERS,
            max_header_size=MAX_PART_HEADER_BYTES,
        )

    def feed(self, data: bytes) -> list[Event]:
        """Parses the next piece of the body; returns the events it completed."""
        try:
            self._parser.write(data)
        except MultipartParseError as exc:
            # python-multipart's own header bounds: a size limit, not a malformed body.
            if str(exc).startswith("Maximum header"):
                raise TooLarge(
                    f"a form part has a header over {MAX_PART_HEADER_BYTES} bytes or more than "
                    f"{MAX_PART_HEADERS} headers",
                    param="file",
                    code="part_headers_too_large",
                ) from exc
            raise InvalidArgument(
                f"malformed multipart body: {exc}", param="file", code="invalid_multipart"
            ) from exc
        self._fed += len(data)
        if self._fed - self._file_bytes > MAX_FORM_BYTES:
            raise TooLarge(
                f"the form's fields, part headers and boundaries are larger than "
                f"{MAX_FORM_BYTES} bytes together (only the file part may be large)",
                param="file",
                code="form_too_large",
            )
        events, self._events = self._events, []
        return events

    # -- python-multipart callbacks -------------------------------------------------------------

    def _on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise TooLarge(
                f"the form has more than {MAX_PARTS} parts", param="file", code="too_many_parts"
            )
        self._headers = {}
        self._field_name = None
        self._is_file = False
        self._data.clear()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        name = options.get(b"name")
        if name is None:
            raise MultipartParseError("a part has no Content-Disposition name")
        self._field_name = name.decode("utf-8", "replace")
        filename = options.get(b"filename")
        self._is_file = filename is not None
        if filename is not None:
            self._events.append(FileStart(self._field_name, filename.decode("utf-8", "replace")))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._data += data[start:end]
        if self._is_file:
            self._file_bytes += end - start
            if len(self._data) >= self.chunk_bytes:
                self._events.append(FileChunk(bytes(self._data)))
                self._data.clear()
        elif len(self._data) > MAX_FIELD_BYTES:
            raise TooLarge(
                f"form field {self._field_name!r} is larger than {MAX_FIELD_BYTES} bytes",
                param=self._field_name,
            )

    def _on_part_end(self) -> None:
        if self._is_file:
            if self._data:
                self._events.append(FileChunk(bytes(self._data)))
            self._events.append(FileEnd())
        elif self._field_name is not None:
            self._events.append(FormField(self._field_name, self._data.decode("utf-8", "replace")))
        self._data.clear()

    def _on_end(self) -> None:
        self.complete = True
