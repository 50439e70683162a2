"""The framed protocol: what one end writes the other reads back exactly, and anything
else is refused with one line, before more than the header of an oversized frame is
read."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox_agent.wrapper import handoff
from sandbox_agent.wrapper.handoff import FrameError, decode, encode, read_frame, write_frame

HANDOFF: dict[str, Any] = {
    "job_id": 7,
    "resubmission": 0,
    "user": "alice",
    "site": "local",
    "spec": {"executable": "/bin/sh", "arguments": ["-c", "echo hi"], "input_files": [],
             "outputs": ["stdout@disk=1"], "output_errors": ["errors.zip:stderr,*.log@disk=1"],
             "variables": {"RUN": "544121"}},
    "token": {"certificate": "-----BEGIN CERTIFICATE-----\n", "key": "k", "chain": ["c"]},
    "environment": {"LANG": "C.UTF-8"},
    "limits": {"memory": 2 << 30, "wall_time": 3600},
}  # fmt: skip


def frame_of(message: object) -> bytes:
    body = json.dumps(message).encode()
    return struct.pack(">I", len(body)) + body


def message(**changes: Any) -> dict[str, Any]:
    return {"schema": "sandbox-agent/handoff", "version": 1, **HANDOFF, **changes}


def test_a_handoff_goes_through_a_real_pipe_unchanged() -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as reader, os.fdopen(write_end, "wb") as writer:
        # the writer in another thread: a frame larger than the pipe's buffer must not
        # deadlock or arrive cut
        big = dict(HANDOFF, environment={f"V{i}": "x" * 100 for i in range(2000)})
        thread = threading.Thread(target=write_frame, args=(writer, "handoff", big))
        thread.start()
        got = read_frame(reader, "handoff")
        thread.join()
    assert got == {"schema": "sandbox-agent/handoff", "version": 1, **big}


def test_status_frames_follow_one_another() -> None:
    done = {"state": "DONE", "exit_code": 0, "detail": "ok"}
    stream = io.BytesIO(encode("status", {"state": "STARTED"}) + encode("status", done))
    assert read_frame(stream, "status")["state"] == "STARTED"
    assert read_frame(stream, "status")["exit_code"] == 0
    with pytest.raises(FrameError, match=r"^status frame header: the stream ended after 0 bytes$"):
        read_frame(stream, "status")


class CountingStream(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.taken = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.taken += len(data)
        return data


def test_an_oversized_frame_is_refused_from_its_header_alone() -> None:
    cap = handoff.KINDS["status"][1]
    stream = CountingStream(struct.pack(">I", cap + 1) + b"x" * (cap + 1))
    with pytest.raises(FrameError, match=f"^status frame announces {cap + 1} bytes, over its cap"):
        read_frame(stream, "status")
    assert stream.taken == 4  # not one byte of the body


def test_the_writer_refuses_what_the_reader_would() -> None:
    with pytest.raises(FrameError, match="over its cap of 65536"):
        encode("status", {"state": "RUNNING", "detail": "x" * 70000})
    with pytest.raises(FrameError, match=r"^handoff: unknown field 'extra'$"):
        encode("handoff", dict(HANDOFF, extra=1))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"\xff\xfe", "handoff frame is not UTF-8"),
        (b"{not json", "handoff frame is not valid JSON"),
        (b"[1, 2]", "handoff frame is not a JSON object"),
        (json.dumps(message(version=2)).encode(), "handoff frame version 2; this end speaks 1"),
        (json.dumps(message(version=True)).encode(), "handoff frame version True"),
        (json.dumps(message(schema="sandbox-agent/status")).encode(),
         "expected a sandbox-agent/handoff frame, got 'sandbox-agent/status'"),
        (json.dumps(message(surprise=1)).encode(), "handoff: unknown field 'surprise'"),
        (json.dumps({k: v for k, v in message().items() if k != "token"}).encode(),
         "handoff: missing field token"),
        (json.dumps(message(job_id="7")).encode(), "handoff.job_id must be int, not str"),
        (json.dumps(message(job_id=True)).encode(), "handoff.job_id must be int, not bool"),
        (json.dumps(message(spec=dict(HANDOFF["spec"], shell="sh"))).encode(),
         "handoff.spec: unknown field 'shell'"),
        (json.dumps(message(spec=dict(HANDOFF["spec"], arguments="-c x"))).encode(),
         "handoff.spec.arguments must be a list"),
        (json.dumps(message(spec={k: v for k, v in HANDOFF["spec"].items()
                                  if k != "output_errors"})).encode(),
         "handoff.spec: missing field output_errors"),
        (json.dumps(message(spec=dict(HANDOFF["spec"], output_errors=[1]))).encode(),
         "handoff.spec.output_errors[0] must be str, not int"),
        (json.dumps(message(limits={"memory": "2GB"})).encode(),
         "handoff.limits.'memory' must be int, not str"),
        (json.dumps(message(environment={"A": None})).encode(),
         "handoff.environment.'A' must be str, not NoneType"),
        (b'{"schema": "sandbox-agent/handoff", "schema": "x"}',
         "handoff frame is not valid JSON: duplicate key 'schema'"),
        (json.dumps(message(limits={"memory": float("nan")})).encode().replace(b"NaN", b"NaN"),
         "handoff frame is not valid JSON: NaN is not a number JSON allows"),
        (b"[" * 100000 + b"]" * 100000, "handoff frame is nested too deeply"),
    ],
)  # fmt: skip
def test_a_bad_frame_is_one_line(body: bytes, expected: str) -> None:
    with pytest.raises(FrameError) as caught:
        read_frame(io.BytesIO(struct.pack(">I", len(body)) + body), "handoff")
    assert str(caught.value).startswith(expected)
    assert "\n" not in str(caught.value)


def test_a_truncated_body_is_refused() -> None:
    data = encode("handoff", HANDOFF)
    with pytest.raises(FrameError, match="the stream ended after"):
        read_frame(io.BytesIO(data[:-1]), "handoff")


def test_values_from_the_other_end_are_clipped_and_printable_in_messages() -> None:
    body = json.dumps(message(**{"\x1b[31m" + "k" * 100: 1})).encode()
    with pytest.raises(FrameError) as caught:
        decode("handoff", body)
    text = str(caught.value)
    assert "\x1b" not in text and len(text) < 120


def test_the_module_needs_only_the_standard_library() -> None:
    # the wrapper imports it inside the sandbox, where start-up time counts
    source = Path(handoff.__file__).read_text()
    imported = {line.split()[1] for line in source.splitlines()
                if line.startswith(("import ", "from "))}  # fmt: skip
    assert imported <= {"__future__", "json", "_json", "struct", "collections.abc", "typing"}


def test_the_wrapper_side_reads_and_writes_frames_without_the_json_package(
    tmp_path: Path,
) -> None:
    # as the sandbox runs it: the module alone, an isolated Python without site
    shutil.copy(handoff.__file__, tmp_path / "handoff.py")
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import handoff\n"
        "try:\n"
        "    m = handoff.read_frame(sys.stdin.buffer, 'handoff')\n"
        "except handoff.FrameError as exc:\n"
        "    m = {'spec': {'variables': {'RUN': str(exc)}}}\n"
        "sys.stdout.buffer.write(handoff.encode('status', {'state': 'DONE', "
        "'detail': m['spec']['variables']['RUN']}))\n"
        "sys.stderr.write(' '.join(n for n in ('json', 're', 'enum') if n in sys.modules))"
    )  # fmt: skip

    def wrapper_reads(frame: bytes) -> tuple[str, bytes]:
        ran = subprocess.run([sys.executable, "-I", "-S", "-c", script, str(tmp_path)],
                             input=frame, capture_output=True, check=True)  # fmt: skip
        return read_frame(io.BytesIO(ran.stdout), "status")["detail"], ran.stderr

    assert wrapper_reads(encode("handoff", HANDOFF)) == ("544121", b"")  # nothing costly
    # a refused frame gets the json package's words, loaded for that alone
    detail, loaded = wrapper_reads(struct.pack(">I", 5) + b"{bad}")
    assert detail.startswith("handoff frame is not valid JSON: Expecting property name")
    assert b"json" in loaded


@pytest.mark.parametrize(
    "text",
    ['{"a": 1}', ' \n{"a": [1, 2.5, "x\\u00e9", null, true]}\t', '{"a": 1, "a": 2}',
     '{"a": NaN}', '[Infinity]', '-Infinity', '{"a": 1} x', '{"a": 1}{}', "", "   ",
     '"\\ud800"', '"a\x01b"', '{"a" 1}', '[1,]', '01', '1e999', '{"\\u0000": "\\n"}',
     '[' * 3000 + ']' * 3000, '"' + 'x' * 5000 + '"', '\ufeff{}', '{"a": 1}\x0c'],
)  # fmt: skip
def test_the_c_half_decodes_as_the_json_package_does(text: str) -> None:
    """Where the sandbox's Python has the C half the frames are read by it: it must take
    and refuse exactly what json.loads with the same hooks does."""

    def outcome(load: Any) -> object:
        try:
            return ("value", load(text))
        except RecursionError:
            return "too deep"
        except ValueError:
            return "refused"

    expected = outcome(lambda t: json.loads(t, object_pairs_hook=handoff._no_duplicates,
                                            parse_constant=handoff._no_nan))  # fmt: skip
    assert outcome(handoff.strict_loads) == expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_the_c_half_encodes_as_the_json_package_does(value: Any) -> None:
    expected = json.dumps({"v": value}, ensure_ascii=False, allow_nan=False,
                          separators=(",", ":"))  # fmt: skip
    assert handoff._dumps({"v": value}) == expected


texts = st.text(max_size=20)
specs = st.fixed_dictionaries(
    {"executable": texts, "arguments": st.lists(texts, max_size=4),
     "input_files": st.lists(texts, max_size=3), "outputs": st.lists(texts, max_size=3),
     "output_errors": st.lists(texts, max_size=3),
     "variables": st.dictionaries(texts, texts, max_size=3)},
    optional={"validation": st.lists(texts, max_size=2)},
)  # fmt: skip
handoffs = st.fixed_dictionaries({
    "job_id": st.integers(0, 2**53), "resubmission": st.integers(0, 100), "user": texts,
    "site": texts, "spec": specs,
    "token": st.fixed_dictionaries({"certificate": texts, "key": texts,
                                    "chain": st.lists(texts, max_size=2)}),
    "environment": st.dictionaries(texts, texts, max_size=4),
    "limits": st.dictionaries(texts, st.integers(0, 2**62), max_size=4),
})  # fmt: skip


@given(handoffs)
def test_any_valid_handoff_round_trips(fields: dict[str, Any]) -> None:
    got = read_frame(io.BytesIO(encode("handoff", fields)), "handoff")
    assert got == {"schema": "sandbox-agent/handoff", "version": 1, **fields}


@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_a_frame_or_a_frame_error(data: bytes) -> None:
    try:
        got = read_frame(io.BytesIO(data), "status")
    except FrameError as exc:
        assert "\n" not in str(exc)  # one line, whatever the bytes
    else:
        assert got["schema"] == "sandbox-agent/status"
