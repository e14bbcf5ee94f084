package provider_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/callqos/callqos/clients/go/callqos"
	callqosv1 "github.com/callqos/callqos/clients/go/gen/callqos/v1"
	"github.com/callqos/callqos/clients/go/internal/testserver"
)

// A Go provider's network call, end to end: a real callqos server hosts the provider (dialled on
// its socket), an application opens a line, the provider offers a call to its address, and the
// application answers one offer (the provider admits it as Incoming) and rejects another (the
// provider is told its offer ended).
func TestAGoProvidersNetworkCallIsOfferedAnsweredAndRejected(t *testing.T) {
	if os.Getenv("CALLQOS_TARGET") != "" {
		t.Skip("needs a server of its own, hosting this provider")
	}
	p := newNetwork()
	_, kit, _, socket := serveAt(t, p)
	config := filepath.Join(t.TempDir(), "callqos.toml")
	toml := "default_provider = \"net\"\n[providers.net]\nplugin = \"remote\"\nendpoint = \"unix://" + socket + "\"\n"
	if err := os.WriteFile(config, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	server, err := testserver.StartWith("--config", config)
	if err != nil {
		t.Fatalf("starting a callqos server to host the provider: %v", err)
	}
	t.Cleanup(func() { server.Stop() })
	bob, err := callqos.New(server.Addr, callqos.WithPrincipal("bob"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bob.Close() })
	ctx := testContext(t)
	line, err := bob.CreateLine(ctx, &callqosv1.CreateLineRequest{Line: &callqosv1.Line{Address: "sip:bob@example.test"}})
	if err != nil {
		t.Fatal(err)
	}
	offer := anOffer()
	offer.Destination = line.GetAddress()
	name, err := kit.OfferCall(ctx, offer)
	if err != nil || name == "" {
		t.Fatalf("OfferCall: %q, %v", name, err)
	}
	offered, err := bob.GetCall(ctx, name)
	if err != nil || offered.GetState() != callqosv1.Call_STATE_OFFERING || offered.GetCallerId() != "tel:+15550100" {
		t.Fatalf("the offered call: %v, %v", offered, err)
	}
	answered, err := bob.AnswerCall(ctx, &callqosv1.AnswerCallRequest{Name: name})
	if err != nil || answered.GetState() != callqosv1.Call_STATE_CONNECTED {
		t.Fatalf("AnswerCall: %v, %v", answered, err)
	}
	p.mu.Lock()
	incoming := append([]bool(nil), p.incoming...)
	p.mu.Unlock()
	if len(incoming) != 1 || !incoming[0] {
		t.Fatalf("admitted with Incoming %v, want [true]", incoming)
	}
	if _, held := p.holds()[name]; !held {
		t.Fatalf("the provider holds %v, not the answered %s", p.holds(), name)
	}
	rejected, err := kit.OfferCall(ctx, offer)
	if err != nil || rejected == "" {
		t.Fatalf("OfferCall: %q, %v", rejected, err)
	}
	if _, err := bob.RejectCall(ctx, rejected); err != nil {
		t.Fatal(err)
	}
	want := rejected + " DISCONNECT_REASON_REJECTED"
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		p.mu.Lock()
		ended := append([]string(nil), p.ended...)
		p.mu.Unlock()
		if len(ended) == 1 && ended[0] == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ended offers %v, want [%s]", ended, want)
		}
	}
	nobody := anOffer()
	nobody.Destination = "sip:nobody@example.test"
	if call, err := kit.OfferCall(ctx, nobody); call != "" || err != nil {
		t.Fatalf("an offer to an address without a line: %q, %v", call, err)
	}
	if _, err := bob.DropCall(context.Background(), name); err != nil {
		t.Fatal(err)
	}
}
