"""Pure unit tests of the wire protocol (actorz/_protocol.py): bytes in, bytes out, no sockets."""

from __future__ import annotations

import struct

import pytest

from actorz import _protocol as P


def test_a_header_is_fixed_layout_and_versioned() -> None:
    hdr = P.header(P.CALL, call_id=7, length=11, nbufs=2, flags=3)
    assert len(hdr) == P.HEADER_SIZE == 20
    version, kind, flags, nbufs, length, call_id = struct.unpack("<BBHIIQ", hdr)
    assert (version, kind, flags, nbufs, length, call_id) == (P.VERSION, P.CALL, 3, 2, 11, 7)


def test_items_packed_into_one_blob_come_back_in_order_with_their_payloads() -> None:
    blob = (P.item(P.CALL, 1, b"first", nbufs=1) + P.item(P.REPLY, 2, b"")
            + P.item(P.CONTROL, 0, b'{"op":"x"}'))
    items = list(P.iter_items(blob))
    assert [(k, n, c, bytes(p)) for k, _, n, c, p, _, _ in items] == [
        (P.CALL, 1, 1, b"first"),
        (P.REPLY, 0, 2, b""),
        (P.CONTROL, 0, 0, b'{"op":"x"}'),
    ]
    # start/end bound each whole item, so the broker can re-pack one without parsing it.
    for _, _, _, _, _, start, end in items:
        (one,) = P.iter_items(blob[start:end])
        assert one[0] in (P.CALL, P.REPLY, P.CONTROL)
    assert items[-1][6] == len(blob)


def test_payloads_are_zero_copy_slices_of_the_blob() -> None:
    blob = bytearray(P.item(P.REPLY, 5, b"abc"))
    (_, _, _, _, payload, _, _), = P.iter_items(blob)
    assert isinstance(payload, memoryview)
    blob[-1:] = b"Z"
    assert bytes(payload) == b"abZ"


def test_a_truncated_header_is_a_protocol_error() -> None:
    blob = P.item(P.REPLY, 1, b"x")[: P.HEADER_SIZE - 1]
    with pytest.raises(P.ProtocolError, match="truncated"):
        list(P.iter_items(blob))


def test_an_item_that_overruns_its_message_is_a_protocol_error() -> None:
    blob = P.item(P.REPLY, 1, b"0123456789")[:-3]
    with pytest.raises(P.ProtocolError, match="overruns"):
        list(P.iter_items(blob))


def test_another_protocol_version_is_a_protocol_error() -> None:
    blob = bytearray(P.item(P.REPLY, 1, b"x"))
    blob[0] = P.VERSION + 1
    with pytest.raises(P.ProtocolError, match="version"):
        list(P.iter_items(bytes(blob)))


def test_an_empty_blob_holds_no_items() -> None:
    assert list(P.iter_items(b"")) == []


def test_control_items_carry_json_with_their_op() -> None:
    (kind, _, _, call_id, payload, _, _), = P.iter_items(P.control("ping", n=1))
    assert (kind, call_id) == (P.CONTROL, 0)
    assert P.decode_json(payload) == {"op": "ping", "n": 1}


def test_a_fail_payload_names_the_error_type_and_message() -> None:
    assert P.decode_json(P.fail_payload("ActorDiedError", "gone")) == {
        "type": "ActorDiedError", "message": "gone"}


def test_a_task_payload_round_trips_its_function_id_definition_and_arguments() -> None:
    fn_id = bytes(range(16))
    payload = P.encode_task(fn_id, b"DEFINITION", b"ARGS")
    got_id, definition, args = P.decode_task(memoryview(payload))
    assert (got_id, bytes(definition), bytes(args)) == (fn_id, b"DEFINITION", b"ARGS")


def test_new_ids_start_with_their_role_and_are_unique() -> None:
    ids = {P.new_id(P.ACTOR) for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i[:1] == P.ACTOR and len(i) == 9 for i in ids)
    # A ZeroMQ routing id must not start with a zero byte: no role byte is zero.
    assert all(role != b"\0" for role in (P.DRIVER, P.ACTOR, P.WORKER, P.NODE))


def test_every_kind_has_a_name_and_results_are_reply_error_and_fail() -> None:
    kinds = (P.CALL, P.TASK, P.REPLY, P.ERROR, P.FAIL, P.CANCEL, P.FETCH, P.LOG, P.CONTROL)
    assert len(set(kinds)) == len(kinds)
    assert set(P.KIND_NAMES) == set(kinds)
    assert P.RESULT_KINDS == {P.REPLY, P.ERROR, P.FAIL}
