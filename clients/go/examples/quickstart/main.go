// Command quickstart walks through the callqos API against a running server: it asks for more
// QoS than the link has, is refused with a counter-offer, takes the counter-offer, renegotiates
// down, drops the call, and replays the call's events from the event log.
//
//	go run ./examples/quickstart                      # CALLQOS_TARGET, else CALLQOS_LISTEN, else 127.0.0.1:50051
//	go run ./examples/quickstart -addr 127.0.0.1:50051
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/callqos/callqos/clients/go/callqos"
	callqosv1 "github.com/callqos/callqos/clients/go/gen/callqos/v1"
)

func main() {
	addr := flag.String("addr", callqos.DefaultTarget(), "callqos server host:port (default: $CALLQOS_TARGET, else $CALLQOS_LISTEN's address)")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := run(ctx, *addr, os.Stdout); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, addr string, out io.Writer) error {
	client, err := callqos.New(addr, callqos.WithPrincipal("quickstart"))
	if err != nil {
		return err
	}
	defer client.Close()

	// 1. Ask for 2,000,000 bytes/s: more than the reference link's 1,250,000, so at NEEDED the
	// call is refused with RESOURCE_EXHAUSTED / QOS_UNAVAILABLE and a counter-offer.
	want := &callqosv1.Call{
		Destination:  "sip:alice@example.com",
		ServiceLevel: callqosv1.ServiceLevel_SERVICE_LEVEL_NEEDED,
		RequestedQos: callqos.ControlledLoad(2_000_000),
	}
	_, err = client.CreateCall(ctx, &callqosv1.CreateCallRequest{Call: want})
	refusal, ok := callqos.IsQosUnavailable(err)
	if !ok {
		return fmt.Errorf("expected a QoS refusal, got %v", err)
	}
	fmt.Fprintf(out, "refused: %s (%s); counter-offer: %d bytes/s\n", refusal.Reason(),
		refusal.Call(), refusal.CounterOffer().GetSending().GetTokenRateBytesPerSecond())

	// 2. Take the counter-offer.
	want.RequestedQos = refusal.CounterOffer()
	call, err := client.CreateCall(ctx, &callqosv1.CreateCallRequest{Call: want})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "connected: %s at %d bytes/s\n", call.GetName(),
		call.GetGrantedQos().GetSending().GetTokenRateBytesPerSecond())

	// 3. Renegotiate down to 500,000 bytes/s.
	call, err = client.RenegotiateCall(ctx, &callqosv1.RenegotiateCallRequest{
		Name: call.GetName(), Qos: callqos.ControlledLoad(500_000), Etag: call.GetEtag(),
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "renegotiated: %d bytes/s\n", call.GetGrantedQos().GetSending().GetTokenRateBytesPerSecond())

	// 4. Drop it.
	if _, err := client.DropCall(ctx, call.GetName()); err != nil {
		return err
	}
	fmt.Fprintf(out, "dropped: %s\n", call.GetName())

	// 5. Replay the call's events from the start of the log (after_sequence 0) until it
	// disconnected. A Watcher resumes from the last sequence if the stream breaks meanwhile.
	watchCtx, stop := context.WithCancel(ctx)
	defer stop()
	for ev, err := range client.Watch(watchCtx, &callqosv1.WatchEventsRequest{
		AfterSequence: proto.Uint64(0), Call: call.GetName(),
	}) {
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "event %d: %s %d bytes/s\n", ev.GetSequence(), ev.GetType(),
			ev.GetCurrentQos().GetSending().GetTokenRateBytesPerSecond())
		if ev.GetType() == callqosv1.QosEventType_QOS_EVENT_TYPE_CALL_DISCONNECTED {
			return nil
		}
	}
	return errors.New("event stream ended before CALL_DISCONNECTED")
}
