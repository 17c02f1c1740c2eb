// How failures become the CNI error JSON: {"cniVersion", "code", "msg", "details"?}.
//
// ipamd's errors keep their identity: CNI code = 100 + ipamd's error code
// (DESIGN.md section 4), and details name the ipamd error. The one exception is
// ipamd's `unavailable`, which means what the spec's 11 (try again later) means,
// as does a daemon that cannot be reached.
package main

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/containernetworking/cni/pkg/types"
)

const (
	ipamdErrorBase = 100 // CNI code = 100 + ipamd's error code
	checkMismatch  = 150 // the plugin's own: the lease is not what prevResult says
)

// ipamd's error names and codes (DESIGN.md section 4). A reply names its error;
// the name decides, as in the Python client, and an unknown name keeps the code
// the daemon sent (a newer daemon).
var ipamdCodes = map[string]int64{
	"invalid_request":         1,
	"unknown_method":          2,
	"network_not_found":       3,
	"network_exists":          4,
	"address_in_use":          5,
	"address_not_allocatable": 6,
	"range_exhausted":         7,
	"lease_not_found":         8,
	"network_in_use":          9,
	"permission_denied":       10,
	"unavailable":             11,
	"storage_error":           12,
	"request_too_large":       13,
}

const ipamdUnavailable = 11

// code is the ipamd error code: by name when the name is known, else as sent.
func (e *daemonError) code() int64 {
	if code, ok := ipamdCodes[e.Name]; ok {
		return code
	}
	return e.Code
}

// is reports whether e is the ipamd error called name.
func (e *daemonError) is(name string) bool { return e.code() == ipamdCodes[name] }

// toCNIError turns any failure of a command into the spec's error.
func toCNIError(err error) *types.Error {
	switch e := err.(type) {
	case *types.Error:
		return e
	case *connectionFailed:
		return types.NewError(types.ErrTryAgainLater, e.message, "is the ipamd daemon running?")
	case *daemonError:
		code := e.code()
		details := fmt.Sprintf("ipamd error %s (%d)", e.Name, code)
		if code == ipamdUnavailable {
			return types.NewError(types.ErrTryAgainLater, e.Message, details)
		}
		if code < 0 {
			code = 0
		}
		return types.NewError(uint(ipamdErrorBase+code), e.Message, details)
	}
	return types.NewError(types.ErrInternal, "ipamd-cni failed: "+err.Error(), "")
}

// errorJSON is the spec's error object, with the cniVersion of the call.
type errorJSON struct {
	CNIVersion string `json:"cniVersion"`
	*types.Error
}

func printError(out io.Writer, cniVersion string, e *types.Error) {
	printJSON(out, errorJSON{cniVersion, e})
}

func printJSON(out io.Writer, v interface{}) {
	data, err := json.MarshalIndent(v, "", "    ")
	if err != nil { // only our own types get here: a bug
		data = []byte(fmt.Sprintf(`{"code": %d, "msg": "ipamd-cni cannot encode its output"}`, types.ErrInternal))
	}
	_, _ = out.Write(append(data, '\n'))
}
