// What a CNI runtime hands the plugin, read and validated once (CNI spec 1.1).
//
// readInvocation turns the environment and the network config on stdin into an
// invocation, or fails with the spec's code: 4 for the environment, 6 for
// undecodable JSON, 1 for a cniVersion this plugin does not speak, 7 for an
// invalid config, 2 for a config ipamd cannot express, 5 for an unreadable
// resolvConf. Past that, the commands trust what they hold, as host-local trusts
// a canonicalised Range.
//
// The ipam section takes host-local's keys. Each range set becomes one ipamd
// subnet (ipamd holds one address per subnet), so a range set must hold exactly
// one range; the gateway defaults to the subnet's first address, as host-local's.
// No sockets here: the only I/O is reading resolvConf.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/containernetworking/cni/pkg/version"
)

// The spec's versions this plugin speaks; libcni 1.1.2 knows them up to 1.0.0,
// and a 1.1.0 IPAM result has the same shape as a 1.0.0 one.
var supportedVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

const latestVersion = "1.1.0"

// The spec's well-known error codes this plugin uses beyond libcni's constants.
const (
	statusUnavailable = 50 // STATUS: the plugin cannot serve ADDs (no daemon)
	statusLimited     = 51 // STATUS: some ADDs would fail (a subnet is full)
)

// The first cniVersion that defines each command; the others exist in all.
var sinceVersion = map[string]string{"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}

// Runtimes note these in CNI_ARGS; ipamd keeps them on the lease for people debugging.
var podArgs = [2]string{"K8S_POD_NAMESPACE", "K8S_POD_NAME"}

// ipamd's limit per lease attribute value.
const maxAttributeLen = 256

// subnet is one ipamd subnet of `network.create`; empty fields are left out.
type subnet struct {
	Subnet     string `msgpack:"subnet"`
	Gateway    string `msgpack:"gateway,omitempty"`
	RangeStart string `msgpack:"range_start,omitempty"`
	RangeEnd   string `msgpack:"range_end,omitempty"`
}

// attachment is an entry of GC's keep list, as ipamd's `gc` takes it.
type attachment struct {
	ContainerID string `msgpack:"container_id"`
	IfName      string `msgpack:"ifname,omitempty"`
}

// invocation is what one exec of the plugin was asked to do.
type invocation struct {
	command     string
	cniVersion  string
	network     string
	containerID string
	ifName      string
	subnets     []subnet // one per range set, in config order
	routes      []*types.Route
	dns         types.DNS
	socket      string // "" when the config names none
	staticIPs   []string
	attributes  map[string]string
	prevResult  *prevResult  // CHECK
	valid       []attachment // GC, from cni.dev/valid-attachments
}

// environment is what the runtime put in the process environment.
type environment struct {
	command, containerID, netns, ifName, args, path string
}

func readEnvironment(getenv func(string) string) environment {
	return environment{
		command:     getenv("CNI_COMMAND"),
		containerID: getenv("CNI_CONTAINERID"),
		netns:       getenv("CNI_NETNS"),
		ifName:      getenv("CNI_IFNAME"),
		args:        getenv("CNI_ARGS"),
		path:        getenv("CNI_PATH"),
	}
}

// netConf is the part of the network config this plugin reads. The loosely
// typed parts stay raw so that each can be refused with a message naming it.
type netConf struct {
	CNIVersion    string          `json:"cniVersion"`
	Name          string          `json:"name"`
	IPAM          json.RawMessage `json:"ipam"`
	Args          json.RawMessage `json:"args"`
	RuntimeConfig json.RawMessage `json:"runtimeConfig"`
	PrevResult    json.RawMessage `json:"prevResult"`
	Valid         json.RawMessage `json:"cni.dev/valid-attachments"`
}

type ipamConf struct {
	Socket     json.RawMessage   `json:"socket"`
	Ranges     json.RawMessage   `json:"ranges"`
	Routes     []json.RawMessage `json:"routes"`
	DNS        json.RawMessage   `json:"dns"`
	ResolvConf json.RawMessage   `json:"resolvConf"`
	// host-local's older single-range form, read as a first range set.
	Subnet     json.RawMessage `json:"subnet"`
	RangeStart json.RawMessage `json:"rangeStart"`
	RangeEnd   json.RawMessage `json:"rangeEnd"`
	Gateway    json.RawMessage `json:"gateway"`
}

// prevResult is what CHECK compares the lease with: the addresses of the ADD's result.
type prevResult struct {
	IPs []struct {
		Address string `json:"address"`
	} `json:"ips"`
}

func cniError(code uint, format string, args ...interface{}) *types.Error {
	return types.NewError(code, fmt.Sprintf(format, args...), "")
}

// requestedVersion is the config's cniVersion, if this plugin speaks it.
func requestedVersion(stdin []byte) (string, *types.Error) {
	v, err := (&version.ConfigDecoder{}).Decode(stdin)
	if err != nil {
		return "", types.NewError(types.ErrDecodingFailure, err.Error(), "")
	}
	for _, known := range supportedVersions {
		if v == known {
			return v, nil
		}
	}
	return "", types.NewError(types.ErrIncompatibleCNIVersion,
		fmt.Sprintf("cniVersion %q is not supported", v),
		"supported versions: "+strings.Join(supportedVersions, ", "))
}

// checkEnvironment is what skel checks for ADD, DEL and CHECK, done here for GC
// and STATUS, which libcni 1.1.2's skel does not know: the variables the command
// needs, then the config's name, CNI_CONTAINERID and CNI_IFNAME when given.
func checkEnvironment(env environment, stdin []byte) *types.Error {
	if env.path == "" {
		return cniError(types.ErrInvalidEnvironmentVariables, "required env variables [CNI_PATH] missing")
	}
	var conf struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(stdin, &conf); err != nil {
		return cniError(types.ErrDecodingFailure, "error unmarshall network config: %v", err)
	}
	if err := utils.ValidateNetworkName(conf.Name); err != nil {
		return err
	}
	if env.containerID != "" {
		if err := utils.ValidateContainerID(env.containerID); err != nil {
			return err
		}
	}
	if env.ifName != "" {
		if err := utils.ValidateInterfaceName(env.ifName); err != nil {
			return err
		}
	}
	return nil
}

// readInvocation validates the config of one call.
// REQUIRES: the environment checked (by skel, or checkEnvironment), command not VERSION.
func readInvocation(command string, env environment, stdin []byte) (*invocation, *types.Error) {
	cniArgs, err := parseCNIArgs(env.args)
	if err != nil {
		return nil, err
	}
	v, err := requestedVersion(stdin)
	if err != nil {
		return nil, err
	}
	if since, ok := sinceVersion[command]; ok {
		if later, _ := version.GreaterThanOrEqualTo(v, since); !later {
			return nil, types.NewError(types.ErrIncompatibleCNIVersion,
				fmt.Sprintf("cniVersion %s does not define %s (from %s)", v, command, since), "")
		}
	}
	var conf netConf
	if e := json.Unmarshal(stdin, &conf); e != nil {
		return nil, cniError(types.ErrDecodingFailure, "cannot decode the network config: %v", e)
	}
	call := &invocation{
		command:     command,
		cniVersion:  v,
		network:     conf.Name,
		containerID: env.containerID,
		ifName:      env.ifName,
		attributes:  map[string]string{},
	}
	if isNull(conf.IPAM) {
		return nil, cniError(types.ErrInvalidNetworkConfig, "the network config has no ipam section")
	}
	var ipam ipamConf
	if e := strictObject(conf.IPAM, &ipam); e != nil {
		return nil, cniError(types.ErrInvalidNetworkConfig, "invalid ipam section: %v", e)
	}
	if !isNull(ipam.Socket) {
		if e := json.Unmarshal(ipam.Socket, &call.socket); e != nil || call.socket == "" {
			return nil, cniError(types.ErrInvalidNetworkConfig, "ipam socket must be a path, got %s", ipam.Socket)
		}
	}
	if !isNull(conf.PrevResult) {
		call.prevResult = &prevResult{}
		if e := strictObject(conf.PrevResult, call.prevResult); e != nil {
			return nil, cniError(types.ErrInvalidNetworkConfig, "prevResult must be an object with ips: %v", e)
		}
	}
	if env.netns != "" {
		call.attributes["netns"] = truncate(env.netns, maxAttributeLen)
	}
	if ns, name := cniArgs[podArgs[0]], cniArgs[podArgs[1]]; ns != "" && name != "" {
		call.attributes["pod"] = truncate(ns+"/"+name, maxAttributeLen)
	}
	if call.subnets, err = readSubnets(&ipam); err != nil {
		return nil, err
	}
	if call.routes, err = readRoutes(ipam.Routes); err != nil {
		return nil, err
	}
	if call.dns, err = readDNS(&ipam); err != nil {
		return nil, err
	}
	if command == "ADD" {
		if call.staticIPs, err = readStaticIPs(&conf, cniArgs); err != nil {
			return nil, err
		}
	}
	if command == "GC" {
		if call.valid, err = readValidAttachments(conf.Valid); err != nil {
			return nil, err
		}
	}
	return call, nil
}

// -- the pieces -------------------------------------------------------------------------

// parseCNIArgs reads CNI_ARGS "K1=V1;K2=V2"; keys this plugin does not use are ignored.
func parseCNIArgs(raw string) (map[string]string, *types.Error) {
	out := map[string]string{}
	for _, pair := range strings.Split(raw, ";") {
		if pair == "" {
			continue
		}
		key, value, found := strings.Cut(pair, "=")
		if !found || key == "" {
			return nil, cniError(types.ErrInvalidEnvironmentVariables,
				"CNI_ARGS: invalid pair %q, want KEY=VALUE", pair)
		}
		out[key] = value
	}
	return out, nil
}

func readSubnets(ipam *ipamConf) ([]subnet, *types.Error) {
	var rangeSets []json.RawMessage
	if !isNull(ipam.Ranges) {
		if e := json.Unmarshal(ipam.Ranges, &rangeSets); e != nil {
			return nil, cniError(types.ErrInvalidNetworkConfig, "ipam ranges must be a list of range sets")
		}
	}
	if !isNull(ipam.Subnet) { // host-local's older single-range form, first as there
		legacy := map[string]json.RawMessage{"subnet": ipam.Subnet}
		for key, value := range map[string]json.RawMessage{
			"rangeStart": ipam.RangeStart, "rangeEnd": ipam.RangeEnd, "gateway": ipam.Gateway,
		} {
			if !isNull(value) {
				legacy[key] = value
			}
		}
		first, _ := json.Marshal([]interface{}{legacy})
		rangeSets = append([]json.RawMessage{first}, rangeSets...)
	}
	if len(rangeSets) == 0 {
		return nil, cniError(types.ErrInvalidNetworkConfig, "ipam needs ranges: a list of range sets")
	}
	subnets := make([]subnet, 0, len(rangeSets))
	for index, raw := range rangeSets {
		var ranges []json.RawMessage
		if e := json.Unmarshal(raw, &ranges); e != nil || len(ranges) == 0 {
			return nil, cniError(types.ErrInvalidNetworkConfig,
				"range set %d must be a non-empty list of ranges", index)
		}
		if len(ranges) > 1 {
			return nil, cniError(types.ErrUnsupportedField,
				"range set %d has %d ranges; ipamd-cni takes one range per range set"+
					" (ipamd holds one address per subnet)", index, len(ranges))
		}
		s, err := readSubnet(ranges[0], index)
		if err != nil {
			return nil, err
		}
		subnets = append(subnets, s)
	}
	return subnets, nil
}

// readSubnet turns one host-local range into an ipamd subnet.
func readSubnet(raw json.RawMessage, index int) (subnet, *types.Error) {
	var rng struct {
		Subnet     json.RawMessage `json:"subnet"`
		RangeStart json.RawMessage `json:"rangeStart"`
		RangeEnd   json.RawMessage `json:"rangeEnd"`
		Gateway    json.RawMessage `json:"gateway"`
	}
	if e := strictObject(raw, &rng); e != nil {
		return subnet{}, cniError(types.ErrInvalidNetworkConfig, "range set %d: a range must be an object", index)
	}
	var text string
	_ = json.Unmarshal(rng.Subnet, &text)
	ip, cidr, e := net.ParseCIDR(text)
	if e != nil {
		return subnet{}, cniError(types.ErrInvalidNetworkConfig,
			"range set %d: subnet %s is not a CIDR", index, orNull(rng.Subnet))
	}
	if !ip.Equal(cidr.IP) {
		// host-local's own words (range.go, Canonicalize), rather than a silent fix.
		ones, _ := cidr.Mask.Size()
		return subnet{}, cniError(types.ErrInvalidNetworkConfig,
			"range set %d: subnet %s: network has host bits set. For a subnet mask of length %d the network address is %s",
			index, text, ones, cidr.IP)
	}
	out := subnet{Subnet: cidr.String()}
	for _, field := range []struct {
		key  string
		raw  json.RawMessage
		dest *string
	}{
		{"gateway", rng.Gateway, &out.Gateway},
		{"rangeStart", rng.RangeStart, &out.RangeStart},
		{"rangeEnd", rng.RangeEnd, &out.RangeEnd},
	} {
		if isNull(field.raw) {
			continue
		}
		var value string
		_ = json.Unmarshal(field.raw, &value)
		address := net.ParseIP(value)
		if address == nil || !cidr.Contains(address) {
			return subnet{}, cniError(types.ErrInvalidNetworkConfig,
				"range set %d: %s %s is not an address in %s", index, field.key, field.raw, cidr)
		}
		*field.dest = address.String()
	}
	if out.Gateway == "" {
		if ones, bits := cidr.Mask.Size(); bits-ones > 1 { // more than two addresses
			gateway := make(net.IP, len(cidr.IP))
			copy(gateway, cidr.IP)
			gateway[len(gateway)-1]++ // host-local's default ".1"
			out.Gateway = gateway.String()
		}
	}
	return out, nil
}

func readRoutes(raws []json.RawMessage) ([]*types.Route, *types.Error) {
	routes := make([]*types.Route, 0, len(raws))
	for _, raw := range raws {
		route := &types.Route{}
		var keys map[string]json.RawMessage
		if json.Unmarshal(raw, &keys) != nil || isNull(keys["dst"]) || json.Unmarshal(raw, route) != nil {
			return nil, cniError(types.ErrInvalidNetworkConfig, "invalid route %s: want dst, gw?", raw)
		}
		routes = append(routes, route)
	}
	return routes, nil
}

// readDNS is `dns` as given, else what `resolvConf` names; empty when neither is set.
func readDNS(ipam *ipamConf) (types.DNS, *types.Error) {
	var dns types.DNS
	if !isNull(ipam.DNS) {
		if e := strictObject(ipam.DNS, &dns); e != nil {
			return dns, cniError(types.ErrInvalidNetworkConfig, "ipam dns must be an object: %v", e)
		}
		return dns, nil
	}
	if isNull(ipam.ResolvConf) {
		return dns, nil
	}
	var path string
	if json.Unmarshal(ipam.ResolvConf, &path) != nil {
		return dns, cniError(types.ErrInvalidNetworkConfig, "ipam resolvConf must be a path, got %s", ipam.ResolvConf)
	}
	text, e := os.ReadFile(path)
	if e != nil {
		return dns, cniError(types.ErrIOFailure, "cannot read resolvConf %s: %v", path, unwrapPathError(e))
	}
	return parseResolvConf(string(text)), nil
}

// parseResolvConf reads resolv.conf's nameserver, domain, search and options lines, as host-local.
func parseResolvConf(text string) types.DNS {
	var dns types.DNS
	for _, line := range strings.Split(text, "\n") {
		fields := strings.Fields(line)
		if len(fields) < 2 || strings.HasPrefix(fields[0], "#") || strings.HasPrefix(fields[0], ";") {
			continue
		}
		switch fields[0] {
		case "nameserver":
			dns.Nameservers = append(dns.Nameservers, fields[1])
		case "domain":
			dns.Domain = fields[1]
		case "search":
			dns.Search = fields[1:]
		case "options":
			dns.Options = append(dns.Options, fields[1:]...)
		}
	}
	return dns
}

// readStaticIPs collects the requested addresses from CNI_ARGS IP=, args.cni.ips
// and runtimeConfig.ips, in that order; each may carry a prefix ("10.1.0.5/24").
func readStaticIPs(conf *netConf, cniArgs map[string]string) ([]string, *types.Error) {
	var requested []json.RawMessage
	for _, ip := range strings.Split(cniArgs["IP"], ",") {
		if ip != "" {
			quoted, _ := json.Marshal(ip)
			requested = append(requested, quoted)
		}
	}
	for _, source := range []struct {
		name string
		raw  json.RawMessage
		path []string
	}{
		{"args.cni.ips", conf.Args, []string{"cni", "ips"}},
		{"runtimeConfig.ips", conf.RuntimeConfig, []string{"ips"}},
	} {
		value := dig(source.raw, source.path...)
		if isNull(value) {
			continue
		}
		var list []json.RawMessage
		if json.Unmarshal(value, &list) != nil {
			return nil, cniError(types.ErrInvalidNetworkConfig, "%s must be a list of addresses", source.name)
		}
		requested = append(requested, list...)
	}
	out := []string{}
	for _, raw := range requested {
		var text string
		_ = json.Unmarshal(raw, &text)
		address := parseAddress(strings.TrimSpace(text))
		if address == "" {
			return nil, cniError(types.ErrInvalidNetworkConfig, "requested IP %s is not an address", raw)
		}
		if !contains(out, address) {
			out = append(out, address)
		}
	}
	return out, nil
}

// readValidAttachments reads GC's keep list. It is required, so that a missing
// key never releases every lease.
func readValidAttachments(raw json.RawMessage) ([]attachment, *types.Error) {
	var entries []json.RawMessage
	if isNull(raw) || json.Unmarshal(raw, &entries) != nil {
		return nil, cniError(types.ErrInvalidNetworkConfig, "GC needs cni.dev/valid-attachments: a list")
	}
	out := make([]attachment, 0, len(entries))
	for _, entry := range entries {
		var a struct {
			ContainerID *string `json:"containerID"`
			IfName      *string `json:"ifname"`
		}
		if strictObject(entry, &a) != nil || a.ContainerID == nil || utils.ValidateContainerID(*a.ContainerID) != nil {
			return nil, cniError(types.ErrInvalidNetworkConfig, "invalid valid-attachments entry %s", entry)
		}
		keep := attachment{ContainerID: *a.ContainerID}
		if a.IfName != nil {
			if utils.ValidateInterfaceName(*a.IfName) != nil {
				return nil, cniError(types.ErrInvalidNetworkConfig, "invalid ifname in valid-attachments entry %s", entry)
			}
			keep.IfName = *a.IfName
		}
		out = append(out, keep)
	}
	return out, nil
}

// -- helpers ----------------------------------------------------------------------------

// parseAddress is the address of "ip" or "ip/prefix", canonical; "" when it is neither.
func parseAddress(text string) string {
	if ip, _, err := net.ParseCIDR(text); err == nil {
		return ip.String()
	}
	if ip := net.ParseIP(text); ip != nil {
		return ip.String()
	}
	return ""
}

// strictObject decodes a JSON object into v; anything but an object is an error.
func strictObject(raw json.RawMessage, v interface{}) error {
	trimmed := bytes.TrimSpace(raw)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return fmt.Errorf("not an object: %s", orNull(raw))
	}
	return json.Unmarshal(trimmed, v)
}

func isNull(raw json.RawMessage) bool {
	trimmed := bytes.TrimSpace(raw)
	return len(trimmed) == 0 || bytes.Equal(trimmed, []byte("null"))
}

func orNull(raw json.RawMessage) string {
	if isNull(raw) {
		return "null"
	}
	return string(raw)
}

// dig is raw's value under keys, or nil when some level is absent or not an object.
func dig(raw json.RawMessage, keys ...string) json.RawMessage {
	for _, key := range keys {
		var level map[string]json.RawMessage
		if isNull(raw) || json.Unmarshal(raw, &level) != nil {
			return nil
		}
		raw = level[key]
	}
	return raw
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func contains(list []string, s string) bool {
	for _, item := range list {
		if item == s {
			return true
		}
	}
	return false
}

// unwrapPathError is an *os.PathError's cause alone (the message names the path already).
func unwrapPathError(err error) error {
	if pathError, ok := err.(*os.PathError); ok {
		return pathError.Err
	}
	return err
}
