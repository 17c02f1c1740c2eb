// libcni_runner: ADD or DEL one attachment through the real libcni, as a CNI
// runtime (podman's CNI backend, CRI-O, containerd) does, so that libcni
// itself writes (and removes) its result cache. For the tests of
// `ipamd-client gc --from-cni-cache` only.
//
//	libcni_runner add|del CNI_PATH CACHE_DIR CONFLIST CONTAINER_ID IFNAME NETNS
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
)

func main() {
	if len(os.Args) != 8 {
		fmt.Fprintln(os.Stderr, "usage: libcni_runner add|del CNI_PATH CACHE_DIR CONFLIST CONTAINER_ID IFNAME NETNS")
		os.Exit(2)
	}
	command, cniPath, cacheDir, confFile := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	rt := &libcni.RuntimeConf{ContainerID: os.Args[5], IfName: os.Args[6], NetNS: os.Args[7]}
	list, err := libcni.ConfListFromFile(confFile)
	if err != nil {
		fail(err)
	}
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(cniPath), cacheDir, nil)
	switch command {
	case "add":
		result, err := cni.AddNetworkList(context.Background(), list, rt)
		if err != nil {
			fail(err)
		}
		if err := result.Print(); err != nil {
			fail(err)
		}
	case "del":
		if err := cni.DelNetworkList(context.Background(), list, rt); err != nil {
			fail(err)
		}
	default:
		fail(fmt.Errorf("unknown command %q", command))
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
