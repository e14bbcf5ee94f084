package provider

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	providerv1 "github.com/callqos/callqos/clients/go/gen/callqos/provider/v1"
	callqosv1 "github.com/callqos/callqos/clients/go/gen/callqos/v1"
)

// ErrUnknownLink is what LinkAdmin.UpdateLink returns for a link the provider does not have.
var ErrUnknownLink = errors.New("no such link")

// answersRemembered bounds the answers kept for repeated requests: a server repeats a request
// only while it is deciding it.
const answersRemembered = 4096

// held is a call the provider holds, as the kit's ledger knows it.
type held struct {
	destination string
	level       callqosv1.ServiceLevel
	qos         *callqosv1.QosSpec
}

// deciding is an Admit or Renegotiate of a call, from the moment the kit takes its request
// (read off the Decide stream, in the stream's order, or its RPC started) until its outcome is in
// the ledger. A Release of the call that comes meanwhile wins: the decision grants nothing.
type deciding struct {
	call     string
	cancel   context.CancelFunc // set once the provider runs it
	done     chan struct{}      // closed when it has finished, whatever its outcome
	released bool               // a Release came first: its grant must not stand
	finished bool
}

// claimKey carries, in a request's context, the deciding entry the Decide stream claimed for it.
type claimKey struct{}

// claim registers an Admit or Renegotiate read off the Decide stream as deciding its call, before
// any request read after it is answered: the host writes the Release of an Admit it gave up on
// after that Admit, and the kit answers them concurrently, so without the claim the Release could
// run first, find nothing, and let the Admit reserve for a call the host has already failed. Nil
// for a Release, or when another decision of the call holds it (the request then says so).
func (s *Server) claim(request *providerv1.DecideRequest) *deciding {
	var call string
	switch r := request.GetRequest().(type) {
	case *providerv1.DecideRequest_Admit:
		call = r.Admit.GetCall()
	case *providerv1.DecideRequest_Renegotiate:
		call = r.Renegotiate.GetCall()
	default:
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.deciding[call]; ok {
		return nil
	}
	d := &deciding{call: call, done: make(chan struct{})}
	s.deciding[call] = d
	return d
}

// claimed is the entry claimed for the request ctx belongs to, if any.
func claimed(ctx context.Context) *deciding {
	d, _ := ctx.Value(claimKey{}).(*deciding)
	return d
}

// unclaim ends a claimed request that never reached its decision (it was answered before: a
// repeated request, a refusal of its provider-specific bytes, ...).
func (s *Server) unclaim(d *deciding) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.finishLocked(d)
}

// finishLocked ends d (once) and frees its call for the next decision; s.mu is held.
func (s *Server) finishLocked(d *deciding) {
	if d.finished {
		return
	}
	d.finished = true
	close(d.done)
	if s.deciding[d.call] == d {
		delete(s.deciding, d.call)
	}
}

// Server is the callqos.provider.v1 service around one Provider. Serve and Main make one; use
// NewServer to register it on a grpc.Server of your own.
type Server struct {
	providerv1.UnimplementedProviderServiceServer

	provider   Provider
	info       Info
	instanceID string
	log        *slog.Logger

	mu        sync.Mutex
	started   bool
	restoring sync.Mutex // one Restore at a time
	ledger    map[string]*held
	answers   map[string]proto.Message
	order     []string // answer keys, oldest first
	deciding  map[string]*deciding
	journal   journal
	offers    offers
}

// NewServer wraps p: it reads p.Info once, then calls p.Start with the server as the Host.
func NewServer(p Provider, logger *slog.Logger) (*Server, error) {
	if logger == nil {
		logger = slog.Default()
	}
	s := &Server{
		provider:   p,
		info:       p.Info(),
		instanceID: newID(),
		log:        logger,
		ledger:     map[string]*held{},
		answers:    map[string]proto.Message{},
		deciding:   map[string]*deciding{},
	}
	s.journal.init()
	s.offers.init()
	if s.info.Capabilities == nil {
		return nil, errors.New("provider: Info().Capabilities is nil: say what the provider can do")
	}
	if err := p.Start(s); err != nil {
		return nil, fmt.Errorf("provider: Start: %w", err)
	}
	return s, nil
}

// InstanceID is this process's instance id (GetProviderInfo): new in every process.
func (s *Server) InstanceID() string { return s.instanceID }

// ReportChange implements Host for the wrapped provider.
func (s *Server) ReportChange(change Change) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.note(change)
	s.journal.append(change)
}

// note applies a change to the ledger (s.mu held).
func (s *Server) note(change Change) {
	if change.QoS == nil {
		delete(s.ledger, change.Call)
	} else if h, ok := s.ledger[change.Call]; ok {
		h.qos = change.QoS
	}
}

// GetProviderInfo answers who the provider is.
func (s *Server) GetProviderInfo(ctx context.Context, req *providerv1.GetProviderInfoRequest) (*providerv1.GetProviderInfoResponse, error) {
	return &providerv1.GetProviderInfoResponse{
		DisplayName:   s.info.DisplayName,
		Description:   s.info.Description,
		VendorVersion: s.info.Version,
		Capabilities:  s.info.Capabilities,
		InstanceId:    s.instanceID,
		DecideStream:  true,
	}, nil
}

// Restore makes the calls the provider holds exactly the server's.
func (s *Server) Restore(ctx context.Context, req *providerv1.RestoreRequest) (*providerv1.RestoreResponse, error) {
	s.restoring.Lock()
	defer s.restoring.Unlock()
	listed := make([]Held, 0, len(req.GetCalls()))
	for _, c := range req.GetCalls() {
		listed = append(listed, Held{Call: c.GetCall(), Destination: c.GetDestination(), Level: c.GetServiceLevel(), QoS: c.GetQos()})
	}
	s.mu.Lock()
	first := !s.started
	s.mu.Unlock()
	if first {
		changes, err := s.provider.Restore(ctx, listed)
		if err != nil {
			return nil, failure("Restore", err)
		}
		s.mu.Lock()
		s.started = true
		for _, c := range listed {
			s.ledger[c.Call] = &held{c.Destination, c.Level, c.QoS}
		}
		for _, change := range changes {
			s.note(change)
		}
		s.mu.Unlock()
		return &providerv1.RestoreResponse{Changes: changeMessages(changes)}, nil
	}
	return s.restoreAgain(ctx, listed)
}

// restoreAgain: a server reconnected to this running provider. Release what it no longer holds,
// keep what both hold, tell it where they differ, re-take the rest.
func (s *Server) restoreAgain(ctx context.Context, listed []Held) (*providerv1.RestoreResponse, error) {
	wanted := map[string]bool{}
	for _, c := range listed {
		wanted[c.Call] = true
	}
	s.mu.Lock()
	var extra []string
	for call := range s.ledger {
		if !wanted[call] {
			extra = append(extra, call)
		}
	}
	s.mu.Unlock()
	sort.Strings(extra)
	for _, call := range extra {
		if err := s.release(ctx, call); err != nil {
			return nil, err
		}
	}
	var answers []*providerv1.Change
	var missing []Held
	s.mu.Lock()
	for _, c := range listed {
		if h, ok := s.ledger[c.Call]; ok {
			if !proto.Equal(h.qos, c.QoS) {
				answers = append(answers, changeMessage(Change{Call: c.Call, QoS: h.qos, Message: "QoS changed"}, 0))
			}
			continue
		}
		if latest := s.journal.latest(c.Call); latest != nil && latest.Qos == nil {
			dropped := proto.Clone(latest).(*providerv1.Change)
			dropped.Sequence = 0
			answers = append(answers, dropped)
			continue
		}
		missing = append(missing, c)
	}
	s.mu.Unlock()
	if len(missing) > 0 {
		changes, err := s.provider.Restore(ctx, missing)
		if err != nil {
			return nil, failure("Restore", err)
		}
		s.mu.Lock()
		for _, c := range missing {
			s.ledger[c.Call] = &held{c.Destination, c.Level, c.QoS}
		}
		for _, change := range changes {
			s.note(change)
		}
		s.mu.Unlock()
		answers = append(answers, changeMessages(changes)...)
	}
	return &providerv1.RestoreResponse{Changes: answers}, nil
}

// Admit decides a new call, once per (call, request_id).
func (s *Server) Admit(ctx context.Context, req *providerv1.AdmitRequest) (*providerv1.AdmitResponse, error) {
	key := req.GetCall() + "\x00" + req.GetRequestId()
	s.mu.Lock()
	if !s.started {
		s.mu.Unlock()
		return nil, status.Error(codes.FailedPrecondition, "not restored yet: the host sends Restore first")
	}
	if answer, ok := s.answers[key].(*providerv1.AdmitResponse); ok {
		s.mu.Unlock()
		return answer, nil
	}
	if _, ok := s.ledger[req.GetCall()]; ok {
		s.mu.Unlock()
		return nil, status.Errorf(codes.FailedPrecondition, "%s is held: release it first", req.GetCall())
	}
	if d, ok := s.deciding[req.GetCall()]; ok && d != claimed(ctx) {
		s.mu.Unlock()
		return nil, status.Errorf(codes.FailedPrecondition, "%s is being decided", req.GetCall())
	}
	s.mu.Unlock()
	if err := s.checkProviderSpecific(req.GetQos()); err != nil {
		return nil, err
	}
	request := Request{Call: req.GetCall(), Destination: req.GetDestination(), Level: req.GetServiceLevel(), QoS: req.GetQos(), Principal: req.GetPrincipal(), Incoming: req.GetIncoming()}
	decision, err := s.decide(ctx, req.GetCall(),
		func(ctx context.Context) (Decision, error) { return s.provider.Admit(ctx, request) },
		func(granted *callqosv1.QosSpec) {
			s.ledger[req.GetCall()] = &held{req.GetDestination(), req.GetServiceLevel(), granted}
		})
	if err != nil {
		return nil, err
	}
	answer := &providerv1.AdmitResponse{}
	if decision.Granted != nil {
		answer.Decision = &providerv1.AdmitResponse_Grant{Grant: &providerv1.Grant{Qos: decision.Granted}}
	} else {
		answer.Decision = &providerv1.AdmitResponse_Refusal{Refusal: refusalMessage(decision.Refusal)}
	}
	s.mu.Lock()
	s.remember(key, answer)
	s.mu.Unlock()
	return answer, nil
}

// Renegotiate decides a change of a held call, once per (call, request_id).
func (s *Server) Renegotiate(ctx context.Context, req *providerv1.RenegotiateRequest) (*providerv1.RenegotiateResponse, error) {
	renegotiator, ok := s.provider.(Renegotiator)
	if !ok || !s.info.Capabilities.GetRenegotiation() {
		return nil, status.Error(codes.Unimplemented, "this provider does not renegotiate")
	}
	key := req.GetCall() + "\x00" + req.GetRequestId()
	s.mu.Lock()
	if answer, ok := s.answers[key].(*providerv1.RenegotiateResponse); ok {
		s.mu.Unlock()
		return answer, nil
	}
	if _, ok := s.ledger[req.GetCall()]; !ok {
		s.mu.Unlock()
		return nil, status.Errorf(codes.NotFound, "%s is not held by this provider", req.GetCall())
	}
	s.mu.Unlock()
	if err := s.checkProviderSpecific(req.GetQos()); err != nil {
		return nil, err
	}
	request := Request{Call: req.GetCall(), Destination: req.GetDestination(), Level: req.GetServiceLevel(), QoS: req.GetQos(), Principal: req.GetPrincipal(), Current: req.GetCurrentQos()}
	decision, err := s.decide(ctx, req.GetCall(),
		func(ctx context.Context) (Decision, error) { return renegotiator.Renegotiate(ctx, request) },
		func(granted *callqosv1.QosSpec) {
			if h, ok := s.ledger[req.GetCall()]; ok {
				h.qos, h.level = granted, req.GetServiceLevel()
			}
		})
	if err != nil {
		return nil, err
	}
	answer := &providerv1.RenegotiateResponse{}
	if decision.Granted != nil {
		answer.Decision = &providerv1.RenegotiateResponse_Grant{Grant: &providerv1.Grant{Qos: decision.Granted}}
	} else {
		answer.Decision = &providerv1.RenegotiateResponse_Refusal{Refusal: refusalMessage(decision.Refusal)}
	}
	s.mu.Lock()
	s.remember(key, answer)
	s.mu.Unlock()
	return answer, nil
}

// decide runs one decision of the provider under the request's deadline, cancellable by a
// Release of the same call; a grant that stands is recorded (by `granted`, with s.mu held) in
// the same step that ends the decision, so that no Release finds the call neither deciding nor
// held.
func (s *Server) decide(ctx context.Context, call string, run func(context.Context) (Decision, error), granted func(*callqosv1.QosSpec)) (Decision, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.mu.Lock()
	d := claimed(ctx)
	if d == nil || s.deciding[call] != d { // an RPC, not a request claimed on the stream
		d = &deciding{call: call, done: make(chan struct{})}
		s.deciding[call] = d
	}
	d.cancel = cancel
	releasedFirst := d.released
	if releasedFirst {
		s.finishLocked(d)
	}
	s.mu.Unlock()
	if releasedFirst { // the host gave up on it and released the call before it started
		return Decision{}, status.Errorf(codes.Aborted, "%s was released before being decided", call)
	}
	decision, err := run(ctx)
	valid := err == nil && (decision.Granted == nil) != (decision.Refusal == nil)
	s.mu.Lock()
	released := d.released
	if !released && valid && decision.Granted != nil {
		granted(decision.Granted)
	}
	s.finishLocked(d)
	s.mu.Unlock()
	if released {
		// The server gave up on this decision and released the call: whatever the provider
		// reserved for it is freed, and the answer is never a grant.
		if decision.Granted != nil {
			_ = s.provider.Release(context.WithoutCancel(ctx), call)
		}
		return Decision{}, status.Errorf(codes.Aborted, "%s was released while being decided", call)
	}
	if err != nil {
		return Decision{}, failure("the decision", err)
	}
	if !valid {
		return Decision{}, status.Error(codes.Internal, "the provider returned neither a grant nor a refusal (or both)")
	}
	return decision, nil
}

// Release frees a call, cancelling a decision of it still running.
func (s *Server) Release(ctx context.Context, req *providerv1.ReleaseRequest) (*providerv1.ReleaseResponse, error) {
	s.mu.Lock()
	started := s.started
	s.mu.Unlock()
	if started {
		if err := s.release(ctx, req.GetCall()); err != nil {
			return nil, err
		}
	}
	return &providerv1.ReleaseResponse{}, nil
}

func (s *Server) release(ctx context.Context, call string) error {
	s.mu.Lock()
	d := s.deciding[call]
	if d != nil {
		d.released = true
		if d.cancel != nil {
			d.cancel()
		}
	}
	s.mu.Unlock()
	if d != nil {
		select {
		case <-d.done:
		case <-ctx.Done():
		}
	}
	if err := s.provider.Release(ctx, call); err != nil {
		return failure("Release", err)
	}
	s.mu.Lock()
	delete(s.ledger, call)
	prefix := call + "\x00"
	for key := range s.answers {
		if strings.HasPrefix(key, prefix) {
			delete(s.answers, key)
		}
	}
	s.mu.Unlock()
	return nil
}

// ListReservations answers what the provider holds: the calls the kit's ledger holds, with their
// QoS, and, from a provider that advertises Capabilities.ReservationListing (a ReservationLister),
// the rates its own books hold for each. A call the books leave out holds nothing; one only the
// books hold is listed without QoS, for the server to release.
func (s *Server) ListReservations(ctx context.Context, req *providerv1.ListReservationsRequest) (*providerv1.ListReservationsResponse, error) {
	var books []Holding
	if lister, ok := s.provider.(ReservationLister); ok && s.info.Capabilities.GetReservationListing() {
		var err error
		if books, err = lister.Reservations(ctx); err != nil {
			return nil, failure("Reservations", err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	listed := map[string]*providerv1.Reservation{}
	for call, h := range s.ledger {
		listed[call] = &providerv1.Reservation{Call: call, Qos: h.qos}
	}
	for _, b := range books {
		item, ok := listed[b.Call]
		if !ok {
			item = &providerv1.Reservation{Call: b.Call}
			listed[b.Call] = item
		}
		item.SendingBytesPerSecond, item.ReceivingBytesPerSecond, item.Link = b.Sending, b.Receiving, b.Link
	}
	answer := &providerv1.ListReservationsResponse{}
	for _, item := range listed {
		answer.Reservations = append(answer.Reservations, item)
	}
	sort.Slice(answer.Reservations, func(i, j int) bool { return answer.Reservations[i].Call < answer.Reservations[j].Call })
	return answer, nil
}

// ListLinks answers the provider's links.
func (s *Server) ListLinks(ctx context.Context, req *providerv1.ListLinksRequest) (*providerv1.ListLinksResponse, error) {
	admin, ok := s.provider.(LinkAdmin)
	if !ok || !s.info.Capabilities.GetLinkAdmin() {
		return nil, status.Error(codes.Unimplemented, "this provider has no links")
	}
	links, err := admin.ListLinks(ctx)
	if err != nil {
		return nil, failure("ListLinks", err)
	}
	return &providerv1.ListLinksResponse{Links: links}, nil
}

// UpdateLink changes a link's capacity, and says which changes that caused.
func (s *Server) UpdateLink(ctx context.Context, req *providerv1.UpdateLinkRequest) (*providerv1.UpdateLinkResponse, error) {
	admin, ok := s.provider.(LinkAdmin)
	if !ok || !s.info.Capabilities.GetLinkAdmin() {
		return nil, status.Error(codes.Unimplemented, "this provider has no links")
	}
	s.mu.Lock()
	before := s.journal.sequence
	s.mu.Unlock()
	link, err := admin.UpdateLink(ctx, linkID(req.GetLink()), req.GetCapacityBytesPerSecond())
	if errors.Is(err, ErrUnknownLink) {
		return nil, status.Errorf(codes.NotFound, "no link %s", req.GetLink())
	}
	if err != nil {
		return nil, failure("UpdateLink", err)
	}
	s.mu.Lock()
	caused := uint64(0)
	if s.journal.sequence > before {
		caused = s.journal.sequence
	}
	s.mu.Unlock()
	return &providerv1.UpdateLinkResponse{Link: link, ChangeSequence: caused}, nil
}

// WatchChanges streams the journal: what is not acknowledged, then each new change.
func (s *Server) WatchChanges(req *providerv1.WatchChangesRequest, stream providerv1.ProviderService_WatchChangesServer) error {
	sent := uint64(0)
	if req.GetInstanceId() == s.instanceID {
		sent = req.GetAfterSequence()
	}
	for {
		s.mu.Lock()
		grew := s.journal.grew
		pending := s.journal.after(sent)
		s.mu.Unlock()
		for _, change := range pending {
			if err := stream.Send(&providerv1.WatchChangesResponse{Change: change}); err != nil {
				return err
			}
			sent = change.GetSequence()
		}
		select {
		case <-grew:
		case <-stream.Context().Done():
			return nil
		}
	}
}

// AckChanges forgets the changes the server has applied.
func (s *Server) AckChanges(ctx context.Context, req *providerv1.AckChangesRequest) (*providerv1.AckChangesResponse, error) {
	if req.GetInstanceId() == s.instanceID {
		s.mu.Lock()
		s.journal.acknowledge(req.GetSequence())
		s.mu.Unlock()
	}
	return &providerv1.AckChangesResponse{}, nil
}

// checkProviderSpecific is the provider's own check of its provider_specific bytes:
// INVALID_ARGUMENT with one BadRequest violation on qos.provider_specific per problem.
func (s *Server) checkProviderSpecific(qos *callqosv1.QosSpec) error {
	validator, ok := s.provider.(ProviderSpecificValidator)
	if !ok || len(qos.GetProviderSpecific()) == 0 {
		return nil
	}
	problems := validator.ValidateProviderSpecific(qos.GetProviderSpecific())
	if len(problems) == 0 {
		return nil
	}
	bad := &errdetails.BadRequest{}
	for _, problem := range problems {
		bad.FieldViolations = append(bad.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: "qos.provider_specific", Description: problem})
	}
	st, err := status.New(codes.InvalidArgument, strings.Join(problems, "; ")).WithDetails(bad)
	if err != nil {
		return status.Error(codes.InvalidArgument, strings.Join(problems, "; "))
	}
	return st.Err()
}

func (s *Server) remember(key string, answer proto.Message) {
	if _, ok := s.answers[key]; !ok {
		s.order = append(s.order, key)
	}
	s.answers[key] = answer
	for len(s.order) > answersRemembered {
		delete(s.answers, s.order[0])
		s.order = s.order[1:]
	}
}

// failure is the status for a provider method's error: its own status if it returned one,
// DEADLINE_EXCEEDED / CANCELLED for its context's, INTERNAL otherwise.
func failure(what string, err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return status.Errorf(codes.DeadlineExceeded, "%s did not finish in time", what)
	case errors.Is(err, context.Canceled):
		return status.Errorf(codes.Canceled, "%s was cancelled", what)
	}
	return status.Errorf(codes.Internal, "%s failed: %v", what, err)
}

func refusalMessage(r *Refusal) *providerv1.Refusal {
	kind := providerv1.RefusalKind_REFUSAL_KIND_ADMISSION
	if r.Kind == Policy {
		kind = providerv1.RefusalKind_REFUSAL_KIND_POLICY
	}
	return &providerv1.Refusal{Kind: kind, Message: r.Message, CounterOffer: r.CounterOffer}
}

func changeMessage(c Change, sequence uint64) *providerv1.Change {
	return &providerv1.Change{Sequence: sequence, Call: c.Call, Qos: c.QoS, Message: c.Message, Event: c.Event}
}

func changeMessages(changes []Change) []*providerv1.Change {
	out := make([]*providerv1.Change, 0, len(changes))
	for _, c := range changes {
		out = append(out, changeMessage(c, 0))
	}
	return out
}

// linkID is the {link} of "links/{link}" (or of a longer name ending so).
func linkID(name string) string {
	if i := strings.LastIndex(name, "links/"); i >= 0 {
		return name[i+len("links/"):]
	}
	return name
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// journal holds the provider's own changes until the server acknowledges them: numbered from 1,
// only the newest change of a call kept. Its methods run with Server.mu held.
type journal struct {
	sequence uint64
	entries  map[uint64]*providerv1.Change
	byCall   map[string]uint64
	grew     chan struct{} // closed (and replaced) by each append
}

func (j *journal) init() {
	j.entries, j.byCall, j.grew = map[uint64]*providerv1.Change{}, map[string]uint64{}, make(chan struct{})
}

func (j *journal) append(c Change) {
	j.sequence++
	if old, ok := j.byCall[c.Call]; ok {
		delete(j.entries, old)
	}
	j.entries[j.sequence] = changeMessage(c, j.sequence)
	j.byCall[c.Call] = j.sequence
	close(j.grew)
	j.grew = make(chan struct{})
}

func (j *journal) after(sequence uint64) []*providerv1.Change {
	var out []*providerv1.Change
	for n, c := range j.entries {
		if n > sequence {
			out = append(out, c)
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].GetSequence() < out[b].GetSequence() })
	return out
}

func (j *journal) latest(call string) *providerv1.Change {
	if n, ok := j.byCall[call]; ok {
		return j.entries[n]
	}
	return nil
}

func (j *journal) acknowledge(sequence uint64) {
	for n, c := range j.entries {
		if n <= sequence {
			delete(j.entries, n)
			if j.byCall[c.GetCall()] == n {
				delete(j.byCall, c.GetCall())
			}
		}
	}
}
