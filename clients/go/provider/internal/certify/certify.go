// Package certify builds the provider program in the current directory and certifies it with
// the conformance suite, as a provider's developer would:
//
//	callqos-conformance --provider-command ./my-provider
//
// The suite is $CALLQOS_CONFORMANCE, else the repository's .venv/bin/callqos-conformance (made
// by `make venv` at the top); without either the test is skipped.
package certify

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Conformant fails t unless the provider built from the current directory is certified
// conformant.
func Conformant(t *testing.T) {
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
	out, err := exec.Command(suite, "--provider-command", binary, "--output-dir", reports).CombinedOutput()
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
	if report.Verdict != "conformant" {
		t.Fatalf("verdict %q\n%s", report.Verdict, out)
	}
	t.Logf("conformant:\n%s", out)
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
