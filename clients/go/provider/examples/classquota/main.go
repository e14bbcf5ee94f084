// Command classquota is an example callqos provider written in Go: admission control on one
// link with a quota per service class, the way DiffServ networks cap each class at a share of
// the link. CONTROLLED_LOAD flows may take at most one share of the link and GUARANTEED flows
// another (each direction counted on its own), all of them together never more than the link.
// By default each share is the whole link: a share below 1 refuses requests the link could
// carry, which the callqos contract forbids (conformance/SPEC.md ADMIT-5: what fits is
// admitted), so a capped provider is not conformant and callqos-conformance says so.
// A GUARANTEED flow is admitted only if the RFC 2212 delay bound over the link fits its latency;
// NETWORK_CONTROL is refused by policy. The link is resizable (UpdateLink): the class quotas
// follow it, and calls that no longer fit are degraded (IF_AVAILABLE) or dropped (NEEDED),
// newest first, and reported to the server.
//
// A callqos server launches it:
//
//	[providers.classquota]
//	plugin = "remote"
//	command = ["/path/to/classquota", "-capacity", "10000000"]
//
// and callqos-conformance certifies it:
//
//	callqos-conformance --provider-command ./classquota
package main

import (
	"flag"

	"github.com/callqos/callqos/clients/go/provider"
)

func main() {
	quota := &Quota{}
	flag.Uint64Var(&quota.Capacity, "capacity", 2_000_000, "the link's capacity, bytes/s in each direction")
	flag.Float64Var(&quota.ControlledLoadShare, "controlled-load-share", 1, "the share of the link CONTROLLED_LOAD flows may take (below 1: not conformant, ADMIT-5)")
	flag.Float64Var(&quota.GuaranteedShare, "guaranteed-share", 1, "the share of the link GUARANTEED flows may take (below 1: not conformant, ADMIT-5)")
	flag.UintVar(&quota.MTU, "mtu", 1500, "the link's largest packet, bytes")
	flag.UintVar(&quota.ErrorTermC, "error-term-c", 3000, "RFC 2212 rate-dependent error term Ctot of the path, bytes")
	flag.UintVar(&quota.ErrorTermD, "error-term-d", 500, "RFC 2212 rate-independent error term Dtot of the path, microseconds")
	flag.UintVar(&quota.PathLatency, "path-latency", 1000, "the path's fixed latency (RFC 2215 MINIMUM_PATH_LATENCY), microseconds")
	provider.Main(quota) // parses the flags above too, then serves until stopped
}
