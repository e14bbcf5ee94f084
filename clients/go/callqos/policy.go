package callqos

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
)

// policyFile is a copy of clients/service_config.json, the retry and resume policy all four
// callqos clients share (clients/README.md explains it). `make generate` copies it here and
// `make check-generated` fails when the copy drifts. Its serviceConfig part is a gRPC service
// config, given to grpc.WithDefaultServiceConfig as it is; its watchResume part is the
// Watcher's ResumePolicy, which gRPC never sees.
//
//go:embed service_config.json
var policyFile []byte

type policyParts struct {
	ServiceConfig json.RawMessage `json:"serviceConfig"`
	WatchResume   struct {
		InitialBackoff       string   `json:"initialBackoff"`
		MaxBackoff           string   `json:"maxBackoff"`
		BackoffMultiplier    float64  `json:"backoffMultiplier"`
		HealthyAfter         string   `json:"healthyAfter"`
		GiveUpAfter          string   `json:"giveUpAfter"`
		ResumableStatusCodes []string `json:"resumableStatusCodes"`
	} `json:"watchResume"`
}

// serviceConfig is the gRPC service config: which methods the channel retries, how often, on
// which codes (only UNAVAILABLE). CreateCall and RenegotiateCall are among them because every
// one the Client sends carries a request_id (see withRequestIDs).
var serviceConfig string

// defaultResume is DefaultResumePolicy's value.
var defaultResume ResumePolicy

func init() {
	var p policyParts
	if err := json.Unmarshal(policyFile, &p); err != nil {
		panic(fmt.Sprintf("callqos: service_config.json: %v", err))
	}
	serviceConfig = string(p.ServiceConfig)
	r := p.WatchResume
	defaultResume = ResumePolicy{
		InitialBackoff: mustDuration(r.InitialBackoff),
		MaxBackoff:     mustDuration(r.MaxBackoff),
		Multiplier:     r.BackoffMultiplier,
		HealthyAfter:   mustDuration(r.HealthyAfter),
		GiveUpAfter:    mustDuration(r.GiveUpAfter),
	}
	for _, name := range r.ResumableStatusCodes {
		var c codes.Code
		// codes.Code unmarshals the quoted upper-case names gRPC service configs use.
		if err := c.UnmarshalJSON([]byte(`"` + name + `"`)); err != nil {
			panic(fmt.Sprintf("callqos: service_config.json: %v", err))
		}
		defaultResume.ResumableCodes = append(defaultResume.ResumableCodes, c)
	}
}

// mustDuration reads a protobuf JSON duration ("0.1s", "60s") as the service config writes them.
func mustDuration(s string) time.Duration {
	if !strings.HasSuffix(s, "s") {
		panic(fmt.Sprintf("callqos: service_config.json: %q is not a duration", s))
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		panic(fmt.Sprintf("callqos: service_config.json: %v", err))
	}
	return d
}
