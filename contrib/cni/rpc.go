// The plugin's side of ipamd's msgpack-RPC (DESIGN.md section 4), one call at a time.
//
// Rules it keeps (the same as the Python blocking client, ipamd/client/sync.py):
//   - Requests are [0, msgid, method, [params]]; replies [1, msgid, error, result].
//     msgids count up from 1; a reply on msgid 0 is the daemon's verdict on the
//     connection (a frame it could not read), raised as that daemon error.
//   - Connecting has its own timeout (connectTimeout); each call has one deadline,
//     callTimeout from its start, over sending and receiving (socket.go).
//   - Not reaching the daemon, or losing it mid-call, is a *connectionFailed whose
//     message names the socket; the daemon's error replies are *daemonError. It
//     never retries by itself: alloc and release are idempotent, the runtime may.
package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

const (
	connectTimeout = 5 * time.Second
	callTimeout    = 30 * time.Second
	// After a failed send, how long to wait for the daemon's last word (why it hung up).
	lastWordTimeout = time.Second
	socketEnv       = "IPAMD_SOCKET"
	socketName      = "ipamd.sock"
	systemSocket    = "/run/ipamd/" + socketName
)

// daemonError is an error reply of ipamd: {"code", "name", "message"}.
type daemonError struct {
	Code    int64  `msgpack:"code"`
	Name    string `msgpack:"name"`
	Message string `msgpack:"message"`
}

func (e *daemonError) Error() string { return e.Message }

// connectionFailed means no answer could be had from the daemon: no socket,
// refused, gone mid-call, timed out, or a peer that does not speak ipamd's protocol.
type connectionFailed struct{ message string }

func (e *connectionFailed) Error() string { return e.message }

// discoverSocket is the config's socket if given, else $IPAMD_SOCKET, else the
// daemon's default (DESIGN.md section 6): /run/ipamd as root, else under
// $XDG_RUNTIME_DIR, else /tmp/ipamd-UID; and, as ipamd.client does, the system
// socket after all when that per-user one does not exist and the system one does.
func discoverSocket(explicit string, getenv func(string) string) string {
	if explicit != "" {
		return explicit
	}
	if fromEnv := getenv(socketEnv); fromEnv != "" {
		return fromEnv
	}
	uid := os.Geteuid()
	if uid == 0 {
		return systemSocket
	}
	own := filepath.Join("/tmp/ipamd-"+strconv.Itoa(uid), socketName)
	if runtime := getenv("XDG_RUNTIME_DIR"); runtime != "" {
		own = filepath.Join(runtime, "ipamd", socketName)
	}
	if !exists(own) && exists(systemSocket) {
		return systemSocket
	}
	return own
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// client is one connection to the daemon.
type client struct {
	path    string
	sock    *unixSocket
	reader  *bufio.Reader
	enc     *msgpack.Encoder
	dec     *msgpack.Decoder
	out     writeBuffer
	nextID  uint32
	timeout time.Duration
}

// writeBuffer collects one request so that it leaves in one write.
type writeBuffer struct{ bytes []byte }

func (b *writeBuffer) Write(p []byte) (int, error) {
	b.bytes = append(b.bytes, p...)
	return len(p), nil
}

func dial(path string) (*client, error) {
	sock, err := connectUnix(path, connectTimeout)
	if err == errTimeout {
		return nil, &connectionFailed{fmt.Sprintf(
			"timed out after %v connecting to ipamd at %s", connectTimeout, path)}
	}
	if err != nil {
		return nil, &connectionFailed{fmt.Sprintf("cannot connect to ipamd at %s: %v", path, err)}
	}
	c := &client{path: path, sock: sock, nextID: 1, timeout: callTimeout}
	c.reader = bufio.NewReaderSize(sock, 16<<10)
	c.enc = msgpack.NewEncoder(&c.out)
	c.dec = msgpack.NewDecoder(c.reader)
	return c, nil
}

func (c *client) close() { c.sock.close() }

// call sends one request and decodes its result into result (nil: skip it).
func (c *client) call(method string, params interface{}, result interface{}) error {
	msgid := c.nextID
	c.nextID++
	c.out.bytes = c.out.bytes[:0]
	if err := c.enc.EncodeArrayLen(4); err != nil {
		return err
	}
	_ = c.enc.EncodeUint(0)
	_ = c.enc.EncodeUint(uint64(msgid))
	_ = c.enc.EncodeString(method)
	_ = c.enc.EncodeArrayLen(1)
	if err := c.enc.Encode(params); err != nil {
		return fmt.Errorf("cannot encode %s params: %w", method, err)
	}
	c.sock.deadline = time.Now().Add(c.timeout)
	if err := c.sock.writeAll(c.out.bytes); err != nil {
		// The daemon may have hung up with a reason (a frame over its limit): read it.
		c.sock.deadline = time.Now().Add(lastWordTimeout)
		var lastWord *daemonError
		if e := c.receive(msgid, nil); errors.As(e, &lastWord) {
			return lastWord
		}
		if err == errTimeout {
			return &connectionFailed{fmt.Sprintf(
				"ipamd at %s did not answer within %v", c.path, c.timeout)}
		}
		return &connectionFailed{fmt.Sprintf(
			"lost connection to ipamd at %s while sending: %v", c.path, err)}
	}
	return c.receive(msgid, result)
}

// receive reads the reply to msgid.
func (c *client) receive(msgid uint32, result interface{}) error {
	n, err := c.dec.DecodeArrayLen()
	if err != nil {
		return c.readFailed(err, true)
	}
	if n != 4 {
		return c.badFrame(fmt.Errorf("an array of %d items, not a response", n))
	}
	kind, err := c.dec.DecodeInt64()
	if err != nil {
		return c.readFailed(err, false)
	}
	if kind != 1 {
		return c.badFrame(fmt.Errorf("message type %d, not a response", kind))
	}
	id, err := c.dec.DecodeUint32()
	if err != nil {
		return c.readFailed(err, false)
	}
	var failure *daemonError
	if err := c.dec.Decode(&failure); err != nil {
		return c.readFailed(err, false)
	}
	if failure != nil || id != msgid {
		if err := c.dec.Skip(); err != nil {
			return c.readFailed(err, false)
		}
		if id == msgid || (id == 0 && failure != nil) {
			return failure
		}
		return &connectionFailed{fmt.Sprintf(
			"ipamd at %s answered msgid %d, which no call is waiting for", c.path, id)}
	}
	if result == nil {
		err = c.dec.Skip()
	} else {
		err = c.dec.Decode(result)
	}
	if err != nil {
		return c.readFailed(err, false)
	}
	return nil
}

func (c *client) readFailed(err error, atStart bool) error {
	var errno syscall.Errno
	switch {
	case errors.Is(err, errTimeout):
		return &connectionFailed{fmt.Sprintf(
			"ipamd at %s did not answer within %v", c.path, c.timeout)}
	case atStart && errors.Is(err, io.EOF):
		return &connectionFailed{fmt.Sprintf(
			"ipamd at %s closed the connection with 1 call(s) unanswered", c.path)}
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return &connectionFailed{fmt.Sprintf(
			"ipamd at %s closed the connection in the middle of a reply (%v)", c.path, err)}
	case errors.As(err, &errno):
		return &connectionFailed{fmt.Sprintf("lost connection to ipamd at %s: %v", c.path, errno)}
	}
	return c.badFrame(err)
}

func (c *client) badFrame(err error) error {
	return &connectionFailed{fmt.Sprintf("ipamd at %s sent a bad frame: %v", c.path, err)}
}
