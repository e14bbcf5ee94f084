// Package certify builds the provider program in the current directory and certifies it with
// the conformance suite, as a provider's developer would:
//
//	callqos-conformance --provider-command ./my-provider
//
// The suite is $CALLQOS_CONFORMANCE, else the repository's .venv/bin/callqos-conformance (made
// by `make venv` at the top); without either the test is skipped. It runs with a fixed seed and
// a fixed number of model-based histories (not a time budget), so a failure is reproduced by
// the flags its report prints, on any machine however busy.
package certify

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Seed and Histories are the run's --seed and --histories.
const (
	Seed      = "1"
	Histories = "10"
)

// Conformant fails t unless the provider built from the current directory is certified
// conformant. knownFailing lists checks the provider is known to fail for a reason outside it
// (--known-failing): the run is conformant only if exactly those fail, and fails once one passes.
func Conformant(t *testing.T, knownFailing ...string) {
	t.Helper()
	suite := suite()
	if suite == "" {
		t.Skip("callqos-conformance not found: set CALLQOS_CONFORMANCE or run `make venv` at the top of the repository")
	}
	dir := t.TempDir()
	binary := filepath.Join(dir, "provider")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	reports := filepath.Join(dir, "report")
	args := []string{"--provider-command", binary, "--seed", Seed, "--histories", Histories, "--output-dir", reports}
	if len(knownFailing) > 0 {
		args = append(args, "--known-failing", strings.Join(knownFailing, ","))
	}
	out, err := exec.Command(suite, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("callqos-conformance: %v\n%s", err, out)
	}
	raw, err := os.ReadFile(filepath.Join(reports, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var report struct {
		Verdict string `json:"verdict"`
	}
	if err := json.Unmarshal(raw, &report); err != nil {
		t.Fatal(err)
	}
	// Known failures keep the verdict honest (nonconformant); the exit status, 0 above, says that
	// nothing else failed and none of them passed.
	if report.Verdict != "conformant" && len(knownFailing) == 0 {
		t.Fatalf("verdict %q\n%s", report.Verdict, out)
	}
	t.Logf("%s:\n%s", report.Verdict, out)
}

func suite() string {
	if suite := os.Getenv("CALLQOS_CONFORMANCE"); suite != "" {
		return suite
	}
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for ; dir != filepath.Dir(dir); dir = filepath.Dir(dir) {
		candidate := filepath.Join(dir, ".venv", "bin", "callqos-conformance")
		if _, err := os.Stat(candidate); err == nil {
			return candidate
		}
	}
	return ""
}
