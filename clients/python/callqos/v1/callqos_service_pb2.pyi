import datetime

from callqos.v1 import call_pb2 as _call_pb2
from callqos.v1 import event_pb2 as _event_pb2
from callqos.v1 import flowspec_pb2 as _flowspec_pb2
from callqos.v1 import line_pb2 as _line_pb2
from callqos.v1 import provider_pb2 as _provider_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateCallRequest(_message.Message):
    __slots__ = ("call", "call_id", "request_id")
    CALL_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    call: _call_pb2.Call
    call_id: str
    request_id: str
    def __init__(self, call: _Optional[_Union[_call_pb2.Call, _Mapping]] = ..., call_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetCallRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListCallsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "filter")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    filter: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., filter: _Optional[str] = ...) -> None: ...

class ListCallsResponse(_message.Message):
    __slots__ = ("calls", "next_page_token")
    CALLS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[_call_pb2.Call]
    next_page_token: str
    def __init__(self, calls: _Optional[_Iterable[_Union[_call_pb2.Call, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RenegotiateCallRequest(_message.Message):
    __slots__ = ("name", "qos", "etag", "request_id", "service_level")
    NAME_FIELD_NUMBER: _ClassVar[int]
    QOS_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    qos: _flowspec_pb2.QosSpec
    etag: str
    request_id: str
    service_level: _call_pb2.ServiceLevel
    def __init__(self, name: _Optional[str] = ..., qos: _Optional[_Union[_flowspec_pb2.QosSpec, _Mapping]] = ..., etag: _Optional[str] = ..., request_id: _Optional[str] = ..., service_level: _Optional[_Union[_call_pb2.ServiceLevel, str]] = ...) -> None: ...

class DropCallRequest(_message.Message):
    __slots__ = ("name", "etag")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    name: str
    etag: str
    def __init__(self, name: _Optional[str] = ..., etag: _Optional[str] = ...) -> None: ...

class ExtendCallRequest(_message.Message):
    __slots__ = ("name", "lease_duration", "etag", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    lease_duration: _duration_pb2.Duration
    etag: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., lease_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., etag: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("after_sequence", "call", "types", "line")
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    after_sequence: int
    call: str
    types: _containers.RepeatedScalarFieldContainer[_event_pb2.QosEventType]
    line: str
    def __init__(self, after_sequence: _Optional[int] = ..., call: _Optional[str] = ..., types: _Optional[_Iterable[_Union[_event_pb2.QosEventType, str]]] = ..., line: _Optional[str] = ...) -> None: ...

class WatchEventsResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: _event_pb2.QosEvent
    def __init__(self, event: _Optional[_Union[_event_pb2.QosEvent, _Mapping]] = ...) -> None: ...

class GetProviderRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListProvidersRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListProvidersResponse(_message.Message):
    __slots__ = ("providers", "next_page_token")
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    providers: _containers.RepeatedCompositeFieldContainer[_provider_pb2.Provider]
    next_page_token: str
    def __init__(self, providers: _Optional[_Iterable[_Union[_provider_pb2.Provider, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListLinksRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListLinksResponse(_message.Message):
    __slots__ = ("links", "next_page_token")
    LINKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    links: _containers.RepeatedCompositeFieldContainer[_provider_pb2.Link]
    next_page_token: str
    def __init__(self, links: _Optional[_Iterable[_Union[_provider_pb2.Link, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateLinkRequest(_message.Message):
    __slots__ = ("link", "update_mask")
    LINK_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    link: _provider_pb2.Link
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, link: _Optional[_Union[_provider_pb2.Link, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class CreateLineRequest(_message.Message):
    __slots__ = ("line", "line_id", "request_id")
    LINE_FIELD_NUMBER: _ClassVar[int]
    LINE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    line: _line_pb2.Line
    line_id: str
    request_id: str
    def __init__(self, line: _Optional[_Union[_line_pb2.Line, _Mapping]] = ..., line_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetLineRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListLinesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "filter")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    filter: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., filter: _Optional[str] = ...) -> None: ...

class ListLinesResponse(_message.Message):
    __slots__ = ("lines", "next_page_token")
    LINES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[_line_pb2.Line]
    next_page_token: str
    def __init__(self, lines: _Optional[_Iterable[_Union[_line_pb2.Line, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CloseLineRequest(_message.Message):
    __slots__ = ("name", "etag")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    name: str
    etag: str
    def __init__(self, name: _Optional[str] = ..., etag: _Optional[str] = ...) -> None: ...

class AnswerCallRequest(_message.Message):
    __slots__ = ("name", "qos", "etag", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    QOS_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    qos: _flowspec_pb2.QosSpec
    etag: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., qos: _Optional[_Union[_flowspec_pb2.QosSpec, _Mapping]] = ..., etag: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class RejectCallRequest(_message.Message):
    __slots__ = ("name", "etag", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    etag: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., etag: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class UpdateLinkResponse(_message.Message):
    __slots__ = ("link", "changes")
    LINK_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    link: _provider_pb2.Link
    changes: _containers.RepeatedCompositeFieldContainer[LinkChange]
    def __init__(self, link: _Optional[_Union[_provider_pb2.Link, _Mapping]] = ..., changes: _Optional[_Iterable[_Union[LinkChange, _Mapping]]] = ...) -> None: ...

class LinkChange(_message.Message):
    __slots__ = ("call", "outcome", "previous_qos", "current_qos", "message", "recorded")
    class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OUTCOME_UNSPECIFIED: _ClassVar[LinkChange.Outcome]
        OUTCOME_DEGRADED: _ClassVar[LinkChange.Outcome]
        OUTCOME_DISCONNECTED: _ClassVar[LinkChange.Outcome]
    OUTCOME_UNSPECIFIED: LinkChange.Outcome
    OUTCOME_DEGRADED: LinkChange.Outcome
    OUTCOME_DISCONNECTED: LinkChange.Outcome
    CALL_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_QOS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_QOS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    call: str
    outcome: LinkChange.Outcome
    previous_qos: _flowspec_pb2.QosSpec
    current_qos: _flowspec_pb2.QosSpec
    message: str
    recorded: bool
    def __init__(self, call: _Optional[str] = ..., outcome: _Optional[_Union[LinkChange.Outcome, str]] = ..., previous_qos: _Optional[_Union[_flowspec_pb2.QosSpec, _Mapping]] = ..., current_qos: _Optional[_Union[_flowspec_pb2.QosSpec, _Mapping]] = ..., message: _Optional[str] = ..., recorded: _Optional[bool] = ...) -> None: ...
