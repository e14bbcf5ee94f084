import datetime

from callqos.v1 import flowspec_pb2 as _flowspec_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ServiceLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SERVICE_LEVEL_UNSPECIFIED: _ClassVar[ServiceLevel]
    SERVICE_LEVEL_NEEDED: _ClassVar[ServiceLevel]
    SERVICE_LEVEL_IF_AVAILABLE: _ClassVar[ServiceLevel]
    SERVICE_LEVEL_BEST_EFFORT: _ClassVar[ServiceLevel]

class DisconnectReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISCONNECT_REASON_UNSPECIFIED: _ClassVar[DisconnectReason]
    DISCONNECT_REASON_NORMAL: _ClassVar[DisconnectReason]
    DISCONNECT_REASON_QOS_UNAVAILABLE: _ClassVar[DisconnectReason]
    DISCONNECT_REASON_PROVIDER_ERROR: _ClassVar[DisconnectReason]
    DISCONNECT_REASON_REJECTED: _ClassVar[DisconnectReason]
    DISCONNECT_REASON_NO_ANSWER: _ClassVar[DisconnectReason]
    DISCONNECT_REASON_PEER_DROPPED: _ClassVar[DisconnectReason]
    DISCONNECT_REASON_LEASE_EXPIRED: _ClassVar[DisconnectReason]
SERVICE_LEVEL_UNSPECIFIED: ServiceLevel
SERVICE_LEVEL_NEEDED: ServiceLevel
SERVICE_LEVEL_IF_AVAILABLE: ServiceLevel
SERVICE_LEVEL_BEST_EFFORT: ServiceLevel
DISCONNECT_REASON_UNSPECIFIED: DisconnectReason
DISCONNECT_REASON_NORMAL: DisconnectReason
DISCONNECT_REASON_QOS_UNAVAILABLE: DisconnectReason
DISCONNECT_REASON_PROVIDER_ERROR: DisconnectReason
DISCONNECT_REASON_REJECTED: DisconnectReason
DISCONNECT_REASON_NO_ANSWER: DisconnectReason
DISCONNECT_REASON_PEER_DROPPED: DisconnectReason
DISCONNECT_REASON_LEASE_EXPIRED: DisconnectReason

class Call(_message.Message):
    __slots__ = ("name", "destination", "provider", "state", "disconnect_reason", "service_level", "requested_qos", "granted_qos", "features", "owner", "etag", "create_time", "update_time", "direction", "line", "peer", "caller_id", "offer_expire_time", "offer_traceparent", "tenant", "lease_duration", "lease_expire_time")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Call.State]
        STATE_CONNECTED: _ClassVar[Call.State]
        STATE_DISCONNECTED: _ClassVar[Call.State]
        STATE_OFFERING: _ClassVar[Call.State]
        STATE_RINGBACK: _ClassVar[Call.State]
    STATE_UNSPECIFIED: Call.State
    STATE_CONNECTED: Call.State
    STATE_DISCONNECTED: Call.State
    STATE_OFFERING: Call.State
    STATE_RINGBACK: Call.State
    class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        DIRECTION_UNSPECIFIED: _ClassVar[Call.Direction]
        DIRECTION_OUTGOING: _ClassVar[Call.Direction]
        DIRECTION_INCOMING: _ClassVar[Call.Direction]
    DIRECTION_UNSPECIFIED: Call.Direction
    DIRECTION_OUTGOING: Call.Direction
    DIRECTION_INCOMING: Call.Direction
    class Features(_message.Message):
        __slots__ = ("set_qos", "answer")
        SET_QOS_FIELD_NUMBER: _ClassVar[int]
        ANSWER_FIELD_NUMBER: _ClassVar[int]
        set_qos: bool
        answer: bool
        def __init__(self, set_qos: _Optional[bool] = ..., answer: _Optional[bool] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DISCONNECT_REASON_FIELD_NUMBER: _ClassVar[int]
    SERVICE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_QOS_FIELD_NUMBER: _ClassVar[int]
    GRANTED_QOS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    CALLER_ID_FIELD_NUMBER: _ClassVar[int]
    OFFER_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    OFFER_TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    destination: str
    provider: str
    state: Call.State
    disconnect_reason: DisconnectReason
    service_level: ServiceLevel
    requested_qos: _flowspec_pb2.QosSpec
    granted_qos: _flowspec_pb2.QosSpec
    features: Call.Features
    owner: str
    etag: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    direction: Call.Direction
    line: str
    peer: str
    caller_id: str
    offer_expire_time: _timestamp_pb2.Timestamp
    offer_traceparent: str
    tenant: str
    lease_duration: _duration_pb2.Duration
    lease_expire_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., destination: _Optional[str] = ..., provider: _Optional[str] = ..., state: _Optional[_Union[Call.State, str]] = ..., disconnect_reason: _Optional[_Union[DisconnectReason, str]] = ..., service_level: _Optional[_Union[ServiceLevel, str]] = ..., requested_qos: _Optional[_Union[_flowspec_pb2.QosSpec, _Mapping]] = ..., granted_qos: _Optional[_Union[_flowspec_pb2.QosSpec, _Mapping]] = ..., features: _Optional[_Union[Call.Features, _Mapping]] = ..., owner: _Optional[str] = ..., etag: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., direction: _Optional[_Union[Call.Direction, str]] = ..., line: _Optional[str] = ..., peer: _Optional[str] = ..., caller_id: _Optional[str] = ..., offer_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., offer_traceparent: _Optional[str] = ..., tenant: _Optional[str] = ..., lease_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., lease_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class QosRefusal(_message.Message):
    __slots__ = ("call", "counter_offer", "detail")
    CALL_FIELD_NUMBER: _ClassVar[int]
    COUNTER_OFFER_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    call: str
    counter_offer: _flowspec_pb2.QosSpec
    detail: str
    def __init__(self, call: _Optional[str] = ..., counter_offer: _Optional[_Union[_flowspec_pb2.QosSpec, _Mapping]] = ..., detail: _Optional[str] = ...) -> None: ...
