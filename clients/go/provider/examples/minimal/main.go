// Command minimal is the smallest useful callqos provider: CONTROLLED_LOAD admission control
// against one capacity per direction. It is the provider of the kit's README, step by step.
package main

import (
	"context"
	"fmt"
	"sync"

	"google.golang.org/protobuf/proto"

	callqosv1 "github.com/callqos/callqos/clients/go/gen/callqos/v1"
	"github.com/callqos/callqos/clients/go/provider"
)

const capacity = 1_000_000 // bytes/s, each direction

type Minimal struct {
	mu   sync.Mutex
	held map[string][2]uint64 // call → reserved (sending, receiving)
}

func (m *Minimal) Info() provider.Info {
	return provider.Info{
		DisplayName: "Minimal",
		Version:     "minimal 0.1",
		Capabilities: &callqosv1.ProviderCapabilities{
			QosSupported:                true,
			ServiceTypes:                []callqosv1.ServiceType{callqosv1.ServiceType_SERVICE_TYPE_BEST_EFFORT, callqosv1.ServiceType_SERVICE_TYPE_CONTROLLED_LOAD, callqosv1.ServiceType_SERVICE_TYPE_NO_TRAFFIC},
			MaxReservableBytesPerSecond: capacity,
		},
	}
}

func (m *Minimal) Start(host provider.Host) error {
	m.held = map[string][2]uint64{}
	return nil
}

// Restore takes back the calls the server holds (this provider never sheds: all fit).
func (m *Minimal) Restore(ctx context.Context, calls []provider.Held) ([]provider.Change, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range calls {
		m.held[c.Call] = [2]uint64{rate(c.QoS.GetSending()), rate(c.QoS.GetReceiving())}
	}
	return nil, nil
}

// Admit grants a request that fits in both directions; otherwise it offers what is free.
func (m *Minimal) Admit(ctx context.Context, r provider.Request) (provider.Decision, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	granted := &callqosv1.QosSpec{
		Sending:          resolve(r.QoS.GetSending(), r.QoS.GetSending()),
		Receiving:        resolve(r.QoS.GetReceiving(), r.QoS.GetSending()),
		ProviderSpecific: r.QoS.GetProviderSpecific(),
	}
	free := m.free()
	offered := !unsupported(granted.Sending) && !unsupported(granted.Receiving)
	if offered && rate(granted.Sending) <= free[0] && rate(granted.Receiving) <= free[1] {
		m.held[r.Call] = [2]uint64{rate(granted.Sending), rate(granted.Receiving)}
		return provider.Grant(granted), nil
	}
	offer := &callqosv1.QosSpec{Sending: cut(granted.Sending, free[0]), Receiving: cut(granted.Receiving, free[1]), ProviderSpecific: granted.ProviderSpecific}
	if r.Level == callqosv1.ServiceLevel_SERVICE_LEVEL_IF_AVAILABLE { // connect with what is free
		m.held[r.Call] = [2]uint64{rate(offer.Sending), rate(offer.Receiving)}
		return provider.Grant(offer), nil
	}
	return provider.Refuse(provider.Admission, fmt.Sprintf("%d/%d B/s free", free[0], free[1]), offer), nil
}

func (m *Minimal) Release(ctx context.Context, call string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.held, call)
	return nil
}

func (m *Minimal) free() [2]uint64 {
	free := [2]uint64{capacity, capacity}
	for _, r := range m.held {
		free[0], free[1] = free[0]-r[0], free[1]-r[1]
	}
	return free
}

// rate is what a flowspec reserves: a CONTROLLED_LOAD token rate, nothing otherwise.
func rate(f *callqosv1.FlowSpec) uint64 {
	if f.GetServiceType() == callqosv1.ServiceType_SERVICE_TYPE_CONTROLLED_LOAD {
		return f.GetTokenRateBytesPerSecond()
	}
	return 0
}

// resolve fills in what a request may leave to the provider: a controlled-load receiver's rate.
func resolve(f, sending *callqosv1.FlowSpec) *callqosv1.FlowSpec {
	out := proto.Clone(f).(*callqosv1.FlowSpec)
	if out.GetServiceType() == callqosv1.ServiceType_SERVICE_TYPE_CONTROLLED_LOAD && out.TokenRateBytesPerSecond == nil {
		out.TokenRateBytesPerSecond = proto.Uint64(max(sending.GetTokenRateBytesPerSecond(), 1500))
	}
	return out
}

// unsupported: the reserving service types this provider does not offer.
func unsupported(f *callqosv1.FlowSpec) bool {
	kind := f.GetServiceType()
	return kind == callqosv1.ServiceType_SERVICE_TYPE_GUARANTEED || kind == callqosv1.ServiceType_SERVICE_TYPE_NETWORK_CONTROL
}

// cut is f within free bytes/s: its rate lowered (and a bounded peak with it), or best effort.
func cut(f *callqosv1.FlowSpec, free uint64) *callqosv1.FlowSpec {
	if !unsupported(f) && rate(f) <= free {
		return f
	}
	if free == 0 || unsupported(f) {
		return &callqosv1.FlowSpec{ServiceType: callqosv1.ServiceType_SERVICE_TYPE_BEST_EFFORT}
	}
	out := proto.Clone(f).(*callqosv1.FlowSpec)
	out.TokenRateBytesPerSecond = proto.Uint64(free)
	if out.PeakBandwidthBytesPerSecond != nil && out.GetPeakBandwidthBytesPerSecond() > free {
		out.PeakBandwidthBytesPerSecond = proto.Uint64(free)
	}
	return out
}

func main() { provider.Main(&Minimal{}) }
