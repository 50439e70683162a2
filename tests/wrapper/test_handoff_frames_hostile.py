"""Frames from a hostile other end: a value of the wrong shape where an object belongs,
a frame at its cap and one byte over, a stream that hands its bytes over a few at a
time. Each is a FrameError of one line, and a reader never takes a byte of the next
frame. Real pipes where the kernel decides how reads are cut; every writer closes its
end, so a broken reader fails at end of stream instead of waiting forever."""

from __future__ import annotations

import io
import json
import os
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sandbox_agent.wrapper import handoff
from sandbox_agent.wrapper.handoff import FrameError, encode, read_frame

HANDOFF: dict[str, Any] = {
    "job_id": 7,
    "resubmission": 0,
    "user": "alice",
    "site": "local",
    "spec": {"executable": "/bin/true", "arguments": [], "input_files": [], "outputs": [],
             "output_errors": [], "variables": {}},
    "token": {"certificate": "c", "key": "k", "chain": []},
    "environment": {},
    "limits": {},
}  # fmt: skip
HANDOFF_CAP = handoff.KINDS["handoff"][1]
STATUS_CAP = handoff.KINDS["status"][1]


def frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message).encode()
    return struct.pack(">I", len(body)) + body


def handoff_message(**changes: Any) -> dict[str, Any]:
    return {"schema": "sandbox-agent/handoff", "version": 1, **HANDOFF, **changes}


# --- a value of the wrong shape -----------------------------------------------------

NOT_OBJECTS = [5, -1, 1.5, True, None, "text", "", [], [{}], [["a", "b"]]]
SHAPES = {
    "spec": "handoff.spec must be an object",
    "token": "handoff.token must be an object",
    "environment": "handoff.environment must be an object of str values",
    "limits": "handoff.limits must be an object of int values",
}


@pytest.mark.parametrize("field", list(SHAPES))
@pytest.mark.parametrize("value", NOT_OBJECTS, ids=repr)
def test_a_non_object_where_an_object_belongs_is_a_frame_error(field: str, value: Any) -> None:
    data = frame(handoff_message(**{field: value}))
    with pytest.raises(FrameError) as caught:
        read_frame(io.BytesIO(data), "handoff")
    assert str(caught.value) == SHAPES[field]
    with pytest.raises(FrameError) as caught:  # the writer refuses it the same way
        encode("handoff", dict(HANDOFF, **{field: value}))
    assert str(caught.value) == SHAPES[field]


@pytest.mark.parametrize("value", NOT_OBJECTS, ids=repr)
def test_a_non_object_for_the_jdl_variables_is_a_frame_error(value: Any) -> None:
    spec = dict(HANDOFF["spec"], variables=value)
    with pytest.raises(FrameError) as caught:
        read_frame(io.BytesIO(frame(handoff_message(spec=spec))), "handoff")
    assert str(caught.value) == "handoff.spec.variables must be an object of str values"


@pytest.mark.parametrize("value", [{"a": 1}, {"0": "x"}, {}], ids=repr)
def test_an_object_where_a_list_belongs_is_a_frame_error(value: Any) -> None:
    # an object is iterable too: it must not pass for a list of its keys
    spec = dict(HANDOFF["spec"], arguments=value)
    with pytest.raises(FrameError, match=r"^handoff\.spec\.arguments must be a list$"):
        read_frame(io.BytesIO(frame(handoff_message(spec=spec))), "handoff")


def test_the_optional_validation_field_is_checked_when_present() -> None:
    spec = dict(HANDOFF["spec"], validation=["./check", 1])
    with pytest.raises(FrameError, match=r"^handoff\.spec\.validation\[1\] must be str, not int$"):
        read_frame(io.BytesIO(frame(handoff_message(spec=spec))), "handoff")
    spec = dict(HANDOFF["spec"], validation=["./check"])
    got = read_frame(io.BytesIO(frame(handoff_message(spec=spec))), "handoff")
    assert got["spec"]["validation"] == ["./check"]


def test_a_status_frame_needs_only_its_state() -> None:
    assert read_frame(io.BytesIO(encode("status", {"state": "STARTED"})), "status") == {
        "schema": "sandbox-agent/status", "version": 1, "state": "STARTED"}  # fmt: skip
    with pytest.raises(FrameError, match=r"^status: missing field state$"):
        encode("status", {"detail": "no state"})
    with pytest.raises(FrameError, match=r"^status\.exit_code must be int, not bool$"):
        encode("status", {"state": "DONE", "exit_code": False})


# --- the caps, to the byte ----------------------------------------------------------


def padded(kind: str, size: int) -> dict[str, Any]:
    """Fields of ``kind`` whose frame body is exactly ``size`` bytes."""

    def fields(pad: int) -> dict[str, Any]:
        if kind == "status":
            return {"state": "RUNNING", "detail": "x" * pad}
        return dict(HANDOFF, environment={"PAD": "x" * pad})

    empty = len(encode(kind, fields(0))) - handoff.HEADER.size
    return fields(size - empty)


@pytest.mark.parametrize(("kind", "cap"), [("handoff", HANDOFF_CAP), ("status", STATUS_CAP)])
def test_a_frame_of_exactly_its_cap_passes_and_one_byte_more_does_not(kind: str, cap: int) -> None:
    assert cap == {"handoff": 1024 * 1024, "status": 64 * 1024}[kind]
    at_cap = encode(kind, padded(kind, cap))
    assert struct.unpack(">I", at_cap[:4]) == (cap,) and len(at_cap) == cap + 4
    assert read_frame(io.BytesIO(at_cap), kind)["version"] == 1
    with pytest.raises(FrameError) as caught:
        encode(kind, padded(kind, cap + 1))
    assert str(caught.value) == f"{kind} frame of {cap + 1} bytes is over its cap of {cap}"
    over = struct.pack(">I", cap + 1) + at_cap[4:] + b" "  # the same body, one space more
    with pytest.raises(FrameError) as caught:
        read_frame(io.BytesIO(over), kind)
    assert str(caught.value) == f"{kind} frame announces {cap + 1} bytes, over its cap of {cap}"


def test_the_header_is_four_bytes_big_endian() -> None:
    data = encode("status", {"state": "DONE"})
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4 and data[4:5] == b"{"
    with pytest.raises(FrameError, match=r"^status frame header: the stream ended after 3 bytes$"):
        read_frame(io.BytesIO(data[:3]), "status")


# --- short reads: never a byte of the next frame ------------------------------------


class Trickle(io.RawIOBase):
    """A raw stream handing out at most ``most`` bytes per read, as a pipe or a socket
    may; counts what it gave."""

    def __init__(self, data: bytes, most: int) -> None:
        self.data, self.most, self.taken = data, most, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self.data[self.taken : self.taken + min(len(buffer), self.most)]
        buffer[: len(chunk)] = chunk
        self.taken += len(chunk)
        return len(chunk)


STATUSES = [{"state": "STARTED"}, {"state": "RUNNING", "detail": "step 2 of 9"},
            {"state": "DONE", "exit_code": 0}]  # fmt: skip


@pytest.mark.parametrize("most", [1, 2, 3, 5, 7, 64])
def test_a_reader_fed_short_reads_takes_each_frame_and_nothing_more(most: int) -> None:
    frames = [encode("status", s) for s in STATUSES]
    stream = Trickle(b"".join(frames), most)
    for fields, data in zip(STATUSES, frames, strict=True):
        before = stream.taken
        got = read_frame(stream, "status")  # type: ignore[arg-type]
        assert got == {"schema": "sandbox-agent/status", "version": 1, **fields}
        assert stream.taken - before == len(data)  # not one byte of the next frame
    with pytest.raises(FrameError, match=r"^status frame header: the stream ended after 0 bytes"):
        read_frame(stream, "status")  # type: ignore[arg-type]


def _write_in_pieces(fd: int, pieces: Iterator[bytes]) -> None:
    try:
        for piece in pieces:
            os.write(fd, piece)
            time.sleep(0.02)  # the reader's read returns with what is there by now
    finally:
        os.close(fd)  # end of stream: a reader asking for more fails instead of waiting


def test_frames_cut_across_real_pipe_writes_arrive_whole() -> None:
    # an unbuffered pipe: each read returns what the kernel has, often less than asked
    first = encode("handoff", dict(HANDOFF, environment={"A": "a" * 3000}))
    second = encode("status", {"state": "STARTED"})
    cut = len(first) // 2
    pieces = iter([first[:2], first[2:cut], first[cut:] + second])
    read_end, write_end = os.pipe()
    writer = threading.Thread(target=_write_in_pieces, args=(write_end, pieces), daemon=True)
    writer.start()
    with os.fdopen(read_end, "rb", buffering=0) as reader:
        assert read_frame(reader, "handoff")["environment"] == {"A": "a" * 3000}
        assert read_frame(reader, "status")["state"] == "STARTED"
        assert reader.read() == b""
    writer.join(10)


def test_a_frame_cut_short_by_the_writer_is_refused_with_what_arrived() -> None:
    data = encode("status", {"state": "RUNNING"})
    read_end, write_end = os.pipe()
    writer = threading.Thread(target=_write_in_pieces, daemon=True,
                              args=(write_end, iter([data[:6], data[6:-2]])))  # fmt: skip
    writer.start()
    body = len(data) - 4
    with os.fdopen(read_end, "rb", buffering=0) as reader, pytest.raises(FrameError) as caught:
        read_frame(reader, "status")
    writer.join(10)
    assert str(caught.value) == (
        f"status frame of {body} bytes: the stream ended after {body - 2} bytes"
    )


# --- the writer: what it cannot send faithfully is a FrameError, not a crash ---------


@pytest.mark.parametrize("key", [1, None, ("a",), 1.5])
def test_the_writer_refuses_a_map_key_that_is_not_text(key: Any) -> None:
    # JSON has text keys only: 1 would arrive as "1", a tuple would raise a TypeError
    with pytest.raises(FrameError) as caught:
        encode("handoff", dict(HANDOFF, environment={key: "x"}))
    assert str(caught.value) == f"handoff.environment keys must be str, not {type(key).__name__}"


def test_the_writer_refuses_text_that_is_not_utf8() -> None:
    # os.environ holds a variable's non-UTF-8 bytes as lone surrogates
    with pytest.raises(FrameError, match=r"^handoff frame holds text that is not UTF-8$"):
        encode("handoff", dict(HANDOFF, environment={"LANG": "C\udcff"}))


def test_a_frame_written_is_on_the_pipe_at_once() -> None:
    # the writer's end is buffered: a frame left in the buffer would leave the wrapper
    # waiting for its handoff. Nothing is closed before the check, and the wait is bounded.
    import select

    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "wb") as writer:
        handoff.write_frame(writer, "status", {"state": "STARTED"})
        ready, _, _ = select.select([read_end], [], [], 2)
        assert ready == [read_end], "the frame is still in the writer's buffer"
        expected = encode("status", {"state": "STARTED"})
        assert os.read(read_end, 1000) == expected
    os.close(read_end)


@pytest.mark.parametrize("use", ["encode", "read_frame"])
def test_an_unknown_frame_kind_is_a_programming_error_named(use: str) -> None:
    with pytest.raises(ValueError, match=r"^unknown frame kind 'welcome'$") as caught:
        if use == "encode":
            encode("welcome", {})
        else:
            read_frame(io.BytesIO(b"\0\0\0\x02{}"), "welcome")
    assert not isinstance(caught.value, FrameError)  # our bug, not the other end's


def test_a_hostile_field_name_is_clipped_to_forty_characters() -> None:
    name = "f" * 39 + "\x1b" + "g" * 20  # 60 characters, one a control
    data = frame(handoff_message(**{name: 1}))
    with pytest.raises(FrameError) as caught:
        read_frame(io.BytesIO(data), "handoff")
    assert str(caught.value) == f"handoff: unknown field '{'f' * 39}?...'"
    exact = "h" * 40  # forty is shown whole
    with pytest.raises(FrameError) as caught:
        read_frame(io.BytesIO(frame(handoff_message(**{exact: 1}))), "handoff")
    assert str(caught.value) == f"handoff: unknown field '{exact}'"


def test_a_python_without_the_c_half_writes_and_reads_the_same_bytes(tmp_path: Any) -> None:
    # the sandbox's Python may lack _json: the json package must then make the very same
    # frames, and refuse the same ones
    import shutil
    import subprocess
    import sys

    shutil.copy(handoff.__file__, tmp_path / "handoff.py")
    script = (
        "import sys; sys.modules['_json'] = None; sys.path.insert(0, sys.argv[1])\n"
        "import handoff\n"
        "frame = handoff.encode('handoff', eval(sys.stdin.read()))\n"
        "back = handoff.read_frame(__import__('io').BytesIO(frame), 'handoff')\n"
        "try:\n"
        "    handoff.decode('status', b'{\"a\": 1, \"a\": 2}')\n"
        "except handoff.FrameError as exc:\n"
        "    refused = str(exc)\n"
        "sys.stdout.buffer.write(frame)\n"
        "sys.stderr.write(refused if back['job_id'] == 7 else 'changed')\n"
    )
    fields = dict(HANDOFF, job_id=7, environment={"É": "ü \u2028"})
    ran = subprocess.run([sys.executable, "-I", "-S", "-c", script, str(tmp_path)],
                         input=repr(fields).encode(), capture_output=True, timeout=60)  # fmt: skip
    assert ran.returncode == 0, ran.stderr.decode()
    assert ran.stdout == encode("handoff", fields)
    assert ran.stderr.decode() == "status frame is not valid JSON: duplicate key 'a'"


def test_a_frame_without_a_schema_says_so() -> None:
    message = handoff_message()
    del message["schema"]
    with pytest.raises(FrameError) as caught:
        read_frame(io.BytesIO(frame(message)), "handoff")
    assert str(caught.value) == "expected a sandbox-agent/handoff frame, got 'no schema'"
