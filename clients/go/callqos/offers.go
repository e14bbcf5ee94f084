package callqos

import (
	"context"
	"iter"
	"strconv"

	"google.golang.org/protobuf/proto"

	callqosv1 "github.com/callqos/callqos/clients/go/gen/callqos/v1"
)

// An OfferWatcher follows the calls offered on one line: each as a *callqosv1.Call still
// OFFERING, to answer (AnswerCall) or reject (RejectCall). It is a Watcher of the line's
// CALL_OFFERED events that reads each call; a call that stopped ringing before it was read is
// skipped. Started without a cursor it first reads where a watch "from now" starts, then lists
// the calls already ringing on the line (oldest first), then follows new offers from that point,
// so none is missed and none yielded twice. It resumes across reconnects and restarts as a
// Watcher does.
type OfferWatcher struct {
	client  *Client
	line    string
	after   *uint64
	watcher *Watcher
	// Resume is how the event watch reconnects; DefaultResumePolicy unless changed before Calls.
	Resume ResumePolicy
}

// NewOfferWatcher follows the calls offered on line ("lines/{line}"): those ringing now, then
// new ones; or, with afterSequence, the offers after that event sequence (a LastSequence saved
// earlier).
func (c *Client) NewOfferWatcher(line string, afterSequence *uint64) *OfferWatcher {
	return &OfferWatcher{client: c, line: line, after: afterSequence, Resume: DefaultResumePolicy()}
}

// Offers is NewOfferWatcher(line, nil).Calls(ctx).
//
//	for call, err := range client.Offers(ctx, "lines/bob") {
//		if err != nil { return err }
//		client.AnswerCall(ctx, &callqosv1.AnswerCallRequest{Name: call.GetName()})
//	}
func (c *Client) Offers(ctx context.Context, line string) iter.Seq2[*callqosv1.Call, error] {
	return c.NewOfferWatcher(line, nil).Calls(ctx)
}

// LastSequence is the sequence of the last offer event read (false before the first): resume
// with NewOfferWatcher(line, &seq).
func (o *OfferWatcher) LastSequence() (uint64, bool) {
	if o.watcher == nil {
		if o.after != nil {
			return *o.after, true
		}
		return 0, false
	}
	return o.watcher.LastSequence()
}

// Calls yields each offered call once, while it is still OFFERING. It ends as Watcher.Events
// does: when ctx is done, when the loop stops, or with one final error.
func (o *OfferWatcher) Calls(ctx context.Context) iter.Seq2[*callqosv1.Call, error] {
	return func(yield func(*callqosv1.Call, error) bool) {
		listed := map[string]bool{}
		after := o.after
		if after == nil {
			start, err := o.startSequence(ctx)
			if err != nil {
				yield(nil, err)
				return
			}
			// The cursor from here on: the calls listed next were offered at or before it.
			o.after = &start
			ringing, err := o.ringing(ctx)
			if err != nil {
				yield(nil, err)
				return
			}
			for _, call := range ringing {
				listed[call.GetName()] = true
				if !yield(call, nil) {
					return
				}
			}
			after = o.after
		}
		o.watcher = o.client.NewWatcher(&callqosv1.WatchEventsRequest{
			AfterSequence: proto.Uint64(*after),
			Line:          o.line,
			Types:         []callqosv1.QosEventType{callqosv1.QosEventType_QOS_EVENT_TYPE_CALL_OFFERED},
		})
		o.watcher.Resume = o.Resume
		for ev, err := range o.watcher.Events(ctx) {
			if err != nil {
				yield(nil, err)
				return
			}
			if listed[ev.GetCall()] {
				delete(listed, ev.GetCall()) // listed already; an offer has one such event
				continue
			}
			call, err := o.client.GetCall(ctx, ev.GetCall())
			if err != nil {
				yield(nil, err)
				return
			}
			if call.GetState() == callqosv1.Call_STATE_OFFERING && !yield(call, nil) {
				return
			}
		}
	}
}

// startSequence is where a watch of the line "from now" starts (its x-callqos-start-sequence).
func (o *OfferWatcher) startSequence(ctx context.Context) (uint64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ctx, _ = o.client.outgoing(ctx, false)
	s, err := o.client.api.WatchEvents(ctx, &callqosv1.WatchEventsRequest{Line: o.line})
	if err != nil {
		return 0, decodeError(err)
	}
	md, err := s.Header()
	if err != nil {
		return 0, decodeError(err)
	}
	if v := md.Get(StartSequenceHeader); len(v) == 1 {
		if seq, err := strconv.ParseUint(v[0], 10, 64); err == nil {
			return seq, nil
		}
	}
	return 0, decodeError(errStreamEnded)
}

// ringing lists the calls offering on the line now, oldest first.
func (o *OfferWatcher) ringing(ctx context.Context) ([]*callqosv1.Call, error) {
	var calls []*callqosv1.Call
	req := &callqosv1.ListCallsRequest{Filter: `state = OFFERING AND line = "` + o.line + `"`}
	for {
		page, err := o.client.ListCalls(ctx, req)
		if err != nil {
			return nil, err
		}
		calls = append(calls, page.GetCalls()...)
		if page.GetNextPageToken() == "" {
			break
		}
		req.PageToken = page.GetNextPageToken()
	}
	for i, j := 0, len(calls)-1; i < j; i, j = i+1, j-1 {
		calls[i], calls[j] = calls[j], calls[i]
	}
	return calls, nil
}
