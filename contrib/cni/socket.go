// A blocking Unix stream socket on bare system calls, with deadlines.
//
// Why not package net: its sockets are non-blocking and wait in the runtime's
// network poller, which a process that makes one connection and two calls
// pays to set up (an epoll instance, its wake-up descriptor, a registration)
// on every exec. Here connect, write and read block in the kernel; the
// remaining time to the deadline goes into SO_SNDTIMEO / SO_RCVTIMEO before
// each, and an expired one comes back as errTimeout. (Linux honours
// SO_SNDTIMEO in connect(2) on Unix sockets, when the listener's backlog is full.)
package main

import (
	"errors"
	"io"
	"syscall"
	"time"
)

var errTimeout = errors.New("timed out")

type unixSocket struct {
	fd       int
	deadline time.Time
}

func connectUnix(path string, timeout time.Duration) (*unixSocket, error) {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	s := &unixSocket{fd: fd, deadline: time.Now().Add(timeout)}
	if err := s.arm(syscall.SO_SNDTIMEO); err != nil {
		s.close()
		return nil, err
	}
	for {
		err = syscall.Connect(fd, &syscall.SockaddrUnix{Name: path})
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		s.close()
		if err == syscall.EAGAIN || err == syscall.EINPROGRESS || err == syscall.ETIMEDOUT {
			return nil, errTimeout
		}
		return nil, err
	}
	return s, nil
}

func (s *unixSocket) close() { _ = syscall.Close(s.fd) }

// arm sets the socket timeout `option` to what is left until the deadline.
func (s *unixSocket) arm(option int) error {
	left := time.Until(s.deadline)
	if left <= 0 {
		return errTimeout
	}
	tv := syscall.NsecToTimeval(left.Nanoseconds())
	if tv.Sec == 0 && tv.Usec == 0 {
		tv.Usec = 1 // zero would mean no timeout at all
	}
	return syscall.SetsockoptTimeval(s.fd, syscall.SOL_SOCKET, option, &tv)
}

// writeAll sends p whole; EPIPE comes back as an error, never as SIGPIPE.
func (s *unixSocket) writeAll(p []byte) error {
	for len(p) > 0 {
		if err := s.arm(syscall.SO_SNDTIMEO); err != nil {
			return err
		}
		n, err := syscall.SendmsgN(s.fd, p, nil, nil, syscall.MSG_NOSIGNAL)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return errTimeout
		case err != nil:
			return err
		}
		p = p[n:]
	}
	return nil
}

// Read is io.Reader's: io.EOF once the daemon closed its side.
func (s *unixSocket) Read(p []byte) (int, error) {
	if err := s.arm(syscall.SO_RCVTIMEO); err != nil {
		return 0, err
	}
	for {
		n, err := syscall.Read(s.fd, p)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return 0, errTimeout
		case err != nil:
			return 0, err
		case n == 0:
			return 0, io.EOF
		}
		return n, nil
	}
}
