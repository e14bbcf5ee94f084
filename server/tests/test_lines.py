"""Lines as resources (conformance/SPEC.md LINE-*): opened by anyone, who owns them; one open line
per address; idempotent with a request_id; read and listed by anyone; closed by their owner only,
staying readable."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import duration_pb2
from incoming_kit import BOB, BOB_ADDRESS, CAROL, MALLORY, open_line
from server_testkit import reason, rpc_error, violated_fields

from callqos.server import testing
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc
from callqos.v1 import line_pb2

Line = line_pb2.Line


async def test_opening_a_line_makes_its_caller_the_owner(stub) -> None:
    line = await open_line(stub, line_id="bob", timeout_s=12.5)
    assert line.name == "lines/bob" and line.address == BOB_ADDRESS and line.owner == "bob"
    assert line.state == Line.State.STATE_OPEN and line.etag and line.HasField("create_time")
    assert line.no_answer_timeout.ToNanoseconds() == 12_500_000_000
    assert not line.HasField("close_time")
    assert await stub.GetLine(svc.GetLineRequest(name=line.name), metadata=MALLORY) == line


async def test_a_line_without_a_timeout_shows_the_servers(tmp_path) -> None:
    async with (
        testing.InProcessServer(tmp_path, no_answer_seconds=7.0) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        line = await open_line(svc_grpc.CallQosServiceStub(channel))
        assert line.no_answer_timeout.ToNanoseconds() == 7_000_000_000
        assert line.name.startswith("lines/") and len(line.name) == len("lines/") + 36  # a server UUID


async def test_one_open_line_per_address_and_a_taken_line_id_is_refused(stub) -> None:
    first = await open_line(stub, line_id="bob")
    taken = await rpc_error(open_line(stub, "sip:other@example.test", line_id="bob"))
    assert taken.code() == grpc.StatusCode.ALREADY_EXISTS and reason(taken) == "LINE_ALREADY_EXISTS"
    busy = await rpc_error(open_line(stub, as_=CAROL))
    assert busy.code() == grpc.StatusCode.ALREADY_EXISTS and reason(busy) == "ADDRESS_IN_USE"
    assert (await stub.ListLines(svc.ListLinesRequest())).lines == [first]


async def test_concurrent_opens_of_one_address_open_one_line(stub) -> None:
    results = await asyncio.gather(
        *(open_line(stub, as_=(("x-callqos-principal", f"p{i}"),)) for i in range(8)), return_exceptions=True
    )
    opened = [r for r in results if isinstance(r, Line)]
    assert len(opened) == 1
    assert all(reason(r) == "ADDRESS_IN_USE" for r in results if not isinstance(r, Line))


async def test_create_line_is_idempotent_with_a_request_id(stub) -> None:
    first = await open_line(stub, request_id="open-1")
    again = await open_line(stub, request_id="open-1")
    assert again == first
    assert len((await stub.ListLines(svc.ListLinesRequest())).lines) == 1
    reused = await rpc_error(open_line(stub, "sip:x@example.test", request_id="open-1"))
    assert reason(reused) == "REQUEST_ID_REUSED"


async def test_an_invalid_line_is_refused_and_nothing_is_stored(stub) -> None:
    cases = {
        "line.address": svc.CreateLineRequest(line=Line(address="")),
        "line.no_answer_timeout": svc.CreateLineRequest(
            line=Line(address="sip:a@x", no_answer_timeout=duration_pb2.Duration(seconds=601))
        ),
        "line_id": svc.CreateLineRequest(line=Line(address="sip:a@x"), line_id="Bob"),
        "line": svc.CreateLineRequest(),
    }
    for field, request in cases.items():
        error = await rpc_error(stub.CreateLine(request, metadata=BOB))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and violated_fields(error) == {field}, field
    short = svc.CreateLineRequest(line=Line(address="sip:a@x", no_answer_timeout=duration_pb2.Duration(nanos=999)))
    assert violated_fields(await rpc_error(stub.CreateLine(short))) == {"line.no_answer_timeout"}
    assert not (await stub.ListLines(svc.ListLinesRequest())).lines
    bad_name = await rpc_error(stub.GetLine(svc.GetLineRequest(name="bob")))
    assert violated_fields(bad_name) == {"name"}
    missing = await rpc_error(stub.GetLine(svc.GetLineRequest(name="lines/nobody")))
    assert missing.code() == grpc.StatusCode.NOT_FOUND and reason(missing) == "LINE_NOT_FOUND"


async def test_only_the_owner_closes_a_line_which_stays_readable(stub) -> None:
    line = await open_line(stub)
    denied = await rpc_error(stub.CloseLine(svc.CloseLineRequest(name=line.name), metadata=CAROL))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED and reason(denied) == "NOT_OWNER"
    stale = await rpc_error(stub.CloseLine(svc.CloseLineRequest(name=line.name, etag="old"), metadata=BOB))
    assert stale.code() == grpc.StatusCode.ABORTED and reason(stale) == "ETAG_MISMATCH"
    assert (await stub.GetLine(svc.GetLineRequest(name=line.name))) == line
    closed = await stub.CloseLine(svc.CloseLineRequest(name=line.name, etag=line.etag), metadata=BOB)
    assert closed.state == Line.State.STATE_CLOSED and closed.etag != line.etag
    assert await stub.CloseLine(svc.CloseLineRequest(name=line.name), metadata=BOB) == closed
    assert await stub.GetLine(svc.GetLineRequest(name=line.name)) == closed
    missing = await rpc_error(stub.CloseLine(svc.CloseLineRequest(name="lines/nope"), metadata=BOB))
    assert reason(missing) == "LINE_NOT_FOUND"


async def test_list_lines_filters_and_pages(stub) -> None:
    bob = await open_line(stub, line_id="bob")
    carol = await open_line(stub, "sip:carol@example.test", as_=CAROL, line_id="carol")
    await stub.CloseLine(svc.CloseLineRequest(name=bob.name), metadata=BOB)
    again = await open_line(stub, line_id="bob-again")

    async def names(text: str) -> list[str]:
        return [line.name for line in (await stub.ListLines(svc.ListLinesRequest(filter=text))).lines]

    assert await names("") == [again.name, carol.name, bob.name]
    assert await names("state = OPEN") == [again.name, carol.name]
    assert await names("state = CLOSED") == [bob.name]
    assert await names(f'address = "{BOB_ADDRESS}" AND state = OPEN') == [again.name]
    assert await names("owner = carol") == [carol.name]
    page = await stub.ListLines(svc.ListLinesRequest(page_size=2))
    assert [line.name for line in page.lines] == [again.name, carol.name] and page.next_page_token
    rest = await stub.ListLines(svc.ListLinesRequest(page_size=2, page_token=page.next_page_token))
    assert [line.name for line in rest.lines] == [bob.name] and not rest.next_page_token
    other = await rpc_error(
        stub.ListLines(svc.ListLinesRequest(page_size=2, page_token=page.next_page_token, filter="state = OPEN"))
    )
    assert violated_fields(other) == {"page_token"}
    for text in ("state = RINGING", "colour = red", "state"):
        assert violated_fields(await rpc_error(stub.ListLines(svc.ListLinesRequest(filter=text)))) == {"filter"}
