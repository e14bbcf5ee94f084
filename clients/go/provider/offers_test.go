package provider_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"

	providerv1 "github.com/callqos/callqos/clients/go/gen/callqos/provider/v1"
	callqosv1 "github.com/callqos/callqos/clients/go/gen/callqos/v1"
	"github.com/callqos/callqos/clients/go/provider"
)

// network is the ledger with a network that calls come in from (Capabilities.IncomingCalls): it
// records the offers that ended and the requests it admitted.
type network struct {
	*ledger
	mu       sync.Mutex
	ended    []string
	incoming []bool
}

func newNetwork() *network { return &network{ledger: newLedger(1000)} }

func (n *network) Info() provider.Info {
	info := n.ledger.Info()
	info.Capabilities.IncomingCalls = true
	return info
}

func (n *network) Admit(ctx context.Context, r provider.Request) (provider.Decision, error) {
	n.mu.Lock()
	n.incoming = append(n.incoming, r.Incoming)
	n.mu.Unlock()
	return n.ledger.Admit(ctx, r)
}

func (n *network) OfferEnded(ctx context.Context, call string, reason callqosv1.DisconnectReason) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.ended = append(n.ended, call+" "+reason.String())
	return nil
}

func anOffer() provider.Offer {
	return provider.Offer{Destination: "sip:bob@example.test", CallerID: "tel:+15550100", Level: callqosv1.ServiceLevel_SERVICE_LEVEL_NEEDED, CallerQoS: cl(300)}
}

func TestAnOfferNoServerAnsweredIsSentAgainToTheNextStream(t *testing.T) {
	client, server, _ := serve(t, newNetwork())
	ctx := testContext(t)
	type result struct {
		call string
		err  error
	}
	offering := func() chan result {
		out := make(chan result, 1)
		go func() {
			call, err := server.OfferCall(ctx, anOffer())
			out <- result{call, err}
		}()
		return out
	}
	ringing := offering()
	firstCtx, breakFirst := context.WithCancel(ctx)
	first, err := client.WatchOffers(firstCtx)
	if err != nil {
		t.Fatal(err)
	}
	sent, err := first.Recv()
	if err != nil || sent.GetOffer().GetDestination() != "sip:bob@example.test" || sent.GetOffer().GetCallerQos().GetSending().GetTokenRateBytesPerSecond() != 300 {
		t.Fatalf("first stream: %v %v", sent, err)
	}
	breakFirst() // the connection breaks before the server answers
	second, err := client.WatchOffers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	again, err := second.Recv()
	if err != nil || again.GetOfferId() != sent.GetOfferId() {
		t.Fatalf("sent again: %v %v", again, err)
	}
	select {
	case r := <-ringing:
		t.Fatalf("answered before the server answered: %v", r)
	default:
	}
	if err := second.Send(&providerv1.WatchOffersRequest{OfferId: again.GetOfferId(), Outcome: &providerv1.WatchOffersRequest_Call{Call: "calls/offered"}}); err != nil {
		t.Fatal(err)
	}
	if r := <-ringing; r.call != "calls/offered" || r.err != nil {
		t.Fatalf("OfferCall: %v", r)
	}
	// No line open: "" and no error. An invalid offer: ErrInvalidOffer, with the server's words.
	notOffered := offering()
	next, _ := second.Recv()
	second.Send(&providerv1.WatchOffersRequest{OfferId: next.GetOfferId(), Outcome: &providerv1.WatchOffersRequest_NotOffered{NotOffered: "no line"}})
	if r := <-notOffered; r.call != "" || r.err != nil {
		t.Fatalf("not offered: %v", r)
	}
	invalid := offering()
	next, _ = second.Recv()
	second.Send(&providerv1.WatchOffersRequest{OfferId: next.GetOfferId(), Outcome: &providerv1.WatchOffersRequest_Invalid{Invalid: "caller_qos.sending: bad"}})
	if r := <-invalid; !errors.Is(r.err, provider.ErrInvalidOffer) || r.call != "" {
		t.Fatalf("invalid: %v", r)
	}
}

func TestAnAnsweredOfferIsAdmittedAsIncomingAndItsEndIsToldOnce(t *testing.T) {
	p := newNetwork()
	client, _, _ := serve(t, p)
	ctx := testContext(t)
	if _, err := client.Restore(ctx, &providerv1.RestoreRequest{}); err != nil {
		t.Fatal(err)
	}
	answered := admit("calls/offered", "r1", 300)
	answered.Incoming = true
	if _, err := client.Admit(ctx, answered); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Admit(ctx, admit("calls/placed", "r2", 300)); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ { // a retried notice is told once
		ended := &providerv1.OfferEndedRequest{Call: "calls/rejected", Reason: callqosv1.DisconnectReason_DISCONNECT_REASON_REJECTED, RequestId: "e1"}
		if _, err := client.OfferEnded(ctx, ended); err != nil {
			t.Fatal(err)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.incoming) != 2 || !p.incoming[0] || p.incoming[1] {
		t.Fatalf("Request.Incoming as admitted: %v", p.incoming)
	}
	if len(p.ended) != 1 || p.ended[0] != "calls/rejected DISCONNECT_REASON_REJECTED" {
		t.Fatalf("ended: %v", p.ended)
	}
}

func TestAProviderWithoutIncomingCallsNeitherOffersNorIsTold(t *testing.T) {
	client, server, _ := serve(t, newLedger(1000))
	ctx := testContext(t)
	if _, err := server.OfferCall(ctx, anOffer()); !errors.Is(err, provider.ErrInvalidOffer) {
		t.Fatalf("OfferCall without the capability: %v", err)
	}
	if _, err := client.OfferEnded(ctx, &providerv1.OfferEndedRequest{Call: "calls/x"}); codeOf(err) != codes.Unimplemented {
		t.Fatalf("OfferEnded without the capability: %v", err)
	}
	stream, err := client.WatchOffers(ctx)
	if err == nil {
		_, err = stream.Recv()
	}
	if codeOf(err) != codes.Unimplemented {
		t.Fatalf("WatchOffers without the capability: %v", err)
	}
}
