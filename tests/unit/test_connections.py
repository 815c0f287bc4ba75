"""The response writer that sends a response's head with its body."""

from __future__ import annotations

from mlapi.connections import _OneSend


class Transport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    def writelines(self, parts: tuple[bytes, ...]) -> None:
        self.sent.append(b"".join(parts))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n"


def test_the_head_leaves_with_the_first_body_write_and_later_writes_go_straight() -> None:
    transport = Transport()
    writer = _OneSend(transport)  # type: ignore[arg-type]
    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert transport.sent == [b"HTTP/1.1 100 Continue\r\n\r\n"]  # at once: the client waits
    writer.write(HEAD)
    assert len(transport.sent) == 1  # held
    writer.write(b"HTTP/")
    writer.write(b"HTTP/ end")  # body chunks that look like a head are never held
    assert transport.sent[1:] == [HEAD + b"HTTP/", b"HTTP/ end"]


def test_a_large_body_and_a_response_cut_short() -> None:
    transport = Transport()
    writer = _OneSend(transport)  # type: ignore[arg-type]
    writer.write(HEAD)
    writer.write(b"x" * 20000)
    assert transport.sent == [HEAD + b"x" * 20000]
    cut = Transport()
    writer = _OneSend(cut)  # type: ignore[arg-type]
    writer.write(HEAD)
    writer.close()  # the app failed after starting its response: the head still goes
    assert cut.sent == [HEAD] and cut.closed
