package main

import (
	"context"
	"fmt"
	"math"
	"math/big"
	"sort"
	"strings"
	"sync"

	"google.golang.org/protobuf/proto"

	callqosv1 "github.com/callqos/callqos/clients/go/gen/callqos/v1"
	"github.com/callqos/callqos/clients/go/provider"
)

// The service types and levels this provider tells apart.
const (
	bestEffort     = callqosv1.ServiceType_SERVICE_TYPE_BEST_EFFORT
	controlledLoad = callqosv1.ServiceType_SERVICE_TYPE_CONTROLLED_LOAD
	guaranteed     = callqosv1.ServiceType_SERVICE_TYPE_GUARANTEED
	qualitative    = callqosv1.ServiceType_SERVICE_TYPE_QUALITATIVE
	networkControl = callqosv1.ServiceType_SERVICE_TYPE_NETWORK_CONTROL
	noTraffic      = callqosv1.ServiceType_SERVICE_TYPE_NO_TRAFFIC
	ifAvailable    = callqosv1.ServiceLevel_SERVICE_LEVEL_IF_AVAILABLE

	linkID         = "uplink"
	minimumPoliced = 64 // bytes, granted when a request leaves it out
)

var directions = [2]string{"sending", "receiving"}

// Quota is the provider. Set the exported fields (the flags do), then serve it.
type Quota struct {
	Capacity            uint64  // the link, bytes/s in each direction
	ControlledLoadShare float64 // of Capacity, for CONTROLLED_LOAD flows
	GuaranteedShare     float64 // of Capacity, for GUARANTEED flows
	MTU                 uint    // bytes
	ErrorTermC          uint    // RFC 2212 Ctot, bytes
	ErrorTermD          uint    // RFC 2212 Dtot, microseconds
	PathLatency         uint    // microseconds

	mu       sync.Mutex
	host     provider.Host
	capacity uint64                               // the link now (UpdateLink changes it)
	reserved map[callqosv1.ServiceType]*[2]uint64 // per class, per direction
	calls    map[string]*reservation
	order    uint64 // admission counter: the newest reservation is shed first
}

// reservation is what one call holds.
type reservation struct {
	level callqosv1.ServiceLevel
	qos   *callqosv1.QosSpec
	order uint64
}

// -- provider.Provider ------------------------------------------------------------------------

// Info says what the provider can do. max_reservable is the larger class quota: no single
// direction of a call can reserve more.
func (q *Quota) Info() provider.Info {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.setup()
	return provider.Info{
		DisplayName: "Class quota (Go example)",
		Description: fmt.Sprintf("One %d B/s link; CONTROLLED_LOAD may take %.0f%% of it, GUARANTEED %.0f%% "+
			"(admitted within the RFC 2212 delay bound).", q.Capacity, 100*q.ControlledLoadShare, 100*q.GuaranteedShare),
		Version: "classquota 1.0",
		Capabilities: &callqosv1.ProviderCapabilities{
			QosSupported:                true,
			Renegotiation:               true,
			ProviderInitiatedChanges:    true,
			LinkAdmin:                   true,
			ReservationListing:          true,
			ServiceTypes:                []callqosv1.ServiceType{bestEffort, controlledLoad, guaranteed, qualitative, noTraffic},
			MaxReservableBytesPerSecond: max(q.quota(controlledLoad), q.quota(guaranteed)),
			MaxSduSizeBytes:             uint32(q.MTU),
			MinLatencyMicroseconds:      uint32(q.ErrorTermD + q.PathLatency),
			Policy:                      true,
			PolicyNote:                  "NETWORK_CONTROL belongs to the network operator and is always refused.",
		},
	}
}

// Start keeps the host, to report the calls UpdateLink sheds.
func (q *Quota) Start(host provider.Host) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.setup()
	q.host = host
	return nil
}

// Restore takes the calls back as the server recorded them, then sheds what no longer fits.
func (q *Quota) Restore(ctx context.Context, calls []provider.Held) ([]provider.Change, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, call := range calls {
		q.reserve(call.Call, call.Level, call.QoS)
	}
	return q.shed(), nil
}

// Admit decides a new call.
func (q *Quota) Admit(ctx context.Context, request provider.Request) (provider.Decision, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.decide(request), nil
}

// Release frees what the call holds.
func (q *Quota) Release(ctx context.Context, call string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.unreserve(call)
	return nil
}

// -- provider.Renegotiator --------------------------------------------------------------------

// Renegotiate decides like Admit, with the call's own reservation counted as free; a refusal
// leaves the reservation as it was (decide reserves only on a grant).
func (q *Quota) Renegotiate(ctx context.Context, request provider.Request) (provider.Decision, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.decide(request), nil
}

// -- provider.ReservationLister ---------------------------------------------------------------

// Reservations lists what the books hold, call by call, for the server's ledger to reconcile.
func (q *Quota) Reservations(ctx context.Context) ([]provider.Holding, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	held := make([]provider.Holding, 0, len(q.calls))
	for call, r := range q.calls {
		held = append(held, provider.Holding{
			Call: call, Sending: reservedRate(flow(r.qos, 0)), Receiving: reservedRate(flow(r.qos, 1)), Link: "links/" + linkID,
		})
	}
	return held, nil
}

// -- provider.LinkAdmin -----------------------------------------------------------------------

// ListLinks shows the one link.
func (q *Quota) ListLinks(ctx context.Context) ([]*callqosv1.Link, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return []*callqosv1.Link{q.link()}, nil
}

// UpdateLink resizes the link (and with it both class quotas) and reports every call that no
// longer fits — after letting go of the lock: the host may call back in.
func (q *Quota) UpdateLink(ctx context.Context, link string, capacity uint64) (*callqosv1.Link, error) {
	if link != linkID {
		return nil, provider.ErrUnknownLink
	}
	q.mu.Lock()
	q.capacity = capacity
	changes := q.shed()
	answer := q.link()
	q.mu.Unlock()
	for _, change := range changes {
		q.host.ReportChange(change)
	}
	return answer, nil
}

// -- deciding ---------------------------------------------------------------------------------

func (q *Quota) decide(request provider.Request) provider.Decision {
	asked := request.QoS
	for d := range directions {
		if flow(asked, d).GetServiceType() == networkControl {
			return q.refuse(request, provider.Policy, directions[d]+": NETWORK_CONTROL belongs to the network operator")
		}
	}
	granted := &callqosv1.QosSpec{
		Sending:          q.resolve(asked.GetSending(), asked.GetSending()),
		Receiving:        q.resolve(asked.GetReceiving(), asked.GetSending()),
		ProviderSpecific: asked.GetProviderSpecific(),
	}
	var problems []string
	for d := range directions {
		spec := flow(granted, d)
		if rate, free := reservedRate(spec), q.free(request.Call, spec.GetServiceType(), d); rate > free {
			problems = append(problems, fmt.Sprintf("%s: needs %d B/s, %d B/s free for %s", directions[d], rate, free, className(spec)))
		}
		if spec.GetServiceType() == guaranteed {
			if bound := q.delayBound(spec); bound > float64(spec.GetLatencyMicroseconds()) {
				problems = append(problems, fmt.Sprintf("%s: RFC 2212 delay bound %.0f us exceeds latency %d us",
					directions[d], math.Ceil(bound), spec.GetLatencyMicroseconds()))
			}
		}
	}
	if len(problems) > 0 {
		return q.refuse(request, provider.Admission, strings.Join(problems, "; "))
	}
	q.reserve(request.Call, request.Level, granted)
	return provider.Grant(granted)
}

// refuse refuses at NEEDED, with the best counter-offer; at IF_AVAILABLE the call connects
// with that counter-offer instead.
func (q *Quota) refuse(request provider.Request, kind provider.RefusalKind, message string) provider.Decision {
	offer := q.counterOffer(request.Call, request.QoS)
	if request.Level == ifAvailable {
		q.reserve(request.Call, request.Level, offer)
		return provider.Grant(offer)
	}
	return provider.Refuse(kind, message, offer)
}

// counterOffer is the best grantable now: the same shape, rates cut to what is free (best effort
// where nothing is, and for NETWORK_CONTROL), a GUARANTEED latency relaxed to the bound the cut
// rate achieves.
func (q *Quota) counterOffer(call string, asked *callqosv1.QosSpec) *callqosv1.QosSpec {
	offer := &callqosv1.QosSpec{ProviderSpecific: asked.GetProviderSpecific()}
	for d := range directions {
		spec := q.resolve(flow(asked, d), asked.GetSending())
		switch kind := spec.GetServiceType(); {
		case kind == networkControl:
			spec = &callqosv1.FlowSpec{ServiceType: bestEffort}
		case kind != controlledLoad && kind != guaranteed:
		case q.free(call, kind, d) == 0:
			spec = &callqosv1.FlowSpec{ServiceType: bestEffort}
		default:
			free := q.free(call, kind, d)
			if spec.GetTokenRateBytesPerSecond() > free {
				spec.TokenRateBytesPerSecond = proto.Uint64(free)
			}
			if spec.PeakBandwidthBytesPerSecond != nil && !spec.GetPeakBandwidthUnbounded() {
				spec.PeakBandwidthBytesPerSecond = proto.Uint64(max(min(spec.GetPeakBandwidthBytesPerSecond(), free), spec.GetTokenRateBytesPerSecond()))
			}
			if kind == guaranteed {
				if !q.fitBound(spec) {
					spec = &callqosv1.FlowSpec{ServiceType: bestEffort} // no bucket makes its bound statable
				} else {
					spec.LatencyMicroseconds = proto.Uint32(max(spec.GetLatencyMicroseconds(), q.latency(spec)))
				}
			}
		}
		if d == 0 {
			offer.Sending = spec
		} else {
			offer.Receiving = spec
		}
	}
	return offer
}

// resolve is the flowspec as granted: this provider's defaults where the request leaves them.
func (q *Quota) resolve(spec, sender *callqosv1.FlowSpec) *callqosv1.FlowSpec {
	out := proto.Clone(spec).(*callqosv1.FlowSpec)
	if kind := out.GetServiceType(); kind != controlledLoad && kind != guaranteed {
		return out
	}
	if out.TokenRateBytesPerSecond == nil {
		// A controlled-load receiver may leave its rate to the provider: the sender's, or one
		// packet a second.
		out.TokenRateBytesPerSecond = proto.Uint64(uint64(q.MTU))
		if sender.TokenRateBytesPerSecond != nil {
			out.TokenRateBytesPerSecond = proto.Uint64(sender.GetTokenRateBytesPerSecond())
		}
	}
	if out.MaxSduSizeBytes == nil {
		out.MaxSduSizeBytes = proto.Uint32(uint32(q.MTU))
	}
	if out.MinimumPolicedSizeBytes == nil {
		out.MinimumPolicedSizeBytes = proto.Uint32(min(minimumPoliced, out.GetMaxSduSizeBytes()))
	}
	if out.TokenBucketSizeBytes == nil {
		out.TokenBucketSizeBytes = proto.Uint64(uint64(out.GetMaxSduSizeBytes()))
	}
	if out.PeakBandwidthBytesPerSecond == nil {
		out.PeakBandwidthUnbounded = true
	}
	if out.GetServiceType() == guaranteed && out.LatencyMicroseconds == nil {
		out.LatencyMicroseconds = proto.Uint32(q.latency(out))
	}
	return out
}

// largestLatency is the largest latency a flowspec carries (0xFFFFFFFE and 0xFFFFFFFF are
// Winsock sentinels): a GUARANTEED flow whose delay bound exceeds it cannot be promised
// (conformance/SPEC.md DELAY-5).
const largestLatency = 0xFFFFFFFD

// latency is the delay bound rounded up to a whole microsecond, at most largestLatency (a bound
// beyond it is then refused: it exceeds the latency it is given).
func (q *Quota) latency(spec *callqosv1.FlowSpec) uint32 {
	return uint32(min(math.Ceil(q.delayBound(spec)), largestLatency))
}

// fitBound cuts a GUARANTEED offer's token bucket to the largest with which its delay bound fits
// in a latency (DELAY-5); false when no bucket can (the rate is too low, or a bounded peak keeps
// the bucket out of the bound).
func (q *Quota) fitBound(spec *callqosv1.FlowSpec) bool {
	if q.delayBound(spec) <= largestLatency {
		return true
	}
	if spec.PeakBandwidthBytesPerSecond != nil && !spec.GetPeakBandwidthUnbounded() {
		return false
	}
	// (b + C) / R s + D + L <= largest  ⟺  b <= (largest - D - L) R / 1e6 - C, in whole bytes.
	fixed := uint64(q.ErrorTermD + q.PathLatency)
	if fixed >= largestLatency {
		return false
	}
	budget := new(big.Int).Mul(new(big.Int).SetUint64(largestLatency-fixed), new(big.Int).SetUint64(reservedRate(spec)))
	budget.Div(budget, big.NewInt(1_000_000))
	budget.Sub(budget, new(big.Int).SetUint64(uint64(q.ErrorTermC)))
	if budget.Cmp(new(big.Int).SetUint64(uint64(spec.GetMaxSduSizeBytes()))) < 0 {
		return false // even a bucket of one packet is too much at this rate
	}
	spec.TokenBucketSizeBytes = proto.Uint64(min(budget.Uint64(), spec.GetTokenBucketSizeBytes()))
	return true
}

// delayBound is the RFC 2212 end-to-end delay bound of a GUARANTEED flow over the link, in
// microseconds (conformance/SPEC.md DELAY-1..4), reserving rate R = reservedRate(spec): with a
// bounded peak (R = p) Q = (M + C)/R + D; without one, Q = (b - M)/R + (M + C)/R + D; plus the
// path's fixed latency.
func (q *Quota) delayBound(spec *callqosv1.FlowSpec) float64 {
	rate := float64(reservedRate(spec))
	if rate <= 0 {
		return math.Inf(1)
	}
	m := float64(spec.GetMaxSduSizeBytes())
	if spec.MaxSduSizeBytes == nil {
		m = float64(q.MTU)
	}
	bucket := m
	if spec.TokenBucketSizeBytes != nil {
		bucket = float64(spec.GetTokenBucketSizeBytes())
	}
	queue := (m + float64(q.ErrorTermC)) / rate
	if spec.PeakBandwidthBytesPerSecond == nil || spec.GetPeakBandwidthUnbounded() {
		queue += max(bucket-m, 0) / rate
	}
	return queue*1e6 + float64(q.ErrorTermD+q.PathLatency)
}

// -- bookkeeping ------------------------------------------------------------------------------

func (q *Quota) setup() {
	if q.reserved != nil {
		return
	}
	if q.MTU == 0 {
		q.MTU = 1500
	}
	q.capacity = q.Capacity
	q.reserved = map[callqosv1.ServiceType]*[2]uint64{controlledLoad: {}, guaranteed: {}}
	q.calls = map[string]*reservation{}
}

// quota is what a class may reserve in each direction, on the link as it is now.
func (q *Quota) quota(kind callqosv1.ServiceType) uint64 {
	share := q.ControlledLoadShare
	if kind == guaranteed {
		share = q.GuaranteedShare
	}
	return uint64(math.Floor(share * float64(q.capacity)))
}

// free is what a flow of class kind may still reserve in direction d: the class's quota left,
// and no more than the link has left. The call's own reservation counts as free (renegotiation).
func (q *Quota) free(call string, kind callqosv1.ServiceType, d int) uint64 {
	class, ok := q.reserved[kind]
	if !ok {
		return 0
	}
	total := q.reserved[controlledLoad][d] + q.reserved[guaranteed][d]
	mine, own := class[d], uint64(0)
	if held := q.calls[call]; held != nil {
		if spec := flow(held.qos, d); spec.GetServiceType() == kind {
			own = reservedRate(spec)
		} else if _, reserving := q.reserved[spec.GetServiceType()]; reserving {
			total -= reservedRate(spec) // its other class's share of the link is freed too
		}
		total -= own
		mine -= own
	}
	return min(sub(q.quota(kind), mine), sub(q.capacity, total))
}

func (q *Quota) reserve(call string, level callqosv1.ServiceLevel, qos *callqosv1.QosSpec) {
	q.unreserve(call)
	q.order++
	q.calls[call] = &reservation{level: level, qos: qos, order: q.order}
	for d := range directions {
		spec := flow(qos, d)
		if class, ok := q.reserved[spec.GetServiceType()]; ok {
			class[d] += reservedRate(spec)
		}
	}
}

func (q *Quota) unreserve(call string) {
	held := q.calls[call]
	if held == nil {
		return
	}
	for d := range directions {
		spec := flow(held.qos, d)
		if class, ok := q.reserved[spec.GetServiceType()]; ok {
			class[d] -= reservedRate(spec)
		}
	}
	delete(q.calls, call)
}

// fits says whether every class is within its quota and the link within its capacity.
func (q *Quota) fits() bool {
	for d := range directions {
		cl, g := q.reserved[controlledLoad][d], q.reserved[guaranteed][d]
		if cl > q.quota(controlledLoad) || g > q.quota(guaranteed) || cl+g > q.capacity {
			return false
		}
	}
	return true
}

// shed brings the link back within its quotas, newest reservation first: IF_AVAILABLE calls are
// degraded to what fits, NEEDED ones dropped.
func (q *Quota) shed() []provider.Change {
	var victims []string
	for call := range q.calls {
		victims = append(victims, call)
	}
	sort.Slice(victims, func(i, j int) bool { return q.calls[victims[i]].order > q.calls[victims[j]].order })
	var changes []provider.Change
	for _, call := range victims {
		if q.fits() {
			break
		}
		held := q.calls[call]
		if reservedRate(held.qos.GetSending()) == 0 && reservedRate(held.qos.GetReceiving()) == 0 {
			continue
		}
		q.unreserve(call)
		message := fmt.Sprintf("the link's capacity fell to %d B/s", q.capacity)
		if held.level == ifAvailable {
			offer := q.counterOffer(call, held.qos)
			q.reserve(call, held.level, offer)
			changes = append(changes, provider.Change{Call: call, QoS: offer, Message: message + "; QoS degraded"})
			continue
		}
		changes = append(changes, provider.Change{Call: call, Message: message + "; QoS cannot be sustained"})
	}
	return changes
}

func (q *Quota) link() *callqosv1.Link {
	count := uint32(0)
	for _, held := range q.calls {
		if reservedRate(held.qos.GetSending())+reservedRate(held.qos.GetReceiving()) > 0 {
			count++
		}
	}
	return &callqosv1.Link{
		Name:                            "links/" + linkID,
		CapacityBytesPerSecond:          q.capacity,
		SendingReservedBytesPerSecond:   q.reserved[controlledLoad][0] + q.reserved[guaranteed][0],
		ReceivingReservedBytesPerSecond: q.reserved[controlledLoad][1] + q.reserved[guaranteed][1],
		MtuBytes:                        uint32(q.MTU),
		ReservationCount:                count,
		ErrorTermCBytes:                 uint32(q.ErrorTermC),
		ErrorTermDMicroseconds:          uint32(q.ErrorTermD),
		MinPathLatencyMicroseconds:      uint32(q.PathLatency),
	}
}

// reservedRate is what a flowspec reserves (conformance/SPEC.md GRANT-1): CONTROLLED_LOAD its
// token rate, GUARANTEED its peak when bounded, else its token rate; anything else nothing.
func reservedRate(spec *callqosv1.FlowSpec) uint64 {
	switch spec.GetServiceType() {
	case controlledLoad:
		return spec.GetTokenRateBytesPerSecond()
	case guaranteed:
		if spec.PeakBandwidthBytesPerSecond != nil && !spec.GetPeakBandwidthUnbounded() {
			return spec.GetPeakBandwidthBytesPerSecond()
		}
		return spec.GetTokenRateBytesPerSecond()
	}
	return 0
}

func flow(qos *callqosv1.QosSpec, d int) *callqosv1.FlowSpec {
	if d == 0 {
		return qos.GetSending()
	}
	return qos.GetReceiving()
}

func className(spec *callqosv1.FlowSpec) string {
	return strings.ToLower(strings.TrimPrefix(spec.GetServiceType().String(), "SERVICE_TYPE_"))
}

func sub(a, b uint64) uint64 {
	if b >= a {
		return 0
	}
	return a - b
}
