import datetime

from callqos.v1 import call_pb2 as _call_pb2
from callqos.v1 import errors_pb2 as _errors_pb2
from callqos.v1 import event_pb2 as _event_pb2
from callqos.v1 import flowspec_pb2 as _flowspec_pb2
from callqos.v1 import provider_pb2 as _provider_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RefusalKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REFUSAL_KIND_UNSPECIFIED: _ClassVar[RefusalKind]
    REFUSAL_KIND_ADMISSION: _ClassVar[RefusalKind]
    REFUSAL_KIND_POLICY: _ClassVar[RefusalKind]
REFUSAL_KIND_UNSPECIFIED: RefusalKind
REFUSAL_KIND_ADMISSION: RefusalKind
REFUSAL_KIND_POLICY: RefusalKind

class GetProviderInfoRequest(_message.Message):
    __slots__ = ("provider", "protocol_versions")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    provider: str
    protocol_versions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, provider: _Optional[str] = ..., protocol_versions: _Optional[_Iterable[str]] = ...) -> None: ...

class GetProviderInfoResponse(_message.Message):
    __slots__ = ("display_name", "description", "vendor_version", "capabilities", "instance_id", "decide_stream")
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    VENDOR_VERSION_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    DECIDE_STREAM_FIELD_NUMBER: _ClassVar[int]
    display_name: str
    description: str
    vendor_version: str
    capabilities: _provider_pb2.ProviderCapabilities
    instance_id: str
    decide_stream: bool
    def __init__(self, display_name: _Optional[str] = ..., description: _Optional[str] = ..., vendor_version: _Optional[str] = ..., capabilities: _Optional[_Union[_provider_pb2.ProviderCapabilities, _Mapping]] = ..., instance_id: _Optional[str] = ..., decide_stream: _Optional[bool] = ...) -> None: ...

class Grant(_message.Message):
    __slots__ = ("qos",)
    QOS_FIELD_NUMBER: _ClassVar[int]
    qos: _flowspec_pb2.QosSpec
    def __init__(self, qos: _Optional[_Union[_flowspec_pb2.QosSpec, _Mapping]] = ...) -> None: ...

class Refusal(_message.Message):
    __slots__ = ("kind", "message", "counter_offer")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    COUNTER_OFFER_FIELD_NUMBER: _ClassVar[int]
    kind: RefusalKind
    message: str
    counter_offer: _flowspec_pb2.QosSpec
    def __init__(self, kind: _Optional[_Union[RefusalKind, str]] = ..., message: _Optional[str] = ..., counter_offer: _Optional[_Union[_flowspec_pb2.QosSpec, _Mapping]] = ...) -> None: ...

class AdmitRequest(_message.Message):
    __slots__ = ("call", "request_id", "destination", "service_level", "qos", "principal", "incoming")
    CALL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    SERVICE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    QOS_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    INCOMING_FIELD_NUMBER: _ClassVar[int]
    call: str
    request_id: str
    destination: str
    service_level: _call_pb2.ServiceLevel
    qos: _flowspec_pb2.QosSpec
    principal: str
    incoming: bool
    def __init__(self, call: _Optional[str] = ..., request_id: _Optional[str] = ..., destination: _Optional[str] = ..., service_level: _Optional[_Union[_call_pb2.ServiceLevel, str]] = ..., qos: _Optional[_Union[_flowspec_pb2.QosSpec, _Mapping]] = ..., principal: _Optional[str] = ..., incoming: _Optional[bool] = ...) -> None: ...

class AdmitResponse(_message.Message):
    __slots__ = ("grant", "refusal")
    GRANT_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    grant: Grant
    refusal: Refusal
    def __init__(self, grant: _Optional[_Union[Grant, _Mapping]] = ..., refusal: _Optional[_Union[Refusal, _Mapping]] = ...) -> None: ...

class RenegotiateRequest(_message.Message):
    __slots__ = ("call", "request_id", "destination", "service_level", "qos", "principal", "current_qos")
    CALL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    SERVICE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    QOS_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    CURRENT_QOS_FIELD_NUMBER: _ClassVar[int]
    call: str
    request_id: str
    destination: str
    service_level: _call_pb2.ServiceLevel
    qos: _flowspec_pb2.QosSpec
    principal: str
    current_qos: _flowspec_pb2.QosSpec
    def __init__(self, call: _Optional[str] = ..., request_id: _Optional[str] = ..., destination: _Optional[str] = ..., service_level: _Optional[_Union[_call_pb2.ServiceLevel, str]] = ..., qos: _Optional[_Union[_flowspec_pb2.QosSpec, _Mapping]] = ..., principal: _Optional[str] = ..., current_qos: _Optional[_Union[_flowspec_pb2.QosSpec, _Mapping]] = ...) -> None: ...

class RenegotiateResponse(_message.Message):
    __slots__ = ("grant", "refusal")
    GRANT_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    grant: Grant
    refusal: Refusal
    def __init__(self, grant: _Optional[_Union[Grant, _Mapping]] = ..., refusal: _Optional[_Union[Refusal, _Mapping]] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("call", "request_id")
    CALL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    call: str
    request_id: str
    def __init__(self, call: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DecideRequest(_message.Message):
    __slots__ = ("id", "timeout", "traceparent", "tracestate", "admit", "renegotiate", "release")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    TRACESTATE_FIELD_NUMBER: _ClassVar[int]
    ADMIT_FIELD_NUMBER: _ClassVar[int]
    RENEGOTIATE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    id: int
    timeout: _duration_pb2.Duration
    traceparent: str
    tracestate: str
    admit: AdmitRequest
    renegotiate: RenegotiateRequest
    release: ReleaseRequest
    def __init__(self, id: _Optional[int] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., traceparent: _Optional[str] = ..., tracestate: _Optional[str] = ..., admit: _Optional[_Union[AdmitRequest, _Mapping]] = ..., renegotiate: _Optional[_Union[RenegotiateRequest, _Mapping]] = ..., release: _Optional[_Union[ReleaseRequest, _Mapping]] = ...) -> None: ...

class DecideResponse(_message.Message):
    __slots__ = ("id", "admit", "renegotiate", "release", "failure")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADMIT_FIELD_NUMBER: _ClassVar[int]
    RENEGOTIATE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    id: int
    admit: AdmitResponse
    renegotiate: RenegotiateResponse
    release: ReleaseResponse
    failure: DecideFailure
    def __init__(self, id: _Optional[int] = ..., admit: _Optional[_Union[AdmitResponse, _Mapping]] = ..., renegotiate: _Optional[_Union[RenegotiateResponse, _Mapping]] = ..., release: _Optional[_Union[ReleaseResponse, _Mapping]] = ..., failure: _Optional[_Union[DecideFailure, _Mapping]] = ...) -> None: ...

class DecideFailure(_message.Message):
    __slots__ = ("code", "message", "provider_specific_violations")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_SPECIFIC_VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    code: _errors_pb2.GrpcCode
    message: str
    provider_specific_violations: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, code: _Optional[_Union[_errors_pb2.GrpcCode, str]] = ..., message: _Optional[str] = ..., provider_specific_violations: _Optional[_Iterable[str]] = ...) -> None: ...

class HeldCall(_message.Message):
    __slots__ = ("call", "destination", "service_level", "qos")
    CALL_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    SERVICE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    QOS_FIELD_NUMBER: _ClassVar[int]
    call: str
    destination: str
    service_level: _call_pb2.ServiceLevel
    qos: _flowspec_pb2.QosSpec
    def __init__(self, call: _Optional[str] = ..., destination: _Optional[str] = ..., service_level: _Optional[_Union[_call_pb2.ServiceLevel, str]] = ..., qos: _Optional[_Union[_flowspec_pb2.QosSpec, _Mapping]] = ...) -> None: ...

class RestoreRequest(_message.Message):
    __slots__ = ("calls",)
    CALLS_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[HeldCall]
    def __init__(self, calls: _Optional[_Iterable[_Union[HeldCall, _Mapping]]] = ...) -> None: ...

class RestoreResponse(_message.Message):
    __slots__ = ("changes",)
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[Change]
    def __init__(self, changes: _Optional[_Iterable[_Union[Change, _Mapping]]] = ...) -> None: ...

class ListReservationsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Reservation(_message.Message):
    __slots__ = ("call", "qos")
    CALL_FIELD_NUMBER: _ClassVar[int]
    QOS_FIELD_NUMBER: _ClassVar[int]
    call: str
    qos: _flowspec_pb2.QosSpec
    def __init__(self, call: _Optional[str] = ..., qos: _Optional[_Union[_flowspec_pb2.QosSpec, _Mapping]] = ...) -> None: ...

class ListReservationsResponse(_message.Message):
    __slots__ = ("reservations",)
    RESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    reservations: _containers.RepeatedCompositeFieldContainer[Reservation]
    def __init__(self, reservations: _Optional[_Iterable[_Union[Reservation, _Mapping]]] = ...) -> None: ...

class ListLinksRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListLinksResponse(_message.Message):
    __slots__ = ("links",)
    LINKS_FIELD_NUMBER: _ClassVar[int]
    links: _containers.RepeatedCompositeFieldContainer[_provider_pb2.Link]
    def __init__(self, links: _Optional[_Iterable[_Union[_provider_pb2.Link, _Mapping]]] = ...) -> None: ...

class UpdateLinkRequest(_message.Message):
    __slots__ = ("link", "capacity_bytes_per_second", "request_id")
    LINK_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    link: str
    capacity_bytes_per_second: int
    request_id: str
    def __init__(self, link: _Optional[str] = ..., capacity_bytes_per_second: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class UpdateLinkResponse(_message.Message):
    __slots__ = ("link", "change_sequence")
    LINK_FIELD_NUMBER: _ClassVar[int]
    CHANGE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    link: _provider_pb2.Link
    change_sequence: int
    def __init__(self, link: _Optional[_Union[_provider_pb2.Link, _Mapping]] = ..., change_sequence: _Optional[int] = ...) -> None: ...

class Change(_message.Message):
    __slots__ = ("sequence", "call", "qos", "message", "event")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    QOS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    call: str
    qos: _flowspec_pb2.QosSpec
    message: str
    event: _event_pb2.QosEventType
    def __init__(self, sequence: _Optional[int] = ..., call: _Optional[str] = ..., qos: _Optional[_Union[_flowspec_pb2.QosSpec, _Mapping]] = ..., message: _Optional[str] = ..., event: _Optional[_Union[_event_pb2.QosEventType, str]] = ...) -> None: ...

class WatchChangesRequest(_message.Message):
    __slots__ = ("instance_id", "after_sequence")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    after_sequence: int
    def __init__(self, instance_id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class WatchChangesResponse(_message.Message):
    __slots__ = ("change",)
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    change: Change
    def __init__(self, change: _Optional[_Union[Change, _Mapping]] = ...) -> None: ...

class AckChangesRequest(_message.Message):
    __slots__ = ("instance_id", "sequence")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    sequence: int
    def __init__(self, instance_id: _Optional[str] = ..., sequence: _Optional[int] = ...) -> None: ...

class AckChangesResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class IncomingOffer(_message.Message):
    __slots__ = ("destination", "caller_id", "service_level", "caller_qos")
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    CALLER_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    CALLER_QOS_FIELD_NUMBER: _ClassVar[int]
    destination: str
    caller_id: str
    service_level: _call_pb2.ServiceLevel
    caller_qos: _flowspec_pb2.QosSpec
    def __init__(self, destination: _Optional[str] = ..., caller_id: _Optional[str] = ..., service_level: _Optional[_Union[_call_pb2.ServiceLevel, str]] = ..., caller_qos: _Optional[_Union[_flowspec_pb2.QosSpec, _Mapping]] = ...) -> None: ...

class WatchOffersRequest(_message.Message):
    __slots__ = ("offer_id", "call", "not_offered", "invalid")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    NOT_OFFERED_FIELD_NUMBER: _ClassVar[int]
    INVALID_FIELD_NUMBER: _ClassVar[int]
    offer_id: int
    call: str
    not_offered: str
    invalid: str
    def __init__(self, offer_id: _Optional[int] = ..., call: _Optional[str] = ..., not_offered: _Optional[str] = ..., invalid: _Optional[str] = ...) -> None: ...

class WatchOffersResponse(_message.Message):
    __slots__ = ("offer_id", "offer")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    OFFER_FIELD_NUMBER: _ClassVar[int]
    offer_id: int
    offer: IncomingOffer
    def __init__(self, offer_id: _Optional[int] = ..., offer: _Optional[_Union[IncomingOffer, _Mapping]] = ...) -> None: ...

class OfferEndedRequest(_message.Message):
    __slots__ = ("call", "reason", "request_id")
    CALL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    call: str
    reason: _call_pb2.DisconnectReason
    request_id: str
    def __init__(self, call: _Optional[str] = ..., reason: _Optional[_Union[_call_pb2.DisconnectReason, str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class OfferEndedResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
