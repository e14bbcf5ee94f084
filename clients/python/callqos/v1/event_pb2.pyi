import datetime

from callqos.v1 import call_pb2 as _call_pb2
from callqos.v1 import flowspec_pb2 as _flowspec_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class QosEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QOS_EVENT_TYPE_UNSPECIFIED: _ClassVar[QosEventType]
    QOS_EVENT_TYPE_QOS_GRANTED: _ClassVar[QosEventType]
    QOS_EVENT_TYPE_QOS_CHANGED: _ClassVar[QosEventType]
    QOS_EVENT_TYPE_NOQOS: _ClassVar[QosEventType]
    QOS_EVENT_TYPE_ADMISSION_FAILURE: _ClassVar[QosEventType]
    QOS_EVENT_TYPE_POLICY_FAILURE: _ClassVar[QosEventType]
    QOS_EVENT_TYPE_GENERIC_ERROR: _ClassVar[QosEventType]
    QOS_EVENT_TYPE_RENEGOTIATION_FAILED: _ClassVar[QosEventType]
    QOS_EVENT_TYPE_CALL_DISCONNECTED: _ClassVar[QosEventType]
    QOS_EVENT_TYPE_CALL_OFFERED: _ClassVar[QosEventType]
    QOS_EVENT_TYPE_CALL_RINGBACK: _ClassVar[QosEventType]
    QOS_EVENT_TYPE_RELEASE_PENDING: _ClassVar[QosEventType]
    QOS_EVENT_TYPE_RELEASE_COMPLETED: _ClassVar[QosEventType]

class QosChangeCause(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QOS_CHANGE_CAUSE_UNSPECIFIED: _ClassVar[QosChangeCause]
    QOS_CHANGE_CAUSE_RENEGOTIATED: _ClassVar[QosChangeCause]
    QOS_CHANGE_CAUSE_PROVIDER_INITIATED: _ClassVar[QosChangeCause]
QOS_EVENT_TYPE_UNSPECIFIED: QosEventType
QOS_EVENT_TYPE_QOS_GRANTED: QosEventType
QOS_EVENT_TYPE_QOS_CHANGED: QosEventType
QOS_EVENT_TYPE_NOQOS: QosEventType
QOS_EVENT_TYPE_ADMISSION_FAILURE: QosEventType
QOS_EVENT_TYPE_POLICY_FAILURE: QosEventType
QOS_EVENT_TYPE_GENERIC_ERROR: QosEventType
QOS_EVENT_TYPE_RENEGOTIATION_FAILED: QosEventType
QOS_EVENT_TYPE_CALL_DISCONNECTED: QosEventType
QOS_EVENT_TYPE_CALL_OFFERED: QosEventType
QOS_EVENT_TYPE_CALL_RINGBACK: QosEventType
QOS_EVENT_TYPE_RELEASE_PENDING: QosEventType
QOS_EVENT_TYPE_RELEASE_COMPLETED: QosEventType
QOS_CHANGE_CAUSE_UNSPECIFIED: QosChangeCause
QOS_CHANGE_CAUSE_RENEGOTIATED: QosChangeCause
QOS_CHANGE_CAUSE_PROVIDER_INITIATED: QosChangeCause

class QosEvent(_message.Message):
    __slots__ = ("sequence", "call", "type", "provider", "previous_qos", "current_qos", "cause", "disconnect_reason", "reason", "message", "counter_offer", "request_id", "trace_id", "create_time", "line", "tenant")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_QOS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_QOS_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    DISCONNECT_REASON_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    COUNTER_OFFER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    call: str
    type: QosEventType
    provider: str
    previous_qos: _flowspec_pb2.QosSpec
    current_qos: _flowspec_pb2.QosSpec
    cause: QosChangeCause
    disconnect_reason: _call_pb2.DisconnectReason
    reason: str
    message: str
    counter_offer: _flowspec_pb2.QosSpec
    request_id: str
    trace_id: str
    create_time: _timestamp_pb2.Timestamp
    line: str
    tenant: str
    def __init__(self, sequence: _Optional[int] = ..., call: _Optional[str] = ..., type: _Optional[_Union[QosEventType, str]] = ..., provider: _Optional[str] = ..., previous_qos: _Optional[_Union[_flowspec_pb2.QosSpec, _Mapping]] = ..., current_qos: _Optional[_Union[_flowspec_pb2.QosSpec, _Mapping]] = ..., cause: _Optional[_Union[QosChangeCause, str]] = ..., disconnect_reason: _Optional[_Union[_call_pb2.DisconnectReason, str]] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., counter_offer: _Optional[_Union[_flowspec_pb2.QosSpec, _Mapping]] = ..., request_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., line: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...
