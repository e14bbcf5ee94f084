package callqos

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	callqosv1 "github.com/callqos/callqos/clients/go/gen/callqos/v1"
)

// minRenewInterval is the shortest pause between two renewals, however short the lease.
const minRenewInterval = 50 * time.Millisecond

// LeaseLostError says that a kept-alive call lost its lease: the server said LEASE_EXPIRED,
// the call ended otherwise, or no renewal got through before the lease ended. Cause is the
// error that showed it (errors.Is/As see through to it).
type LeaseLostError struct {
	Call  string
	Cause error
	why   string
}

func (e *LeaseLostError) Error() string {
	return fmt.Sprintf("callqos: %s lost its lease: %s: %v", e.Call, e.why, e.Cause)
}

// Unwrap gives the cause, e.g. an *Error with reason LEASE_EXPIRED.
func (e *LeaseLostError) Unwrap() error { return e.Cause }

// A KeepAliveOption configures Client.KeepAlive.
type KeepAliveOption func(*KeepAlive)

// WithRenewInterval renews every d instead of every third of the call's lease.
func WithRenewInterval(d time.Duration) KeepAliveOption {
	return func(k *KeepAlive) { k.interval = max(d, minRenewInterval) }
}

// WithoutDrop makes Close only stop renewing: the call then ends when its lease runs out.
func WithoutDrop() KeepAliveOption { return func(k *KeepAlive) { k.drop = false } }

// KeepAlive renews a leased call's lease in the background while the application holds the
// call, and tells it when the lease is lost:
//
//	ka, err := client.KeepAlive(ctx, call)
//	if err != nil { ... }
//	defer ka.Close() // stops renewing and drops the call
//	stream(ka.Context()) // cancelled, with the *LeaseLostError as its cause, if the lease is lost
//
// It renews every third of the lease (so two renewals in a row may fail and be retried before
// the lease ends). Whether the lease has ended without a renewal getting through is judged by
// the local monotonic clock, from when the last successful renewal was sent.
type KeepAlive struct {
	client   *Client
	name     string
	interval time.Duration
	drop     bool

	ctx    context.Context
	cancel context.CancelCauseFunc
	lost   chan struct{}
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once

	mu       sync.Mutex
	call     *callqosv1.Call
	err      error
	renewals int
	deadline time.Time
}

// KeepAlive starts renewing call's lease (see the KeepAlive type). ctx bounds the whole
// keep-alive: cancelling it stops the renewals (the lease then runs out, unless Close drops the
// call first). It fails if the call has no lease.
func (c *Client) KeepAlive(ctx context.Context, call *callqosv1.Call, opts ...KeepAliveOption) (*KeepAlive, error) {
	lease := call.GetLeaseDuration()
	if lease == nil {
		return nil, fmt.Errorf("callqos: %s has no lease to keep alive (set Call.LeaseDuration)", call.GetName())
	}
	k := &KeepAlive{
		client: c, name: call.GetName(), interval: max(lease.AsDuration()/3, minRenewInterval), drop: true,
		lost: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{}), call: call,
	}
	for _, opt := range opts {
		opt(k)
	}
	remaining := min(max(time.Until(call.GetLeaseExpireTime().AsTime()), 0), lease.AsDuration())
	k.deadline = time.Now().Add(remaining)
	k.ctx, k.cancel = context.WithCancelCause(ctx)
	go k.run()
	return k, nil
}

// Context is cancelled when the lease is lost (context.Cause is the *LeaseLostError) or the
// keep-alive is closed.
func (k *KeepAlive) Context() context.Context { return k.ctx }

// Lost is closed when the lease is lost.
func (k *KeepAlive) Lost() <-chan struct{} { return k.lost }

// Err is nil while the lease is held, and the *LeaseLostError once it is lost.
func (k *KeepAlive) Err() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.err
}

// Call is the call as the last renewal returned it.
func (k *KeepAlive) Call() *callqosv1.Call {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.call
}

// Renewals is how many renewals succeeded.
func (k *KeepAlive) Renewals() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.renewals
}

func (k *KeepAlive) run() {
	defer close(k.done)
	pause := k.interval
	for {
		select {
		case <-k.stop:
			return
		case <-k.ctx.Done():
			return
		case <-time.After(pause):
		}
		sent := time.Now()
		k.mu.Lock()
		budget := time.Until(k.deadline) // a renewal is worth trying only while the lease may hold
		k.mu.Unlock()
		if k.client.timeout > 0 {
			budget = min(budget, k.client.timeout)
		}
		ctx, cancel := context.WithTimeout(k.ctx, max(budget, minRenewInterval))
		call, err := k.client.ExtendCall(ctx, &callqosv1.ExtendCallRequest{Name: k.name})
		cancel()
		if err == nil {
			k.mu.Lock()
			k.call, k.renewals = call, k.renewals+1
			k.deadline = sent.Add(call.GetLeaseDuration().AsDuration())
			k.mu.Unlock()
			pause = k.interval
			continue
		}
		if k.ctx.Err() != nil {
			return // closed meanwhile
		}
		code := status.Code(err)
		if code != codes.Unavailable && code != codes.DeadlineExceeded {
			k.lose("the lease could not be renewed", err)
			return
		}
		k.mu.Lock()
		remaining := time.Until(k.deadline)
		k.mu.Unlock()
		if remaining <= 0 {
			k.lose("no renewal got through before the lease ended", err)
			return
		}
		pause = max(minRenewInterval, min(k.interval, remaining/4))
	}
}

func (k *KeepAlive) lose(why string, cause error) {
	lost := &LeaseLostError{Call: k.name, Cause: cause, why: why}
	k.mu.Lock()
	k.err = lost
	k.mu.Unlock()
	close(k.lost)
	k.cancel(lost)
}

// Close stops renewing and, unless made WithoutDrop, drops the call (a drop that fails is
// ignored: the call ends with its lease anyway). It returns the *LeaseLostError if the lease
// was lost, else nil. Safe to call more than once.
func (k *KeepAlive) Close() error {
	k.once.Do(func() {
		close(k.stop)
		<-k.done
		k.cancel(errors.New("callqos: keep-alive closed"))
		if k.drop {
			ctx, cancel := context.WithTimeout(context.Background(), DefaultTimeout)
			defer cancel()
			if call, err := k.client.DropCall(ctx, k.name); err == nil {
				k.mu.Lock()
				k.call = call
				k.mu.Unlock()
			}
		}
	})
	return k.Err()
}
