// ipamd-cni: the CNI IPAM plugin that gets its addresses from the ipamd daemon.
//
// A runtime execs it once per command (CNI spec 1.1) with the call in the
// environment and the network config on stdin; install it on the runtime's CNI
// path under the name `ipamd`. ADD, DEL and CHECK go through libcni's skel
// (environment, config name, CNI_CONTAINERID, CNI_IFNAME and version checks);
// GC, STATUS and VERSION, which libcni 1.1.2's skel does not know (or answers
// only in 1.0.0), are dispatched here with the same checks.
//
// Every failure is the spec's error JSON on stdout, carrying the call's
// cniVersion, and exit status 1 (errors.go says how ipamd's errors map).
package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

var getenv = os.Getenv

// replyVersion is the cniVersion errors carry: the call's, once it is known.
var replyVersion = latestVersion

// pluginVersion is ipamd's (pyproject.toml); tests/cni checks that they agree.
const pluginVersion = "0.1.0"

var commands = map[string]bool{"ADD": true, "DEL": true, "CHECK": true, "GC": true, "STATUS": true, "VERSION": true}

func main() {
	marks.start()
	status := run(os.Stdin, os.Stdout)
	marks.report()
	os.Exit(status)
}

// run carries out one CNI call; the exit status.
func run(stdin io.Reader, out io.Writer) (status int) {
	defer func() { // a bug still owes the runtime an error it can read
		if bug := recover(); bug != nil {
			printError(out, replyVersion, types.NewError(types.ErrInternal, fmt.Sprintf("ipamd-cni failed: %v", bug), ""))
			status = 1
		}
	}()
	if err := dispatch(readEnvironment(getenv), stdin, out); err != nil {
		printError(out, replyVersion, err)
		return 1
	}
	return 0
}

func dispatch(env environment, stdin io.Reader, out io.Writer) *types.Error {
	if env == (environment{}) {
		// Run by hand, with no CNI variable at all: say what this is, as host-local
		// does. (A runtime that sets the others but not CNI_COMMAND gets an error.)
		fmt.Fprintf(os.Stderr, "CNI ipamd plugin version %s; supported CNI versions: %s\n",
			pluginVersion, strings.Join(supportedVersions, ", "))
		return nil
	}
	switch env.command {
	case "ADD", "DEL", "CHECK":
		add := func(args *skel.CmdArgs) error {
			return withCall("ADD", args, func(call *invocation) error { return cmdAdd(call, out) })
		}
		del := func(args *skel.CmdArgs) error { return withCall("DEL", args, cmdDel) }
		check := func(args *skel.CmdArgs) error { return withCall("CHECK", args, cmdCheck) }
		return skel.PluginMainWithError(add, check, del, version.PluginSupports(supportedVersions...), "")
	case "GC", "STATUS", "VERSION":
		data, err := io.ReadAll(stdin)
		if err != nil {
			return cniError(types.ErrIOFailure, "error reading from stdin: %v", err)
		}
		if env.command == "VERSION" {
			info, e := versionInfo(data)
			if e != nil {
				return e
			}
			printJSON(out, info)
			return nil
		}
		if e := checkEnvironment(env, data); e != nil {
			return e
		}
		call, e := parse(env.command, env, data)
		if e != nil {
			return e
		}
		run := map[string]func(*invocation) error{"GC": cmdGC, "STATUS": cmdStatus}[env.command]
		if err := run(call); err != nil {
			return toCNIError(err)
		}
		return nil
	}
	return cniError(types.ErrInvalidEnvironmentVariables,
		"CNI_COMMAND must be one of ADD, DEL, CHECK, GC, STATUS, VERSION, got %q", env.command)
}

// withCall parses skel's arguments and runs fn; failures leave as *types.Error.
func withCall(command string, args *skel.CmdArgs, fn func(*invocation) error) error {
	env := environment{
		command: command, containerID: args.ContainerID, netns: args.Netns,
		ifName: args.IfName, args: args.Args, path: args.Path,
	}
	call, e := parse(command, env, args.StdinData)
	if e != nil {
		return e
	}
	if err := fn(call); err != nil {
		return toCNIError(err)
	}
	return nil
}

// parse reads the call, and from then on errors carry its cniVersion.
func parse(command string, env environment, stdin []byte) (*invocation, *types.Error) {
	if v, err := requestedVersion(stdin); err == nil {
		replyVersion = v
	}
	return readInvocation(command, env, stdin)
}
