package provider

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	providerv1 "github.com/callqos/callqos/clients/go/gen/callqos/provider/v1"
)

// ErrInvalidOffer is wrapped by the error Host.OfferCall returns for an offer the server refuses
// as invalid (or when the provider does not advertise Capabilities.IncomingCalls).
var ErrInvalidOffer = errors.New("invalid offer")

// OfferWait is how long Host.OfferCall waits for the server's answer to an offer: a server away
// that long is not coming back soon, and the network is told the callee is not available.
var OfferWait = 10 * time.Second

// offers are the calls the provider offered that the server has not answered yet, kept (and
// sent again to a server that reconnects) until it does. Its fields are guarded by Server.mu.
type offers struct {
	sequence uint64 // the last offer_id given
	waiting  map[uint64]*waitingOffer
	grew     chan struct{} // closed (and replaced) by each new offer, and by each new stream
	streams  uint64        // WatchOffers streams opened: the newest takes over
	ended    map[string]bool
	order    []string // ended calls, oldest first
}

type waitingOffer struct {
	offer    *providerv1.IncomingOffer
	answered chan *providerv1.WatchOffersRequest // buffered: the first answer
}

func (o *offers) init() {
	o.waiting, o.grew, o.ended = map[uint64]*waitingOffer{}, make(chan struct{}), map[string]bool{}
}

func (o *offers) wake() {
	close(o.grew)
	o.grew = make(chan struct{})
}

// OfferCall implements Host for the wrapped provider: the offer goes to the server on
// WatchOffers and is answered as the server answers it.
func (s *Server) OfferCall(ctx context.Context, offer Offer) (string, error) {
	if !s.info.Capabilities.GetIncomingCalls() {
		return "", fmt.Errorf("%w: this provider does not advertise incoming_calls", ErrInvalidOffer)
	}
	w := &waitingOffer{
		offer: &providerv1.IncomingOffer{
			Destination: offer.Destination, CallerId: offer.CallerID, ServiceLevel: offer.Level, CallerQos: offer.CallerQoS,
		},
		answered: make(chan *providerv1.WatchOffersRequest, 1),
	}
	s.mu.Lock()
	s.offers.sequence++
	id := s.offers.sequence
	s.offers.waiting[id] = w
	s.offers.wake()
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.offers.waiting, id)
		s.mu.Unlock()
	}()
	timer := time.NewTimer(OfferWait)
	defer timer.Stop()
	select {
	case answer := <-w.answered:
		switch outcome := answer.GetOutcome().(type) {
		case *providerv1.WatchOffersRequest_Call:
			return outcome.Call, nil
		case *providerv1.WatchOffersRequest_Invalid:
			return "", fmt.Errorf("%w: %s", ErrInvalidOffer, outcome.Invalid)
		}
		return "", nil // not offered: no line open for the address
	case <-ctx.Done():
		return "", nil
	case <-timer.C:
		s.log.Warn("no server answered the offer of a call: not offered", "destination", offer.Destination)
		return "", nil
	}
}

// WatchOffers sends the server every offer it has not answered (again, after a reconnection:
// the server answers a repeat with its first answer), then each new one, and resolves each as
// the server answers it. A newer stream (the server reconnected) takes over from this one.
func (s *Server) WatchOffers(stream grpc.BidiStreamingServer[providerv1.WatchOffersRequest, providerv1.WatchOffersResponse]) error {
	if !s.info.Capabilities.GetIncomingCalls() {
		return status.Error(codes.Unimplemented, "this provider does not offer calls")
	}
	s.mu.Lock()
	s.offers.streams++
	mine := s.offers.streams
	s.offers.wake() // an older stream notices it is superseded
	s.mu.Unlock()
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		for {
			answer, err := stream.Recv()
			if err != nil {
				return
			}
			s.mu.Lock()
			if w, ok := s.offers.waiting[answer.GetOfferId()]; ok {
				select {
				case w.answered <- answer:
				default: // answered already
				}
			}
			s.mu.Unlock()
		}
	}()
	sent := map[uint64]bool{}
	for {
		s.mu.Lock()
		if s.offers.streams != mine {
			s.mu.Unlock()
			return nil
		}
		grew := s.offers.grew
		var pending []uint64
		for id := range s.offers.waiting {
			if !sent[id] {
				pending = append(pending, id)
			}
		}
		sort.Slice(pending, func(a, b int) bool { return pending[a] < pending[b] })
		messages := make([]*providerv1.WatchOffersResponse, 0, len(pending))
		for _, id := range pending {
			messages = append(messages, &providerv1.WatchOffersResponse{OfferId: id, Offer: s.offers.waiting[id].offer})
		}
		for id := range sent {
			if _, ok := s.offers.waiting[id]; !ok {
				delete(sent, id)
			}
		}
		s.mu.Unlock()
		for _, message := range messages {
			if err := stream.Send(message); err != nil {
				return nil
			}
			sent[message.GetOfferId()] = true
		}
		select {
		case <-grew:
		case <-closed:
			return nil
		case <-stream.Context().Done():
			return nil
		}
	}
}

// OfferEnded tells the provider that a call it offered ended unanswered; a repeat is not told
// again.
func (s *Server) OfferEnded(ctx context.Context, req *providerv1.OfferEndedRequest) (*providerv1.OfferEndedResponse, error) {
	ender, ok := s.provider.(OfferEnder)
	if !s.info.Capabilities.GetIncomingCalls() {
		return nil, status.Error(codes.Unimplemented, "this provider does not offer calls")
	}
	s.mu.Lock()
	told := s.offers.ended[req.GetCall()]
	s.mu.Unlock()
	if told || !ok {
		return &providerv1.OfferEndedResponse{}, nil
	}
	if err := ender.OfferEnded(ctx, req.GetCall(), req.GetReason()); err != nil {
		return nil, failure("OfferEnded", err)
	}
	s.mu.Lock()
	if !s.offers.ended[req.GetCall()] {
		s.offers.ended[req.GetCall()] = true
		s.offers.order = append(s.offers.order, req.GetCall())
		for len(s.offers.order) > answersRemembered {
			delete(s.offers.ended, s.offers.order[0])
			s.offers.order = s.offers.order[1:]
		}
	}
	s.mu.Unlock()
	return &providerv1.OfferEndedResponse{}, nil
}
