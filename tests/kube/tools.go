//go:build tools

// Package tools pins the Kubernetes binaries that Trellis's tests run. It is
// never compiled into anything: install.sh builds the commands it imports with
// `go build k8s.io/kubernetes/cmd/...` from this module, so go.mod/go.sum fix
// every dependency's version.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
