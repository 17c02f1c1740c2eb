// The exec-time split the benchmarks print: with IPAMD_CNI_TIMING set, the plugin
// writes one line to stderr at exit, the CLOCK_MONOTONIC nanoseconds of main's
// start, config parsed, connected, and the last reply:
//
//	ipamd-cni timing: start=N parsed=N connected=N replied=N
//
// A benchmark that reads the same clock before it spawns the plugin and after it
// reaps it then knows process start, config parse, connect, RPC and exit apart.
// Unset (as a runtime runs it), it costs one getenv.
package main

import (
	"fmt"
	"io"
	"syscall"
	"unsafe"
)

const timingEnv = "IPAMD_CNI_TIMING"

type timeMarks struct {
	on                                 bool
	startNs, parsedNs, connNs, replyNs int64
}

var marks timeMarks

// monotonicNs reads CLOCK_MONOTONIC, the clock Python's time.monotonic_ns reads.
func monotonicNs() int64 {
	var ts syscall.Timespec
	const clockMonotonic = 1
	_, _, _ = syscall.Syscall(syscall.SYS_CLOCK_GETTIME, clockMonotonic, uintptr(unsafe.Pointer(&ts)), 0)
	return ts.Nano()
}

func (m *timeMarks) start() {
	if m.on = getenv(timingEnv) != ""; m.on {
		m.startNs = monotonicNs()
	}
}

func (m *timeMarks) parsed() {
	if m.on {
		m.parsedNs = monotonicNs()
	}
}

func (m *timeMarks) connected() {
	if m.on {
		m.connNs = monotonicNs()
	}
}

func (m *timeMarks) replied() {
	if m.on {
		m.replyNs = monotonicNs()
	}
}

func (m *timeMarks) report(w io.Writer) {
	if m.on {
		fmt.Fprintf(w, "ipamd-cni timing: start=%d parsed=%d connected=%d replied=%d\n",
			m.startNs, m.parsedNs, m.connNs, m.replyNs)
	}
}
