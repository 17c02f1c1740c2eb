package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestDaemonErrorsKeepTheirIdentity(t *testing.T) {
	for _, c := range []struct {
		err     error
		code    uint
		details string
	}{
		{&daemonError{Code: 7, Name: "range_exhausted", Message: "failed to find free IP in range: A - B"}, 107, "ipamd error range_exhausted (7)"},
		{&daemonError{Code: 5, Name: "address_in_use"}, 105, "ipamd error address_in_use (5)"},
		{&daemonError{Code: 10, Name: "permission_denied"}, 110, "ipamd error permission_denied (10)"},
		// The name decides; a name this plugin does not know keeps the daemon's code.
		{&daemonError{Code: 99, Name: "lease_not_found"}, 108, "ipamd error lease_not_found (8)"},
		{&daemonError{Code: 42, Name: "from_a_newer_daemon"}, 142, "ipamd error from_a_newer_daemon (42)"},
		{&daemonError{Code: -3, Name: "odd"}, 100, "ipamd error odd (-3)"},
		// unavailable means what the spec's 11 means.
		{&daemonError{Code: 11, Name: "unavailable", Message: "shutting down"}, 11, "ipamd error unavailable (11)"},
		{&connectionFailed{"cannot connect to ipamd at /x.sock: no such file or directory"}, 11, "is the ipamd daemon running?"},
		{errors.New("ipamd's result does not name network n"), 999, ""},
		{types.NewError(150, "mismatch", ""), 150, ""},
	} {
		got := toCNIError(c.err)
		if got.Code != c.code || got.Details != c.details {
			t.Errorf("%#v: got %d %q, want %d %q", c.err, got.Code, got.Details, c.code, c.details)
		}
	}
	if msg := toCNIError(errors.New("boom")).Msg; msg != "ipamd-cni failed: boom" {
		t.Errorf("internal error message %q", msg)
	}
}

func TestTheErrorJSONCarriesTheCallsVersion(t *testing.T) {
	var out bytes.Buffer
	printError(&out, "0.4.0", types.NewError(107, "failed to find free IP in range: A - B", "ipamd error range_exhausted (7)"))
	var got map[string]interface{}
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]interface{}{
		"cniVersion": "0.4.0", "code": 107.0,
		"msg": "failed to find free IP in range: A - B", "details": "ipamd error range_exhausted (7)",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s, want %v", out.Bytes(), want)
	}
	out.Reset()
	printError(&out, "1.1.0", types.NewError(4, "bad", ""))
	if bytes.Contains(out.Bytes(), []byte("details")) {
		t.Fatalf("empty details printed: %s", out.Bytes())
	}
}

func TestAPanickingCommandStillAnswersWithTheErrorJSON(t *testing.T) {
	saved := getenv
	defer func() { getenv = saved }()
	getenv = func(k string) string { return map[string]string{"CNI_COMMAND": "VERSION"}[k] }
	var out bytes.Buffer
	if status := run(panickingReader{}, &out); status != 1 {
		t.Fatalf("status %d", status)
	}
	var got map[string]interface{}
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("%s: %v", out.Bytes(), err)
	}
	if got["code"] != 999.0 || got["msg"] != "ipamd-cni failed: stdin exploded" {
		t.Fatalf("%v", got)
	}
}

type panickingReader struct{}

func (panickingReader) Read([]byte) (int, error) { panic("stdin exploded") }
