package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/callqos/callqos/clients/go/internal/testserver"
)

// TestQuickstart runs the README's example against a real server.
func TestQuickstart(t *testing.T) {
	srv, err := testserver.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out strings.Builder
	if err := run(ctx, srv.Addr, &out); err != nil {
		t.Fatalf("%v\noutput so far:\n%s", err, out.String())
	}
	t.Log("\n" + out.String())
	for _, want := range []string{"refused: QOS_UNAVAILABLE", "connected:", "renegotiated: 500000",
		"QOS_EVENT_TYPE_QOS_GRANTED", "QOS_EVENT_TYPE_QOS_CHANGED", "QOS_EVENT_TYPE_CALL_DISCONNECTED"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
}
