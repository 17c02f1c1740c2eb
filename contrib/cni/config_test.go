package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

var addEnv = environment{
	command: "ADD", containerID: "c1", netns: "/var/run/netns/c1", ifName: "eth0", path: "/opt/cni/bin",
}

// conf is a network config with ipam merged over a one-range default.
func conf(t *testing.T, version string, ipam map[string]interface{}, extra map[string]interface{}) []byte {
	t.Helper()
	section := map[string]interface{}{"type": "ipamd", "ranges": [][]map[string]string{{{"subnet": "10.9.0.0/24"}}}}
	for k, v := range ipam {
		if v == nil {
			delete(section, k)
		} else {
			section[k] = v
		}
	}
	config := map[string]interface{}{"cniVersion": version, "name": "net", "type": "bridge", "ipam": section}
	for k, v := range extra {
		config[k] = v
	}
	data, err := json.Marshal(config)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func mustRead(t *testing.T, command string, env environment, stdin []byte) *invocation {
	t.Helper()
	call, err := readInvocation(command, env, stdin)
	if err != nil {
		t.Fatalf("readInvocation: %v", err)
	}
	return call
}

func wantCode(t *testing.T, command string, env environment, stdin []byte, code uint, inMsg string) {
	t.Helper()
	_, err := readInvocation(command, env, stdin)
	if err == nil {
		t.Fatalf("%s %s: no error, want code %d", command, stdin, code)
	}
	if err.Code != code || !strings.Contains(err.Msg, inMsg) {
		t.Fatalf("%s %s: got %d %q, want %d containing %q", command, stdin, err.Code, err.Msg, code, inMsg)
	}
}

func TestASubnetWithHostBitsIsRefusedAsHostLocalDoes(t *testing.T) {
	stdin := conf(t, "1.0.0", map[string]interface{}{
		"ranges": []interface{}{[]interface{}{map[string]string{"subnet": "10.9.0.77/24"}}},
	}, nil)
	wantCode(t, "ADD", addEnv, stdin, 7, "network has host bits set. For a subnet mask of length 24 the network address is 10.9.0.0")
}

func TestRangeSetsBecomeSubnetsWithHostLocalsDefaultGateway(t *testing.T) {
	call := mustRead(t, "ADD", addEnv, conf(t, "1.0.0", map[string]interface{}{
		"ranges": []interface{}{
			[]interface{}{map[string]string{"subnet": "10.9.0.0/24", "rangeStart": "10.9.0.100"}},
			[]interface{}{map[string]string{"subnet": "fd00:9::/64", "gateway": "fd00:9::fe"}},
			[]interface{}{map[string]string{"subnet": "10.8.0.0/31"}}, // two addresses: no gateway
		},
	}, nil))
	want := []subnet{
		{Subnet: "10.9.0.0/24", Gateway: "10.9.0.1", RangeStart: "10.9.0.100"},
		{Subnet: "fd00:9::/64", Gateway: "fd00:9::fe"},
		{Subnet: "10.8.0.0/31"},
	}
	if !reflect.DeepEqual(call.subnets, want) {
		t.Fatalf("subnets %+v, want %+v", call.subnets, want)
	}
	if call.network != "net" || call.cniVersion != "1.0.0" || call.containerID != "c1" || call.ifName != "eth0" {
		t.Fatalf("call %+v", call)
	}
	if !reflect.DeepEqual(call.attributes, map[string]string{"netns": "/var/run/netns/c1"}) {
		t.Fatalf("attributes %v", call.attributes)
	}
}

func TestTheLegacySingleRangeFormComesFirst(t *testing.T) {
	call := mustRead(t, "ADD", addEnv, conf(t, "0.4.0", map[string]interface{}{
		"subnet": "10.7.0.0/24", "rangeStart": "10.7.0.10", "gateway": "10.7.0.254",
	}, nil))
	want := []subnet{
		{Subnet: "10.7.0.0/24", Gateway: "10.7.0.254", RangeStart: "10.7.0.10"},
		{Subnet: "10.9.0.0/24", Gateway: "10.9.0.1"},
	}
	if !reflect.DeepEqual(call.subnets, want) {
		t.Fatalf("subnets %+v, want %+v", call.subnets, want)
	}
}

func TestBadConfigsNameWhatIsWrong(t *testing.T) {
	for _, c := range []struct {
		ipam  map[string]interface{}
		code  uint
		inMsg string
	}{
		{map[string]interface{}{"ranges": nil}, 7, "ipam needs ranges"},
		{map[string]interface{}{"ranges": "10.9.0.0/24"}, 7, "list of range sets"},
		{map[string]interface{}{"ranges": [][]interface{}{{}}}, 7, "range set 0 must be a non-empty list"},
		{map[string]interface{}{"ranges": [][]interface{}{{"x"}}}, 7, "a range must be an object"},
		{map[string]interface{}{"ranges": [][]map[string]string{{{"subnet": "10.9.0.0"}}}}, 7, `subnet "10.9.0.0" is not a CIDR`},
		{map[string]interface{}{"ranges": [][]map[string]string{{{"subnet": "10.9.0.0/24", "gateway": "10.8.0.1"}}}}, 7, `gateway "10.8.0.1" is not an address in 10.9.0.0/24`},
		{map[string]interface{}{"ranges": [][]map[string]string{{{"subnet": "10.9.0.0/24", "rangeEnd": "x"}}}}, 7, `rangeEnd "x"`},
		{map[string]interface{}{"ranges": [][]map[string]string{{{"subnet": "10.9.0.0/24"}, {"subnet": "10.9.1.0/24"}}}}, 2, "range set 0 has 2 ranges"},
		{map[string]interface{}{"routes": []map[string]string{{"gw": "10.9.0.1"}}}, 7, "invalid route"},
		{map[string]interface{}{"routes": []map[string]string{{"dst": "nowhere"}}}, 7, "invalid route"},
		{map[string]interface{}{"dns": []string{"10.9.0.1"}}, 7, "ipam dns must be an object"},
		{map[string]interface{}{"socket": ""}, 7, "ipam socket must be a path"},
		{map[string]interface{}{"resolvConf": "/nonexistent/resolv.conf"}, 5, "cannot read resolvConf /nonexistent/resolv.conf: no such file"},
	} {
		wantCode(t, "ADD", addEnv, conf(t, "1.0.0", c.ipam, nil), c.code, c.inMsg)
	}
	noIPAM := []byte(`{"cniVersion": "1.0.0", "name": "net"}`)
	wantCode(t, "ADD", addEnv, noIPAM, 7, "no ipam section")
	wantCode(t, "ADD", addEnv, conf(t, "0.2.0", nil, nil), 1, `cniVersion "0.2.0" is not supported`)
	wantCode(t, "CHECK", addEnv, conf(t, "0.3.1", nil, nil), 1, "cniVersion 0.3.1 does not define CHECK (from 0.4.0)")
	wantCode(t, "GC", addEnv, conf(t, "1.0.0", nil, nil), 1, "does not define GC")
	wantCode(t, "STATUS", addEnv, conf(t, "1.0.0", nil, nil), 1, "does not define STATUS")
	wantCode(t, "ADD", addEnv, conf(t, "1.0.0", nil, map[string]interface{}{"prevResult": []int{1}}), 7, "prevResult must be an object")
}

func TestRequestedAddressesInOrderWithoutRepeats(t *testing.T) {
	env := addEnv
	env.args = "IgnoreUnknown=1;IP=10.9.0.5,10.9.0.6/24;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p"
	call := mustRead(t, "ADD", env, conf(t, "1.1.0", nil, map[string]interface{}{
		"args":          map[string]interface{}{"cni": map[string]interface{}{"ips": []string{"10.9.0.6", "fd00::5/64"}}},
		"runtimeConfig": map[string]interface{}{"ips": []string{" 10.9.0.7 "}},
	}))
	want := []string{"10.9.0.5", "10.9.0.6", "fd00::5", "10.9.0.7"}
	if !reflect.DeepEqual(call.staticIPs, want) {
		t.Fatalf("static IPs %v, want %v", call.staticIPs, want)
	}
	if call.attributes["pod"] != "ns/p" {
		t.Fatalf("attributes %v", call.attributes)
	}
	bad := conf(t, "1.0.0", nil, map[string]interface{}{"args": map[string]interface{}{"cni": map[string]interface{}{"ips": []string{"not-an-ip"}}}})
	wantCode(t, "ADD", addEnv, bad, 7, `requested IP "not-an-ip" is not an address`)
	notList := conf(t, "1.0.0", nil, map[string]interface{}{"runtimeConfig": map[string]interface{}{"ips": "10.9.0.5"}})
	wantCode(t, "ADD", addEnv, notList, 7, "runtimeConfig.ips must be a list")
	// Only ADD asks for addresses: a DEL with a bad one still releases.
	if _, err := readInvocation("DEL", addEnv, bad); err != nil {
		t.Fatalf("DEL with a requested IP: %v", err)
	}
}

func TestMalformedCNIArgsIsAnEnvironmentError(t *testing.T) {
	env := addEnv
	env.args = "IP=10.9.0.5;novalue"
	wantCode(t, "ADD", env, conf(t, "1.0.0", nil, nil), 4, `CNI_ARGS: invalid pair "novalue"`)
	env.args = "=x"
	wantCode(t, "ADD", env, conf(t, "1.0.0", nil, nil), 4, "invalid pair")
}

func TestRoutesAndDNS(t *testing.T) {
	call := mustRead(t, "ADD", addEnv, conf(t, "1.0.0", map[string]interface{}{
		"routes": []map[string]string{{"dst": "0.0.0.0/0"}, {"dst": "10.10.0.0/16", "gw": "10.9.0.254"}},
		"dns":    map[string]interface{}{"nameservers": []string{"10.9.0.1"}, "search": []string{"a.test"}},
	}, nil))
	if len(call.routes) != 2 || call.routes[0].Dst.String() != "0.0.0.0/0" || call.routes[1].GW.String() != "10.9.0.254" {
		t.Fatalf("routes %v", call.routes)
	}
	if !reflect.DeepEqual(call.dns, types.DNS{Nameservers: []string{"10.9.0.1"}, Search: []string{"a.test"}}) {
		t.Fatalf("dns %+v", call.dns)
	}
}

func TestResolvConfBecomesDNSUnlessDNSIsGiven(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	text := "# comment\n; another\nnameserver 10.9.0.53\nnameserver fd00::53\ndomain example.test\n" +
		"search a.test b.test\noptions ndots:2 edns0\noptions rotate\nnameserver\n"
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	call := mustRead(t, "ADD", addEnv, conf(t, "1.0.0", map[string]interface{}{"resolvConf": path}, nil))
	want := types.DNS{
		Nameservers: []string{"10.9.0.53", "fd00::53"}, Domain: "example.test",
		Search: []string{"a.test", "b.test"}, Options: []string{"ndots:2", "edns0", "rotate"},
	}
	if !reflect.DeepEqual(call.dns, want) {
		t.Fatalf("dns %+v, want %+v", call.dns, want)
	}
	explicit := map[string]interface{}{"resolvConf": path, "dns": map[string]interface{}{"domain": "x.test"}}
	if call := mustRead(t, "ADD", addEnv, conf(t, "1.0.0", explicit, nil)); call.dns.Domain != "x.test" || call.dns.Nameservers != nil {
		t.Fatalf("dns %+v", call.dns)
	}
}

func TestGCNeedsItsKeepList(t *testing.T) {
	env := environment{command: "GC", path: "/opt/cni/bin"}
	valid := []map[string]string{{"containerID": "c1", "ifname": "eth0"}, {"containerID": "c2"}}
	call := mustRead(t, "GC", env, conf(t, "1.1.0", nil, map[string]interface{}{"cni.dev/valid-attachments": valid}))
	want := []attachment{{ContainerID: "c1", IfName: "eth0"}, {ContainerID: "c2"}}
	if !reflect.DeepEqual(call.valid, want) {
		t.Fatalf("valid %+v, want %+v", call.valid, want)
	}
	wantCode(t, "GC", env, conf(t, "1.1.0", nil, nil), 7, "GC needs cni.dev/valid-attachments")
	badID := []map[string]string{{"containerID": "-bad"}}
	wantCode(t, "GC", env, conf(t, "1.1.0", nil, map[string]interface{}{"cni.dev/valid-attachments": badID}), 7, "invalid valid-attachments entry")
	badIf := []map[string]string{{"containerID": "c1", "ifname": "a/b"}}
	wantCode(t, "GC", env, conf(t, "1.1.0", nil, map[string]interface{}{"cni.dev/valid-attachments": badIf}), 7, "invalid ifname")
}

func TestGCAndStatusCheckTheEnvironmentAsSkelWould(t *testing.T) {
	stdin := conf(t, "1.1.0", nil, nil)
	for _, c := range []struct {
		env  environment
		code uint
	}{
		{environment{command: "STATUS"}, 4}, // no CNI_PATH
		{environment{command: "STATUS", path: "/x", containerID: "-bad"}, 4},
		{environment{command: "STATUS", path: "/x", ifName: "sixteen-bytes-xx"}, 4},
	} {
		if err := checkEnvironment(c.env, stdin); err == nil || err.Code != c.code {
			t.Fatalf("%+v: %v, want code %d", c.env, err, c.code)
		}
	}
	if err := checkEnvironment(environment{command: "STATUS", path: "/x"}, []byte("{not json")); err == nil || err.Code != 6 {
		t.Fatalf("bad JSON: %v", err)
	}
	if err := checkEnvironment(environment{command: "STATUS", path: "/x"}, []byte(`{"name": "bad name!"}`)); err == nil || err.Code != 7 {
		t.Fatalf("bad name: %v", err)
	}
	if err := checkEnvironment(environment{command: "STATUS", path: "/x"}, stdin); err != nil {
		t.Fatalf("good call: %v", err)
	}
}

func TestVersionAnswersInTheCallersVersion(t *testing.T) {
	for stdin, want := range map[string]string{
		`{"cniVersion": "0.4.0"}`: "0.4.0",
		`{"cniVersion": "0.2.0"}`: latestVersion,
		"":                        latestVersion,
	} {
		info, err := versionInfo([]byte(stdin))
		if err != nil {
			t.Fatalf("%q: %v", stdin, err)
		}
		data, _ := json.Marshal(info)
		expected, _ := json.Marshal(map[string]interface{}{"cniVersion": want, "supportedVersions": supportedVersions})
		if string(data) != string(expected) {
			t.Fatalf("%q: %s, want %s", stdin, data, expected)
		}
	}
	if _, err := versionInfo([]byte("{not json")); err == nil || err.Code != 6 {
		t.Fatalf("bad JSON: %v", err)
	}
}

func TestSocketDiscovery(t *testing.T) {
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }
	if got := discoverSocket("/given.sock", getenv); got != "/given.sock" {
		t.Fatalf("explicit: %s", got)
	}
	env["IPAMD_SOCKET"] = "/env.sock"
	if got := discoverSocket("", getenv); got != "/env.sock" {
		t.Fatalf("env: %s", got)
	}
	delete(env, "IPAMD_SOCKET")
	runtime := t.TempDir()
	env["XDG_RUNTIME_DIR"] = runtime
	want := "/run/ipamd/ipamd.sock"
	if os.Geteuid() != 0 && !exists(want) {
		want = filepath.Join(runtime, "ipamd", "ipamd.sock") // a per-user daemon's
	}
	if got := discoverSocket("", getenv); got != want {
		t.Fatalf("default: %s, want %s", got, want)
	}
}
