"""The work one request may ask for (MLAPI_MAX_ELEMENTS, MLAPI_MAX_BYTES_ELEMENT,
MLAPI_MAX_TOKENS), checked by the codecs before anything that size is allocated
or run."""

from __future__ import annotations

from dataclasses import dataclass

from mlapi.errors import PayloadTooLarge

MAX_DIMS = 16  # dimensions of one tensor


def shown(name: object) -> str:
    """A client-supplied name, cut short for error messages."""
    text = str(name)
    return text if len(text) <= 64 else text[:64] + "..."


@dataclass(frozen=True, slots=True)
class Limits:
    """The work one request may ask for: tensor elements over all its inputs, and the
    bytes of one BYTES element."""

    max_elements: int = 1 << 20
    max_bytes_element: int = 1 << 20
    max_tokens: int = 16_384  # tokens one request to a text model may bring

    def check_elements(self, name: str, total: int) -> None:
        if total > self.max_elements:
            raise PayloadTooLarge(
                f"input '{shown(name)}' brings the request to {total} elements, over the "
                f"limit of {self.max_elements} (MLAPI_MAX_ELEMENTS)"
            )

    def check_json(self, data: bytes | memoryview) -> None:
        """Refuse a JSON body that must hold more values than the element cap, before
        it is parsed: parsing 33 MB of zeros only to refuse them after holds the GIL,
        and the event loop waiting for it, for a third of a second. Its commas outside
        strings, less one per key and room for shape dimensions and input objects,
        are a floor on the values its arrays hold; a few passes over the bytes count
        them (20 ms for 33 MB)."""
        if len(data) <= 2 * self.max_elements:  # n values take at least 2n - 1 bytes
            return
        text = bytes(data)
        if text.count(b",") <= self.max_elements:
            return
        if b"\\" in text:  # drop escapes so that every quote left opens or closes a string
            text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
        outside = text.split(b'"')[::2]
        commas = sum(part.count(b",") for part in outside)
        keys = sum(part.count(b":") for part in outside)
        floor = commas - keys * (MAX_DIMS + 2)
        if floor > self.max_elements:
            raise PayloadTooLarge(
                f"the JSON body holds at least {floor} values, over the limit of "
                f"{self.max_elements} tensor elements (MLAPI_MAX_ELEMENTS)"
            )

    def check_bytes_element(self, name: str, size: int) -> None:
        if size > self.max_bytes_element:
            raise PayloadTooLarge(
                f"input '{shown(name)}' has a BYTES element of {size} bytes, over the limit "
                f"of {self.max_bytes_element} (MLAPI_MAX_BYTES_ELEMENT)"
            )


DEFAULT_LIMITS = Limits()
