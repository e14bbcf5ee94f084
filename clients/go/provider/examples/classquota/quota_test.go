package main

import (
	"context"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"

	callqosv1 "github.com/callqos/callqos/clients/go/gen/callqos/v1"
	"github.com/callqos/callqos/clients/go/provider"
)

const needed = callqosv1.ServiceLevel_SERVICE_LEVEL_NEEDED

// recorder is the Host: the changes the provider reports.
type recorder struct {
	mu      sync.Mutex
	changes []provider.Change
}

func (r *recorder) ReportChange(c provider.Change) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.changes = append(r.changes, c)
}

// OfferCall: this provider has no network calls to offer.
func (r *recorder) OfferCall(context.Context, provider.Offer) (string, error) { return "", nil }

func newQuota(t *testing.T) (*Quota, *recorder) {
	q := &Quota{Capacity: 1_000_000, ControlledLoadShare: 0.8, GuaranteedShare: 0.3, MTU: 1500, ErrorTermC: 3000, ErrorTermD: 500, PathLatency: 1000}
	host := &recorder{}
	q.Info()
	if err := q.Start(host); err != nil {
		t.Fatal(err)
	}
	return q, host
}

func cl(rate uint64) *callqosv1.FlowSpec {
	return &callqosv1.FlowSpec{ServiceType: controlledLoad, TokenRateBytesPerSecond: proto.Uint64(rate)}
}

func gs(rate uint64, latency uint32) *callqosv1.FlowSpec {
	return &callqosv1.FlowSpec{
		ServiceType: guaranteed, TokenRateBytesPerSecond: proto.Uint64(rate), PeakBandwidthBytesPerSecond: proto.Uint64(rate),
		MaxSduSizeBytes: proto.Uint32(1000), TokenBucketSizeBytes: proto.Uint64(4000), MinimumPolicedSizeBytes: proto.Uint32(64),
		LatencyMicroseconds: proto.Uint32(latency),
	}
}

func be() *callqosv1.FlowSpec { return &callqosv1.FlowSpec{ServiceType: bestEffort} }

func ask(t *testing.T, q *Quota, call string, level callqosv1.ServiceLevel, sending, receiving *callqosv1.FlowSpec) provider.Decision {
	t.Helper()
	d, err := q.Admit(context.Background(), provider.Request{Call: call, Level: level, QoS: &callqosv1.QosSpec{Sending: sending, Receiving: receiving}})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestEachClassHasItsQuotaAndAllShareTheLink(t *testing.T) {
	q, _ := newQuota(t)
	if d := ask(t, q, "calls/a", needed, cl(800_000), be()); d.Granted == nil {
		t.Fatalf("CONTROLLED_LOAD up to its 80%% share: %+v", d.Refusal)
	}
	refused := ask(t, q, "calls/b", needed, cl(1), be())
	if refused.Refusal == nil || refused.Refusal.CounterOffer.GetSending().GetServiceType() != bestEffort {
		t.Fatalf("the CONTROLLED_LOAD quota is used up: %+v", refused)
	}
	// GUARANTEED has its own 30% share, but only 20% of the link is left.
	g := ask(t, q, "calls/c", needed, gs(250_000, 1_000_000), be())
	if g.Refusal == nil || g.Refusal.CounterOffer.GetSending().GetPeakBandwidthBytesPerSecond() != 200_000 {
		t.Fatalf("the link's last 20%%: %+v", g.Refusal)
	}
	if retry := ask(t, q, "calls/c", needed, g.Refusal.CounterOffer.GetSending(), be()); retry.Granted == nil {
		t.Fatalf("the counter-offer is admitted: %+v", retry.Refusal)
	}
	// Each direction on its own: the receiving side is all free.
	if d := ask(t, q, "calls/d", needed, be(), cl(800_000)); d.Granted == nil {
		t.Fatalf("receiving: %+v", d.Refusal)
	}
}

func TestGuaranteedFlowsAreAdmittedWithinTheDelayBound(t *testing.T) {
	q, _ := newQuota(t)
	// R = p = 100,000 B/s, M = 1000, C = 3000: (M + C)/R = 40 ms, plus D and the path, 1.5 ms.
	bound := uint32(40_000 + 500 + 1000)
	if d := ask(t, q, "calls/a", needed, gs(100_000, bound-1), be()); d.Refusal == nil || d.Refusal.CounterOffer.GetSending().GetLatencyMicroseconds() != bound {
		t.Fatalf("1 us under the bound is refused, with the bound as the counter-offer: %+v", d)
	}
	if d := ask(t, q, "calls/a", needed, gs(100_000, bound), be()); d.Granted == nil {
		t.Fatalf("the bound itself is admitted: %+v", d.Refusal)
	}
}

func TestNetworkControlIsRefusedByPolicy(t *testing.T) {
	q, _ := newQuota(t)
	nc := &callqosv1.FlowSpec{ServiceType: networkControl, TokenRateBytesPerSecond: proto.Uint64(10)}
	if d := ask(t, q, "calls/a", needed, nc, be()); d.Refusal == nil || d.Refusal.Kind != provider.Policy {
		t.Fatalf("%+v", d)
	}
}

func TestALoweredLinkShedsTheNewestCallsAndReportsThem(t *testing.T) {
	q, host := newQuota(t)
	ask(t, q, "calls/old", needed, cl(300_000), be())
	ask(t, q, "calls/flexible", callqosv1.ServiceLevel_SERVICE_LEVEL_IF_AVAILABLE, cl(300_000), be())
	ask(t, q, "calls/new", needed, cl(100_000), be())
	link, err := q.UpdateLink(context.Background(), "uplink", 500_000) // CONTROLLED_LOAD quota 400,000
	if err != nil {
		t.Fatal(err)
	}
	if link.GetSendingReservedBytesPerSecond() > 400_000 {
		t.Fatalf("still over the quota: %v", link)
	}
	if len(host.changes) != 2 || host.changes[0].Call != "calls/new" || host.changes[0].QoS != nil {
		t.Fatalf("the newest NEEDED call is dropped first: %+v", host.changes)
	}
	if host.changes[1].Call != "calls/flexible" || host.changes[1].QoS.GetSending().GetTokenRateBytesPerSecond() != 100_000 {
		t.Fatalf("then the IF_AVAILABLE one is degraded to what fits: %+v", host.changes[1])
	}
	if _, err := q.UpdateLink(context.Background(), "downlink", 1); err != provider.ErrUnknownLink {
		t.Fatalf("unknown link: %v", err)
	}
}

func TestARefusedRenegotiationKeepsTheReservation(t *testing.T) {
	q, _ := newQuota(t)
	first := ask(t, q, "calls/a", needed, cl(500_000), be())
	d, _ := q.Renegotiate(context.Background(), provider.Request{Call: "calls/a", Level: needed, QoS: &callqosv1.QosSpec{Sending: cl(900_000), Receiving: be()}, Current: first.Granted})
	if d.Refusal == nil {
		t.Fatal("900,000 B/s is over the quota")
	}
	links, _ := q.ListLinks(context.Background())
	if links[0].GetSendingReservedBytesPerSecond() != 500_000 {
		t.Fatalf("the reservation changed: %v", links[0])
	}
	d, _ = q.Renegotiate(context.Background(), provider.Request{Call: "calls/a", Level: needed, QoS: &callqosv1.QosSpec{Sending: cl(800_000), Receiving: be()}, Current: first.Granted})
	if d.Granted == nil {
		t.Fatalf("its own 500,000 counts as free: %+v", d.Refusal)
	}
}

func TestRestoreRetakesAndShedsWhatNoLongerFits(t *testing.T) {
	q, _ := newQuota(t)
	changes, err := q.Restore(context.Background(), []provider.Held{
		{Call: "calls/a", Level: needed, QoS: &callqosv1.QosSpec{Sending: cl(600_000), Receiving: be()}},
		{Call: "calls/b", Level: needed, QoS: &callqosv1.QosSpec{Sending: cl(600_000), Receiving: be()}},
	})
	if err != nil || len(changes) != 1 || changes[0].Call != "calls/b" {
		t.Fatalf("b no longer fits beside a: %+v %v", changes, err)
	}
}
