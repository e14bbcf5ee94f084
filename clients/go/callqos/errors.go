package callqos

import (
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	callqosv1 "github.com/callqos/callqos/clients/go/gen/callqos/v1"
)

// Domain is the google.rpc.ErrorInfo domain of every callqos error.
const Domain = "callqos.dev"

// The ErrorInfo reasons a client most often branches on: callqosv1.ErrorReason value names
// without the ERROR_REASON_ prefix. Reason turns any ErrorReason into its string.
const (
	ReasonQosUnavailable   = "QOS_UNAVAILABLE"
	ReasonQosPolicyFailure = "QOS_POLICY_FAILURE"
	ReasonInvalidRequest   = "INVALID_REQUEST"
	ReasonCallNotFound     = "CALL_NOT_FOUND"
	ReasonNotOwner         = "NOT_OWNER"
	ReasonCursorExpired    = "CURSOR_EXPIRED"
	ReasonCallNotOffering  = "CALL_NOT_OFFERING"
	ReasonAddressInUse     = "ADDRESS_IN_USE"
	ReasonLeaseExpired     = "LEASE_EXPIRED"
	ReasonCallNotLeased    = "CALL_NOT_LEASED"
	ReasonCallNotConnected = "CALL_NOT_CONNECTED"
)

// Reason is the ErrorInfo.reason string of r, e.g. "QOS_UNAVAILABLE".
func Reason(r callqosv1.ErrorReason) string {
	const prefix = "ERROR_REASON_"
	return r.String()[len(prefix):]
}

// CodeOf is the gRPC status code the server always sends with reason r: the (grpc_code) option
// on r in errors.proto, read from the generated descriptor. It is codes.Unknown for a value
// without the option (ERROR_REASON_UNSPECIFIED, or a number this client does not know).
func CodeOf(r callqosv1.ErrorReason) codes.Code {
	v := r.Descriptor().Values().ByNumber(r.Number())
	if v == nil {
		return codes.Unknown
	}
	c := proto.GetExtension(v.Options(), callqosv1.E_GrpcCode).(callqosv1.GrpcCode)
	if c == callqosv1.GrpcCode_GRPC_CODE_UNSPECIFIED {
		return codes.Unknown
	}
	return codes.Code(c)
}

// Error is a failed RPC with its google.rpc.Status details decoded. Every error the wrapper
// returns for a status from the server is an *Error or a *QosUnavailableError (which unwraps
// to an *Error); status.FromError and status.Code keep working on both.
type Error struct {
	// Status is the whole gRPC status, details included.
	Status *status.Status
	// Info is the google.rpc.ErrorInfo (nil only if the server sent none, e.g. a transport
	// failure or a status made by the gRPC library itself).
	Info *errdetails.ErrorInfo
	// BadRequest names the invalid fields of an INVALID_REQUEST.
	BadRequest *errdetails.BadRequest
	// Refusal is the callqos.v1.QosRefusal of a refused CreateCall or RenegotiateCall.
	Refusal *callqosv1.QosRefusal
}

// Code is the gRPC status code.
func (e *Error) Code() codes.Code { return e.Status.Code() }

// Reason is ErrorInfo.reason ("" without ErrorInfo).
func (e *Error) Reason() string { return e.Info.GetReason() }

func (e *Error) Error() string {
	if r := e.Reason(); r != "" {
		return fmt.Sprintf("callqos: %s (%s): %s", e.Code(), r, e.Status.Message())
	}
	return fmt.Sprintf("callqos: %s: %s", e.Code(), e.Status.Message())
}

// GRPCStatus lets status.FromError and status.Code see through the wrapper.
func (e *Error) GRPCStatus() *status.Status { return e.Status }

// QosUnavailableError is a refused QoS: reason QOS_UNAVAILABLE (RESOURCE_EXHAUSTED) or
// QOS_POLICY_FAILURE (PERMISSION_DENIED). CounterOffer is what the provider could grant right
// now; retrying with it succeeds if nothing else changes meanwhile.
type QosUnavailableError struct {
	// Err holds the status and all decoded details; Err.Refusal is the QosRefusal.
	Err *Error
}

// Call is the name of the refused call ("calls/{call}").
func (e *QosUnavailableError) Call() string { return e.Err.Refusal.GetCall() }

// CounterOffer is the provider's counter-offer, or nil when it can offer nothing.
func (e *QosUnavailableError) CounterOffer() *callqosv1.QosSpec {
	return e.Err.Refusal.GetCounterOffer()
}

// Detail is the provider's explanation, for people.
func (e *QosUnavailableError) Detail() string { return e.Err.Refusal.GetDetail() }

// Reason is QOS_UNAVAILABLE or QOS_POLICY_FAILURE.
func (e *QosUnavailableError) Reason() string { return e.Err.Reason() }

func (e *QosUnavailableError) Error() string { return e.Err.Error() }

// GRPCStatus lets status.FromError and status.Code see through the wrapper.
func (e *QosUnavailableError) GRPCStatus() *status.Status { return e.Err.Status }

// Unwrap gives the underlying *Error, for errors.As.
func (e *QosUnavailableError) Unwrap() error { return e.Err }

// decodeError turns a gRPC error into an *Error or *QosUnavailableError; other errors (and
// nil) pass through.
func decodeError(err error) error {
	st, ok := status.FromError(err)
	if err == nil || !ok {
		return err
	}
	e := &Error{Status: st}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			e.Info = d
		case *errdetails.BadRequest:
			e.BadRequest = d
		case *callqosv1.QosRefusal:
			e.Refusal = d
		}
	}
	if r := e.Reason(); r == ReasonQosUnavailable || r == ReasonQosPolicyFailure {
		return &QosUnavailableError{Err: e}
	}
	return e
}
