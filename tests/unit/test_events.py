import json

from binderbuild.events import NO_RECONNECT, Phase, encode_sse, event, failed


def test_sse_frame_is_one_data_line_and_a_blank_line():
    frame = encode_sse(event(Phase.BUILDING, "line one\nline two\n")).decode()
    assert frame.endswith("\n\n")
    lines = frame.rstrip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("data: ")
    assert json.loads(lines[0][6:]) == {"phase": "building", "message": "line one\nline two\n"}


def test_event_ids_and_fields():
    frame = encode_sse(event(Phase.READY, "ok", imageName="x:1"), event_id=7).decode()
    id_line, data_line = frame.rstrip("\n").split("\n")
    assert id_line == "id: 7"
    assert json.loads(data_line[6:]) == {"phase": "ready", "message": "ok", "imageName": "x:1"}


def test_failed_carries_status_code_and_phase_is_lowercase():
    payload = failed("nope", 404).payload()
    assert payload == {"phase": "failed", "message": "nope", "status_code": 404}
    assert all(p.value == p.value.lower() for p in Phase)
    assert Phase.READY.is_final and Phase.FAILED.is_final and not Phase.BUILT.is_final


def test_no_reconnect_is_a_retry_field():
    assert NO_RECONNECT.startswith(b"retry: ")
