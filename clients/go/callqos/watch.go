package callqos

import (
	"context"
	"errors"
	"io"
	"iter"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	callqosv1 "github.com/callqos/callqos/clients/go/gen/callqos/v1"
)

// ResumePolicy is how a Watcher reopens a broken WatchEvents stream. All four callqos clients
// follow the same rule, whose defaults (DefaultResumePolicy) are the watchResume part of
// clients/service_config.json: reopen after a failure with one of ResumableCodes, or when the
// server ends the stream, after the last sequence delivered; wait a full-jitter exponential
// backoff between attempts; give up with the last error once failures have gone on for
// GiveUpAfter. Any other error ends the watch at once.
type ResumePolicy struct {
	// InitialBackoff is the most the first wait can be; each failure multiplies the bound by
	// Multiplier, up to MaxBackoff. The wait itself is uniformly random below the bound.
	InitialBackoff, MaxBackoff time.Duration
	Multiplier                 float64
	// HealthyAfter: a stream that stayed open this long before failing counts as having
	// worked (a quiet stream delivers no event to prove it), so the backoff starts afresh.
	HealthyAfter time.Duration
	// GiveUpAfter bounds a run of consecutive failures; 0 retries for ever.
	GiveUpAfter time.Duration
	// ResumableCodes are the codes after which reopening may help. A watch only reads, so
	// reopening can never do harm.
	ResumableCodes []codes.Code
}

// DefaultResumePolicy is the resume rule in clients/service_config.json.
func DefaultResumePolicy() ResumePolicy {
	p := defaultResume
	p.ResumableCodes = slices.Clone(p.ResumableCodes)
	return p
}

// A Watcher follows the WatchEvents stream across reconnects. It remembers the sequence
// number of the last event it delivered and, when the stream breaks with a resumable code
// (server restart or shutdown, a cut connection) or ends, reopens it with after_sequence set
// to that number, so no event is lost or delivered twice.
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
	// Resume is how the Watcher reconnects; DefaultResumePolicy unless changed before Events.
	Resume ResumePolicy
}

// NewWatcher makes a Watcher for req (after_sequence, call and types are honoured).
func (c *Client) NewWatcher(req *callqosv1.WatchEventsRequest) *Watcher {
	w := &Watcher{
		client: c, req: proto.Clone(req).(*callqosv1.WatchEventsRequest),
		Resume: DefaultResumePolicy(),
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

// errStreamEnded stands for a stream the server ended with OK: a watch never ends by itself,
// so this is a server going away, and is resumed as UNAVAILABLE is.
var errStreamEnded = status.Error(codes.Unavailable, "the server ended the watch stream")

// Events yields each event once, in sequence order. The sequence ends when ctx is done
// (with no error), when the loop stops, or with one final error: one reconnecting cannot fix
// (e.g. *Error with reason CURSOR_EXPIRED), or the last one once failures have gone on for
// Resume.GiveUpAfter.
func (w *Watcher) Events(ctx context.Context) iter.Seq2[*callqosv1.QosEvent, error] {
	return func(yield func(*callqosv1.QosEvent, error) bool) {
		p := w.Resume
		bound := p.InitialBackoff
		var failingSince time.Time
		for {
			opened := time.Now()
			err := w.stream(ctx, yield, func() { failingSince, bound = time.Time{}, p.InitialBackoff })
			if errors.Is(err, errStopped) || ctx.Err() != nil {
				return
			}
			if errors.Is(err, io.EOF) {
				err = errStreamEnded
			}
			if !slices.Contains(p.ResumableCodes, status.Code(err)) {
				yield(nil, decodeError(err))
				return
			}
			now := time.Now()
			if now.Sub(opened) >= p.HealthyAfter {
				failingSince, bound = time.Time{}, p.InitialBackoff
			}
			if failingSince.IsZero() {
				failingSince = now
			}
			if p.GiveUpAfter > 0 && now.Sub(failingSince) > p.GiveUpAfter {
				yield(nil, decodeError(err))
				return
			}
			// Full jitter keeps a crowd of watchers from reconnecting in lockstep.
			wait := time.Duration(rand.Int64N(int64(bound) + 1))
			bound = min(time.Duration(float64(bound)*p.Multiplier), p.MaxBackoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
	}
}

// stream runs one WatchEvents stream until it fails or the consumer stops.
// delivered is called after each new event (it ends a run of failures).
func (w *Watcher) stream(ctx context.Context, yield func(*callqosv1.QosEvent, error) bool, delivered func()) error {
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
		delivered()
		if !yield(ev, nil) {
			return errStopped
		}
	}
}
