package callqos

import (
	"context"
	"errors"
	"io"
	"iter"
	"strconv"
	"sync"
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
// A watch that starts without a cursor ("only new events") takes the cursor the server sends
// in the x-callqos-start-sequence header, so it resumes without loss even when the stream
// breaks before its first event. (From a server that sends no such header, it would
// reconnect without a cursor and miss what happened while it was down.)
//
// A Watcher is used by one goroutine at a time; LastSequence may be called from any.
type Watcher struct {
	client *Client
	req    *callqosv1.WatchEventsRequest
	mu     sync.Mutex
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
func (w *Watcher) LastSequence() (uint64, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last, w.has
}

func (w *Watcher) setLast(seq uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.last, w.has = seq, true
}

// StartSequenceHeader is the WatchEvents response header that holds the sequence the stream
// starts after.
const StartSequenceHeader = "x-callqos-start-sequence"

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
	last, has := w.LastSequence()
	if has {
		req.AfterSequence = proto.Uint64(last)
	}
	s, err := w.client.api.WatchEvents(ctx, req)
	if err != nil {
		return err
	}
	if !has {
		md, err := s.Header() // waits for the server to accept the stream
		if err != nil {
			return err
		}
		if v := md.Get(StartSequenceHeader); len(v) == 1 {
			if seq, err := strconv.ParseUint(v[0], 10, 64); err == nil {
				w.setLast(seq)
				last, has = seq, true
			}
		}
	}
	for {
		resp, err := s.Recv()
		if err != nil {
			return err
		}
		ev := resp.GetEvent()
		if has && ev.GetSequence() <= last {
			continue // already delivered before a reconnect
		}
		last, has = ev.GetSequence(), true
		w.setLast(last)
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
