"""The work one request may ask for (MLAPI_MAX_ELEMENTS, MLAPI_MAX_BYTES_ELEMENT),
checked by the codecs before anything that size is allocated."""

from __future__ import annotations

from dataclasses import dataclass

from mlapi.errors import PayloadTooLarge


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

    def check_elements(self, name: str, total: int) -> None:
        if total > self.max_elements:
            raise PayloadTooLarge(
                f"input '{shown(name)}' brings the request to {total} elements, over the "
                f"limit of {self.max_elements} (MLAPI_MAX_ELEMENTS)"
            )

    def check_bytes_element(self, name: str, size: int) -> None:
        if size > self.max_bytes_element:
            raise PayloadTooLarge(
                f"input '{shown(name)}' has a BYTES element of {size} bytes, over the limit "
                f"of {self.max_bytes_element} (MLAPI_MAX_BYTES_ELEMENT)"
            )


DEFAULT_LIMITS = Limits()
