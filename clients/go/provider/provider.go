// Package provider lets you write a callqos QoS provider in Go and serve it to a callqos server
// over the out-of-process provider protocol, callqos.provider.v1
// (protos/callqos/provider/v1/provider_service.proto).
//
// You implement Provider (and, for what you advertise, Renegotiator, LinkAdmin,
// ProviderSpecificValidator); Main or Serve does the rest: the gRPC service and grpc.health.v1,
// the handshake with a server that launches you, idempotency of retried requests, the journal of
// the changes you report (kept until the server acknowledges them, replayed when it reconnects),
// restores after a reconnection, deadlines (each method's ctx carries the server's) and trace
// context (spans you start from ctx join the caller's trace).
//
// What the server does for you, so a provider never sees it: it validates every request (a
// flowspec you receive is valid, and NO_CHANGE is resolved), checks ownership, etags and
// request_ids, stores calls and events, and fails calls with PROVIDER_UNAVAILABLE while you are
// away. What you decide: what QoS you can give.
//
// The rules a provider keeps are the PROV clauses of conformance/SPEC.md; certify it with
//
//	callqos-conformance --provider-command ./my-provider
package provider

import (
	"context"

	callqosv1 "github.com/callqos/callqos/clients/go/gen/callqos/v1"
)

// Provider is what every provider implements. The kit calls its methods concurrently, from the
// server's requests: guard your state.
type Provider interface {
	// Info says who the provider is and what it can do. Called once; the capabilities must not
	// change while the provider runs.
	Info() Info
	// Start is called once, before anything else. Keep host: report the changes you make on
	// your own (a call degraded or dropped) with host.ReportChange.
	Start(host Host) error
	// Restore re-takes the reservations of calls the server holds: at first every call that
	// was connected when the server (re)started, later (after a reconnection) the calls the
	// server holds that this process does not. Return a Change for each call that no longer
	// fits (dropped, or degraded to what fits); it holds nothing else.
	Restore(ctx context.Context, calls []Held) ([]Change, error)
	// Admit reserves QoS for a new call and returns Grant(qos), or reserves nothing and returns
	// Refuse(...) with the best counter-offer it could grant right now. At NEEDED a grant
	// satisfies the request in both directions; at IF_AVAILABLE it may be less.
	Admit(ctx context.Context, request Request) (Decision, error)
	// Release frees everything the call holds. Releasing an unknown call, or twice, is fine.
	Release(ctx context.Context, call string) error
}

// Renegotiator is implemented by providers that advertise Capabilities.Renegotiation.
type Renegotiator interface {
	// Renegotiate replaces the QoS of a call you hold (Request.Current is the QoS in effect), or
	// refuses and leaves the call's reservation exactly as it was.
	Renegotiate(ctx context.Context, request Request) (Decision, error)
}

// LinkAdmin is implemented by providers that advertise Capabilities.LinkAdmin.
type LinkAdmin interface {
	// ListLinks returns your links; name each "links/{link}" (the server prefixes its own name
	// for you).
	ListLinks(ctx context.Context) ([]*callqosv1.Link, error)
	// UpdateLink sets link's capacity (bytes per second, each direction). Report each call that
	// no longer fits with Host.ReportChange before returning. Return ErrUnknownLink for a link
	// you do not have.
	UpdateLink(ctx context.Context, link string, capacity uint64) (*callqosv1.Link, error)
}

// ProviderSpecificValidator is implemented by providers that interpret QosSpec.provider_specific.
type ProviderSpecificValidator interface {
	// ValidateProviderSpecific returns what is wrong with data (nothing: acceptable). Each
	// problem is one field violation the caller gets with INVALID_ARGUMENT; nothing is reserved.
	ValidateProviderSpecific(data []byte) []string
}

// Host is what a running provider reports its own changes to.
type Host interface {
	// ReportChange records a change you made on your own. It does not wait for the server:
	// the change is kept until the server has applied it, across reconnections.
	ReportChange(change Change)
}

// Info is who the provider is and what it can do.
type Info struct {
	DisplayName  string
	Description  string
	Version      string // yours, shown to operators
	Capabilities *callqosv1.ProviderCapabilities
}

// Request is a request for QoS on one call: a new call, or (with Current) a renegotiation.
type Request struct {
	Call        string // "calls/{call}"
	Destination string
	Level       callqosv1.ServiceLevel // NEEDED, IF_AVAILABLE or BEST_EFFORT; never unspecified
	QoS         *callqosv1.QosSpec     // validated by the server
	Principal   string                 // who asks
	Current     *callqosv1.QosSpec     // the QoS in effect (Renegotiate only)
}

// Held is a call the server holds, handed back by Restore.
type Held struct {
	Call        string
	Destination string
	Level       callqosv1.ServiceLevel
	QoS         *callqosv1.QosSpec // the QoS in effect, as the server recorded it
}

// Change is a change the provider made on its own.
type Change struct {
	Call    string
	QoS     *callqosv1.QosSpec // the QoS now in effect; nil: the call is dropped (you hold nothing for it)
	Message string             // for people; carried on the call's QoS events
	// The event that announces a loss: NOQOS when unset, or ADMISSION_FAILURE, POLICY_FAILURE,
	// GENERIC_ERROR. A degradation is also announced as QOS_CHANGED.
	Event callqosv1.QosEventType
}

// RefusalKind says why a request is refused.
type RefusalKind int

const (
	// Admission: lack of resources (QOS_UNAVAILABLE, an ADMISSION_FAILURE event).
	Admission RefusalKind = iota + 1
	// Policy: an administrative refusal (QOS_POLICY_FAILURE, a POLICY_FAILURE event).
	Policy
)

// Decision is the answer to Admit or Renegotiate: a grant, or a refusal. Make one with Grant
// or Refuse.
type Decision struct {
	Granted *callqosv1.QosSpec
	Refusal *Refusal
}

// Refusal is a refused request: nothing reserved.
type Refusal struct {
	Kind         RefusalKind
	Message      string
	CounterOffer *callqosv1.QosSpec // the best you could grant right now; nil: nothing
}

// Grant is the decision to put qos in effect, with the defaults you chose resolved.
func Grant(qos *callqosv1.QosSpec) Decision { return Decision{Granted: qos} }

// Refuse is the decision to refuse, reserving nothing, with a counter-offer (or nil).
func Refuse(kind RefusalKind, message string, counterOffer *callqosv1.QosSpec) Decision {
	return Decision{Refusal: &Refusal{Kind: kind, Message: message, CounterOffer: counterOffer}}
}
