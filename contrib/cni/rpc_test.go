package main

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// fakeDaemon listens on a Unix socket and hands each connection's first request
// to serve, which answers (or misbehaves) as the test needs. The real daemon is
// exercised by tests/cni/; this is for the failures it cannot produce on demand.
func fakeDaemon(t *testing.T, serve func(conn net.Conn, msgid uint32)) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ipamd.sock")
	listener, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { listener.Close() })
	go func() {
		for {
			conn, err := listener.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				dec := msgpack.NewDecoder(conn)
				if n, err := dec.DecodeArrayLen(); err != nil || n != 4 {
					return
				}
				_, _ = dec.DecodeInt()
				msgid, err := dec.DecodeUint32()
				if err != nil {
					return
				}
				serve(conn, msgid)
			}()
		}
	}()
	return path
}

func reply(t *testing.T, conn net.Conn, frame ...interface{}) {
	data, err := msgpack.Marshal(frame)
	if err != nil {
		t.Error(err)
	}
	_, _ = conn.Write(data)
}

func callOnce(t *testing.T, path string, timeout time.Duration, result interface{}) error {
	t.Helper()
	c, err := dial(path)
	if err != nil {
		return err
	}
	defer c.close()
	c.timeout = timeout
	return c.call("ping", map[string]string{}, result)
}

func wantFailure(t *testing.T, err error, kind string, inMsg string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %s containing %q", kind, inMsg)
	}
	switch kind {
	case "connection":
		if _, ok := err.(*connectionFailed); !ok {
			t.Fatalf("%T %v, want *connectionFailed", err, err)
		}
	case "daemon":
		if _, ok := err.(*daemonError); !ok {
			t.Fatalf("%T %v, want *daemonError", err, err)
		}
	}
	if !strings.Contains(err.Error(), inMsg) {
		t.Fatalf("%q does not contain %q", err.Error(), inMsg)
	}
}

func TestAReplyDecodesIntoTheResult(t *testing.T) {
	path := fakeDaemon(t, func(conn net.Conn, msgid uint32) {
		reply(t, conn, 1, msgid, nil, map[string]interface{}{"version": "0.1.0", "uptime_s": 1.5})
	})
	var result struct {
		Version string `msgpack:"version"`
	}
	if err := callOnce(t, path, time.Second, &result); err != nil || result.Version != "0.1.0" {
		t.Fatalf("%v %+v", err, result)
	}
}

func TestTheDaemonsErrorsAndFailuresAreToldApart(t *testing.T) {
	for _, c := range []struct {
		name  string
		serve func(net.Conn, uint32)
		kind  string
		inMsg string
	}{
		{"error reply", func(conn net.Conn, msgid uint32) {
			reply(t, conn, 1, msgid, map[string]interface{}{"code": 7, "name": "range_exhausted", "message": "failed to find free IP in range: A - B"}, nil)
		}, "daemon", "failed to find free IP in range: A - B"},
		{"verdict on msgid 0", func(conn net.Conn, _ uint32) {
			reply(t, conn, 1, 0, map[string]interface{}{"code": 13, "name": "request_too_large", "message": "frame too large"}, nil)
		}, "daemon", "frame too large"},
		{"hang-up", func(net.Conn, uint32) {}, "connection", "closed the connection with 1 call(s) unanswered"},
		{"hang-up mid-reply", func(conn net.Conn, _ uint32) { _, _ = conn.Write([]byte{0x94, 0x01}) }, "connection", "closed the connection in the middle of a reply"},
		{"another msgid", func(conn net.Conn, msgid uint32) { reply(t, conn, 1, msgid+5, nil, nil) }, "connection", "which no call is waiting for"},
		{"not a response", func(conn net.Conn, msgid uint32) { reply(t, conn, 2, "hello", []int{}) }, "connection", "sent a bad frame"},
		{"silence", func(conn net.Conn, _ uint32) { time.Sleep(time.Second) }, "connection", "did not answer within 100ms"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := callOnce(t, fakeDaemon(t, c.serve), 100*time.Millisecond, nil)
			wantFailure(t, err, c.kind, c.inMsg)
		})
	}
}

func TestNoDaemonNamesTheSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "none.sock")
	_, err := dial(path)
	wantFailure(t, err, "connection", "cannot connect to ipamd at "+path+": no such file or directory")
}
