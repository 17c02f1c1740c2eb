// The exec-time split the benchmarks print. With IPAMD_CNI_TIMING naming a
// file, the plugin appends one line to it at exit: the command, the container
// and the CLOCK_MONOTONIC nanoseconds of main's start, config parsed,
// connected, and the last reply:
//
//	ADD ctr-1 start=N parsed=N connected=N replied=N
//
// A benchmark that reads the same clock before it spawns the plugin and after it
// reaps it then knows process start, config parse, connect, RPC and exit apart.
// A file, not stderr: a second pipe to read would wake the benchmark once more
// per exec, inside the time it measures. Unset (as a runtime runs it), it costs
// one getenv.
package main

import (
	"fmt"
	"os"
	"syscall"
	"unsafe"
)

const timingEnv = "IPAMD_CNI_TIMING"

type timeMarks struct {
	path                               string
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
	if m.path = getenv(timingEnv); m.path != "" {
		m.startNs = monotonicNs()
	}
}

func (m *timeMarks) parsed() {
	if m.path != "" {
		m.parsedNs = monotonicNs()
	}
}

func (m *timeMarks) connected() {
	if m.path != "" {
		m.connNs = monotonicNs()
	}
}

func (m *timeMarks) replied() {
	if m.path != "" {
		m.replyNs = monotonicNs()
	}
}

// report appends the line; a benchmark's file that cannot be written is its problem.
func (m *timeMarks) report() {
	if m.path == "" {
		return
	}
	f, err := os.OpenFile(m.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return
	}
	fmt.Fprintf(f, "%s %s start=%d parsed=%d connected=%d replied=%d\n", getenv("CNI_COMMAND"),
		getenv("CNI_CONTAINERID"), m.startNs, m.parsedNs, m.connNs, m.replyNs)
	_ = f.Close()
}
