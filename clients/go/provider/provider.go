// Package provider lets you write a callqos QoS provider in Go and serve it to a callqos server
// over the out-of-process provider protocol, callqos.provider.v1
// (protos/callqos/provider/v1/provider_service.proto).
//
// You implement Provider (and, for what you advertise, Renegotiator, LinkAdmin,
// ProviderSpecificValidator, OfferEnder); Main or Serve does the rest: the gRPC service and grpc.health.v1,
// the handshake with a server that launches you, idempotency of retried requests, the journal of
// the changes you report (kept until the server acknowledges them, replayed when it reconnects),
// restores after a reconnection, deadlines (each method's ctx carries the server's) and trace
// context (spans you start from ctx join the caller's trace), and the calls you offer from your
// network (Host.OfferCall), each offered once however the connection breaks.
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

// OfferEnder is implemented by providers that advertise Capabilities.IncomingCalls.
type OfferEnder interface {
	// OfferEnded says that a call you offered (Host.OfferCall) ended without being admitted:
	// reason is REJECTED, NO_ANSWER, or QOS_UNAVAILABLE (an answer short of a NEEDED request).
	// Tell your network; nothing was reserved for it.
	OfferEnded(ctx context.Context, call string, reason callqosv1.DisconnectReason) error
}

// Host is what a running provider reports its own changes to, and offers calls from its network
// to.
type Host interface {
	// ReportChange records a change you made on your own. It does not wait for the server:
	// the change is kept until the server has applied it, across reconnections. For a call you
	// offered that is not answered yet, a change without QoS means the caller gave up.
	ReportChange(change Change)
	// OfferCall offers a call arriving from your network (only with Capabilities.IncomingCalls)
	// to the application whose line is open for offer.Destination, and returns the offered
	// call's name, "calls/{call}": its answer comes as Admit with Request.Incoming set, its end
	// without an answer as OfferEnder.OfferEnded. It returns "" when no line is open for the
	// address — and when no server answers before ctx ends or within OfferWait (none is
	// connected): tell your network the callee is not available. An invalid offer is an error
	// wrapping ErrInvalidOffer.
	OfferCall(ctx context.Context, offer Offer) (string, error)
}

// Offer is a call arriving from your network.
type Offer struct {
	Destination string                 // the address called
	CallerID    string                 // who calls, as your network identifies them (may be empty)
	Level       callqosv1.ServiceLevel // what the caller asked for; not unspecified
	// The caller's request in the caller's terms (its Sending is what the caller sends); the
	// server validates it as a CreateCall's. A direction left out is BEST_EFFORT.
	CallerQoS *callqosv1.QosSpec
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
	// Admit only: the call is one you offered (Host.OfferCall), now answered by its line's
	// owner. Connect that call rather than place a new one; QoS is in the answering party's terms.
	Incoming bool
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
