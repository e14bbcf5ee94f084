package callqos

import (
	"context"
	"errors"
	"io"
	"iter"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	callqosv1 "github.com/callqos/callqos/clients/go/gen/callqos/v1"
)

// DefaultMaxReconnects is how many reconnects in a row, with no event in between, a Watcher
// makes before it gives up.
const DefaultMaxReconnects = 10

// A Watcher follows the WatchEvents stream across reconnects. It remembers the sequence
// number of the last event it delivered and, when the stream breaks with UNAVAILABLE (server
// restart or shutdown, a cut connection) or ends, reopens it with after_sequence set to that
// number, so no event is lost or delivered twice.
//
// Before the first event arrives, a watch that started without a cursor ("only new events")
// reconnects without one too: events committed while it was disconnected are then missed.
// Start from a cursor (after_sequence, e.g. one saved from LastSequence) where that matters.
type Watcher struct {
	client *Client
	req    *callqosv1.WatchEventsRequest
	last   uint64
	has    bool
	// MaxReconnects bounds the reconnects in a row without an event in between.
	MaxReconnects int
	// Backoff is the first wait before reconnecting; it doubles up to two seconds.
	Backoff time.Duration
}

// NewWatcher makes a Watcher for req (after_sequence, call and types are honoured).
func (c *Client) NewWatcher(req *callqosv1.WatchEventsRequest) *Watcher {
	w := &Watcher{
		client: c, req: proto.Clone(req).(*callqosv1.WatchEventsRequest),
		MaxReconnects: DefaultMaxReconnects, Backoff: 50 * time.Millisecond,
	}
	if req.AfterSequence != nil {
		w.last, w.has = req.GetAfterSequence(), true
	}
	return w
}

// Watch is NewWatcher(req).Events(ctx): the events matching req, in sequence order, resumed
// across reconnects.
//
//	for ev, err := range client.Watch(ctx, &callqosv1.WatchEventsRequest{AfterSequence: proto.Uint64(0)}) {
//		if err != nil { return err }
//		fmt.Println(ev.GetSequence(), ev.GetType())
//	}
func (c *Client) Watch(ctx context.Context, req *callqosv1.WatchEventsRequest) iter.Seq2[*callqosv1.QosEvent, error] {
	return c.NewWatcher(req).Events(ctx)
}

// LastSequence is the sequence number of the last event delivered (or the starting cursor),
// and false when there is none yet. Save it to resume a later watch from the same place.
func (w *Watcher) LastSequence() (uint64, bool) { return w.last, w.has }

// errStopped says the consumer stopped ranging over the events.
var errStopped = errors.New("stopped")

// Events yields each event once, in sequence order. The sequence ends when ctx is done
// (with no error), when the loop stops, or with one final error that reconnecting cannot fix
// (e.g. *Error with reason CURSOR_EXPIRED) or after MaxReconnects failed reconnects.
func (w *Watcher) Events(ctx context.Context) iter.Seq2[*callqosv1.QosEvent, error] {
	return func(yield func(*callqosv1.QosEvent, error) bool) {
		failures := 0
		wait := w.Backoff
		for {
			err := w.stream(ctx, yield, &failures)
			if errors.Is(err, errStopped) || ctx.Err() != nil {
				return
			}
			if !reconnectable(err) || failures >= w.MaxReconnects {
				yield(nil, decodeError(err))
				return
			}
			if failures == 0 {
				wait = w.Backoff
			}
			failures++
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			wait = min(2*wait, 2*time.Second)
		}
	}
}

// stream runs one WatchEvents stream until it fails or the consumer stops.
func (w *Watcher) stream(ctx context.Context, yield func(*callqosv1.QosEvent, error) bool, failures *int) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ctx, _ = w.client.outgoing(ctx, false)
	req := proto.Clone(w.req).(*callqosv1.WatchEventsRequest)
	if w.has {
		req.AfterSequence = proto.Uint64(w.last)
	}
	s, err := w.client.api.WatchEvents(ctx, req)
	if err != nil {
		return err
	}
	for {
		resp, err := s.Recv()
		if err != nil {
			return err
		}
		ev := resp.GetEvent()
		if w.has && ev.GetSequence() <= w.last {
			continue // already delivered before a reconnect
		}
		w.last, w.has = ev.GetSequence(), true
		*failures = 0
		if !yield(ev, nil) {
			return errStopped
		}
	}
}

// reconnectable: the stream ended, or broke in a way a new stream may not.
func reconnectable(err error) bool {
	return errors.Is(err, io.EOF) || status.Code(err) == codes.Unavailable
}
