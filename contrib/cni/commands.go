// The commands: each is one or two RPCs to the daemon. The CNI network `name` is
// the ipamd network; the lease key is (network, CNI_CONTAINERID, CNI_IFNAME).
//
//   - ADD ensures the network first (`network.create` of an identical definition
//     is a no-op), so a config that no longer matches the daemon fails loudly.
//   - DEL and GC succeed for what is already gone, the network included.
package main

import (
	"fmt"
	"io"
	"net"
	"sort"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
)

// leaseIP is an address of a lease as ipamd returns it.
type leaseIP struct {
	Address string `msgpack:"address"` // "ip/prefix"
	Gateway string `msgpack:"gateway"`
}

// leaseResult is the shape of `alloc`'s and `get`'s results.
type leaseResult struct {
	Networks map[string]struct {
		IPs []leaseIP `msgpack:"ips"`
	} `msgpack:"networks"`
}

func (r *leaseResult) ips(network string) ([]leaseIP, error) {
	held, ok := r.Networks[network]
	if !ok {
		return nil, fmt.Errorf("ipamd's result does not name network %s", network)
	}
	return held.IPs, nil
}

// connected runs fn on a connection to the daemon.
func connected(call *invocation, fn func(*client) error) error {
	marks.parsed()
	c, err := dial(discoverSocket(call.socket, getenv))
	if err != nil {
		return err
	}
	defer c.close()
	marks.connected()
	err = fn(c)
	marks.replied()
	return err
}

func cmdAdd(call *invocation, out io.Writer) error {
	options := map[string]interface{}{"ifname": call.ifName}
	if len(call.staticIPs) > 0 {
		options["static_ips"] = call.staticIPs
	}
	if len(call.attributes) > 0 {
		options["attributes"] = call.attributes
	}
	var leased leaseResult
	err := connected(call, func(c *client) error {
		create := map[string]interface{}{"name": call.network, "subnets": call.subnets}
		if err := c.call("network.create", create, nil); err != nil {
			if e, ok := err.(*daemonError); ok && e.is("network_exists") {
				return types.NewError(uint(ipamdErrorBase+e.code()), fmt.Sprintf(
					"ipamd already has a network %s defined otherwise than by this config's"+
						" ipam ranges; rename this network, or delete the old one from ipamd",
					call.network), fmt.Sprintf("%s: %s", e.Name, e.Message))
			}
			return err
		}
		alloc := map[string]interface{}{
			"container_id": call.containerID,
			"networks":     map[string]interface{}{call.network: options},
		}
		return c.call("alloc", alloc, &leased)
	})
	if err != nil {
		return err
	}
	ips, err := leased.ips(call.network)
	if err != nil {
		return err
	}
	return printResult(out, call, ips)
}

func cmdDel(call *invocation) error {
	release := map[string]interface{}{
		"container_id": call.containerID,
		"networks":     map[string]interface{}{call.network: map[string]string{"ifname": call.ifName}},
	}
	return ignore(connected(call, func(c *client) error {
		return c.call("release", release, nil)
	}), "network_not_found") // nothing can be held on a network the daemon does not know
}

func cmdCheck(call *invocation) error {
	if call.prevResult == nil {
		return cniError(types.ErrInvalidNetworkConfig, "CHECK needs prevResult, the result of the ADD")
	}
	get := map[string]interface{}{
		"container_id": call.containerID,
		"networks":     map[string]interface{}{call.network: map[string]string{"ifname": call.ifName}},
	}
	var held leaseResult
	if err := connected(call, func(c *client) error { return c.call("get", get, &held) }); err != nil {
		return err
	}
	ips, err := held.ips(call.network)
	if err != nil {
		return err
	}
	listed := map[string]bool{}
	for _, ip := range call.prevResult.IPs {
		if address := canonicalInterface(ip.Address); address != "" {
			listed[address] = true
		}
	}
	var missing []string
	for _, ip := range ips {
		if address := canonicalInterface(ip.Address); !listed[address] {
			missing = append(missing, address)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	sort.Strings(missing)
	names := make([]string, 0, len(listed))
	for address := range listed {
		names = append(names, address)
	}
	sort.Strings(names)
	lists := strings.Join(names, ", ")
	if lists == "" {
		lists = "none"
	}
	return types.NewError(checkMismatch, fmt.Sprintf(
		"container %s (%s) holds %s on network %s, which prevResult does not list (it lists %s)",
		call.containerID, call.ifName, strings.Join(missing, ", "), call.network, lists), "")
}

func cmdGC(call *invocation) error {
	gc := map[string]interface{}{"network": call.network, "valid": call.valid}
	return ignore(connected(call, func(c *client) error {
		return c.call("gc", gc, nil)
	}), "network_not_found") // no network, no leases
}

func cmdStatus(call *invocation) error {
	var network struct {
		Subnets []struct {
			Subnet      string `msgpack:"subnet"`
			Free        int64  `msgpack:"free"`
			Used        int64  `msgpack:"used"`
			Allocatable int64  `msgpack:"allocatable"`
		} `msgpack:"subnets"`
	}
	err := connected(call, func(c *client) error {
		return c.call("network.get", map[string]string{"name": call.network}, &network)
	})
	if e, ok := err.(*daemonError); ok && e.is("network_not_found") {
		return nil // ADD will create it
	}
	if err != nil {
		cniErr := toCNIError(err)
		if cniErr.Code == types.ErrTryAgainLater {
			cniErr.Code = statusUnavailable
		}
		return cniErr
	}
	for _, s := range network.Subnets {
		if s.Free <= 0 {
			return types.NewError(statusLimited,
				fmt.Sprintf("network %s has no free address left in subnet %s", call.network, s.Subnet),
				fmt.Sprintf("%d of %d allocatable addresses in use", s.Used, s.Allocatable))
		}
	}
	return nil
}

// versionInfo is VERSION's answer: in the caller's cniVersion if it is one this
// plugin speaks; a caller that speaks none of them still learns which would do.
func versionInfo(stdin []byte) (interface{}, *types.Error) {
	asked := latestVersion
	if len(strings.TrimSpace(string(stdin))) > 0 {
		v, err := requestedVersion(stdin)
		if err != nil && err.Code == types.ErrDecodingFailure {
			return nil, err
		}
		if err == nil {
			asked = v
		}
	}
	return struct {
		CNIVersion        string   `json:"cniVersion"`
		SupportedVersions []string `json:"supportedVersions"`
	}{asked, supportedVersions}, nil
}

// printResult prints the IPAM result in the requested version's format (no
// interfaces: the caller adds them). libcni converts 1.0.0 to the older ones;
// 1.1.0's IPAM result is 1.0.0's, under its own cniVersion.
func printResult(out io.Writer, call *invocation, ips []leaseIP) error {
	result := &types100.Result{CNIVersion: types100.ImplementedSpecVersion, Routes: call.routes, DNS: call.dns}
	for _, ip := range ips {
		address, cidr, err := net.ParseCIDR(ip.Address)
		if err != nil {
			return fmt.Errorf("ipamd returned address %q: %w", ip.Address, err)
		}
		config := &types100.IPConfig{Address: net.IPNet{IP: address, Mask: cidr.Mask}}
		if ip.Gateway != "" {
			config.Gateway = net.ParseIP(ip.Gateway)
		}
		result.IPs = append(result.IPs, config)
	}
	if call.cniVersion == latestVersion {
		result.CNIVersion = latestVersion
		return result.PrintTo(out)
	}
	converted, err := result.GetAsVersion(call.cniVersion)
	if err != nil {
		return err
	}
	return converted.PrintTo(out)
}

// ignore is err, unless it is the daemon's error called name.
func ignore(err error, name string) error {
	if e, ok := err.(*daemonError); ok && e.is(name) {
		return nil
	}
	return err
}

// canonicalInterface is "ip/prefix" in canonical form, "" when text is not one.
func canonicalInterface(text string) string {
	ip, cidr, err := net.ParseCIDR(text)
	if err != nil {
		return ""
	}
	ones, _ := cidr.Mask.Size()
	return fmt.Sprintf("%s/%d", ip, ones)
}
