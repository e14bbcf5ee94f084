package callqos_test

import (
	"context"
	"errors"
	"os"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/callqos/callqos/clients/go/callqos"
	callqosv1 "github.com/callqos/callqos/clients/go/gen/callqos/v1"
	"github.com/callqos/callqos/clients/go/internal/testserver"
)

// TestTLSAndTokens runs against a server of its own that requires mTLS and accepts bearer
// tokens, with certificates and tokens made for it by the server's test kit.
func TestTLSAndTokens(t *testing.T) {
	if os.Getenv("CALLQOS_TARGET") != "" {
		t.Skip("CALLQOS_TARGET: no server of our own to start")
	}
	srv, err := testserver.StartSecure()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Stop() })
	f := srv.Files
	mtls, err := callqos.TLSConfig(f["ca"], f["client_cert"], f["client_key"])
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	create := func(c *callqos.Client) (*callqosv1.Call, error) {
		return c.CreateCall(ctx, &callqosv1.CreateCallRequest{Call: &callqosv1.Call{
			Destination: "sip:bob@example.com", RequestedQos: callqos.ControlledLoad(1000),
		}})
	}

	// A refreshing token source: the file is re-read when it changes.
	tokenFile := t.TempDir() + "/token"
	copyFile(t, f["alice_token"], tokenFile)
	c, err := callqos.New(srv.Addr, callqos.WithTLS(mtls), callqos.WithTokenSource(callqos.FileToken(tokenFile)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	call, err := create(c)
	if err != nil {
		t.Fatal(err)
	}
	if call.GetOwner() != "alice" || call.GetTenant() != "acme" {
		t.Fatalf("owner %q tenant %q, want alice of acme", call.GetOwner(), call.GetTenant())
	}
	copyFile(t, f["bob_token"], tokenFile)
	if _, err := c.DropCall(ctx, call.GetName()); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("bob dropping alice's call: %v, want PERMISSION_DENIED (NOT_OWNER)", err)
	}

	// The certificate alone: the principal is its SPIFFE ID.
	byCert, err := callqos.New(srv.Addr, callqos.WithTLS(mtls))
	if err != nil {
		t.Fatal(err)
	}
	defer byCert.Close()
	if call, err := create(byCert); err != nil || call.GetOwner() != "spiffe://callqos.test/client" {
		t.Fatalf("by certificate: %v, %v", call.GetOwner(), err)
	}

	// A bad token is UNAUTHENTICATED, with the reason.
	bad, _ := callqos.New(srv.Addr, callqos.WithTLS(mtls), callqos.WithTokenSource(callqos.StaticToken("not-a-jwt")))
	defer bad.Close()
	_, err = create(bad)
	var e *callqos.Error
	if !errors.As(err, &e) || e.Code() != codes.Unauthenticated || e.Reason() != "UNAUTHENTICATED" {
		t.Fatalf("bad token: %v", err)
	}

	// TLS without a client certificate does not get through the handshake.
	serverOnly, _ := callqos.TLSConfig(f["ca"], "", "")
	noCert, _ := callqos.New(srv.Addr, callqos.WithTLS(serverOnly))
	defer noCert.Close()
	short, cancel := context.WithTimeout(ctx, 3e9)
	defer cancel()
	if _, err := noCert.GetCall(short, call.GetName()); status.Code(err) != codes.Unavailable {
		t.Fatalf("no client certificate: %v, want UNAVAILABLE", err)
	}

	// A token never goes in the clear beyond loopback.
	if _, err := callqos.New("callqos.example.com:50051", callqos.WithTokenSource(callqos.StaticToken("t"))); err == nil {
		t.Fatal("a token over plaintext to a remote target was allowed")
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to+".tmp", data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(to+".tmp", to); err != nil {
		t.Fatal(err)
	}
}
